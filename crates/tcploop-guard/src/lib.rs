//! Never connect a TCP client to itself.
//!
//! Swap [`std::net::TcpStream::connect`] for [`tcploop_guard::connect`](connect)
//! (and `tokio::net::TcpStream::connect` for `tcploop_guard::tokio::connect`,
//! feature `tokio`) and a client can no longer end up connected to itself.
//!
//! # The problem: a client connected to itself
//!
//! TCP allows a *simultaneous open* (RFC 793, section 3.4): two endpoints
//! that send each other a SYN at the same time both move from SYN-SENT to
//! SYN-RECEIVED and then to ESTABLISHED, with no listener involved. Nothing
//! in the protocol says the two endpoints must be different sockets. So when
//! a client `connect()`s to a port of its **own** host where nothing
//! listens, and the kernel happens to choose that very port as the client's
//! source port, the client's SYN arrives at the client itself, is taken as
//! the other side of a simultaneous open, and `connect()` *succeeds*. The
//! socket's local address equals its peer address:
//!
//! ```text
//! 127.0.0.1:40004 -> 127.0.0.1:40004   [S]   seq=x                (SYN-SENT)
//!                    its own SYN arrives                         (SYN-RECEIVED)
//! 127.0.0.1:40004 -> 127.0.0.1:40004   [S.]  seq=x ack=x+1        (ESTABLISHED)
//! ```
//!
//! What follows is worse than a refused connection:
//!
//! - the dead service looks alive: a readiness probe or a reconnect loop
//!   that only checks that `connect()` succeeds is satisfied;
//! - the client reads back its own bytes (it sent a request; it receives
//!   that request as the "response");
//! - the port is stolen: while the looped socket lives, and for about a
//!   second after a graceful close (TIME-WAIT on loopback, 60 s otherwise),
//!   the real server's `bind()` fails with `EADDRINUSE`.
//!
//! You can make one on purpose: bind a socket to a port, then connect it to
//! that same address. On Linux (and the BSDs) this is a real, established
//! self-connection, which [`is_self_connected`] recognises:
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! # if cfg!(target_os = "linux") {
//! use socket2::{Domain, Socket, Type};
//! let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
//! sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())?;
//! let me = sock.local_addr()?;          // e.g. 127.0.0.1:51237
//! sock.connect(&me)?;                   // SYN to itself: simultaneous open
//! let stream: std::net::TcpStream = sock.into();
//! assert!(tcploop_guard::is_self_connected(&stream)?);
//! assert_eq!(stream.local_addr()?, stream.peer_addr()?);
//! # }
//! # Ok(())
//! # }
//! ```
//!
//! # When it happens by accident: the ephemeral range
//!
//! A client that does not `bind()` gets its source port from the kernel's
//! *ephemeral range*: `net.ipv4.ip_local_port_range` on Linux (default
//! 32768-60999), 49152-65535 on macOS and Windows. A destination port in
//! that range, on an address of the same host, with nothing bound to it, can
//! be picked as the source port: the loop needs nothing else. Every port a
//! server gets from `bind(0)` is in that range by definition, which is why
//! test suites (a server on a random port, stopped and restarted while its
//! clients reconnect) and services with high configured ports hit this.
//!
//! A port that some socket holds with `bind()` or `listen()` is never
//! chosen, so a running server is safe; the window is while it is down
//! (starting, restarting, crashed) and its clients keep reconnecting.
//!
//! # Parity on Linux
//!
//! Since Linux 4.6, a plain `connect()` tries the ports with the parity of
//! the range's low end first (even ports, with the default range) and the
//! other parity only when all of those are taken; `bind(addr, 0)` does the
//! opposite. So with the default range a reconnect loop to a closed **even**
//! port loops after about 14,000 attempts on average (a few seconds of a
//! tight retry loop), while an odd port is safe from plain `connect()` (but
//! not from clients that `bind()` first or set `IP_LOCAL_PORT_RANGE`). In a
//! range of 10 ports, it loops within a handful of attempts.
//!
//! # What the guard does
//!
//! [`connect`] and [`connect_timeout`] behave like their `std` namesakes
//! (same resolution of several addresses, tried in order; same errors),
//! with one difference: after each successful `connect()` they compare the
//! socket's local address with its peer's ([`is_loop`]). On a loop they
//! reset the socket (`SO_LINGER` 0, so it closes with RST and its port is
//! not left in TIME-WAIT, free for the real server at once) and try again
//! with a fresh socket, up to a bound ([`Guard::retries`], default
//! [`DEFAULT_RETRIES`]). A retry almost always gets another source port, and
//! with it the honest answer: `ConnectionRefused` from the closed port, or
//! the real server if it came up meanwhile. If every attempt loops, the
//! result is an [`io::ErrorKind::ConnectionRefused`] error whose inner error
//! is a [`SelfConnectError`] naming the address. A looped stream is never
//! returned.
//!
//! Go's `net.Dial` has a similar guard but gives up after three tries and
//! then hands back the looped socket; Rust's std, tokio, Java's `Socket`
//! and Node's `net` have none.
//!
//! The check costs one `getsockname()` per connection (plus one
//! `getpeername()` only when the ports match): one system call, about 2%
//! of a loopback `connect()` on a small VM, less against a real network.
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! use std::io::{ErrorKind, Read, Write};
//! use std::net::TcpListener;
//!
//! let server = TcpListener::bind("127.0.0.1:0")?;
//! let addr = server.local_addr()?;
//!
//! // A live server: the guard connects on the first try, like std.
//! let mut client = tcploop_guard::connect(addr)?;
//! let (mut conn, _) = server.accept()?;
//! client.write_all(b"ping")?;
//! let mut buf = [0; 4];
//! conn.read_exact(&mut buf)?;
//! assert_eq!(&buf, b"ping");
//!
//! // A closed port: refused, never looped.
//! drop(server);
//! let err = tcploop_guard::connect(addr).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
//! # Ok(())
//! # }
//! ```
//!
//! # The one definition of a loop
//!
//! [`is_loop`] (on addresses) and [`is_self_connected`] (on any socket:
//! std, tokio, mio, socket2) are the definition the whole tcploop project
//! uses, from this guard to the tool that finds loops on a host.
//!
//! The crate is portable (Linux, macOS, Windows): it uses only `std` and
//! `socket2`, and tokio behind the `tokio` feature.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[cfg(feature = "tokio")]
pub mod tokio;

// The README's examples run as doctests, so the page crates.io shows
// cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `true` when a connection with this local and peer address is a TCP loop
/// (self-connect): the local address and port equal the peer's.
///
/// The IP addresses are compared as values (scope ids and flow labels of
/// IPv6 addresses are ignored: the kernel reports the same scope on both
/// ends of a link-local loop).
///
/// ```
/// use tcploop_guard::is_loop;
/// let a = "127.0.0.1:40004".parse().unwrap();
/// let b = "127.0.0.1:50000".parse().unwrap();
/// assert!(is_loop(a, a));
/// assert!(!is_loop(a, b));
/// ```
pub fn is_loop(local: SocketAddr, peer: SocketAddr) -> bool {
    local.port() == peer.port() && local.ip() == peer.ip()
}

/// `true` when `socket` is connected to itself (see [`is_loop`]).
///
/// Works for anything that exposes its socket: `std::net::TcpStream`,
/// tokio and mio streams, `socket2::Socket`. An unconnected socket gives the
/// `getpeername` error (`NotConnected`).
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let client = std::net::TcpStream::connect(server.local_addr()?)?;
/// assert!(!tcploop_guard::is_self_connected(&client)?);
/// # Ok(())
/// # }
/// ```
pub fn is_self_connected<S>(socket: &S) -> io::Result<bool>
where
    S: AsSocket,
{
    let sock = socket2::SockRef::from(socket);
    let local = sock.local_addr()?.as_socket();
    let peer = sock.peer_addr()?.as_socket();
    Ok(match (local, peer) {
        (Some(l), Some(p)) => is_loop(l, p),
        _ => false,
    })
}

#[cfg(unix)]
pub use std::os::fd::AsFd as AsSocket;
#[cfg(windows)]
pub use std::os::windows::io::AsSocket;

/// How many times a looped connection is retried with a fresh socket
/// before giving up, unless [`Guard::retries`] says otherwise.
///
/// A retry loops again only if the kernel picks the same source port
/// again: about 1 chance in 14,000 with Linux's default range, about 1 in
/// 5 in a range of 10 ports. Even there, six loops in a row are rare
/// (measured: 1 guarded connect in 110,000), and giving up is then still
/// the right answer: nothing listens on the port. The bound also limits
/// the work when the port is the only one the kernel can pick.
pub const DEFAULT_RETRIES: u32 = 5;

/// A connect guard with its settings (the builder).
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use tcploop_guard::Guard;
/// let server = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let guard = Guard::new().retries(2);
/// let stream = guard.connect(server.local_addr()?)?;
/// assert!(!tcploop_guard::is_self_connected(&stream)?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    retries: u32,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard::new()
    }
}

impl Guard {
    /// A guard with [`DEFAULT_RETRIES`].
    pub const fn new() -> Guard {
        Guard {
            retries: DEFAULT_RETRIES,
        }
    }

    /// Sets how many times a looped connection is retried with a fresh
    /// socket (0: fail on the first loop).
    #[must_use]
    pub const fn retries(mut self, retries: u32) -> Guard {
        self.retries = retries;
        self
    }

    /// The retry bound.
    pub const fn retry_bound(&self) -> u32 {
        self.retries
    }

    /// [`std::net::TcpStream::connect`], guarded: tries each address `addr`
    /// resolves to, in order, and returns the first stream that connected
    /// and is not a loop, or the last error (`InvalidInput` if `addr`
    /// resolves to nothing).
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<TcpStream> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match self.connect_one(&a, None) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "could not resolve to any addresses",
            )
        }))
    }

    /// [`std::net::TcpStream::connect_timeout`], guarded. The timeout
    /// bounds all the attempts together; retries after a loop get what is
    /// left of it. A zero timeout is an `InvalidInput` error, as in std.
    pub fn connect_timeout(&self, addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            // std's own error for this case, before any socket exists.
            return TcpStream::connect_timeout(addr, timeout);
        }
        self.connect_one(addr, Some((Instant::now() + timeout, timeout)))
    }

    /// One address, with retries while it loops.
    fn connect_one(
        &self,
        addr: &SocketAddr,
        deadline: Option<(Instant, Duration)>,
    ) -> io::Result<TcpStream> {
        let mut loops = 0;
        loop {
            let stream = match deadline {
                None => TcpStream::connect(addr)?,
                Some((deadline, timeout)) => {
                    let left = if loops == 0 {
                        timeout
                    } else {
                        deadline.saturating_duration_since(Instant::now())
                    };
                    if left.is_zero() {
                        // Out of time after a loop: the loop is the answer.
                        return Err(SelfConnectError::new(*addr, loops).into());
                    }
                    TcpStream::connect_timeout(addr, left)?
                }
            };
            if !looped(&stream, addr)? {
                return Ok(stream);
            }
            reset(&stream);
            drop(stream);
            loops += 1;
            if loops > self.retries {
                return Err(SelfConnectError::new(*addr, loops).into());
            }
        }
    }
}

/// Whether a stream just connected to `target` is a loop. The peer of a
/// connected socket is the address it connected to, so one `getsockname()`
/// decides: a loop needs the local port to equal the target's. Only then,
/// if the addresses differ, is `getpeername()` asked, since the kernel may
/// have connected elsewhere than `target` reads (`0.0.0.0`, `::` and
/// `::ffff:0.0.0.0` are replaced with a local address). If that fails (the
/// connection was reset meanwhile), it was no loop: the stream is returned
/// and its next read says what happened, as with std.
pub(crate) fn looped<S: AsSocket>(stream: &S, target: &SocketAddr) -> io::Result<bool> {
    let sock = socket2::SockRef::from(stream);
    let Some(local) = sock.local_addr()?.as_socket() else {
        return Ok(false);
    };
    if local.port() != target.port() {
        return Ok(false);
    }
    if is_loop(local, *target) {
        return Ok(true);
    }
    Ok(is_self_connected(stream).unwrap_or(false))
}

/// Arms `SO_LINGER` 0 so that dropping the socket sends RST and leaves no
/// TIME-WAIT behind: the port is free for the real server at once. A
/// failure only means a graceful close instead (the port then stays in
/// TIME-WAIT for 60 s, on loopback too, refusing a server's `bind()`
/// even with `SO_REUSEADDR`), so it is not reported.
pub(crate) fn reset<S: AsSocket>(stream: &S) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// [`std::net::TcpStream::connect`] that never returns a stream connected
/// to itself: see the [crate docs](crate) and [`Guard`].
///
/// A loop is reset and retried up to [`DEFAULT_RETRIES`] times; then the
/// error is `ConnectionRefused` with a [`SelfConnectError`] inside.
///
/// ```no_run
/// use std::io::Write;
/// # fn main() -> std::io::Result<()> {
/// let mut stream = tcploop_guard::connect("localhost:8080")?;
/// stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
/// # Ok(())
/// # }
/// ```
pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
    Guard::new().connect(addr)
}

/// [`std::net::TcpStream::connect_timeout`] that never returns a stream
/// connected to itself (see [`connect`]).
pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    Guard::new().connect_timeout(addr, timeout)
}

/// The inner error of the `ConnectionRefused` error the guard returns when
/// every attempt looped.
///
/// ```
/// use std::io;
/// use tcploop_guard::SelfConnectError;
///
/// fn explain(e: &io::Error) -> String {
///     match SelfConnectError::of(e) {
///         Some(s) => format!("nothing listens on {} (it looped)", s.addr()),
///         None => e.to_string(),
///     }
/// }
/// let e: io::Error = SelfConnectError::new("127.0.0.1:40004".parse().unwrap(), 6).into();
/// assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
/// assert_eq!(explain(&e), "nothing listens on 127.0.0.1:40004 (it looped)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfConnectError {
    addr: SocketAddr,
    attempts: u32,
}

impl SelfConnectError {
    /// The error for `attempts` loops in a row on `addr`.
    pub fn new(addr: SocketAddr, attempts: u32) -> SelfConnectError {
        SelfConnectError { addr, attempts }
    }

    /// The address the client connected to, and looped on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many attempts looped (all of them).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The `SelfConnectError` inside an `io::Error`, if that is what it is.
    pub fn of(e: &io::Error) -> Option<&SelfConnectError> {
        e.get_ref()?.downcast_ref::<SelfConnectError>()
    }
}

impl fmt::Display for SelfConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection to {} refused: TCP self-connect (the socket connected to itself: \
             nothing listens there and the kernel chose port {} as the source port); ",
            self.addr,
            self.addr.port()
        )?;
        match self.attempts {
            1 => write!(f, "the looped socket was reset"),
            n => write!(f, "{n} attempts in a row looped, each socket was reset"),
        }
    }
}

impl Error for SelfConnectError {}

impl From<SelfConnectError> for io::Error {
    fn from(e: SelfConnectError) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A real self-connected stream, made on purpose: a socket bound to
    /// `127.0.0.1:P` and connected to `target` (which the kernel routes to
    /// itself) completes a simultaneous open with itself.
    #[cfg(target_os = "linux")]
    fn self_connected(target_ip: &str) -> TcpStream {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        sock.bind(&any.into()).unwrap();
        let me = sock.local_addr().unwrap().as_socket().unwrap();
        let target = SocketAddr::new(target_ip.parse().unwrap(), me.port());
        sock.connect(&target.into()).unwrap();
        sock.into()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_self_connected_stream_is_recognised() {
        let s = self_connected("127.0.0.1");
        let me = s.local_addr().unwrap();
        assert!(is_self_connected(&s).unwrap());
        assert!(looped(&s, &me).unwrap());
        // The unspecified address reaches 127.0.0.1 too, so getpeername decides.
        let s = self_connected("0.0.0.0");
        let me = s.local_addr().unwrap();
        let unspecified = SocketAddr::new("0.0.0.0".parse().unwrap(), me.port());
        assert!(looped(&s, &unspecified).unwrap());
        // Through IPv6 too: a v4-mapped unspecified address is not
        // "unspecified" to std, and still reaches the socket itself.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "[::ffff:127.0.0.1]:0".parse().unwrap();
        sock.bind(&any.into()).unwrap();
        let me = sock.local_addr().unwrap().as_socket().unwrap();
        let mapped_any: SocketAddr = format!("[::ffff:0.0.0.0]:{}", me.port()).parse().unwrap();
        sock.connect(&mapped_any.into()).unwrap();
        let s: TcpStream = sock.into();
        assert!(is_self_connected(&s).unwrap(), "{:?}", s.peer_addr());
        assert!(looped(&s, &mapped_any).unwrap());
    }

    #[test]
    fn a_real_connection_is_not_a_loop() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let s = TcpStream::connect(addr).unwrap();
        assert!(!is_self_connected(&s).unwrap());
        assert!(!looped(&s, &addr).unwrap());
        // Nor when connected through the unspecified address.
        let any = SocketAddr::new("0.0.0.0".parse().unwrap(), addr.port());
        if let Ok(s) = TcpStream::connect(any) {
            assert!(!looped(&s, &any).unwrap());
        }
    }

    /// The reason for the reset: a looped socket closed gracefully keeps its
    /// port in TIME-WAIT, and the real server cannot bind it (the control);
    /// reset, the port is free at once.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_reset_loop_frees_its_port_at_once() {
        let s = self_connected("127.0.0.1");
        let me = s.local_addr().unwrap();
        drop(s);
        let e = TcpListener::bind(me).expect_err("TIME-WAIT blocks the port (control)");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);

        let s = self_connected("127.0.0.1");
        let me = s.local_addr().unwrap();
        reset(&s);
        drop(s);
        TcpListener::bind(me).expect("the port is free right after the reset");
    }

    #[test]
    fn the_error_is_connection_refused_and_names_the_address() {
        let addr: SocketAddr = "[::1]:40004".parse().unwrap();
        let e: io::Error = SelfConnectError::new(addr, 6).into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let inner = SelfConnectError::of(&e).unwrap();
        assert_eq!((inner.addr(), inner.attempts()), (addr, 6));
        let text = e.to_string();
        assert!(text.contains("[::1]:40004"), "{text}");
        assert!(text.contains("self-connect"), "{text}");
        assert!(text.contains("6 attempts in a row"), "{text}");
        assert!(SelfConnectError::of(&io::Error::from(io::ErrorKind::ConnectionRefused)).is_none());
    }

    #[test]
    fn the_builder_sets_the_bound() {
        assert_eq!(Guard::new().retry_bound(), DEFAULT_RETRIES);
        assert_eq!(Guard::default(), Guard::new());
        assert_eq!(Guard::new().retries(0).retry_bound(), 0);
    }
}
