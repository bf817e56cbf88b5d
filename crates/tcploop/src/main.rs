//! The `tcploop` command: parse, run, map errors to exit codes. The engine
//! is the library; this binary owns argv, the terminal and the exit code.

use std::process::ExitCode;

mod cli;
mod cmd;
mod exit;

fn main() -> ExitCode {
    let args = cli::parse();
    match cli::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            if is_broken_pipe(&e) {
                return exit::Exit::Ok.into();
            }
            // one line, whatever a path or a process name in it holds
            eprintln!("tcploop: error: {}", tcploop::report::escape(&one_line(&e)));
            exit::Exit::Error.into()
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, but without
/// a cause whose text the line already holds (an error that names its source
/// in its own message would otherwise say it twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A closed stdout (`tcploop scan | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot run /x: {0}")]
    struct Spawn(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(Spawn(io)).context("trace");
        assert_eq!(
            one_line(&e),
            "trace: cannot run /x: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }
}
