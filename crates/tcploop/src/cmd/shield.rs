//! `tcploop shield on|off|status|daemon`: make the loop impossible for every
//! program of a network namespace (or of every namespace of the host).
//! Parses, calls [`tcploop::shield`] once per namespace, and hands the
//! results to [`tcploop::report::shield`].

use std::io::Write;
use std::path::PathBuf;

use tcploop::report::shield::{render, Line};
use tcploop::shield::{self, Mechanism};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
A self-connect SYN (source address and port equal to its destination) is
answered with RST+ACK on lo, the way a closed port answers: the connect()
fails with ECONNREFUSED instead of connecting to itself. This works for
every program (static binaries, Go, io_uring, TCP Fast Open, non-blocking
sockets); its cost to other loopback traffic is within the noise of the
benchmarks (a few percent at most, BENCHMARKS.md).

Mechanisms:
  bpf       a tc classifier on lo (tcx on Linux 6.6+, clsact + cls_bpf before),
            pinned under /sys/fs/bpf/tcploop/shield/netns-<COOKIE>/; needs root
            (CAP_BPF + CAP_NET_ADMIN)
  iptables  a rule pair (iptables and ip6tables, OUTPUT -o lo, a classic-BPF
            match, REJECT --reject-with tcp-reset) with the comment
            'tcploop-shield since=<time>'; needs CAP_NET_ADMIN over the
            namespace only (root of a rootless container)
`on` tries bpf first and falls back to iptables; --mechanism forces one.
The shield stays after the command exits; `off` removes exactly what `on`
added. Each network namespace (each container) needs its own: use
--all-netns, or `tcploop shield daemon` to cover namespaces created later.

Exit codes: 0 done (status: on everywhere looked at); 1 status: off
somewhere; 2 error (neither mechanism works, or a namespace failed).

Examples:
  tcploop shield on
  tcploop shield status --json
  tcploop shield on --all-netns
  tcploop shield on --mechanism iptables
  tcploop shield on --cgroup-root          the connect hook on the cgroup v2 root
  tcploop shield off

--cgroup-root [DIR] acts on a third mechanism instead: cgroup connect4/6
programs on a cgroup v2 directory (default: the root, i.e. every process of
the host in every namespace) that refuse a TCP connect to a loopback
address where nothing listens with ECONNREFUSED, at connect() time. It
covers a new container from its first connect (before its lo has the
classifier), but sees loopback destinations only, not the namespace's
interface addresses, and a non-blocking connect fails at once instead of
returning EINPROGRESS. Pinned under /sys/fs/bpf/tcploop/shield/cgroup-<INODE>/.";

/// Arguments of `tcploop shield`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The shield's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Turn the shield on (a second `on` changes nothing)
    On(OnArgs),
    /// Remove the shield (exactly what `on` added)
    Off(Common),
    /// Say whether the shield is on, by which mechanism, since when, and
    /// how many self-connect SYNs it turned away
    Status(StatusArgs),
    /// Keep the shield on in every namespace, including new ones; serve metrics
    #[command(after_help = super::shield_daemon::AFTER_HELP)]
    Daemon(super::shield_daemon::Args),
}

/// Options shared by `on` and `off`.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Use (or remove) only this mechanism
    #[arg(long, value_enum)]
    pub mechanism: Option<MechanismArg>,
    /// Every network namespace of the host (containers included), not only this one
    #[arg(long)]
    pub all_netns: bool,
    /// Instead: the cgroup connect hook on this cgroup v2 directory (default: the root)
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "",
          conflicts_with_all = ["all_netns", "mechanism"])]
    pub cgroup_root: Option<String>,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `shield on`.
#[derive(Debug, clap::Args)]
pub struct OnArgs {
    #[command(flatten)]
    pub common: Common,
    /// How to attach the bpf mechanism (default: tcx on 6.6+, tc before)
    #[arg(long, value_enum, hide = true)]
    pub attach: Option<AttachArg>,
}

/// Arguments of `shield status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Every network namespace of the host, not only this one
    #[arg(long)]
    pub all_netns: bool,
    /// Instead: the cgroup connect hook on this cgroup v2 directory (default: the root)
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "all_netns")]
    pub cgroup_root: Option<String>,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// `--mechanism`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MechanismArg {
    /// The tc classifier on lo
    Bpf,
    /// The iptables rule pair
    Iptables,
}

impl From<MechanismArg> for Mechanism {
    fn from(m: MechanismArg) -> Mechanism {
        match m {
            MechanismArg::Bpf => Mechanism::Bpf,
            MechanismArg::Iptables => Mechanism::Iptables,
        }
    }
}

/// `--attach` (hidden: tests the pre-6.6 path on a newer kernel).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AttachArg {
    /// A tcx link
    Tcx,
    /// clsact + cls_bpf (netlink)
    Tc,
}

/// `--cgroup-root` given as a flag alone: the host's cgroup v2 root.
pub fn cgroup_dir(given: &str) -> anyhow::Result<PathBuf> {
    if !given.is_empty() {
        return Ok(PathBuf::from(given));
    }
    shield::cgroup_default_root().ok_or_else(|| {
        anyhow::anyhow!(
            "--cgroup-root: no cgroup v2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)"
        )
    })
}

/// `on|off|status --cgroup-root`.
fn run_cgroup(what: &str, dir: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let dir = cgroup_dir(dir)?;
    let r = match what {
        "on" => shield::cgroup_on(&dir),
        "off" => shield::cgroup_off(&dir),
        _ => shield::cgroup_status(&dir),
    }
    .map_err(|e| e.to_string());
    tcploop::report::shield::render_cgroup(out, json, &dir, &r)?;
    Ok(match r {
        Err(e) => {
            out.flush()?;
            eprintln!("tcploop: error: {e}");
            Exit::Error
        }
        Ok(c) if what == "status" && !c.on => Exit::Found,
        Ok(_) => Exit::Ok,
    })
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match &args.action {
        Action::On(a) if a.common.cgroup_root.is_some() => {
            return run_cgroup(
                "on",
                a.common.cgroup_root.as_deref().unwrap_or(""),
                a.common.json,
                out,
            )
        }
        Action::Off(a) if a.cgroup_root.is_some() => {
            return run_cgroup("off", a.cgroup_root.as_deref().unwrap_or(""), a.json, out)
        }
        Action::Status(a) if a.cgroup_root.is_some() => {
            return run_cgroup(
                "status",
                a.cgroup_root.as_deref().unwrap_or(""),
                a.json,
                out,
            )
        }
        _ => {}
    }
    let is_status = matches!(args.action, Action::Status(_));
    let (json, lines) = match args.action {
        Action::On(a) => {
            let force = a.common.mechanism.map(Mechanism::from);
            let attach = a.attach;
            let r = shield::each_namespace(a.common.all_netns, || {
                let o = match (attach, force) {
                    (Some(at), None | Some(Mechanism::Bpf)) => shield::on_bpf_with(match at {
                        AttachArg::Tcx => shield::BpfAttach::Tcx,
                        AttachArg::Tc => shield::BpfAttach::Tc,
                    }),
                    _ => shield::on_here(force),
                }
                .map_err(|e| e.to_string())?;
                Ok(Line::on(&Ok((o, shield::status_here()))))
            })?;
            (a.common.json, r)
        }
        Action::Off(a) => {
            let only = a.mechanism.map(Mechanism::from);
            let r = shield::each_namespace(a.all_netns, || {
                let o = shield::off_here(only).map_err(|e| e.to_string())?;
                Ok(Line::off(&Ok((o, shield::status_here()))))
            })?;
            if a.all_netns {
                // Directories of namespaces that died meanwhile.
                let _ = shield::prune();
            }
            (a.json, r)
        }
        Action::Status(a) => {
            let r = shield::each_namespace(a.all_netns, || {
                Ok(Line::status(&Ok(shield::status_here())))
            })?;
            (a.json, r)
        }
        Action::Daemon(a) => return super::shield_daemon::run(a, out),
    };
    let (lines, unreadable) = lines;
    if !json && lines.len() == 1 {
        if let Err(e) = &lines[0].result {
            // One namespace that failed: the error, once, on stderr.
            eprintln!("tcploop: error: {e}");
            return Ok(Exit::Error);
        }
    }
    let (_on, off, failed) = render(out, json, &lines, unreadable)?;
    if failed > 0 {
        if !json {
            let first = lines.iter().find_map(|l| match &l.result {
                Err(e) => Some(e.clone()),
                Ok(_) => None,
            });
            if let Some(e) = first {
                out.flush()?;
                eprintln!("tcploop: error: {e}");
            }
        }
        return Ok(Exit::Error);
    }
    if is_status && off > 0 {
        return Ok(Exit::Found);
    }
    Ok(Exit::Ok)
}
