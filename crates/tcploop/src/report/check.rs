//! `tcploop check`'s output (and the `check` line that `connect` writes
//! first).
//!
//! JSON Lines: one line of type `check` per port, data
//! `{"host": "127.0.0.1", "port": 40004, "verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown",
//!   "reasons": [string], "expected_tries": number|null}`.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{escape, thousands, Format};
use crate::host::{Host, Resolved};
use crate::predict::Prediction;

/// One `check` line.
#[derive(Debug, Serialize)]
pub struct CheckLine<'a> {
    pub host: String,
    pub port: u16,
    pub verdict: &'a str,
    pub reasons: &'a [String],
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

/// One port's prediction: `127.0.0.1:40004  possible  about 5 tries` and
/// its reasons, or a `check` line.
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
                reasons: &p.reasons,
                expected_tries: p.expected_tries,
            },
        ),
        Format::Human => {
            let tries = p
                .expected_tries
                .map(|t| format!("  about {} tries", thousands(t.round() as u64)))
                .unwrap_or_default();
            let hostport = super::addr(SocketAddr::new(host.effective, p.port));
            writeln!(out, "{hostport}  {}{tries}", p.verdict)?;
            reasons(out, p)
        }
    }
}

/// The reasons of a prediction, one `  - ` line each.
pub fn reasons(out: &mut dyn Write, p: &Prediction) -> io::Result<()> {
    for r in &p.reasons {
        writeln!(out, "  - {r}")?;
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
    for p in &checked.predictions {
        prediction(out, format, &checked.host, p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostClass;
    use crate::predict::Verdict;
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
            predictions: vec![
                Prediction {
                    port: 40004,
                    verdict: Verdict::Possible,
                    reasons: vec!["40004 is in the range".into()],
                    expected_tries: Some(12345.4),
                },
                Prediction {
                    port: 33333,
                    verdict: Verdict::Impossible,
                    reasons: vec!["33333 is odd".into(), "connect() picks even".into()],
                    expected_tries: None,
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
             - 40004 is in the range\n\
             127.0.0.1:33333  impossible\n  \
             - 33333 is odd\n  \
             - connect() picks even\n"
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
                "reasons": ["40004 is in the range"], "expected_tries": 12345.4}})
        );
        assert_eq!(lines[1]["data"]["expected_tries"], serde_json::Value::Null);
    }
}
