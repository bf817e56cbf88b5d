//! `tcploop scan`'s output: the wire structs of its JSON Lines and its
//! human text; `kill` reuses the socket line, the one-line description of
//! a loop and the notes.
//!
//! JSON Lines (`--json`):
//! - one line of type `socket` per loop, data
//!   `{"netns": {"inode": 4026531840, "pid": 1234|null, "comm": "python3"|null, "name": "blue"|null,
//!               "container": null|CONTAINER},
//!     "family": "ipv4"|"ipv6", "state": "ESTABLISHED", "local": "127.0.0.1:40004",
//!     "peer": "127.0.0.1:40004", "port": 40004, "uid": 0, "inode": 9771884,
//!     "cookie": 28|null (null when read from /proc), "time_wait_left_ms": 59200|null,
//!     "owners": [{"pid": 1234, "comm": "python3", "fd": 3, "container": null|CONTAINER}],
//!     "owner_status": "found"|"unknown"|"none" (none: TIME-WAIT, no process holds it),
//!     "consequence": "port 40004 is held: ..."}`;
//! - a final line of type `summary`, data
//!   `{"source": "netlink"|"proc", "fallback": null|"why netlink was not used",
//!     "owners_source": "bpf"|"proc"|null (null with --no-owners),
//!     "owners_fallback": null|"why the kernel's walk was not used",
//!     "sockets_seen": 4023, "loops_found": 1, "owners_unknown": 0, "processes_unreadable": 0,
//!     "namespaces_scanned": 1, "namespaces_skipped": [{"netns": {...}, "reason": "..."}],
//!     "netns_unreadable_pids": 0, "namespaces_vanished": 0,
//!     "shield_off": [{"netns": {...}, "exposed_ports": [40004]}]}`: `shield_off` lists
//!   the namespaces whose shield (`tcploop shield`) is off while listening ports
//!   of theirs lie in the ephemeral range, unreserved.
//!
//! CONTAINER is the process's container or systemd service (see
//! `tcploop::container`), `null` for a process in neither:
//! `{"runtime": "docker"|"containerd"|"cri-o"|"podman"|"nspawn"|"lxc"|"kubernetes"|"systemd-service",
//!   "id": "3f4b9e6c...", "name": "api"|null, "pod_uid": "8d1c2f3a-..."|null,
//!   "pod": "api-0"|null, "namespace": "shop"|null}` (names where the
//! runtime's state files give them).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::Format;
use crate::container::{Container, Runtime};
use crate::model::{Loop, NetnsLabel, TcpState};
use crate::owners::{Owner, OwnerSourceUsed};
use crate::report;
use crate::scan::{ScanReport, SourceUsed};

/// What the human text needs to know of the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// `--port`: only loops on this port were looked for.
    pub port: Option<u16>,
    /// `--all-netns`: loops are grouped by namespace.
    pub all_netns: bool,
    /// `--verbose`: say where the socket table and the owners came from.
    pub verbose: bool,
}

/// Renders a scan: a `socket` line a loop and a `summary` line, or the
/// human text.
pub fn render(out: &mut dyn Write, format: Format, r: &ScanReport, view: &View) -> io::Result<()> {
    match format {
        Format::Json => json(out, r),
        Format::Human => {
            human(r, view, out)?;
            if view.verbose {
                verbose(r, out)?;
            }
            Ok(())
        }
    }
}

fn json(out: &mut dyn Write, r: &ScanReport) -> io::Result<()> {
    for l in &r.loops {
        report::json_line(
            out,
            "socket",
            &SocketWire::from(l).with_containers(&r.containers),
        )?;
    }
    report::json_line(
        out,
        "summary",
        &SummaryWire {
            source: r.source.as_str(),
            fallback: r.fallback.clone(),
            owners_source: r.owners_source.map(OwnerSourceUsed::as_str),
            owners_fallback: r.owners_fallback.clone(),
            sockets_seen: r.sockets_seen,
            loops_found: r.loops.len(),
            owners_unknown: r.owners_unknown,
            processes_unreadable: r.processes_unreadable,
            namespaces_scanned: r.namespaces.len(),
            namespaces_skipped: r
                .skipped
                .iter()
                .map(|s| SkippedWire {
                    netns: (&s.netns).into(),
                    reason: s.reason.clone(),
                })
                .collect(),
            netns_unreadable_pids: r.netns_unreadable_pids,
            namespaces_vanished: r.netns_vanished,
            shield_off: r
                .unshielded
                .iter()
                .map(|u| UnshieldedWire {
                    netns: (&u.netns).into(),
                    exposed_ports: u.exposed_ports.clone(),
                })
                .collect(),
        },
    )?;
    Ok(())
}

/// A namespace on the wire.
#[derive(Debug, Serialize)]
pub struct NetnsWire {
    inode: u64,
    pid: Option<u32>,
    comm: Option<String>,
    name: Option<String>,
    container: Option<ContainerWire>,
}

/// A process's container on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerWire {
    runtime: &'static str,
    id: String,
    name: Option<String>,
    pod_uid: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
}

impl From<&Container> for ContainerWire {
    fn from(c: &Container) -> ContainerWire {
        ContainerWire {
            runtime: c.runtime.as_str(),
            id: c.id.clone(),
            name: c.name.clone(),
            pod_uid: c.pod_uid.clone(),
            pod: c.pod.clone(),
            namespace: c.namespace.clone(),
        }
    }
}

/// `container docker/api, pod shop/api-0`, or empty for no container.
pub fn container_text(c: Option<&Container>) -> String {
    let Some(c) = c else { return String::new() };
    let kind = if c.runtime == Runtime::SystemdService {
        "service"
    } else {
        "container"
    };
    let mut t = format!(", {kind} {}", report::escape(&c.label()));
    if let Some(p) = c.pod_label() {
        t.push_str(&format!(", pod {}", report::escape(&p)));
    }
    t
}

impl NetnsWire {
    /// With the container of the namespace's process.
    pub fn with_container(mut self, c: Option<&Container>) -> NetnsWire {
        self.container = c.map(Into::into);
        self
    }
}

impl From<&NetnsLabel> for NetnsWire {
    fn from(l: &NetnsLabel) -> NetnsWire {
        NetnsWire {
            inode: l.inode,
            pid: l.pid,
            comm: l.comm.clone(),
            name: l.name.clone(),
            container: None,
        }
    }
}

/// An owner on the wire.
#[derive(Debug, Serialize)]
pub struct OwnerWire {
    pid: u32,
    comm: String,
    fd: i32,
    container: Option<ContainerWire>,
}

/// The `socket` line (also embedded in `kill` lines).
#[derive(Debug, Serialize)]
pub struct SocketWire {
    netns: NetnsWire,
    family: &'static str,
    state: &'static str,
    local: String,
    peer: String,
    port: u16,
    uid: u32,
    inode: u32,
    cookie: Option<u64>,
    time_wait_left_ms: Option<u32>,
    owners: Vec<OwnerWire>,
    owner_status: &'static str,
    consequence: String,
}

/// `found`, `unknown` or `none`.
pub fn owner_status(l: &Loop) -> &'static str {
    if !l.owners.is_empty() {
        "found"
    } else if l.has_inode() {
        "unknown"
    } else {
        "none"
    }
}

impl From<&Loop> for SocketWire {
    fn from(l: &Loop) -> SocketWire {
        let s = &l.socket;
        SocketWire {
            netns: (&l.netns).into(),
            family: if s.local.is_ipv4() { "ipv4" } else { "ipv6" },
            state: s.state.name(),
            local: report::addr(s.local),
            peer: report::addr(s.peer),
            port: l.port(),
            uid: s.uid,
            inode: s.inode,
            cookie: (s.cookie != [0, 0]).then(|| s.cookie()),
            time_wait_left_ms: l.is_time_wait().then_some(s.expires_ms),
            owners: l
                .owners
                .iter()
                .map(|o| OwnerWire {
                    pid: o.pid,
                    comm: o.comm.clone(),
                    fd: o.fd,
                    container: None,
                })
                .collect(),
            owner_status: owner_status(l),
            consequence: consequence(l),
        }
    }
}

impl SocketWire {
    /// Fills in the containers of the owners and of the namespace's
    /// process, from the scan's lookup.
    pub fn with_containers(mut self, containers: &BTreeMap<u32, Container>) -> SocketWire {
        let of = |pid: u32| containers.get(&pid).map(ContainerWire::from);
        for o in &mut self.owners {
            o.container = of(o.pid);
        }
        self.netns.container = self.netns.pid.and_then(of);
        self
    }
}

#[derive(Debug, Serialize)]
struct SkippedWire {
    netns: NetnsWire,
    reason: String,
}

#[derive(Debug, Serialize)]
struct SummaryWire {
    source: &'static str,
    fallback: Option<String>,
    owners_source: Option<&'static str>,
    owners_fallback: Option<String>,
    sockets_seen: u64,
    loops_found: usize,
    owners_unknown: u64,
    processes_unreadable: u64,
    namespaces_scanned: usize,
    namespaces_skipped: Vec<SkippedWire>,
    netns_unreadable_pids: u64,
    namespaces_vanished: u64,
    shield_off: Vec<UnshieldedWire>,
}

#[derive(Debug, Serialize)]
struct UnshieldedWire {
    netns: NetnsWire,
    exposed_ports: Vec<u16>,
}

/// `python3 (pid 12456, fd 3)`.
pub fn owner_text(o: &Owner) -> String {
    let comm = if o.comm.is_empty() {
        "?".into()
    } else {
        report::escape(&o.comm)
    };
    format!("{comm} (pid {}, fd {})", o.pid, o.fd)
}

/// The one-line description of a loop: state, 4-tuple, uid, inode, cookie.
pub fn loop_line(l: &Loop) -> String {
    let s = &l.socket;
    let mut line = format!(
        "{:<11} {} -> {}  uid {}  inode {}",
        s.state.name(),
        s.local,
        s.peer,
        s.uid,
        s.inode
    );
    if s.cookie != [0, 0] {
        line.push_str(&format!("  cookie {}", s.cookie()));
    }
    line
}

/// Who holds it, in words.
pub fn owners_text(l: &Loop, r: &ScanReport) -> String {
    if !l.owners.is_empty() {
        let v: Vec<String> = l
            .owners
            .iter()
            .map(|o| {
                format!(
                    "{}{}",
                    owner_text(o),
                    container_text(r.containers.get(&o.pid))
                )
            })
            .collect();
        return format!("held by {}", v.join(", "));
    }
    if !l.has_inode() {
        return "no process holds it: closed by its owner, it waits out TIME-WAIT".into();
    }
    if r.owner_lookup.is_none() {
        return "owner not looked up".into();
    }
    if r.processes_unreadable > 0 {
        "owner unknown: held by a process this user cannot read (run as root)".into()
    } else {
        "owner unknown: no process of this PID namespace holds it (orphaned while closing, \
         or held in another PID namespace)"
            .into()
    }
}

fn source_text(r: &ScanReport) -> &'static str {
    match r.source {
        SourceUsed::Netlink => "sock_diag netlink",
        SourceUsed::Proc => "/proc/net/tcp and tcp6",
    }
}

/// Notes shared by scan and kill: fallback, unknown owners, skipped
/// namespaces.
pub fn notes(r: &ScanReport, out: &mut dyn Write) -> io::Result<()> {
    if let Some(why) = &r.fallback {
        writeln!(
            out,
            "note: sock_diag netlink unavailable ({why}); read /proc/net/tcp and /proc/net/tcp6 instead"
        )?;
    }
    if r.owners_unknown > 0 {
        if r.processes_unreadable > 0 {
            writeln!(
                out,
                "note: owners unknown for {} socket(s): {} process(es) could not be read (run as root)",
                r.owners_unknown, r.processes_unreadable
            )?;
        } else if r.owner_lookup.is_some() {
            writeln!(
                out,
                "note: owners unknown for {} socket(s): no process of this PID namespace holds them",
                r.owners_unknown
            )?;
        }
    }
    for s in &r.skipped {
        writeln!(
            out,
            "note: skipped namespace {}: {}",
            report::escape(&s.netns.to_string()),
            report::escape(&s.reason)
        )?;
    }
    for u in &r.unshielded {
        let ports: Vec<String> = u.exposed_ports.iter().map(|p| p.to_string()).collect();
        writeln!(
            out,
            "note: the shield is off in namespace {}, whose listening port(s) {} lie in the \
             ephemeral range: their clients can loop while they are down \
             (`tcploop shield on` prevents it)",
            report::escape(&u.netns.to_string()),
            ports.join(", ")
        )?;
    }
    if r.netns_unreadable_pids > 0 {
        writeln!(
            out,
            "note: the namespaces of {} process(es) could not be read (permission denied; \
             root can read more): some namespaces may be missing",
            r.netns_unreadable_pids
        )?;
    }
    Ok(())
}

/// `--verbose`: where the socket table and the owners came from.
fn verbose(r: &ScanReport, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "socket table: {}", source_text(r))?;
    let o = r.owner_lookup.as_ref();
    match r.owners_source {
        None => writeln!(out, "owners: not looked up (--no-owners)")?,
        Some(OwnerSourceUsed::Bpf) => writeln!(
            out,
            "owners: in-kernel BPF task_file iterator ({})",
            match o {
                Some(o) if o.kernel_passes > 0 =>
                    format!("{} open files visited", report::thousands(o.fds_read)),
                _ => "loaded; no loop needed an owner".to_string(),
            }
        )?,
        Some(OwnerSourceUsed::Proc) => {
            match o {
                Some(o) => writeln!(
                    out,
                    "owners: /proc/PID/fd walk ({} processes read, {} fds read, {} not readable, \
                     {} exited during the walk)",
                    report::thousands(o.processes_read),
                    report::thousands(o.fds_read),
                    o.processes_denied + o.processes_failed,
                    o.processes_vanished
                )?,
                None => writeln!(out, "owners: /proc/PID/fd walk (no loop needed one)")?,
            }
            if let Some(why) = &r.owners_fallback {
                writeln!(out, "owners: BPF not used: {}", report::escape(why))?;
            }
        }
    }
    Ok(())
}

fn human(r: &ScanReport, view: &View, out: &mut dyn Write) -> io::Result<()> {
    let many_ns = view.all_netns;
    let mut last_ns = None;
    for l in &r.loops {
        if many_ns && last_ns != Some(l.netns.inode) {
            let c = l.netns.pid.and_then(|p| r.containers.get(&p));
            writeln!(
                out,
                "namespace {}{}:",
                report::escape(&l.netns.to_string()),
                container_text(c)
            )?;
            last_ns = Some(l.netns.inode);
        }
        writeln!(out, "LOOP {}", loop_line(l))?;
        writeln!(out, "     {}", owners_text(l, r))?;
        let all = if l.netns.is_own() { "" } else { " --all-netns" };
        let fix = if l.is_time_wait() {
            format!(
                "; `tcploop kill --port {}{all} --yes` frees it now",
                l.port()
            )
        } else {
            format!("; free it: tcploop kill --port {}{all} --yes", l.port())
        };
        writeln!(out, "     {}{fix}", consequence(l))?;
    }
    let scope = if many_ns {
        format!(" in {} network namespaces", r.namespaces.len())
    } else {
        String::new()
    };
    let filter = view
        .port
        .map(|p| format!(" on port {p}"))
        .unwrap_or_default();
    match r.loops.len() {
        0 => writeln!(
            out,
            "No self-connected socket{filter} among {} TCP sockets{scope} ({}).",
            report::thousands(r.sockets_seen),
            source_text(r)
        )?,
        n => writeln!(
            out,
            "{n} self-connected socket{}{filter} among {} TCP sockets{scope} ({}).",
            if n == 1 { "" } else { "s" },
            report::thousands(r.sockets_seen),
            source_text(r)
        )?,
    }
    notes(r, out)
}

/// What the loop does to its port, in words.
fn consequence(l: &Loop) -> String {
    let p = l.port();
    let a = l.socket.local;
    if l.socket.state == TcpState::Close {
        return format!(
            "port {p} is held until the owner closes this socket (the connection was \
             aborted, the socket is still open): a server binding {a} gets EADDRINUSE"
        );
    }
    match l.held_for() {
        Some(d) => format!(
            "port {p} is held for at most {} s more (TIME-WAIT of a closed loop): \
             a server binding {a} gets EADDRINUSE until then",
            d.as_secs().max(1)
        ),
        None => format!(
            "port {p} is held: a server binding {a} gets EADDRINUSE, \
             and the holder reads back its own bytes"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Socket, TcpState};
    use crate::scan::Unshielded;

    fn own_ns() -> NetnsLabel {
        NetnsLabel {
            inode: 4026531840,
            pid: None,
            comm: None,
            name: None,
            path: None,
        }
    }

    fn a_loop(state: TcpState, owners: Vec<Owner>) -> Loop {
        let mut socket = Socket::fixture(state, "127.0.0.1:40004", "127.0.0.1:40004");
        socket.inode = 9771884;
        socket.cookie = [28, 0];
        socket.uid = 1000;
        if state == TcpState::TimeWait {
            socket.inode = 0;
            socket.expires_ms = 59200;
        }
        Loop {
            socket,
            owners,
            netns: own_ns(),
        }
    }

    fn report(loops: Vec<Loop>) -> ScanReport {
        ScanReport {
            loops,
            sockets_seen: 4023,
            owners_unknown: 0,
            processes_unreadable: 0,
            owner_lookup: None,
            owners_source: Some(OwnerSourceUsed::Proc),
            owners_fallback: None,
            source: SourceUsed::Netlink,
            fallback: None,
            namespaces: vec![own_ns()],
            skipped: vec![],
            netns_unreadable_pids: 0,
            netns_vanished: 0,
            containers: BTreeMap::new(),
            unshielded: vec![],
        }
    }

    fn text(format: Format, r: &ScanReport, view: &View) -> String {
        let mut out = vec![];
        render(&mut out, format, r, view).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn human_text_of_a_held_loop_names_owner_consequence_and_fix() {
        let owner = Owner {
            pid: 12456,
            comm: "python3".into(),
            fd: 3,
            container: None,
        };
        let r = report(vec![a_loop(TcpState::Established, vec![owner])]);
        assert_eq!(
            text(Format::Human, &r, &View::default()),
            "LOOP ESTABLISHED 127.0.0.1:40004 -> 127.0.0.1:40004  uid 1000  inode 9771884  cookie 28\n\
             \x20    held by python3 (pid 12456, fd 3)\n\
             \x20    port 40004 is held: a server binding 127.0.0.1:40004 gets EADDRINUSE, and the \
             holder reads back its own bytes; free it: tcploop kill --port 40004 --yes\n\
             1 self-connected socket among 4,023 TCP sockets (sock_diag netlink).\n"
        );
    }

    #[test]
    fn human_text_of_nothing_found_says_where_it_looked() {
        let r = report(vec![]);
        let view = View {
            port: Some(40004),
            ..View::default()
        };
        assert_eq!(
            text(Format::Human, &r, &view),
            "No self-connected socket on port 40004 among 4,023 TCP sockets (sock_diag netlink).\n"
        );
    }

    #[test]
    fn human_text_of_a_time_wait_loop_says_no_process_holds_it() {
        let r = report(vec![a_loop(TcpState::TimeWait, vec![])]);
        let t = text(Format::Human, &r, &View::default());
        assert!(t.starts_with("LOOP TIME-WAIT   127.0.0.1:40004"), "{t}");
        assert!(
            t.contains("no process holds it: closed by its owner, it waits out TIME-WAIT"),
            "{t}"
        );
        assert!(t.contains("held for at most 59 s more"), "{t}");
        assert!(
            t.contains("`tcploop kill --port 40004 --yes` frees it now"),
            "{t}"
        );
    }

    #[test]
    fn human_text_escapes_names_from_the_system() {
        let owner = Owner {
            pid: 7,
            comm: "evil\x1b[2J\nLOOP".into(),
            fd: 3,
            container: None,
        };
        let mut r = report(vec![a_loop(TcpState::Established, vec![owner])]);
        r.unshielded = vec![Unshielded {
            netns: NetnsLabel {
                inode: 4026532000,
                pid: Some(9),
                comm: Some("x\x1b]0;t\x07".into()),
                name: None,
                path: Some("/proc/9/ns/net".into()),
            },
            exposed_ports: vec![40004],
        }];
        let t = text(Format::Human, &r, &View::default());
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
        assert!(
            t.contains("held by evil\\x1b[2J\\nLOOP (pid 7, fd 3)"),
            "{t}"
        );
        assert!(t.contains("(pid 9 x\\x1b]0;t\\x07)"), "{t}");
    }

    #[test]
    fn json_has_a_socket_line_a_loop_and_a_summary() {
        let r = report(vec![a_loop(TcpState::TimeWait, vec![])]);
        let t = text(Format::Json, &r, &View::default());
        let lines: Vec<serde_json::Value> = t
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            serde_json::json!({"type": "socket", "data": {
                "netns": {"inode": 4026531840u64, "pid": null, "comm": null, "name": null,
                          "container": null},
                "family": "ipv4", "state": "TIME-WAIT", "local": "127.0.0.1:40004",
                "peer": "127.0.0.1:40004", "port": 40004, "uid": 1000, "inode": 0,
                "cookie": 28, "time_wait_left_ms": 59200, "owners": [],
                "owner_status": "none",
                "consequence": "port 40004 is held for at most 59 s more (TIME-WAIT of a closed \
                                loop): a server binding 127.0.0.1:40004 gets EADDRINUSE until then"
            }})
        );
        assert_eq!(lines[1]["type"], "summary");
        assert_eq!(lines[1]["data"]["loops_found"], 1);
        assert_eq!(lines[1]["data"]["sockets_seen"], 4023);
        assert_eq!(lines[1]["data"]["source"], "netlink");
        assert_eq!(lines[1]["data"]["owners_source"], "proc");
        assert_eq!(lines[1]["data"]["shield_off"], serde_json::json!([]));
    }

    #[test]
    fn consequences_in_words() {
        let mut l = Loop {
            socket: Socket::fixture(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:40004"),
            owners: vec![],
            netns: own_ns(),
        };
        assert_eq!(
            consequence(&l),
            "port 40004 is held: a server binding 127.0.0.1:40004 gets EADDRINUSE, and the \
             holder reads back its own bytes"
        );
        l.socket.state = TcpState::TimeWait;
        l.socket.expires_ms = 59_200;
        assert_eq!(l.held_for(), Some(std::time::Duration::from_millis(59_200)));
        assert_eq!(
            consequence(&l),
            "port 40004 is held for at most 59 s more (TIME-WAIT of a closed loop): a server \
             binding 127.0.0.1:40004 gets EADDRINUSE until then"
        );
        l.socket.state = TcpState::Close;
        assert!(consequence(&l).contains("until the owner closes this socket"));
    }
}
