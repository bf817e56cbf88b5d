//! `tcploop scan`: every self-connected TCP socket of this network namespace
//! (or of every namespace, `--all-netns`), with the processes holding it.
//!
//! The engine is [`tcploop::scan::scan`]; the output (and its JSON schema)
//! is [`tcploop::report::scan`].

use std::io::Write;

use tcploop::owners::OwnerSource;
use tcploop::report::scan::View;
use tcploop::report::{self, Format};
use tcploop::scan::{self, ScanOptions};

use super::SourceArg;

use crate::exit::Exit;

const AFTER_HELP: &str = "\
A loop is a socket whose local address and port equal its peer's: a client
that connected to itself. While it lives, its port is held (a server binding
it gets EADDRINUSE); closed, it waits out TIME-WAIT (up to 60 s) and still
blocks the port. `tcploop kill` destroys loops.

Owners: as root on a kernel with BTF, a BPF iterator walks every process's
open files in the kernel (one pass, about 0.2 to 0.6 us a file, loaded while
the socket table is read); elsewhere /proc/PID/fd is read. Both look only
for the loops found and name every process holding one. Reading other
users' processes from /proc needs root: those are counted as unknown, never
dropped.

Exit codes: 0 no loop, 1 loops found, 2 error.

Examples:
  tcploop scan
  tcploop scan --port 40004 --json
  tcploop scan --owners proc --verbose
  sudo tcploop scan --all-netns";

/// Arguments of `tcploop scan`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Only loops on this port
    #[arg(long, value_name = "PORT", value_parser = super::parse_port)]
    pub port: Option<u16>,
    /// Where to read the socket table: sock_diag netlink (falls back to
    /// /proc when unavailable, and says so), or /proc/net/tcp{,6}
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// Scan every network namespace of the host (root): each distinct
    /// /proc/*/ns/net and /run/netns/*
    #[arg(long)]
    pub all_netns: bool,
    /// Do not look up the processes holding the loops
    #[arg(long, conflicts_with = "owners")]
    pub no_owners: bool,
    /// Where to find the processes holding the loops: a BPF task_file
    /// iterator in the kernel (root, BTF), or /proc/PID/fd; auto uses BPF
    /// where it loads and says why not otherwise (--verbose)
    #[arg(long, value_enum, default_value_t = OwnersArg::Auto)]
    pub owners: OwnersArg,
    /// Also say where the socket table and the owners came from (and why
    /// BPF was not used, when it was not)
    #[arg(long, short)]
    pub verbose: bool,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// `--owners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OwnersArg {
    /// bpf where it loads, else proc
    Auto,
    /// the /proc/PID/fd walk
    Proc,
    /// the in-kernel task_file iterator only (an error where it cannot load)
    Bpf,
}

impl From<OwnersArg> for OwnerSource {
    fn from(s: OwnersArg) -> OwnerSource {
        match s {
            OwnersArg::Auto => OwnerSource::Auto,
            OwnersArg::Proc => OwnerSource::Proc,
            OwnersArg::Bpf => OwnerSource::Bpf,
        }
    }
}

impl Args {
    /// Parse, then resolve: the scan's options, and what the text shows.
    fn config(&self) -> (ScanOptions, View) {
        let opts = ScanOptions {
            source: self.source.into(),
            port: self.port,
            no_owners: self.no_owners,
            owners: self.owners.into(),
            all_netns: self.all_netns,
        };
        let view = View {
            port: self.port,
            all_netns: self.all_netns,
            verbose: self.verbose,
        };
        (opts, view)
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (opts, view) = args.config();
    let r = scan::scan(&opts)?;
    report::scan::render(out, Format::json_if(args.json), &r, &view)?;
    Ok(if r.loops.is_empty() {
        Exit::Ok
    } else {
        Exit::Found
    })
}
