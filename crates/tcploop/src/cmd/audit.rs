//! `tcploop audit`: which services of this network namespace are exposed to
//! the TCP loop (listening, or configured, inside the ephemeral range and not
//! reserved), what the predictor says for each while it is down, the loops
//! present now, and the `net.ipv4.ip_local_reserved_ports` fix, printed,
//! emitted as an /etc/sysctl.d file, or applied.
//!
//! JSON Lines (`--json`), in this order:
//! - `port`, one per audited port:
//!   `{"port": 40004, "status": "exposed"|"reserved"|"outside_range", "configured": bool,
//!     "listening": [{"addr": "0.0.0.0:40004", "inode": 123, "uid": 0,
//!                    "owners": [{"pid": 1, "command": "python3", "fd": 3,
//!                                "container": null|CONTAINER (as in `tcploop scan --json`)}]}],
//!     "host": "127.0.0.1", "when_down": {"verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown",
//!     "reasons": [string], "expected_tries": number|null}, "advice": [string]}`;
//! - `loop`, one per self-connected socket present:
//!   `{"local": "127.0.0.1:40004", "state": "ESTABLISHED", "inode": 123, "owners": [...]}`;
//! - `fix`: `{"key": "net.ipv4.ip_local_reserved_ports", "current": "8080", "add": "40004",
//!   "value": "8080,40004", "needed": bool, "command": "sysctl -w ...", "sysctl_d": string}`;
//! - `applied` (with `--apply`): `{"value": "8080,40004", "previous": "8080", "written": bool,
//!   "lock": "/run/tcploop-reserved-ports.lock"|null, "file": "/etc/sysctl.d/60-tcploop.conf"|null,
//!   "file_written": bool, "file_value": "8080,40004"|null}` (`value`: the kernel's value read back;
//!   `lock`: null when the lock could not be taken), then, if `--persist` failed after the fix was
//!   applied, `persist_failed`: `{"file": path, "error": string}` (and the exit code is 2), then the
//!   `port` lines again as the predictor sees them after the fix;
//! - `summary`: `{"kernel": "6.18.44-fc-v657", "range": "32768-60999", "reserved": "8080", "exposed": 1,
//!   "loops": 0, "owners_unknown": 0, "processes_unreadable": 0}`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use tcploop::audit::{self, Audit, OwnerLookup, PortAudit, Status};
use tcploop::ports::PortSet;
use tcploop::report;

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

#[derive(Debug, Serialize)]
struct OwnerOut {
    pid: u32,
    command: String,
    fd: i32,
    container: Option<report::scan::ContainerWire>,
    /// `, container docker/web` for human text.
    #[serde(skip)]
    container_text: String,
}

#[derive(Debug, Serialize)]
struct ListenerOut {
    addr: String,
    inode: u32,
    uid: u32,
    owners: Vec<OwnerOut>,
}

#[derive(Debug, Serialize)]
struct WhenDown<'a> {
    verdict: &'a str,
    #[serde(serialize_with = "tcploop::report::predict::serialize")]
    reasons: &'a [tcploop::predict::Reason],
    expected_tries: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PortLine<'a> {
    port: u16,
    status: &'a str,
    configured: bool,
    listening: Vec<ListenerOut>,
    host: String,
    when_down: WhenDown<'a>,
    advice: &'a [String],
}

#[derive(Debug, Serialize)]
struct LoopLine {
    local: String,
    state: &'static str,
    inode: u32,
    owners: Vec<OwnerOut>,
}

#[derive(Debug, Serialize)]
struct FixLine<'a> {
    key: &'a str,
    current: String,
    add: String,
    value: String,
    needed: bool,
    command: String,
    sysctl_d: String,
}

#[derive(Debug, Serialize)]
struct AppliedLine {
    value: String,
    previous: String,
    written: bool,
    lock: Option<String>,
    file: Option<String>,
    file_written: bool,
    file_value: Option<String>,
}

#[derive(Debug, Serialize)]
struct PersistFailedLine {
    file: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct SummaryLine {
    kernel: String,
    range: String,
    reserved: String,
    exposed: usize,
    loops: usize,
    owners_unknown: u64,
    processes_unreadable: u64,
}

/// The owners of `inode` on the wire, with their containers.
fn owners_out(lookup: &OwnerLookup, inode: u32) -> Vec<OwnerOut> {
    lookup
        .of(inode)
        .iter()
        .map(|o| {
            let c = lookup.containers.get(&o.pid);
            OwnerOut {
                pid: o.pid,
                command: o.comm.clone(),
                fd: o.fd,
                container: c.map(Into::into),
                container_text: report::scan::container_text(c),
            }
        })
        .collect()
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let mut configured = PortSet::default();
    for item in &args.ports {
        let set = PortSet::parse(item).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!set.is_empty(), "--ports: empty port list");
        configured = configured.union(&set);
    }
    if let Some(path) = &args.ports_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the ports file {}", path.display()))?;
        let set = audit::parse_ports_file(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        configured = configured.union(&set);
    }
    let a = audit::take(&configured).context("auditing this network namespace")?;

    let emit = args.emit.or(args.emit_sysctl.then_some(Emit::Sysctl));
    if let Some(format) = emit {
        let text = match format {
            Emit::K8s => a.fix.kubernetes(),
            Emit::Docker => a.fix.docker(),
            Emit::Sysctl => a.fix.sysctl_d(),
        };
        out.write_all(text.as_bytes())?;
        return Ok(Exit::Ok);
    }

    let owners = audit::owners_of(&a);
    let r = Renderer {
        json: args.json,
        owners: &owners,
    };
    if !args.json {
        writeln!(
            out,
            "Ephemeral range {} (plain connect() uses {} ports), reserved: {}",
            a.facts.range,
            a.facts.range.connect_parity(),
            or_none(&a.facts.reserved)
        )?;
    }
    r.ports(out, &a)?;
    r.loops(out, &a)?;
    r.fix(out, &a, args.apply)?;

    let mut fin = a;
    if args.apply {
        let applied = audit::apply(&fin.fix.add).map_err(|e| {
            let hint = if e.is_permission() {
                " (needs root, or CAP_NET_ADMIN over this network namespace)"
            } else {
                ""
            };
            anyhow::anyhow!("applying the fix: {e}{hint}")
        })?;
        let got = applied.after.clone();
        let wrote = applied.wrote;
        let persisted = args
            .persist
            .then(|| audit::persist(&args.sysctl_file, &got));
        let file_written = matches!(&persisted, Some(Ok(p)) if p.written);
        let after = audit::take(&configured).context("auditing again after the fix")?;
        if args.json {
            report::json_line(
                out,
                "applied",
                &AppliedLine {
                    value: got.to_string(),
                    previous: applied.before.to_string(),
                    written: wrote,
                    lock: applied.lock.as_ref().ok().map(|p| p.display().to_string()),
                    file: args.persist.then(|| args.sysctl_file.display().to_string()),
                    file_written,
                    file_value: match &persisted {
                        Some(Ok(p)) => Some(p.value.to_string()),
                        _ => None,
                    },
                },
            )?;
            if let Some(Err(e)) = &persisted {
                report::json_line(
                    out,
                    "persist_failed",
                    &PersistFailedLine {
                        file: args.sysctl_file.display().to_string(),
                        error: e.to_string(),
                    },
                )?;
            }
        } else {
            writeln!(out)?;
            if wrote {
                writeln!(
                    out,
                    "Applied: {} = {} (was {}; every reservation kept)",
                    audit::SYSCTL_KEY,
                    or_none(&got),
                    or_none(&applied.before)
                )?;
            } else {
                writeln!(
                    out,
                    "Already applied: {} = {} (nothing written)",
                    audit::SYSCTL_KEY,
                    or_none(&got)
                )?;
            }
            if let Err(e) = &applied.lock {
                writeln!(
                    out,
                    "note: applied without the lock (concurrent runs were not serialized): {e}"
                )?;
            }
            match &persisted {
                Some(Ok(p)) => writeln!(
                    out,
                    "Persisted: {} ({}, sets {})",
                    args.sysctl_file.display(),
                    if p.written {
                        "written"
                    } else {
                        "already up to date"
                    },
                    or_none(&p.value)
                )?,
                Some(Err(e)) => writeln!(
                    out,
                    "NOT persisted: {e}\nThe fix is live now but will be lost at the next reboot."
                )?,
                None => {}
            }
            if wrote {
                writeln!(out, "After the fix:")?;
            }
        }
        if args.json || wrote {
            let r = Renderer {
                json: args.json,
                owners: &owners,
            };
            r.ports(out, &after)?;
        }
        if let Some(Err(e)) = persisted {
            out.flush()?;
            let hint = if e.is_permission() {
                " (needs root)"
            } else {
                ""
            };
            anyhow::bail!(
                "the fix was applied ({} = {}), but persisting it to {} failed: {e}{hint}",
                audit::SYSCTL_KEY,
                or_none(&got),
                args.sysctl_file.display()
            );
        }
        fin = after;
    }

    let exposed = fin.exposed().count();
    if args.json {
        report::json_line(
            out,
            "summary",
            &SummaryLine {
                kernel: fin.facts.release.clone(),
                range: fin.facts.range.to_string(),
                reserved: fin.facts.reserved.to_string(),
                exposed,
                loops: fin.loops.len(),
                owners_unknown: owners.unknown(&fin),
                processes_unreadable: owners.unreadable(),
            },
        )?;
    } else {
        let unknown = owners.unknown(&fin);
        if let Some(e) = &owners.error {
            writeln!(out, "note: owners not looked up: {e}")?;
        } else if unknown > 0 && owners.unreadable() > 0 {
            writeln!(
                out,
                "note: owners unknown for {unknown} socket(s): {} process(es) could not be read (run as root)",
                owners.unreadable()
            )?;
        } else if unknown > 0 {
            writeln!(
                out,
                "note: owners unknown for {unknown} socket(s) (held by a process of another PID namespace?)"
            )?;
        }
    }
    if !args.json {
        if let Some(how) = &fin.shield {
            writeln!(
                out,
                "The shield is on ({how}): clients of the exposed ports cannot loop (prevented)."
            )?;
        }
    }
    Ok(if fin.at_risk().count() > 0 || !fin.loops.is_empty() {
        Exit::Found
    } else {
        Exit::Ok
    })
}

fn or_none(s: &PortSet) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s.to_string()
    }
}

struct Renderer<'a> {
    json: bool,
    owners: &'a OwnerLookup,
}

impl Renderer<'_> {
    fn ports(&self, out: &mut dyn Write, a: &Audit) -> anyhow::Result<()> {
        if !self.json && a.ports.is_empty() {
            writeln!(
                out,
                "No listener in the range{}.",
                if a.facts.reserved.is_empty() {
                    ""
                } else {
                    " outside the reserved ports"
                }
            )?;
        }
        for p in &a.ports {
            if self.json {
                self.port_json(out, p)?;
            } else {
                self.port_text(out, p)?;
            }
        }
        Ok(())
    }

    fn port_json(&self, out: &mut dyn Write, p: &PortAudit) -> anyhow::Result<()> {
        report::json_line(
            out,
            "port",
            &PortLine {
                port: p.port,
                status: p.status.as_str(),
                configured: p.configured,
                listening: p
                    .listeners
                    .iter()
                    .map(|l| ListenerOut {
                        addr: report::addr(l.addr),
                        inode: l.inode,
                        uid: l.uid,
                        owners: owners_out(self.owners, l.inode),
                    })
                    .collect(),
                host: p.host.to_string(),
                when_down: WhenDown {
                    verdict: p.when_down.verdict.as_str(),
                    reasons: &p.when_down.reasons,
                    expected_tries: p.when_down.expected_tries,
                },
                advice: &p.advice,
            },
        )?;
        Ok(())
    }

    fn port_text(&self, out: &mut dyn Write, p: &PortAudit) -> anyhow::Result<()> {
        let label = match p.status {
            Status::Exposed => "EXPOSED",
            Status::Reserved => "reserved",
            Status::OutsideRange => "outside",
        };
        let what = if p.listeners.is_empty() {
            "configured, not listening now".to_string()
        } else {
            let v: Vec<String> = p
                .listeners
                .iter()
                .map(|l| {
                    let o = owners_out(self.owners, l.inode);
                    if o.is_empty() {
                        report::addr(l.addr)
                    } else {
                        let who: Vec<String> = o
                            .iter()
                            .map(|o| {
                                format!(
                                    "{} pid {} fd {}{}",
                                    report::escape(&o.command),
                                    o.pid,
                                    o.fd,
                                    o.container_text
                                )
                            })
                            .collect();
                        format!("{} ({})", report::addr(l.addr), who.join(", "))
                    }
                })
                .collect();
            format!("listening on {}", v.join(", "))
        };
        writeln!(out)?;
        writeln!(out, "{label:<8} {:<5}  {what}", p.port)?;
        let tries = p
            .when_down
            .expected_tries
            .map(|t| format!(", about {} tries", report::thousands(t.round() as u64)))
            .unwrap_or_default();
        writeln!(
            out,
            "  while it is down, a client connect() to {}: {}{tries}",
            report::addr(std::net::SocketAddr::new(p.host, p.port)),
            p.when_down.verdict
        )?;
        for r in &p.when_down.reasons {
            writeln!(out, "    - {r}")?;
        }
        if p.status == Status::Exposed {
            writeln!(out, "  remedies:")?;
            for a in &p.advice {
                writeln!(out, "    - {a}")?;
            }
        }
        Ok(())
    }

    fn loops(&self, out: &mut dyn Write, a: &Audit) -> anyhow::Result<()> {
        if !self.json {
            writeln!(out)?;
            if a.loops.is_empty() {
                writeln!(out, "Loops present now: none")?;
            } else {
                writeln!(
                    out,
                    "Loops present now: {} (see `tcploop scan`, `tcploop kill`)",
                    a.loops.len()
                )?;
            }
        }
        for l in &a.loops {
            let owners = owners_out(self.owners, l.inode);
            if self.json {
                report::json_line(
                    out,
                    "loop",
                    &LoopLine {
                        local: report::addr(l.local),
                        state: l.state.name(),
                        inode: l.inode,
                        owners,
                    },
                )?;
            } else {
                let who: Vec<String> = owners
                    .iter()
                    .map(|o| format!("{} pid {} fd {}", report::escape(&o.command), o.pid, o.fd))
                    .collect();
                writeln!(
                    out,
                    "  {} <-> itself  {}  {}",
                    report::addr(l.local),
                    l.state.name(),
                    if who.is_empty() {
                        "owner unknown".to_string()
                    } else {
                        who.join(", ")
                    }
                )?;
            }
        }
        Ok(())
    }

    fn fix(&self, out: &mut dyn Write, a: &Audit, applying: bool) -> anyhow::Result<()> {
        let f = &a.fix;
        if self.json {
            report::json_line(
                out,
                "fix",
                &FixLine {
                    key: audit::SYSCTL_KEY,
                    current: f.current.to_string(),
                    add: f.add.to_string(),
                    value: f.value.to_string(),
                    needed: f.needed(),
                    command: f.command(),
                    sysctl_d: f.sysctl_d(),
                },
            )?;
            return Ok(());
        }
        writeln!(out)?;
        if !f.needed() {
            writeln!(
                out,
                "Fix: nothing to reserve; {} = {}",
                audit::SYSCTL_KEY,
                or_none(&f.current)
            )?;
            return Ok(());
        }
        writeln!(
            out,
            "Fix: reserve {} (every existing reservation kept):",
            f.add
        )?;
        writeln!(out, "  {}", f.command())?;
        if !applying {
            writeln!(
                out,
                "  `tcploop audit --apply` does it now (root); add --persist to also write {}; \
                 --emit sysctl prints that file (--emit k8s, --emit docker: for a pod, a container)",
                audit::DEFAULT_SYSCTL_FILE
            )?;
        }
        Ok(())
    }
}
