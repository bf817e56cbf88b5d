//! `tcploop completions SHELL`: shell completions, or `man` for man pages,
//! generated from the same clap definitions as `--help`.
//!
//! `man` prints tcploop(1) on stdout; `man --dir DIR` writes tcploop.1 and
//! one page a command into DIR: see [`tcploop::report::completions`].

use std::io::Write;

use tcploop::report::completions;

use crate::exit::Exit;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
    /// roff man pages: tcploop(1) on stdout, or one a command with --dir
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
    pub dir: Option<std::path::PathBuf>,
}

/// Runs the command.
///
/// `cmd` is the whole command line's definition (`Cli::command()`); its
/// `after_help` is the exit-code table the man page prints.
pub fn run(args: Args, mut cmd: clap::Command, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let shell = match args.target {
        Target::Bash => clap_complete::Shell::Bash,
        Target::Zsh => clap_complete::Shell::Zsh,
        Target::Fish => clap_complete::Shell::Fish,
        Target::Elvish => clap_complete::Shell::Elvish,
        Target::Powershell => clap_complete::Shell::PowerShell,
        Target::Man => {
            cmd.build();
            match &args.dir {
                None => completions::man(out, &cmd)?,
                Some(dir) => completions::written(out, &completions::write_pages(dir, &cmd)?)?,
            }
            return Ok(Exit::Ok);
        }
    };
    anyhow::ensure!(args.dir.is_none(), "--dir goes with `man` only");
    completions::script(out, shell, &mut cmd)?;
    Ok(Exit::Ok)
}
