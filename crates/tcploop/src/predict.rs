//! The predictor: can a client's `connect()` to host:port end connected to
//! itself in this network namespace, now, and after how many tries?
//!
//! It follows the decision procedure of the kernel's source-port choice
//! (`__inet_hash_connect()` for `connect()`, `inet_csk_find_open_port()` for
//! `bind(addr, 0)`), step by step:
//!
//! - **A. Source address.** The kernel's source must equal the destination:
//!   see [`crate::host`].
//! - **B. Who picks the port.** Plain `connect()` (the usual client),
//!   `bind(addr, 0)` then `connect()`, or a socket with `IP_LOCAL_PORT_RANGE`
//!   ([`Client`]).
//! - **C. Candidates.** The port must be one the kernel can hand out: inside
//!   `ip_local_port_range` (the top port of an odd-sized range never is),
//!   not in `ip_local_reserved_ports`.
//! - **D. Usable.** Nothing may hold the port with `bind()` or `listen()` (on
//!   any address, IPv4 or IPv6: the bind table is shared); a listener makes
//!   connects succeed for real. Ports that are merely the source port of
//!   other connections do not protect.
//! - **E. Parity** (Linux 4.6+). `connect()` tries the ports of `low`'s parity
//!   first and uses the other parity only when every one of those is taken;
//!   `bind(0)` does the opposite.
//! - **F. Rate** (Linux 5.18+). Each attempt to the same destination walks
//!   2 to 16 ports forward from a hashed, perturbed start, so each try hits
//!   the target with probability about 1/N, N being the usable candidates of
//!   its parity: about N tries on average (14,116 for the default range).
//!
//! Pure: the caller gathers the facts, this module decides.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::host::{Host, HostClass};
use crate::inventory::Inventory;
use crate::model::TcpState;
use crate::ports::{EphemeralFacts, KernelVersion, Parity, PortRange};

/// The verdict for one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A loop can happen; [`Prediction::expected_tries`] says how soon.
    Possible,
    /// A loop cannot happen here now; the reasons say why.
    Impossible,
    /// Something listens on the port: connects succeed, and are not loops.
    Listening,
    /// A loop would be possible, but the shield (`tcploop shield`) answers
    /// the self-connect SYN with a reset: the `connect()` fails with
    /// ECONNREFUSED, as for any closed port.
    Prevented,
    /// The facts needed are missing; the reasons say which.
    Unknown,
}

impl Verdict {
    /// The name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Possible => "possible",
            Verdict::Impossible => "impossible",
            Verdict::Listening => "listening",
            Verdict::Prevented => "prevented",
            Verdict::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the client gets its source port (step B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Plain `connect()`, the usual client (std, tokio, Java, Node, curl).
    Connect,
    /// `bind(addr, 0)` then `connect()`; `reuseaddr`: SO_REUSEADDR was set
    /// (the kernel then searches the lower half of the range first).
    Bind {
        /// SO_REUSEADDR set before bind.
        reuseaddr: bool,
    },
    /// `IP_LOCAL_PORT_RANGE` set on the socket (Linux 6.3+).
    LocalRange(PortRange),
}

/// The prediction for one port.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The destination port.
    pub port: u16,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, one step each, in the order of the decision procedure. They
    /// carry data; `report` words them.
    pub reasons: Vec<Reason>,
    /// Mean number of `connect()` calls until the loop (when possible).
    pub expected_tries: Option<f64>,
}

/// Which of the kernel's port choosers a reason speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chooser {
    /// `connect()` on an unbound socket (`__inet_hash_connect()`).
    Connect,
    /// `bind(addr, 0)` (`inet_csk_find_open_port()`).
    BindZero,
}

/// One step of the decision procedure, with the facts it rests on. The
/// wording lives in the output layer (`report::predict`), so the engine
/// never builds English and a JSON consumer or a test can match on data.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// A: `addr` is an address of this host, on `iface`: source == destination.
    LocalAddress { addr: IpAddr, iface: String },
    /// A: `addr` (0.0.0.0 or ::) means this host; the kernel uses `effective`.
    Unspecified { addr: IpAddr, effective: IpAddr },
    /// A: a 127/8 address not on any interface: the source is 127.0.0.1.
    OtherLoopback { addr: IpAddr },
    /// A: `lo` is down: connect() fails with ENETUNREACH.
    LoopbackDown { addr: IpAddr },
    /// A: not an address of this namespace: source != destination.
    Remote { addr: IpAddr },
    /// The kernel release could not be parsed.
    KernelUnknown { release: String },
    /// D: a listener accepts `dest:port`: connects reach a server.
    Listening {
        listen: Vec<SocketAddr>,
        dest: IpAddr,
        port: u16,
    },
    /// D: a listener on another address holds the port.
    ListenerHolds { port: u16, listen: Vec<SocketAddr> },
    /// D: `bind()` holds the port.
    BindHolds { port: u16, bound: Vec<SocketAddr> },
    /// D: a self-connected socket already holds `addr:port`.
    AlreadyLooped { addr: IpAddr, port: u16 },
    /// D: an earlier loop on the port is in TIME-WAIT, `ms_left` more.
    TimeWait { port: u16, ms_left: u32 },
    /// D: `count` connected sockets use the port as their local port.
    ConnectedUsers { port: u16, count: u32 },
    /// D: this kernel's dump hides sockets that are only bound (before 6.8).
    BoundInvisible,
    /// D: no socket dump: holders are unknown.
    NoSocketDump,
    /// C: the port is outside the ephemeral range.
    OutsideRange {
        port: u16,
        range: PortRange,
        chooser: Chooser,
    },
    /// C: the top port of an odd-sized range is never picked by connect().
    OddTop { port: u16, range: PortRange },
    /// C: the port is in `ip_local_reserved_ports`.
    Reserved { port: u16 },
    /// E (before 4.6): both parities in one lap of `usable` ports.
    SequentialScan {
        kernel: KernelVersion,
        port: u16,
        usable: usize,
    },
    /// E: the port has the parity connect() tries first (`low`'s).
    PreferredParity { port: u16, parity: Parity, low: u16 },
    /// E: every port of the preferred parity is taken: the other one is used.
    ParityFallback {
        port: u16,
        parity: Parity,
        preferred: Parity,
        range: PortRange,
    },
    /// E: the port has the other parity and `free` preferred ports remain.
    OtherParity {
        port: u16,
        parity: Parity,
        preferred: Parity,
        low: u16,
        free: usize,
    },
    /// F (5.12+): each try hits with probability 1/`usable`.
    Rate { usable: usize },
    /// F (before 5.12): the kernel walks the candidates in order.
    InOrder {
        kernel: KernelVersion,
        usable: usize,
    },
    /// bind(0) reaches this tier only after every earlier one is busy.
    BindLaterTier { parity: Parity, from: u16, to: u16 },
    /// bind(0)'s first tier; `lower_half` with SO_REUSEADDR.
    BindFirstTier {
        parity: Parity,
        lower_half: Option<(u16, u16)>,
    },
    /// bind(0) picks at random among `usable` candidates.
    RandomPick { usable: usize },
    /// bind(0) finds `free` ports in an earlier tier before reaching `port`.
    BindEarlierTier {
        free: usize,
        parity: Parity,
        from: u16,
        to: u16,
        port: u16,
    },
    /// IP_LOCAL_PORT_RANGE does not exist on this kernel (before 6.3).
    NoLocalRangeOption { kernel: KernelVersion },
    /// The port is outside the socket's effective range.
    OutsideSocketRange {
        port: u16,
        effective: PortRange,
        range: PortRange,
    },
    /// 6.3-6.7: the parity rule applies inside the socket's range.
    LocalRangeKeepsParity {
        kernel: KernelVersion,
        effective: PortRange,
    },
    /// 6.8+: IP_LOCAL_PORT_RANGE removes the parity preference.
    LocalRangeNoParity { effective: PortRange },
    /// `usable` candidates, about that many tries.
    Candidates { usable: usize },
    /// The shield is on (`how`): the self-connect SYN is reset.
    Shielded { how: String },
}

/// Everything the predictor knows about this namespace.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The ephemeral-port facts.
    pub facts: &'a EphemeralFacts,
    /// Port holders; `None` when the socket dump was not available.
    pub inventory: Option<&'a Inventory>,
    /// The destination address.
    pub host: &'a Host,
    /// The kind of client.
    pub client: Client,
}

struct Acc {
    reasons: Vec<Reason>,
}

impl Acc {
    fn say(&mut self, r: Reason) {
        self.reasons.push(r);
    }
}

/// Applies the shield to a prediction: `possible` becomes `prevented`, with
/// the mechanism named (`how`, e.g. `bpf (tcx)`) in a last reason.
pub fn shielded(p: &mut Prediction, how: &str) {
    if p.verdict == Verdict::Possible {
        p.verdict = Verdict::Prevented;
        p.expected_tries = None;
        p.reasons.push(Reason::Shielded { how: how.into() });
    }
}

/// Runs the decision procedure for `port`.
pub fn predict(s: &Situation<'_>, port: u16) -> Prediction {
    let mut acc = Acc { reasons: vec![] };
    let (verdict, expected) = decide(s, port, &mut acc);
    Prediction {
        port,
        verdict,
        reasons: acc.reasons,
        expected_tries: expected,
    }
}

fn decide(s: &Situation<'_>, port: u16, acc: &mut Acc) -> (Verdict, Option<f64>) {
    // A. Source address.
    let h = s.host;
    let addr = h.addr;
    match &h.class {
        HostClass::Local { iface } => acc.say(Reason::LocalAddress {
            addr,
            iface: iface.clone(),
        }),
        HostClass::Unspecified => acc.say(Reason::Unspecified {
            addr,
            effective: h.effective,
        }),
        HostClass::OtherLoopback => {
            acc.say(Reason::OtherLoopback { addr });
            return (Verdict::Impossible, None);
        }
        HostClass::LoopbackDown => {
            acc.say(Reason::LoopbackDown { addr });
            return (Verdict::Impossible, None);
        }
        HostClass::Remote => {
            acc.say(Reason::Remote { addr });
            return (Verdict::Impossible, None);
        }
    }
    let Some(kernel) = s.facts.kernel else {
        acc.say(Reason::KernelUnknown {
            release: s.facts.release.clone(),
        });
        return (Verdict::Unknown, None);
    };

    // D (first part): listeners and bind() holders on the port itself.
    if let Some(inv) = s.inventory {
        let u = inv.port(port);
        if !u.listen.is_empty() {
            let listen = u.listen.clone();
            if u.listen.iter().any(|l| covers(l.ip(), h.effective)) {
                acc.say(Reason::Listening {
                    listen,
                    dest: h.effective,
                    port,
                });
                return (Verdict::Listening, None);
            }
            acc.say(Reason::ListenerHolds { port, listen });
            return (Verdict::Impossible, None);
        }
        if !u.bound.is_empty() {
            acc.say(Reason::BindHolds {
                port,
                bound: u.bound.clone(),
            });
            return (Verdict::Impossible, None);
        }
        let live = u
            .loops
            .iter()
            .any(|l| l.state != TcpState::TimeWait && l.local.ip() == h.effective);
        if live {
            acc.say(Reason::AlreadyLooped {
                addr: h.effective,
                port,
            });
            return (Verdict::Impossible, None);
        }
        if let Some(tw) = u.loops.iter().find(|l| l.state == TcpState::TimeWait) {
            acc.say(Reason::TimeWait {
                port,
                ms_left: tw.expires_ms,
            });
        }
        if u.connected > 0 {
            acc.say(Reason::ConnectedUsers {
                port,
                count: u.connected,
            });
        }
        if !inv.bound_visible {
            acc.say(Reason::BoundInvisible);
        }
    } else {
        acc.say(Reason::NoSocketDump);
    }

    let (verdict, expected) = match s.client {
        Client::Connect => connect_rules(s, kernel, port, acc),
        Client::Bind { reuseaddr } => bind_rules(s, port, reuseaddr, acc),
        Client::LocalRange(r) => local_range_rules(s, kernel, r, port, acc),
    };
    if verdict == Verdict::Possible && s.inventory.is_none() {
        return (Verdict::Unknown, expected);
    }
    (verdict, expected)
}

fn connect_rules(
    s: &Situation<'_>,
    kernel: KernelVersion,
    port: u16,
    acc: &mut Acc,
) -> (Verdict, Option<f64>) {
    let f = s.facts;
    let r = f.range;
    // C. Candidates.
    if !r.contains(port) {
        acc.say(Reason::OutsideRange {
            port,
            range: r,
            chooser: Chooser::Connect,
        });
        return (Verdict::Impossible, None);
    }
    if port > r.connect_high() {
        acc.say(Reason::OddTop { port, range: r });
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(Reason::Reserved { port });
        return (Verdict::Impossible, None);
    }
    let held = |p: u16| s.inventory.is_some_and(|i| i.bind_held(p));
    let usable = |par: Parity| f.connect_candidates(par).filter(|&p| !held(p)).count();

    if !kernel.has_parity_split() {
        let n = usable(Parity::Even) + usable(Parity::Odd);
        acc.say(Reason::SequentialScan {
            kernel,
            port,
            usable: n,
        });
        return (Verdict::Possible, Some(n as f64 / 2.0));
    }
    // E. Parity.
    let preferred = r.connect_parity();
    let parity = Parity::of(port);
    let same = usable(preferred);
    let n = if parity == preferred {
        acc.say(Reason::PreferredParity {
            port,
            parity,
            low: r.low,
        });
        same
    } else if same == 0 {
        acc.say(Reason::ParityFallback {
            port,
            parity,
            preferred,
            range: r,
        });
        usable(parity)
    } else {
        acc.say(Reason::OtherParity {
            port,
            parity,
            preferred,
            low: r.low,
            free: same,
        });
        return (Verdict::Impossible, None);
    };
    // F. Rate.
    acc.say(if kernel.has_perturb_walk() {
        Reason::Rate { usable: n }
    } else {
        Reason::InOrder { kernel, usable: n }
    });
    (Verdict::Possible, Some(n.max(1) as f64))
}

fn bind_rules(
    s: &Situation<'_>,
    port: u16,
    reuseaddr: bool,
    acc: &mut Acc,
) -> (Verdict, Option<f64>) {
    let f = s.facts;
    let r = f.range;
    let lo = u32::from(r.low);
    let hi = u32::from(r.high) + 1; // exclusive
    let p = u32::from(port);
    if !(lo..hi).contains(&p) {
        acc.say(Reason::OutsideRange {
            port,
            range: r,
            chooser: Chooser::BindZero,
        });
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(Reason::Reserved { port });
        return (Verdict::Impossible, None);
    }
    // inet_csk_find_open_port(): halves (with SO_REUSEADDR), then parities,
    // the parity opposite to low's first.
    let mut tiers: Vec<(u32, u32, Parity)> = vec![];
    let halves = if reuseaddr && hi - lo >= 4 {
        let half = lo + (((hi - lo) >> 2) << 1);
        vec![(lo, half), (half, hi)]
    } else {
        vec![(lo, hi)]
    };
    let pref = r.connect_parity().other();
    for (a, b) in halves {
        tiers.push((a, b, pref));
        tiers.push((a, b, pref.other()));
    }
    // bind(0) conflicts with any socket on the port (connected ones too).
    let busy = |q: u16| {
        f.reserved.contains(q)
            || s.inventory.is_some_and(|i| {
                let u = i.port(q);
                !u.listen.is_empty()
                    || !u.bound.is_empty()
                    || u.connected > 0
                    || !u.loops.is_empty()
            })
    };
    for (i, &(a, b, parity)) in tiers.iter().enumerate() {
        let usable = (a..b)
            .filter(|&q| Parity::of(q as u16) == parity && !busy(q as u16))
            .count();
        // The tier's ports, inclusive: `b` is at most high + 1.
        let (from, to) = (a as u16, (b - 1) as u16);
        if (a..b).contains(&p) && Parity::of(port) == parity {
            acc.say(if i > 0 {
                Reason::BindLaterTier { parity, from, to }
            } else {
                Reason::BindFirstTier {
                    parity,
                    lower_half: reuseaddr.then_some((from, to)),
                }
            });
            acc.say(Reason::RandomPick { usable });
            return (Verdict::Possible, Some(usable.max(1) as f64));
        }
        if usable > 0 {
            acc.say(Reason::BindEarlierTier {
                free: usable,
                parity,
                from,
                to,
                port,
            });
            return (Verdict::Impossible, None);
        }
    }
    (Verdict::Impossible, None)
}

fn local_range_rules(
    s: &Situation<'_>,
    kernel: KernelVersion,
    sock: PortRange,
    port: u16,
    acc: &mut Acc,
) -> (Verdict, Option<f64>) {
    let f = s.facts;
    if !kernel.has_local_port_range_opt() {
        acc.say(Reason::NoLocalRangeOption { kernel });
        return connect_rules(s, kernel, port, acc);
    }
    let low = f.range.low.max(sock.low);
    let high = f.range.high.min(sock.high);
    let eff = if low <= high {
        PortRange { low, high }
    } else {
        f.range
    };
    if !eff.contains(port) {
        acc.say(Reason::OutsideSocketRange {
            port,
            effective: eff,
            range: f.range,
        });
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(Reason::Reserved { port });
        return (Verdict::Impossible, None);
    }
    let held = |p: u16| f.reserved.contains(p) || s.inventory.is_some_and(|i| i.bind_held(p));
    if !kernel.local_range_disables_parity() {
        let sub = EphemeralFacts {
            range: eff,
            ..f.clone()
        };
        let sub_s = Situation { facts: &sub, ..*s };
        acc.say(Reason::LocalRangeKeepsParity {
            kernel,
            effective: eff,
        });
        return connect_rules(&sub_s, kernel, port, acc);
    }
    let n = (eff.low..=eff.high).filter(|&p| !held(p)).count();
    acc.say(Reason::LocalRangeNoParity { effective: eff });
    acc.say(Reason::Candidates { usable: n });
    (Verdict::Possible, Some(n.max(1) as f64))
}

/// Whether a listener bound to `listen` accepts connections to `dest`.
fn covers(listen: IpAddr, dest: IpAddr) -> bool {
    listen == dest || listen.is_unspecified() && (listen.is_ipv6() || dest.is_ipv4())
}

/// The nearest port to `port` (within the range) where a loop is possible,
/// for "try this one instead".
pub fn suggest(s: &Situation<'_>, port: u16) -> Option<u16> {
    let r = s.facts.range;
    let start = if r.contains(port) { port } else { r.low };
    for d in 1..=u32::from(r.high - r.low) + 1 {
        for cand in [
            i64::from(start) - i64::from(d),
            i64::from(start) + i64::from(d),
        ] {
            if cand >= i64::from(r.low) && cand <= i64::from(r.high) {
                let p = predict(s, cand as u16);
                if p.verdict == Verdict::Possible {
                    return Some(cand as u16);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::classify;
    use crate::model::{Socket, TcpState};
    use crate::sys::ifaddrs::IfAddr;

    fn facts(low: u16, high: u16, reserved: &str) -> EphemeralFacts {
        EphemeralFacts::fixture(low, high, reserved)
    }

    fn host(a: &str) -> Host {
        let lo = [IfAddr {
            name: "lo".into(),
            addr: "127.0.0.1".parse().unwrap(),
            scope_id: 0,
            up: true,
        }];
        classify(a.parse().unwrap(), 0, &lo)
    }

    fn sock(st: TcpState, local: &str, peer: &str) -> Socket {
        Socket::fixture(st, local, peer)
    }

    fn run(f: &EphemeralFacts, inv: &Inventory, h: &str, port: u16) -> Prediction {
        let h = host(h);
        predict(
            &Situation {
                facts: f,
                inventory: Some(inv),
                host: &h,
                client: Client::Connect,
            },
            port,
        )
    }

    #[test]
    fn article_port_33333_is_odd_and_never_loops() {
        let f = facts(32768, 60999, "");
        let p = run(&f, &Inventory::default(), "127.0.0.1", 33333);
        assert_eq!(p.verdict, Verdict::Impossible);
        assert!(
            p.reasons.iter().any(|r| matches!(
                r,
                Reason::OtherParity {
                    parity: Parity::Odd,
                    preferred: Parity::Even,
                    free: 14116,
                    ..
                }
            )),
            "{p:?}"
        );
        let p = run(&f, &Inventory::default(), "127.0.0.1", 33334);
        assert_eq!(p.verdict, Verdict::Possible);
        assert_eq!(p.expected_tries, Some(14116.0));
    }

    #[test]
    fn narrow_range_cases() {
        let f = facts(40000, 40009, "");
        let empty = Inventory::default();
        assert_eq!(
            run(&f, &empty, "127.0.0.1", 40004).expected_tries,
            Some(5.0)
        );
        assert_eq!(
            run(&f, &empty, "127.0.0.1", 40005).verdict,
            Verdict::Impossible
        );
        assert_eq!(
            run(&f, &empty, "127.0.0.1", 40010).verdict,
            Verdict::Impossible
        );
        assert_eq!(
            run(&f, &empty, "127.0.0.2", 40004).verdict,
            Verdict::Impossible
        );
        assert_eq!(
            run(&f, &empty, "192.0.2.1", 40004).verdict,
            Verdict::Impossible
        );
        let r = facts(40000, 40009, "40004");
        assert_eq!(
            run(&r, &empty, "127.0.0.1", 40004).verdict,
            Verdict::Impossible
        );
        assert_eq!(
            run(&r, &empty, "127.0.0.1", 40002).expected_tries,
            Some(4.0)
        );
        // odd-sized range: the top port is never handed out
        let odd = facts(40000, 40010, "");
        assert_eq!(
            run(&odd, &empty, "127.0.0.1", 40010).verdict,
            Verdict::Impossible
        );
    }

    #[test]
    fn holders() {
        let f = facts(40000, 40009, "");
        let lis = Inventory::from_sockets(
            &[sock(TcpState::Listen, "0.0.0.0:40004", "0.0.0.0:0")],
            true,
        );
        assert_eq!(
            run(&f, &lis, "127.0.0.1", 40004).verdict,
            Verdict::Listening
        );
        let lis2 = Inventory::from_sockets(
            &[sock(TcpState::Listen, "127.0.0.2:40004", "0.0.0.0:0")],
            true,
        );
        assert_eq!(
            run(&f, &lis2, "127.0.0.1", 40004).verdict,
            Verdict::Impossible
        );
        // connected-only holders do not protect
        let conn = Inventory::from_sockets(
            &[sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:50000",
            )],
            true,
        );
        assert_eq!(
            run(&f, &conn, "127.0.0.1", 40004).verdict,
            Verdict::Possible
        );
        // all even ports bind-held: odd ports become reachable
        let evens: Vec<_> = (40000..=40008)
            .step_by(2)
            .map(|p| {
                sock(
                    TcpState::BoundInactive,
                    &format!("127.0.0.1:{p}"),
                    "0.0.0.0:0",
                )
            })
            .collect();
        let inv = Inventory::from_sockets(&evens, true);
        let p = run(&f, &inv, "127.0.0.1", 40005);
        assert_eq!(p.verdict, Verdict::Possible, "{p:?}");
        assert_eq!(p.expected_tries, Some(5.0));
        assert_eq!(
            run(&f, &inv, "127.0.0.1", 40004).verdict,
            Verdict::Impossible
        );
    }

    #[test]
    fn bind_zero_prefers_the_other_parity_and_the_lower_half() {
        let f = facts(40000, 40009, "");
        let h = host("127.0.0.1");
        let inv = Inventory::default();
        let at = |client, port| {
            predict(
                &Situation {
                    facts: &f,
                    inventory: Some(&inv),
                    host: &h,
                    client,
                },
                port,
            )
            .verdict
        };
        let plain = Client::Bind { reuseaddr: false };
        assert_eq!(at(plain, 40005), Verdict::Possible);
        assert_eq!(at(plain, 40004), Verdict::Impossible);
        let reuse = Client::Bind { reuseaddr: true };
        assert_eq!(at(reuse, 40003), Verdict::Possible);
        assert_eq!(at(reuse, 40005), Verdict::Impossible);
        let lr = Client::LocalRange(PortRange {
            low: 40000,
            high: 40009,
        });
        assert_eq!(at(lr, 40005), Verdict::Possible);
    }
}
