//! One module a command: its clap arguments, their validation into a config,
//! the call into the library, and the rendering of the result.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cli::{Cli, Command};
use crate::exit::Exit;

pub mod audit;
pub mod check;
pub mod completions;
pub mod connect;
pub mod demo;
pub mod doctor;
pub mod free_port;
pub mod kill;
pub mod ports;
pub mod run;
pub mod sandbox;
pub mod scan;
pub mod watch;

/// Runs the chosen command.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match cli.command {
        Command::Connect(a) => connect::run(a, &mut out),
        Command::Ports(a) => ports::run(a, &mut out),
        Command::Check(a) => check::run(a, &mut out),
        Command::Scan(a) => scan::run(a, &mut out),
        Command::Kill(a) => kill::run(a, &mut out),
        Command::Demo(a) => demo::run(a, &mut out),
        Command::Doctor(a) => doctor::run(a, &mut out),
        Command::Audit(a) => audit::run(a, &mut out),
        Command::Watch(a) => watch::run(a, &mut out),
        Command::FreePort(a) => free_port::run(a, &mut out),
        Command::Run(a) => run::run(a, &mut out),
        Command::Sandbox(a) => sandbox::run(a),
        Command::Completions(a) => completions::run(a, &mut out),
    }?;
    out.flush()?;
    Ok(code)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C / SIGTERM handler (a thread: call it only after any
/// namespace has been entered). Later calls do nothing.
pub fn catch_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    });
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h30m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(std::time::Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{t:?} is not a duration ({e}); try 10s, 500ms or 2m"))
}

/// Parses a port for clap.
pub fn parse_port(s: &str) -> Result<u16, String> {
    tcploop::ports::parse_port(s)
}
