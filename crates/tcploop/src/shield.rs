//! The shield: make the loop impossible for every program of a network
//! namespace, whatever it is written in and however it connects.
//!
//! A self-connect needs its SYN to arrive at its own socket. On `lo` that
//! SYN is recognisable (source address and port equal the destination's),
//! and answering it with RST+ACK, the way a closed port answers, makes the
//! `connect()` fail with `ECONNREFUSED`, exactly as it fails for every
//! other port where nothing listens. Two mechanisms do it:
//!
//! - [`Mechanism::Bpf`]: a tc classifier on `lo` (`bpf/shield.bpf.c`) that
//!   rewrites the SYN in place; needs CAP_BPF and CAP_NET_ADMIN (root on
//!   the host). See [`crate::sys::bpf::shield`] for where it is pinned.
//! - [`Mechanism::Iptables`]: an iptables rule pair with a classic-BPF match
//!   and `REJECT --reject-with tcp-reset`; needs CAP_NET_ADMIN over the
//!   namespace only (root of a rootless container). See
//!   [`crate::sys::iptables`].
//!
//! Both act per network namespace (each container has its own `lo`), and
//! both stay after the command exits. [`status_here`] is what other
//! commands ask (`check` and `audit` report `prevented` when it is on).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::sys::bpf::shield as bpf;
/// How the bpf mechanism attaches (tcx, or cls_bpf before Linux 6.6).
pub use crate::sys::bpf::shield::Attach as BpfAttach;
use crate::sys::bpf::shield_cgroup as cgroup;
use crate::sys::bpf::Refusal;
use crate::sys::iptables::{self, Family, IptablesError};
use crate::sys::netns::{self, NetnsError};
use crate::sys::procfd::Proc;

/// How the shield is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// The tc classifier on `lo`.
    Bpf,
    /// The iptables rule pair.
    Iptables,
}

impl Mechanism {
    /// `bpf` or `iptables`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Bpf => "bpf",
            Mechanism::Iptables => "iptables",
        }
    }
}

/// One mechanism found active in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    /// Which.
    pub mechanism: Mechanism,
    /// How it is attached: `tcx` or `tc` (bpf); `rules` (iptables).
    pub attach: &'static str,
    /// When it was put in place.
    pub since: Option<SystemTime>,
    /// IPv4 self-connect SYNs turned away (`None`: unreadable).
    pub refused_v4: Option<u64>,
    /// IPv6 self-connect SYNs turned away.
    pub refused_v6: Option<u64>,
    /// IPv4 or IPv6 half missing (iptables: one rule of the pair only).
    pub partial: bool,
    /// Where it lives: the pin directory (bpf).
    pub pinned: Option<PathBuf>,
}

/// The shield of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShieldState {
    /// The mechanisms active (usually none or one).
    pub active: Vec<Active>,
    /// What could not be looked at (each a one-line reason): the state may
    /// then be on although `active` is empty.
    pub unknown: Vec<String>,
}

impl ShieldState {
    /// Whether any mechanism protects the namespace (a half iptables pair
    /// counts as off: one family can still loop).
    pub fn is_on(&self) -> bool {
        self.active.iter().any(|a| !a.partial)
    }

    /// The mechanism that protects it (the first complete one).
    pub fn mechanism(&self) -> Option<Mechanism> {
        self.active.iter().find(|a| !a.partial).map(|a| a.mechanism)
    }

    /// SYNs turned away, IPv4 and IPv6, over all mechanisms.
    pub fn refused(&self) -> (u64, u64) {
        self.active.iter().fold((0, 0), |(a, b), x| {
            (a + x.refused_v4.unwrap_or(0), b + x.refused_v6.unwrap_or(0))
        })
    }
}

/// The shield of the calling thread's namespace. Never fails: what cannot
/// be read is listed in [`ShieldState::unknown`].
pub fn status_here() -> ShieldState {
    let mut st = ShieldState::default();
    match bpf::status_here() {
        Ok(Some(a)) => st.active.push(from_bpf(a)),
        Ok(None) => {}
        Err(r) => st.unknown.push(format!("bpf: {r}")),
    }
    match iptables_state() {
        Ok(Some(a)) => st.active.push(a),
        Ok(None) => {}
        Err(IptablesError::Missing(_)) => {}
        Err(e) => st.unknown.push(format!("iptables: {e}")),
    }
    st
}

/// Whether the caller's namespace is protected, and how (`bpf (tcx)`,
/// `iptables (rules)`), for the other commands' predictions. Looks at the
/// bpf pins first and runs iptables only when they say off.
pub fn protection_here() -> Option<String> {
    if let Ok(Some(a)) = bpf::status_here() {
        return Some(format!("bpf ({})", a.attach.name()));
    }
    match iptables_state() {
        Ok(Some(a)) if !a.partial => Some("iptables (rules)".to_string()),
        _ => None,
    }
}

fn from_bpf(a: bpf::Attached) -> Active {
    Active {
        mechanism: Mechanism::Bpf,
        attach: a.attach.name(),
        since: a.since,
        refused_v4: a.counters.map(|c| c.refused_v4),
        refused_v6: a.counters.map(|c| c.refused_v6),
        partial: false,
        pinned: Some(a.dir),
    }
}

/// Our iptables rules, both families; `None` when there are none.
fn iptables_state() -> Result<Option<Active>, IptablesError> {
    let v4 = iptables::list(Family::V4)?;
    let v6 = match iptables::list(Family::V6) {
        Ok(v) => v,
        Err(IptablesError::Missing(_)) => vec![],
        Err(e) => return Err(e),
    };
    if v4.is_empty() && v6.is_empty() {
        return Ok(None);
    }
    let since = v4
        .iter()
        .chain(&v6)
        .filter_map(|f| f.since)
        .min()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    Ok(Some(Active {
        mechanism: Mechanism::Iptables,
        attach: "rules",
        since,
        refused_v4: Some(v4.iter().map(|f| f.packets).sum()),
        refused_v6: Some(v6.iter().map(|f| f.packets).sum()),
        partial: v4.is_empty() || v6.is_empty(),
        pinned: None,
    }))
}

/// What `on` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnOutcome {
    /// Put in place now.
    Attached(Active),
    /// It was on already: nothing changed.
    AlreadyOn(Active),
}

/// Why the shield could not be turned on (or off).
#[derive(Debug, thiserror::Error)]
pub enum ShieldError {
    /// BPF was asked for and refused.
    #[error("the bpf shield: {0}")]
    Bpf(#[source] Refusal),
    /// iptables was asked for and failed.
    #[error("the iptables shield: {0}")]
    Iptables(#[source] IptablesError),
    /// Neither mechanism can be used here.
    #[error(
        "no shield mechanism works here: bpf: {bpf}; iptables: {iptables}. Without either, \
         reserve the exposed ports (`tcploop audit --apply`) or start clients through \
         `tcploop run`"
    )]
    Neither {
        /// Why BPF was refused.
        bpf: Refusal,
        /// Why iptables failed.
        iptables: IptablesError,
    },
}

/// Turns the shield on in the calling thread's namespace: BPF first, the
/// iptables rules where BPF is refused; `force` picks one. A second `on` is
/// a no-op (whichever mechanism is on already counts, unless `force` names
/// another).
pub fn on_here(force: Option<Mechanism>) -> Result<OnOutcome, ShieldError> {
    let before = status_here();
    if let Some(a) = before
        .active
        .iter()
        .find(|a| !a.partial && force.is_none_or(|m| m == a.mechanism))
    {
        return Ok(OnOutcome::AlreadyOn(a.clone()));
    }
    match force {
        Some(Mechanism::Bpf) => on_bpf().map_err(ShieldError::Bpf),
        Some(Mechanism::Iptables) => on_iptables().map_err(ShieldError::Iptables),
        None => match on_bpf() {
            Ok(o) => Ok(o),
            Err(bpf) => on_iptables().map_err(|iptables| ShieldError::Neither { bpf, iptables }),
        },
    }
}

fn on_bpf() -> Result<OnOutcome, Refusal> {
    // Pins left by namespaces that died since (their links are defunct).
    let _ = bpf::prune_defunct();
    match bpf::attach(bpf::Attach::best())? {
        bpf::Outcome::Attached(a) => Ok(OnOutcome::Attached(from_bpf(a))),
        bpf::Outcome::AlreadyOn(a) => Ok(OnOutcome::AlreadyOn(from_bpf(a))),
    }
}

/// The same, with the attach mode chosen (tests of the pre-6.6 path).
pub fn on_bpf_with(attach: bpf::Attach) -> Result<OnOutcome, ShieldError> {
    match bpf::attach(attach).map_err(ShieldError::Bpf)? {
        bpf::Outcome::Attached(a) => Ok(OnOutcome::Attached(from_bpf(a))),
        bpf::Outcome::AlreadyOn(a) => Ok(OnOutcome::AlreadyOn(from_bpf(a))),
    }
}

fn on_iptables() -> Result<OnOutcome, IptablesError> {
    let _lock = iptables::lock_netns();
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut added: Vec<Family> = vec![];
    for fam in [Family::V4, Family::V6] {
        if !iptables::list(fam)?.is_empty() {
            continue; // this half is there already (a half pair is completed)
        }
        if let Err(e) = iptables::insert(fam, since) {
            // Leave nothing half made.
            for f in added {
                for found in iptables::list(f).unwrap_or_default() {
                    let _ = iptables::delete(f, &found);
                }
            }
            return Err(e);
        }
        added.push(fam);
    }
    match iptables_state()? {
        Some(a) if !a.partial => Ok(OnOutcome::Attached(a)),
        _ => Err(IptablesError::Failed {
            program: "iptables",
            action: "reading the rules back",
            message: "the rules were inserted but are not listed".into(),
        }),
    }
}

/// What `off` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffOutcome {
    /// The mechanisms removed (empty: the shield was off).
    pub removed: Vec<Mechanism>,
}

/// Turns the shield off in the calling thread's namespace: removes exactly
/// what `on` added (the pin directory; the rules with our comment), of
/// `only` or of both mechanisms.
pub fn off_here(only: Option<Mechanism>) -> Result<OffOutcome, ShieldError> {
    let mut out = OffOutcome::default();
    if only.is_none_or(|m| m == Mechanism::Bpf) {
        match bpf::detach() {
            Ok(true) => out.removed.push(Mechanism::Bpf),
            Ok(false) => {}
            // Nothing of ours can be there if bpffs is not even readable.
            Err(Refusal::Unsupported(_)) if only.is_none() => {}
            Err(r) => return Err(ShieldError::Bpf(r)),
        }
    }
    if only.is_none_or(|m| m == Mechanism::Iptables) {
        let _lock = iptables::lock_netns();
        let mut any = false;
        for fam in [Family::V4, Family::V6] {
            let found = match iptables::list(fam) {
                Ok(f) => f,
                Err(IptablesError::Missing(_)) if only.is_none() => continue,
                Err(e) => return Err(ShieldError::Iptables(e)),
            };
            // Delete from the last, so that positions stay right.
            for f in found.iter().rev() {
                iptables::delete(fam, f).map_err(ShieldError::Iptables)?;
                any = true;
            }
        }
        if any {
            out.removed.push(Mechanism::Iptables);
        }
    }
    Ok(out)
}

/// A network namespace of the host, as the shield commands name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its inode (`net:[INODE]`).
    pub inode: u64,
    /// Whether it is the caller's own.
    pub own: bool,
    /// A process in it (the lowest pid).
    pub pid: Option<u32>,
    /// Its `/run/netns` name.
    pub name: Option<String>,
    path: PathBuf,
}

impl Namespace {
    /// From the listing of `sys::netns`; `own` is the caller's inode.
    pub(crate) fn from_sys(n: &netns::Netns, own: u64) -> Namespace {
        Namespace {
            inode: n.inode,
            own: n.inode == own,
            pid: n.pid,
            name: n.name.clone(),
            path: n.path.clone(),
        }
    }
}

/// Every network namespace of the host (the same discovery as `scan
/// --all-netns`: `/proc/*/ns/net` and `/run/netns`, plus Docker's
/// `/var/run/docker/netns`), and the number of
/// processes whose namespace could not be read.
pub fn namespaces() -> std::io::Result<(Vec<Namespace>, u64)> {
    let own = netns::current()?;
    let proc = Proc::open()?;
    let dirs: Vec<&std::path::Path> = netns::RUNTIME_NETNS_DIRS
        .iter()
        .map(std::path::Path::new)
        .collect();
    let list = netns::list_with(&proc, &dirs)?;
    Ok((
        list.found
            .iter()
            .map(|n| Namespace::from_sys(n, own))
            .collect(),
        list.unreadable_pids,
    ))
}

/// Runs `f` inside namespace `ns` (directly when it is the caller's own).
pub fn in_namespace<T: Send>(
    ns: &Namespace,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    if ns.own {
        return Ok(f());
    }
    netns::run_in(&ns.path, f)
}

/// What one step did in one namespace.
#[derive(Debug)]
pub struct InNamespace<T> {
    /// The namespace.
    pub ns: Namespace,
    /// The step's result, or why it could not run there (a one-line reason).
    pub result: Result<T, String>,
}

/// Runs `f` in the caller's namespace, or (`all`) in every namespace of the
/// host, one after the other. Returns the results and the number of
/// processes whose namespace could not be read (`all` only).
pub fn each_namespace<T: Send>(
    all: bool,
    f: impl Fn() -> Result<T, String> + Sync,
) -> std::io::Result<(Vec<InNamespace<T>>, u64)> {
    let (list, unreadable) = if all {
        namespaces()?
    } else {
        let own = netns::current()?;
        (
            vec![Namespace {
                inode: own,
                own: true,
                pid: Some(std::process::id()),
                name: None,
                path: PathBuf::from("/proc/thread-self/ns/net"),
            }],
            0,
        )
    };
    let mut out = vec![];
    for ns in list {
        let result = match in_namespace(&ns, &f) {
            Ok(r) => r,
            // Its last process exited between listing and entering: the
            // namespace is gone, nothing to do there.
            Err(e) if e.io().raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => Err(e.to_string()),
        };
        out.push(InNamespace { ns, result });
    }
    Ok((out, unreadable))
}

/// The cgroup hook (`--cgroup-root`): `connect4`/`connect6` programs on a
/// cgroup v2 directory that refuse, with ECONNREFUSED, a TCP connect to a
/// loopback address where nothing listens, for every process of the
/// subtree in every namespace (the root: the whole host), from a new
/// container's first connect on. It sees loopback destinations only (not
/// the namespace's interface addresses), and a non-blocking connect fails
/// at once instead of returning EINPROGRESS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupShield {
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// Whether the hook is attached (after the action).
    pub on: bool,
    /// `attached`, `already_on`, `removed`, `was_off`; `None` for status.
    pub action: Option<&'static str>,
    /// When it was attached.
    pub since: Option<SystemTime>,
    /// Connects refused: IPv4 (incl. v4-mapped) and IPv6.
    pub refused: Option<(u64, u64)>,
    /// Its pin directory.
    pub pinned: Option<PathBuf>,
}

/// The cgroup v2 root of this host (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup_default_root() -> Option<PathBuf> {
    cgroup::default_root()
}

fn cgroup_state(
    path: &std::path::Path,
    a: Option<cgroup::CgroupAttached>,
    action: Option<&'static str>,
) -> CgroupShield {
    CgroupShield {
        cgroup: path.to_owned(),
        on: a.is_some(),
        action,
        since: a.as_ref().and_then(|a| a.since),
        refused: a.as_ref().and_then(|a| a.refused),
        pinned: a.map(|a| a.dir),
    }
}

/// Attaches the cgroup hook to `path` (a no-op when it is there).
pub fn cgroup_on(path: &std::path::Path) -> Result<CgroupShield, ShieldError> {
    let (now, a) = cgroup::attach(path).map_err(ShieldError::Bpf)?;
    Ok(cgroup_state(
        path,
        Some(a),
        Some(if now { "attached" } else { "already_on" }),
    ))
}

/// Removes the cgroup hook of `path`.
pub fn cgroup_off(path: &std::path::Path) -> Result<CgroupShield, ShieldError> {
    let was = cgroup::detach(path).map_err(ShieldError::Bpf)?;
    Ok(cgroup_state(
        path,
        None,
        Some(if was { "removed" } else { "was_off" }),
    ))
}

/// Whether the cgroup hook is on `path`.
pub fn cgroup_status(path: &std::path::Path) -> Result<CgroupShield, ShieldError> {
    let a = cgroup::status(path).map_err(ShieldError::Bpf)?;
    Ok(cgroup_state(path, a, None))
}

/// What `tcploop shield on|off|status` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Turn it on: `force` one mechanism; `attach` picks how bpf attaches
    /// (tests of the pre-6.6 path).
    On {
        /// One mechanism only.
        force: Option<Mechanism>,
        /// How the bpf mechanism attaches.
        attach: Option<BpfAttach>,
    },
    /// Remove it (of `only` one mechanism, or both).
    Off {
        /// One mechanism only.
        only: Option<Mechanism>,
    },
    /// Say whether it is on.
    Status,
}

/// Where the action applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The caller's network namespace.
    Here,
    /// Every network namespace of the host.
    AllNetns,
    /// The cgroup connect hook on this cgroup v2 directory instead.
    Cgroup(PathBuf),
}

/// What the action did in one namespace, with the state read back.
#[derive(Debug, Clone)]
pub enum Done {
    /// `on`.
    On(OnOutcome, ShieldState),
    /// `off`.
    Off(OffOutcome, ShieldState),
    /// `status`.
    Status(ShieldState),
}

/// The outcome of [`act`].
#[derive(Debug)]
pub enum ShieldRun {
    /// In one or every namespace; the number of processes whose namespace
    /// could not be read.
    Namespaces(Vec<InNamespace<Done>>, u64),
    /// On a cgroup directory.
    Cgroup(PathBuf, Result<CgroupShield, String>),
}

/// `tcploop shield on|off|status`: the action in the scope asked, each
/// namespace's failure kept as its result (a one-line reason).
pub fn act(action: Action, scope: &Scope) -> std::io::Result<ShieldRun> {
    let all = match scope {
        Scope::Cgroup(dir) => {
            let r = match action {
                Action::On { .. } => cgroup_on(dir),
                Action::Off { .. } => cgroup_off(dir),
                Action::Status => cgroup_status(dir),
            };
            return Ok(ShieldRun::Cgroup(dir.clone(), r.map_err(|e| e.to_string())));
        }
        Scope::Here => false,
        Scope::AllNetns => true,
    };
    let (done, unreadable) = each_namespace(all, || {
        Ok(match action {
            Action::On { force, attach } => {
                let o = match (attach, force) {
                    (Some(at), None | Some(Mechanism::Bpf)) => on_bpf_with(at),
                    _ => on_here(force),
                }
                .map_err(|e| e.to_string())?;
                Done::On(o, status_here())
            }
            Action::Off { only } => {
                let o = off_here(only).map_err(|e| e.to_string())?;
                Done::Off(o, status_here())
            }
            Action::Status => Done::Status(status_here()),
        })
    })?;
    if all && matches!(action, Action::Off { .. }) {
        // Directories of namespaces that died meanwhile.
        let _ = prune();
    }
    Ok(ShieldRun::Namespaces(done, unreadable))
}

/// Removes the pin directories of namespaces that no longer exist.
pub fn prune() -> Result<u64, Refusal> {
    bpf::prune_defunct()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(m: Mechanism, partial: bool) -> Active {
        Active {
            mechanism: m,
            attach: "x",
            since: None,
            refused_v4: Some(3),
            refused_v6: Some(4),
            partial,
            pinned: None,
        }
    }

    #[test]
    fn a_half_iptables_pair_is_not_on() {
        let mut s = ShieldState::default();
        assert!(!s.is_on());
        s.active.push(active(Mechanism::Iptables, true));
        assert!(!s.is_on());
        assert_eq!(s.mechanism(), None);
        s.active.push(active(Mechanism::Bpf, false));
        assert!(s.is_on());
        assert_eq!(s.mechanism(), Some(Mechanism::Bpf));
        assert_eq!(s.refused(), (6, 8));
    }
}
