//! Rendering of `tcploop shield daemon`: one line a [`Notice`], the time
//! first; warnings go to the error stream.
//!
//! JSON Lines (`--json`), each with `"time"` (RFC 3339, UTC):
//! - `daemon_started`: `{"time", "interval_s": 1.0, "prometheus": "127.0.0.1:9978"|null,
//!   "textfile": path|null, "mechanism": "bpf"|"iptables"|null, "watching": [dir]}`;
//! - `attached` / `found` (on already): `{"time", "netns": 4026531840, "pid": 1|null,
//!   "name": "blue"|null, "mechanism": "bpf", "attach": "tcx"}`;
//! - `attach_failed`: `{"time", "netns", "pid", "name", "error": string}` (once a namespace);
//! - `cgroup_shield` (with `--cgroup-root`, once at start): as `shield on --cgroup-root` prints it;
//! - `sweep_error`: `{"time", "error": string}` (the daemon goes on);
//! - `daemon_stopped`: `{"time", "sweeps": 10, "attached": 3, "failed": 0}`.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::Serialize;

use super::Format;
use crate::shield::Namespace;
use crate::shield_daemon::{Event, Notice, Started, Stopped};

#[derive(Debug, Serialize)]
struct StartedOut {
    time: String,
    interval_s: f64,
    prometheus: Option<String>,
    textfile: Option<String>,
    mechanism: Option<&'static str>,
    watching: Vec<String>,
}

#[derive(Debug, Serialize)]
struct NsEvent<'a> {
    time: String,
    netns: u64,
    pid: Option<u32>,
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mechanism: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attach: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ErrorEvent {
    time: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct StoppedOut {
    time: String,
    sweeps: u64,
    attached: u64,
    failed: u64,
}

/// Renders one notice of the daemon at time `now` (warnings, and a failed
/// sweep in human text, to `err`), and flushes.
pub fn notice(
    out: &mut dyn Write,
    err: &mut dyn Write,
    format: Format,
    now: SystemTime,
    n: &Notice<'_>,
) -> io::Result<()> {
    let time = super::time(now);
    match n {
        Notice::Started(s) => started(out, format, time, s)?,
        Notice::Cgroup { dir, result } => super::shield::render_cgroup(out, format, dir, result)?,
        Notice::Namespace(e) => event(out, format, time, e)?,
        Notice::SweepFailed(e) => {
            let error = format!("sweep failed: {e}");
            match format {
                Format::Json => super::json_line(out, "sweep_error", &ErrorEvent { time, error })?,
                Format::Human => writeln!(err, "tcploop: warning: {}", super::escape(&error))?,
            }
        }
        Notice::Warning(w) => writeln!(err, "tcploop: warning: {}", super::escape(w))?,
    }
    out.flush()
}

fn started(out: &mut dyn Write, format: Format, time: String, s: &Started) -> io::Result<()> {
    let watching: Vec<String> = s.watching.iter().map(|p| p.display().to_string()).collect();
    if format == Format::Json {
        return super::json_line(
            out,
            "daemon_started",
            &StartedOut {
                time,
                interval_s: s.interval.as_secs_f64(),
                prometheus: s.prometheus.map(|a| a.to_string()),
                textfile: s.textfile.as_ref().map(|p| p.display().to_string()),
                mechanism: s.mechanism.map(|m| m.name()),
                watching,
            },
        );
    }
    let mut extra = String::new();
    if let Some(a) = s.prometheus {
        extra.push_str(&format!(", metrics at http://{a}/metrics"));
    }
    if let Some(p) = &s.textfile {
        extra.push_str(&format!(
            ", textfile {}",
            super::escape(&p.display().to_string())
        ));
    }
    let watching = if watching.is_empty() {
        "no directory".to_string()
    } else {
        super::escape(&watching.join(", ")).into_owned()
    };
    writeln!(
        out,
        "{time} shield daemon: sweeping every {:.1} s, watching {watching}{extra} (Ctrl-C to stop)",
        s.interval.as_secs_f64(),
    )
}

fn event(out: &mut dyn Write, format: Format, time: String, e: &Event) -> io::Result<()> {
    let (ty, ns, active, error): (&str, &Namespace, _, Option<&str>) = match e {
        Event::Attached { ns, active } => ("attached", ns, Some(active), None),
        Event::Found { ns, active } => ("found", ns, Some(active), None),
        Event::Failed { ns, error } => ("attach_failed", ns, None, Some(error.as_str())),
    };
    if format == Format::Json {
        return super::json_line(
            out,
            ty,
            &NsEvent {
                time,
                netns: ns.inode,
                pid: ns.pid,
                name: ns.name.as_deref(),
                mechanism: active.map(|a| a.mechanism.name()),
                attach: active.map(|a| a.attach),
                error,
            },
        );
    }
    let label = super::shield::ns_label(ns);
    match (active, error) {
        (Some(a), _) => writeln!(
            out,
            "{time} {label}: shield {} ({} {})",
            if ty == "attached" { "on" } else { "already on" },
            a.mechanism.name(),
            a.attach
        ),
        (None, Some(err)) => writeln!(out, "{time} {label}: shield FAILED: {}", super::escape(err)),
        _ => Ok(()),
    }
}

/// Renders the daemon's last line, at time `now`.
pub fn stopped(
    out: &mut dyn Write,
    format: Format,
    now: SystemTime,
    s: &Stopped,
) -> io::Result<()> {
    let time = super::time(now);
    match format {
        Format::Json => super::json_line(
            out,
            "daemon_stopped",
            &StoppedOut {
                time,
                sweeps: s.sweeps,
                attached: s.attached,
                failed: s.failed,
            },
        ),
        Format::Human => writeln!(
            out,
            "{time} stopped after {} sweeps: {} shield(s) put on, {} namespace(s) failed",
            s.sweeps, s.attached, s.failed
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shield::{Active, Mechanism};
    use crate::sys::netns::Netns;
    use std::time::Duration;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200)
    }

    fn ns(name: Option<&str>) -> Namespace {
        let n = Netns {
            inode: 4026532001,
            path: "/run/netns/blue".into(),
            pid: Some(42),
            name: name.map(String::from),
        };
        Namespace::from_sys(&n, 1)
    }

    fn active() -> Active {
        Active {
            mechanism: Mechanism::Bpf,
            attach: "tcx",
            since: None,
            refused_v4: Some(0),
            refused_v6: Some(0),
            partial: false,
            pinned: None,
        }
    }

    fn both(n: &Notice<'_>) -> (String, String, String) {
        let (mut text, mut err, mut json) = (vec![], vec![], vec![]);
        notice(&mut text, &mut err, Format::Human, at(), n).unwrap();
        notice(&mut json, &mut err, Format::Json, at(), n).unwrap();
        let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (s(text), s(err), s(json))
    }

    #[test]
    fn start_and_stop_lines() {
        let s = Started {
            interval: Duration::from_millis(300),
            prometheus: Some("127.0.0.1:9978".parse().unwrap()),
            textfile: Some("/var/lib/t.prom".into()),
            mechanism: Some(Mechanism::Bpf),
            watching: vec!["/run/netns".into()],
        };
        let (text, err, json) = both(&Notice::Started(&s));
        assert_eq!(
            text,
            "2025-12-01T00:00:00Z shield daemon: sweeping every 0.3 s, watching /run/netns, \
             metrics at http://127.0.0.1:9978/metrics, textfile /var/lib/t.prom (Ctrl-C to stop)\n"
        );
        assert_eq!(err, "");
        assert_eq!(
            json,
            "{\"type\":\"daemon_started\",\"data\":{\"time\":\"2025-12-01T00:00:00Z\",\
             \"interval_s\":0.3,\"prometheus\":\"127.0.0.1:9978\",\"textfile\":\"/var/lib/t.prom\",\
             \"mechanism\":\"bpf\",\"watching\":[\"/run/netns\"]}}\n"
        );
        let none = Started {
            watching: vec![],
            prometheus: None,
            textfile: None,
            ..s
        };
        let (text, _, _) = both(&Notice::Started(&none));
        assert!(text.contains("watching no directory (Ctrl-C"), "{text}");

        let st = Stopped {
            sweeps: 10,
            attached: 3,
            failed: 1,
        };
        let mut text = vec![];
        stopped(&mut text, Format::Human, at(), &st).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "2025-12-01T00:00:00Z stopped after 10 sweeps: 3 shield(s) put on, 1 namespace(s) failed\n"
        );
        let mut json = vec![];
        stopped(&mut json, Format::Json, at(), &st).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            "{\"type\":\"daemon_stopped\",\"data\":{\"time\":\"2025-12-01T00:00:00Z\",\
             \"sweeps\":10,\"attached\":3,\"failed\":1}}\n"
        );
    }

    #[test]
    fn namespace_events_escape_names_in_text_only() {
        let e = Event::Attached {
            ns: ns(Some("blue\x1b[2J")),
            active: active(),
        };
        let (text, _, json) = both(&Notice::Namespace(&e));
        assert_eq!(
            text,
            "2025-12-01T00:00:00Z net:[4026532001] (blue\\x1b[2J): shield on (bpf tcx)\n"
        );
        assert_eq!(
            json,
            "{\"type\":\"attached\",\"data\":{\"time\":\"2025-12-01T00:00:00Z\",\
             \"netns\":4026532001,\"pid\":42,\"name\":\"blue\\u001b[2J\",\
             \"mechanism\":\"bpf\",\"attach\":\"tcx\"}}\n"
        );
        let e = Event::Found {
            ns: ns(None),
            active: active(),
        };
        let (text, _, json) = both(&Notice::Namespace(&e));
        assert_eq!(
            text,
            "2025-12-01T00:00:00Z net:[4026532001] (pid 42): shield already on (bpf tcx)\n"
        );
        assert!(json.starts_with("{\"type\":\"found\""), "{json}");
        let e = Event::Failed {
            ns: ns(None),
            error: "setns: Operation not permitted".into(),
        };
        let (text, _, json) = both(&Notice::Namespace(&e));
        assert_eq!(
            text,
            "2025-12-01T00:00:00Z net:[4026532001] (pid 42): shield FAILED: setns: Operation not permitted\n"
        );
        assert_eq!(
            json,
            "{\"type\":\"attach_failed\",\"data\":{\"time\":\"2025-12-01T00:00:00Z\",\
             \"netns\":4026532001,\"pid\":42,\"name\":null,\
             \"error\":\"setns: Operation not permitted\"}}\n"
        );
    }

    #[test]
    fn a_failed_sweep_is_a_warning_in_text_and_a_line_in_json() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let (text, err, json) = both(&Notice::SweepFailed(&e));
        assert_eq!(text, "");
        assert_eq!(
            err,
            "tcploop: warning: sweep failed: Too many open files (os error 24)\n"
        );
        assert_eq!(
            json,
            "{\"type\":\"sweep_error\",\"data\":{\"time\":\"2025-12-01T00:00:00Z\",\
             \"error\":\"sweep failed: Too many open files (os error 24)\"}}\n"
        );
        let (text, err, json) = both(&Notice::Warning("inotify: boom".into()));
        assert_eq!((text.as_str(), json.as_str()), ("", ""));
        assert_eq!(
            err,
            "tcploop: warning: inotify: boom\ntcploop: warning: inotify: boom\n"
        );
    }
}
