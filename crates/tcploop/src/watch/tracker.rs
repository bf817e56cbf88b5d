//! The loops present, from scan to scan (or event to event): [`Tracker`]
//! keeps each loop by its [`LoopKey`] (socket cookie and address: the kernel
//! never reuses a cookie within a namespace, so a loop that goes away and a
//! new one on the same port are two loops), with what was learnt about it
//! once, when it appeared (its owners), and says what changed. Pure: tested
//! from fixtures.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::model::{Owner, Socket, TcpState};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
