//! `tcploop ports`: this network namespace's ephemeral-port facts. The
//! engine is [`tcploop::survey::ports_view`]; the output (and its JSON
//! schema) is [`tcploop::report::ports`].

use std::io::Write;

use anyhow::Context;
use tcploop::report::{self, Format};
use tcploop::survey;

use crate::exit::Exit;

/// Arguments of `tcploop ports`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let view = survey::ports_view().context("reading the ephemeral-port facts")?;
    report::ports::render(out, Format::json_if(args.json), &view)?;
    Ok(Exit::Ok)
}
