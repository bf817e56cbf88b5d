//! The `tcploop` command: parse, run, map errors to exit codes. The engine
//! is the library; this binary owns argv, the terminal and the exit code.

use std::process::ExitCode;

mod cli;
mod cmd;
mod exit;

fn main() -> ExitCode {
    let args = cli::parse();
    match cmd::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            if is_broken_pipe(&e) {
                return exit::Exit::Ok.into();
            }
            // one line, whatever a path or a process name in it holds
            eprintln!(
                "tcploop: error: {}",
                tcploop::report::escape(&format!("{e:#}"))
            );
            exit::Exit::Error.into()
        }
    }
}

/// A closed stdout (`tcploop scan | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
