//! `tcploop trace`: print each loop the instant it forms (the kernel's
//! `inet_sock_set_state` tracepoint, through a BPF program), and its end.
//! Parses the arguments into a [`TraceConfig`], runs [`tcploop::trace`],
//! renders with [`tcploop::report::trace`].

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use tcploop::ports::PortSet;
use tcploop::report::trace as render;
use tcploop::report::Format;
use tcploop::trace::{self, Filter, NetnsScope, TraceConfig, TraceError};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Needs root (CAP_BPF and CAP_PERFMON in the initial user namespace) and a
kernel with BTF (/sys/kernel/btf/vmlinux). Without them it exits 2 and says
what is missing; `tcploop watch --source poll` works without privileges
(polling: it misses loops shorter than its interval).

A loop is a TCP socket that connected to itself (SYN_SENT -> SYN_RECV with
its own address and port at both ends); it is reported at that moment, with
the process inside connect(), and again when its socket leaves ESTABLISHED
(`end after 42 µs (CLOSE)`), however short-lived.

--kill destroys each loop (SOCK_DESTROY, by cookie) as soon as it is seen.
That is a race the client can still win: the destroy purges the socket's
send queue, not its receive queue, so the client may already have read its
own bytes. `tcploop shield` makes loops impossible instead.

--pid and `-- COMMAND` follow a process tree through the ancestors the
kernel records with each event (8 generations), so children that have
exited since still count. Pids are the host's (the initial pid namespace).

Exit status: 0 no loop seen, 1 loops seen, 2 error or not permitted; with a
COMMAND, the command's own exit status.

Examples:
  tcploop trace
  tcploop trace --netns all --json
  tcploop trace --port 40000-40999 --duration 60s
  tcploop trace -- cargo test            loops made by the test suite only";

/// Arguments of `tcploop trace`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which network namespaces: `current` (where tcploop runs) or `all`
    #[arg(long, default_value = "current", value_name = "current|all")]
    pub netns: String,
    /// Only loops on these ports, e.g. 8080 or 40000-40999,8080
    #[arg(long, value_name = "PORTS")]
    pub port: Option<PortSet>,
    /// Only loops made by this process or its descendants (repeatable)
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Stop after this long (10s, 2m)
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Stop after N loops
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Destroy each loop as soon as it is seen (a race; see below)
    #[arg(long)]
    pub kill: bool,
    /// JSON Lines: loop, loop-end, lost, kill, summary
    #[arg(long)]
    pub json: bool,
    /// Ring buffer size in bytes (a power of two, at least 4096; tests)
    #[arg(long, hide = true, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
    /// Run this command and trace only its process tree; exit with its status
    #[arg(last = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Turns the arguments into a config.
fn config(args: &Args) -> anyhow::Result<TraceConfig> {
    let scope = match args.netns.as_str() {
        "current" => NetnsScope::Current,
        "all" => NetnsScope::All,
        other => anyhow::bail!("--netns {other:?}: expected `current` or `all`"),
    };
    if args.count == Some(0) {
        anyhow::bail!("--count must be at least 1");
    }
    if let Some(n) = args.ring_bytes {
        anyhow::ensure!(
            n >= 4096 && n.is_power_of_two(),
            "--ring-bytes must be a power of two, at least 4096"
        );
    }
    Ok(TraceConfig {
        scope,
        filter: Filter {
            ports: args.port.clone(),
            trees: args.pid.clone(),
        },
        duration: args.duration,
        count: args.count,
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        kill: args.kill,
        ring_bytes: args.ring_bytes,
    })
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let cfg = config(&args)?;
    let format = Format::json_if(args.json);
    let err = &mut std::io::stderr();
    let summary = match trace::trace(&cfg, &mut |e| render::event(out, err, format, cfg.kill, e)) {
        Ok(s) => s,
        Err(TraceError::Refused(r)) => anyhow::bail!(
            "cannot trace: {r}; run it as root, or use `tcploop watch --source poll` \
             (polling, no privileges: misses loops shorter than its interval)"
        ),
        Err(e) => return Err(e.into()),
    };
    render::summary(out, format, &summary)?;
    Ok(match summary.command_status {
        Some(c) => Exit::Command(c),
        None if summary.loops > 0 => Exit::Found,
        None => Exit::Ok,
    })
}
