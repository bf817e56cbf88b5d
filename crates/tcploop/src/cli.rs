//! Command-line parsing (clap derive). The argument structs of each command
//! live in its module under `cmd/`; each is turned into a validated config
//! before any work starts, so clap types never reach the engine.

use clap::{Parser, Subcommand};

use crate::cmd;

const EXIT_CODES: &str = "\
Exit codes:
  0    success: loop reproduced (connect, demo); nothing found (check, scan, audit);
       doctor: the port is free
  1    connect: not reproduced (refused by the predictor, or a limit reached);
       check: a port can loop or is stolen; scan: loops found; audit: exposed
       ports or loops; doctor: something holds the port
  2    bad usage, bad input, or an error
  3    connect: a real listener answered (not a loop)
  130  interrupted (Ctrl-C)";

/// Make the TCP loop connect visible, predictable and impossible.
///
/// A TCP client that connects to an unused port of its own host can end up
/// connected to itself (TCP simultaneous open): when the port lies in the
/// ephemeral range, the kernel may pick it as the client's source port. The
/// client reads back its own bytes, and the port is stolen from the real
/// server. `tcploop PORT` is the article's reproducer (`tcploop connect PORT`).
#[derive(Debug, Parser)]
#[command(name = "tcploop", version, after_help = EXIT_CODES, arg_required_else_help = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reproduce the loop: connect() to a local port until it connects to itself
    #[command(after_help = cmd::connect::AFTER_HELP)]
    Connect(cmd::connect::Args),
    /// Show this namespace's ephemeral-port facts (range, reserved, parity)
    Ports(cmd::ports::Args),
    /// Predict, for each port, whether a connect() to it can loop here, and why
    #[command(after_help = cmd::check::AFTER_HELP)]
    Check(cmd::check::Args),
    /// Find self-connected sockets on this host and the processes holding them
    Scan(cmd::scan::Args),
    /// Destroy self-connected sockets (SOCK_DESTROY) so their ports are free
    Kill(cmd::kill::Args),
    /// Why a server cannot bind its port (EADDRINUSE): the holder, the fix in order
    #[command(after_help = cmd::doctor::AFTER_HELP)]
    Doctor(cmd::doctor::Args),
    /// Show a loop happen, packet by packet, in a throwaway namespace
    #[command(after_help = cmd::demo::AFTER_HELP)]
    Demo(cmd::demo::Args),
    /// Audit exposed service ports and apply the kernel fix (reserved ports)
    #[command(after_help = cmd::audit::AFTER_HELP)]
    Audit(cmd::audit::Args),
    /// Watch for loops continuously; serve Prometheus metrics
    #[command(after_help = cmd::watch::AFTER_HELP)]
    Watch(cmd::watch::Args),
    /// Print ports a test server can listen on without any risk of a loop
    FreePort(cmd::free_port::Args),
    /// Run a program with the preload guard: it can no longer connect to itself
    #[command(after_help = cmd::run::AFTER_HELP)]
    Run(cmd::run::Args),
    /// Run a command in a throwaway user+net namespace with its own port range
    #[command(after_help = cmd::sandbox::AFTER_HELP)]
    Sandbox(cmd::sandbox::Args),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) or a man page
    #[command(
        after_help = "Examples:\n  tcploop completions bash > /etc/bash_completion.d/tcploop\n  tcploop completions man > tcploop.1"
    )]
    Completions(cmd::completions::Args),
}

/// Parses argv; `tcploop PORT ...` (the article's form) means `tcploop connect PORT ...`.
pub fn parse() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
    {
        args.insert(1, "connect".into());
    }
    Cli::parse_from(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
