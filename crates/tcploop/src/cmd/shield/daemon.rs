//! `tcploop shield daemon`: the shield in every network namespace, kept on
//! as namespaces come and go, with Prometheus metrics. The daemon is
//! [`tcploop::shield_daemon::serve`]; its output (and the JSON Lines) is
//! [`tcploop::report::shield_daemon`].

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tcploop::report::shield_daemon as render;
use tcploop::report::Format;
use tcploop::shield::Mechanism;
use tcploop::shield_daemon::{serve, DaemonConfig};

use super::MechanismArg;
use crate::cmd::{catch_interrupts, interrupted, parse_duration};
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
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
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

impl Args {
    /// Parse, then resolve.
    fn config(&self) -> anyhow::Result<DaemonConfig> {
        anyhow::ensure!(
            self.interval >= Duration::from_millis(10),
            "--interval must be at least 10ms"
        );
        Ok(DaemonConfig {
            force: self.mechanism.map(Mechanism::from),
            interval: self.interval,
            prometheus: self.prometheus.clone(),
            textfile: self.textfile.clone(),
            cgroup: self
                .cgroup_root
                .as_deref()
                .map(super::cgroup_dir)
                .transpose()?,
            netns_dirs: self.netns_dir.clone(),
            count: self.count,
        })
    }
}

/// Runs the daemon until SIGINT or SIGTERM (exit 0).
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let cfg = args.config()?;
    let format = Format::json_if(args.json);
    catch_interrupts();
    let stopped = serve(&cfg, &interrupted, &mut |n| {
        render::notice(out, &mut std::io::stderr(), format, SystemTime::now(), &n)
    })?;
    render::stopped(out, format, SystemTime::now(), &stopped)?;
    Ok(Exit::Ok)
}
