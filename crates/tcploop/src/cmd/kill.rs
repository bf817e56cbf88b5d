//! `tcploop kill`: destroys the loops that `tcploop scan` finds, with
//! `SOCK_DESTROY` (what `ss -K` does), so that their ports are free at once.
//! A dry run unless `--yes`.
//!
//! The engine is [`tcploop::scan::scan_and_kill`]; the output (and its JSON
//! schema) is [`tcploop::report::kill`].

use std::io::Write;

use tcploop::report::{self, Format};
use tcploop::scan::{self, ScanOptions};

use super::SourceArg;
use crate::exit::Exit;

const AFTER_HELP: &str = "\
Each loop is looked up again by its exact 4-tuple and socket cookie right
before it is destroyed, so a socket that is not a loop is never touched.
Its owner gets ECONNABORTED. Afterwards the socket must be gone and the port
bindable; a port the owner had bound explicitly stays held until the owner
closes the socket.

Destroying needs CAP_NET_ADMIN over the network namespace (root, or root of
the user namespace that owns it); without it: an error and exit code 2
(unlike `ss -K`, which exits 0).

A loop on a port inside the ephemeral range that is not reserved comes back
when its client reconnects: reserve the port first (tcploop audit --ports P
--apply), then kill.

Exit codes: dry run: 0 no loop, 1 loops to destroy. --yes: 0 every loop
destroyed (or already gone), 1 some survived, 2 error (e.g. no permission).

Examples:
  tcploop kill                     list what would be destroyed
  sudo tcploop kill --yes
  sudo tcploop kill --port 40004 --yes --json";

/// Arguments of `tcploop kill`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Destroy them (without it: a dry run that lists them)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only loops on this port
    #[arg(long, value_name = "PORT", value_parser = super::parse_port)]
    pub port: Option<u16>,
    /// Loops of every network namespace of the host (root)
    #[arg(long)]
    pub all_netns: bool,
    /// Where to read the socket table (destroying always uses netlink)
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let opts = ScanOptions {
        source: args.source.into(),
        port: args.port,
        all_netns: args.all_netns,
        ..ScanOptions::default()
    };
    let mut run = scan::scan_and_kill(&opts, !args.yes)?;
    report::kill::render(out, Format::json_if(args.json), &run, args.port)?;
    if let Some(e) = run.error.take() {
        let found = run.scan.loops.len();
        let destroyed = run.tally().destroyed;
        let e = anyhow::Error::new(e);
        return Err(e.context(format!("destroyed {destroyed} of {found} loop(s)")));
    }
    Ok(if run.survivors() {
        Exit::Found
    } else {
        Exit::Ok
    })
}
