//! `tcploop audit`: not built yet.

use std::io::Write;

use crate::exit::Exit;

/// Arguments of `tcploop audit`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args, _out: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("`tcploop audit` is not available yet")
}
