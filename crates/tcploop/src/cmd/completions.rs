//! `tcploop completions SHELL`: shell completions, or `man` for man pages,
//! generated from the same clap definitions as `--help`.
//!
//! `man` prints `tcploop(1)`, whose COMMANDS section names one page a
//! command (`tcploop-scan(1)` ...); `man --dir DIR` writes all of them,
//! `tcploop.1` and one `tcploop-COMMAND.1` a command (nested commands too),
//! so that every page it names exists. The files are created new
//! (`O_EXCL`): an existing page is an error, never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
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
    /// roff man pages: tcploop(1), and one page a command with --dir
    Man,
}

/// Arguments of `tcploop completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell, or `man`
    #[arg(value_enum)]
    pub target: Target,
    /// With `man`: write tcploop.1 and one page a command (tcploop-connect.1, ...) into DIR
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    // `tcploop help` is clap's, not a page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    let shell = match args.target {
        Target::Bash => clap_complete::Shell::Bash,
        Target::Zsh => clap_complete::Shell::Zsh,
        Target::Fish => clap_complete::Shell::Fish,
        Target::Elvish => clap_complete::Shell::Elvish,
        Target::Powershell => clap_complete::Shell::PowerShell,
        Target::Man => {
            match &args.dir {
                None => clap_mangen::Man::new(cmd).render(out)?,
                Some(dir) => {
                    cmd.build();
                    let mut written = vec![];
                    write_pages(&cmd, dir, &mut written)?;
                    for p in written {
                        writeln!(out, "{}", p.display())?;
                    }
                }
            }
            return Ok(Exit::Ok);
        }
    };
    anyhow::ensure!(args.dir.is_none(), "--dir goes with `man` only");
    clap_complete::generate(shell, &mut cmd, "tcploop", out);
    Ok(Exit::Ok)
}

/// Writes the page of `cmd` and of each visible subcommand, recursively.
/// `cmd` must be built (`Command::build`), so subcommands carry their full
/// names (`tcploop-scan`).
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    man.render(&mut f)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
