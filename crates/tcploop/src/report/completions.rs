//! The output of `tcploop completions`: shell completion scripts and man
//! pages, both rendered from the clap definitions that also make `--help`.
//!
//! tcploop(1) has the options, the commands (each with its one-line
//! summary) and the exit status as a table; with pages, one page a command
//! (tcploop-connect.1, ...) keeps that command's notes and examples line by
//! line, and tcploop(1) refers to them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes the completion script for `shell` to `out`.
pub fn script(
    out: &mut dyn Write,
    shell: clap_complete::Shell,
    cmd: &mut clap::Command,
) -> io::Result<()> {
    // clap_complete panics when its writer fails (a full disk, /dev/full):
    // generate in memory, then write, so a write error is an error (exit 2).
    let mut buf = Vec::new();
    clap_complete::generate(shell, cmd, "tcploop", &mut buf);
    out.write_all(&buf)
}

/// Says the pages [`write_pages`] wrote, a path a line (escaped).
pub fn written(out: &mut dyn Write, paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        writeln!(out, "{}", super::escape(&p.display().to_string()))?;
    }
    Ok(())
}

/// Writes tcploop(1) (the commands summarized) to `out`.
pub fn man(out: &mut dyn Write, cmd: &clap::Command) -> io::Result<()> {
    out.write_all(&main_page(cmd, false)?)
}

/// Writes tcploop.1 and one page a command into `dir` (each through
/// [`crate::safefile::write`], mode 0644) and returns the paths written.
pub fn write_pages(dir: &Path, cmd: &clap::Command) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        !dir.as_os_str().is_empty(),
        "--dir: an empty path (use . for this directory)"
    );
    let mut pages = vec![("tcploop.1".to_string(), main_page(cmd, true)?)];
    for sub in commands(cmd) {
        pages.push((format!("tcploop-{}.1", sub.get_name()), sub_page(sub)?));
    }
    let mut written = vec![];
    for (name, page) in pages {
        let path = dir.join(name);
        crate::safefile::write(&path, &page, 0o644)?;
        written.push(path);
    }
    Ok(written)
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
    let codes = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    s.push_str(&verbatim(codes.trim_start_matches("Exit codes:\n")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_text_makes_dashes_backslashes_and_a_leading_dot_literal() {
        assert_eq!(roff_text("--json"), "\\-\\-json");
        assert_eq!(roff_text("a\\b"), "a\\eb");
        assert_eq!(roff_text(".SH not a macro"), "\\&.SH not a macro");
        assert_eq!(roff_text("'quote"), "\\&'quote");
        assert_eq!(
            verbatim("  0  ok\n  2  error"),
            ".nf\n  0  ok\n  2  error\n.fi\n"
        );
    }
}
