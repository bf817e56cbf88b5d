//! Rendering `tcploop trace`: one line a loop, in the manner of bcc's
//! `tcpstates` and `tcplife`, or JSON Lines.
//!
//! JSON Lines (`--json`), `{"type", "data"}`:
//! - `loop`: `{"time": "2026-12-01T00:12:01.123456Z", "ts_ns": 123, "pid": 4242, "tid": 4242,
//!   "command": "python3", "owner_from": "event"|"socket-inode"|"unconfirmed",
//!   "address": "127.0.0.1:40004", "port": 40004, "netns": 4026531840, "cookie": 77,
//!   "inode": 9999, "cgroup_id": 1}`; `ts_ns` is CLOCK_MONOTONIC at the state change;
//! - `loop-end`: the loop's fields (its `pid` and `command` are the loop's maker), plus
//!   `"lived_us": 42.0` and `"state"`: where the socket went (`CLOSE` after an RST or a
//!   destroy, `FIN-WAIT-1` after a graceful close), with `time`/`ts_ns` of the end;
//! - `lost`: `{"time", "loops": 12, "ends": 0}`: events dropped because the ring buffer was
//!   full (counted before any filter, so they may belong to other namespaces or ports);
//! - `kill` (`--kill`): `{"time", "cookie", "address", "result": "destroyed"|"gone"|
//!   "not-a-loop"|"still-there"|"already-aborted"|"failed", "error": string|null}`;
//! - `summary` (last): `{"loops", "ends", "lost_loops", "lost_ends", "killed", "kill_failed",
//!   "elapsed_s", "stopped_by": "count"|"duration"|"signal"|"command", "command_status": n|null}`.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::Serialize;

use crate::report::{self, escape, json_line, Format};
use crate::scan::Killed;
use crate::trace::{LoopEnded, LoopSeen, OwnerFrom, Stop, Summary, TraceEvent};

/// The line printed to stderr once the program is attached.
pub fn started(err: &mut dyn Write, netns: Option<u32>, kill: bool) -> io::Result<()> {
    let scope = match netns {
        Some(n) => format!("network namespace net:[{n}]"),
        None => "every network namespace".to_string(),
    };
    writeln!(
        err,
        "tcploop trace: tracing loops in {scope} (Ctrl-C to stop)"
    )?;
    if kill {
        writeln!(
            err,
            "tcploop trace: --kill destroys each loop as soon as it is seen; this is a race the \
             client can still win (it may read its own bytes first): `tcploop shield` prevents \
             loops instead"
        )?;
    }
    Ok(())
}

/// The column header of the text output.
pub fn header(out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<15} {:>7} {:<16} {:<22} {:<11} EVENT",
        "TIME(UTC)", "PID", "COMM", "ADDRESS", "NETNS"
    )?;
    out.flush()
}

#[derive(Debug, Serialize)]
struct LoopOut<'a> {
    time: String,
    ts_ns: u64,
    pid: u32,
    tid: u32,
    command: &'a str,
    owner_from: &'static str,
    address: String,
    port: u16,
    netns: u32,
    cookie: u64,
    inode: u64,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lived_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct LostOut {
    time: String,
    loops: u64,
    ends: u64,
}

#[derive(Debug, Serialize)]
struct KillOut {
    time: String,
    cookie: u64,
    address: String,
    result: &'static str,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SummaryOut {
    loops: u64,
    ends: u64,
    lost_loops: u64,
    lost_ends: u64,
    killed: u64,
    kill_failed: u64,
    elapsed_s: f64,
    stopped_by: &'static str,
    command_status: Option<u8>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// `00:12:01.123456`: the time of day (UTC) with microseconds.
fn clock(t: SystemTime) -> String {
    let s = rfc3339(t);
    // 2026-12-01T00:12:01.123456Z
    s.get(11..26).unwrap_or(&s).to_string()
}

fn owner_from(o: OwnerFrom) -> &'static str {
    match o {
        OwnerFrom::Event => "event",
        OwnerFrom::SocketInode => "socket-inode",
        OwnerFrom::Unconfirmed => "unconfirmed",
    }
}

fn loop_out(s: &LoopSeen, time: SystemTime, ts_ns: u64) -> LoopOut<'_> {
    LoopOut {
        time: rfc3339(time),
        ts_ns,
        pid: s.pid,
        tid: s.tid,
        command: &s.command,
        owner_from: owner_from(s.owner_from),
        address: report::addr(s.addr),
        port: s.addr.port(),
        netns: s.netns,
        cookie: s.cookie,
        inode: s.inode,
        cgroup_id: s.cgroup_id,
        lived_us: None,
        state: None,
    }
}

fn kill_result(k: &Result<Killed, crate::scan::KillError>) -> (&'static str, Option<String>) {
    match k {
        Ok(Killed::Destroyed { .. }) => ("destroyed", None),
        Ok(Killed::Gone) => ("gone", None),
        Ok(Killed::NotALoop) => ("not-a-loop", None),
        Ok(Killed::StillThere) => ("still-there", None),
        Ok(Killed::AlreadyAborted) => ("already-aborted", None),
        Err(e) => ("failed", Some(e.to_string())),
    }
}

/// Renders one event: once attached, the `started` lines on `err` (and
/// the column header in text); `kill`: `--kill` was given.
pub fn event(
    out: &mut dyn Write,
    err: &mut dyn Write,
    format: Format,
    kill: bool,
    e: &TraceEvent,
) -> io::Result<()> {
    let now = SystemTime::now();
    let json = format == Format::Json;
    match e {
        TraceEvent::Attached { netns } => {
            started(err, *netns, kill)?;
            if !json {
                header(out)?;
            }
        }
        TraceEvent::Loop(s) => {
            if json {
                json_line(out, "loop", &loop_out(s, s.time, s.monotonic_ns))?;
            } else {
                let who = match s.owner_from {
                    OwnerFrom::Event | OwnerFrom::SocketInode => "",
                    OwnerFrom::Unconfirmed => " (owner unconfirmed)",
                };
                writeln!(
                    out,
                    "{:<15} {:>7} {:<16} {:<22} {:<11} loop{who}",
                    clock(s.time),
                    s.pid,
                    escape(&s.command),
                    report::addr(s.addr),
                    s.netns
                )?;
            }
        }
        TraceEvent::End(end) => end_line(out, json, end)?,
        TraceEvent::Lost { loops, ends } => {
            if json {
                json_line(
                    out,
                    "lost",
                    &LostOut {
                        time: rfc3339(now),
                        loops: *loops,
                        ends: *ends,
                    },
                )?;
            } else {
                writeln!(
                    out,
                    "{:<15} {:>7} {:<16} {:<22} {:<11} lost {} and {} (ring buffer full)",
                    clock(now),
                    "-",
                    "-",
                    "-",
                    "-",
                    report::count(*loops, "loop event", "loop events"),
                    report::count(*ends, "end event", "end events"),
                )?;
            }
        }
        TraceEvent::Kill(k) => {
            let (result, error) = kill_result(&k.outcome);
            if json {
                json_line(
                    out,
                    "kill",
                    &KillOut {
                        time: rfc3339(now),
                        cookie: k.cookie,
                        address: report::addr(k.addr),
                        result,
                        error,
                    },
                )?;
            } else {
                let what = match (result, error) {
                    ("destroyed", _) => "killed (SOCK_DESTROY)".to_string(),
                    ("gone", _) => "kill: already gone (the client closed it first)".to_string(),
                    (r, Some(e)) => format!("kill {r}: {e}"),
                    (r, None) => format!("kill: {r}"),
                };
                writeln!(
                    out,
                    "{:<15} {:>7} {:<16} {:<22} {:<11} {what}",
                    clock(now),
                    "-",
                    "-",
                    report::addr(k.addr),
                    "-"
                )?;
            }
        }
    }
    out.flush()
}

fn end_line(out: &mut dyn Write, json: bool, end: &LoopEnded) -> io::Result<()> {
    let s = &end.seen;
    if json {
        let mut o = loop_out(s, end.time, end.monotonic_ns);
        o.lived_us = Some((end.lived.as_nanos() as f64 / 100.0).round() / 10.0);
        o.state = Some(end.new_state.name());
        json_line(out, "loop-end", &o)
    } else {
        writeln!(
            out,
            "{:<15} {:>7} {:<16} {:<22} {:<11} end after {} ({})",
            clock(end.time),
            s.pid,
            escape(&s.command),
            report::addr(s.addr),
            s.netns,
            report::duration(end.lived),
            end.new_state.name()
        )
    }
}

fn stopped_by(s: Stop) -> &'static str {
    match s {
        Stop::Count => "count",
        Stop::Duration => "duration",
        Stop::Signal(_) => "signal",
        Stop::CommandExited => "command",
    }
}

/// Renders the summary (JSON: the last line; text: one line).
pub fn summary(out: &mut dyn Write, format: Format, s: &Summary) -> io::Result<()> {
    if format == Format::Json {
        json_line(
            out,
            "summary",
            &SummaryOut {
                loops: s.loops,
                ends: s.ends,
                lost_loops: s.lost_loops,
                lost_ends: s.lost_ends,
                killed: s.killed,
                kill_failed: s.kill_failed,
                elapsed_s: (s.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                stopped_by: stopped_by(s.stop),
                command_status: s.command_status,
            },
        )?;
    } else {
        let mut line = format!(
            "{} in {}, {} ended",
            report::count(s.loops, "loop", "loops"),
            report::duration(s.elapsed),
            report::thousands(s.ends)
        );
        if s.lost_loops + s.lost_ends > 0 {
            line.push_str(&format!(
                ", {} lost (ring buffer full)",
                report::count(s.lost_loops + s.lost_ends, "event", "events")
            ));
        }
        if s.killed + s.kill_failed > 0 {
            line.push_str(&format!(
                ", {} killed, {} not",
                report::thousands(s.killed),
                report::thousands(s.kill_failed)
            ));
        }
        if let Some(c) = s.command_status {
            line.push_str(&format!("; the command exited with {c}"));
        }
        writeln!(out, "{line}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TcpState;
    use std::time::Duration;

    fn seen() -> LoopSeen {
        LoopSeen {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_547_921_123_456),
            monotonic_ns: 5,
            pid: 4242,
            tid: 4243,
            command: "evil\x1b[2J".into(),
            owner_from: OwnerFrom::Event,
            addr: "127.0.0.1:40004".parse().unwrap(),
            netns: 4026531840,
            cookie: 77,
            inode: 9999,
            cgroup_id: 1,
        }
    }

    #[test]
    fn a_text_line_escapes_the_command() {
        let mut out = vec![];
        event(
            &mut out,
            &mut io::sink(),
            Format::Human,
            false,
            &TraceEvent::Loop(seen()),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("00:12:01.123456"), "{text}");
        assert!(text.contains("evil\\x1b[2J"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(text.trim_end().ends_with("loop"), "{text}");
    }

    #[test]
    fn json_lines_have_the_documented_fields() {
        let mut out = vec![];
        event(
            &mut out,
            &mut io::sink(),
            Format::Json,
            false,
            &TraceEvent::Loop(seen()),
        )
        .unwrap();
        let end = LoopEnded {
            seen: seen(),
            time: SystemTime::UNIX_EPOCH,
            monotonic_ns: 42_005,
            lived: Duration::from_nanos(42_000),
            new_state: TcpState::Close,
        };
        event(
            &mut out,
            &mut io::sink(),
            Format::Json,
            false,
            &TraceEvent::End(end),
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "loop");
        assert_eq!(lines[0]["data"]["command"], "evil\x1b[2J");
        assert_eq!(lines[0]["data"]["port"], 40004);
        assert_eq!(lines[1]["type"], "loop-end");
        assert_eq!(lines[1]["data"]["lived_us"], 42.0);
        assert_eq!(lines[1]["data"]["state"], "CLOSE");
    }

    #[test]
    fn attached_says_the_scope_on_stderr_and_heads_the_text_columns() {
        let e = TraceEvent::Attached {
            netns: Some(4026531840),
        };
        let (mut out, mut err) = (vec![], vec![]);
        event(&mut out, &mut err, Format::Human, true, &e).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TIME(UTC)           PID COMM             ADDRESS                NETNS       EVENT\n"
        );
        let err = String::from_utf8(err).unwrap();
        assert!(err.starts_with(
            "tcploop trace: tracing loops in network namespace net:[4026531840] (Ctrl-C to stop)\n\
             tcploop trace: --kill destroys each loop"
        ));
        let (mut out, mut err) = (vec![], vec![]);
        let all = TraceEvent::Attached { netns: None };
        event(&mut out, &mut err, Format::Json, false, &all).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "tcploop trace: tracing loops in every network namespace (Ctrl-C to stop)\n"
        );
    }

    #[test]
    fn the_summary_in_text_and_json() {
        let s = Summary {
            loops: 1200,
            ends: 3,
            lost_loops: 2,
            lost_ends: 0,
            killed: 1,
            kill_failed: 1,
            elapsed: Duration::from_millis(1520),
            stop: Stop::CommandExited,
            command_status: Some(1),
        };
        let mut text = vec![];
        summary(&mut text, Format::Human, &s).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "1,200 loops in 1.52 s, 3 ended, 2 events lost (ring buffer full), 1 killed, 1 not; \
             the command exited with 1\n"
        );
        let mut json = vec![];
        summary(&mut json, Format::Json, &s).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            "{\"type\":\"summary\",\"data\":{\"loops\":1200,\"ends\":3,\"lost_loops\":2,\
             \"lost_ends\":0,\"killed\":1,\"kill_failed\":1,\"elapsed_s\":1.52,\
             \"stopped_by\":\"command\",\"command_status\":1}}\n"
        );
    }
}
