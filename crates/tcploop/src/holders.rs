//! Who holds one TCP port now, and what each holder does to a server that
//! binds `ADDR:PORT`, with and without `SO_REUSEADDR`: the analysis shared
//! by `doctor` (the whole diagnosis), `check` (its `stolen` verdict) and
//! `audit` (a service's own accepted connections are not thieves).
//!
//! Linux keeps every socket that has a local port in that port's bind
//! bucket, whatever gave it the port: `bind()`, `listen()`, `accept()` (an
//! accepted connection inherits its listener's port) or `connect()` (the
//! kernel's choice of source port). A server's `bind(ADDR:PORT)` is refused
//! with `EADDRINUSE` when any socket of the bucket overlaps `ADDR` (the same
//! address, or either side a wildcard), unless *both* sockets set
//! `SO_REUSEADDR` and the other one is not listening (`inet_bind_conflict`
//! in net/ipv4/inet_connection_sock.c). A listener is never shared, except
//! by a `SO_REUSEPORT` group of the same user. So the holders, from the
//! most to the least common cause of `bind: Address already in use`:
//!
//! - a **listener**: another server, or the service itself already running;
//! - a **self-connected socket** (a client that connected to itself while
//!   the server was down), alive or in TIME-WAIT after its owner closed it;
//! - ordinary connections that use the port as their **source port** (the
//!   kernel gave it to them because it lies in the ephemeral range);
//! - connections a listener **accepted** on the port (the service's own);
//! - other **TIME-WAIT** sockets on the port;
//! - **bind-only** sockets (bound, neither listening nor connected).
//!
//! The socket dump does not show a socket's `SO_REUSEADDR`, so the effect
//! with `SO_REUSEADDR` on a non-listening holder is "refused unless the
//! holder set it too": the real answer comes from a bind probe
//! ([`crate::sys::diag::bind_probe`]), which `doctor` and `check` make.
//!
//! Pure: sockets in, holders out; tested from fixtures.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::inventory::Inventory;
use crate::model::{Socket, TcpState};
use crate::sys::sockopt::ReuseFlags;

/// What kind of holder a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A listening socket (several on one address: a `SO_REUSEPORT` group).
    Listener,
    /// A self-connected socket, alive (ESTABLISHED, or a connect in
    /// progress, or closing).
    Loop,
    /// A self-connected socket its owner closed, waiting out TIME-WAIT.
    LoopTimeWait,
    /// An ordinary connection using the port as its source port.
    SourcePort,
    /// A connection accepted by a listener on the port (the service's own).
    Accepted,
    /// Another socket on the port in TIME-WAIT.
    TimeWait,
    /// A socket bound to the port, neither listening nor connected (or a
    /// connection that was aborted while its owner keeps it open).
    BindOnly,
}

impl Kind {
    /// The name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Loop => "self-connected",
            Kind::LoopTimeWait => "self-connected-time-wait",
            Kind::SourcePort => "source-port",
            Kind::Accepted => "accepted",
            Kind::TimeWait => "time-wait",
            Kind::BindOnly => "bind-only",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a holder does to a server's `bind(ADDR:PORT)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// No conflict: the bind succeeds as far as this holder goes.
    Ok,
    /// `EADDRINUSE`.
    InUse,
    /// `EADDRINUSE` unless the holder set `SO_REUSEADDR` too (the dump does
    /// not say; the bind probe does).
    InUseUnlessHolderReuseaddr,
    /// `EADDRINUSE` unless the server sets `SO_REUSEPORT` and runs as the
    /// same user as the group: it then *joins* the group and shares its
    /// connections.
    InUseUnlessReuseport,
}

impl Effect {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Ok => "ok",
            Effect::InUse => "eaddrinuse",
            Effect::InUseUnlessHolderReuseaddr => "eaddrinuse-unless-holder-reuseaddr",
            Effect::InUseUnlessReuseport => "eaddrinuse-unless-reuseport",
        }
    }

    /// Whether the bind fails (or may fail) because of this holder.
    pub fn blocks(self) -> bool {
        self != Effect::Ok
    }
}

/// One holder of the port: a listening address, a loop, a bind-only socket,
/// or a group of connections of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// What it is.
    pub kind: Kind,
    /// Its sockets: one for a loop or a bind-only socket; every socket of a
    /// listening address (more than one: a `SO_REUSEPORT` group); every
    /// connection of a source-port, accepted or TIME-WAIT group.
    pub sockets: Vec<Socket>,
    /// Whether it overlaps the server's address (if not, it is listed for
    /// completeness and has no effect).
    pub conflicts: bool,
    /// The effect on a server's `bind()` without `SO_REUSEADDR`.
    pub bind: Effect,
    /// The effect on a server's `bind()` with `SO_REUSEADDR`.
    pub bind_reuseaddr: Effect,
    /// Whether its sockets set `SO_REUSEADDR`: `Some(false)` if one read
    /// does not, `Some(true)` if every one was read and does; `None`
    /// unknown (TIME-WAIT, or the owner's descriptors not readable).
    pub reuseaddr: Option<bool>,
    /// The same for `SO_REUSEPORT` (`Some(true)`: one read does).
    pub reuseport: Option<bool>,
}

impl Holder {
    /// Whether the listening sockets form a `SO_REUSEPORT` group (two or
    /// more listen on the same address and port, which only that allows).
    pub fn reuseport_group(&self) -> bool {
        self.kind == Kind::Listener && self.sockets.len() > 1
    }

    /// Refines the effects with the sockets' own options, read from their
    /// processes ([`crate::sys::sockopt`]): `flags` for the sockets read,
    /// `complete` when that was every one of them.
    pub fn refine(&mut self, flags: &[ReuseFlags], complete: bool) {
        if flags.is_empty() {
            return;
        }
        let all = complete && flags.len() == self.sockets.len();
        self.reuseaddr = if flags.iter().any(|f| !f.reuseaddr) {
            Some(false)
        } else if all {
            Some(true)
        } else {
            None
        };
        self.reuseport = if flags.iter().any(|f| f.reuseport) {
            Some(true)
        } else if all {
            Some(false)
        } else {
            None
        };
        if !self.conflicts {
            return;
        }
        if self.kind == Kind::Listener {
            let e = match self.reuseport {
                Some(true) => Effect::InUseUnlessReuseport,
                _ => Effect::InUse,
            };
            self.bind = e;
            self.bind_reuseaddr = e;
        } else {
            self.bind_reuseaddr = match self.reuseaddr {
                Some(false) => Effect::InUse,
                Some(true) => Effect::Ok,
                None => Effect::InUseUnlessHolderReuseaddr,
            };
        }
    }

    /// The local address (of the first socket).
    pub fn local(&self) -> SocketAddr {
        self.sockets[0].local
    }

    /// The inodes of its sockets (0, TIME-WAIT's, left out), to find owners.
    pub fn inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.sockets
            .iter()
            .map(|s| u64::from(s.inode))
            .filter(|i| *i != 0)
    }

    /// The longest time left in TIME-WAIT among its sockets, in ms.
    pub fn time_wait_left_ms(&self) -> Option<u32> {
        self.sockets
            .iter()
            .filter(|s| s.state == TcpState::TimeWait)
            .map(|s| s.expires_ms)
            .max()
    }

    /// The distinct peers of its connections, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.sockets.iter().map(|s| s.peer).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The diagnosis's name for the port's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing holds it: a server can bind it.
    Free,
    /// A self-connected socket holds it.
    StolenByLoop,
    /// Ordinary connections hold it as their source port.
    StolenBySourcePort,
    /// Only TIME-WAIT sockets hold it (a closed loop, or closed connections):
    /// it frees itself when they end.
    TimeWait,
    /// A listener holds it.
    Listening,
    /// A bind-only socket holds it.
    BindHeld,
}

impl Verdict {
    /// The name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Free => "free",
            Verdict::StolenByLoop => "stolen-by-loop",
            Verdict::StolenBySourcePort => "stolen-by-source-port",
            Verdict::TimeWait => "time-wait",
            Verdict::Listening => "listening",
            Verdict::BindHeld => "bind-held",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a listener bound to `listen` receives connections made to
/// `local` (an accepted connection's local address).
fn covers(listen: IpAddr, local: IpAddr) -> bool {
    canonical(listen) == canonical(local)
        || listen.is_unspecified() && (listen.is_ipv6() || canonical(local).is_ipv4())
}

/// A v4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a socket bound to `holder` conflicts with a server binding
/// `server` (an IPv6 server is taken as `IPV6_V6ONLY`, as the bind probe
/// does): the same address, or either side a wildcard of a family both
/// use. A holder bound to `[::]` is taken as dual-stack (the dump does not
/// show `IPV6_V6ONLY`), so it conflicts with IPv4 servers too.
pub fn overlaps(server: IpAddr, holder: IpAddr) -> bool {
    let h = canonical(holder);
    match server {
        IpAddr::V4(_) => match h {
            IpAddr::V4(h4) => server.is_unspecified() || h4.is_unspecified() || server == h,
            IpAddr::V6(h6) => h6.is_unspecified(),
        },
        IpAddr::V6(_) => match (holder, h) {
            (IpAddr::V6(_), IpAddr::V6(h6)) => {
                server.is_unspecified() || h6.is_unspecified() || server == h
            }
            _ => false,
        },
    }
}

/// Classifies the sockets whose local port is the port in question (others
/// are ignored) into holders, for a server that binds `server`. Listeners
/// first, then loops, then the groups, in the order of [`Kind`].
pub fn analyze<'a>(sockets: impl IntoIterator<Item = &'a Socket>, server: IpAddr) -> Vec<Holder> {
    let sockets: Vec<&Socket> = sockets.into_iter().collect();
    let listeners = listening(sockets.iter().copied());
    let mut out: Vec<Holder> = vec![];
    let group = |kind: Kind, s: &Socket, out: &mut Vec<Holder>| {
        let key = |h: &Holder| {
            h.kind == kind && overlaps(server, h.local().ip()) == overlaps(server, s.local.ip())
        };
        if let Some(h) = out.iter_mut().find(|h| key(h)) {
            h.sockets.push(*s);
        } else {
            out.push(holder(kind, vec![*s], server));
        }
    };
    for s in sockets {
        let is_loop = s.is_loop();
        match s.state {
            TcpState::Listen => {
                // one holder a listening address; more sockets: a reuseport group
                if let Some(h) = out
                    .iter_mut()
                    .find(|h| h.kind == Kind::Listener && h.local() == s.local)
                {
                    h.sockets.push(*s);
                    let (b, r) = effects(Kind::Listener, h.sockets.len(), h.conflicts);
                    h.bind = b;
                    h.bind_reuseaddr = r;
                } else {
                    out.push(holder(Kind::Listener, vec![*s], server));
                }
            }
            // request sockets belong to their listener
            TcpState::NewSynRecv => {}
            TcpState::BoundInactive | TcpState::Close => {
                out.push(holder(Kind::BindOnly, vec![*s], server))
            }
            TcpState::TimeWait if is_loop => out.push(holder(Kind::LoopTimeWait, vec![*s], server)),
            TcpState::TimeWait => group(Kind::TimeWait, s, &mut out),
            _ if is_loop => out.push(holder(Kind::Loop, vec![*s], server)),
            _ if accepted(&listeners, s) => group(Kind::Accepted, s, &mut out),
            _ => group(Kind::SourcePort, s, &mut out),
        }
    }
    for h in &mut out {
        h.sockets.sort_by_key(|s| (s.local, s.peer, s.inode));
    }
    out.sort_by_key(|h| (h.kind, !h.conflicts, h.local()));
    out
}

fn holder(kind: Kind, sockets: Vec<Socket>, server: IpAddr) -> Holder {
    let conflicts = overlaps(server, sockets[0].local.ip());
    let (bind, bind_reuseaddr) = effects(kind, sockets.len(), conflicts);
    Holder {
        kind,
        sockets,
        conflicts,
        bind,
        bind_reuseaddr,
        reuseaddr: None,
        reuseport: None,
    }
}

fn effects(kind: Kind, n: usize, conflicts: bool) -> (Effect, Effect) {
    if !conflicts {
        return (Effect::Ok, Effect::Ok);
    }
    match kind {
        Kind::Listener if n > 1 => (Effect::InUseUnlessReuseport, Effect::InUseUnlessReuseport),
        Kind::Listener => (Effect::InUse, Effect::InUse),
        _ => (Effect::InUse, Effect::InUseUnlessHolderReuseaddr),
    }
}

/// The port's state from its holders: the first conflicting kind decides,
/// listeners first, then live loops, TIME-WAIT loops, source-port and
/// accepted connections, bind-only sockets, other TIME-WAIT sockets.
pub fn verdict(holders: &[Holder]) -> Verdict {
    let has = |k: Kind| holders.iter().any(|h| h.conflicts && h.kind == k);
    if has(Kind::Listener) {
        Verdict::Listening
    } else if has(Kind::Loop) {
        Verdict::StolenByLoop
    } else if has(Kind::LoopTimeWait) {
        Verdict::TimeWait
    } else if has(Kind::SourcePort) || has(Kind::Accepted) {
        Verdict::StolenBySourcePort
    } else if has(Kind::BindOnly) {
        Verdict::BindHeld
    } else if has(Kind::TimeWait) {
        Verdict::TimeWait
    } else {
        Verdict::Free
    }
}

/// Whether a socket on the port belongs to the service itself or to a loop:
/// listeners, the connections they accepted (`listeners`: the addresses
/// listening on the port, see [`listening`]), self-connected sockets. Left
/// out of the inventory for "while the service is down", because they go
/// away with the service (or with `kill`); the others stay.
pub fn goes_with_the_service(listeners: &[IpAddr], s: &Socket) -> bool {
    s.state == TcpState::Listen || s.is_loop() || accepted(listeners, s)
}

/// The addresses listening among `sockets` (all on one port).
pub fn listening<'a>(sockets: impl IntoIterator<Item = &'a Socket>) -> Vec<IpAddr> {
    sockets
        .into_iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local.ip())
        .collect()
}

/// Whether `s` is a connection accepted by one of `listeners` (the
/// addresses listening on its port): a connected socket whose local address
/// a listener covers. The service's own connection, not one that took the
/// port as its source port.
pub fn accepted(listeners: &[IpAddr], s: &Socket) -> bool {
    let connected = !matches!(
        s.state,
        TcpState::Listen
            | TcpState::BoundInactive
            | TcpState::Close
            | TcpState::NewSynRecv
            | TcpState::TimeWait
    );
    connected && !s.is_loop() && listeners.iter().any(|l| covers(*l, s.local.ip()))
}

/// The inventory the predictor should see for "while the service on `port`
/// is down and the loops on it are gone": `rest` (every socket of other
/// ports) plus the sockets of `on_port` that stay (see
/// [`goes_with_the_service`]).
pub fn when_down(rest: &Inventory, on_port: &[Socket]) -> Inventory {
    let mut inv = rest.clone();
    let listeners = listening(on_port);
    for s in on_port {
        if !goes_with_the_service(&listeners, s) {
            inv.add(s);
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(st: TcpState, local: &str, peer: &str, inode: u32) -> Socket {
        Socket {
            inode,
            ..Socket::fixture(st, local, peer)
        }
    }

    fn v4(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    #[test]
    fn each_kind_of_holder_is_told_apart() {
        let socks = [
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                1,
            ),
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:50000",
                2,
            ),
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:50002",
                3,
            ),
            sock(TcpState::TimeWait, "127.0.0.1:40004", "127.0.0.1:6379", 0),
            sock(TcpState::BoundInactive, "127.0.0.1:40004", "0.0.0.0:0", 4),
        ];
        let h = analyze(&socks, v4("0.0.0.0"));
        let kinds: Vec<Kind> = h.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Loop, Kind::SourcePort, Kind::TimeWait, Kind::BindOnly]
        );
        assert_eq!(
            h[1].sockets.len(),
            2,
            "source-port connections are one group"
        );
        assert_eq!(h[1].peers().len(), 2);
        assert_eq!(h[0].bind, Effect::InUse);
        assert_eq!(h[0].bind_reuseaddr, Effect::InUseUnlessHolderReuseaddr);
        assert_eq!(verdict(&h), Verdict::StolenByLoop);
        assert_eq!(verdict(&h[1..]), Verdict::StolenBySourcePort);
        assert_eq!(verdict(&h[3..]), Verdict::BindHeld);
        assert_eq!(verdict(&h[2..3]), Verdict::TimeWait);
        assert_eq!(verdict(&[]), Verdict::Free);
    }

    #[test]
    fn a_listeners_accepted_connections_are_not_source_port_thieves() {
        let socks = [
            sock(TcpState::Listen, "0.0.0.0:6379", "0.0.0.0:0", 1),
            sock(
                TcpState::Established,
                "127.0.0.1:6379",
                "127.0.0.1:40100",
                2,
            ),
            sock(
                TcpState::Established,
                "[::ffff:127.0.0.1]:6379",
                "[::ffff:127.0.0.1]:40102",
                3,
            ),
        ];
        let h = analyze(&socks, v4("0.0.0.0"));
        let kinds: Vec<Kind> = h.iter().map(|h| h.kind).collect();
        // the v4-mapped one is not covered by an IPv4 listener: its own group
        assert_eq!(kinds[0], Kind::Listener);
        assert_eq!(kinds[1], Kind::Accepted);
        assert_eq!(verdict(&h), Verdict::Listening);
        assert!(goes_with_the_service(&listening(&socks), &socks[1]));
        // the listener gone, the same connections are source-port holders
        let h = analyze(&socks[1..2], v4("0.0.0.0"));
        assert_eq!(h[0].kind, Kind::SourcePort);
        assert!(!goes_with_the_service(&listening(&socks[1..2]), &socks[1]));
    }

    #[test]
    fn a_reuseport_group_is_one_holder() {
        let socks = [
            sock(TcpState::Listen, "127.0.0.1:40004", "0.0.0.0:0", 1),
            sock(TcpState::Listen, "127.0.0.1:40004", "0.0.0.0:0", 2),
        ];
        let h = analyze(&socks, v4("127.0.0.1"));
        assert_eq!(h.len(), 1);
        assert!(h[0].reuseport_group());
        assert_eq!(h[0].bind, Effect::InUseUnlessReuseport);
    }

    #[test]
    fn the_holders_own_options_make_the_effects_exact() {
        let f = |reuseaddr, reuseport| ReuseFlags {
            reuseaddr,
            reuseport,
        };
        let socks = [
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40004",
                1,
            ),
            sock(TcpState::Listen, "127.0.0.2:40004", "0.0.0.0:0", 2),
        ];
        let mut h = analyze(&socks, v4("0.0.0.0"));
        let (lis, lp) = h.split_at_mut(1);
        let lp = &mut lp[0];
        lp.refine(&[f(true, false)], true);
        assert_eq!(lp.bind_reuseaddr, Effect::Ok, "both set SO_REUSEADDR");
        assert_eq!(lp.reuseaddr, Some(true));
        lp.refine(&[f(false, false)], true);
        assert_eq!(lp.bind_reuseaddr, Effect::InUse);
        lp.refine(&[f(true, false)], false);
        assert_eq!(
            lp.bind_reuseaddr,
            Effect::InUseUnlessHolderReuseaddr,
            "not all read"
        );
        let lis = &mut lis[0];
        assert_eq!(lis.kind, Kind::Listener);
        lis.refine(&[f(true, true)], true);
        assert_eq!(
            lis.bind,
            Effect::InUseUnlessReuseport,
            "a single reuseport listener"
        );
        assert_eq!(lis.reuseport, Some(true));
    }

    #[test]
    fn holders_on_other_addresses_do_not_conflict() {
        let socks = [
            sock(TcpState::Established, "10.0.0.1:40004", "10.0.0.9:80", 1),
            sock(TcpState::Listen, "[::1]:40004", "[::]:0", 2),
        ];
        let h = analyze(&socks, v4("127.0.0.1"));
        assert!(h.iter().all(|h| !h.conflicts && !h.bind.blocks()));
        assert_eq!(verdict(&h), Verdict::Free);
        // a wildcard server conflicts with every IPv4 holder, not with ::1
        let h = analyze(&socks, v4("0.0.0.0"));
        let c: Vec<bool> = h.iter().map(|h| h.conflicts).collect();
        assert_eq!(c, [false, true], "{h:?}");
        assert!(overlaps(v4("127.0.0.1"), v4("::")));
        assert!(overlaps(v4("127.0.0.1"), v4("::ffff:127.0.0.1")));
        assert!(!overlaps(v4("::1"), v4("127.0.0.1")));
        assert!(overlaps(v4("::"), v4("::1")));
    }

    #[test]
    fn while_down_keeps_source_ports_and_drops_the_service_and_its_loops() {
        let on = [
            sock(TcpState::Listen, "0.0.0.0:40004", "0.0.0.0:0", 1),
            sock(
                TcpState::Established,
                "127.0.0.1:40004",
                "127.0.0.1:40100",
                2,
            ),
            sock(
                TcpState::Established,
                "127.0.0.2:40004",
                "127.0.0.1:40004",
                3,
            ),
        ];
        let inv = when_down(&Inventory::default(), &on);
        let u = inv.port(40004);
        assert!(u.listen.is_empty() && u.loops.is_empty());
        assert_eq!(u.connected, 0, "covered by the wildcard listener: accepted");
        let looped = [sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:40004",
            4,
        )];
        assert!(when_down(&Inventory::default(), &looped)
            .port(40004)
            .loops
            .is_empty());
        let src = [sock(
            TcpState::Established,
            "127.0.0.1:40004",
            "127.0.0.1:50000",
            5,
        )];
        assert_eq!(
            when_down(&Inventory::default(), &src).port(40004).connected,
            1
        );
    }
}
