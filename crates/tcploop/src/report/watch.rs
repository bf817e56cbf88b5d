//! `tcploop watch`'s events ([`crate::watch::Event`]): the wire structs of
//! its JSON Lines and its human lines. Each renderer takes the event's time
//! as text, so that the output is a function of its inputs.
//!
//! JSON Lines (`--json`), one event a line, each with `"time"` (RFC 3339, UTC):
//! - `watch_started`: `{"time", "interval_s": 1.0, "prometheus": "127.0.0.1:9977"|null,
//!   "textfile": path|null, "kill_after_s": number|null, "source": "ebpf"|"poll",
//!   "source_reason": string}` (why that source: the option, or why eBPF is unavailable);
//! - `events_lost` (`ebpf`): `{"time", "loops": 12, "ends": 0}`: the ring buffer was full;
//!   a scan follows at once and reports the loops still present;
//! - `loop_appeared`: `{"time", "local": "127.0.0.1:40004", "state": "ESTABLISHED", "inode": 123,
//!   "cookie": 456, "owners": [{"pid": 1, "command": "python3", "fd": 3, "container": null|CONTAINER}]}`
//!   (`fd` is -1 when the loop came from a kernel event: the process is known, not its fd;
//!   CONTAINER as in `tcploop scan --json`), plus `"netns"` (as in `scan`) for a loop outside
//!   the watcher's own namespace (`--all-netns`);
//! - `loop_gone`: the same fields plus `"seen_s": 3.0` (how long it was seen);
//! - `loop_killed`: the same fields as `loop_gone` (destroyed by `--kill-after`), plus
//!   `"kills_on_port": 2` (loops destroyed on this port so far) and, from the second one on a
//!   port in the ephemeral range that is not reserved, `"advice": string` (its client
//!   reconnects and loops again: reserve the port);
//! - `kill_failed`: the same fields plus `"error": string` (said once a loop; not retried);
//! - `scan_error`: `{"time", "error": string, "errors_total": 1}` (the watch goes on);
//! - `output_error`: `{"time", "error": string}` (writing the textfile failed; the watch goes on);
//! - `owner_error`: `{"time", "error": string}` (the owner lookup failed; the loop is reported without);
//! - `netns_appeared`, `netns_gone`: `{"time", "netns"}`, `netns_skipped`: `{"time", "netns", "error"}`
//!   (`--all-netns`, polling: namespaces listed afresh each scan; a skip is said once a namespace);
//! - `watch_stopped`: `{"time", "scans": 10, "scan_errors": 0, "loops_seen": 1, "kills": 0}`.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use super::scan::{container_text, ContainerWire, NetnsWire};
use super::Format;
use crate::report;
use crate::scan::NetnsLabel;
use crate::watch::{
    Event, LoopEvent, LoopKind, NetnsChange, SourceKind, SourceReason, Started, Totals, Warning,
};

fn loop_type(kind: LoopKind) -> &'static str {
    match kind {
        LoopKind::Appeared => "loop_appeared",
        LoopKind::Gone => "loop_gone",
        LoopKind::Killed => "loop_killed",
        LoopKind::KillFailed => "kill_failed",
    }
}

fn loop_words(kind: LoopKind) -> &'static str {
    match kind {
        LoopKind::Appeared => "loop appeared",
        LoopKind::Gone => "loop gone    ",
        LoopKind::Killed => "loop killed  ",
        LoopKind::KillFailed => "kill failed  ",
    }
}

/// What to do about a loop killed again on its port: its client
/// reconnects and loops again (the port is in the ephemeral range and not
/// reserved).
pub fn reserve_advice(kills_on_port: u64, port: u16) -> String {
    format!(
        "loop {kills_on_port} on port {port}: its client reconnects and loops again, as the port \
         is in the ephemeral range and not reserved; reserve it (tcploop audit --ports {port} \
         --apply) and the next kill is the last"
    )
}

#[derive(Debug, Serialize)]
struct OwnerWire<'a> {
    pid: u32,
    command: &'a str,
    fd: i32,
    container: Option<ContainerWire>,
}

#[derive(Debug, Serialize)]
struct LoopWire<'a> {
    time: &'a str,
    local: String,
    state: &'static str,
    inode: u32,
    cookie: u64,
    owners: Vec<OwnerWire<'a>>,
    /// The loop's namespace, when not the watcher's own (`--all-netns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<NetnsWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kills_on_port: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advice: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct NetnsEventWire<'a> {
    time: &'a str,
    netns: NetnsWire,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct LostWire<'a> {
    time: &'a str,
    loops: u64,
    ends: u64,
}

/// A loop appeared, gone, killed, or not killed.
pub fn loop_event(
    out: &mut dyn Write,
    format: Format,
    time: &str,
    e: &LoopEvent,
) -> io::Result<()> {
    let t = e.tracked;
    let s = &t.sock;
    let advice = e
        .reserve_advised
        .then(|| reserve_advice(e.kills_on_port.unwrap_or(0), s.local.port()));
    if format == Format::Json {
        return report::json_line(
            out,
            loop_type(e.kind),
            &LoopWire {
                time,
                local: report::addr(s.local),
                state: s.state.name(),
                inode: s.inode,
                cookie: s.cookie(),
                owners: t
                    .owners
                    .iter()
                    .map(|o| OwnerWire {
                        pid: o.pid,
                        command: &o.comm,
                        fd: o.fd,
                        container: o.container.as_ref().map(Into::into),
                    })
                    .collect(),
                netns: e.netns.map(|(n, c)| NetnsWire::from(n).with_container(c)),
                seen_s: e.seen.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
                error: e.error,
                kills_on_port: e.kills_on_port,
                advice: advice.as_deref(),
            },
        );
    }
    let who = if t.owners.is_empty() {
        "owner unknown".to_string()
    } else {
        let v: Vec<String> = t
            .owners
            .iter()
            .map(|o| {
                let command = report::escape(&o.comm);
                let c = container_text(o.container.as_ref());
                if o.fd < 0 {
                    // from a kernel event: the fd is not known
                    format!("{command} pid {}{c}", o.pid)
                } else {
                    format!("{command} pid {} fd {}{c}", o.pid, o.fd)
                }
            })
            .collect();
        v.join(", ")
    };
    let mut extra = match (e.seen, e.error) {
        (_, Some(err)) => format!("  ({})", report::escape(err)),
        (Some(d), None) if d < Duration::from_millis(100) => {
            format!("  after {}", report::duration(d))
        }
        (Some(d), None) => format!("  after {:.1} s", d.as_secs_f64()),
        _ => String::new(),
    };
    let where_ = e
        .netns
        .map(|(n, _)| format!("  in netns {}", report::escape(&n.to_string())))
        .unwrap_or_default();
    if let Some(a) = advice {
        extra.push_str(&format!("\n    note: {a}"));
    }
    writeln!(
        out,
        "{time} {} {} <-> itself  {}  {who}{where_}{extra}",
        loop_words(e.kind),
        report::addr(s.local),
        s.state.name()
    )
}

/// `netns_appeared`, `netns_gone`, `netns_skipped` (`--all-netns`).
pub fn netns_event(
    out: &mut dyn Write,
    format: Format,
    time: &str,
    change: NetnsChange,
    n: &NetnsLabel,
    error: Option<&str>,
) -> io::Result<()> {
    if format == Format::Json {
        let ty = match change {
            NetnsChange::Appeared => "netns_appeared",
            NetnsChange::Gone => "netns_gone",
            NetnsChange::Skipped => "netns_skipped",
        };
        return report::json_line(
            out,
            ty,
            &NetnsEventWire {
                time,
                netns: n.into(),
                error,
            },
        );
    }
    let what = match change {
        NetnsChange::Appeared => "namespace appeared",
        NetnsChange::Gone => "namespace gone    ",
        NetnsChange::Skipped => "namespace skipped ",
    };
    let why = error
        .map(|e| format!(": {}", report::escape(e)))
        .unwrap_or_default();
    writeln!(out, "{time} {what} {}{why}", report::escape(&n.to_string()))
}

/// `events_lost`: the kernel's ring buffer was full.
pub fn lost(
    out: &mut dyn Write,
    format: Format,
    time: &str,
    loops: u64,
    ends: u64,
) -> io::Result<()> {
    if format == Format::Json {
        return report::json_line(out, "events_lost", &LostWire { time, loops, ends });
    }
    writeln!(
        out,
        "{time} events lost: {loops} loop(s) and {ends} end(s) (ring buffer full); scanning to catch up"
    )
}

#[derive(Debug, Serialize)]
struct StartedWire<'a> {
    time: &'a str,
    interval_s: f64,
    prometheus: Option<String>,
    textfile: Option<String>,
    kill_after_s: Option<f64>,
    source: &'static str,
    source_reason: String,
}

#[derive(Debug, Serialize)]
struct WarningWire<'a> {
    time: &'a str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors_total: Option<u64>,
}

#[derive(Debug, Serialize)]
struct StoppedWire<'a> {
    time: &'a str,
    scans: u64,
    scan_errors: u64,
    loops_seen: u64,
    kills: u64,
}

/// Why the watch runs on its source, in words (`source_reason`).
pub fn source_reason(r: &SourceReason) -> String {
    match r {
        SourceReason::Asked(k) => format!("--source {}", k.name()),
        SourceReason::CountNeedsPoll => "--count counts scans, which only polling does".into(),
        SourceReason::EventsAvailable => {
            "eBPF events: the kernel reports each loop as it forms".into()
        }
        SourceReason::EventsRefused(r) => format!(
            "eBPF unavailable: {r}; polling instead (loops shorter than the interval are missed)"
        ),
    }
}

/// `watch_started`: the source and why, where the metrics go.
pub fn started(out: &mut dyn Write, format: Format, time: &str, s: &Started) -> io::Result<()> {
    let why = source_reason(s.reason);
    if format == Format::Json {
        return report::json_line(
            out,
            "watch_started",
            &StartedWire {
                time,
                interval_s: s.interval.as_secs_f64(),
                prometheus: s.prometheus.map(|a| a.to_string()),
                textfile: s.textfile.map(|p| p.display().to_string()),
                kill_after_s: s.kill_after.map(|d| d.as_secs_f64()),
                source: s.source.name(),
                source_reason: why,
            },
        );
    }
    let mut extra = String::new();
    if let Some(a) = s.prometheus {
        extra.push_str(&format!(", metrics at http://{a}/metrics"));
    }
    if let Some(p) = s.textfile {
        let p = p.display().to_string();
        extra.push_str(&format!(", textfile {}", report::escape(&p)));
    }
    if let Some(d) = s.kill_after {
        extra.push_str(&format!(", killing loops after {:.1} s", d.as_secs_f64()));
    }
    let how = match s.source {
        SourceKind::Ebpf => "as the kernel reports them".to_string(),
        SourceKind::Poll => format!("every {:.1} s", s.interval.as_secs_f64()),
    };
    writeln!(
        out,
        "{time} watching for loops {how}{extra} (Ctrl-C to stop)\n{time} source: {}: {}",
        s.source.name(),
        report::escape(&why)
    )
}

/// `scan_error`, `owner_error`, `output_error`: as JSON Lines on `out`, or
/// as a warning line on `warn` (standard error).
pub fn warning(
    out: &mut dyn Write,
    warn: &mut dyn Write,
    format: Format,
    time: &str,
    kind: Warning,
    error: &str,
    total: Option<u64>,
) -> io::Result<()> {
    if format == Format::Json {
        let ty = match kind {
            Warning::Scan => "scan_error",
            Warning::Owner => "owner_error",
            Warning::Output => "output_error",
        };
        let w = WarningWire {
            time,
            error,
            errors_total: total,
        };
        return report::json_line(out, ty, &w);
    }
    writeln!(warn, "tcploop: warning: {}", report::escape(error))
}

/// `watch_stopped`: what the watch did.
pub fn stopped(out: &mut dyn Write, format: Format, time: &str, t: &Totals) -> io::Result<()> {
    if format == Format::Json {
        let w = StoppedWire {
            time,
            scans: t.scans,
            scan_errors: t.scan_errors,
            loops_seen: t.loops_seen,
            kills: t.kills,
        };
        return report::json_line(out, "watch_stopped", &w);
    }
    writeln!(
        out,
        "{time} stopped after {} scans: {} loop(s) seen, {} killed, {} failed scan(s)",
        t.scans, t.loops_seen, t.kills, t.scan_errors
    )
}

/// Any event of a watch, at `time`; warnings in human text go to `warn`.
/// Each line is flushed: a watch runs for days, read as it goes.
pub fn event(
    out: &mut dyn Write,
    warn: &mut dyn Write,
    format: Format,
    time: std::time::SystemTime,
    e: &Event,
) -> io::Result<()> {
    let time = &report::time(time);
    match e {
        Event::Started(s) => started(out, format, time, s)?,
        Event::Loop(l) => loop_event(out, format, time, l)?,
        Event::Netns {
            change,
            netns,
            error,
        } => netns_event(out, format, time, *change, netns, *error)?,
        Event::Lost { loops, ends } => lost(out, format, time, *loops, *ends)?,
        Event::Warning { kind, error, total } => {
            warning(out, warn, format, time, *kind, error, *total)?
        }
        Event::Stopped(t) => stopped(out, format, time, t)?,
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, Socket, TcpState};
    use crate::watch::Tracked;
    use std::time::Instant;

    const T: &str = "2026-12-01T01:02:03Z";

    fn tracked(owners: Vec<Owner>) -> Tracked {
        let mut sock = Socket::fixture(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:40004");
        sock.inode = 991;
        sock.cookie = [28, 0];
        Tracked {
            sock,
            owners,
            since: Instant::now(),
        }
    }

    fn event(kind: LoopKind, t: &Tracked) -> LoopEvent<'_> {
        LoopEvent {
            kind,
            tracked: t,
            netns: None,
            seen: None,
            error: None,
            kills_on_port: None,
            reserve_advised: false,
        }
    }

    fn render(format: Format, e: &LoopEvent) -> String {
        let mut out = vec![];
        loop_event(&mut out, format, T, e).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn python(fd: i32) -> Owner {
        Owner {
            pid: 7,
            comm: "python3".into(),
            fd,
            container: None,
        }
    }

    #[test]
    fn an_appeared_loop_in_words() {
        let t = tracked(vec![python(3)]);
        assert_eq!(
            render(Format::Human, &event(LoopKind::Appeared, &t)),
            "2026-12-01T01:02:03Z loop appeared 127.0.0.1:40004 <-> itself  ESTABLISHED  \
             python3 pid 7 fd 3\n"
        );
        let t = tracked(vec![]);
        let mut e = event(LoopKind::Gone, &t);
        e.seen = Some(Duration::from_millis(2500));
        assert_eq!(
            render(Format::Human, &e),
            "2026-12-01T01:02:03Z loop gone     127.0.0.1:40004 <-> itself  ESTABLISHED  \
             owner unknown  after 2.5 s\n"
        );
    }

    #[test]
    fn a_killed_loop_in_words_and_json() {
        // a kernel event's owner has no fd
        let t = tracked(vec![python(-1)]);
        let mut e = event(LoopKind::Killed, &t);
        e.seen = Some(Duration::from_millis(5));
        e.kills_on_port = Some(2);
        e.reserve_advised = true;
        assert_eq!(
            render(Format::Human, &e),
            "2026-12-01T01:02:03Z loop killed   127.0.0.1:40004 <-> itself  ESTABLISHED  \
             python3 pid 7  after 5.0 ms\n    note: loop 2 on port 40004: its client \
             reconnects and loops again, as the port is in the ephemeral range and not \
             reserved; reserve it (tcploop audit --ports 40004 --apply) and the next kill is \
             the last\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "loop_killed", "data": {
                "time": T, "local": "127.0.0.1:40004", "state": "ESTABLISHED", "inode": 991,
                "cookie": 28, "owners": [{"pid": 7, "command": "python3", "fd": -1, "container": null}],
                "seen_s": 0.005, "kills_on_port": 2, "advice": reserve_advice(2, 40004)
            }})
        );
    }

    #[test]
    fn names_and_errors_from_the_system_are_escaped() {
        let mut o = python(3);
        o.comm = "x\x1b[2Jy".into();
        let t = tracked(vec![o]);
        let ns = NetnsLabel {
            inode: 4026532000,
            pid: Some(9),
            comm: Some("n\ns".into()),
            name: None,
            path: Some("/proc/9/ns/net".into()),
        };
        let mut e = event(LoopKind::KillFailed, &t);
        e.netns = Some((&ns, None));
        e.error = Some("bad\x07");
        let h = render(Format::Human, &e);
        assert_eq!(
            h,
            "2026-12-01T01:02:03Z kill failed   127.0.0.1:40004 <-> itself  ESTABLISHED  \
             x\\x1b[2Jy pid 7 fd 3  in netns net:[4026532000] (pid 9 n\\ns)  (bad\\x07)\n"
        );
        // JSON carries the exact bytes
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &e)).unwrap();
        assert_eq!(v["data"]["owners"][0]["command"], "x\x1b[2Jy");
        assert_eq!(v["data"]["netns"]["pid"], 9);
        assert_eq!(v["data"]["error"], "bad\x07");
        let mut out = vec![];
        netns_event(
            &mut out,
            Format::Human,
            T,
            NetnsChange::Skipped,
            &ns,
            Some("e\x1b"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T01:02:03Z namespace skipped  net:[4026532000] (pid 9 n\\ns): e\\x1b\n"
        );
    }

    #[test]
    fn lost_events_in_json() {
        let mut out = vec![];
        lost(&mut out, Format::Json, T, 3, 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "events_lost", "data": {"time": T, "loops": 3, "ends": 1}})
        );
    }

    #[test]
    fn the_start_and_the_stop_in_words_and_json() {
        let asked = SourceReason::Asked(SourceKind::Poll);
        let s = Started {
            source: SourceKind::Poll,
            reason: &asked,
            interval: Duration::from_millis(500),
            prometheus: Some("127.0.0.1:9977".parse().unwrap()),
            textfile: Some(std::path::Path::new("/tmp/t\x1b.prom")),
            kill_after: Some(Duration::from_secs(3)),
        };
        let mut out = vec![];
        started(&mut out, Format::Human, T, &s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T01:02:03Z watching for loops every 0.5 s, metrics at \
             http://127.0.0.1:9977/metrics, textfile /tmp/t\\x1b.prom, killing loops after \
             3.0 s (Ctrl-C to stop)\n2026-12-01T01:02:03Z source: poll: --source poll\n"
        );
        let mut out = vec![];
        started(&mut out, Format::Json, T, &s).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "watch_started", "data": {
                "time": T, "interval_s": 0.5, "prometheus": "127.0.0.1:9977",
                "textfile": "/tmp/t\x1b.prom", "kill_after_s": 3.0, "source": "poll",
                "source_reason": "--source poll"
            }})
        );
        let events = SourceReason::EventsAvailable;
        let s = Started {
            source: SourceKind::Ebpf,
            reason: &events,
            prometheus: None,
            textfile: None,
            kill_after: None,
            ..s
        };
        let mut out = vec![];
        started(&mut out, Format::Human, T, &s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T01:02:03Z watching for loops as the kernel reports them (Ctrl-C to \
             stop)\n2026-12-01T01:02:03Z source: ebpf: eBPF events: the kernel reports each \
             loop as it forms\n"
        );
        let t = Totals {
            scans: 14,
            scan_errors: 1,
            loops_seen: 2,
            kills: 1,
        };
        let mut out = vec![];
        stopped(&mut out, Format::Human, T, &t).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T01:02:03Z stopped after 14 scans: 2 loop(s) seen, 1 killed, 1 failed \
             scan(s)\n"
        );
        let mut out = vec![];
        stopped(&mut out, Format::Json, T, &t).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"watch_stopped\",\"data\":{\"time\":\"2026-12-01T01:02:03Z\",\
             \"scans\":14,\"scan_errors\":1,\"loops_seen\":2,\"kills\":1}}\n"
        );
    }

    #[test]
    fn a_warning_goes_to_stderr_in_words_and_to_stdout_in_json() {
        let (mut out, mut warn) = (vec![], vec![]);
        let e = "scan failed: x\x1b";
        warning(
            &mut out,
            &mut warn,
            Format::Human,
            T,
            Warning::Scan,
            e,
            Some(2),
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(warn).unwrap(),
            "tcploop: warning: scan failed: x\\x1b\n"
        );
        let (mut out, mut warn) = (vec![], vec![]);
        warning(
            &mut out,
            &mut warn,
            Format::Json,
            T,
            Warning::Scan,
            e,
            Some(2),
        )
        .unwrap();
        assert!(warn.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "scan_error", "data": {
                "time": T, "error": e, "errors_total": 2
            }})
        );
        let mut out = vec![];
        let w = Warning::Output;
        warning(&mut out, &mut vec![], Format::Json, T, w, "disk full", None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"output_error\",\"data\":{\"time\":\"2026-12-01T01:02:03Z\",\
             \"error\":\"disk full\"}}\n"
        );
    }

    #[test]
    fn why_a_source_in_words() {
        assert_eq!(
            source_reason(&SourceReason::CountNeedsPoll),
            "--count counts scans, which only polling does"
        );
        assert_eq!(
            source_reason(&SourceReason::Asked(SourceKind::Ebpf)),
            "--source ebpf"
        );
    }
}
