//! The engine of `tcploop watch`: loops as they appear and go away, turned
//! into events (a loop appeared, went away, was killed), metrics, and, with
//! `--kill-after`, the destruction of loops that persist.
//!
//! [`run`] is the whole watch: it opens the source of loops, serves the
//! metrics, and runs the loop until a signal or `--count` scans, handing
//! each [`Event`] to the caller. Its parts, by concern:
//!
//! - [`source`]: where loops come from. Kernel events (the BPF program of
//!   [`crate::trace`]: every loop as it forms, with one dump at start and
//!   one after the ring buffer dropped events), or a dump every interval.
//!   Either is a [`Source`] of [`Input`]s, so that the loop is tested with a
//!   fake one.
//! - [`poll`]: one dump of the namespace, or of every namespace
//!   (`--all-netns`), as a [`HostSnapshot`]; the owners of new loops; the
//!   destroy.
//! - [`tracker`]: the loops present, known by socket cookie, and what
//!   changed ([`Tracker`], pure).
//! - [`policy`]: `--kill-after` ([`KillPolicy`], pure: the destroy is a
//!   parameter).
//! - [`serve`]: the metrics page (`/metrics`) and the textfile.
//! - [`watcher`]: the loop itself, over a [`Source`] and a [`Machine`] (the
//!   dumps, owner lookups, destroys and the clock), unit-tested with fakes
//!   of both.
//!
//! A scan is one sock_diag dump of the namespace (about a microsecond a
//! socket, in the kernel) plus the ephemeral-port facts; the expensive part
//! of finding a loop, the walk over `/proc/*/fd` to name its owner, is done
//! once per loop, when it appears, never on every scan ([`Tracker`] keeps
//! what it learnt).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::container::Container;
use crate::scan::NetnsLabel;
use crate::sys::bpf::Refusal;

pub mod policy;
pub mod poll;
pub mod serve;
pub mod source;
pub mod tracker;
pub mod watcher;

pub use policy::{KillAction, KillPolicy};
pub use poll::{
    event_netns, kill, kill_in, own_netns, owners_of, HostScanner, HostSnapshot, Poller, Scanner,
    Snapshot,
};
pub use source::{Formed, Input, KernelEvent, Source};
pub use tracker::{tracked_from_event, Change, LoopKey, Tracked, Tracker};
pub use watcher::{Live, Machine};

/// Where loops come from, as asked (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceChoice {
    /// Kernel events where the kernel and the privileges allow, else polling.
    #[default]
    Auto,
    /// Kernel events, or an error.
    Ebpf,
    /// A dump every interval.
    Poll,
}

impl std::str::FromStr for SourceChoice {
    type Err = String;
    /// `auto`, `ebpf` or `poll` (`--source`).
    fn from_str(s: &str) -> Result<SourceChoice, String> {
        match s {
            "auto" => Ok(SourceChoice::Auto),
            "ebpf" => Ok(SourceChoice::Ebpf),
            "poll" => Ok(SourceChoice::Poll),
            _ => Err("expected auto, ebpf or poll".to_string()),
        }
    }
}

/// The source a watch runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Kernel events (`"ebpf"`).
    Ebpf,
    /// A dump every interval (`"poll"`).
    Poll,
}

impl SourceKind {
    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Ebpf => "ebpf",
            SourceKind::Poll => "poll",
        }
    }
}

/// Why a watch runs on the source it runs on.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceReason {
    /// It was asked for (`--source poll`, `--source ebpf`).
    Asked(SourceKind),
    /// `--count` counts scans, which only polling does.
    CountNeedsPoll,
    /// `auto`, and the kernel events are available.
    EventsAvailable,
    /// `auto`, and the kernel or the privileges refuse the BPF program.
    EventsRefused(Refusal),
}

/// What a watch is asked to do: the resolved `tcploop watch` arguments.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Time between scans when polling.
    pub interval: Duration,
    /// Where loops come from.
    pub source: SourceChoice,
    /// Stop after this many scans (polling only).
    pub count: Option<u64>,
    /// Destroy loops present for this long.
    pub kill_after: Option<Duration>,
    /// Every network namespace of the host, not only the caller's.
    pub all_netns: bool,
    /// Serve `GET /metrics` on this address (as given: `127.0.0.1:9977`).
    pub prometheus: Option<String>,
    /// Write the metrics to this file after each change (atomic rename).
    pub textfile: Option<PathBuf>,
    /// The kernel events' ring buffer size in bytes (tests).
    pub ring_bytes: Option<u32>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            interval: Duration::from_secs(1),
            source: SourceChoice::Auto,
            count: None,
            kill_after: None,
            all_netns: false,
            prometheus: None,
            textfile: None,
            ring_bytes: None,
        }
    }
}

/// What happened to a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// `loop_appeared`.
    Appeared,
    /// `loop_gone`.
    Gone,
    /// `loop_killed` (`--kill-after`).
    Killed,
    /// `kill_failed`.
    KillFailed,
}

/// One loop event.
#[derive(Debug, Clone, Copy)]
pub struct LoopEvent<'a> {
    /// What happened.
    pub kind: LoopKind,
    /// The loop.
    pub tracked: &'a Tracked,
    /// Its namespace, when not the watcher's own (`--all-netns`), and that
    /// namespace's process's container.
    pub netns: Option<(&'a NetnsLabel, Option<&'a Container>)>,
    /// How long it had been present (gone, killed, kill failed).
    pub seen: Option<Duration>,
    /// Why a kill failed.
    pub error: Option<&'a str>,
    /// Loops destroyed on its port so far (`loop_killed`).
    pub kills_on_port: Option<u64>,
    /// Its client will loop again (the port is in the ephemeral range, not
    /// reserved) and this is at least the second kill on the port:
    /// reserving the port is the fix.
    pub reserve_advised: bool,
}

/// What happened to a network namespace (`--all-netns`, polling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsChange {
    /// `netns_appeared`: listed for the first time.
    Appeared,
    /// `netns_gone`: no longer listed.
    Gone,
    /// `netns_skipped`: could not be scanned (said once a namespace).
    Skipped,
}

/// A failure the watch goes on after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// `scan_error`: a scan failed (counted in `tcploop_scan_errors_total`).
    Scan,
    /// `owner_error`: the owner lookup failed; the loop is reported without.
    Owner,
    /// `output_error`: writing the textfile failed.
    Output,
}

/// How a watch started.
#[derive(Debug, Clone)]
pub struct Started<'a> {
    /// The source it runs on.
    pub source: SourceKind,
    /// Why that one.
    pub reason: &'a SourceReason,
    /// The time between scans (polling).
    pub interval: Duration,
    /// The address the metrics are served on.
    pub prometheus: Option<std::net::SocketAddr>,
    /// The metrics textfile.
    pub textfile: Option<&'a std::path::Path>,
    /// `--kill-after`.
    pub kill_after: Option<Duration>,
}

/// What a watch did, in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Scans done (failed ones included).
    pub scans: u64,
    /// Scans failed.
    pub scan_errors: u64,
    /// Loops seen.
    pub loops_seen: u64,
    /// Loops destroyed.
    pub kills: u64,
}

/// One event of a watch, in the order it happened.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// `watch_started`.
    Started(Started<'a>),
    /// A loop appeared, went away, was killed, or could not be.
    Loop(LoopEvent<'a>),
    /// A network namespace appeared, went away, or could not be scanned.
    Netns {
        /// What happened.
        change: NetnsChange,
        /// The namespace.
        netns: &'a NetnsLabel,
        /// Why it could not be scanned (`Skipped`).
        error: Option<&'a str>,
    },
    /// `events_lost`: the kernel's ring buffer was full; a scan follows.
    Lost {
        /// Loop events lost.
        loops: u64,
        /// End events lost.
        ends: u64,
    },
    /// A failure the watch goes on after.
    Warning {
        /// Which.
        kind: Warning,
        /// What failed, and why.
        error: String,
        /// Scan errors so far (`Scan` only).
        total: Option<u64>,
    },
    /// `watch_stopped`.
    Stopped(Totals),
}

/// Why a watch could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `--count` with `--source ebpf`: only polling scans at intervals.
    #[error(
        "--count counts scans, and --source ebpf does not scan at intervals: stop it with \
         SIGINT or SIGTERM, or use --source poll"
    )]
    CountWithEvents,
    /// `--source ebpf`, and the kernel or the privileges refuse the program.
    #[error(
        "--source ebpf: {0}; run as root, or use --source poll (polling misses loops shorter \
         than the interval)"
    )]
    EbpfRefused(Refusal),
    /// The kernel events failed (loading, polling, reading).
    #[error(transparent)]
    Events(crate::trace::TraceError),
    /// The signals could not be read (polling).
    #[error("{what}: {source}")]
    Signals {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The textfile's directory is missing or not writable.
    #[error("--textfile {}: {source}", path.display())]
    Textfile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::safefile::SafeFileError,
    },
    /// `--prometheus`: the address cannot be listened on.
    #[error("--prometheus: cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The metrics server's thread could not start.
    #[error("starting the metrics server: {0}")]
    Serve(#[source] io::Error),
    /// The watcher's own network namespace could not be read.
    #[error("reading this process's network namespace: {0}")]
    OwnNetns(#[source] io::Error),
    /// An event could not be written (the caller's `on_event` failed).
    #[error("writing an event: {0}")]
    Output(#[source] io::Error),
}

/// Watches until SIGINT or SIGTERM, or `cfg.count` scans: opens the source
/// (kernel events, or polling, as [`source::open`] decides; before any
/// thread starts, as the event source blocks the stop signals), serves the
/// metrics, and runs [`watcher::Watcher`] on the live system, handing each
/// event and its time to `on_event`. Returns what it did; the last event is
/// [`Event::Stopped`].
pub fn run(
    cfg: &WatchConfig,
    on_event: &mut dyn FnMut(SystemTime, &Event) -> io::Result<()>,
) -> Result<Totals, WatchError> {
    let publisher = serve::Publisher::check(cfg.textfile.as_deref())?;
    let (mut source, kind, reason) = source::open(cfg)?;
    let publisher = publisher.serve(cfg.prometheus.as_deref())?;
    let mut machine = Live::new(cfg.all_netns).map_err(WatchError::OwnNetns)?;
    let started = Started {
        source: kind,
        reason: &reason,
        interval: cfg.interval,
        prometheus: publisher.address(),
        textfile: cfg.textfile.as_deref(),
        kill_after: cfg.kill_after,
    };
    on_event(SystemTime::now(), &Event::Started(started)).map_err(WatchError::Output)?;
    watcher::Watcher::new(cfg.kill_after, &mut machine, publisher, on_event).run(&mut *source)
}
