//! Finding and destroying TCP loops on a live host: the engine of
//! `tcploop scan` and `tcploop kill`.
//!
//! A loop is a socket whose local address and port equal its peer's
//! ([`tcploop_guard::is_loop`]). A normal loopback connection shows up as
//! two sockets with swapped 4-tuples; a loop is one socket, alone, talking
//! to itself. While it lives, its port is held: a server that (re)starts on
//! that port gets `EADDRINUSE`. After its owner closes it gracefully it
//! stays in TIME-WAIT (60 s) and still blocks a `bind()` of the port.
//!
//! [`scan`] reads every TCP socket of the network namespace (IPv4 and IPv6,
//! all states) from the sock_diag netlink dump, or from `/proc/net/tcp{,6}`
//! when netlink is unavailable ([`Source`]), keeps the loops, and looks up
//! the processes holding them ([`crate::owners`]): where BPF is allowed, a
//! kernel iterator (loaded while the dump runs) walks every process's fds
//! in one pass; elsewhere `/proc/PID/fd` is read; either looks only for the
//! loops' inodes ([`ScanOptions::owners`]). With
//! [`ScanOptions::all_netns`] it does the same in every network namespace
//! of the host, entered with `setns(2)`.
//!
//! [`kill`] destroys one loop with `SOCK_DESTROY` (what `ss -K` does): the
//! kernel aborts the socket, its owner gets `ECONNABORTED` and the port is
//! free at once (unless the owner had `bind()`ed it explicitly: then it is
//! free when the owner closes the socket). Right before, the socket is
//! looked up again by its exact 4-tuple and cookie, so that a socket that
//! is not a loop, or one that took the place of a vanished loop, is never
//! touched; the kernel checks the same 4-tuple and cookie once more.
//!
//! ```no_run
//! use tcploop::scan::{scan, kill, ScanOptions};
//! let report = scan(&ScanOptions::default()).unwrap();
//! for l in &report.loops {
//!     println!("{} in {}: {:?}", l.socket.local, l.netns, l.owners);
//!     let killed = kill(l).unwrap();
//!     println!("{killed:?}");
//! }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::container::Container;
use crate::model::{Socket, TcpState};
use crate::owners::{self, InKernel, InKernelError, OwnerSource, OwnerSourceUsed, Owners, Search};
use crate::ports::FactsError;
use crate::sys::diag::{self, DiagError, DiagSocketFd, Family};
use crate::sys::netns::{self, NetnsError};
use crate::sys::procfd::Proc;
use crate::sys::procnet::{self, ProcNetError};
use crate::sys::tcpdiag;

/// Where the socket table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// sock_diag netlink, falling back to `/proc/net/tcp{,6}` when netlink
    /// is unavailable (the report says so).
    #[default]
    Auto,
    /// sock_diag netlink only: an error if unavailable.
    Netlink,
    /// `/proc/net/tcp` and `/proc/net/tcp6` only (no socket cookies).
    Proc,
}

/// The source that was really used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceUsed {
    /// The sock_diag netlink dump.
    Netlink,
    /// `/proc/net/tcp` and `/proc/net/tcp6`.
    Proc,
}

impl SourceUsed {
    /// `netlink` or `proc`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceUsed::Netlink => "netlink",
            SourceUsed::Proc => "proc",
        }
    }
}

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Where the socket table comes from.
    pub source: Source,
    /// Only loops on this port.
    pub port: Option<u16>,
    /// Skip the owner lookup (the loops are still reported).
    pub no_owners: bool,
    /// Where to look for owners.
    pub owners: OwnerSource,
    /// Every network namespace of the host, not only the caller's.
    pub all_netns: bool,
}

/// A scan's loops and namespaces are the model's.
pub use crate::model::{Loop, NetnsLabel};

/// A namespace that could not be scanned, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The namespace.
    pub netns: NetnsLabel,
    /// Why (e.g. `setns: Operation not permitted`).
    pub reason: String,
}

/// The outcome of a scan.
#[derive(Debug, Clone)]
pub struct ScanReport {
    /// The loops found, by namespace, then port.
    pub loops: Vec<Loop>,
    /// TCP sockets seen in the socket tables (every namespace scanned).
    pub sockets_seen: u64,
    /// Loops with an inode whose owner was not found.
    pub owners_unknown: u64,
    /// Processes whose fd table could not be read (the likely holders of
    /// the unknown ones).
    pub processes_unreadable: u64,
    /// The owner lookup's details (`None` when skipped or not needed).
    pub owner_lookup: Option<Owners>,
    /// Where owners were looked for (`None` with `no_owners`).
    pub owners_source: Option<OwnerSourceUsed>,
    /// Why the kernel's walk was not used, when [`OwnerSource::Auto`] fell
    /// back to `/proc`.
    pub owners_fallback: Option<String>,
    /// The source used (`Proc` if any namespace fell back).
    pub source: SourceUsed,
    /// Why netlink was not used, when [`Source::Auto`] fell back to /proc.
    pub fallback: Option<String>,
    /// The namespaces scanned.
    pub namespaces: Vec<NetnsLabel>,
    /// The namespaces that could not be scanned (`all_netns` without root).
    pub skipped: Vec<Skipped>,
    /// Processes whose namespace could not be read (`all_netns`): their
    /// namespaces may be missing from both lists.
    pub netns_unreadable_pids: u64,
    /// Namespaces whose process exited between listing and entering
    /// (`all_netns`): not an error, and not scanned.
    pub netns_vanished: u64,
    /// The container (or systemd service) of each owner and of each
    /// namespace's process, by pid ([`crate::container`]); processes in
    /// none are absent.
    pub containers: BTreeMap<u32, Container>,
    /// Namespaces with exposed listeners and no shield (`tcploop shield`).
    pub unshielded: Vec<Unshielded>,
}

/// A namespace scanned where the shield is off while some of its listeners
/// are exposed (their port in the ephemeral range and not reserved): their
/// clients can loop while they are down.
#[derive(Debug, Clone)]
pub struct Unshielded {
    /// The namespace.
    pub netns: NetnsLabel,
    /// Its exposed listening ports.
    pub exposed_ports: Vec<u16>,
}

/// Why a scan failed: one look at the socket tables of a namespace, or of
/// every namespace, by `scan` and `kill` ([`scan`]) or by each poll of a
/// `watch` ([`crate::watch::Scanner`], [`crate::watch::HostScanner`]).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The netlink dump failed and the source was forced to netlink.
    #[error("sock_diag dump failed (--source proc reads /proc/net/tcp instead): {0}")]
    Netlink(#[source] DiagError),
    /// The netlink dump failed where there is no other source (a watch's poll).
    #[error(transparent)]
    Dump(DiagError),
    /// The ephemeral-port facts (`/proc/sys/net/ipv4/ip_local_*`) could not be read.
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The host's network namespaces could not be listed (a watch's
    /// `--all-netns` poll).
    #[error("listing the network namespaces: {0}")]
    Namespaces(#[source] io::Error),
    /// Reading `/proc/net/tcp*` failed.
    #[error("{0}")]
    ProcNet(#[source] ProcNetError),
    /// Both failed.
    #[error("sock_diag dump failed ({netlink}), and so did /proc: {proc}")]
    Both {
        /// The netlink error.
        netlink: DiagError,
        /// The /proc error.
        proc: ProcNetError,
    },
    /// `/proc` could not be listed (owners or namespaces).
    #[error("listing /proc: {0}")]
    Proc(#[source] io::Error),
    /// The kernel's owner walk was asked for and could not be used.
    #[error("--owners bpf: {0}")]
    Bpf(InKernelError),
    /// The own namespace could not be identified.
    #[error("reading /proc/thread-self/ns/net: {0}")]
    OwnNetns(#[source] io::Error),
}

/// The loops among `sockets`, on `port` if given (pure: the whole decision).
pub fn find_loops<'a>(
    sockets: impl IntoIterator<Item = &'a Socket>,
    port: Option<u16>,
) -> Vec<Socket> {
    sockets
        .into_iter()
        .filter(|s| s.is_loop() && port.is_none_or(|p| s.local.port() == p))
        .copied()
        .collect()
}

/// The socket table of one namespace, reduced to its loops.
#[derive(Debug)]
struct NsDump {
    loops: Vec<Socket>,
    /// Listening ports exposed in the range while the shield is off.
    unshielded: Vec<u16>,
    seen: u64,
    used: SourceUsed,
    fallback: Option<String>,
}

/// Reads the socket table of the calling *thread's* namespace. A table
/// that changes during the read can show a socket twice (both the netlink
/// dump and the /proc file resume by position): loops are deduplicated.
///
/// Netlink: one walk of the kernel's TCP tables for both families
/// (`TCPDIAG_GETSOCK`, [`tcpdiag`]), not one per family; without the
/// bound-only sockets (`TCP_BOUND_INACTIVE`, never a loop), whose state
/// alone makes the kernel walk its bind table as well. If the kernel refuses
/// the one-walk request, two dumps of all states.
fn dump_here(source: Source, port: Option<u16>) -> Result<NsDump, ScanError> {
    let netlink = |f: &mut dyn FnMut(&Socket)| {
        let mut delivered = false;
        let states = diag::ALL_STATES & !(TcpState::BoundInactive.bit());
        match tcpdiag::dump_both(states, |s| {
            delivered = true;
            f(s)
        }) {
            Err(_) if !delivered => diag::dump_all(diag::ALL_STATES, f),
            r => r,
        }
    };
    let mut d = dump_with(source, port, netlink, Path::new(procnet::THREAD_NET))?;
    d.loops
        .sort_by_key(|s| (s.family, s.local, s.peer, s.state, s.inode, s.cookie));
    d.loops.dedup();
    if !d.unshielded.is_empty() {
        // The listening ports: keep those exposed, if the shield is off.
        d.unshielded = match crate::ports::EphemeralFacts::read() {
            Ok(f) => d
                .unshielded
                .iter()
                .copied()
                .filter(|p| crate::model::is_exposed_port(&f, *p))
                .collect(),
            Err(_) => vec![],
        };
        d.unshielded.sort_unstable();
        d.unshielded.dedup();
        if !d.unshielded.is_empty() && crate::shield::protection_here().is_some() {
            d.unshielded.clear();
        }
    }
    Ok(d)
}

/// The choice between the sources: `netlink` is the sock_diag dump,
/// `proc_dir` the `net` directory holding `tcp` and `tcp6`.
fn dump_with(
    source: Source,
    port: Option<u16>,
    netlink: impl FnOnce(&mut dyn FnMut(&Socket)) -> Result<(), DiagError>,
    proc_dir: &Path,
) -> Result<NsDump, ScanError> {
    let mut loops = vec![];
    let mut listening = vec![];
    let mut seen = 0u64;
    let mut keep = |s: &Socket| {
        seen += 1;
        if s.state == TcpState::Listen {
            listening.push(s.local.port());
        }
        if s.is_loop() && port.is_none_or(|p| s.local.port() == p) {
            loops.push(*s);
        }
    };
    let netlink_err = if source == Source::Proc {
        None
    } else {
        match netlink(&mut keep) {
            Ok(()) => {
                return Ok(NsDump {
                    loops,
                    unshielded: listening,
                    seen,
                    used: SourceUsed::Netlink,
                    fallback: None,
                })
            }
            Err(e) if source == Source::Netlink => return Err(ScanError::Netlink(e)),
            Err(e) => Some(e),
        }
    };
    // netlink failed part-way, or was not wanted: start over from /proc
    loops.clear();
    listening.clear();
    seen = 0;
    let dir = proc_dir;
    let mut keep = |s: &Socket| {
        seen += 1;
        if s.state == TcpState::Listen {
            listening.push(s.local.port());
        }
        if s.is_loop() && port.is_none_or(|p| s.local.port() == p) {
            loops.push(*s);
        }
    };
    let res = procnet::read(&procnet::file_in(dir, Family::V4), Family::V4, &mut keep)
        .and_then(|()| procnet::read(&procnet::file_in(dir, Family::V6), Family::V6, &mut keep));
    match (res, netlink_err) {
        (Ok(()), e) => Ok(NsDump {
            loops,
            unshielded: listening,
            seen,
            used: SourceUsed::Proc,
            fallback: e.map(|e| e.to_string()),
        }),
        (Err(p), Some(n)) => Err(ScanError::Both {
            netlink: n,
            proc: p,
        }),
        (Err(p), None) => Err(ScanError::ProcNet(p)),
    }
}

/// Scans for loops (see the module documentation).
pub fn scan(opts: &ScanOptions) -> Result<ScanReport, ScanError> {
    let mut report = scan_with_owners(opts)?;
    let pids: Vec<u32> = report
        .loops
        .iter()
        .flat_map(|l| l.owners.iter().map(|o| o.pid).chain(l.netns.pid))
        .chain(report.namespaces.iter().filter_map(|n| n.pid))
        .collect();
    report.containers = crate::container::of_pids(pids);
    Ok(report)
}

/// The dump and the owners (see [`scan`]).
fn scan_with_owners(opts: &ScanOptions) -> Result<ScanReport, ScanError> {
    if opts.no_owners || opts.owners == OwnerSource::Proc {
        let mut report = dump_all(opts)?;
        proc_owners(&mut report, None)?;
        return Ok(report);
    }
    // the iterator loads while the dump runs
    let (report, kernel) = std::thread::scope(|s| {
        let kernel = s.spawn(InKernel::start);
        let report = dump_all(opts);
        let kernel = kernel
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (report, kernel)
    });
    let mut report = report?;
    let inodes = loop_inodes(&report);
    let res = kernel.and_then(|k| k.finish(inodes.iter().copied()));
    match res {
        Ok(o) => {
            report.owners_source = Some(OwnerSourceUsed::Bpf);
            set_owners(&mut report, &inodes, o);
        }
        Err(e) if opts.owners == OwnerSource::Bpf => return Err(ScanError::Bpf(e)),
        Err(e) => proc_owners(&mut report, Some(e.to_string()))?,
    }
    Ok(report)
}

/// The inodes of the loops found (0 for TIME-WAIT ones).
fn loop_inodes(report: &ScanReport) -> Vec<u64> {
    report
        .loops
        .iter()
        .map(|l| u64::from(l.socket.inode))
        .collect()
}

/// Looks up owners with the `/proc` walk (`fallback`: why the kernel's walk
/// was not used), or counts them all unknown with `no_owners`.
fn proc_owners(report: &mut ScanReport, fallback: Option<String>) -> Result<(), ScanError> {
    let inodes = loop_inodes(report);
    if report.owners_source == Some(OwnerSourceUsed::Proc) {
        report.owners_fallback = fallback;
        if inodes.iter().any(|i| *i != 0) {
            // every owner, as the kernel's walk gives: a loop shared after
            // fork() is held by each process
            let o = owners::find_owners(inodes.iter().copied(), Search::AllOwners)
                .map_err(ScanError::Proc)?;
            set_owners(report, &inodes, o);
        }
    } else {
        report.owners_unknown = inodes.iter().filter(|i| **i != 0).count() as u64;
    }
    Ok(())
}

fn set_owners(report: &mut ScanReport, inodes: &[u64], o: Owners) {
    for l in &mut report.loops {
        l.owners = o.of(u64::from(l.socket.inode)).to_vec();
    }
    report.owners_unknown = o.unknown(inodes.iter().copied());
    report.processes_unreadable = o.processes_denied + o.processes_failed;
    report.owner_lookup = Some(o);
}

/// The socket tables of the namespaces asked for, reduced to their loops
/// (no owners yet).
fn dump_all(opts: &ScanOptions) -> Result<ScanReport, ScanError> {
    let own = netns::current().map_err(ScanError::OwnNetns)?;
    let mut report = ScanReport {
        loops: vec![],
        sockets_seen: 0,
        owners_unknown: 0,
        processes_unreadable: 0,
        owner_lookup: None,
        owners_source: (!opts.no_owners).then_some(OwnerSourceUsed::Proc),
        owners_fallback: None,
        source: SourceUsed::Netlink,
        fallback: None,
        namespaces: vec![],
        skipped: vec![],
        netns_unreadable_pids: 0,
        netns_vanished: 0,
        containers: BTreeMap::new(),
        unshielded: vec![],
    };
    let mut found: Vec<(NetnsLabel, NsDump)> = vec![];
    if opts.all_netns {
        let proc = Proc::open().map_err(ScanError::Proc)?;
        let list = netns::list(&proc).map_err(ScanError::Proc)?;
        report.netns_unreadable_pids = list.unreadable_pids;
        for n in &list.found {
            let l = n.label(&proc, own);
            let res = match &l.path {
                None => dump_here(opts.source, opts.port),
                Some(p) => match netns::run_in(p, || dump_here(opts.source, opts.port)) {
                    Ok(r) => r,
                    Err(NetnsError::Open { source, .. })
                        if source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        report.netns_vanished += 1;
                        continue;
                    }
                    Err(e) => {
                        report.skipped.push(Skipped {
                            netns: l,
                            reason: skip_reason(&e),
                        });
                        continue;
                    }
                },
            };
            match res {
                Ok(d) => found.push((l, d)),
                // own namespace: a real error; others: skipped, said why
                Err(e) if l.is_own() => return Err(e),
                Err(e) => report.skipped.push(Skipped {
                    netns: l,
                    reason: e.to_string(),
                }),
            }
        }
    } else {
        let pid = std::process::id();
        let l = NetnsLabel {
            inode: own,
            pid: Some(pid),
            comm: Proc::open().ok().and_then(|p| p.comm(pid)),
            name: None,
            path: None,
        };
        found.push((l, dump_here(opts.source, opts.port)?));
    }
    for (l, d) in found {
        report.sockets_seen += d.seen;
        if d.used == SourceUsed::Proc {
            report.source = SourceUsed::Proc;
        }
        if report.fallback.is_none() {
            report.fallback = d.fallback;
        }
        if !d.unshielded.is_empty() {
            report.unshielded.push(Unshielded {
                netns: l.clone(),
                exposed_ports: d.unshielded,
            });
        }
        report.loops.extend(d.loops.into_iter().map(|socket| Loop {
            socket,
            owners: vec![],
            netns: l.clone(),
        }));
        report.namespaces.push(l);
    }
    report
        .loops
        .sort_by_key(|l| (l.netns.inode, l.port(), l.socket.family, l.socket.inode));
    Ok(report)
}

fn skip_reason(e: &NetnsError) -> String {
    let io = e.io();
    let needs = match (e, io.raw_os_error()) {
        (NetnsError::Open { .. }, Some(libc::EACCES | libc::EPERM)) => {
            ": reading another user's namespace needs root (ptrace rights over its processes)"
        }
        (NetnsError::Setns { .. }, Some(libc::EPERM)) => {
            ": entering it needs CAP_SYS_ADMIN over the user namespace that owns it (run as root)"
        }
        _ => "",
    };
    format!("{e}{needs}")
}

/// Whether the port of a destroyed loop can be bound again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// A server can bind it now.
    Free,
    /// Still held by the destroyed socket itself: its owner had `bind()`ed
    /// the port explicitly, and the kernel keeps that until the owner closes
    /// the socket (which it does on `ECONNABORTED`, if it handles errors).
    HeldUntilOwnerCloses,
    /// Held by other sockets (this many) on the same port.
    HeldByOthers(u64),
    /// Could not be checked.
    Unknown(String),
}

/// What [`kill`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    /// Destroyed, confirmed gone from the socket table.
    Destroyed {
        /// Whether the port can be bound again.
        port: PortState,
        /// Whether a client that reconnects can loop on this port again:
        /// the port is in the namespace's ephemeral range and not reserved
        /// (`None`: the namespace's facts could not be read). Then the
        /// order that works is: reserve the port first, then kill.
        loops_again: Option<bool>,
    },
    /// It was already gone (closed, or TIME-WAIT ended) before the destroy.
    Gone,
    /// The socket found at that 4-tuple is not this loop (another socket,
    /// or no longer self-connected): left alone.
    NotALoop,
    /// Destroyed, yet still in the socket table right after.
    StillThere,
    /// Nothing left to destroy: the connection was already aborted (state
    /// CLOSE) but its owner still has the socket open, bound to the port;
    /// only closing it releases the port.
    AlreadyAborted,
}

/// Why a kill failed.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// `SOCK_DESTROY` answered EPERM.
    #[error(
        "SOCK_DESTROY was refused (EPERM): destroying a socket needs CAP_NET_ADMIN in the user \
         namespace that owns network namespace {0}; run as root (or as root of that user \
         namespace)"
    )]
    Denied(String),
    /// The kernel lacks `CONFIG_INET_DIAG_DESTROY`.
    #[error(
        "SOCK_DESTROY is not supported by this kernel (EOPNOTSUPP): it needs \
         CONFIG_INET_DIAG_DESTROY=y"
    )]
    Unsupported,
    /// Any other netlink failure.
    #[error("{0}")]
    Diag(#[source] DiagError),
    /// The loop's namespace could not be entered.
    #[error("{0}")]
    Netns(#[source] NetnsError),
}

/// What `tcploop kill` did to one loop found.
#[derive(Debug)]
pub enum KillOutcome {
    /// A dry run: it would be destroyed (or, `already_aborted`, it is
    /// aborted already and only its owner closing it frees the port).
    DryRun {
        /// The connection was already aborted (state CLOSE).
        already_aborted: bool,
    },
    /// [`kill`]'s answer.
    Done(Killed),
    /// [`kill`] failed (the error is [`KillRun::error`]): the run stopped
    /// at this loop.
    Failed,
}

/// A scan and what was done to each loop it found, in order; a run that
/// failed stops at the loop that failed (the loops after it have no outcome).
#[derive(Debug)]
pub struct KillRun {
    /// The scan.
    pub scan: ScanReport,
    /// No `--yes`: nothing was destroyed.
    pub dry_run: bool,
    /// One outcome per loop of `scan.loops`, in order, up to the failure.
    pub outcomes: Vec<KillOutcome>,
    /// The error that stopped the run.
    pub error: Option<KillError>,
}

/// The counts of a [`KillRun`] (the `summary` of `tcploop kill`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KillTally {
    /// Destroyed and confirmed gone.
    pub destroyed: u64,
    /// Gone before the destroy.
    pub gone: u64,
    /// No longer a loop: left alone.
    pub not_a_loop: u64,
    /// Destroyed, still in the table.
    pub still_there: u64,
    /// Aborted already, held until the owner closes it.
    pub already_aborted: u64,
    /// Destroyed loops whose port is bindable again.
    pub ports_free: u64,
    /// Destroyed loops whose port is still held.
    pub ports_held: u64,
    /// Destroyed loops whose port could not be checked.
    pub ports_unchecked: u64,
}

impl KillRun {
    /// The counts.
    pub fn tally(&self) -> KillTally {
        let mut t = KillTally::default();
        for o in &self.outcomes {
            let KillOutcome::Done(k) = o else { continue };
            match k {
                Killed::Destroyed { port, .. } => {
                    t.destroyed += 1;
                    match port {
                        PortState::Free => t.ports_free += 1,
                        PortState::Unknown(_) => t.ports_unchecked += 1,
                        _ => t.ports_held += 1,
                    }
                }
                Killed::Gone => t.gone += 1,
                Killed::NotALoop => t.not_a_loop += 1,
                Killed::StillThere => t.still_there += 1,
                Killed::AlreadyAborted => t.already_aborted += 1,
            }
        }
        t
    }

    /// Whether a loop survived a `--yes` run (or, in a dry run, any was found).
    pub fn survivors(&self) -> bool {
        if self.dry_run {
            return !self.scan.loops.is_empty();
        }
        let t = self.tally();
        t.still_there + t.not_a_loop + t.already_aborted > 0
    }
}

/// `tcploop kill`: scans, then destroys each loop found ([`kill`]) unless
/// `dry_run`, stopping at the first failure (which is then in the run).
pub fn scan_and_kill(opts: &ScanOptions, dry_run: bool) -> Result<KillRun, ScanError> {
    let scan = scan(opts)?;
    let mut outcomes = Vec::with_capacity(scan.loops.len());
    let mut error = None;
    for l in &scan.loops {
        if dry_run {
            outcomes.push(KillOutcome::DryRun {
                already_aborted: l.socket.state == TcpState::Close,
            });
            continue;
        }
        match kill(l) {
            Ok(k) => outcomes.push(KillOutcome::Done(k)),
            Err(e) => {
                outcomes.push(KillOutcome::Failed);
                error = Some(e);
                break;
            }
        }
    }
    Ok(KillRun {
        scan,
        dry_run,
        outcomes,
        error,
    })
}

/// Destroys one loop (see the module documentation): looks it up again by
/// its exact 4-tuple and cookie, checks that it still is a loop, destroys
/// it, confirms that it is gone, and checks whether its port can be bound.
pub fn kill(l: &Loop) -> Result<Killed, KillError> {
    if !l.socket.is_loop() {
        return Ok(Killed::NotALoop);
    }
    if l.socket.state == TcpState::Close {
        return Ok(Killed::AlreadyAborted);
    }
    let ns = l.netns.to_string();
    match &l.netns.path {
        None => kill_here(&l.socket, &ns),
        Some(p) => netns::run_in(p, || kill_here(&l.socket, &ns)).map_err(KillError::Netns)?,
    }
}

/// `INET_DIAG_NOCOOKIE`: match on the 4-tuple alone (loops read from /proc).
const NO_COOKIE: [u32; 2] = [!0, !0];

fn kill_here(sock: &Socket, ns: &str) -> Result<Killed, KillError> {
    let map = |e: DiagError| match &e {
        DiagError::Kernel(io) if io.raw_os_error() == Some(libc::EPERM) => {
            KillError::Denied(ns.to_string())
        }
        DiagError::Kernel(io) if io.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            KillError::Unsupported
        }
        _ => KillError::Diag(e),
    };
    let mut nl = DiagSocketFd::open().map_err(map)?;
    let mut wanted = *sock;
    if wanted.cookie == [0, 0] {
        wanted.cookie = NO_COOKIE;
    }
    // the re-check: the same 4-tuple, the same cookie, still a loop
    let Some(now) = nl.get(&wanted).map_err(map)? else {
        return Ok(Killed::Gone);
    };
    if !same_socket(sock, &now) || !now.is_loop() {
        return Ok(Killed::NotALoop);
    }
    match nl.destroy(&now) {
        Ok(()) => {}
        Err(DiagError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(Killed::Gone)
        }
        Err(e) => return Err(map(e)),
    }
    if nl.get(&now).map_err(map)?.is_some() {
        return Ok(Killed::StillThere);
    }
    let loops_again = crate::ports::EphemeralFacts::read()
        .ok()
        .map(|f| crate::model::is_exposed_port(&f, now.local.port()));
    Ok(Killed::Destroyed {
        port: port_state(&now),
        loops_again,
    })
}

/// Whether the socket found again (`now`) is the one scanned (`was`): the
/// same 4-tuple, and the same cookie, or, for sockets read from /proc (no
/// cookie), the same inode: a loop closed and replaced by another socket on
/// the same 4-tuple between the scan and the destroy is left alone.
fn same_socket(was: &Socket, now: &Socket) -> bool {
    now.local == was.local
        && now.peer == was.peer
        && (was.cookie == [0, 0] || now.cookie == was.cookie)
        && (was.inode == 0 || now.inode == was.inode)
}

fn port_state(s: &Socket) -> PortState {
    match diag::bind_probe(s.local, false) {
        Ok(true) => PortState::Free,
        Ok(false) => {
            // who holds it: the destroyed socket itself (explicitly bound,
            // now shown as bound-but-inactive) or others
            let (mut itself, mut others) = (false, 0u64);
            let res = diag::dump_all(diag::ALL_STATES, |d| {
                if d.local.port() == s.local.port() {
                    if s.inode != 0 && d.inode == s.inode {
                        itself = true;
                    } else {
                        others += 1;
                    }
                }
            });
            match res {
                Ok(()) if others == 0 => PortState::HeldUntilOwnerCloses,
                Ok(()) => PortState::HeldByOthers(others),
                Err(e) => PortState::Unknown(format!("bind: EADDRINUSE; dump: {e}")),
            }
        }
        Err(e) => PortState::Unknown(format!("bind {}: {e}", s.local)),
    }
}

/// A socket address for messages: `127.0.0.1:40004`, `[::1]:40004`.
pub fn addr(a: SocketAddr) -> String {
    a.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_from_proc_is_the_same_only_with_the_same_inode() {
        let was = Socket {
            cookie: [0, 0],
            inode: 7,
            ..Socket::fixture(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:40004")
        };
        let now = Socket {
            cookie: [55, 0],
            ..was
        };
        assert!(same_socket(&was, &now));
        let replaced = Socket { inode: 8, ..now };
        assert!(
            !same_socket(&was, &replaced),
            "another socket, same 4-tuple"
        );
        // from netlink: the cookie decides
        let was = Socket {
            cookie: [55, 0],
            ..was
        };
        assert!(!same_socket(
            &was,
            &Socket {
                cookie: [56, 0],
                ..now
            }
        ));
    }

    fn sock(local: &str, peer: &str, st: TcpState) -> Socket {
        Socket {
            inode: 7,
            ..Socket::fixture(st, local, peer)
        }
    }

    #[test]
    fn only_self_connected_sockets_are_loops() {
        let table = [
            sock("127.0.0.1:40004", "127.0.0.1:40004", TcpState::Established),
            // a normal loopback connection: two sockets, swapped
            sock("127.0.0.1:40006", "127.0.0.1:50000", TcpState::Established),
            sock("127.0.0.1:50000", "127.0.0.1:40006", TcpState::Established),
            // same port, other address: not a loop
            sock("127.0.0.1:40008", "127.0.0.2:40008", TcpState::Established),
            // unbound and listening sockets
            sock("0.0.0.0:0", "0.0.0.0:0", TcpState::Close),
            sock("[::]:0", "[::]:0", TcpState::Close),
            sock("0.0.0.0:40010", "0.0.0.0:0", TcpState::Listen),
            sock("[::1]:40012", "[::1]:40012", TcpState::TimeWait),
            sock(
                "[::ffff:127.0.0.1]:40014",
                "[::ffff:127.0.0.1]:40014",
                TcpState::Established,
            ),
        ];
        let loops: Vec<u16> = find_loops(&table, None)
            .iter()
            .map(|s| s.local.port())
            .collect();
        assert_eq!(loops, [40004, 40012, 40014]);
        assert_eq!(find_loops(&table, Some(40012)).len(), 1);
        assert!(find_loops(&table, Some(40006)).is_empty());
    }

    #[test]
    fn a_namespace_label_as_text() {
        let ns = NetnsLabel {
            inode: 1,
            pid: Some(5),
            comm: Some("a".into()),
            name: None,
            path: None,
        };
        assert_eq!(ns.to_string(), "net:[1] (the current one)");
        let other = NetnsLabel {
            path: Some("/proc/5/ns/net".into()),
            name: Some("blue".into()),
            ..ns
        };
        assert_eq!(other.to_string(), "net:[1] \"blue\" (pid 5 a)");
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn netlink_failing_falls_back_to_proc_and_says_why() {
        let dir = std::env::temp_dir().join(format!("tcploop-scan-fb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:9C44 0100007F:9C44 01 00000000:00000000 00:00000000 00000000  1000        0 555 1 0 20 4 30 10 -1\n\
             1: 0100007F:9C48 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 556 1 0 20 4 30 10 -1\n",
        )
        .unwrap();
        // no tcp6: IPv6 off, an empty table
        let refused = || DiagError::Socket(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT));
        // netlink fails after a partial dump: its rows are dropped, /proc is read
        let partial = |f: &mut dyn FnMut(&Socket)| {
            f(&sock(
                "127.0.0.1:40010",
                "127.0.0.1:40010",
                TcpState::Established,
            ));
            Err(refused())
        };
        let d = dump_with(Source::Auto, None, partial, &dir).unwrap();
        assert_eq!(d.used, SourceUsed::Proc);
        assert_eq!(d.seen, 2);
        assert_eq!(d.loops.len(), 1);
        assert_eq!(d.loops[0].local.port(), 40004);
        assert!(d.fallback.unwrap().contains("Protocol not supported"));
        // forced netlink: the error, no fallback
        let fail = |_: &mut dyn FnMut(&Socket)| Err(refused());
        assert!(matches!(
            dump_with(Source::Netlink, None, fail, &dir),
            Err(ScanError::Netlink(_))
        ));
        // forced /proc: netlink is not even tried
        let untouched = |_: &mut dyn FnMut(&Socket)| -> Result<(), DiagError> { panic!() };
        let d = dump_with(Source::Proc, Some(40004), untouched, &dir).unwrap();
        assert_eq!((d.loops.len(), d.fallback), (1, None));
        // both failing: both errors, named
        let e = dump_with(Source::Auto, None, fail, &dir.join("missing")).unwrap_err();
        assert!(matches!(e, ScanError::Both { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_that_is_no_loop_is_never_killed() {
        let l = Loop {
            socket: sock("127.0.0.1:40006", "127.0.0.1:50000", TcpState::Established),
            owners: vec![],
            netns: NetnsLabel {
                inode: 1,
                pid: None,
                comm: None,
                name: None,
                path: None,
            },
        };
        assert_eq!(kill(&l).unwrap(), Killed::NotALoop);
    }
}
