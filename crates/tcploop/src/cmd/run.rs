//! `tcploop run [--log] -- COMMAND ARGS...`: runs a program with the preload
//! guard (`libtcploop_preload.so`) in `LD_PRELOAD`, so that none of its
//! `connect()`s can end up connected to itself; a loop is reset and the
//! program sees `ECONNREFUSED`, as if the loop had not happened. The command
//! replaces tcploop (`exec`), so its exit status, signals and terminal pass
//! through untouched. The engine is [`tcploop::preload::run`] (see
//! [`tcploop::preload`] for what can and cannot be protected); the notes
//! are [`tcploop::report::run`].

use std::ffi::OsString;
use std::io::Write;

use tcploop::preload::{self, RunConfig, RunError};
use tcploop::report::run::{kind, notes};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
The command replaces tcploop (exec): its exit status passes through. LD_PRELOAD
keeps any value it had, after the guard, and is inherited by the command's
children, which are protected too when they are dynamically linked.

What is covered: any dynamically linked program that connects through libc
(C, C++, Python, curl, Java, Node, Ruby, Rust std/tokio). A blocking connect()
that comes back connected to itself fails with ECONNREFUSED; a non-blocking one
reports ECONNREFUSED through getsockopt(SO_ERROR). Either way the loop is reset
(RST) and its port freed at once.

Not covered, and said before the command starts: statically linked programs,
setuid/setgid programs (the loader ignores LD_PRELOAD), Go programs (Go calls
the kernel directly; its net.Dial retries a loop twice, then returns it).
Also not covered: a non-blocking connect whose program never reads SO_ERROR
(e.g. Rust's TcpStream::connect_timeout), and connects made by raw syscall or
io_uring.

The library is found in $TCPLOOP_PRELOAD, else beside the tcploop binary, else
in ../lib from it. `cargo install` installs only the binary: build the library
with `cargo build --release -p tcploop-preload` and copy
target/release/libtcploop_preload.so beside tcploop.

Examples:
  tcploop run -- java -jar app.jar
  tcploop run --log -- python3 healthcheck.py
  tcploop sandbox --range 40000-40009 -- tcploop run --log -- curl -sS http://127.0.0.1:40004/";

/// Arguments of `tcploop run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log each prevented loop to stderr, one line each (sets TCPLOOP_LOG=1)
    #[arg(long)]
    pub log: bool,
    /// Refuse to start (exit 2) when the guard certainly cannot protect the
    /// command (static, setuid, Go, other architecture), instead of warning
    #[arg(long)]
    pub strict: bool,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// Runs the command; returns only on error.
pub fn run(args: Args, _out: &mut dyn Write) -> anyhow::Result<Exit> {
    check_command(&args.command)?;
    let cfg = RunConfig {
        command: args.command,
        env: preload::Env {
            lib: std::env::var_os(preload::ENV_LIB),
            exe: std::env::current_exe().ok(),
            path: std::env::var_os("PATH"),
            ld_preload: std::env::var_os(preload::LD_PRELOAD),
        },
        strict: args.strict,
        log: args.log,
    };
    match preload::run(&cfg, &mut |plan| notes(&mut std::io::stderr().lock(), plan)) {
        RunError::Strict { program, gap } => {
            anyhow::bail!(
                "--strict: not running {}: {}",
                program.display(),
                kind(&gap)
            )
        }
        e => Err(e.into()),
    }
}

/// A usage error for what is no command at all: an empty name, or an
/// option of tcploop's own that landed where the command goes (`run
/// --json -- true`: run has no --json).
fn check_command(command: &[OsString]) -> anyhow::Result<()> {
    let Some(name) = command.first() else {
        anyhow::bail!("no command given: tcploop run [--log] [--strict] -- COMMAND [ARGS]");
    };
    anyhow::ensure!(
        !name.is_empty(),
        "the command name is empty: tcploop run [--log] [--strict] -- COMMAND [ARGS]"
    );
    let text = name.to_string_lossy();
    anyhow::ensure!(
        !text.starts_with('-'),
        "{text:?} is not an option of `tcploop run` (it has --log and --strict) and not a \
         command: tcploop run [--log] [--strict] -- COMMAND [ARGS]"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_is_a_usage_error() {
        let e = |v: &[&str]| {
            let v: Vec<OsString> = v.iter().map(OsString::from).collect();
            check_command(&v).unwrap_err().to_string()
        };
        assert!(e(&["--json", "true"]).contains("not an option of `tcploop run`"));
        assert!(e(&[""]).contains("empty"));
        assert!(e(&[]).contains("no command"));
        assert!(check_command(&[OsString::from("true")]).is_ok());
    }
}
