//! `tcploop shield daemon`: the shield in every network namespace, kept on
//! as namespaces come and go, with Prometheus metrics. The work is
//! [`tcploop::shield_daemon::Keeper`]; this module runs its loop (a sweep
//! every interval, and at once after an inotify event) and logs its events.
//!
//! JSON Lines (`--json`), each with `"time"` (RFC 3339, UTC):
//! - `daemon_started`: `{"time", "interval_s": 1.0, "prometheus": "127.0.0.1:9978"|null,
//!   "textfile": path|null, "mechanism": "bpf"|"iptables"|null, "watching": [dir]}`;
//! - `attached` / `found` (on already): `{"time", "netns": 4026531840, "pid": 1|null,
//!   "name": "blue"|null, "mechanism": "bpf", "attach": "tcx"}`;
//! - `attach_failed`: `{"time", "netns", "pid", "name", "error": string}` (once a namespace);
//! - `cgroup_shield` (with `--cgroup-root`, once at start): as `shield on --cgroup-root` prints it;
//! - `sweep_error`: `{"time", "error": string}` (the daemon goes on);
//! - `daemon_stopped`: `{"time", "sweeps": 10, "attached": 3, "failed": 0}`.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tcploop::metrics;
use tcploop::report;
use tcploop::shield::{Mechanism, Namespace};
use tcploop::shield_daemon::{DirWatch, Event, Keeper, RUNTIME_NETNS_DIRS};

use super::shield::MechanismArg;
use crate::exit::Exit;

/// The default address of the daemon's /metrics (`tcploop watch` uses 9977).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9978";

pub const AFTER_HELP: &str = "\
Attaches the shield in every network namespace of the host at start (the
discovery of `scan --all-netns`: /proc/*/ns/net, /run/netns,
/var/run/docker/netns), then keeps it on: a sweep of /proc every --interval
finds namespaces made since, and an inotify watch on /run/netns and
/var/run/docker/netns (and each --netns-dir) finds bind-mounted ones (ip
netns add, CNI, Docker) at once. Latency from a namespace's creation to its
shield (measured): about 50 ms after a bind mount in a watched directory; at
most --interval plus about 40 ms for any other.
Before that, a program in the new namespace can still loop.

The shields stay when the daemon stops (they are pinned); `tcploop shield
off --all-netns` removes them. Runs until SIGINT or SIGTERM (exit 0).

Metrics (--prometheus, --textfile): tcploop_shield_namespaces,
tcploop_shield_namespaces_shielded, tcploop_shield_namespaces_failed,
tcploop_shield_attached_total, tcploop_shield_attach_errors_total,
tcploop_shield_refused_total{family}, tcploop_shield_sweeps_total,
tcploop_shield_sweep_duration_seconds. Alert on
`tcploop_shield_namespaces_failed > 0`.

With --cgroup-root, the cgroup connect hook is attached at start too (see
`tcploop shield --help`): it refuses loopback self-connects in a namespace
from its first connect, before the sweep reaches it.

Examples:
  tcploop shield daemon
  tcploop shield daemon --cgroup-root           the hook on the cgroup v2 root as well
  tcploop shield daemon --prometheus            metrics at 127.0.0.1:9978
  tcploop shield daemon --json --textfile /var/lib/prometheus/node-exporter/tcploop_shield.prom";

/// Arguments of `tcploop shield daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Force one mechanism (default: bpf, then iptables where bpf is refused)
    #[arg(long, value_enum)]
    pub mechanism: Option<MechanismArg>,
    /// Time between sweeps of /proc for new namespaces
    #[arg(long, default_value = "1s", value_parser = super::parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Serve GET /metrics (Prometheus) on ADDR (default 127.0.0.1:9978)
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_METRICS_ADDR)]
    pub prometheus: Option<String>,
    /// Write the metrics to this file after each sweep (node_exporter textfile collector)
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Also attach the cgroup connect hook to this cgroup v2 directory at
    /// start (default: the root): covers loopback connects in a new
    /// namespace before its lo has the shield
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "")]
    pub cgroup_root: Option<String>,
    /// Another directory where a runtime bind-mounts namespaces (repeatable)
    #[arg(long, value_name = "DIR")]
    pub netns_dir: Vec<PathBuf>,
    /// Stop after N sweeps (default: run until SIGINT/SIGTERM)
    #[arg(long, value_name = "N", hide = true)]
    pub count: Option<u64>,
    /// JSON Lines events
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Started {
    time: String,
    interval_s: f64,
    prometheus: Option<String>,
    textfile: Option<String>,
    mechanism: Option<&'static str>,
    watching: Vec<String>,
}

#[derive(Debug, Serialize)]
struct NsEvent<'a> {
    time: String,
    netns: u64,
    pid: Option<u32>,
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mechanism: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attach: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ErrorEvent {
    time: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct Stopped {
    time: String,
    sweeps: u64,
    attached: u64,
    failed: u64,
}

fn now_text() -> String {
    tcploop::report::time(SystemTime::now())
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

/// Runs the daemon.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::ensure!(
        args.interval >= Duration::from_millis(10),
        "--interval must be at least 10ms"
    );
    if let Some(p) = &args.textfile {
        // fail now, not on every sweep
        tcploop::safefile::check_writable(p)
            .with_context(|| format!("--textfile {}", p.display()))?;
    }
    let force = args.mechanism.map(Mechanism::from);
    let mut dirs: Vec<PathBuf> = RUNTIME_NETNS_DIRS.iter().map(PathBuf::from).collect();
    dirs.extend(args.netns_dir.iter().cloned());
    let mut keeper = Keeper::new(force, dirs.clone());
    let page: metrics::Page = Arc::new(Mutex::new(keeper.metrics.render()));
    let served = match &args.prometheus {
        Some(addr) => {
            let listener = TcpListener::bind(addr.as_str())
                .with_context(|| format!("--prometheus: cannot listen on {addr}"))?;
            Some(metrics::serve(listener, page.clone()).context("starting the metrics server")?)
        }
        None => None,
    };
    let cgroup = match &args.cgroup_root {
        Some(d) => Some(super::shield::cgroup_dir(d)?),
        None => None,
    };
    let mut watch = DirWatch::new().context("inotify_init")?;
    for d in &dirs {
        let _ = watch.watch(d);
    }
    super::catch_interrupts();
    let watching: Vec<String> = watch.watched().map(|p| p.display().to_string()).collect();
    if args.json {
        report::json_line(
            out,
            "daemon_started",
            &Started {
                time: now_text(),
                interval_s: args.interval.as_secs_f64(),
                prometheus: served.map(|a| a.to_string()),
                textfile: args.textfile.as_ref().map(|p| p.display().to_string()),
                mechanism: force.map(Mechanism::name),
                watching,
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
        writeln!(
            out,
            "{} shield daemon: sweeping every {:.1} s, watching {}{extra} (Ctrl-C to stop)",
            now_text(),
            args.interval.as_secs_f64(),
            if watching.is_empty() {
                "no directory".to_string()
            } else {
                watching.join(", ")
            }
        )?;
    }
    out.flush()?;
    if let Some(dir) = &cgroup {
        // Once, at start: the hook is one for the whole subtree.
        let r = tcploop::shield::cgroup_on(dir).map_err(|e| e.to_string());
        tcploop::report::shield::render_cgroup(out, args.json, dir, &r)?;
        out.flush()?;
    }

    let (mut sweeps, mut attached, mut failed) = (0u64, 0u64, 0u64);
    let mut next = Instant::now();
    let mut soon: Vec<Instant> = vec![];
    while !super::interrupted() {
        let now = Instant::now();
        let due = now >= next || soon.first().is_some_and(|t| now >= *t);
        if due {
            soon.retain(|t| *t > now);
            match keeper.sweep() {
                Ok(s) => {
                    for e in &s.events {
                        match e {
                            Event::Attached { .. } => attached += 1,
                            Event::Failed { .. } => failed += 1,
                            Event::Found { .. } => {}
                        }
                        log_event(out, args.json, e)?;
                    }
                }
                Err(e) => {
                    let error = format!("sweep failed: {e}");
                    if args.json {
                        report::json_line(
                            out,
                            "sweep_error",
                            &ErrorEvent {
                                time: now_text(),
                                error,
                            },
                        )?;
                    } else {
                        eprintln!("tcploop: warning: {error}");
                    }
                }
            }
            out.flush()?;
            sweeps += 1;
            let text = keeper.metrics.render();
            if let Some(p) = &args.textfile {
                if let Err(e) = metrics::write_textfile(p, &metrics::to_prometheus_text(&text)) {
                    eprintln!("tcploop: warning: writing {}: {e}", p.display());
                }
            }
            *page.lock().unwrap_or_else(|e| e.into_inner()) = text;
            if args.count.is_some_and(|n| sweeps >= n) {
                break;
            }
            if now >= next {
                next = now + args.interval;
            }
        }
        // A runtime directory that appeared (the first `ip netns add`, the
        // first container): watch it, and look at once.
        for d in &dirs {
            if watch.watch(d).unwrap_or(false) {
                let t = Instant::now();
                soon = AFTER_EVENT.iter().map(|d| t + *d).collect();
            }
        }
        let wake = soon.first().copied().unwrap_or(next).min(next);
        let left = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        match watch.wait(left) {
            Ok(true) => {
                let t = Instant::now();
                soon = AFTER_EVENT.iter().map(|d| t + *d).collect();
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("tcploop: warning: inotify: {e}");
                std::thread::sleep(left);
            }
        }
    }
    if args.json {
        report::json_line(
            out,
            "daemon_stopped",
            &Stopped {
                time: now_text(),
                sweeps,
                attached,
                failed,
            },
        )?;
    } else {
        writeln!(
            out,
            "{} stopped after {sweeps} sweeps: {attached} shield(s) put on, {failed} namespace(s) failed",
            now_text()
        )?;
    }
    Ok(Exit::Ok)
}

fn log_event(out: &mut dyn Write, json: bool, e: &Event) -> std::io::Result<()> {
    let (ty, ns, active, error): (&str, &Namespace, _, Option<&str>) = match e {
        Event::Attached { ns, active } => ("attached", ns, Some(active), None),
        Event::Found { ns, active } => ("found", ns, Some(active), None),
        Event::Failed { ns, error } => ("attach_failed", ns, None, Some(error.as_str())),
    };
    if json {
        report::json_line(
            out,
            ty,
            &NsEvent {
                time: now_text(),
                netns: ns.inode,
                pid: ns.pid,
                name: ns.name.as_deref(),
                mechanism: active.map(|a| a.mechanism.name()),
                attach: active.map(|a| a.attach),
                error,
            },
        )
    } else {
        let label = report::shield::ns_label(ns);
        match (active, error) {
            (Some(a), _) => writeln!(
                out,
                "{} {label}: shield {} ({} {})",
                now_text(),
                if ty == "attached" { "on" } else { "already on" },
                a.mechanism.name(),
                a.attach
            ),
            (None, Some(err)) => writeln!(
                out,
                "{} {label}: shield FAILED: {}",
                now_text(),
                report::escape(err)
            ),
            _ => Ok(()),
        }
    }
}
