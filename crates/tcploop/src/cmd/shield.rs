//! `tcploop shield on|off|status|daemon`: make the loop impossible for every
//! program of a network namespace (or of every namespace of the host).
//! Parses, calls [`tcploop::shield::act`], and hands the result to
//! [`tcploop::report::shield`]; `daemon` is its own subcommand module.

pub mod daemon;

use std::io::Write;
use std::path::PathBuf;

use tcploop::report::shield::render_run;
use tcploop::report::Format;
use tcploop::shield::{self, Mechanism, Scope};

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
    #[command(after_help = daemon::AFTER_HELP)]
    Daemon(daemon::Args),
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

impl From<AttachArg> for shield::BpfAttach {
    fn from(a: AttachArg) -> shield::BpfAttach {
        match a {
            AttachArg::Tcx => shield::BpfAttach::Tcx,
            AttachArg::Tc => shield::BpfAttach::Tc,
        }
    }
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

/// Parse, then resolve: the action, where, and the output format (the
/// daemon is a command of its own).
type Config = (shield::Action, Scope, Format);

fn config(
    action: shield::Action,
    all_netns: bool,
    cgroup_root: Option<&str>,
    json: bool,
) -> anyhow::Result<Config> {
    let scope = match cgroup_root {
        Some(dir) => Scope::Cgroup(cgroup_dir(dir)?),
        None if all_netns => Scope::AllNetns,
        None => Scope::Here,
    };
    Ok((action, scope, Format::json_if(json)))
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (action, scope, format) = match args.action {
        Action::Daemon(a) => return daemon::run(a, out),
        Action::On(a) => {
            let (c, attach) = (a.common, a.attach.map(Into::into));
            let on = shield::Action::On {
                force: c.mechanism.map(Mechanism::from),
                attach,
            };
            config(on, c.all_netns, c.cgroup_root.as_deref(), c.json)?
        }
        Action::Off(c) => {
            let off = shield::Action::Off {
                only: c.mechanism.map(Mechanism::from),
            };
            config(off, c.all_netns, c.cgroup_root.as_deref(), c.json)?
        }
        Action::Status(a) => config(
            shield::Action::Status,
            a.all_netns,
            a.cgroup_root.as_deref(),
            a.json,
        )?,
    };
    let done = shield::act(action, &scope)?;
    let counts = render_run(out, &mut std::io::stderr().lock(), format, &done)?;
    Ok(if counts.failed > 0 {
        Exit::Error
    } else if action == shield::Action::Status && counts.off > 0 {
        Exit::Found
    } else {
        Exit::Ok
    })
}
