//! Never connect a TCP client to itself.
//!
//! TCP's *simultaneous open* lets a socket connect to itself: when a client
//! `connect()`s to a port on its own host where nothing listens, and the
//! kernel happens to pick that very port as the client's ephemeral source
//! port, the client's SYN arrives at the client itself, and the connection
//! becomes ESTABLISHED with local address == peer address. The client then
//! reads back its own bytes and the port is held, so the real server cannot
//! bind it.
//!
//! This crate owns the one definition of such a *loop* used by the whole
//! tcploop project: [`is_loop`] on addresses, [`is_self_connected`] on a
//! socket.

use std::io;
use std::net::SocketAddr;

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
