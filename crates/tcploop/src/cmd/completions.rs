//! `tcploop completions SHELL`: shell completions, or `man` for a man page,
//! generated from the same clap definitions as `--help`.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::Exit;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    /// a roff man page for tcploop(1)
    Man,
}

/// Arguments of `tcploop completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell, or `man`
    #[arg(value_enum)]
    pub target: Target,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    let shell = match args.target {
        Target::Bash => clap_complete::Shell::Bash,
        Target::Zsh => clap_complete::Shell::Zsh,
        Target::Fish => clap_complete::Shell::Fish,
        Target::Elvish => clap_complete::Shell::Elvish,
        Target::Powershell => clap_complete::Shell::PowerShell,
        Target::Man => {
            clap_mangen::Man::new(cmd).render(out)?;
            return Ok(Exit::Ok);
        }
    };
    // clap_complete panics when its writer fails (a full disk, /dev/full):
    // generate in memory, then write, so a write error is an error (exit 2).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tcploop", &mut buf);
    out.write_all(&buf)?;
    Ok(Exit::Ok)
}
