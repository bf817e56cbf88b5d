//! `tcploop sandbox [--range LO-HI] -- COMMAND...`: runs a command in a
//! throwaway user+net namespace (no root needed) with `lo` up and its own
//! ephemeral port range, so that loops reproduce in a few tries and nothing
//! touches the host's ports. The namespace vanishes when the command exits.

use std::os::unix::process::CommandExt;

use anyhow::Context;
use tcploop::ports::{PortRange, PortSet};
use tcploop::sandbox::{Isolation, Sandbox};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
The command's exit status is passed through. Without a command, runs $SHELL.

Examples:
  tcploop sandbox --range 40000-40009 -- tcploop connect 40004
  tcploop sandbox --range 40000-40009 --reserve 40004 -- tcploop check 40000-40009";

/// Arguments of `tcploop sandbox`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// ip_local_port_range inside, e.g. 40000-40009 (default: the kernel's)
    #[arg(long, value_name = "LO-HI")]
    pub range: Option<PortRange>,
    /// ip_local_reserved_ports inside, e.g. 40004,40006-40008
    #[arg(long, value_name = "LIST")]
    pub reserve: Option<PortSet>,
    /// Use a plain network namespace (root) instead of a user+net namespace
    #[arg(long)]
    pub netns_only: bool,
    /// The command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// Runs the command; returns only on error.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let sandbox = Sandbox {
        range: args.range,
        reserved: args.reserve,
        isolation: if args.netns_only {
            Isolation::NetNsOnly
        } else {
            Isolation::Auto
        },
    };
    let mut command = args.command;
    if command.is_empty() {
        command.push(std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()));
    }
    sandbox.enter().context("entering the sandbox")?;
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(err).with_context(|| format!("running {:?}", command[0]))
}
