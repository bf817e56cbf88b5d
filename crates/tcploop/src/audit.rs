//! Which services of this network namespace are exposed to the TCP loop,
//! and the kernel setting that closes the hole for good.
//!
//! A service whose port lies inside the ephemeral range (`ip_local_port_range`)
//! and is not in `ip_local_reserved_ports` is safe only while it listens: a
//! listening (bound) port is never handed out by `connect()`. The moment it
//! is down or restarting, any local client that keeps reconnecting to it may
//! be given that very port as its source port, connect to itself, and keep
//! it: the service then fails to start with `EADDRINUSE`. So every listener
//! in the range, and every configured service port in the range, is
//! *exposed*. For each one the audit says what the predictor
//! ([`crate::predict`]) would answer for a client `connect()` **while the
//! service is down**: the same facts, minus that service's own listener.
//!
//! The fix that needs no change to any program is
//! `net.ipv4.ip_local_reserved_ports`: the kernel never auto-assigns a
//! reserved port, to `connect()` or to `bind(0)`, while explicit binds (the
//! service's own) still work. [`Fix`] keeps every existing reservation and
//! adds the exposed ports, ranges merged, in the kernel's own notation;
//! applying it twice changes nothing. Other remedies, when they fit: move the
//! port below the range, or to the parity plain `connect()` does not use
//! (which does not protect against clients that `bind(addr, 0)` first or set
//! `IP_LOCAL_PORT_RANGE`).
//!
//! [`analyze`] is pure (facts and sockets in, findings out) and tested from
//! fixtures; [`apply`] (`audit/reserve.rs`: lock, read, write, read back,
//! verify, restore) and [`persist`] (`audit/sysctl_file.rs`) are the only
//! writers; [`run`] is `tcploop audit` from start to end (look, owners,
//! apply, persist, look again), its result an [`AuditRun`] that
//! `report::audit` renders.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::container::Container;
use crate::holders;
use crate::host::{self, Host};
use crate::inventory::Inventory;
use crate::model::{Owner, Socket, TcpState};
use crate::owners::{Owners, Search};
use crate::ports::{EphemeralFacts, Parity, PortRange, PortSet};
use crate::predict::{self, Client, Prediction, Situation};
use crate::sys::ifaddrs::IfAddr;

mod reserve;
mod sysctl_file;

pub use reserve::{apply, apply_with_lock, Applied, ApplyError, LOCK_FILE};
pub use sysctl_file::{merged_sysctl_d, persist, Persisted, SYSCTL_FILE_LIMIT};

/// The sysctl key the fix sets.
pub const SYSCTL_KEY: &str = "net.ipv4.ip_local_reserved_ports";

/// Where `--persist` writes by default. `60-` sorts after the distribution's
/// own `50-*.conf` files; a later file setting the same key would win.
pub const DEFAULT_SYSCTL_FILE: &str = "/etc/sysctl.d/60-tcploop.conf";

/// Where a port stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In the ephemeral range and not reserved: clients may loop while the
    /// service is down.
    Exposed,
    /// In the range but reserved: the kernel never hands it out.
    Reserved,
    /// Outside the range: `connect()` never picks it.
    OutsideRange,
}

impl Status {
    /// The name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Exposed => "exposed",
            Status::Reserved => "reserved",
            Status::OutsideRange => "outside_range",
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its inode (to find the owning processes).
    pub inode: u32,
    /// Its owner uid.
    pub uid: u32,
}

/// The audit of one port.
#[derive(Debug, Clone, PartialEq)]
pub struct PortAudit {
    /// The port.
    pub port: u16,
    /// Where it stands.
    pub status: Status,
    /// Listening sockets on it now (empty: configured, not listening).
    pub listeners: Vec<Listener>,
    /// Named with `--ports` / `--ports-file`.
    pub configured: bool,
    /// The destination the prediction is for (what clients dial).
    pub host: IpAddr,
    /// The predictor's answer for a plain `connect()` client while the
    /// service is down (its own listeners left out).
    pub when_down: Prediction,
    /// Remedies that fit this port, the reservation first.
    pub advice: Vec<Advice>,
}

/// A remedy that fits a port, with the facts it rests on. The wording
/// lives in the output layer (`report::audit`): the engine builds no English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// The port is outside the ephemeral range: no client is given it.
    OutsideRange {
        /// The port.
        port: u16,
        /// The ephemeral range.
        range: PortRange,
    },
    /// The port is reserved already: keep the reservation.
    KeepReserved {
        /// The port.
        port: u16,
    },
    /// Add the port to the reservation (the fix); the service can still
    /// bind it.
    Reserve {
        /// The port.
        port: u16,
    },
    /// Move the service below the range (`1024..=below` is outside it), or
    /// shrink the range.
    MoveBelow {
        /// The highest port below the range.
        below: u16,
    },
    /// Move the service to the parity plain `connect()` does not prefer
    /// (it takes those only when every port of its own parity is taken).
    OtherParity {
        /// The parity plain `connect()` prefers here (the port's).
        preferred: Parity,
        /// A free neighbour of the other parity, in the range.
        alt: Option<u16>,
    },
    /// The port is of the parity plain `connect()` does not prefer, but
    /// clients that `bind(addr, 0)` first or set `IP_LOCAL_PORT_RANGE` can
    /// get it: reserve it all the same.
    UnpreferredParity {
        /// The port.
        port: u16,
        /// Its parity.
        parity: Parity,
        /// The parity plain `connect()` prefers here.
        preferred: Parity,
    },
}

/// What the audit found.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The namespace's ephemeral-port facts.
    pub facts: EphemeralFacts,
    /// Every listener in the range and every configured port, by port.
    pub ports: Vec<PortAudit>,
    /// Self-connected sockets present now.
    pub loops: Vec<Socket>,
    /// The reservation that closes every exposed port.
    pub fix: Fix,
    /// The shield, when it is on in the namespace (`bpf (tcx)`,
    /// `iptables (rules)`): exposed ports are then `prevented`.
    pub shield: Option<String>,
}

impl Audit {
    /// The exposed ports.
    pub fn exposed(&self) -> impl Iterator<Item = &PortAudit> {
        self.ports.iter().filter(|p| p.status == Status::Exposed)
    }

    /// The exposed ports whose clients can still loop (not `prevented` by
    /// the shield).
    pub fn at_risk(&self) -> impl Iterator<Item = &PortAudit> {
        self.exposed()
            .filter(|p| p.when_down.verdict != predict::Verdict::Prevented)
    }

    /// Marks every `possible` prediction `prevented` by the shield (`how`).
    pub fn with_shield(mut self, how: Option<String>) -> Audit {
        if let Some(h) = &how {
            for p in &mut self.ports {
                predict::shielded(&mut p.when_down, h);
            }
        }
        self.shield = how;
        self
    }
}

/// The `ip_local_reserved_ports` value that closes the exposed ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    /// The reservation now.
    pub current: PortSet,
    /// The ports to add (exposed, not yet reserved).
    pub add: PortSet,
    /// The new value: `current` plus `add`, ranges merged.
    pub value: PortSet,
}

impl Fix {
    /// Keeps `current` and adds `ports`.
    pub fn new(current: &PortSet, ports: &PortSet) -> Fix {
        let add = PortSet::from_ports(ports.iter().filter(|&p| !current.contains(p)));
        Fix {
            current: current.clone(),
            value: current.union(&add),
            add,
        }
    }

    /// Whether there is anything to add.
    pub fn needed(&self) -> bool {
        !self.add.is_empty()
    }

    /// The `sysctl -w` command that applies it now.
    pub fn command(&self) -> String {
        format!("sysctl -w {SYSCTL_KEY}={}", self.value)
    }

    /// An `/etc/sysctl.d` file that applies it at every boot (`sysctl -p FILE`
    /// applies it now). An empty reservation is never written as a value: it
    /// would clear what others reserved.
    pub fn sysctl_d(&self) -> String {
        let mut s = String::from(
            "# Written by `tcploop audit`. Reserved ports are never handed out as\n\
             # ephemeral (source) ports, so local clients of these services cannot\n\
             # connect to themselves (TCP self-connect) while a service is down.\n\
             # Every reservation present when it was written is kept. A later file\n\
             # in sysctl.d that sets the same key replaces this value.\n",
        );
        if self.value.is_empty() {
            s.push_str("# Nothing to reserve.\n");
        } else {
            s.push_str(&format!("{SYSCTL_KEY} = {}\n", self.value));
        }
        s
    }

    /// The `securityContext` of a Kubernetes pod spec that sets the same
    /// reservation in the pod's network namespace (each pod has its own,
    /// which starts with nothing reserved). `ip_local_reserved_ports` is a
    /// *safe* sysctl since Kubernetes 1.27: no kubelet allow-list needed.
    pub fn kubernetes(&self) -> String {
        let mut s = String::from(
            "# Written by `tcploop audit --emit k8s`: the pod's network namespace\n\
             # never hands out these ports as ephemeral (source) ports, so clients in\n\
             # the pod cannot connect to themselves on them (a safe sysctl since\n\
             # Kubernetes 1.27). Merge into the pod spec (spec.securityContext).\n",
        );
        if self.value.is_empty() {
            s.push_str("# Nothing to reserve.\n");
        } else {
            s.push_str(&format!(
                "securityContext:\n  sysctls:\n    - name: {SYSCTL_KEY}\n      value: \"{}\"\n",
                self.value
            ));
        }
        s
    }

    /// The `docker run` (and `podman run`) flag that sets the same
    /// reservation in a container's network namespace; empty when there is
    /// nothing to reserve.
    pub fn docker(&self) -> String {
        if self.value.is_empty() {
            String::new()
        } else {
            format!("--sysctl {SYSCTL_KEY}={}\n", self.value)
        }
    }
}

/// Analyzes the namespace: `sockets` is one sock_diag dump (every state),
/// `configured` the service ports named by the user.
pub fn analyze(
    facts: &EphemeralFacts,
    sockets: &[Socket],
    bound_visible: bool,
    ifaddrs: &[IfAddr],
    configured: &PortSet,
) -> Audit {
    let range = facts.range;
    let mut listeners: BTreeMap<u16, Vec<Listener>> = BTreeMap::new();
    for s in sockets.iter().filter(|s| s.state == TcpState::Listen) {
        listeners.entry(s.local.port()).or_default().push(Listener {
            addr: s.local,
            inode: s.inode,
            uid: s.uid,
        });
    }
    for l in listeners.values_mut() {
        l.sort_by_key(|l| (l.addr.is_ipv6(), l.addr));
        l.dedup_by_key(|l| (l.addr, l.inode));
    }
    let mut ports: BTreeMap<u16, (Vec<Listener>, bool)> = BTreeMap::new();
    for (&p, l) in &listeners {
        if range.contains(p) {
            ports.insert(p, (l.clone(), false));
        }
    }
    for p in configured.iter() {
        let e = ports
            .entry(p)
            .or_insert_with(|| (listeners.get(&p).cloned().unwrap_or_default(), false));
        e.1 = true;
    }

    // What the predictor needs for port P with P's own listeners gone: every
    // bind()/listen() holder of other ports, plus every other socket on P.
    let holders: Vec<&Socket> = sockets
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                TcpState::Listen | TcpState::BoundInactive | TcpState::Close
            )
        })
        .collect();
    let mut on_port: BTreeMap<u16, Vec<&Socket>> = BTreeMap::new();
    for s in sockets {
        if ports.contains_key(&s.local.port()) {
            on_port.entry(s.local.port()).or_default().push(s);
        }
    }

    let mut out = vec![];
    for (port, (ls, configured)) in ports {
        let status = if !range.contains(port) {
            Status::OutsideRange
        } else if facts.reserved.contains(port) {
            Status::Reserved
        } else {
            Status::Exposed
        };
        let here = holders::listening(on_port.get(&port).into_iter().flatten().copied());
        let down: Vec<&Socket> = holders
            .iter()
            .copied()
            .filter(|s| s.local.port() != port)
            .chain(
                on_port
                    .get(&port)
                    .into_iter()
                    .flatten()
                    .copied()
                    // the service's listeners and the connections they
                    // accepted go down with it: they are not sockets that
                    // took the port as their source port
                    .filter(|s| s.state != TcpState::Listen && !holders::accepted(&here, s)),
            )
            .collect();
        let inv = Inventory::from_sockets(down, bound_visible);
        let dest = destination(&ls);
        let h: Host = host::classify(dest, 0, ifaddrs);
        let when_down = predict::predict(
            &Situation {
                facts,
                inventory: Some(&inv),
                host: &h,
                client: Client::Connect,
            },
            port,
        );
        let advice = advice(facts, status, port, &listeners);
        out.push(PortAudit {
            port,
            status,
            listeners: ls,
            configured,
            host: h.effective,
            when_down,
            advice,
        });
    }
    let mut loops: Vec<Socket> = sockets.iter().filter(|s| s.is_loop()).copied().collect();
    loops.sort_by_key(|s| (s.local.port(), s.local));
    let exposed = PortSet::from_ports(
        out.iter()
            .filter(|p| p.status == Status::Exposed)
            .map(|p| p.port),
    );
    Audit {
        facts: facts.clone(),
        fix: Fix::new(&facts.reserved, &exposed),
        ports: out,
        loops,
        shield: None,
    }
}

/// The processes holding the sockets an audit names (its listeners and
/// loops), found in one walk over `/proc`, with their containers.
#[derive(Debug, Default)]
pub struct OwnerLookup {
    /// What the walk found (`None`: it failed, see `error`).
    pub found: Option<Owners>,
    /// Why the walk failed.
    pub error: Option<String>,
    /// The owners' containers, by pid.
    pub containers: BTreeMap<u32, Container>,
}

impl OwnerLookup {
    /// The owners of the socket with this inode (none found: empty).
    pub fn of(&self, inode: u32) -> &[Owner] {
        self.found
            .as_ref()
            .map(|o| o.of(u64::from(inode)))
            .unwrap_or_default()
    }

    /// How many of the audit's sockets have no owner found.
    pub fn unknown(&self, a: &Audit) -> u64 {
        let inodes = a.inodes();
        match &self.found {
            Some(o) => o.unknown(inodes.into_iter().map(u64::from)),
            None => inodes.len() as u64,
        }
    }

    /// Processes the walk could not read.
    pub fn unreadable(&self) -> u64 {
        self.found
            .as_ref()
            .map_or(0, |o| o.processes_denied + o.processes_failed)
    }
}

impl Audit {
    /// The inodes of the sockets the audit names (listeners, then loops).
    pub fn inodes(&self) -> Vec<u32> {
        self.ports
            .iter()
            .flat_map(|p| p.listeners.iter().map(|l| l.inode))
            .chain(self.loops.iter().map(|l| l.inode))
            .filter(|i| *i != 0)
            .collect()
    }
}

/// Looks up the owners of the listeners and loops the audit names (one walk
/// over `/proc`, stopping once each has an owner); a failed walk is data.
pub fn owners_of(a: &Audit) -> OwnerLookup {
    let inodes: Vec<u64> = a.inodes().into_iter().map(u64::from).collect();
    match crate::owners::find_owners(inodes.iter().copied(), Search::FirstOwner) {
        Ok(o) => {
            let pids: Vec<u32> = inodes
                .iter()
                .flat_map(|&i| o.of(i))
                .map(|o| o.pid)
                .collect();
            OwnerLookup {
                containers: crate::container::of_pids(pids),
                found: Some(o),
                error: None,
            }
        }
        Err(e) => OwnerLookup {
            found: None,
            error: Some(e.to_string()),
            containers: BTreeMap::new(),
        },
    }
}

/// Why the audit could not look at the namespace.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The port facts could not be read.
    #[error(transparent)]
    Facts(#[from] crate::ports::FactsError),
    /// The socket dump failed.
    #[error(transparent)]
    Dump(#[from] crate::sys::diag::DiagError),
}

/// Looks at the caller's network namespace (port facts, one socket dump,
/// interface addresses) and analyzes it.
pub fn take(configured: &PortSet) -> Result<Audit, AuditError> {
    let facts = EphemeralFacts::read()?;
    let bound_visible = facts.kernel.is_some_and(|k| k.dumps_bound_sockets());
    let mut sockets = vec![];
    crate::sys::diag::dump_all(crate::sys::diag::ALL_STATES, |s| sockets.push(*s))?;
    let ifaddrs = crate::sys::ifaddrs::list().unwrap_or_default();
    Ok(
        analyze(&facts, &sockets, bound_visible, &ifaddrs, configured)
            .with_shield(crate::shield::protection_here()),
    )
}

/// The address clients of these listeners dial: the listener's own address,
/// or the loopback address for a wildcard (and for a port not listening).
fn destination(ls: &[Listener]) -> IpAddr {
    match ls.first().map(|l| l.addr.ip()) {
        Some(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(a) => a,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

fn advice(
    facts: &EphemeralFacts,
    status: Status,
    port: u16,
    listening: &BTreeMap<u16, Vec<Listener>>,
) -> Vec<Advice> {
    let r = facts.range;
    match status {
        Status::OutsideRange => return vec![Advice::OutsideRange { port, range: r }],
        Status::Reserved => return vec![Advice::KeepReserved { port }],
        Status::Exposed => {}
    }
    let mut v = vec![Advice::Reserve { port }];
    if r.low > 1024 {
        v.push(Advice::MoveBelow { below: r.low - 1 });
    }
    let split = facts.kernel.is_some_and(|k| k.has_parity_split());
    let preferred = r.connect_parity();
    if split && Parity::of(port) == preferred {
        let alt = [port.wrapping_sub(1), port.wrapping_add(1)]
            .into_iter()
            .find(|&p| {
                r.contains(p)
                    && Parity::of(p) != preferred
                    && !listening.contains_key(&p)
                    && !facts.reserved.contains(p)
            });
        v.push(Advice::OtherParity { preferred, alt });
    } else if split {
        v.push(Advice::UnpreferredParity {
            port,
            parity: Parity::of(port),
            preferred,
        });
    }
    v
}

/// What `tcploop audit` is asked to do: the engine's half of its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Service ports audited whether they listen or not (`--ports`,
    /// `--ports-file`).
    pub ports: PortSet,
    /// Look up the processes holding the listeners and loops (one walk over
    /// `/proc`; not needed when only the fix is printed).
    pub owners: bool,
    /// Apply the fix (`--apply`), and how.
    pub apply: Option<ApplyRequest>,
}

/// `--apply`, and `--persist` with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyRequest {
    /// The sysctl.d file the applied value is merged into (`--persist`).
    pub persist: Option<PathBuf>,
}

/// What one `tcploop audit` found and did, for the output layer to render.
#[derive(Debug)]
pub struct AuditRun {
    /// The namespace as it was found.
    pub audit: Audit,
    /// The owners of its listeners and loops (empty when not asked).
    pub owners: OwnerLookup,
    /// With `--apply`: what applying (and persisting) the fix did, or why
    /// it was not applied.
    pub fixed: Option<Result<Fixed, FixError>>,
}

/// The fix applied: what the kernel holds now, the file, and the namespace
/// looked at again.
#[derive(Debug)]
pub struct Fixed {
    /// The read-modify-write of the reservation ([`apply`]).
    pub applied: Applied,
    /// With `--persist`: the file and what merging into it did ([`persist`]).
    pub persisted: Option<(PathBuf, Result<Persisted, ApplyError>)>,
    /// The audit taken again after the fix.
    pub after: Audit,
}

impl Fixed {
    /// The persisting error, when the file was asked for and not written.
    pub fn persist_error(&self) -> Option<(&Path, &ApplyError)> {
        match &self.persisted {
            Some((path, Err(e))) => Some((path, e)),
            _ => None,
        }
    }
}

/// Why `--apply` (or `--persist`) did not do all it was asked. Each is
/// exit 2.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    /// The reservation was not grown (refused, lost and restored, ...).
    #[error("applying the fix: {0}{hint}", hint = if .0.is_permission() {
        " (needs root, or CAP_NET_ADMIN over this network namespace)"
    } else {
        ""
    })]
    Apply(ApplyError),
    /// Applied, but the namespace could not be looked at again.
    #[error("auditing again after the fix")]
    Again(#[source] AuditError),
    /// Applied, but the sysctl.d file was not written: the fix is lost at
    /// the next reboot.
    #[error(
        "the fix was applied ({SYSCTL_KEY} = {}), but persisting it to {} failed: {error}{}",
        or_none(value),
        file.display(),
        if error.is_permission() { " (needs root)" } else { "" }
    )]
    NotPersisted {
        /// The kernel's value, applied.
        value: PortSet,
        /// The file asked for.
        file: PathBuf,
        /// Why it was not written.
        error: Box<ApplyError>,
    },
}

impl AuditRun {
    /// The audit that stands at the end: after the fix when it was
    /// applied, else as found.
    pub fn last(&self) -> &Audit {
        match &self.fixed {
            Some(Ok(f)) => &f.after,
            _ => &self.audit,
        }
    }

    /// Whether an exposed port's clients can still loop, or a loop is
    /// present, in [`AuditRun::last`].
    pub fn found(&self) -> bool {
        let a = self.last();
        a.at_risk().count() > 0 || !a.loops.is_empty()
    }

    /// Takes out what `--apply`/`--persist` failed to do, as one error:
    /// the fix not applied, or applied but not persisted.
    pub fn take_error(&mut self) -> Option<FixError> {
        if matches!(self.fixed, Some(Err(_))) {
            return self.fixed.take()?.err();
        }
        let Some(Ok(f)) = &mut self.fixed else {
            return None;
        };
        match f.persisted.take()? {
            (file, Err(error)) => Some(FixError::NotPersisted {
                value: f.applied.after.clone(),
                file,
                error: Box::new(error),
            }),
            ok => {
                f.persisted = Some(ok);
                None
            }
        }
    }
}

/// `(none)` for an empty reservation (the kernel's own text is empty).
fn or_none(s: &PortSet) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s.to_string()
    }
}

/// `tcploop audit` from start to end: looks at the namespace ([`take`]),
/// finds the owners when asked ([`owners_of`]), and with
/// [`Config::apply`] grows the reservation ([`apply`]: lock, read, write,
/// read back, verify, restore), merges the value into the sysctl.d file
/// ([`persist`]), and looks again. A failure to apply or persist is part of
/// the result ([`AuditRun::fixed`]), so that what was found can still be
/// said; only a failure to look at all is an error.
pub fn run(cfg: &Config) -> Result<AuditRun, AuditError> {
    let audit = take(&cfg.ports)?;
    let owners = if cfg.owners {
        owners_of(&audit)
    } else {
        OwnerLookup::default()
    };
    let fixed = cfg
        .apply
        .as_ref()
        .map(|req| fix(&cfg.ports, &audit.fix.add, req));
    Ok(AuditRun {
        audit,
        owners,
        fixed,
    })
}

/// Applies `add`, persists the value read back when asked, and audits again.
fn fix(ports: &PortSet, add: &PortSet, req: &ApplyRequest) -> Result<Fixed, FixError> {
    let applied = apply(add).map_err(FixError::Apply)?;
    let persisted = req
        .persist
        .as_ref()
        .map(|path| (path.clone(), persist(path, &applied.after)));
    let after = take(ports).map_err(FixError::Again)?;
    Ok(Fixed {
        applied,
        persisted,
        after,
    })
}

/// Parses a ports file: ports and ranges separated by commas, spaces or
/// newlines; `#` starts a comment.
pub fn parse_ports_file(text: &str) -> Result<PortSet, String> {
    let mut set = PortSet::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split(|c: char| c == ',' || c.is_whitespace()) {
            if item.is_empty() {
                continue;
            }
            let p = PortSet::parse(item).map_err(|e| format!("line {}: {e}", n + 1))?;
            set = set.union(&p);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::Verdict;

    fn facts(low: u16, high: u16, reserved: &str) -> EphemeralFacts {
        EphemeralFacts::fixture(low, high, reserved)
    }

    fn lo() -> Vec<IfAddr> {
        ["127.0.0.1", "::1"]
            .iter()
            .map(|a| IfAddr {
                name: "lo".into(),
                addr: a.parse().unwrap(),
                scope_id: 0,
                up: true,
            })
            .collect()
    }

    fn sock(st: TcpState, local: &str, peer: &str, inode: u32) -> Socket {
        Socket {
            cookie: [inode, 0],
            inode,
            ..Socket::fixture(st, local, peer)
        }
    }

    #[test]
    fn a_listener_in_the_range_is_exposed_with_the_verdict_when_it_is_down() {
        let f = facts(40000, 40009, "");
        let socks = [
            sock(TcpState::Listen, "0.0.0.0:40004", "0.0.0.0:0", 11),
            sock(TcpState::Listen, "[::]:40004", "[::]:0", 12),
            sock(TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0", 13),
            // another service holds an even port: one candidate fewer
            sock(TcpState::Listen, "127.0.0.1:40000", "0.0.0.0:0", 14),
        ];
        let a = analyze(&f, &socks, true, &lo(), &PortSet::default());
        let ports: Vec<u16> = a.ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [40000, 40004], "8080 is outside the range");
        let p = &a.ports[1];
        assert_eq!(p.status, Status::Exposed);
        assert_eq!(p.listeners.len(), 2);
        assert_eq!(p.host, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.when_down.verdict, Verdict::Possible, "{:?}", p.when_down);
        // 40000..40008 even = 5, minus 40000 held by the other listener
        assert_eq!(p.when_down.expected_tries, Some(4.0));
        assert_eq!(a.fix.add.to_string(), "40000,40004");
        assert_eq!(
            a.fix.command(),
            format!("sysctl -w {SYSCTL_KEY}=40000,40004")
        );
    }

    #[test]
    fn odd_ports_reserved_ports_and_configured_ports() {
        let f = facts(40000, 40009, "40002,50000-50010");
        let socks = [
            sock(TcpState::Listen, "127.0.0.1:40005", "0.0.0.0:0", 1),
            sock(TcpState::Listen, "127.0.0.1:40002", "0.0.0.0:0", 2),
        ];
        let conf = PortSet::parse("40006,39999").unwrap();
        let a = analyze(&f, &socks, true, &lo(), &conf);
        let by: BTreeMap<u16, &PortAudit> = a.ports.iter().map(|p| (p.port, p)).collect();
        assert_eq!(by[&39999].status, Status::OutsideRange);
        assert!(by[&39999].configured);
        assert_eq!(by[&40002].status, Status::Reserved);
        assert_eq!(by[&40002].when_down.verdict, Verdict::Impossible);
        let odd = by[&40005];
        assert_eq!(odd.status, Status::Exposed);
        assert_eq!(odd.when_down.verdict, Verdict::Impossible, "parity");
        assert!(odd.advice.contains(&Advice::UnpreferredParity {
            port: 40005,
            parity: Parity::Odd,
            preferred: Parity::Even,
        }));
        let conf = by[&40006];
        assert!(conf.listeners.is_empty() && conf.configured);
        assert_eq!(conf.when_down.verdict, Verdict::Possible);
        // 40000, 40004, 40006, 40008 (40002 reserved)
        assert_eq!(conf.when_down.expected_tries, Some(4.0));
        // never drops an existing reservation; merges ranges
        assert_eq!(a.fix.value.to_string(), "40002,40005-40006,50000-50010");
        assert_eq!(a.fix.add.to_string(), "40005-40006");
    }

    #[test]
    fn the_fix_is_idempotent_and_never_writes_an_empty_value() {
        let cur = PortSet::parse("8080,40000-40003").unwrap();
        let f = Fix::new(&cur, &PortSet::parse("40003,40004").unwrap());
        assert_eq!(f.value.to_string(), "8080,40000-40004");
        assert_eq!(f.add.to_string(), "40004");
        let again = Fix::new(&f.value, &PortSet::parse("40003,40004").unwrap());
        assert!(!again.needed());
        assert_eq!(again.value, f.value);
        let empty = Fix::new(&PortSet::default(), &PortSet::default());
        assert!(!empty.sysctl_d().lines().any(|l| l.starts_with(SYSCTL_KEY)));
        assert!(f
            .sysctl_d()
            .lines()
            .any(|l| l == "net.ipv4.ip_local_reserved_ports = 8080,40000-40004"));
    }

    #[test]
    fn loops_present_are_listed() {
        let f = facts(40000, 40009, "");
        let socks = [
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                5,
            ),
            sock(
                TcpState::Established,
                "127.0.0.1:40006",
                "127.0.0.1:50000",
                6,
            ),
        ];
        let a = analyze(&f, &socks, true, &lo(), &PortSet::default());
        assert_eq!(a.loops.len(), 1);
        assert!(a.ports.is_empty());
    }

    fn proc_error(errno: i32) -> ApplyError {
        ApplyError::Proc(crate::sys::procsys::ProcError {
            op: "writing",
            path: "/proc/sys/net/ipv4/ip_local_reserved_ports".into(),
            source: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_run_says_once_what_apply_or_persist_failed_to_do_and_which_audit_stands() {
        let f = facts(40000, 40009, "");
        let exposed = [sock(TcpState::Listen, "127.0.0.1:40004", "0.0.0.0:0", 11)];
        let before = analyze(&f, &exposed, true, &lo(), &PortSet::default());
        let reserved = facts(40000, 40009, "40004");
        let after = analyze(&reserved, &exposed, true, &lo(), &PortSet::default());
        // refused: the hint says what is needed; the found audit stands
        let mut run = AuditRun {
            audit: before.clone(),
            owners: OwnerLookup::default(),
            fixed: Some(Err(FixError::Apply(proc_error(libc::EPERM)))),
        };
        assert!(run.found(), "40004 exposed");
        let e = run.take_error().unwrap().to_string();
        assert_eq!(
            e,
            "applying the fix: writing /proc/sys/net/ipv4/ip_local_reserved_ports: Operation not \
             permitted (os error 1) (needs root, or CAP_NET_ADMIN over this network namespace)"
        );
        assert!(run.take_error().is_none() && run.fixed.is_none());
        // applied and persisted: no error, and the audit after the fix stands
        let applied = Applied {
            before: PortSet::default(),
            after: PortSet::parse("40004").unwrap(),
            wrote: true,
            lock: Ok(LOCK_FILE.into()),
        };
        let persisted = Persisted {
            written: true,
            value: PortSet::parse("40004").unwrap(),
            previous: None,
        };
        let mut run = AuditRun {
            audit: before,
            owners: OwnerLookup::default(),
            fixed: Some(Ok(Fixed {
                applied: applied.clone(),
                persisted: Some(("/etc/sysctl.d/60-tcploop.conf".into(), Ok(persisted))),
                after: after.clone(),
            })),
        };
        assert!(!run.found(), "40004 reserved after the fix");
        assert_eq!(run.last().fix.current.to_string(), "40004");
        assert!(run.take_error().is_none());
        assert!(
            matches!(&run.fixed, Some(Ok(f)) if f.persisted.is_some()),
            "kept for the report"
        );
        // applied, not persisted (no permission): both said, with the hint
        let denied = ApplyError::File(crate::safefile::SafeFileError::Io {
            op: "creating a temporary file in",
            path: "/etc/sysctl.d".into(),
            error: std::io::Error::from_raw_os_error(libc::EACCES),
        });
        let mut run = AuditRun {
            audit: after.clone(),
            owners: OwnerLookup::default(),
            fixed: Some(Ok(Fixed {
                applied,
                persisted: Some(("/etc/sysctl.d/60-tcploop.conf".into(), Err(denied))),
                after,
            })),
        };
        let e = run.take_error().unwrap().to_string();
        assert!(
            e.starts_with(
                "the fix was applied (net.ipv4.ip_local_reserved_ports = 40004), but persisting \
                 it to /etc/sysctl.d/60-tcploop.conf failed: "
            ) && e.ends_with("Permission denied (os error 13) (needs root)"),
            "{e}"
        );
    }

    #[test]
    fn ports_files() {
        let s = parse_ports_file("# services\n40000 40002-40004, 8080\n\n9000 # web\n").unwrap();
        assert_eq!(s.to_string(), "8080,9000,40000,40002-40004");
        let e = parse_ports_file("1\nnope\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn the_fix_as_a_pod_sysctl_a_docker_flag_and_a_sysctl_file() {
        let f = Fix::new(
            &PortSet::parse("30000").unwrap(),
            &PortSet::parse("40004,40005").unwrap(),
        );
        let k = f.kubernetes();
        assert!(
            k.ends_with(
                "securityContext:\n  sysctls:\n    - name: net.ipv4.ip_local_reserved_ports\n      value: \"30000,40004-40005\"\n"
            ),
            "{k}"
        );
        assert_eq!(
            f.docker(),
            "--sysctl net.ipv4.ip_local_reserved_ports=30000,40004-40005\n"
        );
        assert!(f
            .sysctl_d()
            .ends_with("net.ipv4.ip_local_reserved_ports = 30000,40004-40005\n"));
        let none = Fix::new(&PortSet::default(), &PortSet::default());
        assert!(none.kubernetes().ends_with("# Nothing to reserve.\n"));
        assert_eq!(none.docker(), "");
    }
}
