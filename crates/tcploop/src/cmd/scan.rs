//! `tcploop scan`: every self-connected TCP socket of this network namespace
//! (or of every namespace, `--all-netns`), with the processes holding it.
//!
//! JSON Lines (`--json`):
//! - one line of type `socket` per loop, data
//!   `{"netns": {"inode": 4026531840, "pid": 1234|null, "comm": "python3"|null, "name": "blue"|null},
//!     "family": "ipv4"|"ipv6", "state": "ESTABLISHED", "local": "127.0.0.1:40004",
//!     "peer": "127.0.0.1:40004", "port": 40004, "uid": 0, "inode": 9771884,
//!     "cookie": 28|null (null when read from /proc), "time_wait_left_ms": 59200|null,
//!     "owners": [{"pid": 1234, "comm": "python3", "fd": 3}],
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

use std::io::Write;

use serde::Serialize;
use tcploop::owners::{Owner, OwnerSource, OwnerSourceUsed};
use tcploop::report;
use tcploop::scan::{self, Loop, NetnsLabel, ScanOptions, ScanReport, Source};

use crate::exit::Exit;

const AFTER_HELP: &str = "\
A loop is a socket whose local address and port equal its peer's: a client
that connected to itself. While it lives, its port is held (a server binding
it gets EADDRINUSE); closed, it waits out TIME-WAIT (up to 60 s) and still
blocks the port. `tcploop kill` destroys loops.

Owners: as root on a kernel with BTF, a BPF iterator walks every process's
open files in the kernel (one pass, about 0.2 to 0.6 us a file, loaded while
the socket table is read); elsewhere /proc/PID/fd is read. Both look only
for the loops found and name every process holding one. Reading other
users' processes from /proc needs root: those are counted as unknown, never
dropped.

Exit codes: 0 no loop, 1 loops found, 2 error.

Examples:
  tcploop scan
  tcploop scan --port 40004 --json
  tcploop scan --owners proc --verbose
  sudo tcploop scan --all-netns";

/// Arguments of `tcploop scan`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Only loops on this port
    #[arg(long, value_name = "PORT", value_parser = super::parse_port)]
    pub port: Option<u16>,
    /// Where to read the socket table: sock_diag netlink (falls back to
    /// /proc when unavailable, and says so), or /proc/net/tcp{,6}
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// Scan every network namespace of the host (root): each distinct
    /// /proc/*/ns/net and /run/netns/*
    #[arg(long)]
    pub all_netns: bool,
    /// Do not look up the processes holding the loops
    #[arg(long, conflicts_with = "owners")]
    pub no_owners: bool,
    /// Where to find the processes holding the loops: a BPF task_file
    /// iterator in the kernel (root, BTF), or /proc/PID/fd; auto uses BPF
    /// where it loads and says why not otherwise (--verbose)
    #[arg(long, value_enum, default_value_t = OwnersArg::Auto)]
    pub owners: OwnersArg,
    /// Also say where the socket table and the owners came from (and why
    /// BPF was not used, when it was not)
    #[arg(long, short)]
    pub verbose: bool,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// `--source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// netlink, or /proc if netlink is unavailable
    Auto,
    /// sock_diag netlink only
    Netlink,
    /// /proc/net/tcp and /proc/net/tcp6
    Proc,
}

impl From<SourceArg> for Source {
    fn from(s: SourceArg) -> Source {
        match s {
            SourceArg::Auto => Source::Auto,
            SourceArg::Netlink => Source::Netlink,
            SourceArg::Proc => Source::Proc,
        }
    }
}

/// `--owners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OwnersArg {
    /// bpf where it loads, else proc
    Auto,
    /// the /proc/PID/fd walk
    Proc,
    /// the in-kernel task_file iterator only (an error where it cannot load)
    Bpf,
}

impl From<OwnersArg> for OwnerSource {
    fn from(s: OwnersArg) -> OwnerSource {
        match s {
            OwnersArg::Auto => OwnerSource::Auto,
            OwnersArg::Proc => OwnerSource::Proc,
            OwnersArg::Bpf => OwnerSource::Bpf,
        }
    }
}

/// A namespace on the wire.
#[derive(Debug, Serialize)]
pub struct NetnsWire {
    inode: u64,
    pid: Option<u32>,
    comm: Option<String>,
    name: Option<String>,
}

impl From<&NetnsLabel> for NetnsWire {
    fn from(l: &NetnsLabel) -> NetnsWire {
        NetnsWire {
            inode: l.inode,
            pid: l.pid,
            comm: l.comm.clone(),
            name: l.name.clone(),
        }
    }
}

/// An owner on the wire.
#[derive(Debug, Serialize)]
pub struct OwnerWire {
    pid: u32,
    comm: String,
    fd: i32,
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
                })
                .collect(),
            owner_status: owner_status(l),
            consequence: l.consequence(),
        }
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

/// The options of a scan, from the arguments shared by scan and kill.
pub fn options(port: Option<u16>, source: SourceArg, all_netns: bool) -> ScanOptions {
    ScanOptions {
        source: source.into(),
        port,
        no_owners: false,
        owners: OwnerSource::Auto,
        all_netns,
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let mut opts = options(args.port, args.source, args.all_netns);
    opts.no_owners = args.no_owners;
    opts.owners = args.owners.into();
    let r = scan::scan(&opts)?;
    if args.json {
        for l in &r.loops {
            report::json_line(out, "socket", &SocketWire::from(l))?;
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
    } else {
        human(&r, &opts, out)?;
        if args.verbose {
            verbose(&r, out)?;
        }
    }
    Ok(if r.loops.is_empty() {
        Exit::Ok
    } else {
        Exit::Found
    })
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
        let v: Vec<String> = l.owners.iter().map(owner_text).collect();
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
        scan::SourceUsed::Netlink => "sock_diag netlink",
        scan::SourceUsed::Proc => "/proc/net/tcp and tcp6",
    }
}

/// Notes shared by scan and kill: fallback, unknown owners, skipped
/// namespaces.
pub fn notes(r: &ScanReport, out: &mut dyn Write) -> std::io::Result<()> {
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
            report::escape(&s.netns.describe()),
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
            u.netns.describe(),
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
fn verbose(r: &ScanReport, out: &mut dyn Write) -> std::io::Result<()> {
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

fn human(r: &ScanReport, opts: &ScanOptions, out: &mut dyn Write) -> std::io::Result<()> {
    let many_ns = opts.all_netns;
    let mut last_ns = None;
    for l in &r.loops {
        if many_ns && last_ns != Some(l.netns.inode) {
            writeln!(out, "namespace {}:", report::escape(&l.netns.describe()))?;
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
        writeln!(out, "     {}{fix}", l.consequence())?;
    }
    let scope = if many_ns {
        format!(" in {} network namespaces", r.namespaces.len())
    } else {
        String::new()
    };
    let filter = opts
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
