//! The rendering of `tcploop doctor`: text for people, or JSON Lines.
//!
//! JSON Lines, per network namespace looked at (the caller's first), in
//! this order:
//! - `holder`, one per holder of the port:
//!   `{"netns": 4026531840, "after_fix": false, "kind": "listener"|"self-connected"|
//!     "self-connected-time-wait"|"source-port"|"accepted"|"time-wait"|"bind-only",
//!     "local": "127.0.0.1:40004", "states": ["ESTABLISHED"], "sockets": 1,
//!     "conflicts": true, "bind": EFFECT, "bind_reuseaddr": EFFECT,
//!     "reuseport_group": false, "reuseaddr": false|true|null, "reuseport": false|true|null,
//!     "is_service": false,
//!     "owners": [{"pid": 31201, "command": "redis-cli", "fd": 3, "container": null|string}],
//!     "owners_unknown": 0,
//!     "peers": ["127.0.0.1:40004"], "peers_total": 1, "time_wait_left_ms": null}`,
//!   EFFECT being `"ok"`, `"eaddrinuse"`, `"eaddrinuse-unless-holder-reuseaddr"` or
//!   `"eaddrinuse-unless-reuseport"` (`peers` lists at most 10; `reuseaddr` and
//!   `reuseport`: the holder's own options, read from its process, null when
//!   unknown);
//! - `diagnosis`, one:
//!   `{"netns": 4026531840, "netns_label": "net:[4026531840] (the current one)",
//!     "after_fix": false, "port": 40004, "server": "0.0.0.0",
//!     "verdict": "free"|"stolen-by-loop"|"stolen-by-source-port"|"time-wait"|"listening"|"bind-held",
//!     "summary": string, "invisible_holder": false,
//!     "bind": "ok"|"eaddrinuse"|"error: ...", "bind_reuseaddr": same,
//!     "range": "32768-60999", "in_range": true, "reserved": false, "exposed": true,
//!     "shielded": null|"bpf (tcx)"|"iptables (rules)",
//!     "when_down": {"host": "127.0.0.1",
//!                   "verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown",
//!                   "reasons": [string], "expected_tries": number|null},
//!     "steps": [{"action": "reserve"|"kill-loops"|"start-server"|"wait"|"restart-holder"|"nothing",
//!                "text": string, "command": string|null, "automatic": bool}],
//!     "sockets_seen": 12, "processes_unreadable": 0}`;
//! - with `--fix`, `fix`:
//!   `{"netns": ..., "reserved": "40004"|null, "reserve_error": string|null,
//!     "killed": [{"local": "127.0.0.1:40004", "state": "ESTABLISHED",
//!                 "outcome": "destroyed"|"gone"|"not-a-loop"|"still-there"|"already-aborted"|"error: ..."}],
//!     "bind": "ok"|..., "bind_reuseaddr": "ok"|...}`,
//!   then the `holder` and `diagnosis` lines again, after the fix (`"after_fix": true`);
//! - `skipped`, one per namespace that could not be entered:
//!   `{"netns": 4026532000, "netns_label": string, "reason": string}`.
//!
//! Human text escapes every control character that comes from the system
//! (process names); JSON carries them exactly.

use std::io::{self, Write};
use std::net::SocketAddr;

use serde::Serialize;

use crate::doctor::{Diagnosis, FixReport, Outcome, Owned, ServicePort, Step, Todo};
use crate::holders::{Effect, Kind, Verdict};
use crate::owners::Owner;
use crate::report::{self, escape, json_line, Format};
use crate::scan::Killed;

#[derive(Debug, Serialize)]
struct OwnerWire<'a> {
    pid: u32,
    command: &'a str,
    fd: i32,
    container: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct HolderWire<'a> {
    netns: u64,
    after_fix: bool,
    kind: &'static str,
    local: String,
    states: Vec<&'static str>,
    sockets: usize,
    conflicts: bool,
    bind: &'static str,
    bind_reuseaddr: &'static str,
    reuseport_group: bool,
    reuseaddr: Option<bool>,
    reuseport: Option<bool>,
    is_service: bool,
    owners: Vec<OwnerWire<'a>>,
    owners_unknown: u64,
    peers: Vec<String>,
    peers_total: usize,
    time_wait_left_ms: Option<u32>,
}

#[derive(Debug, Serialize)]
struct WhenDownWire<'a> {
    host: String,
    verdict: &'static str,
    #[serde(serialize_with = "super::predict::serialize")]
    reasons: &'a [crate::predict::Reason],
    expected_tries: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StepWire<'a> {
    action: &'static str,
    text: String,
    command: Option<&'a str>,
    automatic: bool,
}

#[derive(Debug, Serialize)]
struct DiagnosisWire<'a> {
    netns: u64,
    netns_label: String,
    after_fix: bool,
    port: u16,
    server: String,
    verdict: &'static str,
    summary: String,
    invisible_holder: bool,
    bind: String,
    bind_reuseaddr: String,
    range: String,
    in_range: bool,
    reserved: bool,
    exposed: bool,
    shielded: Option<&'a str>,
    when_down: WhenDownWire<'a>,
    steps: Vec<StepWire<'a>>,
    sockets_seen: u64,
    processes_unreadable: u64,
}

#[derive(Debug, Serialize)]
struct KilledWire {
    local: String,
    state: &'static str,
    outcome: String,
}

#[derive(Debug, Serialize)]
struct FixWire {
    netns: u64,
    reserved: Option<String>,
    reserve_error: Option<String>,
    killed: Vec<KilledWire>,
    bind: String,
    bind_reuseaddr: String,
}

#[derive(Debug, Serialize)]
struct SkippedWire {
    netns: u64,
    netns_label: String,
    reason: String,
}

fn probe_word(r: &Result<bool, String>) -> String {
    match r {
        Ok(true) => "ok".into(),
        Ok(false) => "eaddrinuse".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn probe_text(r: &Result<bool, String>) -> String {
    match r {
        Ok(true) => "succeeds".into(),
        Ok(false) => "EADDRINUSE".into(),
        Err(e) => format!("fails ({e})"),
    }
}

fn killed_word(r: &Result<Killed, String>) -> String {
    match r {
        Ok(Killed::Destroyed { .. }) => "destroyed".into(),
        Ok(Killed::Gone) => "gone".into(),
        Ok(Killed::NotALoop) => "not-a-loop".into(),
        Ok(Killed::StillThere) => "still-there".into(),
        Ok(Killed::AlreadyAborted) => "already-aborted".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn states(h: &Owned) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = h.holder.sockets.iter().map(|s| s.state.name()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The one-sentence diagnosis (not escaped).
pub fn summary(d: &Diagnosis) -> String {
    let p = d.port;
    let first = |k: &[Kind]| d.conflicting().find(|h| k.contains(&h.holder.kind));
    match d.verdict {
        Verdict::Free => "nothing holds it: a server can bind it".to_string(),
        Verdict::Listening => match first(&[Kind::Listener]) {
            Some(h) if h.is_service => format!(
                "the service itself is already running: {} listens on {}",
                who(&h.owners),
                h.holder.local()
            ),
            Some(h) => format!(
                "{} listens on {}{}",
                who(&h.owners),
                h.holder.local(),
                if h.holder.reuseport_group() {
                    format!(
                        " ({} sockets, a SO_REUSEPORT group)",
                        h.holder.sockets.len()
                    )
                } else {
                    String::new()
                }
            ),
            None => format!("a listener holds port {p}"),
        },
        Verdict::StolenByLoop => match first(&[Kind::Loop]) {
            Some(h) => format!(
                "{} is connected to itself on {} (a TCP self-connect: it dialed the port while \
                 nothing listened, and the kernel gave it that very port as its source port)",
                who(&h.owners),
                h.holder.local()
            ),
            None => format!("a self-connected socket holds port {p}"),
        },
        Verdict::TimeWait => match first(&[Kind::LoopTimeWait]) {
            Some(h) => format!(
                "a self-connected socket on {} was closed and waits out TIME-WAIT ({} s more): \
                 it holds the port until then",
                h.holder.local(),
                h.holder.time_wait_left_ms().unwrap_or(0).div_ceil(1000)
            ),
            None => {
                let (n, left) = d
                    .conflicting()
                    .filter(|h| h.holder.kind == Kind::TimeWait)
                    .fold((0, 0), |(n, l), h| {
                        (
                            n + h.holder.sockets.len(),
                            l.max(h.holder.time_wait_left_ms().unwrap_or(0)),
                        )
                    });
                format!(
                    "{n} closed connection{} on port {p} wait{} out TIME-WAIT ({} s more at most)",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "s" } else { "" },
                    left.div_ceil(1000)
                )
            }
        },
        Verdict::StolenBySourcePort => {
            let hs: Vec<&Owned> = d
                .conflicting()
                .filter(|h| matches!(h.holder.kind, Kind::SourcePort | Kind::Accepted))
                .collect();
            let n: usize = hs.iter().map(|h| h.holder.sockets.len()).sum();
            let mut owners: Vec<Owner> = hs.iter().flat_map(|h| h.owners.clone()).collect();
            owners.sort_by_key(|o| o.pid);
            owners.dedup_by_key(|o| o.pid);
            let peers: Vec<SocketAddr> = hs.iter().flat_map(|h| h.holder.peers()).collect();
            let shown: Vec<String> = peers.iter().take(3).map(|a| a.to_string()).collect();
            format!(
                "{n} connection{} of {} use{} port {p} as {} source port (to {}{}): the kernel \
                 handed it out because it lies in the ephemeral range",
                if n == 1 { "" } else { "s" },
                who(&owners),
                if n == 1 { "s" } else { "" },
                if n == 1 { "its" } else { "their" },
                shown.join(", "),
                if peers.len() > 3 {
                    format!(" and {} more", peers.len() - 3)
                } else {
                    String::new()
                }
            )
        }
        Verdict::BindHeld => match first(&[Kind::BindOnly]) {
            Some(h) => format!(
                "{} has bound {} without listening or connecting",
                who(&h.owners),
                h.holder.local()
            ),
            None => format!(
                "a bind of port {p} is refused, yet the socket dump shows no holder (a socket that \
                 is only bound, on a kernel before 6.8)"
            ),
        },
    }
}

fn headline(v: Verdict, d: &Diagnosis) -> &'static str {
    match v {
        Verdict::Free => "FREE",
        Verdict::Listening if d.conflicting().any(|h| h.is_service) => "ALREADY RUNNING",
        Verdict::Listening => "IN USE BY A LISTENER",
        Verdict::StolenByLoop => "STOLEN BY A LOOP",
        Verdict::StolenBySourcePort => "STOLEN BY SOURCE PORT",
        Verdict::TimeWait => "HELD BY TIME-WAIT",
        Verdict::BindHeld => "HELD BY A BIND",
    }
}

fn effect_text(e: Effect) -> &'static str {
    match e {
        Effect::Ok => "no conflict",
        Effect::InUse => "EADDRINUSE",
        Effect::InUseUnlessHolderReuseaddr => "EADDRINUSE unless the holder set it too (unknown)",
        Effect::InUseUnlessReuseport => "EADDRINUSE unless the server joins with SO_REUSEPORT",
    }
}

/// Renders the whole outcome; in human text, first where the port came
/// from when `--service` gave it.
pub fn render(
    out: &mut dyn Write,
    format: Format,
    service: Option<(&str, &ServicePort)>,
    o: &Outcome,
) -> io::Result<()> {
    let json = format == Format::Json;
    if let (Some((name, sp)), false) = (service, json) {
        writeln!(
            out,
            "Service {}: port {} (from {})",
            escape(name),
            sp.port,
            escape(&sp.source)
        )?;
    }
    for ns in &o.namespaces {
        let many = o.namespaces.len() > 1 || !ns.before.netns.is_own();
        if json {
            diagnosis_json(out, &ns.before, false)?;
            if let Some(f) = &ns.fix {
                fix_json(out, ns.before.netns.inode, f)?;
            }
            if let Some(a) = &ns.after {
                diagnosis_json(out, a, true)?;
            }
        } else {
            if many {
                writeln!(out, "== {}", escape(&ns.before.netns.to_string()))?;
            }
            diagnosis_text(out, &ns.before, ns.fix.is_none())?;
            if let Some(f) = &ns.fix {
                fix_text(out, f, &ns.before)?;
            }
            if let Some(a) = &ns.after {
                writeln!(out)?;
                writeln!(
                    out,
                    "After the fix: port {} {}: {}.",
                    a.port,
                    headline(a.verdict, a),
                    escape(&summary(a))
                )?;
                if a.verdict != Verdict::Free {
                    steps_text(out, &a.steps, "What is left")?;
                }
            }
            if many {
                writeln!(out)?;
            }
        }
    }
    for s in &o.skipped {
        if json {
            json_line(
                out,
                "skipped",
                &SkippedWire {
                    netns: s.netns.inode,
                    netns_label: s.netns.to_string(),
                    reason: s.reason.clone(),
                },
            )?;
        } else {
            writeln!(
                out,
                "note: {} not looked at: {}",
                escape(&s.netns.to_string()),
                escape(&s.reason)
            )?;
        }
    }
    Ok(())
}

fn diagnosis_json(out: &mut dyn Write, d: &Diagnosis, after_fix: bool) -> io::Result<()> {
    for h in &d.holders {
        let peers = h.holder.peers();
        json_line(
            out,
            "holder",
            &HolderWire {
                netns: d.netns.inode,
                after_fix,
                kind: h.holder.kind.as_str(),
                local: report::addr(h.holder.local()),
                states: states(h),
                sockets: h.holder.sockets.len(),
                conflicts: h.holder.conflicts,
                bind: h.holder.bind.as_str(),
                bind_reuseaddr: h.holder.bind_reuseaddr.as_str(),
                reuseport_group: h.holder.reuseport_group(),
                reuseaddr: h.holder.reuseaddr,
                reuseport: h.holder.reuseport,
                is_service: h.is_service,
                owners: h
                    .owners
                    .iter()
                    .map(|o| OwnerWire {
                        pid: o.pid,
                        command: &o.comm,
                        fd: o.fd,
                        container: h.containers.get(&o.pid).map(String::as_str),
                    })
                    .collect(),
                owners_unknown: h.owners_unknown,
                peers_total: peers.len(),
                peers: peers.iter().take(10).map(|a| a.to_string()).collect(),
                time_wait_left_ms: h.holder.time_wait_left_ms(),
            },
        )?;
    }
    json_line(
        out,
        "diagnosis",
        &DiagnosisWire {
            netns: d.netns.inode,
            netns_label: d.netns.to_string(),
            after_fix,
            port: d.port,
            server: d.server.to_string(),
            verdict: d.verdict.as_str(),
            summary: summary(d),
            invisible_holder: d.invisible_holder,
            bind: probe_word(&d.probe.plain),
            bind_reuseaddr: probe_word(&d.probe.reuseaddr),
            range: d.facts.range.to_string(),
            in_range: d.standing.in_range,
            reserved: d.standing.reserved,
            exposed: d.standing.exposed(),
            shielded: d.standing.shielded.as_deref(),
            when_down: WhenDownWire {
                host: d.client_dest.to_string(),
                verdict: d.when_down.verdict.as_str(),
                reasons: &d.when_down.reasons,
                expected_tries: d.when_down.expected_tries,
            },
            steps: d
                .steps
                .iter()
                .map(|s| StepWire {
                    action: s.action.as_str(),
                    text: todo_text(&s.todo),
                    command: s.command.as_deref(),
                    automatic: s.action.automatic(),
                })
                .collect(),
            sockets_seen: d.sockets_seen,
            processes_unreadable: d.processes_unreadable,
        },
    )
}

fn fix_json(out: &mut dyn Write, netns: u64, f: &FixReport) -> io::Result<()> {
    json_line(
        out,
        "fix",
        &FixWire {
            netns,
            reserved: match &f.reserved {
                Some(Ok(v)) => Some(v.to_string()),
                _ => None,
            },
            reserve_error: match &f.reserved {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            },
            killed: f
                .killed
                .iter()
                .map(|(s, r)| KilledWire {
                    local: report::addr(s.local),
                    state: s.state.name(),
                    outcome: killed_word(r),
                })
                .collect(),
            bind: probe_word(&f.verify.plain),
            bind_reuseaddr: probe_word(&f.verify.reuseaddr),
        },
    )
}

fn owners_text(h: &Owned) -> String {
    if h.owners.is_empty() {
        return if h.holder.kind == Kind::LoopTimeWait || h.holder.kind == Kind::TimeWait {
            "no process (TIME-WAIT)".into()
        } else {
            "owner unknown".into()
        };
    }
    let v: Vec<String> = h
        .owners
        .iter()
        .take(5)
        .map(|o| match h.containers.get(&o.pid) {
            Some(c) => format!(
                "{} (pid {}, fd {}, {})",
                escape(&o.comm),
                o.pid,
                o.fd,
                escape(c)
            ),
            None => format!("{} (pid {}, fd {})", escape(&o.comm), o.pid, o.fd),
        })
        .collect();
    let more = h.owners.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", v.join(", "))
    } else {
        v.join(", ")
    }
}

fn holder_text(out: &mut dyn Write, h: &Owned) -> io::Result<()> {
    let hl = &h.holder;
    let what = match hl.kind {
        Kind::Listener if hl.reuseport_group() => {
            format!(
                "listener      {}  SO_REUSEPORT group of {}",
                hl.local(),
                hl.sockets.len()
            )
        }
        Kind::Listener if h.is_service => {
            format!("listener      {}  (the service itself)", hl.local())
        }
        Kind::Listener => format!("listener      {}", hl.local()),
        Kind::Loop => format!(
            "self-connect  {} <-> itself  {}",
            hl.local(),
            hl.sockets[0].state.name()
        ),
        Kind::LoopTimeWait => format!(
            "self-connect  {} <-> itself  TIME-WAIT, {} s left",
            hl.local(),
            hl.time_wait_left_ms().unwrap_or(0).div_ceil(1000)
        ),
        Kind::SourcePort | Kind::Accepted | Kind::TimeWait => {
            let peers = hl.peers();
            let shown: Vec<String> = peers.iter().take(3).map(|a| a.to_string()).collect();
            let label = match hl.kind {
                Kind::SourcePort => "source port ",
                Kind::Accepted => "accepted    ",
                _ => "time-wait   ",
            };
            format!(
                "{label}  {} connection{} from {} to {}{}",
                hl.sockets.len(),
                if hl.sockets.len() == 1 { "" } else { "s" },
                hl.local(),
                shown.join(", "),
                if peers.len() > 3 {
                    format!(" and {} more", peers.len() - 3)
                } else {
                    String::new()
                }
            )
        }
        Kind::BindOnly => format!(
            "bind-only     {}  {}",
            hl.local(),
            hl.sockets[0].state.name()
        ),
    };
    writeln!(out, "  {what}  {}", owners_text(h))?;
    if hl.conflicts {
        let why = match (hl.kind, hl.reuseaddr, hl.reuseport) {
            (Kind::Listener, _, Some(true)) => " (it set SO_REUSEPORT)",
            (Kind::Listener, _, _) => "",
            (_, Some(false), _) => " (the holder did not set SO_REUSEADDR)",
            (_, Some(true), _) => " (the holder set SO_REUSEADDR too)",
            _ => "",
        };
        writeln!(
            out,
            "      a server's bind: {}; with SO_REUSEADDR: {}{why}",
            effect_text(hl.bind),
            effect_text(hl.bind_reuseaddr)
        )?;
    } else {
        writeln!(
            out,
            "      another address: no conflict with this server's bind"
        )?;
    }
    Ok(())
}

fn steps_text(out: &mut dyn Write, steps: &[Step], title: &str) -> io::Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "{title}:")?;
    for (i, s) in steps.iter().enumerate() {
        let auto = if s.action.automatic() { " [--fix]" } else { "" };
        writeln!(out, "  {}. {}{auto}", i + 1, escape(&todo_text(&s.todo)))?;
        if let Some(c) = &s.command {
            writeln!(out, "       {c}")?;
        }
    }
    Ok(())
}

fn diagnosis_text(out: &mut dyn Write, d: &Diagnosis, offer_fix: bool) -> io::Result<()> {
    let addr = SocketAddr::new(d.server, d.port);
    writeln!(
        out,
        "Port {} {}: {}.",
        d.port,
        headline(d.verdict, d),
        escape(&summary(d))
    )?;
    writeln!(
        out,
        "A server's bind({addr}): {} without SO_REUSEADDR, {} with it.",
        probe_text(&d.probe.plain),
        probe_text(&d.probe.reuseaddr)
    )?;
    if !d.holders.is_empty() {
        writeln!(out)?;
        writeln!(out, "On port {}:", d.port)?;
        for h in &d.holders {
            holder_text(out, h)?;
        }
    }
    writeln!(out)?;
    let r = d.facts.range;
    let standing = if !d.standing.in_range {
        format!("outside the ephemeral range {r}: the kernel never hands it to a client")
    } else if d.standing.reserved {
        format!("in the ephemeral range {r}, reserved: the kernel never hands it to a client")
    } else {
        format!("in the ephemeral range {r} and not reserved: the kernel may hand it to a client")
    };
    writeln!(out, "Port {}: {standing}.", d.port)?;
    if let Some(how) = &d.standing.shielded {
        writeln!(
            out,
            "The shield is on in this namespace ({how}): a client's self-connect is turned away."
        )?;
    }
    let tries = d
        .when_down
        .expected_tries
        .map(|t| {
            format!(
                ", after about {} tries",
                report::thousands(t.round() as u64)
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "While the server is down, a client's connect() to {} can loop: {}{tries}.",
        SocketAddr::new(d.client_dest, d.port),
        match d.when_down.verdict {
            crate::predict::Verdict::Possible => "yes",
            crate::predict::Verdict::Impossible => "no",
            crate::predict::Verdict::Listening => "no (something else listens)",
            crate::predict::Verdict::Unknown => "unknown",
            crate::predict::Verdict::Prevented => "no (the shield turns it away)",
        },
    )?;
    if let Some(last) = d.when_down.reasons.last() {
        writeln!(out, "  ({last})")?;
    }
    let title = match d.verdict {
        Verdict::Free if d.steps.is_empty() => "",
        Verdict::Free => "To keep it free",
        Verdict::StolenByLoop | Verdict::TimeWait
            if d.loops().next().is_some() && d.standing.exposed() =>
        {
            "Fix, in this order (a client that retries loops again after a kill alone)"
        }
        Verdict::Listening | Verdict::BindHeld => "What to do",
        _ => "Fix, in this order",
    };
    if !title.is_empty() {
        steps_text(out, &d.steps, title)?;
    }
    if offer_fix && d.steps.iter().any(|s| s.action.automatic()) {
        let n: Vec<String> = d
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.action.automatic())
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        writeln!(
            out,
            "`tcploop doctor {} --fix` does step{} {} now (the reservation live only; --persist is \
             `tcploop audit`'s) and checks that a server can bind the port.",
            d.port,
            if n.len() == 1 { "" } else { "s" },
            n.join(" and ")
        )?;
    }
    let unknown: u64 = d.conflicting().map(|h| h.owners_unknown).sum();
    if unknown > 0 && d.processes_unreadable > 0 {
        writeln!(
            out,
            "note: owners unknown for {unknown} socket(s): {} process(es) could not be read (run as root)",
            d.processes_unreadable
        )?;
    }
    Ok(())
}

fn fix_text(out: &mut dyn Write, f: &FixReport, d: &Diagnosis) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "Fixing:")?;
    let mut did = false;
    match &f.reserved {
        Some(Ok(v)) => {
            did = true;
            writeln!(
                out,
                "  reserved {}: net.ipv4.ip_local_reserved_ports = {v} (live; `tcploop audit --ports {} \
                 --apply --persist` keeps it across reboots)",
                d.port, d.port
            )?;
        }
        Some(Err(e)) => {
            did = true;
            writeln!(out, "  reserving {} failed: {}", d.port, escape(e))?;
        }
        None => {}
    }
    for (s, r) in &f.killed {
        did = true;
        writeln!(
            out,
            "  {} <-> itself ({}): {}",
            s.local,
            s.state.name(),
            escape(&killed_word(r))
        )?;
    }
    if !did {
        writeln!(
            out,
            "  nothing tcploop may do here (it never touches a listener, a bind-only socket or an \
             ordinary connection)"
        )?;
    }
    let addr = SocketAddr::new(d.server, d.port);
    writeln!(
        out,
        "  check: bind({addr}) {} without SO_REUSEADDR, {} with it (released at once)",
        probe_text(&f.verify.plain),
        probe_text(&f.verify.reuseaddr)
    )?;
    Ok(())
}

/// `redis-cli (pid 31201)`, `redis-cli (pid 31201), python3 (pid 7)`, or
/// `a process tcploop could not identify` (not escaped: callers escape).
pub fn who(owners: &[Owner]) -> String {
    if owners.is_empty() {
        return "a process tcploop could not identify".into();
    }
    let v: Vec<String> = owners
        .iter()
        .take(3)
        .map(|o| format!("{} (pid {})", o.comm, o.pid))
        .collect();
    let more = owners.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more", v.join(", "))
    } else {
        v.join(", ")
    }
}

fn addrs(a: &[SocketAddr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A step of the fix in words (not escaped: process names inside; the
/// text renderer escapes, JSON carries the exact bytes).
pub fn todo_text(t: &Todo) -> String {
    match t {
        Todo::Reserve { port } => format!(
            "reserve {port} (net.ipv4.ip_local_reserved_ports), so that the kernel never hands \
             it to a client again; the server can still bind it"
        ),
        Todo::StartServer { addr } => format!("start (or restart) the server on {addr}"),
        Todo::ReuseaddrBindsNow { addr } => format!(
            "a server that sets SO_REUSEADDR (redis, nginx and most servers do) can bind {addr} \
             now, as the check shows; one that does not must wait for the steps below"
        ),
        Todo::ServiceRunning { owners, addrs: a } => format!(
            "the service is already running: {} listens on {}; stop it first if you meant to \
             start another copy",
            who(owners),
            addrs(a)
        ),
        Todo::ReuseportGroup {
            owners,
            local,
            sockets,
        } => format!(
            "{} listen on {local} as a SO_REUSEPORT group of {sockets} sockets: a server of the \
             same user that sets SO_REUSEPORT would join the group and share its connections; \
             any other gets EADDRINUSE. tcploop cannot help: stop that program, or run the \
             server on another port (`tcploop free-port`)",
            who(owners)
        ),
        Todo::OtherListener { owners, addrs: a } => format!(
            "{} listens on {}: tcploop cannot help; stop that program, or run the server on \
             another port (`tcploop free-port`)",
            who(owners),
            addrs(a)
        ),
        Todo::DestroyLoops {
            port,
            count,
            exposed,
        } => format!(
            "destroy the self-connected socket{} on {port} (SOCK_DESTROY; its owner gets \
             ECONNABORTED){}",
            plural(*count),
            if *exposed {
                ""
            } else {
                " (the port is already out of the kernel's hands: a client that bound it \
                 explicitly can loop again)"
            }
        ),
        Todo::DestroyTimeWait { port, secs } => format!(
            "destroy the TIME-WAIT socket a closed loop left on {port} (SOCK_DESTROY), or wait \
             {secs} s more until it ends by itself"
        ),
        Todo::WaitTimeWait { port, count, secs } => format!(
            "wait for the {count} connection{} on {port} to end (TIME-WAIT: {secs} s more at \
             most)",
            plural(*count)
        ),
        Todo::WaitOrRestart {
            port,
            count,
            clients,
        } => format!(
            "wait for the {count} connection{} on {port} to end, or restart {} (tcploop never \
             destroys ordinary connections)",
            plural(*count),
            who(clients)
        ),
        Todo::InvisibleBind { port } => format!(
            "a socket the kernel's dump does not show holds {port} (a socket that is only \
             bound, on a kernel before 6.8): find it with `ss -tanp` or `lsof -i :{port}`"
        ),
        Todo::BoundOnly { owners, local } => format!(
            "{} has bound {local} without listening or connecting: only it can release the \
             port (restart or stop it); tcploop cannot help",
            who(owners)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{diagnosis, owner, sock};
    use crate::doctor::NsOutcome;
    use crate::model::TcpState;

    /// A loop owned by a process that renamed itself to clear the screen
    /// and start a line of its own: the text shows the name escaped, the
    /// JSON exactly.
    #[test]
    fn a_hostile_process_name_is_escaped_in_text_and_exact_in_json() {
        let name = "\x1b[2J\x1b[31mX\nY";
        let d = diagnosis(
            &[sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                9,
            )],
            "",
            false,
            &[(9, owner(31201, name, 3))],
        );
        let o = Outcome {
            namespaces: vec![NsOutcome {
                before: d,
                fix: None,
                after: None,
            }],
            skipped: vec![],
        };
        let mut text = vec![];
        render(&mut text, Format::Human, None, &o).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("\\x1b[2J\\x1b[31mX\\nY (pid 31201"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with('Y')), "{text}");
        let mut json = vec![];
        render(&mut json, Format::Json, None, &o).unwrap();
        let first: serde_json::Value =
            serde_json::from_slice(json.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["data"]["owners"][0]["command"], name);
    }

    #[test]
    fn the_service_line_comes_first_in_text_only() {
        let sp = ServicePort {
            port: 6379,
            addr: None,
            source: "/etc/services".into(),
        };
        let o = Outcome {
            namespaces: vec![],
            skipped: vec![],
        };
        let mut text = vec![];
        render(&mut text, Format::Human, Some(("redis", &sp)), &o).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "Service redis: port 6379 (from /etc/services)\n"
        );
        let mut json = vec![];
        render(&mut json, Format::Json, Some(("redis", &sp)), &o).unwrap();
        assert!(json.is_empty());
    }

    #[test]
    fn steps_in_words_name_the_processes_and_the_counts() {
        let o = |pid, comm: &str| Owner {
            pid,
            comm: comm.into(),
            fd: 3,
            container: None,
        };
        assert_eq!(
            todo_text(&Todo::WaitOrRestart {
                port: 40004,
                count: 2,
                clients: vec![o(7, "sidecar")]
            }),
            "wait for the 2 connections on 40004 to end, or restart sidecar (pid 7) (tcploop \
             never destroys ordinary connections)"
        );
        assert_eq!(
            todo_text(&Todo::DestroyLoops {
                port: 40004,
                count: 1,
                exposed: false
            }),
            "destroy the self-connected socket on 40004 (SOCK_DESTROY; its owner gets \
             ECONNABORTED) (the port is already out of the kernel's hands: a client that bound \
             it explicitly can loop again)"
        );
        assert_eq!(
            todo_text(&Todo::OtherListener {
                owners: (1..=5).map(|p| o(p, "w")).collect(),
                addrs: vec!["0.0.0.0:80".parse().unwrap(), "[::]:80".parse().unwrap()]
            }),
            "w (pid 1), w (pid 2), w (pid 3) and 2 more listens on 0.0.0.0:80, [::]:80: tcploop \
             cannot help; stop that program, or run the server on another port (`tcploop \
             free-port`)"
        );
        assert_eq!(
            todo_text(&Todo::BoundOnly {
                owners: vec![],
                local: "127.0.0.1:40004".parse().unwrap()
            }),
            "a process tcploop could not identify has bound 127.0.0.1:40004 without listening \
             or connecting: only it can release the port (restart or stop it); tcploop cannot \
             help"
        );
    }
}
