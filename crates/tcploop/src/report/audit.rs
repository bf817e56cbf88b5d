//! `tcploop audit`'s output: its JSON Lines wire structs, its human text,
//! and the fix printed alone (`--emit`), over an [`AuditRun`].
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
//!   "loops": 0, "owners_unknown": 0, "processes_unreadable": 0}` (not written when `--apply` or
//!   `--persist` failed: the error says what happened).

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;

use serde::Serialize;

use super::{escape, thousands, Format};
use crate::audit::{self, Advice, Audit, AuditRun, Fix, Fixed, OwnerLookup, PortAudit, Status};
use crate::ports::PortSet;
use crate::predict::Reason;
use crate::report;

/// Where the fix printed alone (`--emit`) is to be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// A Kubernetes pod spec's `securityContext.sysctls` entry.
    K8s,
    /// The `docker run` / `podman run` flag.
    Docker,
    /// An `/etc/sysctl.d` file for the host.
    Sysctl,
}

/// Prints only the fix, in the form `emit` names.
pub fn emit(out: &mut dyn Write, emit: Emit, fix: &Fix) -> io::Result<()> {
    let text = match emit {
        Emit::K8s => fix.kubernetes(),
        Emit::Docker => fix.docker(),
        Emit::Sysctl => fix.sysctl_d(),
    };
    out.write_all(text.as_bytes())
}

/// Renders an audit: its ports, loops and fix; with `--apply`, what was
/// applied and persisted and the ports after the fix; then the summary. A
/// fix that failed ends the output after the fix section (the error is
/// said apart, on stderr); a fix applied but not persisted ends it after
/// the ports after the fix.
pub fn render(out: &mut dyn Write, format: Format, run: &AuditRun) -> io::Result<()> {
    let owners = &run.owners;
    let a = &run.audit;
    if format == Format::Human {
        header(out, a)?;
    }
    ports(out, format, owners, a)?;
    loops(out, format, owners, a)?;
    fix(out, format, &a.fix, run.fixed.is_some())?;
    let last = match &run.fixed {
        None => a,
        Some(Err(_)) => return Ok(()),
        Some(Ok(f)) => {
            applied(out, format, f)?;
            if format == Format::Json || f.applied.wrote {
                ports(out, format, owners, &f.after)?;
            }
            if f.persist_error().is_some() {
                return Ok(());
            }
            &f.after
        }
    };
    summary(out, format, owners, last)
}

#[derive(Debug, Serialize)]
struct OwnerOut {
    pid: u32,
    command: String,
    fd: i32,
    container: Option<report::scan::ContainerWire>,
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
    #[serde(serialize_with = "super::predict::serialize")]
    reasons: &'a [Reason],
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
    #[serde(serialize_with = "advice_texts")]
    advice: &'a [Advice],
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

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = audit::SYSCTL_KEY;
        match *self {
            Advice::OutsideRange { port, range } => write!(
                f,
                "{port} is outside the ephemeral range {range}: no client is ever given it as a \
                 source port"
            ),
            Advice::KeepReserved { port } => write!(
                f,
                "{port} is in {key}: the kernel never hands it out; keep the reservation"
            ),
            Advice::Reserve { port } => write!(
                f,
                "reserve it: add {port} to {key} (the fix below); the service can still bind it"
            ),
            Advice::MoveBelow { below } => write!(
                f,
                "or move the service below the range (1024-{below} are outside it), or shrink the \
                 range"
            ),
            Advice::OtherParity { preferred, alt } => write!(
                f,
                "or move it to a port of the other parity ({}{}): plain connect() uses {preferred} \
                 ports here and takes {} ones only when every {preferred} port is taken; clients \
                 that bind(addr, 0) before connect() or set IP_LOCAL_PORT_RANGE (Linux 6.8+) can \
                 still get it",
                preferred.other(),
                alt.map(|a| format!(", e.g. {a}")).unwrap_or_default(),
                preferred.other()
            ),
            Advice::UnpreferredParity {
                port,
                parity,
                preferred,
            } => write!(
                f,
                "{port} is {parity}: plain connect() does not pick it while an {preferred} port is \
                 free, but clients that bind(addr, 0) before connect() (they prefer {} ports) or \
                 set IP_LOCAL_PORT_RANGE (Linux 6.8+) can: reserve it all the same",
                preferred.other()
            ),
        }
    }
}

/// Serializes a port line's `advice` as the sentences.
fn advice_texts<S: serde::Serializer>(advice: &&[Advice], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(advice.iter().map(ToString::to_string))
}

/// A reservation for people: `(none)` when empty (the kernel's own text is
/// an empty line).
pub fn or_none(s: &PortSet) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s.to_string()
    }
}

/// The owners of `inode` on the wire, with their containers.
fn owners_out(lookup: &OwnerLookup, inode: u32) -> Vec<OwnerOut> {
    lookup
        .of(inode)
        .iter()
        .map(|o| OwnerOut {
            pid: o.pid,
            command: o.comm.clone(),
            fd: o.fd,
            container: lookup.containers.get(&o.pid).map(Into::into),
        })
        .collect()
}

/// `python3 pid 1234 fd 3`, and `, container docker/web` when asked.
fn owners_text(lookup: &OwnerLookup, inode: u32, containers: bool) -> Vec<String> {
    lookup
        .of(inode)
        .iter()
        .map(|o| {
            let c = if containers {
                report::scan::container_text(lookup.containers.get(&o.pid))
            } else {
                String::new()
            };
            format!("{} pid {} fd {}{c}", escape(&o.comm), o.pid, o.fd)
        })
        .collect()
}

fn header(out: &mut dyn Write, a: &Audit) -> io::Result<()> {
    writeln!(
        out,
        "Ephemeral range {} (plain connect() uses {} ports), reserved: {}",
        a.facts.range,
        a.facts.range.connect_parity(),
        or_none(&a.facts.reserved)
    )
}

fn ports(out: &mut dyn Write, format: Format, owners: &OwnerLookup, a: &Audit) -> io::Result<()> {
    if format == Format::Human && a.ports.is_empty() {
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
        match format {
            Format::Json => port_json(out, owners, p)?,
            Format::Human => port_text(out, owners, p)?,
        }
    }
    Ok(())
}

fn port_json(out: &mut dyn Write, owners: &OwnerLookup, p: &PortAudit) -> io::Result<()> {
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
                    owners: owners_out(owners, l.inode),
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
    )
}

/// `EXPOSED  40004  listening on 0.0.0.0:40004 (python3 pid 1 fd 3)`, the
/// prediction while the service is down with its reasons, and the
/// remedies of an exposed port.
fn port_text(out: &mut dyn Write, owners: &OwnerLookup, p: &PortAudit) -> io::Result<()> {
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
                let who = owners_text(owners, l.inode, true);
                if who.is_empty() {
                    report::addr(l.addr)
                } else {
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
        .map(|t| format!(", about {} tries", thousands(t.round() as u64)))
        .unwrap_or_default();
    writeln!(
        out,
        "  while it is down, a client connect() to {}: {}{tries}",
        report::addr(SocketAddr::new(p.host, p.port)),
        p.when_down.verdict
    )?;
    for r in &p.when_down.reasons {
        writeln!(out, "    - {}", escape(&r.to_string()))?;
    }
    if p.status == Status::Exposed {
        writeln!(out, "  remedies:")?;
        for a in &p.advice {
            writeln!(out, "    - {a}")?;
        }
    }
    Ok(())
}

/// `Loops present now: N` and a line a loop (human), or a `loop` line a
/// loop.
fn loops(out: &mut dyn Write, format: Format, owners: &OwnerLookup, a: &Audit) -> io::Result<()> {
    if format == Format::Human {
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
        match format {
            Format::Json => report::json_line(
                out,
                "loop",
                &LoopLine {
                    local: report::addr(l.local),
                    state: l.state.name(),
                    inode: l.inode,
                    owners: owners_out(owners, l.inode),
                },
            )?,
            Format::Human => {
                let who = owners_text(owners, l.inode, false);
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
    }
    Ok(())
}

/// The reservation that closes the exposed ports: the `sysctl -w` command,
/// and how to apply or persist it (unless `--apply` is doing it).
fn fix(out: &mut dyn Write, format: Format, f: &Fix, applying: bool) -> io::Result<()> {
    if format == Format::Json {
        return report::json_line(
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
        );
    }
    writeln!(out)?;
    if !f.needed() {
        return writeln!(
            out,
            "Fix: nothing to reserve; {} = {}",
            audit::SYSCTL_KEY,
            or_none(&f.current)
        );
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

/// What `--apply` wrote (or found done), the lock, and what `--persist`
/// did: an `applied` line (and a `persist_failed` line), or text.
fn applied(out: &mut dyn Write, format: Format, f: &Fixed) -> io::Result<()> {
    let a = &f.applied;
    if format == Format::Json {
        let persisted = f.persisted.as_ref().map(|(_, r)| r.as_ref());
        report::json_line(
            out,
            "applied",
            &AppliedLine {
                value: a.after.to_string(),
                previous: a.before.to_string(),
                written: a.wrote,
                lock: a.lock.as_ref().ok().map(|p| p.display().to_string()),
                file: f.persisted.as_ref().map(|(p, _)| p.display().to_string()),
                file_written: matches!(persisted, Some(Ok(p)) if p.written),
                file_value: match persisted {
                    Some(Ok(p)) => Some(p.value.to_string()),
                    _ => None,
                },
            },
        )?;
        if let Some((file, e)) = f.persist_error() {
            report::json_line(
                out,
                "persist_failed",
                &PersistFailedLine {
                    file: file.display().to_string(),
                    error: e.to_string(),
                },
            )?;
        }
        return Ok(());
    }
    writeln!(out)?;
    if a.wrote {
        writeln!(
            out,
            "Applied: {} = {} (was {}; every reservation kept)",
            audit::SYSCTL_KEY,
            or_none(&a.after),
            or_none(&a.before)
        )?;
    } else {
        writeln!(
            out,
            "Already applied: {} = {} (nothing written)",
            audit::SYSCTL_KEY,
            or_none(&a.after)
        )?;
    }
    if let Err(e) = &a.lock {
        writeln!(
            out,
            "note: applied without the lock (concurrent runs were not serialized): {}",
            escape(e)
        )?;
    }
    match &f.persisted {
        Some((file, Ok(p))) => writeln!(
            out,
            "Persisted: {} ({}, sets {})",
            escape(&file.display().to_string()),
            if p.written {
                "written"
            } else {
                "already up to date"
            },
            or_none(&p.value)
        )?,
        Some((_, Err(e))) => writeln!(
            out,
            "NOT persisted: {}\nThe fix is live now but will be lost at the next reboot.",
            escape(&e.to_string())
        )?,
        None => {}
    }
    if a.wrote {
        writeln!(out, "After the fix:")?;
    }
    Ok(())
}

/// The `summary` line, or the notes on owners not found and the shield.
fn summary(out: &mut dyn Write, format: Format, owners: &OwnerLookup, a: &Audit) -> io::Result<()> {
    let unknown = owners.unknown(a);
    if format == Format::Json {
        return report::json_line(
            out,
            "summary",
            &SummaryLine {
                kernel: a.facts.release.clone(),
                range: a.facts.range.to_string(),
                reserved: a.facts.reserved.to_string(),
                exposed: a.exposed().count(),
                loops: a.loops.len(),
                owners_unknown: unknown,
                processes_unreadable: owners.unreadable(),
            },
        );
    }
    if let Some(e) = &owners.error {
        writeln!(out, "note: owners not looked up: {}", escape(e))?;
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
    if let Some(how) = &a.shield {
        writeln!(
            out,
            "The shield is on ({how}): clients of the exposed ports cannot loop (prevented)."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::audit::{Applied, ApplyError, FixError, Listener, Persisted};
    use crate::container::{Container, Runtime};
    use crate::model::{Owner, Socket, TcpState};
    use crate::owners::Owners;
    use crate::ports::EphemeralFacts;
    use crate::predict::{Prediction, Verdict};

    fn set(s: &str) -> PortSet {
        PortSet::parse(s).unwrap()
    }

    /// Port 40004 exposed: two listeners, one held by a process in a
    /// container, one by a process whose name holds an escape sequence.
    fn exposed_40004() -> PortAudit {
        PortAudit {
            port: 40004,
            status: Status::Exposed,
            listeners: vec![
                Listener {
                    addr: "0.0.0.0:40004".parse().unwrap(),
                    inode: 11,
                    uid: 0,
                },
                Listener {
                    addr: "[::]:40004".parse().unwrap(),
                    inode: 12,
                    uid: 0,
                },
            ],
            configured: false,
            host: "127.0.0.1".parse().unwrap(),
            when_down: Prediction {
                port: 40004,
                verdict: Verdict::Possible,
                reasons: vec![
                    Reason::LocalAddress {
                        addr: "127.0.0.1".parse().unwrap(),
                        iface: "lo\x1b[2J".into(),
                    },
                    Reason::Reserved { port: 8080 },
                ],
                expected_tries: Some(1234.4),
            },
            advice: vec![
                Advice::Reserve { port: 40004 },
                Advice::MoveBelow { below: 39999 },
            ],
        }
    }

    fn reserved_40008() -> PortAudit {
        PortAudit {
            port: 40008,
            status: Status::Reserved,
            listeners: vec![],
            configured: true,
            host: "127.0.0.1".parse().unwrap(),
            when_down: Prediction {
                port: 40008,
                verdict: Verdict::Impossible,
                reasons: vec![Reason::Reserved { port: 40008 }],
                expected_tries: None,
            },
            advice: vec![Advice::KeepReserved { port: 40008 }],
        }
    }

    fn a_loop(port: u16, inode: u32) -> Socket {
        let a = format!("127.0.0.1:{port}");
        Socket {
            inode,
            ..Socket::fixture(TcpState::Established, &a, &a)
        }
    }

    fn audit(reserved: &str, ports: Vec<PortAudit>, loops: Vec<Socket>) -> Audit {
        let facts = EphemeralFacts::fixture(40000, 40009, reserved);
        let exposed = PortSet::from_ports(
            ports
                .iter()
                .filter(|p| p.status == Status::Exposed)
                .map(|p| p.port),
        );
        Audit {
            fix: Fix::new(&facts.reserved, &exposed),
            facts,
            ports,
            loops,
            shield: None,
        }
    }

    fn owner(pid: u32, comm: &str, fd: i32) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
            fd,
            container: None,
        }
    }

    /// python3 (pid 100, in container docker/web) holds inode 11,
    /// a process named `evil<ESC>[2J` (pid 101) inode 12, redis-cli
    /// (pid 102) the loop of inode 21; inode 22 has no owner found.
    fn owners() -> OwnerLookup {
        let mut found = Owners::default();
        found.insert(11, owner(100, "python3", 3));
        found.insert(12, owner(101, "evil\x1b[2J", 4));
        found.insert(21, owner(102, "redis-cli", 7));
        let mut containers = BTreeMap::new();
        containers.insert(
            100,
            Container {
                runtime: Runtime::Docker,
                id: "a".repeat(64),
                name: Some("web".into()),
                pod_uid: None,
                pod: None,
                namespace: None,
            },
        );
        OwnerLookup {
            found: Some(found),
            error: None,
            containers,
        }
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = vec![];
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn run_of(a: Audit, fixed: Option<Result<Fixed, FixError>>) -> AuditRun {
        AuditRun {
            audit: a,
            owners: owners(),
            fixed,
        }
    }

    #[test]
    fn a_port_line_names_its_listeners_owners_and_containers_escaped() {
        let t = text(|out| port_text(out, &owners(), &exposed_40004()));
        assert_eq!(
            t,
            "\n\
             EXPOSED  40004  listening on 0.0.0.0:40004 (python3 pid 100 fd 3, container docker/web), \
             [::]:40004 (evil\\x1b[2J pid 101 fd 4)\n\
             \x20 while it is down, a client connect() to 127.0.0.1:40004: possible, about 1,234 tries\n\
             \x20   - 127.0.0.1 is an address of this host (on lo\\x1b[2J): the kernel sends \
             from it, so source == destination\n\
             \x20   - 8080 is in ip_local_reserved_ports: the kernel never hands it out\n\
             \x20 remedies:\n\
             \x20   - reserve it: add 40004 to net.ipv4.ip_local_reserved_ports (the fix below); \
             the service can still bind it\n\
             \x20   - or move the service below the range (1024-39999 are outside it), or shrink \
             the range\n"
        );
        // a reserved port not listening: no tries, no remedies
        let t = text(|out| port_text(out, &owners(), &reserved_40008()));
        assert_eq!(
            t,
            "\n\
             reserved 40008  configured, not listening now\n\
             \x20 while it is down, a client connect() to 127.0.0.1:40008: impossible\n\
             \x20   - 40008 is in ip_local_reserved_ports: the kernel never hands it out\n"
        );
    }

    #[test]
    fn the_loops_section_names_each_loops_owner_or_says_it_is_unknown() {
        let a = audit("", vec![], vec![a_loop(40006, 21), a_loop(40002, 22)]);
        let t = text(|out| loops(out, Format::Human, &owners(), &a));
        assert_eq!(
            t,
            "\n\
             Loops present now: 2 (see `tcploop scan`, `tcploop kill`)\n\
             \x20 127.0.0.1:40006 <-> itself  ESTABLISHED  redis-cli pid 102 fd 7\n\
             \x20 127.0.0.1:40002 <-> itself  ESTABLISHED  owner unknown\n"
        );
        let none = audit("", vec![], vec![]);
        let t = text(|out| loops(out, Format::Human, &owners(), &none));
        assert_eq!(t, "\nLoops present now: none\n");
    }

    #[test]
    fn the_fix_section_keeps_the_reservation_and_says_how_to_apply_it() {
        let f = Fix::new(&set("8080"), &set("40004,40005"));
        let t = text(|out| fix(out, Format::Human, &f, false));
        assert_eq!(
            t,
            "\n\
             Fix: reserve 40004-40005 (every existing reservation kept):\n\
             \x20 sysctl -w net.ipv4.ip_local_reserved_ports=8080,40004-40005\n\
             \x20 `tcploop audit --apply` does it now (root); add --persist to also write \
             /etc/sysctl.d/60-tcploop.conf; --emit sysctl prints that file (--emit k8s, \
             --emit docker: for a pod, a container)\n"
        );
        // --apply is doing it: no advice on how
        let t = text(|out| fix(out, Format::Human, &f, true));
        assert!(t.ends_with("=8080,40004-40005\n"), "{t}");
        let done = Fix::new(&set("40004"), &set("40004"));
        let t = text(|out| fix(out, Format::Human, &done, false));
        assert_eq!(
            t,
            "\nFix: nothing to reserve; net.ipv4.ip_local_reserved_ports = 40004\n"
        );
        let empty = Fix::new(&PortSet::default(), &PortSet::default());
        let t = text(|out| fix(out, Format::Human, &empty, false));
        assert!(t.ends_with("= (none)\n"), "{t}");
    }

    fn fixed(persisted: Option<(PathBuf, Result<Persisted, ApplyError>)>) -> Fixed {
        Fixed {
            applied: Applied {
                before: set("8080"),
                after: set("8080,40004"),
                wrote: true,
                lock: Ok(PathBuf::from("/run/tcploop-reserved-ports.lock")),
            },
            persisted,
            after: audit(
                "8080,40004",
                vec![PortAudit {
                    status: Status::Reserved,
                    ..exposed_40004()
                }],
                vec![],
            ),
        }
    }

    #[test]
    fn an_applied_fix_says_what_it_wrote_where_it_persisted_and_the_ports_after() {
        let persisted = Persisted {
            written: true,
            value: set("8080,40004"),
            previous: None,
        };
        let f = fixed(Some((
            "/etc/sysctl.d/60-tcploop.conf".into(),
            Ok(persisted),
        )));
        let t = text(|out| applied(out, Format::Human, &f));
        assert_eq!(
            t,
            "\n\
             Applied: net.ipv4.ip_local_reserved_ports = 8080,40004 (was 8080; every reservation kept)\n\
             Persisted: /etc/sysctl.d/60-tcploop.conf (written, sets 8080,40004)\n\
             After the fix:\n"
        );
        // nothing to write, no lock, no file asked for
        let mut f = fixed(None);
        f.applied.wrote = false;
        f.applied.before = f.applied.after.clone();
        f.applied.lock = Err("/run/x.lock: Read-only file system".into());
        let t = text(|out| applied(out, Format::Human, &f));
        assert_eq!(
            t,
            "\n\
             Already applied: net.ipv4.ip_local_reserved_ports = 8080,40004 (nothing written)\n\
             note: applied without the lock (concurrent runs were not serialized): \
             /run/x.lock: Read-only file system\n"
        );
    }

    fn not_a_port_list(path: &str) -> ApplyError {
        ApplyError::FileValue {
            path: path.into(),
            line: 3,
            value: "x".into(),
        }
    }

    #[test]
    fn a_fix_applied_but_not_persisted_says_both_and_ends_before_the_summary() {
        let f = fixed(Some((
            "/etc/x.conf".into(),
            Err(not_a_port_list("/etc/x.conf")),
        )));
        let mut run = run_of(audit("8080", vec![exposed_40004()], vec![]), Some(Ok(f)));
        let t = text(|out| render(out, Format::Human, &run));
        let tail = t.split_once("\nApplied: ").unwrap().1;
        assert_eq!(
            tail.lines().take(4).collect::<Vec<_>>(),
            [
                "net.ipv4.ip_local_reserved_ports = 8080,40004 (was 8080; every reservation kept)",
                "NOT persisted: /etc/x.conf: line 3: net.ipv4.ip_local_reserved_ports = \"x\" is not a port list; the file is left untouched",
                "The fix is live now but will be lost at the next reboot.",
                "After the fix:",
            ]
        );
        // the ports after the fix (40004 reserved now), and no summary
        assert!(
            t.ends_with(
                "    - 8080 is in ip_local_reserved_ports: the kernel never hands it out\n"
            ),
            "{t}"
        );
        let j = text(|out| render(out, Format::Json, &run));
        let types: Vec<String> = j
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
            .collect();
        assert_eq!(
            types,
            [
                "\"port\"",
                "\"fix\"",
                "\"applied\"",
                "\"persist_failed\"",
                "\"port\""
            ]
        );
        assert!(j.contains(
            "{\"type\":\"applied\",\"data\":{\"value\":\"8080,40004\",\"previous\":\"8080\",\
             \"written\":true,\"lock\":\"/run/tcploop-reserved-ports.lock\",\"file\":\"/etc/x.conf\",\
             \"file_written\":false,\"file_value\":null}}\n"
        ));
        // the error said apart: applied, and not persisted
        let e = run.take_error().expect("an error").to_string();
        assert_eq!(
            e,
            "the fix was applied (net.ipv4.ip_local_reserved_ports = 8080,40004), but persisting it \
             to /etc/x.conf failed: /etc/x.conf: line 3: net.ipv4.ip_local_reserved_ports = \"x\" \
             is not a port list; the file is left untouched"
        );
        assert!(run.take_error().is_none(), "said once");
    }

    #[test]
    fn a_whole_audit_in_text_and_its_summary_notes() {
        let mut run = run_of(
            audit("", vec![exposed_40004()], vec![a_loop(40006, 22)]),
            None,
        );
        run.audit.shield = Some("bpf (tcx)".into());
        let t = text(|out| render(out, Format::Human, &run));
        assert!(
            t.starts_with(
                "Ephemeral range 40000-40009 (plain connect() uses even ports), reserved: (none)\n\nEXPOSED  40004"
            ),
            "{t}"
        );
        assert!(
            t.ends_with(
                "note: owners unknown for 1 socket(s) (held by a process of another PID namespace?)\n\
                 The shield is on (bpf (tcx)): clients of the exposed ports cannot loop (prevented).\n"
            ),
            "{t}"
        );
        run.owners = OwnerLookup {
            error: Some("reading /proc: EPERM\x07".into()),
            ..OwnerLookup::default()
        };
        run.audit.ports.clear();
        run.audit.shield = None;
        let t = text(|out| render(out, Format::Human, &run));
        assert!(t.contains("\nNo listener in the range.\n"), "{t}");
        assert!(
            t.ends_with("note: owners not looked up: reading /proc: EPERM\\x07\n"),
            "{t}"
        );
        let j = text(|out| render(out, Format::Json, &run));
        assert!(j.ends_with(
            "{\"type\":\"summary\",\"data\":{\"kernel\":\"6.18.44\",\"range\":\"40000-40009\",\
             \"reserved\":\"\",\"exposed\":0,\"loops\":1,\"owners_unknown\":1,\"processes_unreadable\":0}}\n"
        ), "{j}");
    }

    #[test]
    fn a_json_port_line_carries_owners_with_their_containers() {
        let mut out = vec![];
        port_json(&mut out, &owners(), &exposed_40004()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "port");
        let l = &v["data"]["listening"];
        assert_eq!(l[0]["owners"][0]["container"]["name"], "web");
        assert_eq!(l[1]["owners"][0]["command"], "evil\x1b[2J", "exact bytes");
        assert_eq!(v["data"]["when_down"]["expected_tries"], 1234.4);
        // reasons as sentences, the interface name's exact bytes
        assert_eq!(
            v["data"]["when_down"]["reasons"][1],
            "8080 is in ip_local_reserved_ports: the kernel never hands it out"
        );
        assert!(v["data"]["when_down"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("(on lo\x1b[2J)"));
    }

    #[test]
    fn advice_in_words() {
        use crate::ports::{Parity, PortRange};
        let words = |a: Advice| a.to_string();
        assert_eq!(
            words(Advice::OutsideRange {
                port: 39000,
                range: PortRange {
                    low: 40000,
                    high: 40009
                }
            }),
            "39000 is outside the ephemeral range 40000-40009: no client is ever given it as a \
             source port"
        );
        assert_eq!(
            words(Advice::KeepReserved { port: 40002 }),
            "40002 is in net.ipv4.ip_local_reserved_ports: the kernel never hands it out; keep \
             the reservation"
        );
        assert_eq!(
            words(Advice::OtherParity {
                preferred: Parity::Even,
                alt: Some(40003)
            }),
            "or move it to a port of the other parity (odd, e.g. 40003): plain connect() uses \
             even ports here and takes odd ones only when every even port is taken; clients that \
             bind(addr, 0) before connect() or set IP_LOCAL_PORT_RANGE (Linux 6.8+) can still \
             get it"
        );
        assert!(words(Advice::OtherParity {
            preferred: Parity::Odd,
            alt: None
        })
        .starts_with("or move it to a port of the other parity (even): plain connect() uses odd"));
        assert_eq!(
            words(Advice::UnpreferredParity {
                port: 40005,
                parity: Parity::Odd,
                preferred: Parity::Even
            }),
            "40005 is odd: plain connect() does not pick it while an even port is free, but \
             clients that bind(addr, 0) before connect() (they prefer odd ports) or set \
             IP_LOCAL_PORT_RANGE (Linux 6.8+) can: reserve it all the same"
        );
    }

    #[test]
    fn emit_prints_only_the_fix_in_the_form_asked() {
        let f = Fix::new(&PortSet::default(), &set("40004"));
        let t = text(|out| emit(out, Emit::Docker, &f));
        assert_eq!(t, "--sysctl net.ipv4.ip_local_reserved_ports=40004\n");
        let t = text(|out| emit(out, Emit::Sysctl, &f));
        assert!(t.ends_with("\nnet.ipv4.ip_local_reserved_ports = 40004\n"));
        let t = text(|out| emit(out, Emit::K8s, &f));
        assert!(t.ends_with("      value: \"40004\"\n"), "{t}");
    }
}
