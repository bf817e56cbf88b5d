//! Benchmark: how soon `tcploop shield daemon` covers a namespace created
//! after it started: through inotify (`ip netns add`, a bind mount under
//! /run/netns) and through its periodic sweep of /proc (`unshare -n`, a
//! namespace no file names).
//!
//! Runs in fresh PID, mount and network namespaces (`unshare --pid --fork
//! --mount-proc --mount --net`, root) with private /run and /sys/fs/bpf, so
//! the daemon sees only the benchmark's namespaces. For each new namespace
//! the time is taken from just before its creation to the first
//! `tcploop shield status` (run inside it, every 2 ms) that says on; that
//! poll adds up to a few ms.
//!
//! Then the cost of the sweep itself, with every namespace covered (120 or
//! so): the `tcploop_shield_sweep_duration_seconds` of a daemon's 10th sweep.
//!
//! `cargo run --release -p tcploop-bench -- shield-latency [--count 10] [--interval 1s]`

use std::process::Command;

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// New namespaces of each kind
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// The daemon's --interval
    #[arg(long, default_value = "1s")]
    interval: String,
}

const SCRIPT: &str = r#"
set -eu
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
mkdir -p /run/netns
$B shield daemon --interval "$I" > /dev/null 2>&1 &
D=$!
sleep 1
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
i=0
while [ $i -lt $N ]; do
  i=$((i+1))
  t0=$(date +%s%N)
  ip netns add n$i
  until nsenter --net=/run/netns/n$i $B shield status >/dev/null 2>&1; do sleep 0.002; done
  echo "inotify $(ms $t0)"
done
i=0
while [ $i -lt $N ]; do
  i=$((i+1))
  t0=$(date +%s%N)
  unshare -n sh -c 'until $B shield status >/dev/null 2>&1; do sleep 0.002; done'
  echo "sweep $(ms $t0)"
  sleep 0.$(( (i * 37) % 10 ))
done
kill $D; wait $D || true
# The cost of a sweep once every namespace is covered: 100 more, then a
# daemon of its own for 10 sweeps, its last sweep's duration.
i=0
while [ $i -lt 100 ]; do i=$((i+1)); ip netns add m$i; done
mkdir -p /tmp/tf
$B shield daemon --interval 100ms --count 1 > /dev/null
$B shield daemon --interval 100ms --count 10 --textfile /tmp/tf/m.prom > /dev/null
echo "namespaces $(ls /run/netns | wc -l)"
grep '^tcploop_shield_sweep_duration_seconds ' /tmp/tf/m.prom | sed 's/^tcploop_shield_sweep_duration_seconds/sweep_s/'
"#;

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let tcploop = common::tcploop_bin()?;
    let o = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--mount", "--net"])
        .args(["sh", "-c", SCRIPT])
        .env("B", &tcploop)
        .env("N", args.count.to_string())
        .env("I", &args.interval)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "the benchmark failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    println!(
        "tcploop shield daemon --interval {}: from a namespace's creation to its shield, {} namespaces of each kind",
        args.interval, args.count
    );
    for kind in ["inotify", "sweep"] {
        let mut v: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(kind))
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        anyhow::ensure!(!v.is_empty(), "no {kind} figures: {text}");
        let max = v.iter().copied().fold(0.0, f64::max);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let what = if kind == "inotify" {
            "ip netns add (inotify on /run/netns)"
        } else {
            "unshare -n (the /proc sweep)"
        };
        println!(
            "  {what:<40} median {:.0} ms, min {min:.0} ms, max {max:.0} ms",
            common::median(&mut v)
        );
    }
    let ns = text
        .lines()
        .find_map(|l| l.strip_prefix("namespaces "))
        .unwrap_or("?")
        .trim()
        .to_string();
    let sweep: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sweep_s "))
        .and_then(|x| x.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no sweep duration: {text}"))?;
    println!(
        "  one sweep over {} shielded namespaces (+1, the daemon's own): {:.1} ms, {:.2}% of a core at --interval 1s",
        ns,
        sweep * 1e3,
        sweep * 100.0
    );
    Ok(())
}
