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
