//! `watch --kill-after`: which loops to destroy and when, what to say when
//! a destroy fails (once), and when to advise reserving a port its client
//! keeps looping on. The destroy itself is a parameter: the policy is tested
//! without a kernel.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::model::TcpState;

use super::{LoopKey, Tracked, Tracker};

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
    use crate::model::Socket;

    fn sock(st: TcpState, local: &str, peer: &str, cookie: u32) -> Socket {
        let mut s = Socket::fixture(st, local, peer);
        s.cookie = [cookie, 0];
        s.inode = cookie + 1000;
        s
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
