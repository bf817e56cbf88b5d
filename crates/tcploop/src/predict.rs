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
use std::net::IpAddr;

use crate::host::{Host, HostClass};
use crate::inventory::Inventory;
use crate::model::TcpState;
use crate::ports::{EphemeralFacts, KernelVersion, Parity, PortRange};
use crate::report::thousands;

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
    /// Why, one sentence each, in the order of the decision procedure.
    pub reasons: Vec<String>,
    /// Mean number of `connect()` calls until the loop (when possible).
    pub expected_tries: Option<f64>,
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
    reasons: Vec<String>,
}

impl Acc {
    fn say(&mut self, s: impl Into<String>) {
        self.reasons.push(s.into());
    }
}

/// Applies the shield to a prediction: `possible` becomes `prevented`, with
/// the mechanism named (`how`, e.g. `bpf (tcx)`) in a last reason.
pub fn shielded(p: &mut Prediction, how: &str) {
    if p.verdict == Verdict::Possible {
        p.verdict = Verdict::Prevented;
        p.expected_tries = None;
        p.reasons.push(format!(
            "the shield is on in this namespace ({how}): the self-connect SYN is answered \
             with a reset, so connect() fails with ECONNREFUSED instead of looping"
        ));
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
    match &h.class {
        HostClass::Local { iface } => acc.say(format!(
            "{} is an address of this host (on {iface}): the kernel sends from it, so source == destination",
            h.addr
        )),
        HostClass::Unspecified => acc.say(format!(
            "{} means this host: the kernel connects from and to {}",
            h.addr, h.effective
        )),
        HostClass::OtherLoopback => {
            acc.say(format!(
                "{} is not assigned to an interface: the kernel sends from 127.0.0.1 \
                 (the 127.0.0.0/8 route's preferred source), so source != destination \
                 (only a client that binds {} itself could loop)",
                h.addr, h.addr
            ));
            return (Verdict::Impossible, None);
        }
        HostClass::LoopbackDown => {
            acc.say(format!(
                "no interface carries {} (lo is down): connect() fails with ENETUNREACH",
                h.addr
            ));
            return (Verdict::Impossible, None);
        }
        HostClass::Remote => {
            acc.say(format!(
                "{} is not an address of this network namespace: the connection's source \
                 address differs from its destination, so it cannot loop",
                h.addr
            ));
            return (Verdict::Impossible, None);
        }
    }
    let Some(kernel) = s.facts.kernel else {
        acc.say(format!(
            "kernel release {:?} not understood: the port-selection rules depend on it",
            s.facts.release
        ));
        return (Verdict::Unknown, None);
    };

    // D (first part): listeners and bind() holders on the port itself.
    if let Some(inv) = s.inventory {
        let u = inv.port(port);
        if !u.listen.is_empty() {
            let covers = u.listen.iter().any(|l| covers(l.ip(), h.effective));
            let list = join(u.listen.iter());
            if covers {
                acc.say(format!(
                    "listening on {list}: connects to {}:{port} reach that server; they are not loops",
                    h.effective
                ));
                return (Verdict::Listening, None);
            }
            acc.say(format!(
                "a listener holds port {port} (on {list}): connect() never picks a port held by bind()/listen()"
            ));
            return (Verdict::Impossible, None);
        }
        if !u.bound.is_empty() {
            acc.say(format!(
                "bind() holds port {port} (on {}): connect() never picks a port held by bind()",
                join(u.bound.iter())
            ));
            return (Verdict::Impossible, None);
        }
        let live: Vec<_> = u
            .loops
            .iter()
            .filter(|l| l.state != TcpState::TimeWait && l.local.ip() == h.effective)
            .collect();
        if !live.is_empty() {
            acc.say(format!(
                "a self-connected socket already holds {}:{port} (the port is stolen now: see `tcploop scan`)",
                h.effective
            ));
            return (Verdict::Impossible, None);
        }
        if let Some(tw) = u.loops.iter().find(|l| l.state == TcpState::TimeWait) {
            acc.say(format!(
                "an earlier loop on {port} is in TIME-WAIT ({:.0} s left): a server's bind() of it fails \
                 until then; a new connect() may reuse the 4-tuple sooner (after about 1 s on loopback \
                 with tcp_tw_reuse=2)",
                f64::from(tw.expires_ms) / 1000.0
            ));
        }
        if u.connected > 0 {
            acc.say(format!(
                "{} socket(s) use {port} as their local port; if connect() gave it to them (the usual case) \
                 they do not protect it: the port is reused when the 4-tuple differs",
                u.connected
            ));
        }
        if !inv.bound_visible {
            acc.say(
                "this kernel's socket dump does not show sockets that are only bound (Linux 6.8+ does): \
                 such a holder would make the port safe",
            );
        }
    } else {
        acc.say("the socket dump was not available: listeners and bind() holders are unknown");
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
        acc.say(format!(
            "{port} is outside the ephemeral range {r}: connect() never picks it as a source port"
        ));
        return (Verdict::Impossible, None);
    }
    if port > r.connect_high() {
        acc.say(format!(
            "the range {r} has an odd number of ports: connect() uses an even count and never picks its top port {port}"
        ));
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(format!(
            "{port} is in ip_local_reserved_ports: the kernel never hands it out"
        ));
        return (Verdict::Impossible, None);
    }
    let held = |p: u16| s.inventory.is_some_and(|i| i.bind_held(p));
    let usable = |par: Parity| f.connect_candidates(par).filter(|&p| !held(p)).count();

    if !kernel.has_parity_split() {
        let n = usable(Parity::Even) + usable(Parity::Odd);
        acc.say(format!(
            "kernel {kernel} (before 4.6) scans both parities sequentially: {port} is reached within one lap of {n} ports"
        ));
        return (Verdict::Possible, Some(n as f64 / 2.0));
    }
    // E. Parity.
    let pref = r.connect_parity();
    let par = Parity::of(port);
    let same = usable(pref);
    let n = if par == pref {
        acc.say(format!(
            "{port} is {par}: connect() tries {pref} ports first (the parity of the range's low end {})",
            r.low
        ));
        same
    } else if same == 0 {
        acc.say(format!(
            "{port} is {par}, but every {pref} port of {r} is reserved or held by bind(): \
             connect() falls back to {par} ports"
        ));
        usable(par)
    } else {
        acc.say(format!(
            "{port} is {par}: connect() tries {pref} ports (the parity of the range's low end {}) and \
             uses {par} ones only when all {pref} ports are taken; {} are free (kernel 4.6+)",
            r.low,
            thousands(same as u64)
        ));
        return (Verdict::Impossible, None);
    };
    // F. Rate.
    acc.say(rate_reason(kernel, n));
    (Verdict::Possible, Some(n.max(1) as f64))
}

fn rate_reason(kernel: KernelVersion, n: usize) -> String {
    if kernel.has_perturb_walk() {
        let n = thousands(n as u64);
        format!(
            "{n} usable candidates of that parity: each try hits with probability about 1/{n}, \
             so about {n} tries on average"
        )
    } else {
        format!(
            "{n} usable candidates of that parity; kernel {kernel} (before 5.12) walks them in order, \
             so the port comes round within one lap"
        )
    }
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
        acc.say(format!(
            "{port} is outside the ephemeral range {r}: bind(0) never picks it"
        ));
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(format!(
            "{port} is in ip_local_reserved_ports: the kernel never hands it out"
        ));
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
    for (i, &(a, b, par)) in tiers.iter().enumerate() {
        let usable = (a..b)
            .filter(|&q| Parity::of(q as u16) == par && !busy(q as u16))
            .count();
        if (a..b).contains(&p) && Parity::of(port) == par {
            if i > 0 {
                acc.say(format!(
                    "bind(0) reaches {par} ports in {a}-{} only after every earlier candidate is busy, as here",
                    b - 1
                ));
            } else {
                acc.say(format!(
                    "bind(0) picks {par} ports (opposite to connect()) {}first",
                    if reuseaddr {
                        format!("in the lower half {a}-{} ", b - 1)
                    } else {
                        String::new()
                    }
                ));
            }
            acc.say(format!(
                "{usable} usable candidates: a random one each try, so about {usable} tries on average"
            ));
            return (Verdict::Possible, Some(usable.max(1) as f64));
        }
        if usable > 0 {
            acc.say(format!(
                "bind(0) picks among {usable} free {par} ports in {a}-{} before it would reach {port}",
                b - 1
            ));
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
        acc.say(format!(
            "kernel {kernel} has no IP_LOCAL_PORT_RANGE (6.3+): the option is ignored"
        ));
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
        acc.say(format!(
            "{port} is outside the socket's effective range {eff} (its IP_LOCAL_PORT_RANGE within {})",
            f.range
        ));
        return (Verdict::Impossible, None);
    }
    if f.reserved.contains(port) {
        acc.say(format!(
            "{port} is in ip_local_reserved_ports: the kernel never hands it out"
        ));
        return (Verdict::Impossible, None);
    }
    let held = |p: u16| f.reserved.contains(p) || s.inventory.is_some_and(|i| i.bind_held(p));
    if !kernel.local_range_disables_parity() {
        let sub = EphemeralFacts {
            range: eff,
            ..f.clone()
        };
        let sub_s = Situation { facts: &sub, ..*s };
        acc.say(format!(
            "kernel {kernel} (6.3-6.7) keeps the parity rule inside the socket's range {eff}"
        ));
        return connect_rules(&sub_s, kernel, port, acc);
    }
    let n = (eff.low..=eff.high).filter(|&p| !held(p)).count();
    acc.say(format!(
        "IP_LOCAL_PORT_RANGE (kernel 6.8+) removes the parity preference: every port of {eff} is a candidate"
    ));
    acc.say(format!("{n} usable candidates: about {n} tries on average"));
    (Verdict::Possible, Some(n.max(1) as f64))
}

/// Whether a listener bound to `listen` accepts connections to `dest`.
fn covers(listen: IpAddr, dest: IpAddr) -> bool {
    listen == dest || listen.is_unspecified() && (listen.is_ipv6() || dest.is_ipv4())
}

fn join<'a>(it: impl Iterator<Item = &'a std::net::SocketAddr>) -> String {
    let v: Vec<String> = it.map(|a| a.to_string()).collect();
    v.join(", ")
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
        assert!(p.reasons.iter().any(|r| r.contains("odd")), "{p:?}");
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
