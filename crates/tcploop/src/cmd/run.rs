//! `tcploop run`: not built yet.

use std::io::Write;

use crate::exit::Exit;

/// Arguments of `tcploop run`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args, _out: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("`tcploop run` is not available yet")
}
