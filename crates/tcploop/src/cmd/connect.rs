//! `tcploop connect PORT`: the article's reproducer, done right.
//!
//! JSON Lines: a `check` line (the predictor's verdict, as `tcploop check`),
//! then one `result` line, data
//! `{"outcome": "self-connect"|"listener"|"gave-up"|"refused"|"interrupted",
//!   "tries": n, "elapsed_s": x, "tries_per_s": x, "local": "127.0.0.1:40004"|null,
//!   "peer": "127.0.0.1:40004"|null, "echo": bool|null, "port_stolen": bool|null,
//!   "released": "rst"|"graceful"|null, "destroyed_while_held": bool, "suggested_port": n|null}`
//!   (`released` is null, and `destroyed_while_held` true, when another process destroyed the
//!   loop while it was held: there was nothing left to release).

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use socket2::Socket;
use tcploop::predict::{self, Client, Verdict};
use tcploop::report;
use tcploop::repro::{self, Config, Outcome, Progress, SocketMode};
use tcploop::survey::Survey;

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

/// The `result` line.
#[derive(Debug, Serialize, Default)]
pub struct ResultLine {
    pub outcome: &'static str,
    pub tries: u64,
    pub elapsed_s: f64,
    pub tries_per_s: f64,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub echo: Option<bool>,
    pub port_stolen: Option<bool>,
    pub released: Option<&'static str>,
    pub destroyed_while_held: bool,
    pub suggested_port: Option<u16>,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let resolved = tcploop::host::resolve(&args.host).map_err(anyhow::Error::msg)?;
    let survey = Survey::take().context("reading the ephemeral-port facts")?;
    let host = survey.host(resolved.addr, resolved.scope_id);
    let target = match host.effective {
        std::net::IpAddr::V6(v6) => SocketAddr::V6(std::net::SocketAddrV6::new(
            v6,
            args.port,
            0,
            resolved.scope_id,
        )),
        v4 => SocketAddr::new(v4, args.port),
    };
    let sit = survey.situation(&host, Client::Connect);
    let pred = predict::predict(&sit, args.port);
    let human = !args.json;
    if human {
        super::check::note_resolution(out, &args.host, &resolved)?;
        let tries = pred
            .expected_tries
            .map(|t| {
                format!(
                    ", expect about {} tries",
                    report::thousands(t.round() as u64)
                )
            })
            .unwrap_or_default();
        writeln!(out, "{}: {}{tries}", report::addr(target), pred.verdict)?;
        for r in &pred.reasons {
            writeln!(out, "  - {r}")?;
        }
    } else {
        report::json_line(
            out,
            "check",
            &super::check::CheckLine {
                host: host.addr.to_string(),
                port: args.port,
                verdict: pred.verdict.as_str(),
                reasons: &pred.reasons,
                expected_tries: pred.expected_tries,
                holders: vec![],
                when_down: None,
            },
        )?;
    }
    if matches!(pred.verdict, Verdict::Impossible | Verdict::Listening) && !args.force {
        let suggestion = if host.source_is_destination() {
            predict::suggest(&sit, args.port)
        } else {
            None
        };
        if human {
            write!(out, "Not trying: no loop can happen on port {}.", args.port)?;
            if let Some(s) = suggestion {
                write!(out, " Port {s} can: tcploop connect {s}")?;
                if host.effective != std::net::IpAddr::from([127, 0, 0, 1]) {
                    write!(out, " --host {}", host.addr)?;
                }
                write!(out, ".")?;
            }
            writeln!(out, " (--force tries anyway)")?;
        } else {
            report::json_line(
                out,
                "result",
                &ResultLine {
                    outcome: "refused",
                    suggested_port: suggestion,
                    ..ResultLine::default()
                },
            )?;
        }
        return Ok(Exit::Found);
    }
    if !host.source_is_destination() && human {
        writeln!(
            out,
            "warning: {} is not a local address of this namespace: no loop is possible there",
            host.addr
        )?;
    }

    let cfg = Config {
        target,
        mode: if args.fresh_socket {
            SocketMode::Fresh
        } else {
            SocketMode::Reuse
        },
        jobs: usize::from(args.jobs),
        max_tries: (args.max_tries > 0).then_some(args.max_tries),
        timeout: args.timeout,
        reuseaddr: args.reuseaddr,
        sample_port: false,
    };
    super::catch_interrupts();
    let progress = Progress::default();
    let style = if args.quiet || args.json {
        Style::None
    } else if std::io::stdout().is_terminal() {
        Style::Live
    } else {
        Style::Dots
    };
    let cfg = Config {
        sample_port: style == Style::Live,
        ..cfg
    };
    if style != Style::None {
        write!(out, "Trying to connect...")?;
        out.flush()?;
    }
    let report = std::thread::scope(|s| -> anyhow::Result<repro::Report> {
        let h = s.spawn(|| repro::run(&cfg, &progress));
        show_progress(&progress, cfg.max_tries, style, out, &h)?;
        Ok(h.join().expect("reproducer thread")?)
    })?;
    let base = ResultLine {
        tries: report.tries,
        elapsed_s: report.elapsed.as_secs_f64(),
        tries_per_s: report.rate(),
        local: report.local.map(report::addr),
        peer: report.peer.map(report::addr),
        ..ResultLine::default()
    };
    let summary = format!(
        "in {} ({} tries/s)",
        report::duration(report.elapsed),
        report::thousands(report.rate().round() as u64)
    );
    let connected = format!(
        "Connected after {}\n  local {}  peer {}  {summary}",
        report::count(report.tries, "try", "tries"),
        base.local.as_deref().unwrap_or("?"),
        base.peer.as_deref().unwrap_or("?")
    );
    match report.outcome {
        Outcome::SelfConnect(sock) => {
            let echo = echo_back(&sock);
            let stolen = port_stolen(target);
            if human {
                writeln!(out, "{connected}")?;
                writeln!(
                    out,
                    "  SELF-CONNECT: the socket is connected to itself (TCP simultaneous open)."
                )?;
                if echo {
                    writeln!(
                        out,
                        "  It wrote \"tcploop\" and read the same bytes back from itself."
                    )?;
                }
                if stolen {
                    writeln!(
                        out,
                        "  Port {} is stolen: a server binding {} now gets EADDRINUSE.",
                        target.port(),
                        report::addr(target)
                    )?;
                }
            }
            let how = hold(&args, out, target.port(), &sock)?;
            let rst = !args.graceful_close;
            let destroyed = how == Held::Destroyed || !repro::still_connected(&sock);
            repro::release(sock, rst);
            if human && destroyed {
                writeln!(
                    out,
                    "The loop was destroyed while held, by another process (tcploop kill, ss -K): \
                     its socket got ECONNABORTED; nothing left to release."
                )?;
            } else if human {
                if rst {
                    writeln!(
                        out,
                        "Released with RST: port {} is free again.",
                        target.port()
                    )?;
                } else {
                    writeln!(
                        out,
                        "Closed gracefully: {0} <-> {0} stays in TIME-WAIT for 60 s, on loopback too: \
                         a server binding {0} gets EADDRINUSE until then, even with SO_REUSEADDR.",
                        report::addr(target)
                    )?;
                }
                if how == Held::Interrupted {
                    writeln!(out, "(interrupted while holding)")?;
                }
            } else {
                report::json_line(
                    out,
                    "result",
                    &ResultLine {
                        outcome: "self-connect",
                        echo: Some(echo),
                        port_stolen: Some(stolen),
                        released: if destroyed {
                            None
                        } else {
                            Some(if rst { "rst" } else { "graceful" })
                        },
                        destroyed_while_held: destroyed,
                        ..base
                    },
                )?;
            }
            Ok(if how == Held::Interrupted {
                Exit::Interrupted
            } else {
                Exit::Ok
            })
        }
        Outcome::Listener(sock) => {
            repro::release(sock, true);
            if human {
                writeln!(out, "{connected}")?;
                writeln!(
                    out,
                    "  Not a loop: a real listener answered on {}.",
                    report::addr(target)
                )?;
            } else {
                report::json_line(
                    out,
                    "result",
                    &ResultLine {
                        outcome: "listener",
                        ..base
                    },
                )?;
            }
            Ok(Exit::Listener)
        }
        Outcome::MaxTries | Outcome::Timeout => {
            let why = if matches!(report.outcome, Outcome::MaxTries) {
                "the try limit (--max-tries)"
            } else {
                "the time limit (--timeout)"
            };
            if human {
                writeln!(
                    out,
                    "Gave up after {} {summary}: {why} was reached without a loop.",
                    report::count(report.tries, "try", "tries")
                )?;
            } else {
                report::json_line(
                    out,
                    "result",
                    &ResultLine {
                        outcome: "gave-up",
                        ..base
                    },
                )?;
            }
            Ok(Exit::Found)
        }
        Outcome::Interrupted => {
            if human {
                writeln!(
                    out,
                    "Interrupted after {} {summary}.",
                    report::count(report.tries, "try", "tries")
                )?;
            } else {
                report::json_line(
                    out,
                    "result",
                    &ResultLine {
                        outcome: "interrupted",
                        ..base
                    },
                )?;
            }
            Ok(Exit::Interrupted)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    None,
    Live,
    Dots,
}

fn show_progress<T>(
    p: &Progress,
    max_tries: Option<u64>,
    style: Style,
    out: &mut dyn Write,
    worker: &std::thread::ScopedJoinHandle<'_, T>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let bar = (style == Style::Live).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("static template"),
        );
        b
    });
    let mut dots = 0u64;
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if super::interrupted() {
            p.stop();
        }
        let n = p.tries().min(max_tries.unwrap_or(u64::MAX));
        match style {
            Style::Live => {
                let secs = start.elapsed().as_secs_f64();
                let port = match p.last_port() {
                    0 => String::new(),
                    port => format!(", last source port {port}"),
                };
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "{} tries, {} tries/s, {:.1} s{port}",
                        report::thousands(n),
                        report::thousands((n as f64 / secs.max(1e-9)).round() as u64),
                        secs
                    ));
                    b.tick();
                }
            }
            Style::Dots => {
                while dots < n / 1000 {
                    out.write_all(b".")?;
                    dots += 1;
                }
                out.flush()?;
            }
            Style::None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// Writes a few bytes and reads them back: on a loop, the socket receives
/// what it sent.
fn echo_back(sock: &Socket) -> bool {
    let msg = b"tcploop";
    let mut s: &Socket = sock;
    if s.write_all(msg).is_err() {
        return false;
    }
    let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    let ok = s.read_exact(&mut buf).is_ok() && &buf == msg;
    let _ = sock.set_read_timeout(None);
    ok
}

/// Whether a server could bind the port now (SO_REUSEADDR, as servers do):
/// the one bind probe.
fn port_stolen(target: SocketAddr) -> bool {
    matches!(tcploop::doctor::can_bind(target, true), Ok(false))
}

#[derive(Debug, PartialEq, Eq)]
enum Held {
    No,
    Done,
    Interrupted,
    /// Someone else destroyed the loop while it was held.
    Destroyed,
}

fn hold(args: &Args, out: &mut dyn Write, port: u16, sock: &Socket) -> anyhow::Result<Held> {
    if args.no_hold {
        return Ok(Held::No);
    }
    let human = !args.json;
    let hint = format!("(`ss -tnp 'sport = :{port}'` or `lsof -i :{port}` show it now)");
    if let Some(d) = args.hold {
        if human {
            writeln!(
                out,
                "Holding the loop for {} {hint}...",
                report::duration(d)
            )?;
            out.flush()?;
        }
        let end = Instant::now() + d;
        while Instant::now() < end {
            if super::interrupted() {
                return Ok(Held::Interrupted);
            }
            if !repro::still_connected(sock) {
                return Ok(Held::Destroyed);
            }
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
        return Ok(Held::Done);
    }
    if human && std::io::stdin().is_terminal() {
        writeln!(out, "{hint}")?;
        writeln!(out, "Press Enter to Continue...")?;
        out.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        // A reader thread, so that Ctrl-C still ends the wait.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(Held::Done);
            }
            if super::interrupted() {
                return Ok(Held::Interrupted);
            }
            if !repro::still_connected(sock) {
                return Ok(Held::Destroyed);
            }
        }
    }
    Ok(Held::No)
}
