//! Command-line parsing (clap derive). The argument structs of each command
//! live in its module under `cmd/`; each is turned into a validated config
//! before any work starts, so clap types never reach the engine.

use clap::{Parser, Subcommand};

use crate::cmd;

pub const EXIT_CODES: &str = "\
Exit codes:
  0    success: loop reproduced (connect, demo); nothing found (check, scan, audit);
       doctor: the port is free
  1    connect: not reproduced (refused by the predictor, or a limit reached);
       check: a port can loop or is stolen; scan, trace: loops found; audit:
       exposed ports or loops; doctor: something holds the port
  2    bad usage, bad input, or an error
  3    connect --force: a real listener answered (not a loop; without --force,
       connect refuses a port with a listener before trying: exit 1)
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
    /// Print each loop the instant it forms, and its end (eBPF; root)
    #[command(after_help = cmd::trace::AFTER_HELP)]
    Trace(cmd::trace::Args),
    /// Watch for loops continuously; serve Prometheus metrics
    #[command(after_help = cmd::watch::AFTER_HELP)]
    Watch(cmd::watch::Args),
    /// Print ports a test server can listen on without any risk of a loop
    FreePort(cmd::free_port::Args),
    /// Run a program with the preload guard: it can no longer connect to itself
    #[command(after_help = cmd::run::AFTER_HELP)]
    Run(cmd::run::Args),
    /// Make the loop impossible for every program: answer self-connect SYNs on lo with a reset
    #[command(after_help = cmd::shield::AFTER_HELP)]
    Shield(cmd::shield::Args),
    /// Run a command in a throwaway user+net namespace with its own port range
    #[command(after_help = cmd::sandbox::AFTER_HELP)]
    Sandbox(cmd::sandbox::Args),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) or man pages
    #[command(
        after_help = "A write error (a full disk) is exit 2, never a panic.\n\nExamples:\n  tcploop completions bash > /etc/bash_completion.d/tcploop\n  tcploop completions man > tcploop.1\n  tcploop completions man --dir /usr/local/share/man/man1   one page a command"
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

    /// Values that broke, or could break, a parser: overflowing durations
    /// and ports, empty and huge strings, control characters, odd ranges.
    pub(crate) const NASTY: &[&str] = &[
        "",
        "-",
        "--",
        "0",
        "-1",
        "1",
        "65535",
        "65536",
        "70000",
        "18446744073709551615",
        "18446744073709551615s",
        "99999999999999999999999999ms",
        "1e30",
        "1e308",
        "NaN",
        "inf",
        "-0.0",
        "366d",
        "1h30m",
        "0-0",
        "1-65535",
        "65535-1",
        "40000-40009",
        "100-200",
        "40000-",
        "-40000",
        ",,,",
        "1,2,3-1",
        "::ffff:127.0.0.1",
        "[::1]:99999",
        "256.256.256.256",
        "\u{1b}[2J",
        "a\nb",
        "/dev/full",
        "/nonexistent/x",
        "bash",
        "man",
    ];

    /// Every flag and option name of a subcommand (`--long`, `-s`).
    fn flags(sub: &clap::Command) -> Vec<String> {
        let mut v = vec![];
        for a in sub.get_arguments() {
            if let Some(l) = a.get_long() {
                v.push(format!("--{l}"));
            }
            if let Some(s) = a.get_short() {
                v.push(format!("-{s}"));
            }
        }
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Fuzzing the argument parser (cargo-fuzz needs a nightly
        /// toolchain; this is proptest over the clap definitions): any
        /// argv built from a subcommand's own flags and nasty values is
        /// parsed or refused with an error, never a panic. The value
        /// parsers (durations, ports, ranges) run here too.
        #[test]
        fn no_argv_makes_the_parser_panic(
            sub in 0usize..64,
            picks in proptest::collection::vec((0usize..64, 0usize..64, proptest::bool::ANY), 0..7),
        ) {
            let cmd = Cli::command();
            let subs: Vec<&clap::Command> = cmd.get_subcommands().collect();
            let sc = subs[sub % subs.len()];
            let fl = flags(sc);
            let mut argv = vec!["tcploop".to_string(), sc.get_name().to_string()];
            for (f, v, flag) in picks {
                if flag && !fl.is_empty() {
                    argv.push(fl[f % fl.len()].clone());
                }
                argv.push(NASTY[v % NASTY.len()].to_string());
            }
            let _ = Cli::try_parse_from(&argv);
        }
    }
}
