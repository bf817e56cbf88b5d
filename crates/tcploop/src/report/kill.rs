//! `tcploop kill`'s output: the `kill` and `summary` lines and the human
//! text, over a [`KillRun`].
//!
//! JSON Lines (`--json`):
//! - one line of type `kill` per loop, data: the `socket` data of
//!   `tcploop scan` plus
//!   `{"action": "would-destroy"|"destroyed"|"gone"|"not-a-loop"|"still-there"|"already-aborted",
//!     "port_state": "free"|"held-until-owner-closes"|"held-by-others"|"unknown"|null,
//!     "port_detail": string|null, "loops_again": bool|null}` (`loops_again`: after a destroy,
//!   whether a client that reconnects can loop on the port again, as it is in the ephemeral
//!   range and not reserved; null when not destroyed or unknown);
//! - a final line of type `summary`, data
//!   `{"dry_run": true, "loops_found": 2, "destroyed": 0, "gone": 0, "not_a_loop": 0,
//!     "still_there": 0, "already_aborted": 0, "ports_free": 0, "ports_held": 0, "ports_unchecked": 0,
//!     "error": null|"SOCK_DESTROY was refused (EPERM): ..."}` (of the destroyed loops' ports:
//!   bindable again, still held, or not checked).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::scan::{loop_line, notes, owner_text, SocketWire};
use super::Format;
use crate::container::Container;
use crate::report;
use crate::scan::{self, KillError, KillOutcome, KillRun, Killed, PortState};

/// Renders a kill run; `port` is the `--port` asked for, if any.
pub fn render(
    out: &mut dyn Write,
    format: Format,
    run: &KillRun,
    port: Option<u16>,
) -> io::Result<()> {
    let sum = summary(run);
    for (l, o) in run.scan.loops.iter().zip(&run.outcomes) {
        match format {
            Format::Json => json_loop(out, l, o, &run.scan.containers)?,
            Format::Human => human_loop(out, l, o, run.error.as_ref())?,
        }
    }
    if format == Format::Json {
        return report::json_line(out, "summary", &sum);
    }
    let r = &run.scan;
    let n = r.loops.len();
    let s = if n == 1 { "" } else { "s" };
    if n == 0 {
        writeln!(
            out,
            "No self-connected socket{} among {} TCP sockets: nothing to destroy.",
            port.map(|p| format!(" on port {p}")).unwrap_or_default(),
            report::thousands(r.sockets_seen)
        )?;
    } else if run.dry_run {
        writeln!(
            out,
            "{n} loop{s} would be destroyed; run again with --yes to destroy {}.",
            if n == 1 { "it" } else { "them" }
        )?;
    } else if run.error.as_ref().is_none() {
        writeln!(out, "{}", summary_text(&sum))?;
    }
    notes(r, out)
}

fn summary(run: &KillRun) -> SummaryWire {
    let t = run.tally();
    SummaryWire {
        dry_run: run.dry_run,
        loops_found: run.scan.loops.len(),
        destroyed: t.destroyed,
        gone: t.gone,
        not_a_loop: t.not_a_loop,
        still_there: t.still_there,
        already_aborted: t.already_aborted,
        ports_free: t.ports_free,
        ports_held: t.ports_held,
        ports_unchecked: t.ports_unchecked,
        error: run.error.as_ref().map(|e| e.to_string()),
    }
}

fn json_loop(
    out: &mut dyn Write,
    l: &scan::Loop,
    o: &KillOutcome,
    containers: &BTreeMap<u32, Container>,
) -> io::Result<()> {
    match o {
        KillOutcome::DryRun { already_aborted } => {
            let action = if *already_aborted {
                "already-aborted"
            } else {
                "would-destroy"
            };
            line(out, l, containers, action, None, None)
        }
        KillOutcome::Failed => Ok(()),
        KillOutcome::Done(k) => {
            let (action, port, loops_again) = match k {
                Killed::Destroyed { port, loops_again } => ("destroyed", Some(port), *loops_again),
                Killed::Gone => ("gone", None, None),
                Killed::NotALoop => ("not-a-loop", None, None),
                Killed::StillThere => ("still-there", None, None),
                Killed::AlreadyAborted => ("already-aborted", None, None),
            };
            line(out, l, containers, action, port, loops_again)
        }
    }
}

fn human_loop(
    out: &mut dyn Write,
    l: &scan::Loop,
    o: &KillOutcome,
    error: Option<&KillError>,
) -> io::Result<()> {
    let who = if l.owners.is_empty() {
        String::new()
    } else {
        let v: Vec<String> = l.owners.iter().map(owner_text).collect();
        format!(" ({})", v.join(", "))
    };
    let k = match o {
        KillOutcome::DryRun {
            already_aborted: true,
        } => {
            return writeln!(
                out,
                "already aborted {}{who}: only closing it frees the port",
                loop_line(l)
            )
        }
        KillOutcome::DryRun { .. } => return writeln!(out, "would destroy  {}{who}", loop_line(l)),
        KillOutcome::Failed => {
            let e = error.map(|e| e.to_string()).unwrap_or_default();
            return writeln!(out, "{}{who}\n    not destroyed: {e}", loop_line(l));
        }
        KillOutcome::Done(k) => k,
    };
    let what = match k {
        Killed::Destroyed { port, loops_again } => {
            let mut w = format!("destroyed: gone; {}", port_words(port, l).1);
            if *loops_again == Some(true) {
                w.push_str(&format!("\n    {}", again_words(l.port())));
            }
            w
        }
        Killed::Gone => "already gone before the destroy (closed meanwhile)".into(),
        Killed::NotALoop => "left alone: the socket at that address is no longer this loop".into(),
        Killed::AlreadyAborted => format!(
            "already aborted, nothing to destroy: port {} is held until {} closes the socket",
            l.port(),
            l.owners
                .first()
                .map(owner_text)
                .unwrap_or_else(|| "its owner".into())
        ),
        Killed::StillThere => "destroyed, yet still in the socket table".into(),
    };
    writeln!(out, "{}{who}\n    {what}", loop_line(l))
}

#[derive(Debug, Serialize)]
struct KillWire {
    #[serde(flatten)]
    socket: SocketWire,
    action: &'static str,
    port_state: Option<&'static str>,
    port_detail: Option<String>,
    loops_again: Option<bool>,
}

#[derive(Debug, Serialize, Default)]
struct SummaryWire {
    dry_run: bool,
    loops_found: usize,
    destroyed: u64,
    gone: u64,
    not_a_loop: u64,
    still_there: u64,
    already_aborted: u64,
    ports_free: u64,
    ports_held: u64,
    ports_unchecked: u64,
    error: Option<String>,
}

fn port_words(p: &PortState, l: &scan::Loop) -> (&'static str, String) {
    let port = l.port();
    match p {
        PortState::Free => ("free", format!("port {port} can be bound again")),
        PortState::HeldUntilOwnerCloses => {
            let who = l
                .owners
                .first()
                .map(owner_text)
                .unwrap_or_else(|| "its owner".into());
            (
                "held-until-owner-closes",
                format!(
                    "port {port} stays held until {who} closes the socket: it had bound the port \
                     explicitly (it now gets ECONNABORTED)"
                ),
            )
        }
        PortState::HeldByOthers(n) => (
            "held-by-others",
            format!("port {port} is still in use by {n} other socket(s)"),
        ),
        PortState::Unknown(e) => ("unknown", format!("port {port}: could not check ({e})")),
    }
}

/// What to do about a loop that comes back when its client reconnects.
fn again_words(port: u16) -> String {
    format!(
        "a client that reconnects will loop again: port {port} is in the ephemeral range and \
         not reserved. Reserve it first, then kill: tcploop audit --ports {port} --apply; \
         tcploop kill --port {port} --yes"
    )
}

/// The closing line of `kill --yes`: a port is called free only if it was
/// checked.
fn summary_text(sum: &SummaryWire) -> String {
    let n = sum.loops_found;
    let s = if n == 1 { "" } else { "s" };
    let mut t = format!(
        "{} of {n} loop{s} destroyed, {} already gone",
        sum.destroyed, sum.gone
    );
    if sum.destroyed > 0 {
        let mut parts = vec![format!("{} free again", sum.ports_free)];
        if sum.ports_held > 0 {
            parts.push(format!("{} still held", sum.ports_held));
        }
        if sum.ports_unchecked > 0 {
            parts.push(format!("{} not checked", sum.ports_unchecked));
        }
        t.push_str(&format!("; ports: {}", parts.join(", ")));
    }
    t.push('.');
    t
}

fn line(
    out: &mut dyn Write,
    l: &scan::Loop,
    containers: &BTreeMap<u32, Container>,
    action: &'static str,
    port: Option<&PortState>,
    loops_again: Option<bool>,
) -> io::Result<()> {
    let (state, detail) = match port {
        Some(p) => {
            let (s, d) = port_words(p, l);
            (Some(s), Some(d))
        }
        None => (None, None),
    };
    report::json_line(
        out,
        "kill",
        &KillWire {
            socket: SocketWire::from(l).with_containers(containers),
            action,
            port_state: state,
            port_detail: detail,
            loops_again,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Socket, TcpState};
    use crate::scan::{NetnsLabel, ScanReport, SourceUsed};

    fn run(outcomes: Vec<KillOutcome>, dry_run: bool) -> KillRun {
        let mut socket =
            Socket::fixture(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:40004");
        socket.inode = 77;
        socket.cookie = [0, 0];
        let netns = NetnsLabel {
            inode: 1,
            pid: None,
            comm: None,
            name: None,
            path: None,
        };
        KillRun {
            scan: ScanReport {
                loops: vec![scan::Loop {
                    socket,
                    owners: vec![crate::model::Owner {
                        pid: 5,
                        comm: "py\x1bthon".into(),
                        fd: 3,
                        container: None,
                    }],
                    netns: netns.clone(),
                }],
                sockets_seen: 12,
                owners_unknown: 0,
                processes_unreadable: 0,
                owner_lookup: None,
                owners_source: None,
                owners_fallback: None,
                source: SourceUsed::Proc,
                fallback: None,
                namespaces: vec![netns],
                skipped: vec![],
                netns_unreadable_pids: 0,
                netns_vanished: 0,
                containers: BTreeMap::new(),
                unshielded: vec![],
            },
            dry_run,
            outcomes,
            error: None,
        }
    }

    fn text(format: Format, r: &KillRun) -> String {
        let mut out = vec![];
        render(&mut out, format, r, None).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_dry_run_lists_what_would_be_destroyed() {
        let r = run(
            vec![KillOutcome::DryRun {
                already_aborted: false,
            }],
            true,
        );
        assert_eq!(
            text(Format::Human, &r),
            "would destroy  ESTABLISHED 127.0.0.1:40004 -> 127.0.0.1:40004  uid 0  inode 77 \
             (py\\x1bthon (pid 5, fd 3))\n\
             1 loop would be destroyed; run again with --yes to destroy it.\n"
        );
        let j = text(Format::Json, &r);
        let lines: Vec<serde_json::Value> = j
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "kill");
        assert_eq!(lines[0]["data"]["action"], "would-destroy");
        assert_eq!(lines[0]["data"]["port_state"], serde_json::Value::Null);
        assert_eq!(lines[1]["data"]["dry_run"], true);
        assert_eq!(lines[1]["data"]["loops_found"], 1);
    }

    #[test]
    fn a_destroyed_loop_says_whether_its_port_is_free_and_can_loop_again() {
        let r = run(
            vec![KillOutcome::Done(Killed::Destroyed {
                port: PortState::Free,
                loops_again: Some(true),
            })],
            false,
        );
        let t = text(Format::Human, &r);
        assert!(
            t.contains("\n    destroyed: gone; port 40004 can be bound again\n"),
            "{t}"
        );
        assert!(t.contains("tcploop audit --ports 40004 --apply"), "{t}");
        assert!(
            t.ends_with("1 of 1 loop destroyed, 0 already gone; ports: 1 free again.\n"),
            "{t}"
        );
        let j = text(Format::Json, &r);
        let lines: Vec<serde_json::Value> = j
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["data"]["action"], "destroyed");
        assert_eq!(lines[0]["data"]["port_state"], "free");
        assert_eq!(lines[0]["data"]["loops_again"], true);
        assert_eq!(lines[1]["data"]["destroyed"], 1);
        assert_eq!(lines[1]["data"]["ports_free"], 1);
    }

    #[test]
    fn the_summary_never_calls_an_unchecked_port_free() {
        let sum = SummaryWire {
            loops_found: 2,
            destroyed: 2,
            ports_free: 1,
            ports_unchecked: 1,
            ..SummaryWire::default()
        };
        assert_eq!(
            summary_text(&sum),
            "2 of 2 loops destroyed, 0 already gone; ports: 1 free again, 1 not checked."
        );
        let sum = SummaryWire {
            loops_found: 1,
            gone: 1,
            ..SummaryWire::default()
        };
        assert_eq!(summary_text(&sum), "0 of 1 loop destroyed, 1 already gone.");
    }
}
