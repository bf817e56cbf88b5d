//! `tcploop shield daemon`: keep the shield on in every network namespace of
//! the host, including the ones created later (containers), and count what
//! it turns away.
//!
//! A [`Keeper`] remembers the namespaces it has covered by their *cookie*
//! (`SO_NETNS_COOKIE`, never reused until reboot; inode numbers are reused
//! at once). Each [`Keeper::sweep`] lists the namespaces (the same
//! discovery as `scan --all-netns`: `/proc/*/ns/net` plus the runtimes'
//! directories), enters each, and turns the shield on where it is not
//! (a namespace whose bpf shield was removed behind the daemon's back is
//! covered again). Namespaces appear between sweeps; the command sweeps
//! periodically and, on an inotify event in a runtime directory, at once
//! (see `tcploop shield daemon --help` for the latency).
//!
//! Metrics (Prometheus, the conventions of `tcploop watch`):
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `tcploop_shield_namespaces` | gauge | network namespaces seen by the last sweep |
//! | `tcploop_shield_namespaces_shielded` | gauge | of those, with the shield on |
//! | `tcploop_shield_namespaces_failed` | gauge | of those, where the shield could not be put on |
//! | `tcploop_shield_attached_total` | counter | shields put on by the daemon |
//! | `tcploop_shield_attach_errors_total` | counter | namespaces where that failed (each counted once) |
//! | `tcploop_shield_refused_total{family}` | counter | self-connect SYNs turned away (`ipv4`, `ipv6`), bpf mechanism, namespaces alive |
//! | `tcploop_shield_sweeps_total` | counter | sweeps done |
//! | `tcploop_shield_sweep_duration_seconds` | gauge | how long the last sweep took |
//!
//! Alert on `tcploop_shield_namespaces_failed > 0` (a namespace can loop).
//!
//! [`serve`] is the whole daemon: the metrics page, the cgroup hook, the
//! inotify watch and the loop of sweeps, each change handed to the caller
//! as a [`Notice`] (the command renders them).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics;
use crate::safefile::SafeFileError;
use crate::shield::{self, Active, CgroupShield, Mechanism, Namespace, OnOutcome};
use crate::sys::bpf::shield as bpf;
use crate::sys::inotify::DirWatch;
use crate::sys::netns;
/// Where runtimes bind-mount namespaces: watched, and listed each sweep.
pub use crate::sys::netns::RUNTIME_NETNS_DIRS;
use crate::sys::procfd::Proc;

/// What happened in one namespace during a sweep (only changes are events).
#[derive(Debug, Clone)]
pub enum Event {
    /// The daemon put the shield on.
    Attached {
        /// Where.
        ns: Namespace,
        /// How.
        active: Active,
    },
    /// The shield was on already when the daemon first saw the namespace.
    Found {
        /// Where.
        ns: Namespace,
        /// How.
        active: Active,
    },
    /// The shield could not be put on (said once a namespace).
    Failed {
        /// Where.
        ns: Namespace,
        /// Why.
        error: String,
    },
}

/// The outcome of one sweep.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// What changed.
    pub events: Vec<Event>,
    /// Namespaces seen.
    pub namespaces: usize,
    /// Of those, shielded.
    pub shielded: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Processes whose namespace could not be read.
    pub unreadable_pids: u64,
    /// How long it took.
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Covered {
    mechanism: Mechanism,
    refused: (u64, u64),
}

/// What the work inside one namespace found.
enum Inside {
    Kept {
        cookie: u64,
        refused: Option<(u64, u64)>,
    },
    On {
        cookie: u64,
        outcome: OnOutcome,
    },
    Failed {
        cookie: u64,
        error: String,
    },
}

/// Keeps the shield on in every namespace (see the module documentation).
#[derive(Debug)]
pub struct Keeper {
    force: Option<Mechanism>,
    dirs: Vec<PathBuf>,
    covered: HashMap<u64, Covered>,
    /// Cookies of namespaces where `on` failed (said once).
    failed: HashSet<u64>,
    /// Inodes of namespaces that could not even be entered (said once).
    unentered: HashSet<u64>,
    /// The metrics, updated by every sweep.
    pub metrics: ShieldMetrics,
}

impl Keeper {
    /// A keeper using `force` (or bpf, then iptables), finding bind-mounted
    /// namespaces in `dirs` besides `/proc/*/ns/net`.
    pub fn new(force: Option<Mechanism>, dirs: Vec<PathBuf>) -> Keeper {
        Keeper {
            force,
            dirs,
            covered: HashMap::new(),
            failed: HashSet::new(),
            unentered: HashSet::new(),
            metrics: ShieldMetrics::new(),
        }
    }

    /// Looks at every namespace once and puts the shield on where it is off.
    pub fn sweep(&mut self) -> std::io::Result<Sweep> {
        let t0 = Instant::now();
        let own = netns::current()?;
        let proc = Proc::open()?;
        let dirs: Vec<&Path> = self.dirs.iter().map(PathBuf::as_path).collect();
        let list = netns::list_with(&proc, &dirs)?;
        let mut out = Sweep {
            unreadable_pids: list.unreadable_pids,
            ..Sweep::default()
        };
        let mut alive: HashSet<u64> = HashSet::new();
        let force = self.force;
        for n in list.found {
            let ns = Namespace::from_sys(&n, own);
            let covered = &self.covered;
            let res = shield::in_namespace(&ns, || inside(covered, force));
            let inside = match res {
                Ok(i) => i,
                // The process left (or the mount went) between listing and
                // entering: not a failure.
                Err(e) if e.io().raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    out.namespaces += 1;
                    out.failed += 1;
                    // No cookie without entering: key the report on the inode.
                    if self.unentered.insert(ns.inode) {
                        self.metrics.attach_errors.inc();
                        out.events.push(Event::Failed {
                            ns,
                            error: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            out.namespaces += 1;
            match inside {
                Inside::Kept { cookie, refused } => {
                    alive.insert(cookie);
                    out.shielded += 1;
                    if let (Some(now), Some(c)) = (refused, self.covered.get_mut(&cookie)) {
                        self.metrics.add_refused(c.refused, now);
                        c.refused = now;
                    }
                }
                Inside::On { cookie, outcome } => {
                    alive.insert(cookie);
                    out.shielded += 1;
                    self.failed.remove(&cookie);
                    let (active, attached) = match outcome {
                        OnOutcome::Attached(a) => (a, true),
                        OnOutcome::AlreadyOn(a) => (a, false),
                    };
                    let refused = (
                        active.refused_v4.unwrap_or(0),
                        active.refused_v6.unwrap_or(0),
                    );
                    let before = self.covered.get(&cookie).map(|c| c.refused);
                    self.metrics.add_refused(before.unwrap_or((0, 0)), refused);
                    self.covered.insert(
                        cookie,
                        Covered {
                            mechanism: active.mechanism,
                            refused,
                        },
                    );
                    if attached {
                        self.metrics.attached.inc();
                        out.events.push(Event::Attached { ns, active });
                    } else if before.is_none() {
                        out.events.push(Event::Found { ns, active });
                    }
                }
                Inside::Failed { cookie, error } => {
                    alive.insert(cookie);
                    out.failed += 1;
                    if self.failed.insert(cookie) {
                        self.metrics.attach_errors.inc();
                        out.events.push(Event::Failed { ns, error });
                    }
                }
            }
        }
        // Forget namespaces that are gone (their lo and tcx link went with
        // them); remove the pins they left.
        self.covered.retain(|c, _| alive.contains(c));
        self.failed
            .retain(|c| alive.contains(c) || *c > u64::MAX / 2);
        let _ = shield::prune();
        out.duration = t0.elapsed();
        self.metrics.record(&out);
        Ok(out)
    }
}

fn inside(covered: &HashMap<u64, Covered>, force: Option<Mechanism>) -> Inside {
    let cookie = match bpf::netns_cookie() {
        Ok(c) => c,
        Err(e) => {
            return Inside::Failed {
                cookie: 0,
                error: format!("SO_NETNS_COOKIE: {e}"),
            }
        }
    };
    match covered.get(&cookie).map(|c| c.mechanism) {
        Some(Mechanism::Bpf) => {
            if let Ok(Some(a)) = bpf::status_here() {
                return Inside::Kept {
                    cookie,
                    refused: a.counters.map(|c| (c.refused_v4, c.refused_v6)),
                };
            }
            // removed behind our back: put it on again below
        }
        // The iptables rules are not listed every sweep (that runs two
        // programs a namespace): trusted once put on.
        Some(Mechanism::Iptables) => {
            return Inside::Kept {
                cookie,
                refused: None,
            }
        }
        None => {}
    }
    match shield::on_here(force) {
        Ok(outcome) => Inside::On { cookie, outcome },
        Err(e) => Inside::Failed {
            cookie,
            error: e.to_string(),
        },
    }
}

/// The labels of `tcploop_shield_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
}

/// The daemon's metrics (see the module documentation).
#[derive(Debug)]
pub struct ShieldMetrics {
    registry: Registry,
    namespaces: Gauge,
    shielded: Gauge,
    failed: Gauge,
    attached: Counter,
    attach_errors: Counter,
    refused: Family<FamilyLabel, Counter>,
    sweeps: Counter,
    sweep_duration: Gauge<f64, AtomicU64>,
}

impl Default for ShieldMetrics {
    fn default() -> Self {
        ShieldMetrics::new()
    }
}

impl ShieldMetrics {
    /// Every metric at zero.
    pub fn new() -> ShieldMetrics {
        let mut registry = Registry::with_prefix("tcploop_shield");
        let m = ShieldMetrics {
            namespaces: Gauge::default(),
            shielded: Gauge::default(),
            failed: Gauge::default(),
            attached: Counter::default(),
            attach_errors: Counter::default(),
            refused: Family::default(),
            sweeps: Counter::default(),
            sweep_duration: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "namespaces",
            "Network namespaces seen by the last sweep",
            m.namespaces.clone(),
        );
        registry.register(
            "namespaces_shielded",
            "Network namespaces with the shield on",
            m.shielded.clone(),
        );
        registry.register(
            "namespaces_failed",
            "Network namespaces where the shield could not be put on",
            m.failed.clone(),
        );
        registry.register(
            "attached",
            "Shields put on by the daemon",
            m.attached.clone(),
        );
        registry.register(
            "attach_errors",
            "Namespaces where putting the shield on failed",
            m.attach_errors.clone(),
        );
        registry.register(
            "refused",
            "Self-connect SYNs turned away (bpf mechanism)",
            m.refused.clone(),
        );
        registry.register("sweeps", "Sweeps done", m.sweeps.clone());
        registry.register(
            "sweep_duration_seconds",
            "Duration of the last sweep in seconds",
            m.sweep_duration.clone(),
        );
        // The families are there from the start, at 0.
        for family in ["ipv4", "ipv6"] {
            let _ = m.refused.get_or_create(&FamilyLabel { family });
        }
        ShieldMetrics { registry, ..m }
    }

    fn add_refused(&self, before: (u64, u64), now: (u64, u64)) {
        let v4 = now.0.saturating_sub(before.0);
        let v6 = now.1.saturating_sub(before.1);
        self.refused
            .get_or_create(&FamilyLabel { family: "ipv4" })
            .inc_by(v4);
        self.refused
            .get_or_create(&FamilyLabel { family: "ipv6" })
            .inc_by(v6);
    }

    fn record(&self, s: &Sweep) {
        self.namespaces.set(s.namespaces as i64);
        self.shielded.set(s.shielded as i64);
        self.failed.set(s.failed as i64);
        self.sweeps.inc();
        self.sweep_duration.set(s.duration.as_secs_f64());
    }

    /// The OpenMetrics text exposition (ends with `# EOF`); see
    /// [`crate::metrics::to_prometheus_text`] for the classic format.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// What `tcploop shield daemon` is asked to do, resolved.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// One mechanism only, or bpf then iptables.
    pub force: Option<Mechanism>,
    /// Time between sweeps of /proc (at least 10 ms).
    pub interval: Duration,
    /// Serve GET /metrics on this address.
    pub prometheus: Option<String>,
    /// Write the metrics to this file after each sweep.
    pub textfile: Option<PathBuf>,
    /// Attach the cgroup connect hook to this cgroup v2 directory at start.
    pub cgroup: Option<PathBuf>,
    /// Directories where runtimes bind-mount namespaces, besides
    /// [`RUNTIME_NETNS_DIRS`].
    pub netns_dirs: Vec<PathBuf>,
    /// Stop after this many sweeps.
    pub count: Option<u64>,
}

/// The daemon at start, as it runs.
#[derive(Debug, Clone)]
pub struct Started {
    /// Time between sweeps.
    pub interval: Duration,
    /// Where /metrics is served.
    pub prometheus: Option<SocketAddr>,
    /// The metrics file.
    pub textfile: Option<PathBuf>,
    /// The mechanism forced, if one was.
    pub mechanism: Option<Mechanism>,
    /// The runtime directories under an inotify watch (those that exist).
    pub watching: Vec<PathBuf>,
}

/// What the daemon tells as it runs.
#[derive(Debug)]
pub enum Notice<'a> {
    /// Started (first).
    Started(&'a Started),
    /// The cgroup hook, once at start (with [`DaemonConfig::cgroup`]).
    Cgroup {
        /// The cgroup directory.
        dir: &'a Path,
        /// The hook, or why not.
        result: &'a Result<CgroupShield, String>,
    },
    /// A change in one namespace.
    Namespace(&'a Event),
    /// A sweep failed as a whole (the daemon goes on).
    SweepFailed(&'a io::Error),
    /// Something went wrong beside the sweeps (writing the textfile, the
    /// inotify watch): the daemon goes on.
    Warning(String),
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Sweeps done.
    pub sweeps: u64,
    /// Shields put on.
    pub attached: u64,
    /// Namespaces where that failed.
    pub failed: u64,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The textfile cannot be written (checked at start, not each sweep).
    #[error("--textfile {}", .0.display())]
    Textfile(PathBuf, #[source] SafeFileError),
    /// The metrics address cannot be listened on.
    #[error("--prometheus: cannot listen on {0}")]
    Listen(String, #[source] io::Error),
    /// The metrics server did not start.
    #[error("starting the metrics server")]
    Serve(#[source] io::Error),
    /// No inotify instance.
    #[error("inotify_init")]
    Inotify(#[source] io::Error),
    /// The caller's report failed.
    #[error("writing the report")]
    Report(#[source] io::Error),
}

/// When the daemon sweeps: every interval, and after an inotify event at
/// each of [`AFTER_EVENT`]'s delays (the bind mount that makes the new
/// file a namespace may come a little after the file).
#[derive(Debug, Clone)]
struct Schedule {
    interval: Duration,
    /// The next periodic sweep.
    next: Instant,
    /// The looks still to come after the last event, earliest first.
    soon: Vec<Instant>,
}

impl Schedule {
    /// The first sweep at `start`.
    fn new(start: Instant, interval: Duration) -> Schedule {
        Schedule {
            interval,
            next: start,
            soon: vec![],
        }
    }

    /// Whether a sweep is due at `now`; if so, the looks it covers are
    /// done, and a periodic one plans the next.
    fn take_due(&mut self, now: Instant) -> bool {
        let due = now >= self.next || self.soon.first().is_some_and(|t| now >= *t);
        if due {
            self.soon.retain(|t| *t > now);
            if now >= self.next {
                self.next = now + self.interval;
            }
        }
        due
    }

    /// An event at `now`: look at each delay after it.
    fn poke(&mut self, now: Instant) {
        self.soon = AFTER_EVENT.iter().map(|d| now + *d).collect();
    }

    /// How long to wait for an event at `now` before looking at the
    /// schedule again (at most 100 ms: a stop is seen that soon).
    fn wait(&self, now: Instant) -> Duration {
        let wake = self
            .soon
            .first()
            .copied()
            .unwrap_or(self.next)
            .min(self.next);
        wake.saturating_duration_since(now)
            .min(Duration::from_millis(100))
    }
}

/// After an inotify event the bind mount that makes the new file a
/// namespace follows within microseconds to milliseconds: look at these
/// delays after the event.
const AFTER_EVENT: [Duration; 8] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// Runs the daemon until `stop()` says so (or [`DaemonConfig::count`]
/// sweeps): a sweep every interval, and at once after an inotify event in
/// a runtime directory; the metrics served and written after each sweep.
/// Every change goes to `on`.
pub fn serve(
    cfg: &DaemonConfig,
    stop: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Notice<'_>) -> io::Result<()>,
) -> Result<Stopped, DaemonError> {
    if let Some(p) = &cfg.textfile {
        // fail now, not on every sweep
        crate::safefile::check_writable(p).map_err(|e| DaemonError::Textfile(p.clone(), e))?;
    }
    let mut dirs: Vec<PathBuf> = RUNTIME_NETNS_DIRS.iter().map(PathBuf::from).collect();
    dirs.extend(cfg.netns_dirs.iter().cloned());
    let mut keeper = Keeper::new(cfg.force, dirs.clone());
    let page: metrics::Page = Arc::new(Mutex::new(keeper.metrics.render()));
    let served = match &cfg.prometheus {
        Some(addr) => {
            let listener = TcpListener::bind(addr.as_str())
                .map_err(|e| DaemonError::Listen(addr.clone(), e))?;
            Some(metrics::serve(listener, page.clone()).map_err(DaemonError::Serve)?)
        }
        None => None,
    };
    let mut watch = DirWatch::new().map_err(DaemonError::Inotify)?;
    for d in &dirs {
        let _ = watch.watch(d);
    }
    let started = Started {
        interval: cfg.interval,
        prometheus: served,
        textfile: cfg.textfile.clone(),
        mechanism: cfg.force,
        watching: watch.watched().map(Path::to_path_buf).collect(),
    };
    on(Notice::Started(&started)).map_err(DaemonError::Report)?;
    if let Some(dir) = &cfg.cgroup {
        // Once, at start: the hook is one for the whole subtree.
        let result = shield::cgroup_on(dir).map_err(|e| e.to_string());
        on(Notice::Cgroup {
            dir,
            result: &result,
        })
        .map_err(DaemonError::Report)?;
    }

    let mut done = Stopped::default();
    let mut when = Schedule::new(Instant::now(), cfg.interval);
    while !stop() {
        if when.take_due(Instant::now()) {
            match keeper.sweep() {
                Ok(s) => {
                    for e in &s.events {
                        match e {
                            Event::Attached { .. } => done.attached += 1,
                            Event::Failed { .. } => done.failed += 1,
                            Event::Found { .. } => {}
                        }
                        on(Notice::Namespace(e)).map_err(DaemonError::Report)?;
                    }
                }
                Err(e) => on(Notice::SweepFailed(&e)).map_err(DaemonError::Report)?,
            }
            done.sweeps += 1;
            let text = keeper.metrics.render();
            if let Some(p) = &cfg.textfile {
                if let Err(e) = metrics::write_textfile(p, &metrics::to_prometheus_text(&text)) {
                    on(Notice::Warning(format!("writing {}: {e}", p.display())))
                        .map_err(DaemonError::Report)?;
                }
            }
            *page.lock().unwrap_or_else(|e| e.into_inner()) = text;
            if cfg.count.is_some_and(|n| done.sweeps >= n) {
                break;
            }
        }
        // A runtime directory that appeared (the first `ip netns add`, the
        // first container): watch it, and look at once.
        for d in &dirs {
            if watch.watch(d).unwrap_or(false) {
                when.poke(Instant::now());
            }
        }
        let left = when.wait(Instant::now());
        match watch.wait(left) {
            Ok(true) => when.poke(Instant::now()),
            Ok(false) => {}
            Err(e) => {
                on(Notice::Warning(format!("inotify: {e}"))).map_err(DaemonError::Report)?;
                std::thread::sleep(left);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_start_at_zero_and_count_deltas() {
        let m = ShieldMetrics::new();
        let t = m.render();
        assert!(t.contains("tcploop_shield_namespaces 0\n"), "{t}");
        assert!(
            t.contains("tcploop_shield_refused_total{family=\"ipv4\"} 0\n"),
            "{t}"
        );
        m.add_refused((0, 0), (5, 2));
        m.add_refused((5, 2), (7, 2));
        m.record(&Sweep {
            namespaces: 3,
            shielded: 2,
            failed: 1,
            ..Sweep::default()
        });
        let t = m.render();
        assert!(
            t.contains("tcploop_shield_refused_total{family=\"ipv4\"} 7\n"),
            "{t}"
        );
        assert!(
            t.contains("tcploop_shield_refused_total{family=\"ipv6\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("tcploop_shield_namespaces_failed 1\n"), "{t}");
        assert!(t.contains("tcploop_shield_sweeps_total 1\n"), "{t}");
        let classic = crate::metrics::to_prometheus_text(&t);
        assert!(classic.contains("# TYPE tcploop_shield_attached_total counter"));
    }

    #[test]
    fn sweeps_come_every_interval_and_soon_after_an_event() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut s = Schedule::new(t0, Duration::from_secs(1));
        assert!(s.take_due(t0), "the first sweep at once");
        assert!(!s.take_due(ms(10)));
        assert_eq!(s.wait(ms(10)), Duration::from_millis(100), "capped");
        assert_eq!(s.wait(ms(950)), Duration::from_millis(50));
        // An event at 20 ms: looks at 22, 30, 45, 70 ... ms.
        s.poke(ms(20));
        assert!(!s.take_due(ms(21)));
        assert_eq!(s.wait(ms(21)), Duration::from_millis(1));
        assert!(s.take_due(ms(22)));
        assert!(!s.take_due(ms(23)));
        assert_eq!(s.wait(ms(23)), Duration::from_millis(7));
        // A late look covers every delay passed meanwhile, once.
        assert!(s.take_due(ms(80)));
        assert!(!s.take_due(ms(81)));
        assert_eq!(s.wait(ms(81)), Duration::from_millis(39), "the 120 ms look");
        // The periodic sweep is still at 1 s, then every second from it;
        // the event's last look (1,020 ms) comes in between.
        assert!(s.take_due(ms(1000)));
        assert!(!s.take_due(ms(1010)));
        assert!(s.take_due(ms(1020)));
        assert!(!s.take_due(ms(1990)));
        assert!(s.take_due(ms(2000)));
        // The looks after an event end after the last delay.
        s.poke(ms(2000));
        for d in AFTER_EVENT {
            assert!(s.take_due(ms(2000) + d), "{d:?}");
        }
        assert!(s.soon.is_empty());
    }
}
