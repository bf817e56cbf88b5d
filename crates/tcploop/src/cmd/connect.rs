//! `tcploop connect PORT`: the article's reproducer, done right. The engine
//! is [`tcploop::repro::connect`] (plan, tries, proof, hold, release); the
//! output (and its JSON schema) is [`tcploop::report::connect`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tcploop::report::connect::{Live, Style};
use tcploop::report::Format;
use tcploop::repro::{self, ConnectConfig, Ended, Held, Hold, SocketMode};

use super::{catch_interrupts, interrupted};
use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Before the first try the predictor says whether a loop can happen and after how
many tries; a port that cannot loop is refused (exit 1) with the reason and a
port that would work, unless --force. On success the loop is held (Enter, or
--hold) so that `ss -tn` and `lsof` show it, then released with RST so the port
is free at once (--graceful-close leaves it in TIME-WAIT instead).

Exit codes: 0 loop reproduced, 1 not reproduced (refused, or a limit reached),
2 bad usage or input, 3 a real listener answered (only with --force: without
it, a port with a listener is refused before any try, exit 1), 130
interrupted, also while holding the loop.

Examples:
  tcploop sandbox --range 40000-40009 -- tcploop connect 40004   (safe: a few tries)
  tcploop connect 40004 --jobs 2          (default range: about 14,000 tries)
  tcploop 33333                           (the article's example: refused, and why)";

/// Arguments of `tcploop connect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Destination port: a closed port of this host
    #[arg(value_parser = super::parse_port, allow_negative_numbers = true)]
    pub port: u16,
    /// Destination address or name (IPv4, IPv6)
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// One socket, connect() again after each refusal (the article's program; default)
    #[arg(long, conflicts_with = "fresh_socket")]
    pub reuse_socket: bool,
    /// A new socket for every try (the article's pseudo-code)
    #[arg(long)]
    pub fresh_socket: bool,
    /// Parallel workers; all stop at the first hit
    #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Stop after N tries in all (0 = unlimited)
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_tries: u64,
    /// Stop after this long (10s, 2m)
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Hold the loop this long, then release it (default: until Enter on a terminal)
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION", conflicts_with = "no_hold")]
    pub hold: Option<Duration>,
    /// Release the loop at once
    #[arg(long)]
    pub no_hold: bool,
    /// Release with FIN instead of RST: the port then stays blocked in TIME-WAIT
    #[arg(long)]
    pub graceful_close: bool,
    /// Set SO_REUSEADDR on the client socket, as the article's program does
    #[arg(long)]
    pub reuseaddr: bool,
    /// Try even when the predictor says no loop is possible
    #[arg(long)]
    pub force: bool,
    /// No progress output
    #[arg(long, short)]
    pub quiet: bool,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Parse, then resolve: the address, the output, the reproducer's config.
    fn config(&self) -> anyhow::Result<(ConnectConfig, Format, Style)> {
        let resolved = tcploop::host::resolve(&self.host).map_err(anyhow::Error::msg)?;
        let format = Format::json_if(self.json);
        let style = if self.quiet || self.json {
            Style::None
        } else if std::io::stdout().is_terminal() {
            Style::Live
        } else {
            Style::Dots
        };
        let hold = match self.hold {
            _ if self.no_hold => Hold::No,
            Some(d) => Hold::For(d),
            None if !self.json && std::io::stdin().is_terminal() => {
                Hold::UntilLine(Box::new(std::io::stdin()))
            }
            None => Hold::No,
        };
        let repro = repro::Config {
            // the port only: the address is the survey's effective one
            target: SocketAddr::new(resolved.addr, self.port),
            mode: if self.fresh_socket {
                SocketMode::Fresh
            } else {
                SocketMode::Reuse
            },
            jobs: usize::from(self.jobs),
            max_tries: (self.max_tries > 0).then_some(self.max_tries),
            timeout: self.timeout,
            reuseaddr: self.reuseaddr,
            sample_port: style == Style::Live,
        };
        let cfg = ConnectConfig {
            resolved,
            port: self.port,
            force: self.force,
            repro,
            hold,
            rst: !self.graceful_close,
        };
        Ok((cfg, format, style))
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let (cfg, format, style) = args.config()?;
    catch_interrupts();
    let mut live = Live::new(out, format, style, &args.host);
    let ended = repro::connect(cfg, &interrupted, &mut |s| live.step(&s))?;
    Ok(match ended {
        None => Exit::Found,
        Some(Ended::Loop(p)) if p.held == Held::Interrupted && !p.destroyed => Exit::Interrupted,
        Some(Ended::Loop(_)) => Exit::Ok,
        Some(Ended::Listener) => Exit::Listener,
        Some(Ended::TryLimit | Ended::TimeLimit) => Exit::Found,
        Some(Ended::Interrupted) => Exit::Interrupted,
    })
}
