//! One look at the namespace: everything the predictor needs, gathered once
//! (the port facts, the socket dump, the interface addresses), shared by
//! `check`, `connect`, `ports` and the commands built on them.

use std::net::IpAddr;

use crate::host::{self, Host};
use crate::inventory::Inventory;
use crate::model::Socket;
use crate::ports::{EphemeralFacts, FactsError, PortSet};
use crate::predict::{Client, Situation};
use crate::sys::diag::DiagError;
use crate::sys::ifaddrs::{self, IfAddr};

/// The facts of the caller's network namespace at one moment.
#[derive(Debug)]
pub struct Survey {
    /// The ephemeral-port facts.
    pub facts: EphemeralFacts,
    /// The socket dump, or why it failed (the predictor then says `unknown`).
    pub inventory: Result<Inventory, DiagError>,
    /// Interface addresses (empty if they could not be read).
    pub ifaddrs: Vec<IfAddr>,
    /// The sockets on the ports asked for with [`Survey::take_keeping`].
    pub kept: Vec<Socket>,
}

impl Survey {
    /// Reads everything. Only the port facts are required; a failed socket
    /// dump or address list is kept as a gap, not an error.
    pub fn take() -> Result<Survey, FactsError> {
        Survey::take_keeping(&PortSet::default())
    }

    /// [`Survey::take`], also keeping the sockets whose local port is in
    /// `keep` (from the same dump), for the holder analysis.
    pub fn take_keeping(keep: &PortSet) -> Result<Survey, FactsError> {
        let facts = EphemeralFacts::read()?;
        let bound_visible = facts.kernel.is_some_and(|k| k.dumps_bound_sockets());
        let (inventory, kept) = match Inventory::read_keeping(bound_visible, keep) {
            Ok((i, k)) => (Ok(i), k),
            Err(e) => (Err(e), vec![]),
        };
        let ifaddrs = ifaddrs::list().unwrap_or_default();
        Ok(Survey {
            facts,
            inventory,
            ifaddrs,
            kept,
        })
    }

    /// Classifies a destination address.
    pub fn host(&self, addr: IpAddr, scope_id: u32) -> Host {
        host::classify(addr, scope_id, &self.ifaddrs)
    }

    /// The predictor's view for one destination.
    pub fn situation<'a>(&'a self, host: &'a Host, client: Client) -> Situation<'a> {
        Situation {
            facts: &self.facts,
            inventory: self.inventory.as_ref().ok(),
            host,
            client,
        }
    }
}

/// What `tcploop check` learns: the destination as this namespace sees it,
/// whether the socket dump was missing, and one answer a port (the
/// shield's protection, when it is on here, applied).
#[derive(Debug)]
pub struct Checked {
    /// The destination, classified.
    pub host: Host,
    /// Why the socket dump failed, if it did (listeners and bound ports are
    /// then unknown).
    pub inventory_error: Option<String>,
    /// One answer a port, in the order asked.
    pub ports: Vec<PortCheck>,
}

/// The answer for one port.
#[derive(Debug)]
pub struct PortCheck {
    /// The predictor's verdict for a client's connect().
    pub prediction: crate::predict::Prediction,
    /// The port is stolen now (a loop or a source-port connection holds
    /// it; a server's bind fails), with the prediction while the service
    /// is down ([`crate::doctor::theft`]).
    pub theft: Option<crate::doctor::Theft>,
}

impl Checked {
    /// Whether any port can loop, or might, or is stolen (the check's exit
    /// code).
    pub fn any_can_loop(&self) -> bool {
        use crate::predict::Verdict;
        self.ports.iter().any(|p| {
            matches!(p.prediction.verdict, Verdict::Possible | Verdict::Unknown)
                || p.theft.is_some()
        })
    }
}

/// Predicts, for each port, whether a `client`'s connect() to `addr`
/// (`scope_id`: IPv6 scope, else 0) can loop here, now, and whether the
/// port is stolen already.
pub fn check(
    addr: IpAddr,
    scope_id: u32,
    client: Client,
    ports: &[u16],
) -> Result<Checked, FactsError> {
    let keep = PortSet::from_ports(ports.iter().copied());
    let survey = Survey::take_keeping(&keep)?;
    let host = survey.host(addr, scope_id);
    let shield = crate::shield::protection_here();
    let sit = survey.situation(&host, client);
    let ports = ports
        .iter()
        .map(|&port| {
            let mut prediction = crate::predict::predict(&sit, port);
            let mut theft = crate::doctor::theft(&survey, &host, client, port);
            if let Some(how) = &shield {
                crate::predict::shielded(&mut prediction, how);
                if let Some(t) = &mut theft {
                    crate::predict::shielded(&mut t.when_down, how);
                }
            }
            PortCheck { prediction, theft }
        })
        .collect();
    let inventory_error = survey.inventory.as_ref().err().map(|e| e.to_string());
    Ok(Checked {
        host,
        inventory_error,
        ports,
    })
}

/// What `tcploop ports` shows: the ephemeral-port facts and what they mean
/// for plain `connect()`, as data (the wording is the output layer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsView {
    /// The facts as read.
    pub facts: EphemeralFacts,
    /// Whether the kernel prefers one parity for connect() (Linux 4.6+).
    pub parity_split: bool,
    /// The parity plain connect() prefers (that of the range's low end).
    pub connect_parity: crate::ports::Parity,
    /// Even ports plain connect() can pick.
    pub even: usize,
    /// Odd ports plain connect() can pick.
    pub odd: usize,
    /// The top port of an odd-sized range, which connect() never uses.
    pub top_port_unused: Option<u16>,
    /// Ports of the range, not reserved, that something listens on, with
    /// the listening addresses; `Err`: the socket dump failed, and why.
    pub listening_in_range: Result<Vec<(u16, Vec<std::net::SocketAddr>)>, String>,
}

/// Reads this namespace's ephemeral-port facts for `tcploop ports`.
pub fn ports_view() -> Result<PortsView, FactsError> {
    use crate::ports::Parity;
    let s = Survey::take()?;
    let f = s.facts;
    let r = f.range;
    let listening_in_range = match &s.inventory {
        Ok(inv) => {
            let mut v: Vec<_> = inv
                .listeners()
                .filter(|(p, _)| r.contains(*p) && !f.reserved.contains(*p))
                .map(|(port, addrs)| (port, addrs.to_vec()))
                .collect();
            v.sort_by_key(|(p, _)| *p);
            Ok(v)
        }
        Err(e) => Err(e.to_string()),
    };
    Ok(PortsView {
        parity_split: f.kernel.is_some_and(|k| k.has_parity_split()),
        connect_parity: r.connect_parity(),
        even: f.connect_candidates(Parity::Even).count(),
        odd: f.connect_candidates(Parity::Odd).count(),
        top_port_unused: (r.connect_high() < r.high).then_some(r.high),
        listening_in_range,
        facts: f,
    })
}
