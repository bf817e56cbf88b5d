//! `tcploop connect`'s output.
//!
//! JSON Lines: a `check` line (the predictor's verdict, as `tcploop check`,
//! [`super::check::CheckLine`]), then one `result` line, data
//! `{"outcome": "self-connect"|"listener"|"gave-up"|"refused"|"interrupted",
//!   "tries": n, "elapsed_s": x, "tries_per_s": x, "local": "127.0.0.1:40004"|null,
//!   "peer": "127.0.0.1:40004"|null, "echo": bool|null, "port_stolen": bool|null,
//!   "released": "rst"|"graceful"|null, "destroyed_while_held": bool, "suggested_port": n|null}`
//!   (`released` is null, and `destroyed_while_held` true, when another process destroyed the
//!   loop while it was held: there was nothing left to release).

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{addr, count, duration, thousands, Format};
use crate::host::Host;
use crate::predict::Prediction;
use crate::repro::{Ended, Held, Progress, Proof, Report, Step};

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

/// The verdict before the first try: `127.0.0.1:40004: possible, expect
/// about 5 tries` and the reasons, or a `check` line.
pub fn verdict(
    out: &mut dyn Write,
    format: Format,
    host: &Host,
    target: SocketAddr,
    p: &Prediction,
) -> io::Result<()> {
    if format == Format::Json {
        return super::check::prediction(out, format, host, p);
    }
    let tries = p
        .expected_tries
        .map(|t| format!(", expect about {} tries", thousands(t.round() as u64)))
        .unwrap_or_default();
    writeln!(out, "{}: {}{tries}", addr(target), p.verdict)?;
    super::check::reasons(out, p)
}

/// Not trying: the port cannot loop (`suggestion`: a port that can).
pub fn refused(
    out: &mut dyn Write,
    format: Format,
    host: &Host,
    port: u16,
    suggestion: Option<u16>,
) -> io::Result<()> {
    if format == Format::Json {
        return super::json_line(
            out,
            "result",
            &ResultLine {
                outcome: "refused",
                suggested_port: suggestion,
                ..ResultLine::default()
            },
        );
    }
    write!(out, "Not trying: no loop can happen on port {port}.")?;
    if let Some(s) = suggestion {
        write!(out, " Port {s} can: tcploop connect {s}")?;
        if host.effective != IpAddr::from([127, 0, 0, 1]) {
            write!(out, " --host {}", host.addr)?;
        }
        write!(out, ".")?;
    }
    writeln!(out, " (--force tries anyway)")
}

/// The warning that the destination is not an address of this namespace.
pub fn not_local(out: &mut dyn Write, format: Format, host: &Host) -> io::Result<()> {
    if format == Format::Json {
        return Ok(());
    }
    writeln!(
        out,
        "warning: {} is not a local address of this namespace: no loop is possible there",
        host.addr
    )
}

/// How progress is shown while the reproducer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Nothing (`--quiet`, `--json`).
    None,
    /// A live spinner line with the tries, the rate and the last source
    /// port (a terminal).
    Live,
    /// A dot every 1,000 tries (a pipe or a file).
    Dots,
}

/// The progress display: `Trying to connect...`, then a spinner or dots.
#[derive(Debug)]
pub struct Ticker {
    style: Style,
    max_tries: Option<u64>,
    start: Instant,
    dots: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Ticker {
    /// Starts the display.
    pub fn start(out: &mut dyn Write, style: Style, max_tries: Option<u64>) -> io::Result<Ticker> {
        if style != Style::None {
            write!(out, "Trying to connect...")?;
            out.flush()?;
        }
        let bar = (style == Style::Live).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .expect("static template"),
            );
            b
        });
        Ok(Ticker {
            style,
            max_tries,
            start: Instant::now(),
            dots: 0,
            bar,
        })
    }

    /// Shows the counters now.
    pub fn tick(&mut self, out: &mut dyn Write, p: &Progress) -> io::Result<()> {
        let n = p.tries().min(self.max_tries.unwrap_or(u64::MAX));
        match self.style {
            Style::Live => {
                let secs = self.start.elapsed().as_secs_f64();
                let port = match p.last_port() {
                    0 => String::new(),
                    port => format!(", last source port {port}"),
                };
                if let Some(b) = &self.bar {
                    b.set_message(format!(
                        "{} tries, {} tries/s, {:.1} s{port}",
                        thousands(n),
                        thousands((n as f64 / secs.max(1e-9)).round() as u64),
                        secs
                    ));
                    b.tick();
                }
            }
            Style::Dots => {
                while self.dots < n / 1000 {
                    out.write_all(b".")?;
                    self.dots += 1;
                }
                out.flush()?;
            }
            Style::None => {}
        }
        Ok(())
    }

    /// Clears the spinner.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// The renderer of [`crate::repro::connect`]'s steps: the verdict, the
/// progress display, the proof and the result, as they come.
#[allow(missing_debug_implementations)] // a `dyn Write` has no Debug
pub struct Live<'a> {
    out: &'a mut dyn Write,
    format: Format,
    style: Style,
    given: &'a str,
    ticker: Option<Ticker>,
}

impl<'a> Live<'a> {
    /// To `out`; `given`: the destination as the user wrote it.
    pub fn new(out: &'a mut dyn Write, format: Format, style: Style, given: &'a str) -> Live<'a> {
        Live {
            out,
            format,
            style,
            given,
            ticker: None,
        }
    }

    /// Renders one step.
    pub fn step(&mut self, s: &Step<'_>) -> io::Result<()> {
        let (out, format) = (&mut *self.out, self.format);
        match s {
            Step::Resolved(r) => super::check::resolution(out, format, self.given, r),
            Step::Planned(p) => verdict(out, format, &p.host, p.target, &p.prediction),
            Step::Refused(p) => refused(out, format, &p.host, p.target.port(), p.suggestion),
            Step::NotLocal(p) => not_local(out, format, &p.host),
            Step::Trying { max_tries } => {
                self.ticker = Some(Ticker::start(out, self.style, *max_tries)?);
                Ok(())
            }
            Step::Tick(p) => match &mut self.ticker {
                Some(t) => t.tick(out, p),
                None => Ok(()),
            },
            Step::Tried => {
                if let Some(t) = self.ticker.take() {
                    t.finish();
                }
                Ok(())
            }
            Step::Proved {
                report,
                target,
                proof,
                hold,
            } => proved(out, format, report, *target, proof, *hold),
            Step::Ended {
                report,
                target,
                ended,
                rst,
            } => result(out, format, report, *target, *ended, *rst),
        }
    }
}

fn base(r: &Report) -> ResultLine {
    ResultLine {
        tries: r.tries,
        elapsed_s: r.elapsed.as_secs_f64(),
        tries_per_s: r.rate(),
        local: r.local.map(addr),
        peer: r.peer.map(addr),
        ..ResultLine::default()
    }
}

fn summary(r: &Report) -> String {
    format!(
        "in {} ({} tries/s)",
        duration(r.elapsed),
        thousands(r.rate().round() as u64)
    )
}

/// A loop was found: what it proved so far, before the hold (human output
/// only; `hold`: how long it will be held, `None` for until Enter, when
/// it is held at all).
pub fn proved(
    out: &mut dyn Write,
    format: Format,
    r: &Report,
    target: SocketAddr,
    proof: &Proof,
    hold: Option<Option<Duration>>,
) -> io::Result<()> {
    if format == Format::Json {
        return Ok(());
    }
    connected(out, r)?;
    writeln!(
        out,
        "  SELF-CONNECT: the socket is connected to itself (TCP simultaneous open)."
    )?;
    if proof.echo {
        writeln!(
            out,
            "  It wrote \"tcploop\" and read the same bytes back from itself."
        )?;
    }
    if proof.stolen {
        writeln!(
            out,
            "  Port {} is stolen: a server binding {} now gets EADDRINUSE.",
            target.port(),
            addr(target)
        )?;
    }
    let port = target.port();
    let hint = format!("(`ss -tnp 'sport = :{port}'` or `lsof -i :{port}` show it now)");
    match hold {
        Some(Some(d)) => writeln!(out, "Holding the loop for {} {hint}...", duration(d))?,
        Some(None) => {
            writeln!(out, "{hint}")?;
            writeln!(out, "Press Enter to Continue...")?;
        }
        None => {}
    }
    out.flush()
}

fn connected(out: &mut dyn Write, r: &Report) -> io::Result<()> {
    let b = base(r);
    writeln!(
        out,
        "Connected after {}\n  local {}  peer {}  {}",
        count(r.tries, "try", "tries"),
        b.local.as_deref().unwrap_or("?"),
        b.peer.as_deref().unwrap_or("?"),
        summary(r)
    )
}

/// How the run ended, after any hold and release: the last human lines or
/// the `result` line (`rst`: the loop was released with RST).
pub fn result(
    out: &mut dyn Write,
    format: Format,
    r: &Report,
    target: SocketAddr,
    ended: Ended,
    rst: bool,
) -> io::Result<()> {
    let proof = match ended {
        Ended::Loop(p) => Some(p),
        _ => None,
    };
    if format == Format::Json {
        let outcome = match ended {
            Ended::Loop(_) => "self-connect",
            Ended::Listener => "listener",
            Ended::TryLimit | Ended::TimeLimit => "gave-up",
            Ended::Interrupted => "interrupted",
        };
        return super::json_line(
            out,
            "result",
            &ResultLine {
                outcome,
                echo: proof.map(|p| p.echo),
                port_stolen: proof.map(|p| p.stolen),
                released: proof
                    .and_then(|p| (!p.destroyed).then_some(if rst { "rst" } else { "graceful" })),
                destroyed_while_held: proof.is_some_and(|p| p.destroyed),
                ..base(r)
            },
        );
    }
    match ended {
        Ended::Loop(p) => out.write_all(released(target, &p, rst).as_bytes()),
        Ended::Listener => {
            connected(out, r)?;
            writeln!(
                out,
                "  Not a loop: a real listener answered on {}.",
                addr(target)
            )
        }
        Ended::TryLimit | Ended::TimeLimit => {
            let why = if ended == Ended::TryLimit {
                "the try limit (--max-tries)"
            } else {
                "the time limit (--timeout)"
            };
            writeln!(
                out,
                "Gave up after {} {}: {why} was reached without a loop.",
                count(r.tries, "try", "tries"),
                summary(r)
            )
        }
        Ended::Interrupted => writeln!(
            out,
            "Interrupted after {} {}.",
            count(r.tries, "try", "tries"),
            summary(r)
        ),
    }
}

fn released(target: SocketAddr, p: &Proof, rst: bool) -> String {
    let mut s = if p.destroyed {
        "The loop was destroyed while held, by another process (tcploop kill, ss -K): \
         its socket got ECONNABORTED; nothing left to release.\n"
            .to_string()
    } else if rst {
        format!("Released with RST: port {} is free again.\n", target.port())
    } else {
        format!(
            "Closed gracefully: {0} <-> {0} stays in TIME-WAIT for 60 s, on loopback too: \
             a server binding {0} gets EADDRINUSE until then, even with SO_REUSEADDR.\n",
            addr(target)
        )
    };
    if !p.destroyed && p.held == Held::Interrupted {
        s.push_str("(interrupted while holding)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repro::Outcome;

    fn report() -> Report {
        Report {
            outcome: Outcome::MaxTries,
            tries: 12345,
            elapsed: Duration::from_millis(1520),
            local: Some("127.0.0.1:40004".parse().unwrap()),
            peer: Some("127.0.0.1:40004".parse().unwrap()),
        }
    }

    fn proof(destroyed: bool, held: Held) -> Proof {
        Proof {
            echo: true,
            stolen: true,
            held,
            destroyed,
            freed: true,
        }
    }

    fn text(ended: Ended, rst: bool) -> String {
        let mut v = vec![];
        let target = "127.0.0.1:40004".parse().unwrap();
        result(&mut v, Format::Human, &report(), target, ended, rst).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn human_output_of_each_ending() {
        assert_eq!(
            text(Ended::Loop(proof(false, Held::Done)), true),
            "Released with RST: port 40004 is free again.\n"
        );
        assert!(
            text(Ended::Loop(proof(false, Held::Done)), false).starts_with(
                "Closed gracefully: 127.0.0.1:40004 <-> 127.0.0.1:40004 stays in TIME-WAIT"
            )
        );
        assert_eq!(
            text(Ended::Loop(proof(false, Held::Interrupted)), true),
            "Released with RST: port 40004 is free again.\n(interrupted while holding)\n"
        );
        assert!(text(Ended::Loop(proof(true, Held::Destroyed)), true)
            .starts_with("The loop was destroyed while held"));
        assert_eq!(
            text(Ended::TryLimit, true),
            "Gave up after 12,345 tries in 1.52 s (8,122 tries/s): the try limit (--max-tries) \
             was reached without a loop.\n"
        );
        assert_eq!(
            text(Ended::Listener, true),
            "Connected after 12,345 tries\n  local 127.0.0.1:40004  peer 127.0.0.1:40004  \
             in 1.52 s (8,122 tries/s)\n  Not a loop: a real listener answered on 127.0.0.1:40004.\n"
        );
    }

    #[test]
    fn json_result_line_of_a_loop_and_of_a_destroyed_one() {
        let target = "127.0.0.1:40004".parse().unwrap();
        let line = |ended, rst| {
            let mut v = vec![];
            result(&mut v, Format::Json, &report(), target, ended, rst).unwrap();
            serde_json::from_slice::<serde_json::Value>(&v).unwrap()
        };
        let l = line(Ended::Loop(proof(false, Held::Done)), false);
        assert_eq!(l["type"], "result");
        let d = &l["data"];
        assert_eq!(d["outcome"], "self-connect");
        assert_eq!(d["released"], "graceful");
        assert_eq!(d["echo"], true);
        assert_eq!(d["port_stolen"], true);
        assert_eq!(d["destroyed_while_held"], false);
        assert_eq!(d["tries"], 12345);
        let l = line(Ended::Loop(proof(true, Held::Destroyed)), true);
        assert_eq!(l["data"]["released"], serde_json::Value::Null);
        assert_eq!(l["data"]["destroyed_while_held"], true);
        let l = line(Ended::TimeLimit, true);
        assert_eq!(l["data"]["outcome"], "gave-up");
        assert_eq!(l["data"]["echo"], serde_json::Value::Null);
    }

    #[test]
    fn live_renders_the_steps_in_order() {
        let target = "127.0.0.1:40004".parse().unwrap();
        let (r, progress) = (report(), Progress::default());
        let mut v = vec![];
        let mut live = Live::new(&mut v, Format::Human, Style::Dots, "127.0.0.1");
        for s in [
            Step::Trying {
                max_tries: Some(12345),
            },
            Step::Tick(&progress),
            Step::Tried,
            Step::Ended {
                report: &r,
                target,
                ended: Ended::TryLimit,
                rst: true,
            },
        ] {
            live.step(&s).unwrap();
        }
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "Trying to connect...Gave up after 12,345 tries in 1.52 s (8,122 tries/s): the try \
             limit (--max-tries) was reached without a loop.\n"
        );
        let mut v = vec![];
        let mut live = Live::new(&mut v, Format::Json, Style::None, "127.0.0.1");
        live.step(&Step::Trying { max_tries: None }).unwrap();
        live.step(&Step::Tried).unwrap();
        assert!(v.is_empty());
    }
}
