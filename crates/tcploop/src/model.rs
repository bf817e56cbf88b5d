//! The domain's model: a TCP socket as the kernel shows it, its state, the
//! process that owns it, the network namespace it lives in, a loop (the
//! socket, its owners and its namespace, as scan, kill, trace, watch and
//! doctor pass it on), and the two questions every command asks of a
//! socket.
//!
//! `sys/` produces these values (the `sock_diag` dump in `sys::diag` and
//! `sys::tcpdiag`, the `/proc/net/tcp{,6}` parser in `sys::procnet`); the
//! engine and the commands take them and never see the kernel's raw
//! numbers. The two predicates below are the only definitions of
//! "a loop socket" ([`Socket::is_loop`], built on the guard crate's
//! [`tcploop_guard::is_loop`]) and of "an exposed listener"
//! ([`Socket::is_exposed_listener`], built on [`is_exposed_port`]): scan,
//! watch, audit and trace all ask them.

use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ports::EphemeralFacts;

/// A TCP state as the kernel numbers it (include/net/tcp_states.h).
///
/// A loop is `Established` (simultaneous open), then `FinWait1` ... when it
/// is closed, and `TimeWait` for a minute after; `Close` is what
/// `SOCK_DESTROY` leaves behind. `BoundInactive` (13) is how Linux 6.8+
/// dumps a socket that is bound but neither listening nor connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// 1: connected (a loop, once formed).
    Established,
    /// 2: `connect()` sent its SYN.
    SynSent,
    /// 3: a SYN answered (the loop passes here: its own SYN came back).
    SynRecv,
    /// 4
    FinWait1,
    /// 5
    FinWait2,
    /// 6: closed, the 4-tuple held for 2*MSL.
    TimeWait,
    /// 7: closed (or destroyed), or bound and never used on older kernels.
    Close,
    /// 8
    CloseWait,
    /// 9
    LastAck,
    /// 10: a server's listening socket.
    Listen,
    /// 11
    Closing,
    /// 12: a request socket (half-open connection on a listener).
    NewSynRecv,
    /// 13: bound by `bind()`, neither listening nor connected (Linux 6.8+).
    BoundInactive,
    /// A number this version does not know.
    Other(u8),
}

impl TcpState {
    /// The state the kernel numbers `code`.
    pub fn from_code(code: u8) -> TcpState {
        match code {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            13 => TcpState::BoundInactive,
            n => TcpState::Other(n),
        }
    }

    /// The kernel's number for the state.
    pub fn code(self) -> u8 {
        match self {
            TcpState::Established => 1,
            TcpState::SynSent => 2,
            TcpState::SynRecv => 3,
            TcpState::FinWait1 => 4,
            TcpState::FinWait2 => 5,
            TcpState::TimeWait => 6,
            TcpState::Close => 7,
            TcpState::CloseWait => 8,
            TcpState::LastAck => 9,
            TcpState::Listen => 10,
            TcpState::Closing => 11,
            TcpState::NewSynRecv => 12,
            TcpState::BoundInactive => 13,
            TcpState::Other(n) => n,
        }
    }

    /// The state's bit in a `sock_diag` request's state mask.
    pub fn bit(self) -> u32 {
        1u32.checked_shl(u32::from(self.code())).unwrap_or(0)
    }

    /// The name `ss` prints for the state (part of the JSON schemas).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW-SYN-RECV",
            TcpState::BoundInactive => "BOUND",
            TcpState::Other(_) => "UNKNOWN",
        }
    }
}

/// Ordered by the kernel's number, as the raw states were.
impl Ord for TcpState {
    fn cmp(&self, other: &TcpState) -> Ordering {
        self.code().cmp(&other.code())
    }
}

impl PartialOrd for TcpState {
    fn partial_cmp(&self, other: &TcpState) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One TCP socket of a network namespace, as the kernel's socket table
/// shows it (a `sock_diag` record, or a line of `/proc/net/tcp{,6}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The TCP state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Peer address and port (unspecified:0 when unconnected).
    pub peer: SocketAddr,
    /// Bound interface index (0: none).
    pub ifindex: u32,
    /// The kernel's socket cookie, as two words, to hand back to `SOCK_DESTROY`
    /// (`[0, 0]` from `/proc`, which has none).
    pub cookie: [u32; 2],
    /// Time left on the socket's timer, in ms (TIME_WAIT: until it ends).
    pub expires_ms: u32,
    /// Owner uid.
    pub uid: u32,
    /// Inode of the socket (0 for TIME_WAIT and request sockets).
    pub inode: u32,
}

impl Socket {
    /// The cookie as one number (what `ss -e` prints as `sk:`).
    pub fn cookie(&self) -> u64 {
        u64::from(self.cookie[0]) | (u64::from(self.cookie[1]) << 32)
    }

    /// Whether the socket is a loop: connected to itself (local address and
    /// port equal the peer's, [`tcploop_guard::is_loop`]) on a real address
    /// and port. An unbound socket shows `0.0.0.0:0` on both sides and is
    /// none. The one definition every command uses.
    pub fn is_loop(&self) -> bool {
        self.local.port() != 0
            && !self.local.ip().is_unspecified()
            && tcploop_guard::is_loop(self.local, self.peer)
    }

    /// Whether the socket is a listener a client of this namespace can loop
    /// on: listening on a port that [`is_exposed_port`].
    pub fn is_exposed_listener(&self, facts: &EphemeralFacts) -> bool {
        self.state == TcpState::Listen && is_exposed_port(facts, self.local.port())
    }
}

/// One process holding a socket through one fd (found by the `/proc/PID/fd`
/// walk or the kernel's task_file iterator, `crate::owners`; by a trace
/// event, where `fd` is -1: the event names the process, not the fd).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/PID/comm`, up to 15 bytes; empty if the process
    /// exited before it was read).
    pub comm: String,
    /// The file descriptor number in that process (-1: unknown).
    pub fd: i32,
    /// Its container or systemd service, where asked ([`crate::container`];
    /// `None`: in none, or not looked up).
    pub container: Option<crate::container::Container>,
}

/// Whether a server on `port` is exposed to the loop: the port lies in the
/// ephemeral range, so `connect()` may pick it as its own source port, and
/// is not reserved (`ip_local_reserved_ports` keeps it out of that choice).
pub fn is_exposed_port(facts: &EphemeralFacts, port: u16) -> bool {
    facts.range.contains(port) && !facts.reserved.contains(port)
}

/// A network namespace, as a scan labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsLabel {
    /// The namespace's inode (`net:[INODE]` in `/proc/PID/ns/net`).
    pub inode: u64,
    /// A process in it (the lowest pid), if any.
    pub pid: Option<u32>,
    /// That process's command name.
    pub comm: Option<String>,
    /// Its `/run/netns` name, if any.
    pub name: Option<String>,
    /// The file to `setns(2)` into (`None`: the caller's own namespace).
    pub path: Option<PathBuf>,
}

impl NetnsLabel {
    /// Whether this is the caller's own namespace.
    pub fn is_own(&self) -> bool {
        self.path.is_none()
    }
}

/// `net:[4026531840] (pid 1 systemd)`, `net:[...] "blue"`,
/// `net:[...] (the current one)`: the label as text and errors show it
/// (a process name inside: escape it before a terminal).
impl fmt::Display for NetnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.inode)?;
        if self.is_own() {
            return f.write_str(" (the current one)");
        }
        if let Some(n) = &self.name {
            write!(f, " \"{n}\"")?;
        }
        match (self.pid, &self.comm) {
            (Some(pid), Some(c)) => write!(f, " (pid {pid} {c})"),
            (Some(pid), None) => write!(f, " (pid {pid})"),
            (None, _) => Ok(()),
        }
    }
}

/// One self-connected socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// The socket as the dump reported it (4-tuple, state, uid, inode,
    /// cookie; the cookie is 0 when read from `/proc`).
    pub socket: Socket,
    /// The processes holding it (empty for TIME-WAIT, and when unknown).
    pub owners: Vec<Owner>,
    /// The namespace it lives in.
    pub netns: NetnsLabel,
}

impl Loop {
    /// The port it holds.
    pub fn port(&self) -> u16 {
        self.socket.local.port()
    }

    /// Whether it is a closed loop waiting out TIME-WAIT (no owner).
    pub fn is_time_wait(&self) -> bool {
        self.socket.state == TcpState::TimeWait
    }

    /// Whether an owner can be expected (a live socket has an inode).
    pub fn has_inode(&self) -> bool {
        self.socket.inode != 0
    }

    /// For TIME-WAIT: the longest it can still block the port.
    pub fn held_for(&self) -> Option<Duration> {
        self.is_time_wait()
            .then(|| Duration::from_millis(u64::from(self.socket.expires_ms)))
    }
}

#[cfg(test)]
impl Socket {
    /// A socket for tests: `state`, `local` and `peer` addresses as text, no
    /// interface, cookie `[1, 0]`, inode 1.
    pub(crate) fn fixture(st: TcpState, local: &str, peer: &str) -> Socket {
        let local: SocketAddr = local.parse().expect("fixture address");
        Socket {
            family: if local.is_ipv4() { 2 } else { 10 },
            state: st,
            local,
            peer: peer.parse().expect("fixture address"),
            ifindex: 0,
            cookie: [1, 0],
            expires_ms: 0,
            uid: 0,
            inode: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{PortRange, PortSet};

    #[test]
    fn states_round_trip_through_the_kernels_numbers() {
        for code in 0..=255u8 {
            assert_eq!(TcpState::from_code(code).code(), code);
        }
        assert_eq!(TcpState::from_code(10), TcpState::Listen);
        assert_eq!(TcpState::BoundInactive.name(), "BOUND");
        assert_eq!(TcpState::Other(42).name(), "UNKNOWN");
        assert_eq!(TcpState::Listen.bit(), 1 << 10);
        assert!(TcpState::Established < TcpState::TimeWait);
    }

    #[test]
    fn a_loop_is_a_socket_connected_to_itself_on_a_real_address() {
        let s = |l, p| Socket::fixture(TcpState::Established, l, p);
        assert!(s("127.0.0.1:40004", "127.0.0.1:40004").is_loop());
        assert!(s("[::1]:40004", "[::1]:40004").is_loop());
        assert!(!s("127.0.0.1:40004", "127.0.0.1:40005").is_loop());
        assert!(!s("127.0.0.1:40004", "127.0.0.2:40004").is_loop());
        assert!(!s("0.0.0.0:0", "0.0.0.0:0").is_loop());
        assert!(!s("[::]:0", "[::]:0").is_loop());
    }

    #[test]
    fn an_exposed_listener_listens_in_the_range_on_an_unreserved_port() {
        let facts = EphemeralFacts {
            range: PortRange {
                low: 40000,
                high: 40010,
            },
            reserved: PortSet::parse("40002").unwrap(),
            release: "6.18.0".into(),
            kernel: None,
        };
        let l = |a: &str| Socket::fixture(TcpState::Listen, a, "0.0.0.0:0");
        assert!(l("0.0.0.0:40004").is_exposed_listener(&facts));
        assert!(!l("0.0.0.0:40002").is_exposed_listener(&facts));
        assert!(!l("0.0.0.0:22").is_exposed_listener(&facts));
        let est = Socket::fixture(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:9");
        assert!(!est.is_exposed_listener(&facts));
    }
}
