//! `/proc/net/tcp` and `/proc/net/tcp6` (`proc_net(5)`... documented in the
//! kernel's `Documentation/networking/proc_net_tcp.rst`): the text view of
//! the TCP socket table, the fallback when `NETLINK_SOCK_DIAG` is not
//! available (no `inet_diag` module, a seccomp filter on netlink sockets).
//!
//! The file shows the network namespace of the *reader*: `/proc/net` is a
//! link to `/proc/self/net`, `/proc/PID/net/tcp` shows PID's namespace and
//! `/proc/thread-self/net/tcp` the calling thread's (after `setns(2)`).
//!
//! One line per socket, printed by `tcp4_seq_show()`/`tcp6_seq_show()`:
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:9C44 0100007F:9C44 01 00000000:00000000 00:00000000 00000000     0        0 9771884 ...
//! ```
//!
//! - an IPv4 address is the `u32` of the address *as it sits in memory*,
//!   printed `%08X`: on a little-endian machine `0100007F` is 127.0.0.1; an
//!   IPv6 address is four such words; ports are `%04X` in host order
//!   (`9C44` is 40004);
//! - `st` is the state in hex (01 ESTABLISHED, 06 TIME_WAIT, 0A LISTEN);
//! - `tm->when` is the time left on the timer in clock ticks (`USER_HZ`,
//!   100 a second): for TIME_WAIT, how long until the socket goes away;
//! - `uid` and `inode` are 0 for TIME_WAIT and request sockets.
//!
//! There is no socket cookie (so `SOCK_DESTROY` needs a sock_diag lookup
//! anyway) and sockets that are only bound (no listen, no connect) are not
//! listed. The parser ([`parse_line`]) is pure and tested on fixtures; the
//! reader ([`read`]) streams the file line by line, so memory stays small
//! whatever the number of sockets.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::diag::Family;
use crate::model::{Socket, TcpState};

/// `USER_HZ`: the unit of `tm->when` (`jiffies_delta_to_clock_t`).
const USER_HZ: u64 = 100;

/// A line of `/proc/net/tcp*` the parser does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number in the file.
    pub line: usize,
    /// What was wrong.
    pub reason: &'static str,
    /// The line (cut to 120 characters).
    pub text: String,
}

/// Why reading `/proc/net/tcp*` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcNetError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The file held a line the parser does not understand.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line.
        #[source]
        source: ParseError,
    },
}

/// The file of one family in a `net` directory (`/proc/net`,
/// `/proc/PID/net`, `/proc/thread-self/net`).
pub fn file_in(net_dir: &Path, family: Family) -> PathBuf {
    net_dir.join(match family {
        Family::V4 => "tcp",
        Family::V6 => "tcp6",
    })
}

/// The `net` directory of the calling thread's network namespace.
pub const THREAD_NET: &str = "/proc/thread-self/net";

/// Reads one `/proc/net/tcp*` file, calling `f` for every socket, streaming.
/// A missing `tcp6` (IPv6 disabled) is an empty table, not an error.
pub fn read(path: &Path, family: Family, mut f: impl FnMut(&Socket)) -> Result<(), ProcNetError> {
    let io_err = |source| ProcNetError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && family == Family::V6 => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut line = String::with_capacity(256);
    let mut n = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io_err)? == 0 {
            return Ok(());
        }
        n += 1;
        match parse_line(&line, family, n) {
            Ok(Some(s)) => f(&s),
            Ok(None) => {}
            Err(source) => {
                return Err(ProcNetError::Parse {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Parses one line of `/proc/net/tcp` (`family` V4) or `tcp6` (V6), with
/// its 1-based number for errors. The header line and blank lines give
/// `None`. Cookie and interface are not in the file: they are left 0.
pub fn parse_line(line: &str, family: Family, n: usize) -> Result<Option<Socket>, ParseError> {
    let err = |reason| ParseError {
        line: n,
        reason,
        text: line.trim_end().chars().take(120).collect(),
    };
    let mut cols = line.split_ascii_whitespace();
    let Some(sl) = cols.next() else {
        return Ok(None);
    };
    if sl == "sl" {
        return Ok(None);
    }
    if !sl.ends_with(':') {
        return Err(err("no `N:` slot number"));
    }
    let local = cols.next().ok_or_else(|| err("no local address"))?;
    let remote = cols.next().ok_or_else(|| err("no remote address"))?;
    let local = endpoint(local, family).ok_or_else(|| err("bad local address"))?;
    let peer = endpoint(remote, family).ok_or_else(|| err("bad remote address"))?;
    let st = cols.next().ok_or_else(|| err("no state"))?;
    let state = u8::from_str_radix(st, 16).map_err(|_| err("bad state"))?;
    let _queues = cols.next().ok_or_else(|| err("no queues"))?;
    let timer = cols.next().ok_or_else(|| err("no timer"))?;
    let when = timer
        .split_once(':')
        .and_then(|(_, w)| u64::from_str_radix(w, 16).ok())
        .ok_or_else(|| err("bad timer"))?;
    let _retrnsmt = cols.next().ok_or_else(|| err("no retransmits"))?;
    let uid = cols
        .next()
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or_else(|| err("bad uid"))?;
    let _timeout = cols.next().ok_or_else(|| err("no timeout"))?;
    let inode = cols
        .next()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| err("bad inode"))?;
    Ok(Some(Socket {
        family: match family {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        },
        state: TcpState::from_code(state),
        local,
        peer,
        ifindex: 0,
        cookie: [0, 0],
        expires_ms: u32::try_from(when.saturating_mul(1000 / USER_HZ)).unwrap_or(u32::MAX),
        uid,
        // socket inodes are 32-bit in sock_diag too (`idiag_inode` is u32)
        inode: u32::try_from(inode).map_err(|_| err("inode out of range"))?,
    }))
}

/// `0100007F:9C44` (IPv4) or 32 hex digits `:PORT` (IPv6).
fn endpoint(s: &str, family: Family) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |w: &str| -> Option<[u8; 4]> {
        // the u32 as it sits in memory: native byte order
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let ip = match family {
        Family::V4 if addr.len() == 8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        Family::V6 if addr.len() == 32 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                o[i * 4..i * 4 + 4].copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::model::TcpState;

    // Captured on Linux 6.18 (x86-64) in a throwaway namespace: a listener on
    // 127.0.0.1:50000, a connection to it, a self-connected socket on 40004
    // and a TIME_WAIT self-connection on 40006.
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C44 0100007F:9C44 01 00000000:00000000 00:00000000 00000000 65534        0 9771884 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C46 0100007F:9C46 06 00000000:00000000 03:00001720 00000000     0        0 0 3 0000000000000000
   3: 0100007F:9C48 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:9C44 00000000000000000000000001000000:9C44 01 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:9C4A 0000000000000000FFFF00000100007F:9C4A 01 00000000:00000000 00:00000000 00000000  1000        0 556 1 0000000000000000 20 4 30 10 -1
";

    fn all(text: &str, family: Family) -> Vec<Socket> {
        text.lines()
            .enumerate()
            .filter_map(|(i, l)| parse_line(l, family, i + 1).unwrap())
            .collect()
    }

    #[test]
    fn ipv4_lines() {
        let v = all(TCP, Family::V4);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].state, TcpState::Listen);
        assert_eq!(v[0].local, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(v[0].peer, "0.0.0.0:0".parse().unwrap());
        let l = v[1];
        assert_eq!(l.state, TcpState::Established);
        assert_eq!(l.local, "127.0.0.1:40004".parse().unwrap());
        assert_eq!(l.peer, l.local);
        assert_eq!((l.uid, l.inode, l.cookie()), (65534, 9771884, 0));
        let tw = v[2];
        assert_eq!(tw.state, TcpState::TimeWait);
        assert_eq!(tw.inode, 0);
        // 0x1720 = 5920 ticks of 10 ms
        assert_eq!(tw.expires_ms, 59_200);
    }

    #[test]
    fn ipv6_lines_and_v4_mapped() {
        let v = all(TCP6, Family::V6);
        assert_eq!(v[0].local, "[::1]:40004".parse().unwrap());
        assert_eq!(v[0].peer, v[0].local);
        assert_eq!(v[0].family, libc::AF_INET6 as u8);
        assert_eq!(v[1].local, "[::ffff:127.0.0.1]:40010".parse().unwrap());
        assert_eq!(v[1].uid, 1000);
    }

    #[test]
    fn header_and_blank_lines_are_skipped() {
        assert_eq!(parse_line("", Family::V4, 1), Ok(None));
        assert_eq!(parse_line("   \n", Family::V4, 1), Ok(None));
        assert_eq!(
            TCP.lines().next().map(|l| parse_line(l, Family::V4, 1)),
            Some(Ok(None))
        );
    }

    #[test]
    fn bad_lines_are_errors_with_their_number() {
        for (bad, why) in [
            ("0: 0100007F:9C44", "no remote address"),
            ("0 0100007F:9C44 0100007F:9C44 01", "no `N:` slot number"),
            ("0: 0100007G:9C44 0100007F:9C44 01", "bad local address"),
            ("0: 0100007F:9C44 0100007F 01", "bad remote address"),
            ("0: 0100007F:9C44 0100007F:19C44 01", "bad remote address"),
            ("0: 0100007F:9C44 0100007F:9C44 ZZ", "bad state"),
            (
                "0: 0100007F:9C44 0100007F:9C44 01 0:0 00:x 0 0 0 1",
                "bad timer",
            ),
            (
                "0: 0100007F:9C44 0100007F:9C44 01 0:0 00:0 0 -1 0 1",
                "bad uid",
            ),
            (
                "0: 0100007F:9C44 0100007F:9C44 01 0:0 00:0 0 0 0 x",
                "bad inode",
            ),
            (
                "0: 0100007F:9C44 0100007F:9C44 01 0:0 00:0 0 0 0 99999999999",
                "inode out of range",
            ),
        ] {
            let e = parse_line(bad, Family::V4, 7).unwrap_err();
            assert_eq!((e.line, e.reason), (7, why), "{bad}");
        }
        // an IPv4 line in the IPv6 file
        let l = TCP.lines().nth(2).unwrap();
        assert_eq!(
            parse_line(l, Family::V6, 3).unwrap_err().reason,
            "bad local address"
        );
    }

    #[test]
    fn reads_a_file_and_reports_the_file_on_errors() {
        let dir = std::env::temp_dir().join(format!("tcploop-procnet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tcp");
        std::fs::write(&p, TCP).unwrap();
        let mut n = 0;
        read(&p, Family::V4, |_| n += 1).unwrap();
        assert_eq!(n, 4);
        std::fs::write(&p, format!("{TCP}garbage\n")).unwrap();
        let e = read(&p, Family::V4, |_| {}).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("tcp"), "{e}");
        // no tcp6: IPv6 is off, an empty table
        read(&dir.join("tcp6"), Family::V6, |_| panic!()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
