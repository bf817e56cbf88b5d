//! `tcploop completions SHELL`: shell completions, or `man` for man pages,
//! generated from the same clap definitions as `--help`.
//!
//! `man` prints tcploop(1) on stdout: the options, the commands (each with
//! its one-line summary) and the exit status as a table. `man --dir DIR`
//! writes tcploop.1 and one page a command (tcploop-connect.1, ...) into
//! DIR, which tcploop(1) then refers to; each page keeps its command's
//! notes and examples line by line.

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
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    let shell = match args.target {
        Target::Bash => clap_complete::Shell::Bash,
        Target::Zsh => clap_complete::Shell::Zsh,
        Target::Fish => clap_complete::Shell::Fish,
        Target::Elvish => clap_complete::Shell::Elvish,
        Target::Powershell => clap_complete::Shell::PowerShell,
        Target::Man => {
            cmd.build();
            match &args.dir {
                None => out.write_all(&main_page(&cmd, false)?)?,
                Some(dir) => {
                    anyhow::ensure!(
                        !dir.as_os_str().is_empty(),
                        "--dir: an empty path (use . for this directory)"
                    );
                    let mut written = vec![];
                    let mut write = |name: String, page: Vec<u8>| -> anyhow::Result<()> {
                        let path = dir.join(&name);
                        tcploop::safefile::write(&path, &page, 0o644)?;
                        written.push(path);
                        Ok(())
                    };
                    write("tcploop.1".into(), main_page(&cmd, true)?)?;
                    for sub in commands(&cmd) {
                        write(format!("tcploop-{}.1", sub.get_name()), sub_page(sub)?)?;
                    }
                    for p in written {
                        writeln!(out, "{}", p.display())?;
                    }
                }
            }
            return Ok(Exit::Ok);
        }
    };
    anyhow::ensure!(args.dir.is_none(), "--dir goes with `man` only");
    // clap_complete panics when its writer fails (a full disk, /dev/full):
    // generate in memory, then write, so a write error is an error (exit 2).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tcploop", &mut buf);
    out.write_all(&buf)?;
    Ok(Exit::Ok)
}

/// The commands that get a page (not `help`).
fn commands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Text for roff: backslashes and dashes escaped, a leading dot or quote
/// made literal.
fn roff_text(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// Text kept line by line (examples, tables): a no-fill block.
fn verbatim(text: &str) -> String {
    let mut s = String::from(".nf\n");
    for l in text.lines() {
        s.push_str(&roff_text(l));
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
}

/// tcploop(1): title, name, synopsis, description, options, the commands,
/// the exit status. `pages`: the commands refer to their own pages.
fn main_page(cmd: &clap::Command, pages: bool) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    man.render_options_section(&mut w)?;
    let mut s = String::from(".SH COMMANDS\n");
    for sub in commands(cmd) {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        s.push_str(&format!(
            ".TP\n\\fBtcploop {}\\fR\n{}\n",
            roff_text(name),
            roff_text(&about)
        ));
        if pages {
            s.push_str(&format!("See tcploop\\-{}(1).\n", roff_text(name)));
        }
    }
    if !pages {
        s.push_str(
            ".PP\nEach command's options and examples: \\fBtcploop COMMAND \\-\\-help\\fR, or one \\
             page a command written by \\fBtcploop completions man \\-\\-dir DIR\\fR.\n",
        );
    }
    s.push_str(".SH \"EXIT STATUS\"\n");
    s.push_str(&verbatim(
        crate::cli::EXIT_CODES.trim_start_matches("Exit codes:\n"),
    ));
    w.extend_from_slice(s.as_bytes());
    man.render_version_section(&mut w)?;
    Ok(w)
}

/// tcploop-COMMAND(1): its options, then its notes and examples verbatim.
fn sub_page(sub: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(sub.clone());
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    man.render_options_section(&mut w)?;
    if let Some(after) = sub.get_after_help() {
        w.extend_from_slice(b".SH NOTES\n");
        w.extend_from_slice(verbatim(&after.to_string()).as_bytes());
    }
    w.extend_from_slice(b".SH \"SEE ALSO\"\ntcploop(1)\n");
    Ok(w)
}
