//! `tcploop ports`'s output.
//!
//! JSON Lines: one line of type `ports`, data
//! `{"kernel": "6.18.44-fc-v657" (the release as `uname -r` prints it), "range": {"low": 32768, "high": 60999}, "reserved": "8080,9000-9010",
//!   "parity_split": true, "connect_parity": "even"|"odd"|null, "bind_parity": "odd"|"even"|null,
//!   "candidates": {"even": 14116, "odd": 14116}, "top_port_unused": null|60999,
//!   "listening_in_range": [{"port": 40000, "addrs": ["0.0.0.0:40000"]}], "advice": [string]}`.

use std::io::{self, Write};

use serde::Serialize;

use super::{escape, thousands, Format};
use crate::ports::Parity;
use crate::survey::PortsView;

#[derive(Debug, Serialize)]
struct Range {
    low: u16,
    high: u16,
}

#[derive(Debug, Serialize)]
struct Candidates {
    even: usize,
    odd: usize,
}

#[derive(Debug, Serialize)]
struct Listening {
    port: u16,
    addrs: Vec<String>,
}

/// The `ports` line.
#[derive(Debug, Serialize)]
struct PortsLine<'a> {
    kernel: &'a str,
    range: Range,
    reserved: String,
    parity_split: bool,
    connect_parity: Option<&'static str>,
    bind_parity: Option<&'static str>,
    candidates: Candidates,
    top_port_unused: Option<u16>,
    listening_in_range: Vec<Listening>,
    advice: Vec<String>,
}

/// What the facts mean for services, one sentence each.
pub fn advice(v: &PortsView) -> Vec<String> {
    let r = v.facts.range;
    let cp = v.connect_parity;
    let mut advice = vec![];
    if v.parity_split {
        advice.push(format!(
            "plain connect() uses {cp} source ports here: a client can loop into a closed {cp} port of {r}; \
             {} ports are safe from plain connect() unless every {cp} port is taken (bind(0) and \
             IP_LOCAL_PORT_RANGE clients use them, though)",
            cp.other()
        ));
    } else {
        advice.push(format!(
            "this kernel has no parity rule: a client can loop into any closed port of {r}"
        ));
    }
    advice.push(format!(
        "give services ports below {} or above {}, or list them in net.ipv4.ip_local_reserved_ports",
        r.low, r.high
    ));
    let listening = v.listening_in_range.as_deref().unwrap_or_default();
    if !listening.is_empty() {
        let ports: Vec<String> = listening.iter().map(|(p, _)| p.to_string()).collect();
        advice.push(format!(
            "{} listening port(s) lie in the range unreserved: {}; while such a service is down its clients \
             may loop and steal the port (see `tcploop audit`)",
            listening.len(),
            ports.join(", ")
        ));
    }
    if let Some(top) = v.top_port_unused {
        advice.push(format!(
            "the range has an odd number of ports, so connect() never uses its top port {top} \
             (the kernel warns: prefer different parity for start/end values)"
        ));
    }
    advice
}

/// Renders the view.
pub fn render(out: &mut dyn Write, format: Format, v: &PortsView) -> io::Result<()> {
    match format {
        Format::Json => json(out, v),
        Format::Human => human(out, v),
    }
}

fn json(out: &mut dyn Write, v: &PortsView) -> io::Result<()> {
    let f = &v.facts;
    let split = v.parity_split;
    let cp = v.connect_parity;
    super::json_line(
        out,
        "ports",
        &PortsLine {
            kernel: &f.release,
            range: Range {
                low: f.range.low,
                high: f.range.high,
            },
            reserved: f.reserved.to_string(),
            parity_split: split,
            connect_parity: split.then_some(cp.as_str()),
            bind_parity: split.then_some(cp.other().as_str()),
            candidates: Candidates {
                even: v.even,
                odd: v.odd,
            },
            top_port_unused: v.top_port_unused,
            listening_in_range: v
                .listening_in_range
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|(port, addrs)| Listening {
                    port: *port,
                    addrs: addrs.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
            advice: advice(v),
        },
    )
}

fn human(out: &mut dyn Write, v: &PortsView) -> io::Result<()> {
    let f = &v.facts;
    let r = f.range;
    let cp = v.connect_parity;
    let (even, odd) = (v.even, v.odd);
    writeln!(
        out,
        "Ephemeral ports of this network namespace (kernel {})",
        escape(&f.release)
    )?;
    writeln!(
        out,
        "  ip_local_port_range      {r} ({} ports)",
        thousands(u64::from(r.len()))
    )?;
    let reserved = if f.reserved.is_empty() {
        "(none)".to_string()
    } else {
        f.reserved.to_string()
    };
    writeln!(out, "  ip_local_reserved_ports  {reserved}")?;
    if v.parity_split {
        writeln!(
            out,
            "  connect() prefers        {cp} ports (the parity of {}; Linux 4.6+), {} of them usable;",
            r.low,
            thousands(if cp == Parity::Even { even } else { odd } as u64)
        )?;
        writeln!(
            out,
            "                           {} {} ports only when all {cp} ones are taken",
            thousands(if cp == Parity::Even { odd } else { even } as u64),
            cp.other()
        )?;
        writeln!(
            out,
            "  bind(0) prefers          {} ports (the opposite, to spare connect())",
            cp.other()
        )?;
    } else {
        writeln!(
            out,
            "  connect() parity         none (kernel before 4.6): {} candidates",
            even + odd
        )?;
    }
    match &v.listening_in_range {
        Ok(l) if l.is_empty() => writeln!(out, "  listening in the range   none")?,
        Ok(l) => {
            let items: Vec<String> = l
                .iter()
                .map(|(port, addrs)| {
                    let a: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    format!("{port} ({})", a.join(" "))
                })
                .collect();
            writeln!(out, "  listening in the range   {}", items.join(", "))?
        }
        Err(e) => writeln!(out, "  listening in the range   unknown ({})", escape(e))?,
    }
    writeln!(out, "Advice:")?;
    for a in advice(v) {
        writeln!(out, "  - {a}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{EphemeralFacts, KernelVersion, PortRange, PortSet};

    fn view() -> PortsView {
        PortsView {
            facts: EphemeralFacts {
                range: PortRange {
                    low: 40000,
                    high: 40010,
                },
                reserved: PortSet::parse("40004").unwrap(),
                release: "6.18.0".into(),
                kernel: KernelVersion::parse("6.18.0"),
            },
            parity_split: true,
            connect_parity: Parity::Even,
            even: 4,
            odd: 5,
            top_port_unused: Some(40010),
            listening_in_range: Ok(vec![(40002, vec!["0.0.0.0:40002".parse().unwrap()])]),
        }
    }

    #[test]
    fn human_output_of_ports() {
        let mut v = vec![];
        render(&mut v, Format::Human, &view()).unwrap();
        let text = String::from_utf8(v).unwrap();
        let want = "\
Ephemeral ports of this network namespace (kernel 6.18.0)
  ip_local_port_range      40000-40010 (11 ports)
  ip_local_reserved_ports  40004
  connect() prefers        even ports (the parity of 40000; Linux 4.6+), 4 of them usable;
                           5 odd ports only when all even ones are taken
  bind(0) prefers          odd ports (the opposite, to spare connect())
  listening in the range   40002 (0.0.0.0:40002)
Advice:
  - plain connect() uses even source ports here";
        assert!(text.starts_with(want), "{text}");
        assert!(text.contains("  - 1 listening port(s) lie in the range unreserved: 40002;"));
        assert!(text.contains("never uses its top port 40010"));
    }

    #[test]
    fn json_output_of_ports() {
        let mut v = vec![];
        render(&mut v, Format::Json, &view()).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(line["type"], "ports");
        let d = &line["data"];
        assert_eq!(d["range"], serde_json::json!({"low": 40000, "high": 40010}));
        assert_eq!(d["reserved"], "40004");
        assert_eq!(d["connect_parity"], "even");
        assert_eq!(d["bind_parity"], "odd");
        assert_eq!(d["candidates"], serde_json::json!({"even": 4, "odd": 5}));
        assert_eq!(
            d["listening_in_range"],
            serde_json::json!([{"port": 40002, "addrs": ["0.0.0.0:40002"]}])
        );
        assert_eq!(d["advice"].as_array().unwrap().len(), 4);
    }
}
