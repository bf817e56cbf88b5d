//! Is a destination an address of this network namespace, and would the
//! kernel send from that same address? Only then can a `connect()` loop.
//!
//! The source address the kernel picks must equal the destination. That is
//! the case for `127.0.0.1` and `::1`, for the unspecified addresses
//! (`0.0.0.0` and `::` mean "this host": the kernel connects to 127.0.0.1 /
//! ::1), for v4-mapped forms of those, and for any address assigned to an
//! interface of this namespace, even a down one. It is not the case for
//! `127.0.0.2`..`127.255.255.254` unless assigned explicitly: the
//! `127.0.0.0/8` local route carries `src 127.0.0.1`, so the source differs
//! and no loop can happen (unless the client binds that address itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sys::ifaddrs::IfAddr;

/// How a destination address relates to this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostClass {
    /// Assigned to interface `iface` of this namespace: source == destination.
    Local {
        /// The interface that carries the address.
        iface: String,
    },
    /// `0.0.0.0` or `::`: the kernel connects to (and from) the loopback address.
    Unspecified,
    /// In 127.0.0.0/8 but not assigned: the kernel sends from 127.0.0.1.
    OtherLoopback,
    /// The loopback address, but `lo` does not carry it (down): connect()
    /// fails with ENETUNREACH.
    LoopbackDown,
    /// Not an address of this namespace.
    Remote,
}

/// A destination address, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The address as given (v4-mapped addresses are unwrapped).
    pub addr: IpAddr,
    /// The address the connection really goes to, and comes from when it loops.
    pub effective: IpAddr,
    /// How it relates to this namespace.
    pub class: HostClass,
}

impl Host {
    /// Whether the kernel's source address would equal the destination,
    /// the first precondition of a loop.
    pub fn source_is_destination(&self) -> bool {
        matches!(self.class, HostClass::Local { .. } | HostClass::Unspecified)
    }
}

/// Classifies `addr` (with IPv6 `scope_id`, 0 if none) against the
/// interface addresses of this namespace.
pub fn classify(addr: IpAddr, scope_id: u32, ifaddrs: &[IfAddr]) -> Host {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    let (effective, unspecified) = match addr {
        IpAddr::V4(a) if a.is_unspecified() => (IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        IpAddr::V6(a) if a.is_unspecified() => (IpAddr::V6(Ipv6Addr::LOCALHOST), true),
        a => (a, false),
    };
    let link_local = matches!(effective, IpAddr::V6(v6) if v6.is_unicast_link_local());
    let found = ifaddrs
        .iter()
        .find(|i| i.addr == effective && (!link_local || scope_id == 0 || i.scope_id == scope_id));
    let class = match (found, unspecified) {
        (Some(_), true) => HostClass::Unspecified,
        (Some(i), false) => HostClass::Local {
            iface: i.name.clone(),
        },
        (None, _) if effective.is_loopback() && is_canonical_loopback(effective) => {
            HostClass::LoopbackDown
        }
        (None, _) if effective.is_loopback() => HostClass::OtherLoopback,
        (None, _) => HostClass::Remote,
    };
    Host {
        addr,
        effective,
        class,
    }
}

fn is_canonical_loopback(a: IpAddr) -> bool {
    a == IpAddr::V4(Ipv4Addr::LOCALHOST) || a == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lo() -> Vec<IfAddr> {
        vec![
            IfAddr {
                name: "lo".into(),
                addr: "127.0.0.1".parse().unwrap(),
                scope_id: 0,
                up: true,
            },
            IfAddr {
                name: "lo".into(),
                addr: "::1".parse().unwrap(),
                scope_id: 0,
                up: true,
            },
            IfAddr {
                name: "veth0".into(),
                addr: "10.99.0.1".parse().unwrap(),
                scope_id: 0,
                up: false,
            },
        ]
    }

    #[test]
    fn classifies_the_cases_of_the_decision_procedure() {
        let c = |s: &str| classify(s.parse().unwrap(), 0, &lo()).class;
        assert_eq!(c("127.0.0.1"), HostClass::Local { iface: "lo".into() });
        assert_eq!(c("::1"), HostClass::Local { iface: "lo".into() });
        assert_eq!(c("0.0.0.0"), HostClass::Unspecified);
        assert_eq!(c("::"), HostClass::Unspecified);
        assert_eq!(
            c("::ffff:127.0.0.1"),
            HostClass::Local { iface: "lo".into() }
        );
        assert_eq!(c("127.0.0.2"), HostClass::OtherLoopback);
        assert_eq!(
            c("10.99.0.1"),
            HostClass::Local {
                iface: "veth0".into()
            }
        );
        assert_eq!(c("192.0.2.1"), HostClass::Remote);
        assert_eq!(
            classify("127.0.0.1".parse().unwrap(), 0, &[]).class,
            HostClass::LoopbackDown
        );
    }
}

/// A host name or literal, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The address used.
    pub addr: IpAddr,
    /// IPv6 scope id (link-local), else 0.
    pub scope_id: u32,
    /// Every address the name resolved to (the first is used).
    pub all: Vec<IpAddr>,
}

/// Resolves `host` (an IPv4 or IPv6 literal, `[v6]`, `fe80::1%eth0`, or a
/// name through the system resolver) to the address a client would use.
pub fn resolve(host: &str) -> Result<Resolved, String> {
    use std::net::ToSocketAddrs;
    let h = host.trim();
    if h.is_empty() {
        return Err("empty host".into());
    }
    let bare = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Resolved {
            addr: ip,
            scope_id: 0,
            all: vec![ip],
        });
    }
    let addrs: Vec<std::net::SocketAddr> = (bare, 0u16)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {h:?}: {e}"))?
        .collect();
    let first = addrs
        .first()
        .ok_or_else(|| format!("host {h:?} resolves to no address"))?;
    let scope_id = match first {
        std::net::SocketAddr::V6(v6) => v6.scope_id(),
        _ => 0,
    };
    let mut all: Vec<IpAddr> = vec![];
    for a in &addrs {
        if !all.contains(&a.ip()) {
            all.push(a.ip());
        }
    }
    Ok(Resolved {
        addr: first.ip(),
        scope_id,
        all,
    })
}
