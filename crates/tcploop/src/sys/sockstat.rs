//! `/proc/PID/net/sockstat` and `sockstat6` (`proc(5)`): how many sockets
//! of each protocol a network namespace holds, from counters the kernel
//! keeps per namespace, so reading them costs nothing like a socket dump.
//!
//! A sock_diag dump walks the kernel's TCP hash tables, which every
//! namespace shares: each dump costs a walk of every bucket, whatever the
//! namespace holds. `watch --all-netns` asks these counters first and
//! skips the dump of a namespace with no TCP socket at all (most idle
//! containers): no socket, no loop and no listener.
//!
//! ```text
//! TCP: inuse 1 orphan 0 tw 7 alloc 101059 mem 49      (sockstat)
//! TCP6: inuse 0                                         (sockstat6)
//! ```
//!
//! `inuse` counts the namespace's hashed sockets (listening, connecting,
//! connected); `tw` its TIME-WAIT sockets (per namespace since Linux
//! 5.19; on older kernels it is host-wide, which only makes a namespace
//! look busier). `orphan` and `alloc` are host-wide and not used.

use std::io;

/// The TCP sockets (IPv4 and IPv6, TIME-WAIT included) the network
/// namespace of process `pid` holds.
pub fn tcp_sockets(pid: u32) -> io::Result<u64> {
    let v4 = std::fs::read_to_string(format!("/proc/{pid}/net/sockstat"))?;
    // sockstat6 is absent when IPv6 is disabled.
    let v6 = match std::fs::read_to_string(format!("/proc/{pid}/net/sockstat6")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    parse_tcp(&v4)
        .zip(Some(parse_tcp(&v6).unwrap_or(0)))
        .map(|(a, b)| a + b)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no TCP line in sockstat"))
}

/// `inuse` plus `tw` of the `TCP:` or `TCP6:` line of a sockstat text;
/// `None` when there is no such line.
pub fn parse_tcp(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP: ") || l.starts_with("TCP6: "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("inuse")? + field("tw").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_use_and_time_wait() {
        let v4 = "sockets: used 17\nTCP: inuse 1 orphan 0 tw 7 alloc 101059 mem 49\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_tcp(v4), Some(8));
        let v6 = "TCP6: inuse 3\nUDP6: inuse 0\n";
        assert_eq!(parse_tcp(v6), Some(3));
        let idle = "sockets: used 0\nTCP: inuse 0 orphan 0 tw 0 alloc 101059 mem 49\n";
        assert_eq!(parse_tcp(idle), Some(0));
        assert_eq!(parse_tcp("UDP: inuse 0 mem 0\n"), None);
        assert_eq!(parse_tcp("TCP: orphan 0\n"), None);
    }

    #[test]
    fn reads_its_own_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_sockets(std::process::id()).unwrap() >= 1);
        drop(l);
    }
}
