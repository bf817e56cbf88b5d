//! Rendering of `tcploop shield on|off|status`.
//!
//! JSON Lines (`--json`):
//! - `shield`, one per namespace: `{"netns": 4026531840, "own": true,
//!   "pid": 1|null, "name": "blue"|null, "state": "on"|"off"|"unknown",
//!   "mechanism": "bpf"|"iptables"|null, "attach": "tcx"|"tc"|"rules"|null,
//!   "since": RFC 3339|null, "refused_v4": 12|null, "refused_v6": 3|null,
//!   "pinned": "/sys/fs/bpf/tcploop/shield/netns-8193"|null,
//!   "action": "attached"|"already_on"|"removed"|"was_off"|null (status),
//!   "removed": ["bpf", "iptables"] (off only), "unknown": [reason],
//!   "error": string|null}`;
//! - `cgroup_shield` (with `--cgroup-root`, instead of the above):
//!   `{"cgroup": "/sys/fs/cgroup", "state": "on"|"off"|"unknown",
//!   "action": "attached"|"already_on"|"removed"|"was_off"|null,
//!   "since": RFC 3339|null, "refused_v4": 3|null, "refused_v6": 0|null,
//!   "pinned": "/sys/fs/bpf/tcploop/shield/cgroup-1"|null, "error": string|null}`;
//! - `summary` (always last, not with `--cgroup-root`): `{"namespaces": 1, "on": 1, "off": 0,
//!   "failed": 0, "unreadable_pids": 0}`.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::Serialize;

use super::Format;
use crate::shield::{
    Active, CgroupShield, Done, InNamespace, Namespace, OffOutcome, OnOutcome, ShieldRun,
    ShieldState,
};

/// How many namespaces (or the cgroup) ended on, off, or failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Shield on.
    pub on: usize,
    /// Shield off.
    pub off: usize,
    /// Failed, or state unknown.
    pub failed: usize,
}

/// Renders what [`crate::shield::act`] did: the namespace lines and the
/// summary (or the cgroup's line); in human text, the first error once
/// more on `err` (and alone there when the one namespace failed).
pub fn render_run(
    out: &mut dyn Write,
    err: &mut dyn Write,
    format: Format,
    run: &ShieldRun,
) -> io::Result<Counts> {
    let (results, unreadable) = match run {
        ShieldRun::Cgroup(dir, r) => {
            render_cgroup(out, format, dir, r)?;
            return Ok(match r {
                Err(e) => {
                    out.flush()?;
                    writeln!(err, "tcploop: error: {}", escape(e))?;
                    Counts {
                        failed: 1,
                        ..Counts::default()
                    }
                }
                Ok(c) if c.on => Counts {
                    on: 1,
                    ..Counts::default()
                },
                Ok(_) => Counts {
                    off: 1,
                    ..Counts::default()
                },
            });
        }
        ShieldRun::Namespaces(results, unreadable) => (results, *unreadable),
    };
    let first_error = results.iter().find_map(|l| l.result.as_ref().err());
    if format == Format::Human && results.len() == 1 {
        if let Some(e) = first_error {
            // One namespace that failed: the error, once, on stderr.
            writeln!(err, "tcploop: error: {}", escape(e))?;
            return Ok(Counts {
                failed: 1,
                ..Counts::default()
            });
        }
    }
    let lines: Vec<InNamespace<Line>> = results
        .iter()
        .map(|l| InNamespace {
            ns: l.ns.clone(),
            result: l.result.as_ref().map(Line::of).map_err(Clone::clone),
        })
        .collect();
    let (on, off, failed) = render(out, format, &lines, unreadable)?;
    if failed > 0 && format == Format::Human {
        if let Some(e) = first_error {
            out.flush()?;
            writeln!(err, "tcploop: error: {}", escape(e))?;
        }
    }
    Ok(Counts { on, off, failed })
}

/// What a namespace line says, gathered from any of the three commands.
#[derive(Debug, Default)]
pub struct Line {
    action: Option<&'static str>,
    removed: Vec<&'static str>,
    state: Option<ShieldState>,
    active: Option<Active>,
    error: Option<String>,
}

impl Line {
    /// What one namespace's step did.
    pub fn of(d: &Done) -> Line {
        match d {
            Done::On(o, st) => Line::on(&Ok((o.clone(), st.clone()))),
            Done::Off(o, st) => Line::off(&Ok((o.clone(), st.clone()))),
            Done::Status(st) => Line::status(&Ok(st.clone())),
        }
    }

    /// After `on`, with the state read back.
    pub fn on(r: &Result<(OnOutcome, ShieldState), String>) -> Line {
        match r {
            Ok((o, st)) => {
                let (action, a) = match o {
                    OnOutcome::Attached(a) => ("attached", a),
                    OnOutcome::AlreadyOn(a) => ("already_on", a),
                };
                Line {
                    action: Some(action),
                    state: Some(st.clone()),
                    active: Some(a.clone()),
                    ..Line::default()
                }
            }
            Err(e) => Line::failed(e),
        }
    }

    /// After `off`, with the state read back.
    pub fn off(r: &Result<(OffOutcome, ShieldState), String>) -> Line {
        match r {
            Ok((o, st)) => Line {
                action: Some(if o.removed.is_empty() {
                    "was_off"
                } else {
                    "removed"
                }),
                removed: o.removed.iter().map(|m| m.name()).collect(),
                state: Some(st.clone()),
                ..Line::default()
            },
            Err(e) => Line::failed(e),
        }
    }

    /// `status`.
    pub fn status(r: &Result<ShieldState, String>) -> Line {
        match r {
            Ok(st) => Line {
                state: Some(st.clone()),
                ..Line::default()
            },
            Err(e) => Line::failed(e),
        }
    }

    fn failed(e: &str) -> Line {
        Line {
            error: Some(e.to_string()),
            ..Line::default()
        }
    }

    /// `on`, `off` or `unknown`.
    pub fn state_word(&self) -> &'static str {
        match &self.state {
            Some(s) if s.is_on() => "on",
            Some(s) if s.unknown.is_empty() => "off",
            _ => "unknown",
        }
    }

    fn shown(&self) -> Option<&Active> {
        self.active.as_ref().or_else(|| {
            self.state
                .as_ref()
                .and_then(|s| s.active.iter().find(|a| !a.partial).or(s.active.first()))
        })
    }
}

#[derive(Debug, Serialize)]
struct NsOut<'a> {
    netns: u64,
    own: bool,
    pid: Option<u32>,
    name: Option<&'a str>,
    state: &'static str,
    mechanism: Option<&'static str>,
    attach: Option<&'static str>,
    since: Option<String>,
    refused_v4: Option<u64>,
    refused_v6: Option<u64>,
    pinned: Option<String>,
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<&'static str>,
    unknown: Vec<&'a str>,
    error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Summary {
    namespaces: usize,
    on: usize,
    off: usize,
    failed: usize,
    unreadable_pids: u64,
}

fn rfc3339(t: SystemTime) -> String {
    super::time(t)
}

/// The label of a namespace in human text: `net:[4026531840] (this one)`,
/// with its `/run/netns` name or one of its processes.
pub fn ns_label(ns: &Namespace) -> String {
    let mut s = format!("net:[{}]", ns.inode);
    if ns.own {
        s.push_str(" (this one)");
    } else if let Some(n) = &ns.name {
        s.push_str(&format!(" ({})", escape(n)));
    } else if let Some(p) = ns.pid {
        s.push_str(&format!(" (pid {p})"));
    }
    s
}

/// Control characters from the system never reach the terminal.
fn escape(s: &str) -> String {
    crate::report::escape(s).into_owned()
}

/// Renders the lines, then the summary. Returns (on, off, failed) counts.
pub fn render(
    out: &mut dyn Write,
    format: Format,
    lines: &[InNamespace<Line>],
    unreadable_pids: u64,
) -> io::Result<(usize, usize, usize)> {
    let (mut on, mut off, mut failed) = (0, 0, 0);
    for l in lines {
        let line = match &l.result {
            Ok(line) => line,
            Err(e) => &Line::failed(e),
        };
        match (line.error.is_some(), line.state_word()) {
            (true, _) => failed += 1,
            (false, "on") => on += 1,
            (false, "off") => off += 1,
            _ => failed += 1,
        }
        let a = line.shown();
        if format == Format::Json {
            crate::report::json_line(
                out,
                "shield",
                &NsOut {
                    netns: l.ns.inode,
                    own: l.ns.own,
                    pid: l.ns.pid,
                    name: l.ns.name.as_deref(),
                    state: if line.error.is_some() {
                        "unknown"
                    } else {
                        line.state_word()
                    },
                    mechanism: a.map(|a| a.mechanism.name()),
                    attach: a.map(|a| a.attach),
                    since: a.and_then(|a| a.since).map(rfc3339),
                    refused_v4: a.and_then(|a| a.refused_v4),
                    refused_v6: a.and_then(|a| a.refused_v6),
                    pinned: a
                        .and_then(|a| a.pinned.as_ref())
                        .map(|p| p.display().to_string()),
                    action: line.action,
                    removed: line.removed.clone(),
                    unknown: line
                        .state
                        .as_ref()
                        .map(|s| s.unknown.iter().map(String::as_str).collect())
                        .unwrap_or_default(),
                    error: line.error.as_deref(),
                },
            )?;
        } else {
            human(out, &l.ns, line, a)?;
        }
    }
    let s = Summary {
        namespaces: lines.len(),
        on,
        off,
        failed,
        unreadable_pids,
    };
    if format == Format::Json {
        crate::report::json_line(out, "summary", &s)?;
    } else if lines.len() > 1 || unreadable_pids > 0 {
        writeln!(
            out,
            "{} namespaces: {on} shielded, {off} not, {failed} failed{}",
            lines.len(),
            if unreadable_pids > 0 {
                format!("; {unreadable_pids} processes' namespaces not readable (run as root)")
            } else {
                String::new()
            }
        )?;
    }
    Ok((on, off, failed))
}

fn human(out: &mut dyn Write, ns: &Namespace, line: &Line, a: Option<&Active>) -> io::Result<()> {
    let label = ns_label(ns);
    if let Some(e) = &line.error {
        return writeln!(out, "{label}: failed: {}", escape(e));
    }
    let what = match line.action {
        Some("attached") => "shield on (attached now)".to_string(),
        Some("already_on") => "shield on (already; nothing changed)".to_string(),
        Some("removed") => format!("shield off (removed: {})", line.removed.join(", ")),
        Some("was_off") => "shield off (it was not on)".to_string(),
        _ => format!("shield {}", line.state_word()),
    };
    write!(out, "{label}: {what}")?;
    if let Some(a) = a {
        if line.action != Some("removed") && line.action != Some("was_off") {
            write!(out, "\n  mechanism  {} ({})", a.mechanism.name(), a.attach)?;
            if a.partial {
                write!(out, ", one family only: the other can loop")?;
            }
            if let Some(t) = a.since {
                write!(out, "\n  since      {}", rfc3339(t))?;
            }
            if let (Some(v4), Some(v6)) = (a.refused_v4, a.refused_v6) {
                write!(
                    out,
                    "\n  turned away {} IPv4 and {} IPv6 self-connect SYNs",
                    crate::report::thousands(v4),
                    crate::report::thousands(v6)
                )?;
            }
            if let Some(p) = &a.pinned {
                write!(out, "\n  pinned at  {}", escape(&p.display().to_string()))?;
            }
        }
    }
    if let Some(st) = &line.state {
        for u in &st.unknown {
            write!(out, "\n  not checked: {}", escape(u))?;
        }
    }
    writeln!(out)
}

#[derive(Debug, Serialize)]
struct CgroupOut<'a> {
    cgroup: String,
    state: &'static str,
    action: Option<&'static str>,
    since: Option<String>,
    refused_v4: Option<u64>,
    refused_v6: Option<u64>,
    pinned: Option<String>,
    error: Option<&'a str>,
}

/// Renders the cgroup hook's line (`--cgroup-root`).
pub fn render_cgroup(
    out: &mut dyn Write,
    format: Format,
    cgroup: &std::path::Path,
    r: &Result<CgroupShield, String>,
) -> io::Result<()> {
    let (c, error) = match r {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.as_str())),
    };
    let state = match c {
        Some(c) if c.on => "on",
        Some(_) => "off",
        None => "unknown",
    };
    if format == Format::Json {
        return crate::report::json_line(
            out,
            "cgroup_shield",
            &CgroupOut {
                cgroup: cgroup.display().to_string(),
                state,
                action: c.and_then(|c| c.action),
                since: c.and_then(|c| c.since).map(rfc3339),
                refused_v4: c.and_then(|c| c.refused).map(|r| r.0),
                refused_v6: c.and_then(|c| c.refused).map(|r| r.1),
                pinned: c
                    .and_then(|c| c.pinned.as_ref())
                    .map(|p| p.display().to_string()),
                error,
            },
        );
    }
    let label = format!("cgroup {}", escape(&cgroup.display().to_string()));
    let Some(c) = c else {
        return writeln!(out, "{label}: failed: {}", escape(error.unwrap_or("")));
    };
    let what = match c.action {
        Some("attached") => "connect hook on (attached now)",
        Some("already_on") => "connect hook on (already; nothing changed)",
        Some("removed") => "connect hook off (removed)",
        Some("was_off") => "connect hook off (it was not on)",
        _ if c.on => "connect hook on",
        _ => "connect hook off",
    };
    write!(out, "{label}: {what}")?;
    if c.on {
        if let Some(t) = c.since {
            write!(out, "\n  since      {}", rfc3339(t))?;
        }
        if let Some((v4, v6)) = c.refused {
            write!(
                out,
                "\n  refused    {} IPv4 and {} IPv6 connects to a loopback port where nothing listened",
                crate::report::thousands(v4),
                crate::report::thousands(v6)
            )?;
        }
        if let Some(p) = &c.pinned {
            write!(out, "\n  pinned at  {}", escape(&p.display().to_string()))?;
        }
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shield::Mechanism;
    use crate::sys::netns::Netns;
    use std::time::{Duration, SystemTime};

    fn ns(inode: u64, own: bool, name: Option<&str>) -> Namespace {
        let n = Netns {
            inode,
            path: "/proc/1/ns/net".into(),
            pid: Some(1),
            name: name.map(String::from),
        };
        Namespace::from_sys(&n, if own { inode } else { 0 })
    }

    fn bpf_active() -> Active {
        Active {
            mechanism: Mechanism::Bpf,
            attach: "tcx",
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200)),
            refused_v4: Some(1234),
            refused_v6: Some(5),
            partial: false,
            pinned: Some("/sys/fs/bpf/tcploop/shield/netns-7".into()),
        }
    }

    #[test]
    fn on_renders_text_and_json_and_counts() {
        let st = ShieldState {
            active: vec![bpf_active()],
            unknown: vec![],
        };
        let lines = vec![
            InNamespace {
                ns: ns(4026531840, true, None),
                result: Ok(Line::on(&Ok((
                    OnOutcome::Attached(bpf_active()),
                    st.clone(),
                )))),
            },
            InNamespace {
                ns: ns(4026532001, false, Some("blue\x1b[31m")),
                result: Err("setns: Operation not permitted".to_string()),
            },
        ];
        let mut text = vec![];
        let counts = render(&mut text, Format::Human, &lines, 3).unwrap();
        assert_eq!(counts, (1, 0, 1));
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "net:[4026531840] (this one): shield on (attached now)\n  \
             mechanism  bpf (tcx)\n  since      2025-12-01T00:00:00Z\n  \
             turned away 1,234 IPv4 and 5 IPv6 self-connect SYNs\n  \
             pinned at  /sys/fs/bpf/tcploop/shield/netns-7\n\
             net:[4026532001] (blue\\x1b[31m): failed: setns: Operation not permitted\n\
             2 namespaces: 1 shielded, 0 not, 1 failed; 3 processes' namespaces not readable (run as root)\n"
        );
        let mut json = vec![];
        render(&mut json, Format::Json, &lines, 3).unwrap();
        let json = String::from_utf8(json).unwrap();
        let v: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["data"]["action"], "attached");
        assert_eq!(v[0]["data"]["refused_v4"], 1234);
        assert_eq!(v[0]["data"]["since"], "2025-12-01T00:00:00Z");
        assert_eq!(v[1]["data"]["state"], "unknown");
        assert_eq!(v[1]["data"]["name"], "blue\u{1b}[31m", "JSON stays exact");
        assert_eq!(v[2]["type"], "summary");
        assert_eq!(v[2]["data"]["failed"], 1);
    }

    #[test]
    fn a_half_iptables_pair_says_so() {
        let mut a = bpf_active();
        a.mechanism = Mechanism::Iptables;
        a.attach = "rules";
        a.partial = true;
        a.pinned = None;
        let st = ShieldState {
            active: vec![a],
            unknown: vec![],
        };
        let lines = vec![InNamespace {
            ns: ns(1, true, None),
            result: Ok(Line::status(&Ok(st))),
        }];
        let mut text = vec![];
        assert_eq!(
            render(&mut text, Format::Human, &lines, 0).unwrap(),
            (0, 1, 0)
        );
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("shield off"), "{text}");
        assert!(
            text.contains("one family only: the other can loop"),
            "{text}"
        );
    }

    #[test]
    fn one_failed_namespace_is_said_once_on_stderr_and_counted() {
        let run = ShieldRun::Namespaces(
            vec![InNamespace {
                ns: ns(7, true, None),
                result: Err("the bpf shield: not permitted\x1b".to_string()),
            }],
            0,
        );
        let (mut text, mut err) = (vec![], vec![]);
        let c = render_run(&mut text, &mut err, Format::Human, &run).unwrap();
        assert_eq!(
            c,
            Counts {
                failed: 1,
                ..Counts::default()
            }
        );
        assert_eq!(String::from_utf8(text).unwrap(), "");
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "tcploop: error: the bpf shield: not permitted\\x1b\n"
        );
        // JSON: the line and the summary, nothing on stderr.
        let (mut json, mut err) = (vec![], vec![]);
        render_run(&mut json, &mut err, Format::Json, &run).unwrap();
        assert_eq!(String::from_utf8(json).unwrap().lines().count(), 2);
        assert!(err.is_empty());
    }

    #[test]
    fn the_cgroup_hook_off_counts_as_off() {
        let c = CgroupShield {
            cgroup: "/sys/fs/cgroup".into(),
            on: false,
            action: None,
            since: None,
            refused: None,
            pinned: None,
        };
        let run = ShieldRun::Cgroup("/sys/fs/cgroup".into(), Ok(c));
        let (mut text, mut err) = (vec![], vec![]);
        let n = render_run(&mut text, &mut err, Format::Human, &run).unwrap();
        assert_eq!(
            n,
            Counts {
                off: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "cgroup /sys/fs/cgroup: connect hook off\n"
        );
        let run = ShieldRun::Cgroup("/x".into(), Err("no BTF".into()));
        let (mut json, mut err) = (vec![], vec![]);
        let n = render_run(&mut json, &mut err, Format::Json, &run).unwrap();
        assert_eq!(n.failed, 1);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            "{\"type\":\"cgroup_shield\",\"data\":{\"cgroup\":\"/x\",\"state\":\"unknown\",\
             \"action\":null,\"since\":null,\"refused_v4\":null,\"refused_v6\":null,\
             \"pinned\":null,\"error\":\"no BTF\"}}\n"
        );
        assert_eq!(String::from_utf8(err).unwrap(), "tcploop: error: no BTF\n");
    }
}
