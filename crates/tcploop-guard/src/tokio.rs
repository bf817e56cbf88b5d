//! The guard for tokio (feature `tokio`): [`connect`] is
//! `tokio::net::TcpStream::connect` that never returns a stream connected to
//! itself, with the contract of the std guard (see the [crate docs](crate)).
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
//! # rt.block_on(async {
//! let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = server.local_addr()?;
//! let stream = tcploop_guard::tokio::connect(addr).await?;
//! assert!(!tcploop_guard::is_self_connected(&stream)?);
//!
//! drop(server);
//! let err = tcploop_guard::tokio::connect(addr).await.unwrap_err();
//! assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
//! # Ok::<(), std::io::Error>(())
//! # })
//! # }
//! ```
//!
//! A timeout is `tokio::time::timeout` around the call, as with tokio's own
//! `connect`.

use std::io;
use std::net::SocketAddr;

use ::tokio::net::{lookup_host, TcpStream, ToSocketAddrs};

use crate::{looped, reset, Guard, SelfConnectError};

/// `tokio::net::TcpStream::connect`, guarded with the default
/// [`Guard`]: resolves `addr`, tries each address in order, resets and
/// retries a connection that looped, and never returns a stream connected
/// to itself. When every attempt loops the error is `ConnectionRefused`
/// with a [`SelfConnectError`] inside.
pub async fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
    Guard::new().connect_async(addr).await
}

impl Guard {
    /// `tokio::net::TcpStream::connect`, guarded by this guard (feature
    /// `tokio`; see [`crate::tokio::connect`]).
    pub async fn connect_async<A: ToSocketAddrs>(&self, addr: A) -> io::Result<TcpStream> {
        let mut last = None;
        for a in lookup_host(addr).await? {
            match self.connect_one_async(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any address",
            )
        }))
    }

    async fn connect_one_async(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let mut loops = 0;
        loop {
            let stream = TcpStream::connect(addr).await?;
            if !looped(&stream, &addr)? {
                return Ok(stream);
            }
            reset(&stream);
            drop(stream);
            loops += 1;
            if loops > self.retries {
                return Err(SelfConnectError::new(addr, loops).into());
            }
        }
    }
}
