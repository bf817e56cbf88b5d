//! `tcploop audit`: which services of this network namespace are exposed to
//! the TCP loop (listening, or configured, inside the ephemeral range and not
//! reserved), what the predictor says for each while it is down, the loops
//! present now, and the `net.ipv4.ip_local_reserved_ports` fix, printed,
//! emitted as an /etc/sysctl.d file, or applied.
//!
//! The engine is [`tcploop::audit::run`]; the output (and its JSON schema)
//! is [`tcploop::report::audit`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tcploop::audit::{self, ApplyRequest, Config};
use tcploop::ports::PortSet;
use tcploop::report::{self, Format};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
A service whose port lies in the ephemeral range (ip_local_port_range) and is
not reserved is safe only while it listens: while it is down or restarting,
its local clients may be handed that very port as their source port and
connect to themselves, and the service then cannot bind it. The fix is
net.ipv4.ip_local_reserved_ports: reserved ports are never handed out, and the
service can still bind them. The value printed keeps every existing
reservation and adds the exposed ports.

--apply only ever grows the reservation: it takes an flock on
/run/tcploop-reserved-ports.lock (so concurrent runs serialize), reads the
live value, writes the union, reads it back and checks that every port
reserved before and every new port is there; if not, it writes the previous
value back and exits 2. --persist then merges into --sysctl-file: the value
the file already sets, the live value and the new ports; every other line is
kept. It refuses a symlink, a directory, a FIFO, a device or a file over
1 MiB (exit 2, file untouched), and replaces the file atomically (temporary
file, mode 0644, fsync, rename). If the fix was applied but persisting
failed, both are said and the exit code is 2.

Exit codes: 0 nothing exposed (or every exposed port prevented by `tcploop
shield`) and no loop (after --apply: the state after the fix); 1 exposed ports or loops; 2 error (after --apply: the fix was not
applied, or applied but not persisted). --emit exits 0 once the fix is
printed.

--emit prints the same reservation (every port reserved now plus the exposed
ones) for where it is set: k8s, the pod spec's securityContext.sysctls entry
(each pod has its own network namespace, which starts with nothing reserved;
a safe sysctl since Kubernetes 1.27); docker, the `docker run --sysctl` flag;
sysctl, the /etc/sysctl.d file for the host (--emit-sysctl is the same).

Examples:
  tcploop audit                                   listeners in the range, and the fix
  tcploop audit --ports 33333,40000-40010         also ports of services now down
  tcploop audit --emit sysctl > /etc/sysctl.d/60-tcploop.conf
  tcploop audit --ports 8080 --emit k8s           the pod's securityContext
  docker run $(tcploop audit --ports 8080 --emit docker) IMAGE
  sudo tcploop audit --apply --persist            reserve now and at every boot";

/// The formats of `--emit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// the pod spec's securityContext.sysctls entry (Kubernetes 1.27+: a safe sysctl)
    K8s,
    /// the `docker run` / `podman run` flag: --sysctl net.ipv4.ip_local_reserved_ports=...
    Docker,
    /// an /etc/sysctl.d file for the host
    Sysctl,
}

/// Arguments of `tcploop audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also audit these service ports, listening or not: 33333,40000-40010
    #[arg(long, value_name = "LIST")]
    pub ports: Vec<String>,
    /// Also audit the ports listed in FILE (commas, spaces or lines; # comments)
    #[arg(long, value_name = "FILE")]
    pub ports_file: Option<PathBuf>,
    /// Print only the fix, as a Kubernetes pod securityContext (k8s), a
    /// `docker run` flag (docker) or an /etc/sysctl.d file (sysctl)
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with_all = ["apply", "json", "emit_sysctl"])]
    pub emit: Option<Emit>,
    /// The same as --emit sysctl
    #[arg(long, conflicts_with_all = ["apply", "json"])]
    pub emit_sysctl: bool,
    /// Write the fix to /proc/sys now (root, or CAP_NET_ADMIN over the namespace)
    #[arg(long)]
    pub apply: bool,
    /// With --apply, also write the sysctl.d file so the fix survives a reboot
    #[arg(long, requires = "apply")]
    pub persist: bool,
    /// The file --persist writes
    #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_SYSCTL_FILE)]
    pub sysctl_file: PathBuf,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

impl From<Emit> for report::audit::Emit {
    fn from(e: Emit) -> report::audit::Emit {
        match e {
            Emit::K8s => report::audit::Emit::K8s,
            Emit::Docker => report::audit::Emit::Docker,
            Emit::Sysctl => report::audit::Emit::Sysctl,
        }
    }
}

impl Args {
    /// Parse, then resolve: the service ports (`--ports`, `--ports-file`),
    /// whether owners are needed, the fix to apply; and `--emit`.
    fn config(&self) -> anyhow::Result<(Config, Option<Emit>)> {
        let mut ports = PortSet::default();
        for item in &self.ports {
            let set = PortSet::parse(item).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!set.is_empty(), "--ports: empty port list");
            ports = ports.union(&set);
        }
        if let Some(path) = &self.ports_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the ports file {}", path.display()))?;
            let set = audit::parse_ports_file(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            ports = ports.union(&set);
        }
        let emit = self.emit.or(self.emit_sysctl.then_some(Emit::Sysctl));
        let config = Config {
            ports,
            owners: emit.is_none(),
            apply: self.apply.then(|| ApplyRequest {
                persist: self.persist.then(|| self.sysctl_file.clone()),
            }),
        };
        Ok((config, emit))
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (config, emit) = args.config()?;
    let mut run = audit::run(&config).context("auditing this network namespace")?;
    if let Some(emit) = emit {
        report::audit::emit(out, emit.into(), &run.audit.fix)?;
        return Ok(Exit::Ok);
    }
    report::audit::render(out, Format::json_if(args.json), &run)?;
    if let Some(e) = run.take_error() {
        out.flush()?;
        return Err(e.into());
    }
    Ok(if run.found() { Exit::Found } else { Exit::Ok })
}
