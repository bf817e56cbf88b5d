//! The polling side of a watch: one sock_diag dump of the namespace (about
//! a microsecond a socket, in the kernel) plus the ephemeral-port facts,
//! turned into a [`Snapshot`]; [`HostScanner`] does it for every namespace
//! of the host (`--all-netns`); [`Poller`] is either. The owners of a loop
//! are looked up ([`owners_of`]) once, when it appears, never on every scan;
//! [`kill`] and [`kill_in`] destroy one.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Owner, Socket};
use crate::ports::{EphemeralFacts, PortSet};
use crate::scan::{NetnsLabel, ScanError};
use crate::sys::diag::{self, DiagError};
use crate::sys::tcpdiag;

use super::LoopKey;

/// What one scan saw.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Self-connected sockets.
    pub loops: Vec<Socket>,
    /// Listening ports in the ephemeral range and not reserved.
    pub exposed_listeners: PortSet,
    /// Sockets in the dump.
    pub sockets: u64,
}

impl Snapshot {
    /// Builds a snapshot from dumped sockets and the port facts. Pure.
    pub fn from_sockets<'a>(
        facts: &EphemeralFacts,
        sockets: impl IntoIterator<Item = &'a Socket>,
    ) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut exposed = vec![];
        for s in sockets {
            snap.add(facts, s, &mut exposed);
        }
        snap.exposed_listeners = PortSet::from_ports(exposed);
        snap
    }

    fn add(&mut self, facts: &EphemeralFacts, s: &Socket, exposed: &mut Vec<u16>) {
        self.sockets += 1;
        if s.is_exposed_listener(facts) {
            exposed.push(s.local.port());
        } else if s.is_loop() {
            self.loops.push(*s);
        }
    }
}

/// Scans the caller's network namespace, again and again: the facts, then
/// one dump of every TCP socket (IPv4 and IPv6) that can be a loop or a
/// listener, streamed (memory stays flat however many sockets there are).
/// It dumps both families in one walk of the kernel's tables
/// ([`crate::sys::tcpdiag`]), and falls back for good to one dump a family
/// if the kernel refuses that request.
#[derive(Debug)]
pub struct Scanner {
    single_walk: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { single_walk: true }
    }
}

impl Scanner {
    /// A scanner that tries the single-walk dump first.
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Whether the single-walk dump is in use.
    pub fn single_walk(&self) -> bool {
        self.single_walk
    }

    /// Scans once.
    pub fn scan(&mut self) -> Result<Snapshot, ScanError> {
        let facts = EphemeralFacts::read()?;
        let mut snap = Snapshot::default();
        let mut exposed = vec![];
        if self.single_walk {
            match tcpdiag::dump_both(tcpdiag::WATCH_STATES, |s| snap.add(&facts, s, &mut exposed)) {
                Ok(()) => {
                    snap.exposed_listeners = PortSet::from_ports(exposed);
                    return Ok(snap);
                }
                Err(DiagError::Kernel(_)) => {
                    self.single_walk = false;
                    snap = Snapshot::default();
                    exposed.clear();
                }
                Err(e) => return Err(ScanError::Dump(e)),
            }
        }
        diag::dump_all(tcpdiag::WATCH_STATES, |s| snap.add(&facts, s, &mut exposed))
            .map_err(ScanError::Dump)?;
        snap.exposed_listeners = PortSet::from_ports(exposed);
        Ok(snap)
    }
}

/// One scan of every network namespace of the host ([`HostScanner`]).
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    /// Self-connected sockets, every namespace together.
    pub loops: Vec<Socket>,
    /// The namespace of each loop that is not in the watcher's own.
    pub netns_of: HashMap<LoopKey, NetnsLabel>,
    /// Exposed listening ports, summed over the namespaces.
    pub exposed_listeners: u64,
    /// Sockets seen, summed over the namespaces.
    pub sockets: u64,
    /// Namespaces scanned.
    pub namespaces: u64,
    /// Of those, the ones with no TCP socket at all, by their counters
    /// ([`crate::sys::sockstat`]): not dumped.
    pub idle: u64,
    /// Namespaces that appeared since the previous scan.
    pub appeared: Vec<NetnsLabel>,
    /// Namespaces gone since the previous scan.
    pub gone: Vec<NetnsLabel>,
    /// Namespaces that could not be scanned, and why (each said once,
    /// the first time; they are tried again every scan).
    pub newly_skipped: Vec<(NetnsLabel, String)>,
    /// Namespaces that could not be scanned this time.
    pub skipped: u64,
}

impl From<Snapshot> for HostSnapshot {
    /// One namespace's scan (the watcher's own) in the host's shape.
    fn from(s: Snapshot) -> HostSnapshot {
        HostSnapshot {
            exposed_listeners: s.exposed_listeners.iter().count() as u64,
            sockets: s.sockets,
            loops: s.loops,
            namespaces: 1,
            ..Default::default()
        }
    }
}

/// Scans every network namespace of the host, again and again: the
/// namespaces are listed afresh each scan, as `scan --all-netns` lists
/// them (each distinct `/proc/*/ns/net`, and `/run/netns/*`), so that
/// namespaces that appear (a container starts) are scanned from their
/// first scan on and those that go are dropped, without a restart. Each
/// is entered with `setns(2)` on a short-lived thread
/// ([`crate::sys::netns::run_in`]) and scanned like the watcher's own
/// ([`Scanner`], one kept per namespace), unless its socket counters
/// (`/proc/PID/net/sockstat`) say it holds no TCP socket at all: a dump
/// walks the kernel's hash tables, which all namespaces share, so each
/// costs the same fixed time however few sockets its namespace has, and
/// idle containers are skipped for nothing. Needs CAP_SYS_ADMIN (setns) and
/// CAP_SYS_PTRACE (other users' `/proc/PID/ns/net`); namespaces that
/// cannot be entered are reported once and counted each scan.
///
/// Namespaces are known by inode, which the kernel reuses once a namespace
/// is gone: one that ends and another that gets its inode between two
/// scans look like one namespace (its loops are still tracked by socket
/// cookie, which is never reused).
#[derive(Debug)]
pub struct HostScanner {
    own: u64,
    scanners: HashMap<u64, Scanner>,
    known: BTreeMap<u64, NetnsLabel>,
    skipped_said: std::collections::HashSet<u64>,
    first: bool,
}

impl HostScanner {
    /// A host scanner; `own` is the watcher's own namespace inode.
    pub fn new() -> std::io::Result<HostScanner> {
        Ok(HostScanner {
            own: crate::sys::netns::current()?,
            scanners: HashMap::new(),
            known: BTreeMap::new(),
            skipped_said: Default::default(),
            first: true,
        })
    }

    /// The watcher's own namespace inode.
    pub fn own(&self) -> u64 {
        self.own
    }

    /// Scans every namespace once.
    pub fn scan(&mut self) -> Result<HostSnapshot, ScanError> {
        let proc = crate::sys::procfd::Proc::open().map_err(ScanError::Namespaces)?;
        let list = crate::sys::netns::list(&proc).map_err(ScanError::Namespaces)?;
        let mut out = HostSnapshot::default();
        let mut now: BTreeMap<u64, NetnsLabel> = BTreeMap::new();
        for n in &list.found {
            let label = n.label(&proc, self.own);
            if self.scan_one(&label, &mut out)? {
                now.insert(n.inode, label);
            }
        }
        if !self.first {
            out.appeared = now
                .iter()
                .filter(|(i, _)| !self.known.contains_key(i))
                .map(|(_, l)| l.clone())
                .collect();
            out.gone = self
                .known
                .iter()
                .filter(|(i, _)| !now.contains_key(i))
                .map(|(_, l)| l.clone())
                .collect();
        }
        self.first = false;
        let listed: std::collections::HashSet<u64> = list.found.iter().map(|n| n.inode).collect();
        self.scanners.retain(|i, _| listed.contains(i));
        self.skipped_said.retain(|i| listed.contains(i));
        self.known = now;
        Ok(out)
    }

    /// Scans one namespace into `out`: `false` if it is gone (its last
    /// process exited between listing and entering). One that cannot be
    /// scanned is skipped, and there; the watcher's own failing fails all.
    fn scan_one(&mut self, label: &NetnsLabel, out: &mut HostSnapshot) -> Result<bool, ScanError> {
        use crate::sys::netns::{self, NetnsError};
        let own = label.inode == self.own;
        // A namespace with no TCP socket has no loop and no listener:
        // its counters say so without a walk of the kernel's tables.
        if let (Some(pid), false) = (label.pid, own) {
            if crate::sys::sockstat::tcp_sockets(pid).ok() == Some(0) {
                out.namespaces += 1;
                out.idle += 1;
                return Ok(true);
            }
        }
        let scanner = self.scanners.entry(label.inode).or_default();
        let res = match &label.path {
            None => Ok(scanner.scan()),
            Some(p) => netns::run_in(p, || scanner.scan()),
        };
        let snap = match res {
            Ok(Ok(snap)) => snap,
            Err(NetnsError::Open { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(false)
            }
            Ok(Err(e)) if own => return Err(e),
            // skipped, but there: neither "gone" nor "appeared" again
            Ok(Err(e)) => {
                self.skip(out, label.clone(), e.to_string());
                return Ok(true);
            }
            Err(e) => {
                self.skip(out, label.clone(), e.to_string());
                return Ok(true);
            }
        };
        out.namespaces += 1;
        out.sockets += snap.sockets;
        out.exposed_listeners += snap.exposed_listeners.iter().count() as u64;
        if !own {
            for s in &snap.loops {
                out.netns_of.insert(LoopKey::of(s), label.clone());
            }
        }
        out.loops.extend(snap.loops);
        Ok(true)
    }

    fn skip(&mut self, out: &mut HostSnapshot, label: NetnsLabel, why: String) {
        out.skipped += 1;
        if self.skipped_said.insert(label.inode) {
            out.newly_skipped.push((label, why));
        }
    }
}

/// The caller's network namespace inode.
pub fn own_netns() -> std::io::Result<u64> {
    crate::sys::netns::current()
}

/// The namespace of a loop the kernel reported (`tcploop trace`'s events,
/// `--all-netns`), when it is not `own`: known by the reporting process's
/// `/proc/PID/ns/net`, which `kill_in` enters.
pub fn event_netns(seen: &crate::trace::LoopSeen, own: u64) -> Option<NetnsLabel> {
    let inode = u64::from(seen.netns);
    (inode != own && inode != 0).then(|| NetnsLabel {
        inode,
        pid: Some(seen.pid),
        comm: Some(seen.command.clone()),
        name: None,
        path: Some(std::path::PathBuf::from(format!(
            "/proc/{}/ns/net",
            seen.pid
        ))),
    })
}

/// How a watch polls: its own namespace ([`Scanner`]), or every namespace
/// of the host ([`HostScanner`]); both give a [`HostSnapshot`].
#[derive(Debug)]
pub enum Poller {
    /// The caller's namespace.
    One(Scanner),
    /// Every namespace (`--all-netns`).
    Host(HostScanner),
}

impl Poller {
    /// A poller of the caller's namespace, or of every namespace.
    pub fn new(all_netns: bool) -> std::io::Result<Poller> {
        Ok(if all_netns {
            Poller::Host(HostScanner::new()?)
        } else {
            Poller::One(Scanner::new())
        })
    }

    /// Scans once.
    pub fn scan(&mut self) -> Result<HostSnapshot, ScanError> {
        match self {
            Poller::One(s) => s.scan().map(HostSnapshot::from),
            Poller::Host(h) => h.scan(),
        }
    }
}

/// Looks up the processes holding these loops (one walk over `/proc/*/fd`,
/// stopping once each has an owner), by inode.
pub fn owners_of<'a>(
    socks: impl IntoIterator<Item = &'a Socket>,
) -> std::io::Result<HashMap<u32, Vec<Owner>>> {
    let inodes: Vec<u64> = socks.into_iter().map(|s| u64::from(s.inode)).collect();
    let found =
        crate::owners::find_owners(inodes.iter().copied(), crate::owners::Search::FirstOwner)?;
    Ok(inodes
        .iter()
        .filter_map(|&i| {
            let o = found.of(i);
            (!o.is_empty()).then(|| {
                let v = o
                    .iter()
                    .map(|o| Owner {
                        container: crate::container::of_pid(o.pid),
                        ..o.clone()
                    })
                    .collect();
                (i as u32, v)
            })
        })
        .collect())
}

/// Destroys a loop of another namespace (`netns`, as [`HostScanner`]
/// found it) the way [`kill`] does in the caller's.
pub fn kill_in(
    sock: &Socket,
    netns: &NetnsLabel,
) -> Result<crate::scan::Killed, crate::scan::KillError> {
    crate::scan::kill(&crate::scan::Loop {
        socket: *sock,
        owners: vec![],
        netns: netns.clone(),
    })
}

/// Destroys a loop of the caller's namespace with `SOCK_DESTROY` through
/// [`crate::scan::kill`], which first checks that the socket at that exact
/// 4-tuple and cookie still is this loop. Its owner gets `ECONNABORTED`.
/// Needs CAP_NET_ADMIN over the namespace.
pub fn kill(sock: &Socket) -> Result<crate::scan::Killed, crate::scan::KillError> {
    let own = crate::scan::NetnsLabel {
        inode: 0,
        pid: Some(std::process::id()),
        comm: None,
        name: None,
        path: None,
    };
    crate::scan::kill(&crate::scan::Loop {
        socket: *sock,
        owners: vec![],
        netns: own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TcpState;
    use crate::ports::{KernelVersion, PortRange};

    fn sock(st: TcpState, local: &str, peer: &str, cookie: u32) -> Socket {
        let mut s = Socket::fixture(st, local, peer);
        s.cookie = [cookie, 0];
        s.inode = cookie + 1000;
        s
    }

    #[test]
    fn snapshot_counts_loops_and_exposed_listeners() {
        let f = EphemeralFacts {
            range: PortRange {
                low: 40000,
                high: 40009,
            },
            reserved: PortSet::parse("40002").unwrap(),
            release: "6.18.0".into(),
            kernel: Some(KernelVersion(6, 18, 0)),
        };
        let socks = [
            sock(TcpState::Listen, "0.0.0.0:40004", "0.0.0.0:0", 1),
            sock(TcpState::Listen, "[::]:40004", "[::]:0", 2),
            sock(TcpState::Listen, "0.0.0.0:40002", "0.0.0.0:0", 3),
            sock(TcpState::Listen, "0.0.0.0:22", "0.0.0.0:0", 4),
            sock(
                TcpState::Established,
                "127.0.0.1:40006",
                "127.0.0.1:40006",
                5,
            ),
            sock(
                TcpState::Established,
                "127.0.0.1:40008",
                "127.0.0.1:40004",
                6,
            ),
        ];
        let s = Snapshot::from_sockets(&f, &socks);
        assert_eq!(s.sockets, 6);
        assert_eq!(s.exposed_listeners.to_string(), "40004");
        assert_eq!(s.loops.len(), 1);
        assert_eq!(s.loops[0].local.port(), 40006);
    }
}
