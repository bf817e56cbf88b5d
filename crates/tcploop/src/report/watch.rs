//! `tcploop watch`'s events (documented in `cmd/watch.rs`): the wire structs
//! of its JSON Lines and its human lines. Each renderer takes the event's
//! time as text, so that the output is a function of its inputs.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use super::scan::{container_text, ContainerWire, NetnsWire};
use super::Format;
use crate::container::Container;
use crate::report;
use crate::scan::NetnsLabel;
use crate::watch::Tracked;

/// What happened to a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// `loop_appeared`.
    Appeared,
    /// `loop_gone`.
    Gone,
    /// `loop_killed` (`--kill-after`).
    Killed,
    /// `kill_failed`.
    KillFailed,
}

impl LoopKind {
    /// The JSON Lines type.
    pub fn as_str(self) -> &'static str {
        match self {
            LoopKind::Appeared => "loop_appeared",
            LoopKind::Gone => "loop_gone",
            LoopKind::Killed => "loop_killed",
            LoopKind::KillFailed => "kill_failed",
        }
    }

    fn words(self) -> &'static str {
        match self {
            LoopKind::Appeared => "loop appeared",
            LoopKind::Gone => "loop gone    ",
            LoopKind::Killed => "loop killed  ",
            LoopKind::KillFailed => "kill failed  ",
        }
    }
}

/// One loop event, as the renderers need it.
#[derive(Debug, Clone, Copy)]
pub struct LoopEvent<'a> {
    /// What happened.
    pub kind: LoopKind,
    /// The loop.
    pub tracked: &'a Tracked,
    /// Its namespace, when not the watcher's own (`--all-netns`), and that
    /// namespace's process's container.
    pub netns: Option<(&'a NetnsLabel, Option<&'a Container>)>,
    /// How long it had been present.
    pub seen: Option<Duration>,
    /// Why a kill failed.
    pub error: Option<&'a str>,
    /// Loops destroyed on its port so far (`loop_killed`).
    pub kills_on_port: Option<u64>,
    /// What to do when they keep coming back.
    pub advice: Option<&'a str>,
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
    if format == Format::Json {
        return report::json_line(
            out,
            e.kind.as_str(),
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
                advice: e.advice,
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
        .map(|(n, _)| format!("  in netns {}", report::escape(&n.describe())))
        .unwrap_or_default();
    if let Some(a) = e.advice {
        extra.push_str(&format!("\n    note: {a}"));
    }
    writeln!(
        out,
        "{time} {} {} <-> itself  {}  {who}{where_}{extra}",
        e.kind.words(),
        report::addr(s.local),
        s.state.name()
    )
}

/// `netns_appeared`, `netns_gone`, `netns_skipped` (`--all-netns`).
pub fn netns_event(
    out: &mut dyn Write,
    format: Format,
    time: &str,
    ty: &str,
    n: &NetnsLabel,
    error: Option<&str>,
) -> io::Result<()> {
    if format == Format::Json {
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
    let what = match ty {
        "netns_appeared" => "namespace appeared",
        "netns_gone" => "namespace gone    ",
        _ => "namespace skipped ",
    };
    let why = error
        .map(|e| format!(": {}", report::escape(e)))
        .unwrap_or_default();
    writeln!(out, "{time} {what} {}{why}", report::escape(&n.describe()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, Socket, TcpState};
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
            advice: None,
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
        e.advice = Some("reserve it");
        assert_eq!(
            render(Format::Human, &e),
            "2026-12-01T01:02:03Z loop killed   127.0.0.1:40004 <-> itself  ESTABLISHED  \
             python3 pid 7  after 5.0 ms\n    note: reserve it\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "loop_killed", "data": {
                "time": T, "local": "127.0.0.1:40004", "state": "ESTABLISHED", "inode": 991,
                "cookie": 28, "owners": [{"pid": 7, "command": "python3", "fd": -1, "container": null}],
                "seen_s": 0.005, "kills_on_port": 2, "advice": "reserve it"
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
            "netns_skipped",
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
}
