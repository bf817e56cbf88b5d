//! The engine of `tcploop watch`: scan for loops again and again, and turn
//! each scan into events (a loop appeared, went away, was killed) and
//! metrics.
//!
//! A scan is one sock_diag dump of the namespace (about a microsecond a
//! socket, in the kernel) plus the ephemeral-port facts; the expensive part
//! of finding a loop, the walk over `/proc/*/fd` to name its owner, is done
//! once per loop, when it appears, never on every scan ([`Tracker`] keeps
//! what it learnt). A loop is known by its socket cookie, which the kernel
//! never reuses within a namespace, so a loop that goes away and a new one
//! on the same port are two loops.
//!
//! [`Tracker`] is pure and tested from fixtures; [`Scanner`], [`owners_of`] and
//! [`kill`] are the only parts that talk to the kernel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::model::{Owner, Socket, TcpState};
use crate::ports::{EphemeralFacts, FactsError, PortSet};
use crate::scan::NetnsLabel;
use crate::sys::diag::{self, DiagError};
use crate::sys::tcpdiag;

/// What identifies one loop across scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoopKey {
    /// The socket cookie.
    pub cookie: u64,
    /// The loop's address (local == peer).
    pub local: SocketAddr,
}

impl LoopKey {
    /// The key of a dumped socket.
    pub fn of(s: &Socket) -> LoopKey {
        LoopKey {
            cookie: s.cookie(),
            local: s.local,
        }
    }
}

/// A loop the tracker knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// The socket as last seen.
    pub sock: Socket,
    /// Its owners (empty: unknown).
    pub owners: Vec<Owner>,
    /// When it was first seen.
    pub since: Instant,
}

impl Tracked {
    /// The command for metrics labels: the first owner's, or `unknown`.
    pub fn command(&self) -> String {
        self.owners
            .first()
            .map(|o| o.comm.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// A change between two scans.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A loop that was not there before.
    Appeared(Tracked),
    /// A loop that is no longer there, and how long it was seen.
    Gone(Tracked, Duration),
}

/// The loops present, from scan to scan.
#[derive(Debug, Default)]
pub struct Tracker {
    present: BTreeMap<LoopKey, Tracked>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// The loops among `socks` that are new (their owners still to look up).
    pub fn new_loops<'a>(&self, socks: &'a [Socket]) -> Vec<&'a Socket> {
        socks
            .iter()
            .filter(|s| !self.present.contains_key(&LoopKey::of(s)))
            .collect()
    }

    /// Takes the loops of one scan (`owners` holds what was looked up for
    /// the new ones, by inode) and returns what changed: appearances in
    /// port order, then disappearances.
    pub fn observe(
        &mut self,
        now: Instant,
        socks: &[Socket],
        owners: &HashMap<u32, Vec<Owner>>,
    ) -> Vec<Change> {
        let mut changes = vec![];
        let mut next = BTreeMap::new();
        for s in socks {
            let key = LoopKey::of(s);
            match self.present.remove(&key) {
                Some(mut t) => {
                    t.sock = *s;
                    next.insert(key, t);
                }
                None => {
                    let t = Tracked {
                        sock: *s,
                        owners: owners.get(&s.inode).cloned().unwrap_or_default(),
                        since: now,
                    };
                    changes.push(Change::Appeared(t.clone()));
                    next.insert(key, t);
                }
            }
        }
        for (_, t) in std::mem::replace(&mut self.present, next) {
            let held = now.saturating_duration_since(t.since);
            changes.push(Change::Gone(t, held));
        }
        changes
    }

    /// The loops present now.
    pub fn present(&self) -> impl Iterator<Item = &Tracked> {
        self.present.values()
    }

    /// Loops seen for at least `after` (TIME-WAIT ones excepted: they hold
    /// no process and end by themselves), for `--kill-after`.
    pub fn due(&self, now: Instant, after: Duration) -> Vec<Tracked> {
        self.present
            .values()
            .filter(|t| t.sock.state != TcpState::TimeWait)
            .filter(|t| now.saturating_duration_since(t.since) >= after)
            .cloned()
            .collect()
    }

    /// Adds a loop reported by a kernel event; `false` if it is known
    /// already (a dump found it first).
    pub fn insert(&mut self, t: Tracked) -> bool {
        let key = LoopKey::of(&t.sock);
        if self.present.contains_key(&key) {
            return false;
        }
        self.present.insert(key, t);
        true
    }

    /// Removes the loop with this cookie (its socket left ESTABLISHED, by a
    /// kernel event) and says how long it was present.
    pub fn end(&mut self, cookie: u64, now: Instant) -> Option<(Tracked, Duration)> {
        let key = *self.present.keys().find(|k| k.cookie == cookie)?;
        let t = self.present.remove(&key)?;
        let held = now.saturating_duration_since(t.since);
        Some((t, held))
    }

    /// Forgets a loop (after it was destroyed).
    pub fn forget(&mut self, sock: &Socket) -> Option<Tracked> {
        self.present.remove(&LoopKey::of(sock))
    }
}

/// A loop reported by a kernel event ([`crate::trace`]), as the tracker
/// keeps it: its owner is the process the event names (fd -1: not known).
pub fn tracked_from_event(seen: &crate::trace::LoopSeen, since: Instant) -> Tracked {
    Tracked {
        sock: seen.socket(),
        owners: vec![Owner {
            pid: seen.pid,
            comm: seen.command.clone(),
            fd: -1,
            container: crate::container::of_pid(seen.pid),
        }],
        since,
    }
}

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

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The host's namespaces could not be listed (`--all-netns`).
    #[error("listing the network namespaces: {0}")]
    Namespaces(#[source] std::io::Error),
    /// The port facts could not be read.
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The socket dump failed.
    #[error(transparent)]
    Dump(#[from] DiagError),
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
                Err(e) => return Err(e.into()),
            }
        }
        diag::dump_all(tcpdiag::WATCH_STATES, |s| snap.add(&facts, s, &mut exposed))?;
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
        use crate::sys::netns::{self, NetnsError};
        let proc = crate::sys::procfd::Proc::open().map_err(ScanError::Namespaces)?;
        let list = netns::list(&proc).map_err(ScanError::Namespaces)?;
        let mut out = HostSnapshot::default();
        let mut now: BTreeMap<u64, NetnsLabel> = BTreeMap::new();
        for n in &list.found {
            let label = NetnsLabel {
                inode: n.inode,
                pid: n.pid,
                comm: n.pid.and_then(|p| proc.comm(p)),
                name: n.name.clone(),
                path: (n.inode != self.own).then(|| n.path.clone()),
            };
            // A namespace with no TCP socket has no loop and no listener:
            // its counters say so without a walk of the kernel's tables.
            if let (Some(pid), true) = (n.pid, n.inode != self.own) {
                if crate::sys::sockstat::tcp_sockets(pid).ok() == Some(0) {
                    out.namespaces += 1;
                    out.idle += 1;
                    now.insert(n.inode, label);
                    continue;
                }
            }
            let scanner = self.scanners.entry(n.inode).or_default();
            let res = match &label.path {
                None => Ok(scanner.scan()),
                Some(p) => netns::run_in(p, || scanner.scan()),
            };
            let snap = match res {
                Ok(Ok(snap)) => snap,
                // its last process exited between listing and entering
                Err(NetnsError::Open { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    continue
                }
                Ok(Err(e)) if n.inode == self.own => return Err(e),
                // skipped, but there: neither "gone" nor "appeared" again
                Ok(Err(e)) => {
                    now.insert(n.inode, label.clone());
                    self.skip(&mut out, label, e.to_string());
                    continue;
                }
                Err(e) => {
                    now.insert(n.inode, label.clone());
                    self.skip(&mut out, label, e.to_string());
                    continue;
                }
            };
            out.namespaces += 1;
            out.sockets += snap.sockets;
            out.exposed_listeners += snap.exposed_listeners.iter().count() as u64;
            for s in &snap.loops {
                if n.inode != self.own {
                    out.netns_of.insert(LoopKey::of(s), label.clone());
                }
            }
            out.loops.extend(snap.loops);
            now.insert(n.inode, label);
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

/// What `--kill-after` did to one loop that was due.
#[derive(Debug, Clone, PartialEq)]
pub enum KillAction {
    /// Destroyed (and forgotten by the tracker).
    Killed {
        /// The loop.
        tracked: Tracked,
        /// How long it had been present.
        seen: Duration,
        /// Loops destroyed on its port so far, this one included.
        kills_on_port: u64,
        /// Its client will loop again (the port is in the ephemeral range,
        /// not reserved) and this is at least the second kill on the port:
        /// reserving the port is the fix.
        reserve_advised: bool,
    },
    /// Not destroyed; given up on (never retried).
    Failed {
        /// The loop.
        tracked: Tracked,
        /// How long it had been present.
        seen: Duration,
        /// Why.
        error: String,
    },
}

/// `watch --kill-after`: destroys the loops present for at least `after`,
/// gives up on those that cannot be destroyed (saying so once), and counts
/// the kills by port. The destroy itself is a parameter, so that the policy
/// is tested without a kernel.
#[derive(Debug, Clone)]
pub struct KillPolicy {
    after: Duration,
    given_up: HashSet<LoopKey>,
    kills_on_port: HashMap<u16, u64>,
}

impl KillPolicy {
    /// A policy that destroys loops present for `after`.
    pub fn new(after: Duration) -> KillPolicy {
        KillPolicy {
            after,
            given_up: HashSet::new(),
            kills_on_port: HashMap::new(),
        }
    }

    /// Destroys, with `destroy`, every loop of `tracker` due at `now` and
    /// not given up on, in the tracker's order.
    pub fn run(
        &mut self,
        tracker: &mut Tracker,
        now: Instant,
        mut destroy: impl FnMut(&Tracked) -> Result<crate::scan::Killed, crate::scan::KillError>,
    ) -> Vec<KillAction> {
        use crate::scan::Killed;
        let mut actions = vec![];
        for t in tracker.due(now, self.after) {
            let key = LoopKey::of(&t.sock);
            if self.given_up.contains(&key) {
                continue;
            }
            let seen = now.saturating_duration_since(t.since);
            let error = match destroy(&t) {
                Ok(Killed::Destroyed { loops_again, .. }) => {
                    tracker.forget(&t.sock);
                    let n = self.kills_on_port.entry(t.sock.local.port()).or_insert(0);
                    *n += 1;
                    actions.push(KillAction::Killed {
                        reserve_advised: *n >= 2 && loops_again == Some(true),
                        kills_on_port: *n,
                        tracked: t,
                        seen,
                    });
                    continue;
                }
                // closed by its owner meanwhile: the next scan (or its end
                // event) reports it gone
                Ok(Killed::Gone | Killed::NotALoop) => continue,
                Ok(Killed::StillThere) => "destroyed, yet still in the socket table".to_string(),
                Ok(Killed::AlreadyAborted) => "already aborted; its owner still has the socket \
                                               open, bound to the port: only closing it \
                                               releases the port"
                    .to_string(),
                Err(e) => e.to_string(),
            };
            self.given_up.insert(key);
            actions.push(KillAction::Failed {
                tracked: t,
                seen,
                error,
            });
        }
        actions
    }

    /// Forgets the loops given up on that are no longer present.
    pub fn retain_present(&mut self, tracker: &Tracker) {
        self.given_up
            .retain(|k| tracker.present().any(|t| LoopKey::of(&t.sock) == *k));
    }

    /// The next moment a present loop becomes due.
    pub fn next_due(&self, tracker: &Tracker) -> Option<Instant> {
        tracker
            .present()
            .filter(|t| t.sock.state != TcpState::TimeWait)
            .filter(|t| !self.given_up.contains(&LoopKey::of(&t.sock)))
            .map(|t| t.since + self.after)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{KernelVersion, PortRange};

    fn sock(st: TcpState, local: &str, peer: &str, cookie: u32) -> Socket {
        Socket {
            family: 2,
            state: st,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            ifindex: 0,
            cookie: [cookie, 0],
            expires_ms: 0,
            uid: 0,
            inode: cookie + 1000,
        }
    }

    #[test]
    fn appear_stay_go() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let a = sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            1,
        );
        let mut owners = HashMap::new();
        owners.insert(
            1001,
            vec![Owner {
                pid: 7,
                comm: "python3".into(),
                fd: 3,
                container: None,
            }],
        );
        assert_eq!(tr.new_loops(&[a]).len(), 1);
        let c = tr.observe(t0, &[a], &owners);
        assert!(matches!(&c[..], [Change::Appeared(t)] if t.command() == "python3"));
        assert!(tr.new_loops(&[a]).is_empty(), "owners are looked up once");
        let c = tr.observe(t0 + Duration::from_secs(1), &[a], &HashMap::new());
        assert!(c.is_empty());
        assert_eq!(tr.present().next().unwrap().command(), "python3");
        // a new loop on the same port (new cookie) is another loop
        let b = sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            2,
        );
        let c = tr.observe(t0 + Duration::from_secs(3), &[b], &HashMap::new());
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[0], Change::Appeared(t) if t.command() == "unknown"));
        assert!(matches!(&c[1], Change::Gone(_, d) if *d == Duration::from_secs(3)));
    }

    #[test]
    fn due_for_kill_after_and_not_time_wait() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let a = sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            1,
        );
        let tw = sock(TcpState::TimeWait, "127.0.0.1:40006", "127.0.0.1:40006", 2);
        tr.observe(t0, &[a, tw], &HashMap::new());
        let d = Duration::from_secs(5);
        assert!(tr.due(t0 + Duration::from_secs(4), d).is_empty());
        let due = tr.due(t0 + d, d);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].sock, a);
        assert!(tr.forget(&a).is_some());
        assert_eq!(tr.present().count(), 1);
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

    fn tracked_at(sock: Socket, since: Instant) -> Tracked {
        Tracked {
            sock,
            owners: vec![],
            since,
        }
    }

    fn destroyed(loops_again: bool) -> Result<crate::scan::Killed, crate::scan::KillError> {
        Ok(crate::scan::Killed::Destroyed {
            port: crate::scan::PortState::Free,
            loops_again: Some(loops_again),
        })
    }

    #[test]
    fn kill_after_destroys_only_loops_present_long_enough() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let old = sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            1,
        );
        let young = sock(
            TcpState::Established,
            "127.0.0.1:40006",
            "127.0.0.1:40006",
            2,
        );
        let tw = sock(TcpState::TimeWait, "127.0.0.1:40008", "127.0.0.1:40008", 3);
        tr.insert(tracked_at(old, t0));
        tr.insert(tracked_at(young, t0 + Duration::from_secs(4)));
        tr.insert(tracked_at(tw, t0));
        let mut p = KillPolicy::new(Duration::from_secs(5));
        assert_eq!(p.next_due(&tr), Some(t0 + Duration::from_secs(5)));
        let mut asked = vec![];
        let acts = p.run(&mut tr, t0 + Duration::from_secs(5), |t| {
            asked.push(t.sock.local.port());
            destroyed(false)
        });
        // the young loop is not due yet, TIME-WAIT is never destroyed
        assert_eq!(asked, [40004]);
        assert!(
            matches!(&acts[..], [KillAction::Killed { kills_on_port: 1, reserve_advised: false, seen, .. }]
            if *seen == Duration::from_secs(5))
        );
        // the destroyed loop is forgotten; the young one is next
        assert_eq!(tr.present().count(), 2);
        assert_eq!(p.next_due(&tr), Some(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn a_loop_that_comes_back_on_the_same_port_gets_the_reserve_advice() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let mut p = KillPolicy::new(Duration::ZERO);
        for cookie in 1..=2 {
            let s = sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                cookie,
            );
            tr.insert(tracked_at(s, t0));
            let acts = p.run(&mut tr, t0, |_| destroyed(true));
            let KillAction::Killed {
                kills_on_port,
                reserve_advised,
                ..
            } = &acts[0]
            else {
                panic!("{acts:?}")
            };
            assert_eq!(*kills_on_port, u64::from(cookie));
            // the first kill may be the last; from the second on, reserve
            assert_eq!(*reserve_advised, cookie == 2);
        }
    }

    #[test]
    fn a_loop_that_cannot_be_destroyed_is_reported_once_and_not_retried() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let s = sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            1,
        );
        tr.insert(tracked_at(s, t0));
        let mut p = KillPolicy::new(Duration::ZERO);
        let mut tries = 0;
        let mut deny = |_: &Tracked| {
            tries += 1;
            Err(crate::scan::KillError::Unsupported)
        };
        let acts = p.run(&mut tr, t0, &mut deny);
        assert!(
            matches!(&acts[..], [KillAction::Failed { error, .. }] if error.contains("EOPNOTSUPP"))
        );
        assert!(p
            .run(&mut tr, t0 + Duration::from_secs(1), &mut deny)
            .is_empty());
        assert_eq!(tries, 1);
        // still present, but never due again
        assert_eq!(tr.present().count(), 1);
        assert_eq!(p.next_due(&tr), None);
        // once it is gone, a new loop with the same key is tried again
        tr.forget(&s);
        p.retain_present(&tr);
        tr.insert(tracked_at(s, t0));
        assert_eq!(p.next_due(&tr), Some(t0));
    }
}
