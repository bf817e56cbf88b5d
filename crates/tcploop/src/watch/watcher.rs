//! The loop of a watch: inputs from a [`Source`] (scan now, kernel events,
//! stop) become the [`Tracker`]'s changes, [`Event`]s, metrics, and, with
//! `--kill-after`, destroys. Everything it does to the system goes through
//! a [`Machine`] (the dump, the owner lookup, the destroy, the clock), so
//! that the loop is tested with a fake source and a fake machine; [`Live`]
//! is the real one.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use crate::container::Container;
use crate::metrics::{LoopLabels, ScanSample};
use crate::model::{Owner, Socket};
use crate::scan::{KillError, Killed, NetnsLabel, ScanError};

use super::serve::Publisher;
use super::source::{Formed, Input, KernelEvent, Source};
use super::{
    Change, Event, HostSnapshot, KillAction, KillPolicy, LoopEvent, LoopKey, LoopKind, NetnsChange,
    Poller, Totals, Tracked, Tracker, Warning, WatchError,
};

/// What a watch does to the system, besides waiting for its source.
pub trait Machine {
    /// One scan of the namespace, or of every namespace.
    fn scan(&mut self) -> Result<HostSnapshot, ScanError>;
    /// The owners of these new loops, by socket inode.
    fn owners(&mut self, loops: &[&Socket]) -> io::Result<HashMap<u32, Vec<Owner>>>;
    /// Destroys a loop, in its namespace (`None`: the watcher's own).
    fn destroy(&mut self, sock: &Socket, netns: Option<&NetnsLabel>) -> Result<Killed, KillError>;
    /// The container of a process (a namespace's, for its loops' events).
    fn container_of(&mut self, pid: u32) -> Option<Container>;
    /// The monotonic clock.
    fn now(&self) -> Instant;
    /// The wall clock (the events' times).
    fn wall(&self) -> SystemTime;
}

/// The live system: [`Poller`] scans, `/proc` owners, `SOCK_DESTROY`.
#[derive(Debug)]
pub struct Live {
    poller: Poller,
}

impl Live {
    /// Scans the caller's namespace, or every namespace of the host.
    pub fn new(all_netns: bool) -> io::Result<Live> {
        Ok(Live {
            poller: Poller::new(all_netns)?,
        })
    }
}

impl Machine for Live {
    fn scan(&mut self) -> Result<HostSnapshot, ScanError> {
        self.poller.scan()
    }

    fn owners(&mut self, loops: &[&Socket]) -> io::Result<HashMap<u32, Vec<Owner>>> {
        super::owners_of(loops.iter().copied())
    }

    fn destroy(&mut self, sock: &Socket, netns: Option<&NetnsLabel>) -> Result<Killed, KillError> {
        match netns {
            Some(n) => super::kill_in(sock, n),
            None => super::kill(sock),
        }
    }

    fn container_of(&mut self, pid: u32) -> Option<Container> {
        crate::container::of_pid(pid)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The caller's handler of events.
pub type OnEvent<'a> = &'a mut dyn FnMut(SystemTime, &Event) -> io::Result<()>;

fn emit(on_event: OnEvent, time: SystemTime, e: &Event) -> Result<(), WatchError> {
    on_event(time, e).map_err(WatchError::Output)
}

/// A watch in progress.
pub struct Watcher<'a> {
    machine: &'a mut dyn Machine,
    publisher: Publisher,
    on_event: OnEvent<'a>,
    tracker: Tracker,
    /// `--kill-after`.
    policy: Option<KillPolicy>,
    /// The namespace of each loop outside the watcher's own (`--all-netns`).
    netns_of: HashMap<LoopKey, NetnsLabel>,
    totals: Totals,
}

impl std::fmt::Debug for Watcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("tracker", &self.tracker)
            .field("policy", &self.policy)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl<'a> Watcher<'a> {
    /// A watch that destroys loops present for `kill_after`, if given.
    pub fn new(
        kill_after: Option<Duration>,
        machine: &'a mut dyn Machine,
        publisher: Publisher,
        on_event: OnEvent<'a>,
    ) -> Watcher<'a> {
        Watcher {
            machine,
            publisher,
            on_event,
            tracker: Tracker::new(),
            policy: kill_after.map(KillPolicy::new),
            netns_of: HashMap::new(),
            totals: Totals::default(),
        }
    }

    /// Runs until the source says stop, then says [`Event::Stopped`].
    pub fn run(&mut self, source: &mut dyn Source) -> Result<Totals, WatchError> {
        loop {
            let wake = self.policy.as_ref().and_then(|p| p.next_due(&self.tracker));
            match source.next(wake)? {
                Input::Scan => {
                    self.scan()?;
                    self.publish()?;
                }
                Input::Events(events, lost) => self.kernel(&events, lost)?,
                Input::Stop => break,
            }
        }
        let t = self.totals;
        emit(self.on_event, self.machine.wall(), &Event::Stopped(t))?;
        Ok(t)
    }

    /// Metrics, for tests.
    #[cfg(test)]
    fn metrics_text(&self) -> String {
        self.publisher.metrics().render()
    }

    fn warn(&mut self, kind: Warning, error: String, total: Option<u64>) -> Result<(), WatchError> {
        let e = Event::Warning { kind, error, total };
        emit(self.on_event, self.machine.wall(), &e)
    }

    fn netns_event(
        &mut self,
        change: NetnsChange,
        netns: &NetnsLabel,
        error: Option<&str>,
    ) -> Result<(), WatchError> {
        let e = Event::Netns {
            change,
            netns,
            error,
        };
        emit(self.on_event, self.machine.wall(), &e)
    }

    /// Says what happened to a loop, with its namespace and that
    /// namespace's container when it is not the watcher's own.
    fn loop_event(
        &mut self,
        kind: LoopKind,
        t: &Tracked,
        seen: Option<Duration>,
        error: Option<&str>,
        kill: Option<(u64, bool)>,
    ) -> Result<(), WatchError> {
        let ns = self.netns_of.get(&LoopKey::of(&t.sock));
        let container = ns
            .and_then(|n| n.pid)
            .and_then(|p| self.machine.container_of(p));
        let e = Event::Loop(LoopEvent {
            kind,
            tracked: t,
            netns: ns.map(|n| (n, container.as_ref())),
            seen,
            error,
            kills_on_port: kill.map(|k| k.0),
            reserve_advised: kill.is_some_and(|k| k.1),
        });
        emit(self.on_event, self.machine.wall(), &e)
    }

    /// Renders the metrics to the page and the textfile.
    fn publish(&mut self) -> Result<(), WatchError> {
        match self.publisher.publish() {
            Some(error) => self.warn(Warning::Output, error, None),
            None => Ok(()),
        }
    }

    /// One dump of the namespace (or of each, `--all-netns`): loops
    /// appeared and gone since the last, the namespaces that came and
    /// went, the kills due, the metrics.
    fn scan(&mut self) -> Result<(), WatchError> {
        let t0 = self.machine.now();
        self.totals.scans += 1;
        let snap = match self.machine.scan() {
            Ok(snap) => snap,
            Err(e) => {
                self.totals.scan_errors += 1;
                self.publisher.metrics().record_scan_error();
                let total = Some(self.totals.scan_errors);
                return self.warn(Warning::Scan, format!("scan failed: {e}"), total);
            }
        };
        for n in &snap.appeared {
            self.netns_event(NetnsChange::Appeared, n, None)?;
        }
        for (n, why) in &snap.newly_skipped {
            self.netns_event(NetnsChange::Skipped, n, Some(why))?;
        }
        self.netns_of.extend(snap.netns_of.clone());
        let fresh = self.tracker.new_loops(&snap.loops);
        let owners = if fresh.is_empty() {
            HashMap::new()
        } else {
            match self.machine.owners(&fresh) {
                Ok(o) => o,
                Err(e) => {
                    let error = format!("looking up owners: {e}");
                    self.warn(Warning::Owner, error, None)?;
                    HashMap::new()
                }
            }
        };
        let changes = self.tracker.observe(t0, &snap.loops, &owners);
        if let Some(p) = self.policy.as_mut() {
            p.retain_present(&self.tracker);
        }
        let mut appeared = vec![];
        for c in &changes {
            match c {
                Change::Appeared(t) => {
                    self.totals.loops_seen += 1;
                    appeared.push(labels(t, &self.netns_of));
                    self.loop_event(LoopKind::Appeared, t, None, None, None)?;
                }
                Change::Gone(t, d) => self.loop_event(LoopKind::Gone, t, Some(*d), None, None)?,
            }
        }
        self.kill_due()?;
        for n in &snap.gone {
            self.netns_event(NetnsChange::Gone, n, None)?;
        }
        self.forget_netns();
        self.publisher.metrics().record_scan(&ScanSample {
            loops: self.present_labels(),
            appeared,
            exposed_listeners: snap.exposed_listeners,
            sockets: snap.sockets,
            namespaces: snap.namespaces,
            namespaces_skipped: snap.skipped,
            duration: self.machine.now().saturating_duration_since(t0),
        });
        Ok(())
    }

    /// One batch of kernel events: loops that formed and ended; after lost
    /// events, a scan (what they would have said is in the socket table).
    fn kernel(
        &mut self,
        events: &[KernelEvent],
        lost: Option<(u64, u64)>,
    ) -> Result<(), WatchError> {
        let mut appeared = vec![];
        let mut changed = false;
        for e in events {
            changed |= match e {
                KernelEvent::Loop(formed) => self.formed(formed, &mut appeared)?,
                KernelEvent::End { cookie, lived } => self.ended(*cookie, *lived)?,
            };
        }
        if changed {
            let present = self.present_labels();
            self.publisher.metrics().record_loops(&present, &appeared);
            self.forget_netns();
        }
        if let Some((loops, ends)) = lost {
            emit(
                self.on_event,
                self.machine.wall(),
                &Event::Lost { loops, ends },
            )?;
            self.scan()?;
            changed = true;
        }
        let before = self.totals.kills;
        self.kill_due()?;
        if self.totals.kills != before {
            // a destroyed loop is forgotten at once: its end event finds nothing
            let present = self.present_labels();
            self.publisher.metrics().record_loops(&present, &[]);
            self.forget_netns();
            changed = true;
        }
        if changed {
            self.publish()?;
        }
        Ok(())
    }

    /// A loop the kernel reported: `true` if it is new (a scan may have
    /// found it first), said and counted (its labels added to `appeared`).
    fn formed(&mut self, f: &Formed, appeared: &mut Vec<LoopLabels>) -> Result<bool, WatchError> {
        let t = Tracked {
            sock: f.socket,
            owners: vec![f.owner.clone()],
            since: self.machine.now(),
        };
        if let Some(n) = &f.netns {
            self.netns_of.insert(LoopKey::of(&f.socket), n.clone());
        }
        if !self.tracker.insert(t.clone()) {
            return Ok(false);
        }
        self.totals.loops_seen += 1;
        appeared.push(labels(&t, &self.netns_of));
        self.loop_event(LoopKind::Appeared, &t, None, None, None)?;
        Ok(true)
    }

    /// A loop's end the kernel reported: `true` if it was present (said,
    /// with the kernel's own lifetime when the program saw the start).
    fn ended(&mut self, cookie: u64, lived: Option<Duration>) -> Result<bool, WatchError> {
        let Some((t, held)) = self.tracker.end(cookie, self.machine.now()) else {
            return Ok(false);
        };
        let held = lived.unwrap_or(held);
        self.loop_event(LoopKind::Gone, &t, Some(held), None, None)?;
        Ok(true)
    }

    /// `--kill-after`: destroys the loops present for that long
    /// ([`KillPolicy`]), and says so.
    fn kill_due(&mut self) -> Result<(), WatchError> {
        let Some(policy) = self.policy.as_mut() else {
            return Ok(());
        };
        let (machine, netns_of) = (&mut *self.machine, &self.netns_of);
        let now = machine.now();
        let actions = policy.run(&mut self.tracker, now, |t| {
            machine.destroy(&t.sock, netns_of.get(&LoopKey::of(&t.sock)))
        });
        for a in actions {
            match a {
                KillAction::Killed {
                    tracked,
                    seen,
                    kills_on_port,
                    reserve_advised,
                } => {
                    self.totals.kills += 1;
                    self.publisher.metrics().record_kill(true);
                    let kill = Some((kills_on_port, reserve_advised));
                    self.loop_event(LoopKind::Killed, &tracked, Some(seen), None, kill)?;
                }
                KillAction::Failed {
                    tracked,
                    seen,
                    error,
                } => {
                    // said once, not retried every scan
                    self.publisher.metrics().record_kill(false);
                    let e = Some(error.as_str());
                    self.loop_event(LoopKind::KillFailed, &tracked, Some(seen), e, None)?;
                }
            }
        }
        Ok(())
    }

    /// The metric labels of the loops present.
    fn present_labels(&self) -> Vec<LoopLabels> {
        self.tracker
            .present()
            .map(|t| labels(t, &self.netns_of))
            .collect()
    }

    /// Forgets the namespaces of loops no longer present.
    fn forget_netns(&mut self) {
        let tracker = &self.tracker;
        self.netns_of
            .retain(|k, _| tracker.present().any(|t| LoopKey::of(&t.sock) == *k));
    }
}

/// A loop's `tcploop_loops` labels.
fn labels(t: &Tracked, netns_of: &HashMap<LoopKey, NetnsLabel>) -> LoopLabels {
    let c = t.owners.first().and_then(|o| o.container.as_ref());
    LoopLabels {
        port: t.sock.local.port(),
        command: t.command(),
        netns: netns_of
            .get(&LoopKey::of(&t.sock))
            .map(|n| n.inode.to_string())
            .unwrap_or_default(),
        container: c.map(|c| c.label()).unwrap_or_default(),
        pod: c.and_then(|c| c.pod_label()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    //! The loop on a fake source (a script of inputs, each at a time of a
    //! fake clock) and a fake machine (scripted scans, owners and destroy
    //! results): every event, metric and destroy is checked on literal values.

    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;
    use crate::model::TcpState;
    use crate::scan::PortState;

    /// A fake clock shared by the source (which moves it) and the machine.
    #[derive(Clone)]
    struct Clock {
        t0: Instant,
        at: Rc<Cell<Duration>>,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                t0: Instant::now(),
                at: Rc::new(Cell::new(Duration::ZERO)),
            }
        }

        fn now(&self) -> Instant {
            self.t0 + self.at.get()
        }
    }

    /// Inputs, each at a time (seconds from the start); records the wake
    /// deadline it was given each time, in seconds from the start.
    struct FakeSource {
        clock: Clock,
        script: VecDeque<(f64, Input)>,
        wakes: Vec<Option<f64>>,
    }

    impl Source for FakeSource {
        fn next(&mut self, wake: Option<Instant>) -> Result<Input, WatchError> {
            let t0 = self.clock.t0;
            self.wakes
                .push(wake.map(|w| w.duration_since(t0).as_secs_f64()));
            let Some((at, input)) = self.script.pop_front() else {
                return Ok(Input::Stop);
            };
            self.clock.at.set(Duration::from_secs_f64(at));
            Ok(input)
        }
    }

    /// Scripted scans (one a scan, in order), owners by inode, destroys
    /// recorded (port, in another namespace).
    struct FakeMachine {
        clock: Clock,
        scans: VecDeque<Result<HostSnapshot, ScanError>>,
        owners: HashMap<u32, Vec<Owner>>,
        owner_error: bool,
        destroyed: Vec<(u16, Option<u64>)>,
    }

    impl Machine for FakeMachine {
        fn scan(&mut self) -> Result<HostSnapshot, ScanError> {
            self.scans.pop_front().expect("a scan was scripted")
        }

        fn owners(&mut self, loops: &[&Socket]) -> io::Result<HashMap<u32, Vec<Owner>>> {
            if self.owner_error {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            Ok(loops
                .iter()
                .filter_map(|s| Some((s.inode, self.owners.get(&s.inode)?.clone())))
                .collect())
        }

        fn destroy(
            &mut self,
            sock: &Socket,
            netns: Option<&NetnsLabel>,
        ) -> Result<Killed, KillError> {
            self.destroyed
                .push((sock.local.port(), netns.map(|n| n.inode)));
            Ok(Killed::Destroyed {
                port: PortState::Free,
                loops_again: Some(false),
            })
        }

        fn container_of(&mut self, _pid: u32) -> Option<Container> {
            None
        }

        fn now(&self) -> Instant {
            self.clock.now()
        }

        fn wall(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + self.clock.at.get()
        }
    }

    fn looped(port: u16, cookie: u32) -> Socket {
        let a = format!("127.0.0.1:{port}");
        let mut s = Socket::fixture(TcpState::Established, &a, &a);
        s.cookie = [cookie, 0];
        s.inode = 1000 + cookie;
        s
    }

    fn owner(comm: &str) -> Owner {
        Owner {
            pid: 7,
            comm: comm.into(),
            fd: 3,
            container: None,
        }
    }

    fn snapshot(loops: &[Socket]) -> Result<HostSnapshot, ScanError> {
        Ok(HostSnapshot {
            loops: loops.to_vec(),
            sockets: 10,
            namespaces: 1,
            ..Default::default()
        })
    }

    fn netns(inode: u64) -> NetnsLabel {
        NetnsLabel {
            inode,
            pid: Some(40),
            comm: Some("pause".into()),
            name: None,
            path: Some("/proc/40/ns/net".into()),
        }
    }

    /// One line a event: the seconds of its time, and what it says.
    fn describe(time: SystemTime, e: &Event) -> String {
        let s = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let what = match e {
            Event::Started(_) => "started".to_string(),
            Event::Loop(l) => {
                let mut w = format!(
                    "{:?} {} {}",
                    l.kind,
                    l.tracked.sock.local.port(),
                    l.tracked.command()
                );
                if let Some(d) = l.seen {
                    w += &format!(" after {}s", d.as_secs_f64());
                }
                if let Some((n, _)) = l.netns {
                    w += &format!(" in {}", n.inode);
                }
                if let Some(k) = l.kills_on_port {
                    w += &format!(" kill {k}");
                }
                w
            }
            Event::Netns {
                change,
                netns,
                error,
            } => {
                format!("netns {change:?} {} {}", netns.inode, error.unwrap_or(""))
            }
            Event::Lost { loops, ends } => format!("lost {loops} {ends}"),
            Event::Warning { kind, error, total } => format!("{kind:?} {error} {total:?}"),
            Event::Stopped(t) => format!(
                "stopped scans {} errors {} seen {} kills {}",
                t.scans, t.scan_errors, t.loops_seen, t.kills
            ),
        };
        format!("{s} {what}")
    }

    struct Run {
        events: Vec<String>,
        metrics: String,
        totals: Totals,
        wakes: Vec<Option<f64>>,
        destroyed: Vec<(u16, Option<u64>)>,
    }

    /// Runs a watch over `script` and `scans`.
    fn watch(
        kill_after: Option<Duration>,
        script: Vec<(f64, Input)>,
        scans: Vec<Result<HostSnapshot, ScanError>>,
        tweak: impl FnOnce(&mut FakeMachine),
    ) -> Run {
        let clock = Clock::new();
        let mut source = FakeSource {
            clock: clock.clone(),
            script: script.into(),
            wakes: vec![],
        };
        let mut machine = FakeMachine {
            clock,
            scans: scans.into(),
            owners: HashMap::from([(1001, vec![owner("python3")])]),
            owner_error: false,
            destroyed: vec![],
        };
        tweak(&mut machine);
        let mut events = vec![];
        let mut on_event = |t: SystemTime, e: &Event| -> io::Result<()> {
            events.push(describe(t, e));
            Ok(())
        };
        let mut w = Watcher::new(
            kill_after,
            &mut machine,
            Publisher::new(None),
            &mut on_event,
        );
        let totals = w.run(&mut source).unwrap();
        let metrics = w.metrics_text();
        drop(w);
        assert!(machine.scans.is_empty(), "scans left: {:?}", machine.scans);
        Run {
            events,
            metrics,
            totals,
            wakes: source.wakes,
            destroyed: machine.destroyed,
        }
    }

    fn has(metrics: &str, line: &str) -> bool {
        metrics.lines().any(|l| l == line)
    }

    fn loop_event(socket: Socket, comm: &str, netns: Option<NetnsLabel>) -> KernelEvent {
        KernelEvent::Loop(Box::new(Formed {
            socket,
            owner: Owner {
                pid: 9,
                comm: comm.into(),
                fd: -1,
                container: None,
            },
            netns,
        }))
    }

    #[test]
    fn a_polled_loop_appears_then_goes_and_the_metrics_follow() {
        let a = looped(40004, 1);
        let r = watch(
            None,
            vec![(0.0, Input::Scan), (1.0, Input::Scan), (2.5, Input::Scan)],
            vec![snapshot(&[a]), snapshot(&[a]), snapshot(&[])],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "0 Appeared 40004 python3",
                "2.5 Gone 40004 python3 after 2.5s",
                "2.5 stopped scans 3 errors 0 seen 1 kills 0",
            ]
        );
        assert_eq!(
            r.totals,
            Totals {
                scans: 3,
                scan_errors: 0,
                loops_seen: 1,
                kills: 0
            }
        );
        // the loop's series stays, at 0; it was seen once
        assert!(has(&r.metrics, "tcploop_loops_present 0"), "{}", r.metrics);
        assert!(has(
            &r.metrics,
            r#"tcploop_loops{port="40004",command="python3"} 0"#
        ));
        assert!(has(
            &r.metrics,
            r#"tcploop_loops_seen_total{port="40004",command="python3"} 1"#
        ));
        assert!(has(&r.metrics, "tcploop_scans_total 3"), "{}", r.metrics);
        assert!(has(&r.metrics, "tcploop_sockets 10"));
        // polling kills at its scans: no deadline is asked of the source
        assert!(r.wakes.iter().all(Option::is_none));
    }

    #[test]
    fn the_gauge_counts_a_loop_while_it_is_present() {
        let a = looped(40004, 1);
        let r = watch(None, vec![(0.0, Input::Scan)], vec![snapshot(&[a])], |_| {});
        assert!(has(&r.metrics, "tcploop_loops_present 1"), "{}", r.metrics);
        assert!(has(
            &r.metrics,
            r#"tcploop_loops{port="40004",command="python3"} 1"#
        ));
    }

    #[test]
    fn kill_after_kills_only_after_the_delay_and_only_a_loop_still_present() {
        let a = looped(40004, 1);
        let b = looped(40006, 2);
        let r = watch(
            Some(Duration::from_secs(5)),
            vec![
                (0.0, Input::Scan),
                (1.0, Input::Events(vec![loop_event(a, "redis", None)], None)),
                (2.0, Input::Events(vec![loop_event(b, "curl", None)], None)),
                // b ends before it is due; a is not due yet
                (
                    4.0,
                    Input::Events(
                        vec![KernelEvent::End {
                            cookie: b.cookie(),
                            lived: None,
                        }],
                        None,
                    ),
                ),
                // the deadline the watch asked for: a is due
                (6.0, Input::Events(vec![], None)),
            ],
            vec![snapshot(&[])],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "1 Appeared 40004 redis",
                "2 Appeared 40006 curl",
                "4 Gone 40006 curl after 2s",
                "6 Killed 40004 redis after 5s kill 1",
                "6 stopped scans 1 errors 0 seen 2 kills 1",
            ]
        );
        assert_eq!(
            r.destroyed,
            [(40004, None)],
            "only the loop due and present"
        );
        // the source was asked to wake when the first loop became due
        assert_eq!(
            r.wakes,
            [None, None, Some(6.0), Some(6.0), Some(6.0), None],
            "{:?}",
            r.wakes
        );
        assert!(has(&r.metrics, "tcploop_kills_total 1"), "{}", r.metrics);
        // the gauge drops with the kill (it stayed at 1 until the next event)
        assert!(has(&r.metrics, "tcploop_loops_present 0"));
        assert!(has(
            &r.metrics,
            r#"tcploop_loops_seen_total{port="40006",command="curl"} 1"#
        ));
    }

    #[test]
    fn a_loop_that_ends_is_gone_with_the_kernels_lifetime_and_an_unknown_end_says_nothing() {
        let a = looped(40004, 1);
        let r = watch(
            None,
            vec![
                (0.0, Input::Scan),
                (
                    1.0,
                    Input::Events(
                        vec![
                            loop_event(a, "redis", None),
                            KernelEvent::End {
                                cookie: 99,
                                lived: None,
                            },
                            KernelEvent::End {
                                cookie: a.cookie(),
                                lived: Some(Duration::from_micros(1500)),
                            },
                        ],
                        None,
                    ),
                ),
            ],
            vec![snapshot(&[])],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "1 Appeared 40004 redis",
                "1 Gone 40004 redis after 0.0015s",
                "1 stopped scans 1 errors 0 seen 1 kills 0",
            ]
        );
        // seen, though gone before any scan could find it
        assert!(has(
            &r.metrics,
            r#"tcploop_loops_seen_total{port="40004",command="redis"} 1"#
        ));
        assert!(has(&r.metrics, "tcploop_loops_present 0"));
    }

    #[test]
    fn lost_events_are_said_and_a_scan_catches_up() {
        let a = looped(40004, 1);
        let r = watch(
            None,
            vec![
                (0.0, Input::Scan),
                (1.0, Input::Events(vec![], Some((3, 1)))),
            ],
            // the scan after the loss finds the loop the lost event was about
            vec![snapshot(&[]), snapshot(&[a])],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "1 lost 3 1",
                "1 Appeared 40004 python3",
                "1 stopped scans 2 errors 0 seen 1 kills 0",
            ]
        );
        assert!(has(&r.metrics, "tcploop_loops_present 1"));
        assert!(has(&r.metrics, "tcploop_scans_total 2"));
    }

    #[test]
    fn a_loop_seen_twice_by_a_scan_and_an_event_is_one_loop() {
        let a = looped(40004, 1);
        let r = watch(
            None,
            vec![
                (0.0, Input::Scan),
                (1.0, Input::Events(vec![loop_event(a, "redis", None)], None)),
            ],
            vec![snapshot(&[a])],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "0 Appeared 40004 python3",
                "1 stopped scans 1 errors 0 seen 1 kills 0"
            ]
        );
    }

    #[test]
    fn namespaces_that_appear_and_go_are_said_and_their_loops_carry_them() {
        let a = looped(40004, 1);
        let ns = netns(4026532000);
        let first = HostSnapshot {
            loops: vec![a],
            netns_of: HashMap::from([(LoopKey::of(&a), ns.clone())]),
            namespaces: 3,
            appeared: vec![ns.clone()],
            newly_skipped: vec![(netns(4026532001), "Permission denied".into())],
            skipped: 1,
            ..Default::default()
        };
        let second = HostSnapshot {
            namespaces: 1,
            gone: vec![ns.clone()],
            ..Default::default()
        };
        let r = watch(
            Some(Duration::from_secs(1)),
            vec![(0.0, Input::Scan), (1.0, Input::Scan), (2.0, Input::Scan)],
            vec![
                Ok(first),
                snapshot(&[a]).map(|mut s| {
                    s.netns_of.insert(LoopKey::of(&a), ns.clone());
                    s
                }),
                Ok(second),
            ],
            |_| {},
        );
        assert_eq!(
            r.events,
            [
                "0 netns Appeared 4026532000 ",
                "0 netns Skipped 4026532001 Permission denied",
                "0 Appeared 40004 python3 in 4026532000",
                "1 Killed 40004 python3 after 1s in 4026532000 kill 1",
                "2 netns Gone 4026532000 ",
                "2 stopped scans 3 errors 0 seen 1 kills 1",
            ]
        );
        // destroyed in its own namespace
        assert_eq!(r.destroyed, [(40004, Some(4026532000))]);
        assert!(has(&r.metrics, "tcploop_namespaces 1"), "{}", r.metrics);
        assert!(has(&r.metrics, "tcploop_namespaces_skipped 0"));
        assert!(has(
            &r.metrics,
            r#"tcploop_loops_seen_total{port="40004",command="python3",netns="4026532000"} 1"#
        ));
    }

    #[test]
    fn a_failed_scan_or_owner_lookup_is_a_warning_and_the_watch_goes_on() {
        let a = looped(40004, 1);
        let r = watch(
            None,
            vec![(0.0, Input::Scan), (1.0, Input::Scan)],
            vec![
                Err(ScanError::Namespaces(io::Error::from_raw_os_error(
                    libc::EACCES,
                ))),
                snapshot(&[a]),
            ],
            |m| m.owner_error = true,
        );
        assert_eq!(
            r.events,
            [
                "0 Scan scan failed: listing the network namespaces: Permission denied \
                 (os error 13) Some(1)",
                "1 Owner looking up owners: Permission denied (os error 13) None",
                "1 Appeared 40004 unknown",
                "1 stopped scans 2 errors 1 seen 1 kills 0",
            ]
        );
        assert!(
            has(&r.metrics, "tcploop_scan_errors_total 1"),
            "{}",
            r.metrics
        );
        assert!(has(&r.metrics, "tcploop_scans_total 2"));
    }
}
