//! `tcploop check PORT...`: for each port, can a client's connect() to
//! host:port end in a self-connect here, now, and why. The engine is
//! [`tcploop::survey::check`]; the output (and its JSON schema) is
//! [`tcploop::report::check`].

use std::io::Write;

use anyhow::Context;
use tcploop::host::Resolved;
use tcploop::ports::{PortRange, PortSet};
use tcploop::predict::Client;
use tcploop::report::{self, Format};
use tcploop::survey;

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Verdicts: possible (with the expected number of tries), impossible (with the
reason), listening (something listens: connects succeed but are no loops),
prevented (it could loop, but `tcploop shield` is on here and turns the
self-connect into ECONNREFUSED), unknown (a fact is missing, and which),
stolen (held now by a self-connected socket or by connections using it as
their source port, so that a server's bind fails: the holders are named, and
the prediction for while the service is down is given apart). Exit code 1
when any port is possible, unknown or stolen, 0 when none can loop.

Examples:
  tcploop check 33333             the article's port (odd: never loops on Linux 4.6+)
  tcploop check 40000-40010 --host ::1
  tcploop check 40005 --client bind-reuseaddr";

/// Arguments of `tcploop check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ports or ranges: 40004, 40000-40010, 80,443
    #[arg(required = true, value_name = "PORT", allow_negative_numbers = true)]
    pub ports: Vec<PortSet>,
    /// Destination address or name
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// How the client gets its source port
    #[arg(long, value_enum, default_value_t = ClientKind::Connect)]
    pub client: ClientKind,
    /// The client sets IP_LOCAL_PORT_RANGE to LO-HI (Linux 6.3+; from 6.8 without parity preference)
    #[arg(long, value_name = "LO-HI")]
    pub local_range: Option<PortRange>,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// How the client picks its source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// plain connect(), the usual client
    Connect,
    /// bind(addr, 0) then connect()
    Bind,
    /// SO_REUSEADDR, bind(addr, 0), then connect()
    BindReuseaddr,
}

impl Args {
    /// Parse, then resolve: the ports in order, the client, the address.
    fn config(&self) -> anyhow::Result<(Vec<u16>, Client, Resolved)> {
        let ports: Vec<u16> = self.ports.iter().flat_map(PortSet::iter).collect();
        anyhow::ensure!(self.ports.iter().all(|s| !s.is_empty()), "empty port");
        let client = match (self.local_range, self.client) {
            (Some(r), _) => Client::LocalRange(r),
            (None, ClientKind::Connect) => Client::Connect,
            (None, ClientKind::Bind) => Client::Bind { reuseaddr: false },
            (None, ClientKind::BindReuseaddr) => Client::Bind { reuseaddr: true },
        };
        let resolved = tcploop::host::resolve(&self.host).map_err(anyhow::Error::msg)?;
        Ok((ports, client, resolved))
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (ports, client, resolved) = args.config()?;
    let checked = survey::check(resolved.addr, resolved.scope_id, client, &ports)
        .context("reading the ephemeral-port facts")?;
    report::check::render(
        out,
        Format::json_if(args.json),
        &args.host,
        &resolved,
        &checked,
    )?;
    Ok(if checked.any_can_loop() {
        Exit::Found
    } else {
        Exit::Ok
    })
}
