//! `tcploop free-port`'s output.
//!
//! Text output: one port a line, so that `PORT=$(tcploop free-port)` works.
//!
//! JSON Lines: one line of type `free_port` a port, data
//! `{"port": 23817, "host": "127.0.0.1", "why": "below_range"|"above_range"|"reserved"}`,
//! then one of type `summary`, data
//! `{"count": 1, "host": "127.0.0.1", "range": {"low": 32768, "high": 60999},
//!   "reserved": "8080,9000-9010", "candidates": 36280, "in_use": 0, "unbindable": 0,
//!   "dump_error": null|string}`.

use std::io::{self, Write};

use serde::Serialize;

use super::{escape, Format};
use crate::freeport::Found;

#[derive(Debug, Serialize)]
struct PortLine {
    port: u16,
    host: String,
    why: &'static str,
}

#[derive(Debug, Serialize)]
struct Range {
    low: u16,
    high: u16,
}

#[derive(Debug, Serialize)]
struct Summary {
    count: usize,
    host: String,
    range: Range,
    reserved: String,
    candidates: usize,
    in_use: u32,
    unbindable: u32,
    dump_error: Option<String>,
}

/// The warning (to stderr) that the socket dump failed, if it did.
pub fn warning(err: &mut dyn Write, found: &Found) -> io::Result<()> {
    match &found.dump_error {
        Some(e) => writeln!(
            err,
            "tcploop: warning: the socket dump failed ({}); ports were checked by binding only",
            escape(&e.to_string())
        ),
        None => Ok(()),
    }
}

/// The ports, one a line, or `free_port` lines and a `summary`.
pub fn render(out: &mut dyn Write, format: Format, found: &Found) -> io::Result<()> {
    if format == Format::Human {
        for p in &found.ports {
            writeln!(out, "{}", p.port)?;
        }
        return Ok(());
    }
    let host = found.host.to_string();
    for p in &found.ports {
        super::json_line(
            out,
            "free_port",
            &PortLine {
                port: p.port,
                host: host.clone(),
                why: p.why.as_str(),
            },
        )?;
    }
    super::json_line(
        out,
        "summary",
        &Summary {
            count: found.ports.len(),
            host,
            range: Range {
                low: found.range.low,
                high: found.range.high,
            },
            reserved: found.reserved.to_string(),
            candidates: found.candidates,
            in_use: found.in_use,
            unbindable: found.unbindable,
            dump_error: found.dump_error.as_ref().map(|e| e.to_string()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeport::{FreePort, Why};
    use crate::ports::{PortRange, PortSet};

    fn found() -> Found {
        Found {
            ports: vec![
                FreePort {
                    port: 23817,
                    why: Why::BelowRange,
                },
                FreePort {
                    port: 40004,
                    why: Why::Reserved,
                },
            ],
            host: [127, 0, 0, 1].into(),
            range: PortRange {
                low: 32768,
                high: 60999,
            },
            reserved: PortSet::parse("40004").unwrap(),
            candidates: 36280,
            in_use: 1,
            unbindable: 0,
            dump_error: None,
        }
    }

    #[test]
    fn human_output_is_one_port_a_line() {
        let mut v = vec![];
        render(&mut v, Format::Human, &found()).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), "23817\n40004\n");
        let mut w = vec![];
        warning(&mut w, &found()).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn json_output_is_a_line_a_port_then_a_summary() {
        let mut v = vec![];
        render(&mut v, Format::Json, &found()).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(v)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[1],
            serde_json::json!({"type": "free_port", "data":
                {"port": 40004, "host": "127.0.0.1", "why": "reserved"}})
        );
        assert_eq!(
            lines[2],
            serde_json::json!({"type": "summary", "data": {"count": 2, "host": "127.0.0.1",
                "range": {"low": 32768, "high": 60999}, "reserved": "40004",
                "candidates": 36280, "in_use": 1, "unbindable": 0, "dump_error": null}})
        );
    }
}
