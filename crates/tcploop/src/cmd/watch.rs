//! `tcploop watch`: report each loop when it appears and when it goes away,
//! serve Prometheus metrics, and optionally destroy loops that persist.
//!
//! Two sources (`--source`): kernel events (`ebpf`: the BPF program of
//! `tcploop trace`; every loop, however short-lived, with one socket dump
//! at start and after any ring-buffer drop, and no timer while idle), or a
//! socket dump every interval (`poll`). `auto` takes events where the kernel
//! and the privileges allow, and says which it took and why.
//!
//! The arguments become a [`WatchConfig`]; [`watch::run`] is the whole watch;
//! each event goes to [`report::watch::event`] (its JSON Lines are
//! documented there).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tcploop::report::{self, Format};
use tcploop::watch::{self, SourceChoice, WatchConfig};

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
    pub source: SourceChoice,
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

impl Args {
    /// The watch these arguments ask for.
    fn resolve(self) -> anyhow::Result<WatchConfig> {
        anyhow::ensure!(
            self.interval >= Duration::from_millis(10),
            "--interval must be at least 10ms"
        );
        if let Some(n) = self.ring_bytes {
            anyhow::ensure!(
                n >= 4096 && n.is_power_of_two(),
                "--ring-bytes must be a power of two, at least 4096"
            );
        }
        Ok(WatchConfig {
            interval: self.interval,
            source: self.source,
            count: self.count,
            kill_after: self.kill_after,
            all_netns: self.all_netns,
            prometheus: self.prometheus,
            textfile: self.textfile,
            ring_bytes: self.ring_bytes,
        })
    }
}

/// Runs the command: until SIGINT or SIGTERM (exit 0), or --count scans.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let format = Format::json_if(args.json);
    let cfg = args.resolve()?;
    let mut warn = std::io::stderr();
    watch::run(&cfg, &mut |time, e| {
        report::watch::event(out, &mut warn, format, time, e)
    })?;
    Ok(Exit::Ok)
}
