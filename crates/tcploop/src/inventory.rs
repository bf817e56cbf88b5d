//! Who holds which TCP port in this network namespace, from one sock_diag
//! dump: what the predictor needs to know about step D of the decision
//! procedure.
//!
//! Linux keeps one bind bucket per port (shared by IPv4 and IPv6, whatever
//! the address). A bucket made by `bind()` or `listen()` makes `connect()`
//! skip the port entirely; a bucket made only by `connect()` does not: the
//! port is reused whenever the 4-tuple differs. So a port that is merely the
//! source port of other connections gives no protection.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::model::{Socket, TcpState};
use crate::ports::PortSet;
use crate::sys::diag;

/// The sockets on one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortUse {
    /// Listening sockets bound to this port.
    pub listen: Vec<SocketAddr>,
    /// Sockets bound to it that neither listen nor are connected.
    pub bound: Vec<SocketAddr>,
    /// Other sockets whose local port it is (connected, closing...). They may
    /// have got the port from `connect()` (no protection) or from an explicit
    /// `bind()` (protection): the dump does not say which.
    pub connected: u32,
    /// Self-connected sockets on this port (any state, TIME-WAIT included).
    pub loops: Vec<Socket>,
}

/// The port usage of a namespace.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    ports: HashMap<u16, PortUse>,
    /// Whether sockets that are only bound were visible (Linux 6.8+).
    pub bound_visible: bool,
    /// Sockets seen in the dump.
    pub sockets: u64,
}

impl Inventory {
    /// Builds the inventory from dumped sockets.
    pub fn from_sockets<'a>(
        sockets: impl IntoIterator<Item = &'a Socket>,
        bound_visible: bool,
    ) -> Inventory {
        let mut inv = Inventory {
            bound_visible,
            ..Inventory::default()
        };
        for s in sockets {
            inv.add(s);
        }
        inv
    }

    /// An empty inventory, to [`add`](Self::add) sockets to.
    pub fn new(bound_visible: bool) -> Inventory {
        Inventory {
            bound_visible,
            ..Inventory::default()
        }
    }

    /// Adds one socket.
    pub fn add(&mut self, s: &Socket) {
        self.sockets += 1;
        let port = s.local.port();
        if port == 0 {
            return;
        }
        let u = self.ports.entry(port).or_default();
        match s.state {
            TcpState::Listen => u.listen.push(s.local),
            TcpState::BoundInactive | TcpState::Close => u.bound.push(s.local),
            // request sockets belong to a listener already counted
            TcpState::NewSynRecv => {}
            _ => {
                if s.is_loop() {
                    u.loops.push(*s);
                } else {
                    u.connected += 1;
                }
            }
        }
    }

    /// Dumps the caller's namespace (IPv4 and IPv6, every state).
    pub fn read(bound_visible: bool) -> Result<Inventory, diag::DiagError> {
        let mut inv = Inventory {
            bound_visible,
            ..Inventory::default()
        };
        diag::dump_all(diag::ALL_STATES, |s| inv.add(s))?;
        Ok(inv)
    }

    /// Dumps the caller's namespace like [`read`](Self::read), and also
    /// returns, whole, the sockets whose local port is in `keep` (for the
    /// holder analysis of those ports, [`crate::holders`]).
    pub fn read_keeping(
        bound_visible: bool,
        keep: &PortSet,
    ) -> Result<(Inventory, Vec<Socket>), diag::DiagError> {
        let mut inv = Inventory::new(bound_visible);
        let mut kept = vec![];
        diag::dump_all(diag::ALL_STATES, |s| {
            inv.add(s);
            if keep.contains(s.local.port()) {
                kept.push(*s);
            }
        })?;
        // a table that changes during the dump can show a socket twice
        kept.sort_by_key(|s| (s.family, s.local, s.peer, s.state, s.inode, s.cookie));
        kept.dedup();
        Ok((inv, kept))
    }

    /// The same inventory without any socket on `port`.
    pub fn without_port(&self, port: u16) -> Inventory {
        let mut inv = self.clone();
        inv.ports.remove(&port);
        inv
    }

    /// The usage of `port` (empty if nothing uses it).
    pub fn port(&self, port: u16) -> PortUse {
        self.ports.get(&port).cloned().unwrap_or_default()
    }

    /// Whether `bind()` or `listen()` holds `port`, so `connect()` skips it.
    pub fn bind_held(&self, port: u16) -> bool {
        self.ports
            .get(&port)
            .is_some_and(|u| !u.listen.is_empty() || !u.bound.is_empty())
    }

    /// Every port that `bind()` or `listen()` holds.
    pub fn bind_held_ports(&self) -> PortSet {
        PortSet::from_ports(
            self.ports
                .iter()
                .filter(|(_, u)| !u.listen.is_empty() || !u.bound.is_empty())
                .map(|(p, _)| *p),
        )
    }

    /// Ports with a listening socket, with their addresses.
    pub fn listeners(&self) -> impl Iterator<Item = (u16, &[SocketAddr])> {
        self.ports
            .iter()
            .filter(|(_, u)| !u.listen.is_empty())
            .map(|(p, u)| (*p, u.listen.as_slice()))
    }

    /// Ports that are the local port of other sockets (not bind-held).
    pub fn connected_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .filter(|(_, u)| u.connected > 0)
            .map(|(p, _)| *p)
    }
}
