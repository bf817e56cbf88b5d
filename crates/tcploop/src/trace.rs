//! The engine of `tcploop trace` (and of `watch --source ebpf`): loops
//! reported by the kernel the instant they form, instead of found by
//! polling the socket tables.
//!
//! A loop that lives for microseconds (the client connects to itself, reads
//! its own bytes, fails, closes with RST) is invisible to any poll; the
//! kernel's `inet_sock_set_state` tracepoint sees every one. The BPF program
//! ([`crate::sys::bpf::loops`]) filters in the kernel and sends one event a
//! loop, and one when the loop's socket leaves ESTABLISHED. This module
//! turns those into the domain's events:
//!
//! - [`Events`]: the attached program, its ring buffer and the signals, read
//!   with one `poll(2)` and no timer; drops of the ring buffer come out as
//!   [`Batch::lost`];
//! - [`Filter`]: which loops the user asked for (port, process trees);
//! - [`Book`]: the loops reported and still alive, so that an end is
//!   reported with its loop and its lifetime (bounded: [`Book::CAPACITY`]);
//! - [`owner_of`]: the owner of a loop when the event's task is not it;
//! - [`trace`]: the whole `tcploop trace` loop, reporting through a callback.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use crate::model::{Socket, TcpState};
use crate::ports::PortSet;
use crate::scan::{self, KillError, Killed, NetnsLabel};
use crate::sys::bpf::loops::{self as kernel, Counters, LoopSource};
pub use crate::sys::bpf::loops::{EventKind, LoopEvent};
use crate::sys::bpf::Refusal;
use crate::sys::netns;
use crate::sys::poll;
use crate::sys::signal::SignalFd;

/// Which network namespaces to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetnsScope {
    /// The caller's own (the filter runs in the kernel).
    #[default]
    Current,
    /// Every namespace of the host (root).
    All,
}

/// Which loops to report, besides the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only loops on these ports.
    pub ports: Option<PortSet>,
    /// Only loops made by these processes or their descendants.
    pub trees: Vec<u32>,
}

impl Filter {
    /// Whether the loop of this event is wanted. A process belongs to a
    /// tree when it is the tree's root or the root is among its ancestors,
    /// which the kernel recorded at the event: a child that has exited
    /// since still counts.
    pub fn matches(&self, e: &LoopEvent) -> bool {
        if let Some(p) = &self.ports {
            if !p.contains(e.addr.port()) {
                return false;
            }
        }
        self.trees.is_empty()
            || self
                .trees
                .iter()
                .any(|&root| e.pid == root || e.ancestors.contains(&root))
    }
}

/// How the owner of a loop was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerFrom {
    /// The task inside `connect()` at the event (the usual case).
    Event,
    /// The event ran outside the owner (socket lock not held): the owner
    /// was found through the socket's inode in `/proc/*/fd`.
    SocketInode,
    /// Neither: the task at the event is given, unconfirmed.
    Unconfirmed,
}

/// A loop, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSeen {
    /// Wall-clock time of the state change.
    pub time: SystemTime,
    /// CLOCK_MONOTONIC nanoseconds of the state change.
    pub monotonic_ns: u64,
    /// The process that made it.
    pub pid: u32,
    /// Its thread.
    pub tid: u32,
    /// Its command name (raw bytes from the kernel: escape before printing).
    pub command: String,
    /// How `pid` was established.
    pub owner_from: OwnerFrom,
    /// The loop's address and port.
    pub addr: SocketAddr,
    /// Its network namespace inode.
    pub netns: u32,
    /// The socket cookie.
    pub cookie: u64,
    /// The socket inode (0: none).
    pub inode: u64,
    /// The task's cgroup v2 id.
    pub cgroup_id: u64,
}

impl LoopSeen {
    /// The loop as the socket tables would show it: an ESTABLISHED socket
    /// whose local address is its peer, with the event's cookie and inode.
    pub fn socket(&self) -> Socket {
        Socket {
            family: if self.addr.is_ipv4() {
                libc::AF_INET as u8
            } else {
                libc::AF_INET6 as u8
            },
            state: TcpState::Established,
            local: self.addr,
            peer: self.addr,
            ifindex: 0,
            cookie: [self.cookie as u32, (self.cookie >> 32) as u32],
            expires_ms: 0,
            uid: 0,
            inode: self.inode as u32,
        }
    }
}

/// The end of a reported loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopEnded {
    /// The loop, as it was reported.
    pub seen: LoopSeen,
    /// Wall-clock time of the end.
    pub time: SystemTime,
    /// CLOCK_MONOTONIC nanoseconds of the end.
    pub monotonic_ns: u64,
    /// How long the loop lived (from SYN_RECV to leaving ESTABLISHED).
    pub lived: Duration,
    /// The state it went to (CLOSE after an RST or a destroy, FIN-WAIT-1
    /// after a graceful close).
    pub new_state: TcpState,
}

/// What `--kill` did to one loop.
#[derive(Debug)]
pub struct KillResult {
    /// The loop's cookie and address.
    pub cookie: u64,
    /// Its address.
    pub addr: SocketAddr,
    /// The outcome.
    pub outcome: Result<Killed, KillError>,
}

/// One thing to report.
#[derive(Debug)]
pub enum TraceEvent {
    /// The program is attached: loops are seen from now on. `netns`: the
    /// namespace traced (`None`: all).
    Attached {
        /// The namespace's inode, or `None` for every namespace.
        netns: Option<u32>,
    },
    /// A loop formed.
    Loop(LoopSeen),
    /// A reported loop ended.
    End(LoopEnded),
    /// The ring buffer was full: this many events were lost.
    Lost {
        /// Loop events lost.
        loops: u64,
        /// End events lost.
        ends: u64,
    },
    /// `--kill` acted on a loop.
    Kill(KillResult),
}

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `--count` loops were seen.
    Count,
    /// `--duration` passed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The traced command exited.
    CommandExited,
}

/// The totals at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Loops reported.
    pub loops: u64,
    /// Ends reported.
    pub ends: u64,
    /// Loop events lost to a full ring buffer (every namespace, before the
    /// filters: the program counts them before anything is known).
    pub lost_loops: u64,
    /// End events lost.
    pub lost_ends: u64,
    /// Loops destroyed by `--kill`.
    pub killed: u64,
    /// Loops `--kill` failed to destroy (gone before included: the client won the race).
    pub kill_failed: u64,
    /// How long the trace ran.
    pub elapsed: Duration,
    /// Why it stopped.
    pub stop: Stop,
    /// The traced command's exit code (128 + signal when a signal ended it).
    pub command_status: Option<u8>,
}

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    /// Which namespaces.
    pub scope: NetnsScope,
    /// Which loops (ports, process trees given by the user).
    pub filter: Filter,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many loops.
    pub count: Option<u64>,
    /// Run this command (after the program is attached) and trace only its
    /// process tree; stop when it exits.
    pub command: Option<Vec<OsString>>,
    /// Destroy each loop as soon as it is seen.
    pub kill: bool,
    /// Ring buffer size (tests and benchmarks).
    pub ring_bytes: Option<u32>,
}

/// Why tracing failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The kernel or the privileges do not allow the BPF program.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The traced command could not start.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A system call failed (poll, signalfd, counters, the own namespace).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TraceError {
    move |source| TraceError::Io { what, source }
}

/// The kernel's loop events, the signals, and the drop counters, read
/// together with one `poll(2)`.
#[derive(Debug)]
pub struct Events {
    source: LoopSource,
    signals: SignalFd,
    counters: Counters,
    /// CLOCK_MONOTONIC and the wall clock sampled at the same moment.
    clock: (u64, SystemTime),
    /// The inode of the caller's namespace.
    pub own_netns: u32,
}

/// What one wait brought.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events read, in order.
    pub events: Vec<LoopEvent>,
    /// Events lost since the previous batch (loops, ends), if any.
    pub lost: Option<(u64, u64)>,
    /// Signals that arrived (SIGINT, SIGTERM, SIGCHLD).
    pub signals: Vec<i32>,
}

impl Events {
    /// Loads and attaches the program for `scope`, then blocks SIGINT,
    /// SIGTERM and SIGCHLD, read from a signalfd from now on: call this
    /// before starting any thread. When it fails, nothing was blocked.
    pub fn open(scope: NetnsScope, ring_bytes: Option<u32>) -> Result<Events, TraceError> {
        let own_netns =
            netns::current().map_err(io_err("reading the own network namespace"))? as u32;
        let source = LoopSource::open(&kernel::Options {
            netns: match scope {
                NetnsScope::Current => Some(own_netns),
                NetnsScope::All => None,
            },
            ring_bytes,
        })?;
        let signals = SignalFd::new().map_err(io_err("signalfd"))?;
        Ok(Events {
            source,
            signals,
            counters: Counters::default(),
            clock: (kernel::monotonic_ns(), SystemTime::now()),
            own_netns,
        })
    }

    /// The wall-clock time of a CLOCK_MONOTONIC instant.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let (m0, w0) = self.clock;
        if monotonic_ns >= m0 {
            w0 + Duration::from_nanos(monotonic_ns - m0)
        } else {
            w0 - Duration::from_nanos(m0 - monotonic_ns)
        }
    }

    /// Waits for events or a signal (at most `timeout`; `None`: no limit)
    /// and returns what is there.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Batch, TraceError> {
        let ready = poll::readable(&[self.source.fd(), self.signals.as_fd()], timeout)
            .map_err(io_err("poll"))?;
        let mut b = Batch::default();
        if ready[0] {
            self.source.drain(|e| b.events.push(e));
            b.lost = self.check_lost()?;
        }
        while let Some(s) = self.signals.take().map_err(io_err("reading signals"))? {
            b.signals.push(s);
        }
        Ok(b)
    }

    /// Reads what is left in the ring buffer without waiting.
    pub fn drain(&mut self) -> Result<Batch, TraceError> {
        let mut b = Batch::default();
        self.source.drain(|e| b.events.push(e));
        b.lost = self.check_lost()?;
        Ok(b)
    }

    fn check_lost(&mut self) -> Result<Option<(u64, u64)>, TraceError> {
        let c = self
            .source
            .counters()
            .map_err(io_err("reading the counters"))?;
        let lost = (
            c.loop_drops - self.counters.loop_drops,
            c.end_drops - self.counters.end_drops,
        );
        self.counters = c;
        Ok((lost != (0, 0)).then_some(lost))
    }
}

/// The loops reported and not yet ended, by cookie: an end is reported only
/// for a loop that was, with its lifetime. Bounded: past
/// [`Book::CAPACITY`] loops alive at once, the oldest are forgotten (the
/// kernel's own table of live loops is bounded the same way).
#[derive(Debug, Default)]
pub struct Book {
    live: HashMap<u64, LoopSeen>,
}

impl Book {
    /// How many live loops are remembered.
    pub const CAPACITY: usize = kernel::LOOPS_TRACKED as usize;

    /// Remembers a reported loop.
    pub fn add(&mut self, seen: &LoopSeen) {
        if self.live.len() >= Self::CAPACITY {
            if let Some(oldest) = self
                .live
                .values()
                .min_by_key(|s| s.monotonic_ns)
                .map(|s| s.cookie)
            {
                self.live.remove(&oldest);
            }
        }
        self.live.insert(seen.cookie, seen.clone());
    }

    /// The end of a remembered loop, or `None` (not reported, or forgotten).
    pub fn end(&mut self, e: &LoopEvent, time: SystemTime) -> Option<LoopEnded> {
        let seen = self.live.remove(&e.cookie)?;
        let from = if e.started_ns != 0 {
            e.started_ns
        } else {
            seen.monotonic_ns
        };
        Some(LoopEnded {
            lived: Duration::from_nanos(e.monotonic_ns.saturating_sub(from)),
            seen,
            time,
            monotonic_ns: e.monotonic_ns,
            new_state: TcpState::from_code(e.new_state),
        })
    }

    /// How many loops are alive.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// A loop event as the domain's [`LoopSeen`]: when the socket lock was not
/// held at the event (the task may be another's), the owner is looked up
/// through the socket inode.
pub fn owner_of(e: &LoopEvent, time: SystemTime) -> LoopSeen {
    let mut seen = LoopSeen {
        time,
        monotonic_ns: e.monotonic_ns,
        pid: e.pid,
        tid: e.tid,
        command: e.comm.clone(),
        owner_from: OwnerFrom::Event,
        addr: e.addr,
        netns: e.netns,
        cookie: e.cookie,
        inode: e.inode,
        cgroup_id: e.cgroup_id,
    };
    if !e.owned {
        seen.owner_from = OwnerFrom::Unconfirmed;
        if e.inode != 0 {
            if let Ok(found) =
                crate::owners::find_owners([e.inode], crate::owners::Search::FirstOwner)
            {
                if let Some(o) = found.of(e.inode).first() {
                    seen.pid = o.pid;
                    seen.command = o.comm.clone();
                    seen.owner_from = OwnerFrom::SocketInode;
                }
            }
        }
    }
    seen
}

/// Destroys a loop by its cookie with `SOCK_DESTROY` ([`scan::kill`]: the
/// socket is looked up again by 4-tuple and cookie first), in its own
/// namespace: entered through `/proc/PID/ns/net` of the process that made
/// it when that is not the caller's.
pub fn kill(seen: &LoopSeen, own_netns: u32) -> Result<Killed, KillError> {
    let socket = seen.socket();
    let path = (seen.netns != own_netns).then(|| format!("/proc/{}/ns/net", seen.pid).into());
    scan::kill(&scan::Loop {
        socket,
        owners: vec![],
        netns: NetnsLabel {
            inode: u64::from(seen.netns),
            pid: Some(seen.pid),
            comm: None,
            name: None,
            path,
        },
    })
}

/// Traces loops until `--count`, `--duration`, a signal, or the command's
/// exit, passing each [`TraceEvent`] to `report` as it happens.
pub fn trace(
    cfg: &TraceConfig,
    report: &mut dyn FnMut(&TraceEvent) -> io::Result<()>,
) -> Result<Summary, TraceError> {
    let mut events = Events::open(cfg.scope, cfg.ring_bytes)?;
    report(&TraceEvent::Attached {
        netns: (cfg.scope == NetnsScope::Current).then_some(events.own_netns),
    })
    .map_err(|e| TraceError::Io {
        what: "writing the report",
        source: e,
    })?;
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut filter = cfg.filter.clone();
    let mut child: Option<Child> = None;
    if let Some(argv) = &cfg.command {
        let c = Command::new(&argv[0])
            .args(&argv[1..])
            .spawn()
            .map_err(|source| TraceError::Spawn {
                program: argv[0].to_string_lossy().into_owned(),
                source,
            })?;
        filter.trees.push(c.id());
        child = Some(c);
    }
    let mut s = Summary {
        loops: 0,
        ends: 0,
        lost_loops: 0,
        lost_ends: 0,
        killed: 0,
        kill_failed: 0,
        elapsed: Duration::ZERO,
        stop: Stop::Duration,
        command_status: None,
    };
    let mut book = Book::default();
    let io = |e: io::Error| TraceError::Io {
        what: "writing the report",
        source: e,
    };
    let stop = 'outer: loop {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Stop::Duration;
                }
                Some(left)
            }
            None => None,
        };
        let batch = events.next(timeout)?;
        if let Some(stop) =
            handle(&batch, cfg, &filter, &events, &mut book, &mut s, report).map_err(io)?
        {
            break stop;
        }
        for sig in &batch.signals {
            if *sig == libc::SIGCHLD {
                if let Some(c) = child.as_mut() {
                    if let Some(st) = c.try_wait().map_err(io_err("waiting for the command"))? {
                        s.command_status = Some(status_code(st));
                        break 'outer Stop::CommandExited;
                    }
                }
            } else {
                if let Some(c) = child.as_mut() {
                    // SIGINT from a terminal reached the command too;
                    // SIGTERM is passed on. Then wait for it.
                    if *sig == libc::SIGTERM {
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(c.id() as i32).expect("a child pid"),
                            rustix::process::Signal::TERM,
                        );
                    }
                    let st = c.wait().map_err(io_err("waiting for the command"))?;
                    s.command_status = Some(status_code(st));
                }
                break 'outer Stop::Signal(*sig);
            }
        }
    };
    s.stop = stop;
    // Every event the command's processes caused is in the ring already
    // (the program runs inside their system calls): read the rest.
    if stop != Stop::Count {
        let batch = events.drain()?;
        handle(&batch, cfg, &filter, &events, &mut book, &mut s, report).map_err(io)?;
    }
    if let (Some(c), None) = (child.as_mut(), s.command_status) {
        // --count or --duration ended the trace first: the command runs on
        // to its end, and its status is still the exit code
        let st = c.wait().map_err(io_err("waiting for the command"))?;
        s.command_status = Some(status_code(st));
    }
    s.elapsed = started.elapsed();
    Ok(s)
}

/// Reports one batch; `Some(Stop::Count)` once `--count` loops are reported.
fn handle(
    batch: &Batch,
    cfg: &TraceConfig,
    filter: &Filter,
    events: &Events,
    book: &mut Book,
    s: &mut Summary,
    report: &mut dyn FnMut(&TraceEvent) -> io::Result<()>,
) -> io::Result<Option<Stop>> {
    if let Some((loops, ends)) = batch.lost {
        s.lost_loops += loops;
        s.lost_ends += ends;
        report(&TraceEvent::Lost { loops, ends })?;
    }
    for e in &batch.events {
        match e.kind {
            EventKind::Loop => {
                if !filter.matches(e) {
                    continue;
                }
                let seen = owner_of(e, events.wall(e.monotonic_ns));
                book.add(&seen);
                s.loops += 1;
                report(&TraceEvent::Loop(seen.clone()))?;
                if cfg.kill {
                    let outcome = kill(&seen, events.own_netns);
                    match &outcome {
                        Ok(Killed::Destroyed { .. }) => s.killed += 1,
                        _ => s.kill_failed += 1,
                    }
                    report(&TraceEvent::Kill(KillResult {
                        cookie: seen.cookie,
                        addr: seen.addr,
                        outcome,
                    }))?;
                }
                if cfg.count.is_some_and(|n| s.loops >= n) {
                    return Ok(Some(Stop::Count));
                }
            }
            EventKind::End => {
                if let Some(end) = book.end(e, events.wall(e.monotonic_ns)) {
                    s.ends += 1;
                    report(&TraceEvent::End(end))?;
                }
            }
        }
    }
    Ok(None)
}

/// A command's exit status as an exit code: its code, or 128 + the signal.
fn status_code(st: std::process::ExitStatus) -> u8 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, pid: u32, port: u16, cookie: u64, t: u64) -> LoopEvent {
        LoopEvent {
            kind,
            monotonic_ns: t,
            started_ns: if kind == EventKind::End { 1_000 } else { 0 },
            pid,
            tid: pid,
            comm: "python3".into(),
            addr: SocketAddr::new([127, 0, 0, 1].into(), port),
            netns: 4026531840,
            cookie,
            inode: 0,
            cgroup_id: 1,
            ancestors: [50, 10, 1, 0, 0, 0, 0, 0],
            owned: true,
            old_state: 2,
            new_state: 3,
        }
    }

    #[test]
    fn filters_by_port_and_process_tree() {
        let e = event(EventKind::Loop, 100, 40004, 1, 0);
        assert!(Filter::default().matches(&e));
        let ports = |s: &str| Filter {
            ports: Some(PortSet::parse(s).unwrap()),
            trees: vec![],
        };
        assert!(ports("40000-40009").matches(&e));
        assert!(!ports("40006").matches(&e));
        let tree = |p: u32| Filter {
            ports: None,
            trees: vec![p],
        };
        assert!(tree(100).matches(&e), "the process itself");
        assert!(tree(10).matches(&e), "a grandparent's tree");
        assert!(!tree(51).matches(&e), "another tree");
    }

    #[test]
    fn an_end_is_reported_once_with_its_lifetime_and_only_for_reported_loops() {
        let mut book = Book::default();
        let l = event(EventKind::Loop, 100, 40004, 7, 1_000);
        book.add(&owner_of(&l, SystemTime::UNIX_EPOCH));
        let stranger = event(EventKind::End, 100, 40004, 8, 5_000);
        assert!(book.end(&stranger, SystemTime::UNIX_EPOCH).is_none());
        let mut end = event(EventKind::End, 100, 40004, 7, 41_000);
        end.new_state = TcpState::Close.code();
        let ended = book.end(&end, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(ended.lived, Duration::from_micros(40));
        assert_eq!(ended.seen.pid, 100);
        assert_eq!(ended.new_state, TcpState::Close);
        assert!(book.end(&end, SystemTime::UNIX_EPOCH).is_none());
        assert!(book.is_empty());
    }

    #[test]
    fn the_book_is_bounded_and_forgets_the_oldest() {
        let mut book = Book::default();
        for i in 0..(Book::CAPACITY as u64 + 10) {
            let l = event(EventKind::Loop, 1, 40004, i + 1, 1_000 + i);
            book.add(&owner_of(&l, SystemTime::UNIX_EPOCH));
        }
        assert_eq!(book.len(), Book::CAPACITY);
        let oldest = event(EventKind::End, 1, 40004, 1, 99_999);
        assert!(book.end(&oldest, SystemTime::UNIX_EPOCH).is_none());
        let newest = event(EventKind::End, 1, 40004, Book::CAPACITY as u64 + 10, 99_999);
        assert!(book.end(&newest, SystemTime::UNIX_EPOCH).is_some());
    }

    #[test]
    fn an_event_outside_the_owner_is_resolved_through_the_socket_inode() {
        // a socket this process holds: its inode names us, whatever the event said
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        let mut e = event(EventKind::Loop, 999_999, 40004, 1, 0);
        e.owned = false;
        e.inode = inode;
        let seen = owner_of(&e, SystemTime::UNIX_EPOCH);
        assert_eq!(seen.owner_from, OwnerFrom::SocketInode);
        assert_eq!(seen.pid, std::process::id());
        // no inode to follow: the event's task, said to be unconfirmed
        e.inode = 0;
        let seen = owner_of(&e, SystemTime::UNIX_EPOCH);
        assert_eq!(seen.owner_from, OwnerFrom::Unconfirmed);
        assert_eq!(seen.pid, 999_999);
        // the usual case: the lock was held, the event's task is the owner
        e.owned = true;
        assert_eq!(
            owner_of(&e, SystemTime::UNIX_EPOCH).owner_from,
            OwnerFrom::Event
        );
    }

    #[test]
    fn exit_statuses_pass_through() {
        assert_eq!(status_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
