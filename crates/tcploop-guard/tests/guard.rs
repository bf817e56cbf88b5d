//! The guard as a drop-in for std (and tokio): the behaviour a caller sees
//! on this host's loopback, with real sockets. The loop itself is made to
//! happen, and to be caught, in a narrow network namespace by the tcploop
//! integration tests (`free_port::guard_*`): a portable crate cannot enter
//! a namespace.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tcploop_guard::{Guard, SelfConnectError};

/// An address where nothing listens: a port just released on loopback.
fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn connects_to_a_live_listener_like_std() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    for stream in [
        tcploop_guard::connect(addr).unwrap(),
        tcploop_guard::connect(("127.0.0.1", addr.port())).unwrap(),
        // localhost may resolve to ::1 first (refused): every address is tried.
        tcploop_guard::connect(format!("localhost:{}", addr.port())).unwrap(),
        tcploop_guard::connect_timeout(&addr, Duration::from_secs(5)).unwrap(),
    ] {
        let (mut conn, peer) = server.accept().unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
        assert_eq!(stream.peer_addr().unwrap(), addr);
        let mut stream = stream;
        stream.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
}

#[test]
fn a_closed_port_is_refused() {
    let addr = closed_addr();
    for guard in [Guard::new(), Guard::new().retries(0)] {
        let e = guard.connect(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        let e = guard
            .connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
}

#[test]
fn every_address_is_tried_in_order_like_std() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let live = server.local_addr().unwrap();
    let closed = closed_addr();
    let s = tcploop_guard::connect(&[closed, live][..]).unwrap();
    assert_eq!(s.peer_addr().unwrap(), live);
    // All refused: the last error, as std.
    let e = tcploop_guard::connect(&[closed, closed][..]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    // Nothing to try: std's InvalidInput.
    let none: &[SocketAddr] = &[];
    let ours = tcploop_guard::connect(none).unwrap_err();
    let std = std::net::TcpStream::connect(none).unwrap_err();
    assert_eq!(ours.kind(), std.kind());
    assert_eq!(ours.kind(), ErrorKind::InvalidInput);
}

#[test]
fn bad_input_fails_like_std() {
    let addr = closed_addr();
    let ours = tcploop_guard::connect_timeout(&addr, Duration::ZERO).unwrap_err();
    let std = std::net::TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err();
    assert_eq!(ours.kind(), std.kind());
    let ours = tcploop_guard::connect("no port here").unwrap_err();
    let std = std::net::TcpStream::connect("no port here").unwrap_err();
    assert_eq!(ours.kind(), std.kind());
}

#[test]
fn the_inner_error_is_found_through_the_io_error() {
    let addr = closed_addr();
    let e: std::io::Error = SelfConnectError::new(addr, 1).into();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert!(e.to_string().contains(&addr.to_string()));
    assert!(e.to_string().contains("the looped socket was reset"), "{e}");
}

#[cfg(feature = "tokio")]
mod tokio_guard {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    #[test]
    fn connects_to_a_live_listener_like_tokio() {
        rt().block_on(async {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = server.local_addr().unwrap();
            let s = tcploop_guard::tokio::connect(addr).await.unwrap();
            let (_conn, peer) = server.accept().await.unwrap();
            assert_eq!(peer, s.local_addr().unwrap());
            assert!(!tcploop_guard::is_self_connected(&s).unwrap());
            let s = Guard::new()
                .retries(0)
                .connect_async(("127.0.0.1", addr.port()))
                .await
                .unwrap();
            assert_eq!(s.peer_addr().unwrap(), addr);
        });
    }

    #[test]
    fn a_closed_port_is_refused_and_every_address_tried() {
        rt().block_on(async {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let live = server.local_addr().unwrap();
            let closed = closed_addr();
            let e = tcploop_guard::tokio::connect(closed).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
            let s = tcploop_guard::tokio::connect(&[closed, live][..])
                .await
                .unwrap();
            assert_eq!(s.peer_addr().unwrap(), live);
            let none: &[SocketAddr] = &[];
            let e = tcploop_guard::tokio::connect(none).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        });
    }
}
