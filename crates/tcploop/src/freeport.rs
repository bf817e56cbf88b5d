//! Ports a test server can listen on without any risk of a client looping
//! into them (`tcploop free-port`).
//!
//! A test suite that starts a server on a port from `bind(0)` and lets its
//! clients reconnect while the server restarts has built the loop: a port
//! from `bind(0)` lies in the ephemeral range *by definition*, so while the
//! server is down a reconnecting client's `connect()` may get that very port
//! as its source port and connect to itself (then the restarted server gets
//! `EADDRINUSE`). Two kinds of ports can never be picked by `connect()` (nor
//! by `bind(0)`):
//!
//! - ports outside `net.ipv4.ip_local_port_range`;
//! - ports listed in `net.ipv4.ip_local_reserved_ports` ("never
//!   auto-assigned"; explicit binds still work).
//!
//! [`free_ports`] draws such ports at random (so that test processes
//! running in parallel rarely draw the same one), skips every port that any
//! socket of this namespace uses now (the sock_diag [`Inventory`]: listening,
//! bound, connected, TIME-WAIT), and keeps only ports it could bind on the
//! requested host. Ports below 1024 are left out: they need privilege. The
//! port is free when checked; as with any "free port" helper, another
//! process may take it before the server binds, which is why the choice is
//! random over tens of thousands of ports rather than "the first free one".

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

use rand::seq::SliceRandom;

use crate::inventory::{Inventory, PortUse};
use crate::ports::{EphemeralFacts, FactsError, PortRange, PortSet};
use crate::sys::diag::DiagError;

/// The lowest port handed out: ports below need privilege to bind.
pub const MIN_PORT: u16 = 1024;

/// Why a port is safe from `connect()` and `bind(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Below the ephemeral range.
    BelowRange,
    /// Above the ephemeral range.
    AboveRange,
    /// In the range, but listed in `ip_local_reserved_ports`.
    Reserved,
}

impl Why {
    /// `below_range`, `above_range` or `reserved` (the JSON value).
    pub fn as_str(self) -> &'static str {
        match self {
            Why::BelowRange => "below_range",
            Why::AboveRange => "above_range",
            Why::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `port` can never be auto-assigned here, and why (`None`: it can,
/// or it is below [`MIN_PORT`]).
pub fn why_safe(port: u16, range: PortRange, reserved: &PortSet) -> Option<Why> {
    if port < MIN_PORT {
        None
    } else if port < range.low {
        Some(Why::BelowRange)
    } else if port > range.high {
        Some(Why::AboveRange)
    } else if reserved.contains(port) {
        Some(Why::Reserved)
    } else {
        None
    }
}

/// Every port that can never be auto-assigned here, in order.
pub fn candidates(range: PortRange, reserved: &PortSet) -> Vec<u16> {
    (MIN_PORT..=u16::MAX)
        .filter(|&p| why_safe(p, range, reserved).is_some())
        .collect()
}

/// One port handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreePort {
    /// The port.
    pub port: u16,
    /// Why no client can loop into it.
    pub why: Why,
}

/// The answer of [`free_ports`].
#[derive(Debug)]
pub struct Found {
    /// The ports, in the random order drawn.
    pub ports: Vec<FreePort>,
    /// The host they were checked on.
    pub host: IpAddr,
    /// `ip_local_port_range`.
    pub range: PortRange,
    /// `ip_local_reserved_ports`.
    pub reserved: PortSet,
    /// How many ports were safe by the kernel settings.
    pub candidates: usize,
    /// Drawn candidates skipped because a socket uses them (sock_diag).
    pub in_use: u32,
    /// Drawn candidates skipped because binding them failed.
    pub unbindable: u32,
    /// The socket dump, if it failed: ports were then checked by binding
    /// only (which misses ports used only by connected sockets).
    pub dump_error: Option<DiagError>,
}

/// Why no ports could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum FreePortError {
    /// The port range could not be read.
    #[error("reading the ephemeral-port facts")]
    Facts(#[from] FactsError),
    /// The settings leave no safe port at all.
    #[error(
        "no port is safe here: the ephemeral range {range} leaves no port from {MIN_PORT} up \
         outside it, and none is reserved; list ports in net.ipv4.ip_local_reserved_ports"
    )]
    NoCandidates {
        /// The range.
        range: PortRange,
    },
    /// The host is not an address of this network namespace.
    #[error("cannot listen on {host} (is it an address of this host?)")]
    Host {
        /// The host.
        host: IpAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// Not enough safe, free ports.
    #[error(
        "only {found} of the {wanted} ports asked for are safe and free here \
         ({candidates} safe by the kernel settings, {in_use} in use, {unbindable} not bindable)"
    )]
    NotEnough {
        /// Asked for.
        wanted: usize,
        /// Found.
        found: usize,
        /// Safe by the settings.
        candidates: usize,
        /// In use.
        in_use: u32,
        /// Bind failed.
        unbindable: u32,
    },
}

/// What one bind check says about a port.
#[derive(Debug)]
pub enum BindCheck {
    /// It could be bound (and was released).
    Free,
    /// Something holds it (`EADDRINUSE`, `EACCES`...).
    Taken,
    /// The host itself is wrong (`EADDRNOTAVAIL`...): give up.
    BadHost(io::Error),
}

/// Binds `host:port` and releases it at once.
pub fn bind_check(host: IpAddr, port: u16) -> BindCheck {
    match TcpListener::bind(SocketAddr::new(host, port)) {
        Ok(_) => BindCheck::Free,
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => BindCheck::BadHost(e),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => BindCheck::BadHost(e),
        Err(_) => BindCheck::Taken,
    }
}

/// Takes `count` ports from `order` (candidates, already shuffled) that the
/// inventory does not show in use and that `bind` finds free. Pure apart
/// from `bind`.
pub fn choose(
    order: &[u16],
    count: usize,
    range: PortRange,
    reserved: &PortSet,
    inventory: Option<&Inventory>,
    mut bind: impl FnMut(u16) -> BindCheck,
) -> Result<(Vec<FreePort>, u32, u32), io::Error> {
    let mut out = Vec::with_capacity(count);
    let (mut in_use, mut unbindable) = (0u32, 0u32);
    for &port in order {
        if out.len() == count {
            break;
        }
        let Some(why) = why_safe(port, range, reserved) else {
            continue;
        };
        if inventory.is_some_and(|inv| inv.port(port) != PortUse::default()) {
            in_use += 1;
            continue;
        }
        match bind(port) {
            BindCheck::Free => out.push(FreePort { port, why }),
            BindCheck::Taken => unbindable += 1,
            BindCheck::BadHost(e) => return Err(e),
        }
    }
    Ok((out, in_use, unbindable))
}

/// `count` ports of the caller's network namespace that a server on `host`
/// can listen on with no risk of a client looping into them: outside the
/// ephemeral range or reserved, unused now, bindable, drawn at random.
pub fn free_ports(count: usize, host: IpAddr) -> Result<Found, FreePortError> {
    let facts = EphemeralFacts::read()?;
    let bound_visible = facts.kernel.is_some_and(|k| k.dumps_bound_sockets());
    let (inventory, dump_error) = match Inventory::read(bound_visible) {
        Ok(inv) => (Some(inv), None),
        Err(e) => (None, Some(e)),
    };
    let mut order = candidates(facts.range, &facts.reserved);
    if order.is_empty() {
        return Err(FreePortError::NoCandidates { range: facts.range });
    }
    order.shuffle(&mut rand::rng());
    let (ports, in_use, unbindable) = choose(
        &order,
        count,
        facts.range,
        &facts.reserved,
        inventory.as_ref(),
        |p| bind_check(host, p),
    )
    .map_err(|source| FreePortError::Host { host, source })?;
    if ports.len() < count {
        return Err(FreePortError::NotEnough {
            wanted: count,
            found: ports.len(),
            candidates: order.len(),
            in_use,
            unbindable,
        });
    }
    Ok(Found {
        ports,
        host,
        range: facts.range,
        reserved: facts.reserved,
        candidates: order.len(),
        in_use,
        unbindable,
        dump_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Socket, TcpState};

    fn range(low: u16, high: u16) -> PortRange {
        PortRange { low, high }
    }

    #[test]
    fn safe_means_outside_the_range_or_reserved() {
        let r = range(32768, 60999);
        let res = PortSet::parse("40000,40002-40003").unwrap();
        assert_eq!(why_safe(8080, r, &res), Some(Why::BelowRange));
        assert_eq!(why_safe(32767, r, &res), Some(Why::BelowRange));
        assert_eq!(why_safe(32768, r, &res), None);
        assert_eq!(why_safe(40000, r, &res), Some(Why::Reserved));
        assert_eq!(why_safe(40001, r, &res), None);
        assert_eq!(why_safe(60999, r, &res), None);
        assert_eq!(why_safe(61000, r, &res), Some(Why::AboveRange));
        assert_eq!(why_safe(80, r, &res), None, "privileged ports are left out");
        let c = candidates(r, &res);
        assert_eq!(c.len(), (32768 - 1024) + (65535 - 61000 + 1) + 3);
        assert!(c.iter().all(|&p| why_safe(p, r, &res).is_some()));
    }

    #[test]
    fn a_range_over_everything_leaves_only_reserved_ports() {
        let r = range(1024, 65535);
        assert!(candidates(r, &PortSet::default()).is_empty());
        let res = PortSet::parse("40004-40005").unwrap();
        assert_eq!(candidates(r, &res), vec![40004, 40005]);
    }

    fn sock(local: &str, peer: &str, st: TcpState) -> Socket {
        Socket::fixture(st, local, peer)
    }

    #[test]
    fn used_and_unbindable_ports_are_skipped() {
        let r = range(40000, 40009);
        let res = PortSet::default();
        let socks = [
            sock("127.0.0.1:20000", "0.0.0.0:0", TcpState::Listen),
            sock("127.0.0.1:20001", "127.0.0.1:9", TcpState::TimeWait),
            sock("[::1]:20002", "[::]:0", TcpState::BoundInactive),
        ];
        let inv = Inventory::from_sockets(&socks, true);
        let order = [20000, 20001, 40004, 20002, 20003, 20004, 20005, 20006];
        let (got, in_use, unbindable) = choose(&order, 2, r, &res, Some(&inv), |p| {
            if p == 20003 {
                BindCheck::Taken
            } else {
                BindCheck::Free
            }
        })
        .unwrap();
        let ports: Vec<u16> = got.iter().map(|f| f.port).collect();
        assert_eq!(ports, vec![20004, 20005], "in the order drawn");
        assert_eq!((in_use, unbindable), (3, 1));
        assert!(got.iter().all(|f| f.why == Why::BelowRange));
    }

    #[test]
    fn a_bad_host_stops_the_search() {
        let e = choose(
            &[20000, 20001],
            1,
            range(40000, 40009),
            &PortSet::default(),
            None,
            |_| BindCheck::BadHost(io::Error::from(io::ErrorKind::AddrNotAvailable)),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);
    }
}
