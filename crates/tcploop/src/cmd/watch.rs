//! `tcploop watch`: report each loop when it appears and when it goes away,
//! serve Prometheus metrics, and optionally destroy loops that persist.
//!
//! Two sources (`--source`): kernel events (`ebpf`: the BPF program of
//! `tcploop trace`; every loop, however short-lived, with one socket dump
//! at start and after any ring-buffer drop, and no timer while idle), or a
//! socket dump every interval (`poll`). `auto` takes events where the kernel
//! and the privileges allow, and says which it took and why.
//!
//! JSON Lines (`--json`), one event a line, each with `"time"` (RFC 3339, UTC):
//! - `watch_started`: `{"time", "interval_s": 1.0, "prometheus": "127.0.0.1:9977"|null,
//!   "textfile": path|null, "kill_after_s": number|null, "source": "ebpf"|"poll",
//!   "source_reason": string}` (why that source: the option, or why eBPF is unavailable);
//! - `events_lost` (`ebpf`): `{"time", "loops": 12, "ends": 0}`: the ring buffer was full;
//!   a scan follows at once and reports the loops still present;
//! - `loop_appeared`: `{"time", "local": "127.0.0.1:40004", "state": "ESTABLISHED", "inode": 123,
//!   "cookie": 456, "owners": [{"pid": 1, "command": "python3", "fd": 3, "container": null|CONTAINER}]}`
//!   (`fd` is -1 when the loop came from a kernel event: the process is known, not its fd;
//!   CONTAINER as in `tcploop scan --json`), plus `"netns"` (as in `scan`) for a loop outside
//!   the watcher's own namespace (`--all-netns`);
//! - `loop_gone`: the same fields plus `"seen_s": 3.0` (how long it was seen);
//! - `loop_killed`: the same fields as `loop_gone` (destroyed by `--kill-after`), plus
//!   `"kills_on_port": 2` (loops destroyed on this port so far) and, from the second one on a
//!   port in the ephemeral range that is not reserved, `"advice": string` (its client
//!   reconnects and loops again: reserve the port);
//! - `kill_failed`: the same fields plus `"error": string` (said once a loop; not retried);
//! - `scan_error`: `{"time", "error": string, "errors_total": 1}` (the watch goes on);
//! - `output_error`: `{"time", "error": string}` (writing the textfile failed; the watch goes on);
//! - `owner_error`: `{"time", "error": string}` (the owner lookup failed; the loop is reported without);
//! - `netns_appeared`, `netns_gone`: `{"time", "netns"}`, `netns_skipped`: `{"time", "netns", "error"}`
//!   (`--all-netns`, polling: namespaces listed afresh each scan; a skip is said once a namespace);
//! - `watch_stopped`: `{"time", "scans": 10, "scan_errors": 0, "loops_seen": 1, "kills": 0}`.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tcploop::metrics::{self, LoopLabels, Metrics, ScanSample};
use tcploop::report::watch::{LoopEvent, LoopKind};
use tcploop::report::{self, Format};
use tcploop::scan::NetnsLabel;
use tcploop::trace::{self, EventKind, Events, NetnsScope, TraceError};
use tcploop::watch::{self, Change, KillAction, KillPolicy, LoopKey, Tracked, Tracker};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Sources (--source): `ebpf` takes kernel events (the program of `tcploop
trace`): every loop is counted as it forms, however short-lived, with one
socket dump at start (loops older than the watch) and after any ring-buffer
overflow; no timer runs while nothing happens, and metrics and the textfile
are updated on each event. Needs root (CAP_BPF, CAP_PERFMON) and BTF.
`poll` dumps the socket table every --interval: no privileges, but a loop
shorter than the interval is never seen. `auto` (default) takes events where
allowed, else polls, and says which and why. --count N counts scans, so it
means polling (with `auto`; an error with `ebpf`).

Each scan is one socket dump of this network namespace (with --all-netns, of
each namespace of the host, listed afresh each scan, so containers that start
or stop are followed; events then come from every namespace); the owners of a
loop, and their containers, are looked up once, when it appears. Runs until SIGINT or SIGTERM (then exits
0), or --count scans. A failed scan is logged and counted
(tcploop_scan_errors_total), never fatal.

Metrics (--prometheus, --textfile): tcploop_loops{port,command,netns,container,pod}
(gauge; netns, container and pod only when known and not empty; stays
at 0 for an hour once a loop has gone; at most 500 series, further loops are
counted in tcploop_loop_series_overflow_total), tcploop_loops_present,
tcploop_loops_seen_total, tcploop_exposed_listeners, tcploop_sockets,
tcploop_scan_duration_seconds, tcploop_scans_total, tcploop_scan_errors_total,
tcploop_kills_total, tcploop_kill_errors_total, tcploop_namespaces,
tcploop_namespaces_skipped, tcploop_build_info{version,arch}. Alert on
`tcploop_loops_present > 0` (deploy/prometheus has tested rules).

The /metrics server answers GET and HEAD (405 otherwise), serves each client
on a thread of its own (at most 32 at once; 503 beyond), and gives each
request 5 s and 8 KiB to arrive whole: a slow or idle client never delays a
scrape. The --textfile directory must exist and be writable at start-up.

Examples:
  tcploop watch
  tcploop watch --json --prometheus 127.0.0.1:9977
  tcploop watch --textfile /var/lib/prometheus/node-exporter/tcploop.prom
  sudo tcploop watch --all-netns              every namespace: containers, pods
  tcploop watch --kill-after 30s              destroy loops older than 30 s
  tcploop watch --source poll --interval 5s   no privileges needed";

/// Arguments of `tcploop watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Time between scans (500ms, 1s, 10s)
    #[arg(long, default_value = "1s", value_parser = super::parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Serve GET /metrics (Prometheus) on this address, e.g. 127.0.0.1:9977
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<String>,
    /// Write the metrics to this file after each scan (node_exporter textfile collector; atomic rename)
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Destroy (SOCK_DESTROY) loops seen for this long, logging each (needs CAP_NET_ADMIN)
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    pub kill_after: Option<Duration>,
    /// Stop after N scans (default: run until SIGINT/SIGTERM)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Where loops come from: `ebpf` (kernel events: every loop, however
    /// short-lived; root), `poll` (a socket dump every interval), `auto`
    /// (events where allowed, else polling; it says which and why)
    #[arg(long, default_value = "auto", value_name = "auto|ebpf|poll")]
    pub source: String,
    /// JSON Lines events
    #[arg(long)]
    pub json: bool,
    /// Watch every network namespace of the host (containers, pods): kernel
    /// events from all of them, or each namespace polled, listed afresh each
    /// scan (root: CAP_SYS_ADMIN and CAP_SYS_PTRACE)
    #[arg(long)]
    pub all_netns: bool,
    /// Ring buffer size in bytes for --source ebpf (a power of two, at least 4096; tests)
    #[arg(long, hide = true, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Started {
    time: String,
    interval_s: f64,
    prometheus: Option<String>,
    textfile: Option<String>,
    kill_after_s: Option<f64>,
    source: &'static str,
    source_reason: String,
}

/// A loop destroyed by `--kill-after`: how many on its port so far, and
/// what to do when they keep coming back.
struct KillNote {
    kills_on_port: u64,
    advice: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorEvent {
    time: String,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors_total: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Stopped {
    time: String,
    scans: u64,
    scan_errors: u64,
    loops_seen: u64,
    kills: u64,
}

fn now_text() -> String {
    tcploop::report::time(SystemTime::now())
}

struct Log<'a> {
    out: &'a mut dyn Write,
    json: bool,
    /// The namespace of each loop outside the watcher's own (`--all-netns`).
    netns_of: HashMap<LoopKey, NetnsLabel>,
}

impl Log<'_> {
    fn loop_event(
        &mut self,
        ty: &str,
        t: &Tracked,
        seen: Option<Duration>,
        error: Option<String>,
        note: Option<KillNote>,
    ) -> anyhow::Result<()> {
        let kind = match ty {
            "loop_appeared" => LoopKind::Appeared,
            "loop_gone" => LoopKind::Gone,
            "loop_killed" => LoopKind::Killed,
            _ => LoopKind::KillFailed,
        };
        let ns = self.netns_of.get(&LoopKey::of(&t.sock));
        let container = ns.and_then(|n| n.pid).and_then(tcploop::container::of_pid);
        let event = LoopEvent {
            kind,
            tracked: t,
            netns: ns.map(|n| (n, container.as_ref())),
            seen,
            error: error.as_deref(),
            kills_on_port: note.as_ref().map(|n| n.kills_on_port),
            advice: note.as_ref().and_then(|n| n.advice.as_deref()),
        };
        report::watch::loop_event(self.out, Format::json_if(self.json), &now_text(), &event)?;
        self.out.flush()?;
        Ok(())
    }

    fn format(&self) -> Format {
        Format::json_if(self.json)
    }

    /// `netns_appeared`, `netns_gone`, `netns_skipped` (`--all-netns`).
    fn netns_event(
        &mut self,
        ty: &str,
        n: &NetnsLabel,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        let f = self.format();
        report::watch::netns_event(self.out, f, &now_text(), ty, n, error.as_deref())?;
        self.out.flush()?;
        Ok(())
    }

    fn lost(&mut self, loops: u64, ends: u64) -> anyhow::Result<()> {
        let f = self.format();
        report::watch::lost(self.out, f, &now_text(), loops, ends)?;
        self.out.flush()?;
        Ok(())
    }

    fn error(&mut self, ty: &str, error: String, total: Option<u64>) -> anyhow::Result<()> {
        if self.json {
            report::json_line(
                self.out,
                ty,
                &ErrorEvent {
                    time: now_text(),
                    error,
                    errors_total: total,
                },
            )?;
            self.out.flush()?;
        } else {
            eprintln!("tcploop: warning: {error}");
        }
        Ok(())
    }
}

/// Where the loops come from.
enum Source {
    /// Kernel events (the BPF program), and a dump at start and after drops.
    Events(Box<Events>),
    /// A dump every interval.
    Poll,
}

/// Chooses the source before any thread starts (the event source blocks
/// the stop signals, to read them from a file descriptor): returns it and
/// the reason, in words.
fn choose(args: &Args) -> anyhow::Result<(Source, String)> {
    let scope = if args.all_netns {
        NetnsScope::All
    } else {
        NetnsScope::Current
    };
    let open = || Events::open(scope, args.ring_bytes);
    Ok(match args.source.as_str() {
        "poll" => (Source::Poll, "--source poll".to_string()),
        // --count counts scans, which only polling does
        "ebpf" if args.count.is_some() => anyhow::bail!(
            "--count counts scans, and --source ebpf does not scan at intervals: stop it with \
             SIGINT or SIGTERM, or use --source poll"
        ),
        "auto" if args.count.is_some() => (
            Source::Poll,
            "--count counts scans, which only polling does".to_string(),
        ),
        "ebpf" => match open() {
            Ok(e) => (Source::Events(Box::new(e)), "--source ebpf".to_string()),
            Err(TraceError::Refused(r)) => anyhow::bail!(
                "--source ebpf: {r}; run as root, or use --source poll (polling misses loops \
                 shorter than the interval)"
            ),
            Err(e) => return Err(e.into()),
        },
        "auto" => match open() {
            Ok(e) => (
                Source::Events(Box::new(e)),
                "eBPF events: the kernel reports each loop as it forms".to_string(),
            ),
            Err(TraceError::Refused(r)) => (
                Source::Poll,
                format!(
                    "eBPF unavailable: {r}; polling instead (loops shorter than the interval \
                     are missed)"
                ),
            ),
            Err(e) => return Err(e.into()),
        },
        other => anyhow::bail!("--source {other:?}: expected auto, ebpf or poll"),
    })
}

/// The state of a watch, whatever the source.
struct State<'a> {
    log: Log<'a>,
    metrics: &'a Metrics,
    tracker: Tracker,
    poller: watch::Poller,
    /// `--kill-after`.
    policy: Option<KillPolicy>,
    scans: u64,
    scan_errors: u64,
    loops_seen: u64,
    kills: u64,
    /// From the last good scan: for the metrics between scans.
    exposed_listeners: u64,
    sockets: u64,
}

impl State<'_> {
    /// One dump of the namespace (or of each, `--all-netns`): loops
    /// appeared and gone since the last.
    fn scan(&mut self, kill_after: Option<Duration>) -> anyhow::Result<()> {
        let t0 = Instant::now();
        match self.poller.scan() {
            Ok(snap) => {
                for n in &snap.appeared {
                    self.log.netns_event("netns_appeared", n, None)?;
                }
                for (n, why) in &snap.newly_skipped {
                    self.log
                        .netns_event("netns_skipped", n, Some(why.clone()))?;
                }
                self.log.netns_of.extend(snap.netns_of.clone());
                let fresh = self.tracker.new_loops(&snap.loops);
                let owners = if fresh.is_empty() {
                    HashMap::new()
                } else {
                    match watch::owners_of(fresh) {
                        Ok(o) => o,
                        Err(e) => {
                            self.log.error(
                                "owner_error",
                                format!("looking up owners: {e}"),
                                None,
                            )?;
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
                            self.loops_seen += 1;
                            appeared.push(labels(t, &self.log.netns_of));
                            self.log.loop_event("loop_appeared", t, None, None, None)?;
                        }
                        Change::Gone(t, d) => {
                            self.log.loop_event("loop_gone", t, Some(*d), None, None)?
                        }
                    }
                }
                self.kill_due(kill_after)?;
                for n in &snap.gone {
                    self.log.netns_event("netns_gone", n, None)?;
                }
                self.forget_netns();
                self.exposed_listeners = snap.exposed_listeners;
                self.sockets = snap.sockets;
                self.metrics.record_scan(&ScanSample {
                    loops: self.present_labels(),
                    appeared,
                    exposed_listeners: self.exposed_listeners,
                    sockets: snap.sockets,
                    namespaces: snap.namespaces,
                    namespaces_skipped: snap.skipped,
                    duration: t0.elapsed(),
                });
            }
            Err(e) => {
                self.scan_errors += 1;
                self.metrics.record_scan_error();
                self.log.error(
                    "scan_error",
                    format!("scan failed: {e}"),
                    Some(self.scan_errors),
                )?;
            }
        }
        self.scans += 1;
        Ok(())
    }

    /// The metric labels of the loops present.
    fn present_labels(&self) -> Vec<LoopLabels> {
        self.tracker
            .present()
            .map(|t| labels(t, &self.log.netns_of))
            .collect()
    }

    /// Forgets the namespaces of loops no longer present.
    fn forget_netns(&mut self) {
        let tracker = &self.tracker;
        self.log
            .netns_of
            .retain(|k, _| tracker.present().any(|t| LoopKey::of(&t.sock) == *k));
    }

    /// `--kill-after`: destroys the loops present for that long
    /// ([`watch::KillPolicy`]), and says so.
    fn kill_due(&mut self, kill_after: Option<Duration>) -> anyhow::Result<()> {
        if kill_after.is_none() {
            return Ok(());
        }
        let Some(policy) = self.policy.as_mut() else {
            return Ok(());
        };
        let netns_of = &self.log.netns_of;
        let actions = policy.run(&mut self.tracker, Instant::now(), |t| {
            match netns_of.get(&LoopKey::of(&t.sock)) {
                Some(n) => watch::kill_in(&t.sock, n),
                None => watch::kill(&t.sock),
            }
        });
        for a in actions {
            match a {
                KillAction::Killed {
                    tracked: t,
                    seen,
                    kills_on_port: n,
                    reserve_advised,
                } => {
                    self.kills += 1;
                    self.metrics.record_kill(true);
                    let port = t.sock.local.port();
                    let advice = reserve_advised.then(|| {
                        format!(
                            "loop {n} on port {port}: its client reconnects and loops again, as \
                             the port is in the ephemeral range and not reserved; reserve it \
                             (tcploop audit --ports {port} --apply) and the next kill is the last"
                        )
                    });
                    let note = KillNote {
                        kills_on_port: n,
                        advice,
                    };
                    self.log
                        .loop_event("loop_killed", &t, Some(seen), None, Some(note))?;
                }
                KillAction::Failed {
                    tracked: t,
                    seen,
                    error,
                } => {
                    // said once, not retried every scan
                    self.metrics.record_kill(false);
                    self.log
                        .loop_event("kill_failed", &t, Some(seen), Some(error), None)?;
                }
            }
        }
        Ok(())
    }

    /// The next moment a present loop becomes due for `--kill-after`.
    fn next_due(&self, kill_after: Option<Duration>) -> Option<Instant> {
        kill_after?;
        self.policy.as_ref()?.next_due(&self.tracker)
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::ensure!(
        args.interval >= Duration::from_millis(10),
        "--interval must be at least 10ms"
    );
    if let Some(n) = args.ring_bytes {
        anyhow::ensure!(
            n >= 4096 && n.is_power_of_two(),
            "--ring-bytes must be a power of two, at least 4096"
        );
    }
    if let Some(p) = &args.textfile {
        // fail now, not on every scan: a missing or unwritable directory,
        // or a target that is not a regular file
        tcploop::safefile::check_writable(p)
            .with_context(|| format!("--textfile {}", p.display()))?;
    }
    let (source, why) = choose(&args)?;
    let metrics = Metrics::new();
    let page: metrics::Page = Arc::new(Mutex::new(metrics.render()));
    let served = match &args.prometheus {
        Some(addr) => {
            let listener = TcpListener::bind(addr.as_str())
                .with_context(|| format!("--prometheus: cannot listen on {addr}"))?;
            Some(metrics::serve(listener, page.clone()).context("starting the metrics server")?)
        }
        None => None,
    };
    let events = match source {
        Source::Events(e) => Some(e),
        Source::Poll => {
            super::catch_interrupts();
            None
        }
    };

    let log = Log {
        out,
        json: args.json,
        netns_of: HashMap::new(),
    };
    let source_name = if events.is_some() { "ebpf" } else { "poll" };
    if args.json {
        report::json_line(
            log.out,
            "watch_started",
            &Started {
                time: now_text(),
                interval_s: args.interval.as_secs_f64(),
                prometheus: served.map(|a| a.to_string()),
                textfile: args.textfile.as_ref().map(|p| p.display().to_string()),
                kill_after_s: args.kill_after.map(|d| d.as_secs_f64()),
                source: source_name,
                source_reason: why.clone(),
            },
        )?;
    } else {
        let mut extra = String::new();
        if let Some(a) = served {
            extra.push_str(&format!(", metrics at http://{a}/metrics"));
        }
        if let Some(p) = &args.textfile {
            extra.push_str(&format!(", textfile {}", p.display()));
        }
        if let Some(d) = args.kill_after {
            extra.push_str(&format!(", killing loops after {:.1} s", d.as_secs_f64()));
        }
        let how = if events.is_some() {
            "as the kernel reports them".to_string()
        } else {
            format!("every {:.1} s", args.interval.as_secs_f64())
        };
        writeln!(
            log.out,
            "{} watching for loops {how}{extra} (Ctrl-C to stop)\n{} source: {source_name}: {why}",
            now_text(),
            now_text(),
        )?;
    }
    log.out.flush()?;

    let mut st = State {
        log,
        metrics: &metrics,
        tracker: Tracker::new(),
        poller: watch::Poller::new(args.all_netns)
            .context("reading this process's network namespace")?,
        policy: args.kill_after.map(KillPolicy::new),
        scans: 0,
        scan_errors: 0,
        loops_seen: 0,
        kills: 0,
        exposed_listeners: 0,
        sockets: 0,
    };
    let publish = |st: &mut State| -> anyhow::Result<()> {
        if served.is_some() || args.textfile.is_some() {
            let text = st.metrics.render();
            if let Some(p) = &args.textfile {
                if let Err(e) = metrics::write_textfile(p, &metrics::to_prometheus_text(&text)) {
                    st.log.error(
                        "output_error",
                        format!("writing {}: {e}", p.display()),
                        None,
                    )?;
                }
            }
            *page.lock().unwrap_or_else(|e| e.into_inner()) = text;
        }
        Ok(())
    };

    match events {
        None => {
            let mut next = Instant::now();
            while !super::interrupted() {
                st.scan(args.kill_after)?;
                publish(&mut st)?;
                if args.count.is_some_and(|n| st.scans >= n) {
                    break;
                }
                // Sleep to the next tick (no drift), waking often enough to stop
                // promptly on a signal.
                next += args.interval;
                let now = Instant::now();
                if next < now {
                    next = now;
                }
                while !super::interrupted() {
                    let left = next.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                }
            }
        }
        Some(mut events) => watch_events(&mut events, &args, &mut st, &publish)?,
    }

    let State {
        log,
        scans,
        scan_errors,
        loops_seen,
        kills,
        ..
    } = st;
    if args.json {
        report::json_line(
            log.out,
            "watch_stopped",
            &Stopped {
                time: now_text(),
                scans,
                scan_errors,
                loops_seen,
                kills,
            },
        )?;
    } else {
        writeln!(
            log.out,
            "{} stopped after {scans} scans: {loops_seen} loop(s) seen, {kills} killed, {scan_errors} failed scan(s)",
            now_text()
        )?;
    }
    Ok(Exit::Ok)
}

/// The watch on kernel events: one dump at start (loops older than the
/// program), then each loop as the kernel reports it, and one dump again
/// after the ring buffer dropped events. No timer while idle;
/// `--kill-after` wakes it when a loop becomes due. Stops on SIGINT or
/// SIGTERM.
fn watch_events(
    events: &mut Events,
    args: &Args,
    st: &mut State,
    publish: &dyn Fn(&mut State) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    st.scan(args.kill_after)?;
    publish(st)?;
    let own = watch::own_netns()?;
    loop {
        let wake = st.next_due(args.kill_after);
        let now = Instant::now();
        let batch = events.next(wake.map(|w| w.saturating_duration_since(now)))?;
        let mut appeared = vec![];
        let mut changed = false;
        for e in &batch.events {
            let time = events.wall(e.monotonic_ns);
            match e.kind {
                EventKind::Loop => {
                    let seen = trace::owner_of(e, time);
                    let t = watch::tracked_from_event(&seen, Instant::now());
                    if let Some(n) = watch::event_netns(&seen, own) {
                        st.log.netns_of.insert(LoopKey::of(&t.sock), n);
                    }
                    if st.tracker.insert(t.clone()) {
                        st.loops_seen += 1;
                        appeared.push(labels(&t, &st.log.netns_of));
                        st.log.loop_event("loop_appeared", &t, None, None, None)?;
                        changed = true;
                    }
                }
                EventKind::End => {
                    if let Some((t, held)) = st.tracker.end(e.cookie, Instant::now()) {
                        // the kernel's own lifetime, when the program saw the start
                        let held = if e.started_ns != 0 {
                            Duration::from_nanos(e.monotonic_ns.saturating_sub(e.started_ns))
                        } else {
                            held
                        };
                        st.log.loop_event("loop_gone", &t, Some(held), None, None)?;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            let present = st.present_labels();
            st.metrics.record_loops(&present, &appeared);
            st.forget_netns();
        }
        if let Some((loops, ends)) = batch.lost {
            st.log.lost(loops, ends)?;
            // catch up: what the lost events would have said is in the table
            st.scan(args.kill_after)?;
            changed = true;
        }
        let before = st.kills;
        st.kill_due(args.kill_after)?;
        if changed || st.kills != before {
            publish(st)?;
        }
        if batch
            .signals
            .iter()
            .any(|&s| s == libc::SIGINT || s == libc::SIGTERM)
        {
            break;
        }
    }
    Ok(())
}

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
