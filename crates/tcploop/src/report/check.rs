//! `tcploop check`'s output (and the `check` line that `connect` writes
//! first).
//!
//! JSON Lines: one line of type `check` per port, data
//! `{"host": "127.0.0.1", "port": 40004,
//!   "verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown"|"stolen",
//!   "reasons": [string], "expected_tries": number|null,
//!   "holders": [{"kind": "self-connected"|"self-connected-time-wait"|"source-port",
//!                "local": "127.0.0.1:40004", "sockets": 1,
//!                "owners": [{"pid": 31201, "command": "redis-cli", "fd": 3}], "peers": [string]}],
//!   "when_down": null|{"verdict": "possible"|..., "reasons": [string], "expected_tries": number|null}}`.
//!
//! `stolen` is the state *now*: self-connected sockets, or connections that
//! use the port as their source port, hold it, and a server's bind of
//! host:port fails (checked with a real bind, released at once). `holders`
//! names them; `when_down` is the prediction for a client while the service
//! is down and those holders are gone, kept apart. For the other verdicts
//! `holders` is empty and `when_down` null (always so in `connect`'s line).

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{escape, thousands, Format};
use crate::doctor::Theft;
use crate::holders::Kind;
use crate::host::{Host, Resolved};
use crate::predict::Prediction;
use crate::survey::PortCheck;

/// One `check` line.
#[derive(Debug, Serialize)]
pub struct CheckLine<'a> {
    pub host: String,
    pub port: u16,
    pub verdict: &'a str,
    pub reasons: Vec<String>,
    pub expected_tries: Option<f64>,
    pub holders: Vec<HolderOut>,
    pub when_down: Option<WhenDownOut<'a>>,
}

/// A holder of a stolen port.
#[derive(Debug, Serialize)]
pub struct HolderOut {
    pub kind: &'static str,
    pub local: String,
    pub sockets: usize,
    pub owners: Vec<OwnerOut>,
    pub peers: Vec<String>,
}

/// One process holding a socket.
#[derive(Debug, Serialize)]
pub struct OwnerOut {
    pub pid: u32,
    pub command: String,
    pub fd: i32,
}

/// The prediction while the service is down.
#[derive(Debug, Serialize)]
pub struct WhenDownOut<'a> {
    pub verdict: &'a str,
    pub reasons: Vec<String>,
    pub expected_tries: Option<f64>,
}

/// Says which address a name resolved to, when there was a choice (human
/// output only; the name as given is escaped).
pub fn resolution(
    out: &mut dyn Write,
    format: Format,
    given: &str,
    r: &Resolved,
) -> io::Result<()> {
    if format == Format::Json {
        return Ok(());
    }
    let given = escape(given);
    if r.all.len() > 1 {
        let others: Vec<String> = r.all[1..].iter().map(|a| a.to_string()).collect();
        writeln!(
            out,
            "{given} resolves to {} addresses; using {} (also: {})",
            r.all.len(),
            r.addr,
            others.join(", ")
        )?;
    } else if given.parse::<IpAddr>().is_err() && !given.starts_with('[') {
        writeln!(out, "{given} is {}", r.addr)?;
    }
    Ok(())
}

/// The warning that the socket dump failed (human output only).
pub fn inventory_gap(out: &mut dyn Write, format: Format, error: &str) -> io::Result<()> {
    match format {
        Format::Json => Ok(()),
        Format::Human => writeln!(
            out,
            "warning: {}: listeners and bound ports are unknown",
            escape(error)
        ),
    }
}

/// One port's answer: `127.0.0.1:40004  possible  about 5 tries` and its
/// reasons (a stolen port: its holders, a server's bind, and the verdict
/// while the service is down), or a `check` line.
pub fn port(out: &mut dyn Write, format: Format, host: &Host, c: &PortCheck) -> io::Result<()> {
    let p = &c.prediction;
    let hostport = super::addr(SocketAddr::new(host.effective, p.port));
    let Some(t) = &c.theft else {
        return prediction(out, format, host, p);
    };
    let reasons = stolen_reasons(t, &hostport, p.port);
    match format {
        Format::Json => super::json_line(
            out,
            "check",
            &CheckLine {
                host: host.addr.to_string(),
                port: p.port,
                verdict: "stolen",
                reasons,
                expected_tries: None,
                holders: holders(t),
                when_down: Some(WhenDownOut {
                    verdict: t.when_down.verdict.as_str(),
                    reasons: super::predict::texts(&t.when_down.reasons),
                    expected_tries: t.when_down.expected_tries,
                }),
            },
        ),
        Format::Human => {
            writeln!(out, "{hostport}  stolen")?;
            for r in &reasons {
                writeln!(out, "  - {}", escape(r))?;
            }
            writeln!(
                out,
                "  while the service is down (these holders gone): {}{}",
                t.when_down.verdict,
                tries(t.when_down.expected_tries)
            )?;
            for r in &t.when_down.reasons {
                writeln!(out, "    - {}", escape(&r.to_string()))?;
            }
            Ok(())
        }
    }
}

fn tries(t: Option<f64>) -> String {
    t.map(|t| format!("  about {} tries", thousands(t.round() as u64)))
        .unwrap_or_default()
}

fn holders(t: &Theft) -> Vec<HolderOut> {
    t.holders
        .iter()
        .map(|h| HolderOut {
            kind: h.holder.kind.as_str(),
            local: super::addr(h.holder.local()),
            sockets: h.holder.sockets.len(),
            owners: h
                .owners
                .iter()
                .map(|o| OwnerOut {
                    pid: o.pid,
                    command: o.comm.clone(),
                    fd: o.fd,
                })
                .collect(),
            peers: h
                .holder
                .peers()
                .iter()
                .take(10)
                .map(|a| a.to_string())
                .collect(),
        })
        .collect()
}

/// The reasons of a `stolen` verdict: who holds the port, and what a
/// server's bind says (not escaped: the text renderer escapes).
fn stolen_reasons(t: &Theft, hostport: &str, port: u16) -> Vec<String> {
    let mut v = vec![];
    for h in &t.holders {
        let who = super::doctor::who(&h.owners);
        let n = h.holder.sockets.len();
        v.push(match h.holder.kind {
            Kind::Loop => format!(
                "held now by a self-connected socket {} of {who}: the port is stolen",
                h.holder.local()
            ),
            Kind::LoopTimeWait => format!(
                "held now by a closed loop in TIME-WAIT on {} ({} s more)",
                h.holder.local(),
                h.holder.time_wait_left_ms().unwrap_or(0).div_ceil(1000)
            ),
            _ => format!(
                "held now by {n} connection{} of {who} using {port} as {} source port (to {})",
                if n == 1 { "" } else { "s" },
                if n == 1 { "its" } else { "their" },
                h.holder
                    .peers()
                    .iter()
                    .take(3)
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let with = match t.probe.reuseaddr {
        Ok(true) => "a server that sets SO_REUSEADDR can bind it all the same",
        Ok(false) => "with SO_REUSEADDR too",
        Err(_) => "with SO_REUSEADDR: could not check",
    };
    v.push(format!(
        "a server binding {hostport} gets EADDRINUSE now ({with}); `tcploop doctor {port}` gives the fix"
    ));
    v
}

/// One port's prediction: `127.0.0.1:40004  possible  about 5 tries` and
/// its reasons, or a `check` line (no holders, `when_down` null).
pub fn prediction(
    out: &mut dyn Write,
    format: Format,
    host: &Host,
    p: &Prediction,
) -> io::Result<()> {
    match format {
        Format::Json => super::json_line(
            out,
            "check",
            &CheckLine {
                host: host.addr.to_string(),
                port: p.port,
                verdict: p.verdict.as_str(),
                reasons: super::predict::texts(&p.reasons),
                expected_tries: p.expected_tries,
                holders: vec![],
                when_down: None,
            },
        ),
        Format::Human => {
            let hostport = super::addr(SocketAddr::new(host.effective, p.port));
            writeln!(out, "{hostport}  {}{}", p.verdict, tries(p.expected_tries))?;
            reasons(out, p)
        }
    }
}

/// The reasons of a prediction, one `  - ` line each.
pub fn reasons(out: &mut dyn Write, p: &Prediction) -> io::Result<()> {
    for r in &p.reasons {
        writeln!(out, "  - {}", escape(&r.to_string()))?;
    }
    Ok(())
}

/// Everything `tcploop check` prints.
pub fn render(
    out: &mut dyn Write,
    format: Format,
    given: &str,
    resolved: &Resolved,
    checked: &crate::survey::Checked,
) -> io::Result<()> {
    resolution(out, format, given, resolved)?;
    if let Some(e) = &checked.inventory_error {
        inventory_gap(out, format, e)?;
    }
    for c in &checked.ports {
        port(out, format, &checked.host, c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostClass;
    use crate::predict::{Reason, Verdict};
    use crate::survey::Checked;

    fn loopback() -> Host {
        Host {
            addr: IpAddr::from([127, 0, 0, 1]),
            effective: IpAddr::from([127, 0, 0, 1]),
            class: HostClass::Local { iface: "lo".into() },
        }
    }

    fn checked() -> Checked {
        Checked {
            host: loopback(),
            inventory_error: Some("dump refused\x1b[2J".into()),
            ports: vec![
                PortCheck {
                    prediction: Prediction {
                        port: 40004,
                        verdict: Verdict::Possible,
                        reasons: vec![Reason::Rate { usable: 12345 }],
                        expected_tries: Some(12345.4),
                    },
                    theft: None,
                },
                PortCheck {
                    prediction: Prediction {
                        port: 33333,
                        verdict: Verdict::Impossible,
                        reasons: vec![
                            Reason::LocalAddress {
                                addr: IpAddr::from([127, 0, 0, 1]),
                                iface: "lo\x1b[2J".into(),
                            },
                            Reason::Reserved { port: 33333 },
                        ],
                        expected_tries: None,
                    },
                    theft: None,
                },
            ],
        }
    }

    fn render_to_string(format: Format, given: &str, r: &Resolved) -> String {
        let mut v = vec![];
        render(&mut v, format, given, r, &checked()).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn human_output_of_check() {
        let r = Resolved {
            addr: IpAddr::from([127, 0, 0, 1]),
            scope_id: 0,
            all: vec![IpAddr::from([127, 0, 0, 1])],
        };
        assert_eq!(
            render_to_string(Format::Human, "127.0.0.1", &r),
            "warning: dump refused\\x1b[2J: listeners and bound ports are unknown\n\
             127.0.0.1:40004  possible  about 12,345 tries\n  \
             - 12,345 usable candidates of that parity: each try hits with probability about \
             1/12,345, so about 12,345 tries on average\n\
             127.0.0.1:33333  impossible\n  \
             - 127.0.0.1 is an address of this host (on lo\\x1b[2J): the kernel sends from it, \
             so source == destination\n  \
             - 33333 is in ip_local_reserved_ports: the kernel never hands it out\n"
        );
    }

    #[test]
    fn human_output_names_the_resolution_and_escapes_the_name() {
        let r = Resolved {
            addr: IpAddr::from([127, 0, 0, 1]),
            scope_id: 0,
            all: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 1, 1])],
        };
        let text = render_to_string(Format::Human, "evil\x1b]0;x\x07", &r);
        assert!(
            text.starts_with(
                "evil\\x1b]0;x\\x07 resolves to 2 addresses; using 127.0.0.1 (also: 127.0.1.1)\n"
            ),
            "{text}"
        );
        let one = Resolved {
            all: vec![IpAddr::from([127, 0, 0, 1])],
            ..r
        };
        let text = render_to_string(Format::Human, "localhost", &one);
        assert!(text.starts_with("localhost is 127.0.0.1\n"), "{text}");
    }

    #[test]
    fn json_output_of_check_is_one_line_a_port_and_nothing_else() {
        let r = Resolved {
            addr: IpAddr::from([127, 0, 0, 1]),
            scope_id: 0,
            all: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 1, 1])],
        };
        let text = render_to_string(Format::Json, "localhost", &r);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            serde_json::json!({"type": "check", "data": {
                "host": "127.0.0.1", "port": 40004, "verdict": "possible",
                "reasons": ["12,345 usable candidates of that parity: each try hits with \
                    probability about 1/12,345, so about 12,345 tries on average"],
                "expected_tries": 12345.4,
                "holders": [], "when_down": null}})
        );
        assert_eq!(lines[1]["data"]["expected_tries"], serde_json::Value::Null);
    }
}
