//! `tcploop watch`: not built yet.

use std::io::Write;

use crate::exit::Exit;

/// Arguments of `tcploop watch`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub fn run(_args: Args, _out: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("`tcploop watch` is not available yet")
}
