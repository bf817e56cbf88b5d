//! `tcploop doctor PORT`: why a server cannot bind its port, and the fix in
//! the order that works. Parses the arguments into a [`Config`], calls the
//! engine ([`tcploop::doctor`]) and hands the result to its renderer
//! ([`tcploop::report::doctor`], where the JSON Lines are documented).

use std::io::Write;
use std::net::IpAddr;

use tcploop::doctor::{self, Config, ServicePort};
use tcploop::report::doctor::render;
use tcploop::report::Format;

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
For `bind: Address already in use` (EADDRINUSE). Finds everything that holds
PORT in this network namespace: a listener (another server, or the service
itself), a client connected to itself (a TCP self-connect, alive or in
TIME-WAIT), ordinary connections that got PORT as their source port,
connections in TIME-WAIT, sockets that are only bound, SO_REUSEPORT groups;
names each holder's process, says what it does to a server's bind() with
and without SO_REUSEADDR, checks with a real bind (released at once), and
gives the fix in the order that works. A client that retries loops again
after a kill alone: reserve the port first, then kill the loop, then start
the server.

--fix does only the safe steps: it reserves the port (live; `tcploop audit
--ports PORT --apply --persist` also writes /etc/sysctl.d) and destroys
self-connected sockets on it (SOCK_DESTROY). It never touches a listener, a
bind-only socket or an ordinary connection. Then it checks that a server can
bind the port, and diagnoses again. Needs root (or CAP_NET_ADMIN over the
namespace).

--host ADDR is the address the server binds: 0.0.0.0 (the default) conflicts
with every IPv4 holder; an IPv6 address is checked IPV6_V6ONLY (as servers
that bind [::] and 0.0.0.0 apart do), so bind 0.0.0.0 and [::] both.

Verdicts: free, stolen-by-loop, stolen-by-source-port, time-wait, listening,
bind-held.

Exit codes: 0 the port is free (after --fix: free now); 1 something holds it;
2 error.

Examples:
  tcploop doctor 6379
  tcploop doctor --service redis          the port from redis.socket or /etc/services
  sudo tcploop doctor 40004 --fix
  tcploop doctor 8080 --host 127.0.0.1 --json
  sudo tcploop doctor 6379 --all-netns    in every network namespace (containers)";

/// Arguments of `tcploop doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The port the server cannot bind
    #[arg(
        value_name = "PORT",
        value_parser = super::parse_port,
        required_unless_present = "service"
    )]
    pub port: Option<u16>,
    /// The address the server binds (default: 0.0.0.0, every IPv4 address)
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// The service: its port from NAME.socket (ListenStream=) or /etc/services;
    /// a listener whose process is NAME... is the service itself
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Look in every network namespace of the host (root)
    #[arg(long)]
    pub all_netns: bool,
    /// Carry out the safe steps (reserve, kill loops), then check the bind
    #[arg(long)]
    pub fix: bool,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// Resolves the arguments into a config, and where `--service` found the
/// port.
fn config(args: &Args) -> anyhow::Result<(Config, Option<ServicePort>)> {
    let from_service = match &args.service {
        Some(name) if args.port.is_none() => {
            Some(doctor::service_port(name).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let port = match (args.port, &from_service) {
        (Some(p), _) => p,
        (None, Some(sp)) => sp.port,
        (None, None) => anyhow::bail!("give a PORT or --service NAME"),
    };
    anyhow::ensure!(port != 0, "port 0 is not a port a server binds");
    let server: IpAddr = match &args.host {
        Some(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.parse()
                .map_err(|_| anyhow::anyhow!("--host {h:?} is not an IP address"))?
        }
        None => from_service
            .as_ref()
            .and_then(|s| s.addr)
            .unwrap_or(IpAddr::from([0, 0, 0, 0])),
    };
    let cfg = Config {
        port,
        server,
        all_netns: args.all_netns,
        service: args.service.clone(),
    };
    Ok((cfg, from_service))
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (cfg, from_service) = config(&args)?;
    let outcome = doctor::run(&cfg, args.fix)?;
    let service = args.service.as_deref().zip(from_service.as_ref());
    render(out, Format::json_if(args.json), service, &outcome)?;
    if outcome.fix_failed() {
        out.flush()?;
        anyhow::bail!("a step of the fix failed (see above)");
    }
    Ok(if outcome.held() {
        Exit::Found
    } else {
        Exit::Ok
    })
}
