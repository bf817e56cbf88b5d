//! `tcploop doctor PORT`: one answer to "my server cannot bind its port"
//! (`bind: Address already in use`).
//!
//! For `ADDR:PORT` in this network namespace (or in every namespace of the
//! host), [`diagnose`] finds everything that holds the port
//! ([`crate::holders`]: listeners, self-connected sockets, connections using
//! it as their source port, accepted connections, TIME-WAIT and bind-only
//! sockets), who owns each ([`crate::owners`]), what each does to a server's
//! `bind()` with and without `SO_REUSEADDR`, what a real bind says now (the
//! one bind probe, [`crate::sys::diag::bind_probe`]), where the port stands
//! (ephemeral range, reserved) and the predictor's verdict for a client
//! `connect()` while the service is down ([`crate::predict`], the service,
//! its connections and the loops left out). From that it names one
//! [`Verdict`] and the steps of the fix in the order that works: a client
//! that retries loops again after a kill alone, so the reservation comes
//! first.
//!
//! [`fix`] carries out only the safe steps, through the engines that
//! already do them: the reservation ([`crate::audit::apply`]) and the
//! destruction of loops ([`crate::scan::kill`]). It never touches a
//! listener, a bind-only socket or an ordinary connection. Then it checks
//! that a server can bind the port, with and without `SO_REUSEADDR`, and
//! releases it at once.
//!
//! Whether `tcploop shield` is on in the namespace comes from
//! [`crate::shield::protection_here`]; the prediction while down then says
//! `prevented`. Each owner's container (or pod, or systemd service) comes
//! from [`crate::container::of_pids`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::audit;
use crate::holders::{self, Holder, Kind, Verdict};
use crate::host;
use crate::inventory::Inventory;
use crate::model::Socket;
use crate::owners::{self, Owner, Search};
use crate::ports::{EphemeralFacts, FactsError, PortSet};
use crate::predict::{self, Client, Prediction, Situation};
use crate::scan::{self, Killed, NetnsLabel, Skipped};
use crate::sys::diag::{self, DiagError};
use crate::sys::ifaddrs;
use crate::sys::netns::{self, NetnsError};
use crate::sys::procfd::Proc;
use crate::sys::sockopt::{self, ReuseFlags};

/// What to diagnose.
#[derive(Debug, Clone)]
pub struct Config {
    /// The port the server wants.
    pub port: u16,
    /// The address the server binds (`0.0.0.0`: every IPv4 address, what
    /// `*:PORT` means in most servers' logs).
    pub server: IpAddr,
    /// Every network namespace of the host, not only the caller's.
    pub all_netns: bool,
    /// The service's command name (`/proc/PID/comm`), when known: a
    /// listener it owns is the service itself, already running.
    pub service: Option<String>,
}

/// A holder with the processes that own its sockets.
#[derive(Debug, Clone)]
pub struct Owned {
    /// The holder.
    pub holder: Holder,
    /// Its owners, one per process (empty: TIME-WAIT, or not found).
    pub owners: Vec<Owner>,
    /// Sockets with an inode whose owner was not found.
    pub owners_unknown: u64,
    /// A listener owned by the service named with `--service`.
    pub is_service: bool,
    /// The container (or pod, or systemd service) of each owner that runs
    /// in one, by pid, as [`crate::container::Container::label`] gives it.
    pub containers: BTreeMap<u32, String>,
}

/// What a real `bind()` of `ADDR:PORT` says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Without `SO_REUSEADDR`: `Ok(true)` bindable, `Ok(false)` EADDRINUSE.
    pub plain: Result<bool, String>,
    /// With `SO_REUSEADDR` (what most servers set).
    pub reuseaddr: Result<bool, String>,
}

impl Probe {
    /// Binds `addr` both ways and releases it at once.
    pub fn take(addr: SocketAddr) -> Probe {
        let e = |r: io::Result<bool>| r.map_err(|e| format!("bind {addr}: {e}"));
        Probe {
            plain: e(diag::bind_probe(addr, false)),
            reuseaddr: e(diag::bind_probe(addr, true)),
        }
    }

    /// Whether both binds succeeded.
    pub fn free(&self) -> bool {
        self.plain == Ok(true) && self.reuseaddr == Ok(true)
    }
}

/// Where the port stands with the kernel's ephemeral ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Inside `ip_local_port_range`.
    pub in_range: bool,
    /// In `ip_local_reserved_ports`.
    pub reserved: bool,
    /// `tcploop shield` is on in the namespace (how: `bpf (tcx)`,
    /// `iptables (rules)`): a self-connect is turned away whatever the port.
    pub shielded: Option<String>,
}

impl Standing {
    /// In the range and not reserved: the kernel may hand it to clients.
    pub fn exposed(&self) -> bool {
        self.in_range && !self.reserved
    }
}

/// What one step of the fix does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reserve the port (`ip_local_reserved_ports`): `--fix` does it.
    Reserve,
    /// Destroy the loops on the port (`SOCK_DESTROY`): `--fix` does it.
    KillLoops,
    /// Start (or restart) the server.
    StartServer,
    /// Wait for connections or TIME-WAIT sockets to end.
    Wait,
    /// Restart (or stop) the program holding the port.
    RestartHolder,
    /// Nothing tcploop can do: another program's listener or bind.
    Nothing,
}

impl Action {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reserve => "reserve",
            Action::KillLoops => "kill-loops",
            Action::StartServer => "start-server",
            Action::Wait => "wait",
            Action::RestartHolder => "restart-holder",
            Action::Nothing => "nothing",
        }
    }

    /// Whether `--fix` carries it out.
    pub fn automatic(self) -> bool {
        matches!(self, Action::Reserve | Action::KillLoops)
    }
}

/// What a step of the fix is about, with the facts it rests on; the
/// output layer (`report::doctor`) words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Todo {
    /// Reserve `port` (`ip_local_reserved_ports`): the kernel never hands it
    /// to a client again; the server can still bind it.
    Reserve { port: u16 },
    /// Start (or restart) the server on `addr`.
    StartServer { addr: SocketAddr },
    /// A server that sets SO_REUSEADDR can bind `addr` now (the probe says
    /// so); one that does not must wait for the steps after this one.
    ReuseaddrBindsNow { addr: SocketAddr },
    /// The service already runs: `owners` listen on `addrs`.
    ServiceRunning {
        owners: Vec<Owner>,
        addrs: Vec<SocketAddr>,
    },
    /// `owners` listen on `local` as a SO_REUSEPORT group of `sockets`.
    ReuseportGroup {
        owners: Vec<Owner>,
        local: SocketAddr,
        sockets: usize,
    },
    /// Another program (`owners`) listens on `addrs`: nothing to do here.
    OtherListener {
        owners: Vec<Owner>,
        addrs: Vec<SocketAddr>,
    },
    /// Destroy the `count` self-connected sockets on `port`; `exposed`: the
    /// port is still in the kernel's hands (else only a client that binds
    /// it explicitly can loop again).
    DestroyLoops {
        port: u16,
        count: usize,
        exposed: bool,
    },
    /// Destroy the TIME-WAIT socket a closed loop left on `port`, or wait
    /// `secs` more.
    DestroyTimeWait { port: u16, secs: u32 },
    /// Wait for the `count` connections on `port`, all in TIME-WAIT, to
    /// end: `secs` more at most.
    WaitTimeWait { port: u16, count: usize, secs: u32 },
    /// Wait for the `count` connections on `port` to end, or restart
    /// `clients` (ordinary connections are never destroyed).
    WaitOrRestart {
        port: u16,
        count: usize,
        clients: Vec<Owner>,
    },
    /// A socket the dump does not show (only bound, before 6.8) holds `port`.
    InvisibleBind { port: u16 },
    /// `owners` bound `local` without listening or connecting.
    BoundOnly {
        owners: Vec<Owner>,
        local: SocketAddr,
    },
}

/// One step of the fix, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it does.
    pub action: Action,
    /// What it is about (process names inside: the renderer escapes them).
    pub todo: Todo,
    /// The command that does it, when there is one.
    pub command: Option<String>,
}

/// The diagnosis of the port in one network namespace.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The namespace.
    pub netns: NetnsLabel,
    /// The port.
    pub port: u16,
    /// The server's address.
    pub server: IpAddr,
    /// The namespace's ephemeral-port facts.
    pub facts: EphemeralFacts,
    /// Where the port stands.
    pub standing: Standing,
    /// Everything on the port, listeners first.
    pub holders: Vec<Owned>,
    /// The port's state.
    pub verdict: Verdict,
    /// Something refuses the bind that the socket dump does not show (a
    /// bind-only socket on a kernel before 6.8).
    pub invisible_holder: bool,
    /// What a real bind says now.
    pub probe: Probe,
    /// The predictor, for a plain `connect()` to the service while it is
    /// down (its listeners, their connections and the loops left out).
    pub when_down: Prediction,
    /// The destination clients dial (for `when_down`).
    pub client_dest: IpAddr,
    /// The fix, in order.
    pub steps: Vec<Step>,
    /// TCP sockets seen in the namespace.
    pub sockets_seen: u64,
    /// Processes whose fd table could not be read.
    pub processes_unreadable: u64,
}

impl Diagnosis {
    /// The holders that conflict with the server's bind.
    pub fn conflicting(&self) -> impl Iterator<Item = &Owned> {
        self.holders.iter().filter(|h| h.holder.conflicts)
    }

    /// The conflicting loops (alive or in TIME-WAIT).
    pub fn loops(&self) -> impl Iterator<Item = &Owned> {
        self.conflicting()
            .filter(|h| matches!(h.holder.kind, Kind::Loop | Kind::LoopTimeWait))
    }
}

/// What `--fix` did in one namespace.
#[derive(Debug, Clone)]
pub struct FixReport {
    /// The reservation: `None` not needed; `Some(Ok(value))` the kernel's
    /// value after the write; `Some(Err)` why it failed.
    pub reserved: Option<Result<PortSet, String>>,
    /// Each loop and what became of it.
    pub killed: Vec<(Socket, Result<Killed, String>)>,
    /// The bind check afterwards (both ways, released at once).
    pub verify: Probe,
}

impl FixReport {
    /// Whether a step failed.
    pub fn failed(&self) -> bool {
        matches!(self.reserved, Some(Err(_))) || self.killed.iter().any(|(_, r)| r.is_err())
    }
}

/// The diagnosis of one namespace, and with `--fix` what was done and the
/// diagnosis after it.
#[derive(Debug, Clone)]
pub struct NsOutcome {
    /// Before anything was done.
    pub before: Diagnosis,
    /// What `--fix` did.
    pub fix: Option<FixReport>,
    /// The diagnosis after the fix.
    pub after: Option<Diagnosis>,
}

impl NsOutcome {
    /// The diagnosis that stands: after the fix if there was one.
    pub fn last(&self) -> &Diagnosis {
        self.after.as_ref().unwrap_or(&self.before)
    }
}

/// Everything `doctor` found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One per namespace looked at (with `all_netns`, the namespaces where
    /// something is on the port, and always the caller's).
    pub namespaces: Vec<NsOutcome>,
    /// Namespaces that could not be entered, and why.
    pub skipped: Vec<Skipped>,
}

/// Why the diagnosis failed.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The port facts could not be read.
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The socket dump failed.
    #[error(transparent)]
    Dump(#[from] DiagError),
    /// `/proc` could not be listed.
    #[error("listing /proc: {0}")]
    Proc(#[source] io::Error),
    /// The server's address is not one of this namespace's (EADDRNOTAVAIL):
    /// no server could bind it here.
    #[error("{0} is not an address of this network namespace (bind: EADDRNOTAVAIL); give --host an address a server here can bind")]
    NotLocal(IpAddr),
}

/// What one look inside a namespace gathers (the part that must run there).
#[derive(Debug)]
struct Look {
    facts: EphemeralFacts,
    on_port: Vec<Socket>,
    rest: Inventory,
    ifaddrs: Vec<ifaddrs::IfAddr>,
    probe: Probe,
    shield: Option<String>,
}

/// Looks at the calling thread's namespace.
fn look_here(port: u16, server: IpAddr) -> Result<Look, DoctorError> {
    let facts = EphemeralFacts::read()?;
    let bound_visible = facts.kernel.is_some_and(|k| k.dumps_bound_sockets());
    let mut rest = Inventory::new(bound_visible);
    let mut on_port = vec![];
    diag::dump_all(diag::ALL_STATES, |s| {
        if s.local.port() == port {
            on_port.push(*s);
        } else {
            rest.add(s);
        }
    })?;
    // a table that changes during the dump can show a socket twice
    on_port.sort_by_key(|s| (s.family, s.local, s.peer, s.state, s.inode, s.cookie));
    on_port.dedup();
    rest.sockets += on_port.len() as u64;
    let probe = Probe::take(SocketAddr::new(server, port));
    if let Err(e) = diag::bind_probe(SocketAddr::new(server, 0), false) {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            return Err(DoctorError::NotLocal(server));
        }
    }
    Ok(Look {
        facts,
        on_port,
        rest,
        ifaddrs: ifaddrs::list().unwrap_or_default(),
        probe,
        shield: crate::shield::protection_here(),
    })
}

/// Runs `f` in the namespace of `label` (its own: directly).
fn in_ns<T: Send>(label: &NetnsLabel, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    match &label.path {
        None => Ok(f()),
        Some(p) => netns::run_in(p, f),
    }
}

/// The destination clients of a server on `server` dial: the loopback
/// address for a wildcard.
pub fn client_destination(server: IpAddr) -> IpAddr {
    match server {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

/// Diagnoses the port (see the module documentation).
pub fn diagnose(cfg: &Config) -> Result<Outcome, DoctorError> {
    let own = netns::current().map_err(DoctorError::Proc)?;
    let proc = Proc::open().map_err(DoctorError::Proc)?;
    let mut looks: Vec<(NetnsLabel, Look)> = vec![];
    let mut skipped = vec![];
    if cfg.all_netns {
        let list = netns::list(&proc).map_err(DoctorError::Proc)?;
        for n in &list.found {
            let label = n.label(&proc, own);
            match in_ns(&label, || look_here(cfg.port, cfg.server)) {
                Ok(Ok(l)) => {
                    if label.is_own() || !l.on_port.is_empty() || l.probe.plain == Ok(false) {
                        looks.push((label, l));
                    }
                }
                Ok(Err(e)) if label.is_own() => return Err(e),
                // the server's address does not exist there: nothing to say
                Ok(Err(DoctorError::NotLocal(_))) => {}
                Ok(Err(e)) => skipped.push(Skipped {
                    netns: label,
                    reason: e.to_string(),
                }),
                Err(NetnsError::Open { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => skipped.push(Skipped {
                    netns: label,
                    reason: e.to_string(),
                }),
            }
        }
    } else {
        let pid = std::process::id();
        let label = NetnsLabel {
            inode: own,
            pid: Some(pid),
            comm: proc.comm(pid),
            name: None,
            path: None,
        };
        looks.push((label, look_here(cfg.port, cfg.server)?));
    }
    looks.sort_by_key(|(l, _)| (!l.is_own(), l.inode));
    let inodes: Vec<u64> = looks
        .iter()
        .flat_map(|(_, l)| l.on_port.iter().map(|s| u64::from(s.inode)))
        .collect();
    let found = owners::find_owners(inodes, Search::FirstOwner).map_err(DoctorError::Proc)?;
    let namespaces = looks
        .into_iter()
        .map(|(label, look)| {
            let flags = reuse_flags(&look.on_port, &found);
            let containers = containers_of(&look.on_port, &found);
            (label, look, flags, containers)
        })
        .map(|(label, look, flags, containers)| NsOutcome {
            before: build(cfg, label, look, &found, &flags, &containers),
            fix: None,
            after: None,
        })
        .collect();
    Ok(Outcome {
        namespaces,
        skipped,
    })
}

/// Carries out the safe steps of each diagnosis (reserve, kill loops), then
/// checks the bind and diagnoses again. Never touches a listener, a
/// bind-only socket or an ordinary connection.
pub fn fix(cfg: &Config, outcome: &mut Outcome) -> Result<(), DoctorError> {
    for ns in &mut outcome.namespaces {
        let d = &ns.before;
        let reserve = d.steps.iter().any(|s| s.action == Action::Reserve);
        let loops: Vec<Socket> = if d.steps.iter().any(|s| s.action == Action::KillLoops) {
            d.loops()
                .flat_map(|h| h.holder.sockets.iter().copied())
                .collect()
        } else {
            vec![]
        };
        let label = d.netns.clone();
        let here = NetnsLabel {
            path: None,
            ..label.clone()
        };
        let port = cfg.port;
        let server = cfg.server;
        let res = in_ns(&label, move || {
            // audit's writer: under its lock, only ever grows the set, verified
            let reserved = reserve.then(|| {
                audit::apply(&PortSet::from_ports([port]))
                    .map(|a| a.after)
                    .map_err(|e| {
                        if e.is_permission() {
                            format!("{e} (needs root, or CAP_NET_ADMIN over the network namespace)")
                        } else {
                            e.to_string()
                        }
                    })
            });
            let killed = loops
                .into_iter()
                .map(|socket| {
                    let l = scan::Loop {
                        socket,
                        owners: vec![],
                        netns: here.clone(),
                    };
                    (socket, scan::kill(&l).map_err(|e| e.to_string()))
                })
                .collect();
            let verify = Probe::take(SocketAddr::new(server, port));
            let look = look_here(port, server);
            (
                FixReport {
                    reserved,
                    killed,
                    verify,
                },
                look,
            )
        });
        let (report, look) = match res {
            Ok(r) => r,
            Err(e) => (
                FixReport {
                    reserved: reserve.then(|| Err(e.to_string())),
                    killed: vec![],
                    verify: Probe {
                        plain: Err(e.to_string()),
                        reuseaddr: Err(e.to_string()),
                    },
                },
                Err(DoctorError::Proc(io::Error::other(e.to_string()))),
            ),
        };
        ns.fix = Some(report);
        let look = look?;
        let inodes: Vec<u64> = look.on_port.iter().map(|s| u64::from(s.inode)).collect();
        let found = owners::find_owners(inodes, Search::FirstOwner).map_err(DoctorError::Proc)?;
        let flags = reuse_flags(&look.on_port, &found);
        let containers = containers_of(&look.on_port, &found);
        ns.after = Some(build(cfg, label, look, &found, &flags, &containers));
    }
    Ok(())
}

/// Whether a process's command name is the service's: `/proc/PID/comm` is
/// cut at 15 bytes, and a service is often named by the first part of its
/// program's name (`redis` for `redis-server`).
pub fn is_service_comm(comm: &str, service: &str) -> bool {
    !service.is_empty()
        && (comm == service
            || comm.starts_with(service)
            || (comm.len() == 15 && service.starts_with(comm)))
}

/// The containers of the owners of the sockets on the port, by pid
/// ([`crate::container::of_pids`]).
fn containers_of(
    on_port: &[Socket],
    found: &owners::Owners,
) -> BTreeMap<u32, crate::container::Container> {
    crate::container::of_pids(
        on_port
            .iter()
            .flat_map(|s| found.of(u64::from(s.inode)).iter().map(|o| o.pid)),
    )
}

/// At most this many sockets of a port have their options read.
const FLAGS_READ_MAX: usize = 256;

/// The `SO_REUSEADDR`/`SO_REUSEPORT` of the sockets on the port whose owner
/// was found, by inode (at most [`FLAGS_READ_MAX`]; a socket whose options
/// cannot be read is left out).
fn reuse_flags(on_port: &[Socket], found: &owners::Owners) -> HashMap<u32, ReuseFlags> {
    on_port
        .iter()
        .filter(|s| s.inode != 0)
        .filter_map(|s| {
            let o = found.of(u64::from(s.inode)).first()?;
            Some((s.inode, o.pid, o.fd))
        })
        .take(FLAGS_READ_MAX)
        .filter_map(|(inode, pid, fd)| {
            let f = sockopt::reuse_flags(pid, fd, u64::from(inode)).ok()??;
            Some((inode, f))
        })
        .collect()
}

fn build(
    cfg: &Config,
    netns: NetnsLabel,
    look: Look,
    found: &owners::Owners,
    flags: &HashMap<u32, ReuseFlags>,
    containers: &BTreeMap<u32, crate::container::Container>,
) -> Diagnosis {
    let port = cfg.port;
    let raw = holders::analyze(&look.on_port, cfg.server);
    let unreadable = found.processes_denied + found.processes_failed;
    let holders: Vec<Owned> = raw
        .into_iter()
        .map(|mut holder| {
            let read: Vec<ReuseFlags> = holder
                .sockets
                .iter()
                .filter_map(|s| flags.get(&s.inode).copied())
                .collect();
            let complete = read.len() == holder.sockets.len();
            holder.refine(&read, complete);
            let mut by_pid: BTreeMap<u32, Owner> = BTreeMap::new();
            let mut unknown = 0;
            for i in holder.inodes() {
                let o = found.of(i);
                if o.is_empty() {
                    unknown += 1;
                }
                for o in o {
                    by_pid.entry(o.pid).or_insert_with(|| o.clone());
                }
            }
            let owners: Vec<Owner> = by_pid.into_values().collect();
            let is_service = holder.kind == Kind::Listener
                && cfg
                    .service
                    .as_deref()
                    .is_some_and(|svc| owners.iter().any(|o| is_service_comm(&o.comm, svc)));
            let containers = owners
                .iter()
                .filter_map(|o| containers.get(&o.pid).map(|c| (o.pid, c.label())))
                .collect();
            Owned {
                holder,
                owners,
                owners_unknown: unknown,
                is_service,
                containers,
            }
        })
        .collect();
    let plain: Vec<Holder> = holders.iter().map(|h| h.holder.clone()).collect();
    let mut verdict = holders::verdict(&plain);
    let invisible_holder = verdict == Verdict::Free && look.probe.plain == Ok(false);
    if invisible_holder {
        verdict = Verdict::BindHeld;
    }
    let f = &look.facts;
    let standing = Standing {
        in_range: f.range.contains(port),
        reserved: f.reserved.contains(port),
        shielded: look.shield.clone(),
    };
    let dest = client_destination(cfg.server);
    let h = host::classify(dest, 0, &look.ifaddrs);
    let down = holders::when_down(&look.rest, &look.on_port);
    let mut when_down = predict::predict(
        &Situation {
            facts: f,
            inventory: Some(&down),
            host: &h,
            client: Client::Connect,
        },
        port,
    );
    if let Some(how) = &standing.shielded {
        predict::shielded(&mut when_down, how);
    }
    let mut d = Diagnosis {
        netns,
        port,
        server: cfg.server,
        facts: look.facts.clone(),
        standing,
        holders,
        verdict,
        invisible_holder,
        probe: look.probe,
        when_down,
        client_dest: h.effective,
        steps: vec![],
        sockets_seen: look.rest.sockets,
        processes_unreadable: unreadable,
    };
    d.steps = steps(&d);
    d
}

fn step(action: Action, todo: Todo, command: Option<String>) -> Step {
    Step {
        action,
        todo,
        command,
    }
}

/// The fix, in the order that works (pure: from the diagnosis).
pub fn steps(d: &Diagnosis) -> Vec<Step> {
    let p = d.port;
    let addr = SocketAddr::new(d.server, p);
    let reserve_cmd = format!("tcploop audit --ports {p} --apply --persist");
    let kill_cmd = format!("tcploop kill --port {p} --yes");
    let reserve = || {
        step(
            Action::Reserve,
            Todo::Reserve { port: p },
            Some(reserve_cmd.clone()),
        )
    };
    let start = step(Action::StartServer, Todo::StartServer { addr }, None);
    let exposed = d.standing.exposed();
    let mut v = vec![];
    if d.verdict != Verdict::Free
        && d.verdict != Verdict::Listening
        && d.probe.plain == Ok(false)
        && d.probe.reuseaddr == Ok(true)
    {
        // e.g. the server's own connections in TIME-WAIT after a restart
        v.push(step(
            Action::StartServer,
            Todo::ReuseaddrBindsNow { addr },
            None,
        ));
    }
    match d.verdict {
        Verdict::Free => {
            if exposed && d.when_down.verdict == predict::Verdict::Possible {
                v.push(reserve());
            }
        }
        Verdict::Listening => {
            let ls: Vec<&Owned> = d
                .conflicting()
                .filter(|h| h.holder.kind == Kind::Listener)
                .collect();
            let addrs = |hs: &[&Owned]| hs.iter().map(|h| h.holder.local()).collect::<Vec<_>>();
            let owners = |hs: &[&Owned]| {
                let mut o: Vec<Owner> = hs.iter().flat_map(|h| h.owners.clone()).collect();
                o.sort_by_key(|o| o.pid);
                o.dedup_by_key(|o| o.pid);
                o
            };
            let service: Vec<&Owned> = ls.iter().copied().filter(|h| h.is_service).collect();
            let groups: Vec<&Owned> = ls
                .iter()
                .copied()
                .filter(|h| !h.is_service && h.holder.reuseport_group())
                .collect();
            let others: Vec<&Owned> = ls
                .iter()
                .copied()
                .filter(|h| !h.is_service && !h.holder.reuseport_group())
                .collect();
            if !service.is_empty() {
                v.push(step(
                    Action::Nothing,
                    Todo::ServiceRunning {
                        owners: owners(&service),
                        addrs: addrs(&service),
                    },
                    None,
                ));
            }
            for h in groups {
                v.push(step(
                    Action::Nothing,
                    Todo::ReuseportGroup {
                        owners: h.owners.clone(),
                        local: h.holder.local(),
                        sockets: h.holder.sockets.len(),
                    },
                    None,
                ));
            }
            if !others.is_empty() {
                v.push(step(
                    Action::Nothing,
                    Todo::OtherListener {
                        owners: owners(&others),
                        addrs: addrs(&others),
                    },
                    None,
                ));
            }
        }
        Verdict::StolenByLoop | Verdict::TimeWait if d.loops().next().is_some() => {
            if exposed {
                v.push(reserve());
            }
            let live = d.loops().any(|h| h.holder.kind == Kind::Loop);
            let todo = if live {
                Todo::DestroyLoops {
                    port: p,
                    count: d.loops().count(),
                    exposed,
                }
            } else {
                let left = d
                    .loops()
                    .filter_map(|h| h.holder.time_wait_left_ms())
                    .max()
                    .unwrap_or(0);
                Todo::DestroyTimeWait {
                    port: p,
                    secs: left.div_ceil(1000),
                }
            };
            v.push(step(Action::KillLoops, todo, Some(kill_cmd)));
            v.push(start);
        }
        Verdict::StolenBySourcePort | Verdict::TimeWait => {
            if exposed {
                v.push(reserve());
            }
            let mut count = 0;
            let mut left = 0u32;
            let mut clients: Vec<Owner> = vec![];
            for h in d.conflicting().filter(|h| {
                matches!(
                    h.holder.kind,
                    Kind::SourcePort | Kind::Accepted | Kind::TimeWait
                )
            }) {
                count += h.holder.sockets.len();
                left = left.max(h.holder.time_wait_left_ms().unwrap_or(0));
                clients.extend(h.owners.iter().cloned());
            }
            clients.sort_by_key(|o| o.pid);
            clients.dedup_by_key(|o| o.pid);
            let live = d
                .conflicting()
                .any(|h| matches!(h.holder.kind, Kind::SourcePort | Kind::Accepted));
            v.push(if live {
                step(
                    Action::RestartHolder,
                    Todo::WaitOrRestart {
                        port: p,
                        count,
                        clients,
                    },
                    None,
                )
            } else {
                step(
                    Action::Wait,
                    Todo::WaitTimeWait {
                        port: p,
                        count,
                        secs: left.div_ceil(1000),
                    },
                    None,
                )
            });
            v.push(start);
        }
        Verdict::StolenByLoop => {}
        Verdict::BindHeld => {
            let holders: Vec<&Owned> = d
                .conflicting()
                .filter(|h| h.holder.kind == Kind::BindOnly)
                .collect();
            if holders.is_empty() {
                v.push(step(Action::Nothing, Todo::InvisibleBind { port: p }, None));
            }
            for h in holders {
                v.push(step(
                    Action::RestartHolder,
                    Todo::BoundOnly {
                        owners: h.owners.clone(),
                        local: h.holder.local(),
                    },
                    None,
                ));
            }
        }
    }
    v
}

/// A port that is stolen now (for `check`): held by self-connected sockets
/// or by connections using it as their source port, so that a server's bind
/// fails; with the prediction for "while the service is down", kept apart.
#[derive(Debug, Clone)]
pub struct Theft {
    /// The thieves: loops (alive or in TIME-WAIT) and source-port
    /// connections that conflict with the server's address.
    pub holders: Vec<Owned>,
    /// What a real bind of the server's address says now.
    pub probe: Probe,
    /// The predictor for a client `connect()` with these holders gone and
    /// the service down.
    pub when_down: Prediction,
}

/// Whether `port` is stolen now from a server on `host`'s address (see
/// [`Theft`]); `None` when nothing steals it (free, listening, held by a
/// bind, or the bind succeeds all the same). `survey` must have kept the
/// port's sockets ([`Survey::take_keeping`](crate::survey::Survey::take_keeping)).
pub fn theft(
    survey: &crate::survey::Survey,
    host: &host::Host,
    client: Client,
    port: u16,
) -> Option<Theft> {
    let inv = survey.inventory.as_ref().ok()?;
    let on_port: Vec<Socket> = survey
        .kept
        .iter()
        .filter(|s| s.local.port() == port)
        .copied()
        .collect();
    let server = host.effective;
    let all = holders::analyze(&on_port, server);
    if all.iter().any(|h| h.conflicts && h.kind == Kind::Listener) {
        return None;
    }
    let thieves: Vec<Holder> = all
        .into_iter()
        .filter(|h| {
            h.conflicts && matches!(h.kind, Kind::Loop | Kind::LoopTimeWait | Kind::SourcePort)
        })
        .collect();
    if thieves.is_empty() {
        return None;
    }
    let probe = Probe::take(SocketAddr::new(server, port));
    if probe.plain == Ok(true) {
        return None;
    }
    let inodes: Vec<u64> = thieves.iter().flat_map(|h| h.inodes()).collect();
    let found = owners::find_owners(inodes, Search::FirstOwner).unwrap_or_default();
    let holders = thieves
        .into_iter()
        .map(|holder| {
            let mut owners: Vec<Owner> =
                holder.inodes().flat_map(|i| found.of(i).to_vec()).collect();
            owners.sort_by_key(|o| o.pid);
            owners.dedup_by_key(|o| o.pid);
            let owners_unknown = holder.inodes().filter(|i| found.of(*i).is_empty()).count() as u64;
            Owned {
                holder,
                owners,
                owners_unknown,
                is_service: false,
                containers: BTreeMap::new(),
            }
        })
        .collect();
    let down = holders::when_down(&inv.without_port(port), &on_port);
    let when_down = predict::predict(
        &Situation {
            facts: &survey.facts,
            inventory: Some(&down),
            host,
            client,
        },
        port,
    );
    Some(Theft {
        holders,
        probe,
        when_down,
    })
}

/// Why `doctor` stopped: the diagnosis, or the fix, failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The diagnosis failed.
    #[error("diagnosing the port")]
    Diagnose(#[source] DoctorError),
    /// The fix failed.
    #[error("fixing the port")]
    Fix(#[source] DoctorError),
}

/// `tcploop doctor`: the diagnosis, and with `fix` the safe steps and the
/// diagnosis after them.
pub fn run(cfg: &Config, fix: bool) -> Result<Outcome, RunError> {
    let mut outcome = diagnose(cfg).map_err(RunError::Diagnose)?;
    if fix {
        self::fix(cfg, &mut outcome).map_err(RunError::Fix)?;
    }
    Ok(outcome)
}

impl Outcome {
    /// Whether a step of the fix failed somewhere.
    pub fn fix_failed(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.fix.as_ref().is_some_and(FixReport::failed))
    }

    /// Whether something still holds the port somewhere (after the fix,
    /// if there was one).
    pub fn held(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.last().verdict != Verdict::Free)
    }
}

/// Where a service's port comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port.
    pub port: u16,
    /// The address, when the unit names one.
    pub addr: Option<IpAddr>,
    /// Where it was found (`/etc/services`, a unit file).
    pub source: String,
}

/// Finds the TCP port of the service `name`: a systemd socket unit
/// `NAME.socket` (its first `ListenStream=` that is a port or an
/// address:port), then `/etc/services`.
pub fn service_port(name: &str) -> Result<ServicePort, String> {
    let unit = format!("{name}.socket");
    for dir in [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let path = Path::new(dir).join(&unit);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some((port, addr)) = listen_stream(&text) {
                return Ok(ServicePort {
                    port,
                    addr,
                    source: path.display().to_string(),
                });
            }
        }
    }
    let text = std::fs::read_to_string("/etc/services")
        .map_err(|e| format!("reading /etc/services: {e}"))?;
    etc_services(&text, name)
        .map(|port| ServicePort {
            port,
            addr: None,
            source: "/etc/services".into(),
        })
        .ok_or_else(|| {
            format!(
                "no TCP port for service {name:?}: no {unit} unit with a ListenStream= port, and \
                 not in /etc/services; give the port instead"
            )
        })
}

/// The TCP port of `name` (or one of its aliases) in `/etc/services` text.
pub fn etc_services(text: &str, name: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut f = line.split_whitespace();
        let first = f.next()?;
        let (port, proto) = f.next()?.split_once('/')?;
        let aliases: Vec<&str> = f.collect();
        (proto == "tcp" && (first == name || aliases.contains(&name)))
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// The first `ListenStream=` of a socket unit that is a TCP port
/// (`6379`, `127.0.0.1:6379`, `[::1]:6379`), with its address.
pub fn listen_stream(unit: &str) -> Option<(u16, Option<IpAddr>)> {
    unit.lines().find_map(|line| {
        let v = line.trim().strip_prefix("ListenStream=")?.trim();
        if let Ok(p) = v.parse::<u16>() {
            return Some((p, None));
        }
        let a: SocketAddr = v.parse().ok()?;
        Some((a.port(), Some(a.ip())))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::TcpState;

    pub(crate) fn sock(st: TcpState, local: &str, peer: &str, inode: u32) -> Socket {
        Socket {
            inode,
            ..Socket::fixture(st, local, peer)
        }
    }

    pub(crate) fn owner(pid: u32, comm: &str, fd: i32) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
            fd,
            container: None,
        }
    }

    pub(crate) fn diagnosis(
        socks: &[Socket],
        reserved: &str,
        probe_plain: bool,
        names: &[(u32, Owner)],
    ) -> Diagnosis {
        diagnosis_with(socks, reserved, (probe_plain, probe_plain), names)
    }

    /// A diagnosis from fixtures; `probe`: what the binds without and with
    /// SO_REUSEADDR say (`true`: bindable).
    fn diagnosis_with(
        socks: &[Socket],
        reserved: &str,
        probe: (bool, bool),
        names: &[(u32, Owner)],
    ) -> Diagnosis {
        let facts = EphemeralFacts::fixture(40000, 40009, reserved);
        let look = Look {
            facts,
            on_port: socks.to_vec(),
            rest: Inventory::new(true),
            shield: None,
            ifaddrs: vec![ifaddrs::IfAddr {
                name: "lo".into(),
                addr: "127.0.0.1".parse().unwrap(),
                scope_id: 0,
                up: true,
            }],
            probe: Probe {
                plain: Ok(probe.0),
                reuseaddr: Ok(probe.1),
            },
        };
        let mut found = owners::Owners::default();
        found.processes_read = 1;
        for (inode, o) in names {
            found.insert(u64::from(*inode), o.clone());
        }
        let cfg = Config {
            port: 40004,
            server: "0.0.0.0".parse().unwrap(),
            all_netns: false,
            service: Some("redis".into()),
        };
        let label = NetnsLabel {
            inode: 1,
            pid: None,
            comm: None,
            name: None,
            path: None,
        };
        build(&cfg, label, look, &found, &HashMap::new(), &BTreeMap::new())
    }

    fn actions(d: &Diagnosis) -> Vec<Action> {
        d.steps.iter().map(|s| s.action).collect()
    }

    #[test]
    fn a_loop_is_fixed_by_reserving_first_then_killing() {
        let d = diagnosis(
            &[sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                9,
            )],
            "",
            false,
            &[(9, owner(31201, "redis-cli", 3))],
        );
        assert_eq!(d.verdict, Verdict::StolenByLoop);
        assert_eq!(d.holders[0].owners[0].pid, 31201);
        assert_eq!(
            actions(&d),
            [Action::Reserve, Action::KillLoops, Action::StartServer]
        );
        assert_eq!(
            d.steps[0].command.as_deref(),
            Some("tcploop audit --ports 40004 --apply --persist")
        );
        assert_eq!(
            d.when_down.verdict,
            predict::Verdict::Possible,
            "{:?}",
            d.when_down
        );
        // already reserved: no reservation step
        let d = diagnosis(
            &[sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                9,
            )],
            "40004",
            false,
            &[],
        );
        assert_eq!(actions(&d), [Action::KillLoops, Action::StartServer]);
    }

    #[test]
    fn source_port_holders_are_waited_for_never_killed() {
        let d = diagnosis(
            &[
                sock(
                    TcpState::Established,
                    "127.0.0.1:40004",
                    "127.0.0.1:50000",
                    9,
                ),
                sock(
                    TcpState::Established,
                    "127.0.0.1:40004",
                    "127.0.0.1:50002",
                    10,
                ),
            ],
            "",
            false,
            &[(9, owner(7, "sidecar", 3)), (10, owner(7, "sidecar", 4))],
        );
        assert_eq!(d.verdict, Verdict::StolenBySourcePort);
        assert_eq!(d.holders[0].owners.len(), 1, "one process");
        assert_eq!(
            actions(&d),
            [Action::Reserve, Action::RestartHolder, Action::StartServer]
        );
        let Todo::WaitOrRestart {
            count: 2, clients, ..
        } = &d.steps[1].todo
        else {
            panic!("{:?}", d.steps)
        };
        assert_eq!(
            clients
                .iter()
                .map(|o| (o.pid, &*o.comm))
                .collect::<Vec<_>>(),
            [(7, "sidecar")]
        );
    }

    #[test]
    fn listeners_the_service_and_strangers() {
        let l = [sock(TcpState::Listen, "0.0.0.0:40004", "0.0.0.0:0", 9)];
        let d = diagnosis(&l, "", false, &[(9, owner(5, "redis-server", 6))]);
        assert_eq!(d.verdict, Verdict::Listening);
        assert!(d.holders[0].is_service);
        assert!(
            matches!(&d.steps[0].todo, Todo::ServiceRunning { owners, .. } if owners[0].pid == 5),
            "{:?}",
            d.steps
        );
        let d = diagnosis(&l, "", false, &[(9, owner(5, "python3", 6))]);
        assert!(!d.holders[0].is_service);
        assert_eq!(actions(&d), [Action::Nothing]);
        assert!(
            matches!(d.steps[0].todo, Todo::OtherListener { .. }),
            "{:?}",
            d.steps
        );
    }

    #[test]
    fn free_but_exposed_is_reserved_and_an_invisible_holder_is_said() {
        let d = diagnosis(&[], "", true, &[]);
        assert_eq!(d.verdict, Verdict::Free);
        assert_eq!(actions(&d), [Action::Reserve]);
        let d = diagnosis(&[], "40004", true, &[]);
        assert!(d.steps.is_empty());
        let d = diagnosis(&[], "", false, &[]);
        assert_eq!(d.verdict, Verdict::BindHeld);
        assert!(d.invisible_holder);
    }

    #[test]
    fn time_wait_loops_are_killed_and_other_time_waits_waited_for() {
        let mut tw = sock(TcpState::TimeWait, "127.0.0.1:40004", "127.0.0.1:40004", 0);
        tw.expires_ms = 41_500;
        let d = diagnosis(&[tw], "", false, &[]);
        assert_eq!(d.verdict, Verdict::TimeWait);
        assert_eq!(
            actions(&d),
            [Action::Reserve, Action::KillLoops, Action::StartServer]
        );
        let mut other = sock(TcpState::TimeWait, "127.0.0.1:40004", "127.0.0.1:6379", 0);
        other.expires_ms = 41_500;
        let d = diagnosis(&[other], "40004", false, &[]);
        assert_eq!(actions(&d), [Action::Wait, Action::StartServer]);
        assert_eq!(
            d.steps[0].todo,
            Todo::WaitTimeWait {
                port: 40004,
                count: 1,
                secs: 42
            }
        );
        // the TIME-WAIT sockets had SO_REUSEADDR (a server's own, after a
        // restart): the check lets a SO_REUSEADDR server bind now, and says so
        let d = diagnosis_with(&[other], "", (false, true), &[]);
        assert_eq!(
            actions(&d),
            [
                Action::StartServer,
                Action::Reserve,
                Action::Wait,
                Action::StartServer
            ]
        );
        assert_eq!(
            d.steps[0].todo,
            Todo::ReuseaddrBindsNow {
                addr: "0.0.0.0:40004".parse().unwrap()
            }
        );
    }

    #[test]
    fn service_ports_from_etc_services_and_socket_units() {
        let services = "# comment\nredis\t\t6379/tcp\nsomething 7/udp\nhttp 80/tcp www # web\n";
        assert_eq!(etc_services(services, "redis"), Some(6379));
        assert_eq!(etc_services(services, "www"), Some(80));
        assert_eq!(etc_services(services, "something"), None);
        let unit = "[Socket]\nListenStream=/run/x.sock\nListenStream=127.0.0.1:8080\n";
        assert_eq!(
            listen_stream(unit),
            Some((8080, Some("127.0.0.1".parse().unwrap())))
        );
        assert_eq!(listen_stream("ListenStream=9000\n"), Some((9000, None)));
        assert!(is_service_comm("redis-server", "redis"));
        assert!(!is_service_comm("python3", "redis"));
    }
}
