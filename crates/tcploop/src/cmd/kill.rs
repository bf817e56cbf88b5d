//! `tcploop kill`: destroys the loops that `tcploop scan` finds, with
//! `SOCK_DESTROY` (what `ss -K` does), so that their ports are free at once.
//! A dry run unless `--yes`.
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

use std::io::Write;

use serde::Serialize;
use tcploop::model::TcpState;
use tcploop::report;
use tcploop::scan::{self, KillError, Killed, PortState};

use super::scan::SourceArg;
use crate::exit::Exit;
use tcploop::report::scan::{loop_line, notes, owner_text, SocketWire};

const AFTER_HELP: &str = "\
Each loop is looked up again by its exact 4-tuple and socket cookie right
before it is destroyed, so a socket that is not a loop is never touched.
Its owner gets ECONNABORTED. Afterwards the socket must be gone and the port
bindable; a port the owner had bound explicitly stays held until the owner
closes the socket.

Destroying needs CAP_NET_ADMIN over the network namespace (root, or root of
the user namespace that owns it); without it: an error and exit code 2
(unlike `ss -K`, which exits 0).

A loop on a port inside the ephemeral range that is not reserved comes back
when its client reconnects: reserve the port first (tcploop audit --ports P
--apply), then kill.

Exit codes: dry run: 0 no loop, 1 loops to destroy. --yes: 0 every loop
destroyed (or already gone), 1 some survived, 2 error (e.g. no permission).

Examples:
  tcploop kill                     list what would be destroyed
  sudo tcploop kill --yes
  sudo tcploop kill --port 40004 --yes --json";

/// Arguments of `tcploop kill`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Destroy them (without it: a dry run that lists them)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only loops on this port
    #[arg(long, value_name = "PORT", value_parser = super::parse_port)]
    pub port: Option<u16>,
    /// Loops of every network namespace of the host (root)
    #[arg(long)]
    pub all_netns: bool,
    /// Where to read the socket table (destroying always uses netlink)
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
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

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let opts = super::scan::options(args.port, args.source, args.all_netns);
    let r = scan::scan(&opts)?;
    let mut sum = SummaryWire {
        dry_run: !args.yes,
        loops_found: r.loops.len(),
        ..SummaryWire::default()
    };
    let mut error: Option<KillError> = None;
    for l in &r.loops {
        let who = if l.owners.is_empty() {
            String::new()
        } else {
            let v: Vec<String> = l.owners.iter().map(owner_text).collect();
            format!(" ({})", v.join(", "))
        };
        if !args.yes {
            let aborted = l.socket.state == TcpState::Close;
            if args.json {
                let action = if aborted {
                    "already-aborted"
                } else {
                    "would-destroy"
                };
                line(out, l, action, None, None)?;
            } else if aborted {
                writeln!(
                    out,
                    "already aborted {}{who}: only closing it frees the port",
                    loop_line(l)
                )?;
            } else {
                writeln!(out, "would destroy  {}{who}", loop_line(l))?;
            }
            continue;
        }
        let outcome = match scan::kill(l) {
            Ok(k) => k,
            Err(e) => {
                if !args.json {
                    writeln!(out, "{}{who}\n    not destroyed: {e}", loop_line(l))?;
                }
                error = Some(e);
                break;
            }
        };
        let (action, port) = match &outcome {
            Killed::Destroyed { port, .. } => {
                sum.destroyed += 1;
                match port {
                    PortState::Free => sum.ports_free += 1,
                    PortState::Unknown(_) => sum.ports_unchecked += 1,
                    _ => sum.ports_held += 1,
                }
                ("destroyed", Some(port))
            }
            Killed::Gone => {
                sum.gone += 1;
                ("gone", None)
            }
            Killed::NotALoop => {
                sum.not_a_loop += 1;
                ("not-a-loop", None)
            }
            Killed::StillThere => {
                sum.still_there += 1;
                ("still-there", None)
            }
            Killed::AlreadyAborted => {
                sum.already_aborted += 1;
                ("already-aborted", None)
            }
        };
        let loops_again = match &outcome {
            Killed::Destroyed { loops_again, .. } => *loops_again,
            _ => None,
        };
        if args.json {
            line(out, l, action, port, loops_again)?;
        } else {
            let what = match (&outcome, port) {
                (Killed::Destroyed { .. }, Some(p)) => {
                    let mut w = format!("destroyed: gone; {}", port_words(p, l).1);
                    if loops_again == Some(true) {
                        w.push_str(&format!("\n    {}", again_words(l.port())));
                    }
                    w
                }
                (Killed::Gone, _) => "already gone before the destroy (closed meanwhile)".into(),
                (Killed::NotALoop, _) => {
                    "left alone: the socket at that address is no longer this loop".into()
                }
                (Killed::AlreadyAborted, _) => format!(
                    "already aborted, nothing to destroy: port {} is held until {} closes the socket",
                    l.port(),
                    l.owners
                        .first()
                        .map(owner_text)
                        .unwrap_or_else(|| "its owner".into())
                ),
                _ => "destroyed, yet still in the socket table".into(),
            };
            writeln!(out, "{}{who}\n    {what}", loop_line(l))?;
        }
    }
    sum.error = error.as_ref().map(|e| e.to_string());
    if args.json {
        report::json_line(out, "summary", &sum)?;
    } else {
        let n = r.loops.len();
        let s = if n == 1 { "" } else { "s" };
        if n == 0 {
            writeln!(
                out,
                "No self-connected socket{} among {} TCP sockets: nothing to destroy.",
                args.port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
                report::thousands(r.sockets_seen)
            )?;
        } else if !args.yes {
            writeln!(
                out,
                "{n} loop{s} would be destroyed; run again with --yes to destroy {}.",
                if n == 1 { "it" } else { "them" }
            )?;
        } else if error.is_none() {
            writeln!(out, "{}", summary_text(&sum))?;
        }
        notes(&r, out)?;
    }
    if let Some(e) = error {
        return Err(anyhow::Error::new(e).context(format!(
            "destroyed {} of {} loop(s)",
            sum.destroyed,
            r.loops.len()
        )));
    }
    Ok(match (args.yes, r.loops.is_empty()) {
        (_, true) => Exit::Ok,
        (false, false) => Exit::Found,
        (true, false) if sum.still_there + sum.not_a_loop + sum.already_aborted > 0 => Exit::Found,
        (true, false) => Exit::Ok,
    })
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
    action: &'static str,
    port: Option<&PortState>,
    loops_again: Option<bool>,
) -> std::io::Result<()> {
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
            socket: l.into(),
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
