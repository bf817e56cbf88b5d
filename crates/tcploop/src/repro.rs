//! The reproducer: the article's program, done right.
//!
//! A client `connect()`s to host:port again and again while nothing listens
//! there; each refusal (ECONNREFUSED) costs a few microseconds on loopback.
//! When the kernel picks the destination port as the source port, the SYN
//! reaches the sending socket itself (simultaneous open) and `connect()`
//! succeeds: the socket is connected to itself.
//!
//! Two ways to try, as in the article: [`SocketMode::Reuse`] keeps one socket
//! and calls `connect()` on it again after each refusal (the article's C
//! program; Linux allows it), [`SocketMode::Fresh`] makes a new socket per
//! try (the article's pseudo-code, and what most high-level clients do).
//! Several workers may run at once; all stop at the first success.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sys::diag::bind_probe;

/// One socket for every try, or a new one per try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// One socket, `connect()` again after each refusal.
    Reuse,
    /// A fresh socket for every try.
    Fresh,
}

/// What to reproduce.
#[derive(Debug, Clone)]
pub struct Config {
    /// The destination.
    pub target: SocketAddr,
    /// Socket reuse.
    pub mode: SocketMode,
    /// Parallel workers (at least 1).
    pub jobs: usize,
    /// Stop after this many tries in all (None: unlimited).
    pub max_tries: Option<u64>,
    /// Stop after this long (None: unlimited).
    pub timeout: Option<Duration>,
    /// Set SO_REUSEADDR on the client socket, as the article's program does.
    /// Off by default, as in most clients: then a looped port cannot be
    /// bound by a server even with SO_REUSEADDR.
    pub reuseaddr: bool,
    /// Sample the source port for [`Progress::last_port`] (a live display
    /// wants it; costs a few system calls every `CHECK_EVERY` (64) tries).
    pub sample_port: bool,
}

/// Live counters, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    tries: AtomicU64,
    last_port: AtomicU32,
    stop: AtomicBool,
}

impl Progress {
    /// Tries so far, all workers together (each worker counts a try just
    /// before it makes it, so this may run ahead of a try limit by the
    /// number of workers; [`Report::tries`] is exact).
    pub fn tries(&self) -> u64 {
        self.tries.load(Ordering::Relaxed)
    }
    /// The last source port seen (0: none yet). Refused tries are reset
    /// before their port can be read, so this is sampled.
    pub fn last_port(&self) -> u16 {
        self.last_port.load(Ordering::Relaxed) as u16
    }
    /// Asks every worker to stop (Ctrl-C).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed)
    }
    /// Whether a stop was asked for.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// `connect()` succeeded with local == peer: the socket is returned,
    /// still connected to itself.
    SelfConnect(Socket),
    /// `connect()` succeeded to something else: a real listener answered.
    Listener(Socket),
    /// The try limit was reached.
    MaxTries,
    /// The time limit was reached.
    Timeout,
    /// [`Progress::stop`] was called.
    Interrupted,
}

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Tries made, all workers together (the successful one included).
    pub tries: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Local address of the connected socket.
    pub local: Option<SocketAddr>,
    /// Peer address of the connected socket.
    pub peer: Option<SocketAddr>,
}

impl Report {
    /// Tries per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.tries as f64 / s
        } else {
            0.0
        }
    }
}

/// A failure that is not a refusal: the target cannot be reached at all.
#[derive(Debug, thiserror::Error)]
#[error("connect to {target}")]
pub struct ReproError {
    /// The destination.
    pub target: SocketAddr,
    /// What connect() said.
    #[source]
    pub source: io::Error,
}

enum Stop {
    Found(Socket),
    Limit,
    Timeout,
    Interrupted,
}

/// [`run`] on a worker thread while `on_tick` is called on this one about
/// every 50 ms with the live counters (a progress display; it may call
/// [`Progress::stop`], on Ctrl-C say), and once more at the end.
pub fn run_watched(
    cfg: &Config,
    progress: &Progress,
    on_tick: &mut dyn FnMut(&Progress) -> io::Result<()>,
) -> io::Result<Result<Report, ReproError>> {
    std::thread::scope(|s| {
        let h = s.spawn(|| run(cfg, progress));
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if let Err(e) = on_tick(progress) {
                progress.stop();
                let _ = h.join();
                return Err(e);
            }
        }
        Ok(h.join().expect("reproducer thread"))
    })
}

/// Runs the reproducer until a connect succeeds or a limit is reached.
pub fn run(cfg: &Config, progress: &Progress) -> Result<Report, ReproError> {
    let start = Instant::now();
    let deadline = cfg.timeout.map(|t| start + t);
    let winner: Mutex<Option<Stop>> = Mutex::new(None);
    let error: Mutex<Option<io::Error>> = Mutex::new(None);
    let jobs = cfg.jobs.max(1);
    std::thread::scope(|s| {
        for w in 0..jobs {
            let (winner, error) = (&winner, &error);
            s.spawn(move || {
                let r = worker(cfg, progress, deadline, w == 0 && cfg.sample_port);
                match r {
                    Ok(Some(stop)) => {
                        let mut slot = winner.lock().unwrap_or_else(|e| e.into_inner());
                        // the first found socket wins; a later one is dropped (RST below)
                        match (&*slot, &stop) {
                            (Some(Stop::Found(_)), _) => {}
                            (_, Stop::Found(_)) | (None, _) => *slot = Some(stop),
                            _ => {}
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
                progress.stop();
            });
        }
    });
    let elapsed = start.elapsed();
    let tries = progress.tries().min(cfg.max_tries.unwrap_or(u64::MAX));
    let stop = winner.into_inner().unwrap_or_else(|e| e.into_inner());
    if !matches!(stop, Some(Stop::Found(_))) {
        if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(ReproError {
                target: cfg.target,
                source: e,
            });
        }
    }
    let (outcome, local, peer) = match stop {
        Some(Stop::Found(sock)) => {
            let local = sock.local_addr().ok().and_then(|a| a.as_socket());
            let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
            let is_loop =
                matches!((local, peer), (Some(l), Some(p)) if tcploop_guard::is_loop(l, p));
            let o = if is_loop {
                Outcome::SelfConnect(sock)
            } else {
                Outcome::Listener(sock)
            };
            (o, local, peer)
        }
        Some(Stop::Limit) => (Outcome::MaxTries, None, None),
        Some(Stop::Timeout) => (Outcome::Timeout, None, None),
        Some(Stop::Interrupted) | None => (Outcome::Interrupted, None, None),
    };
    Ok(Report {
        outcome,
        tries,
        elapsed,
        local,
        peer,
    })
}

fn new_socket(cfg: &Config) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(cfg.target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if cfg.reuseaddr {
        s.set_reuse_address(true)?;
    }
    Ok(s)
}

/// Every this many tries, a worker looks at the clock and samples the port.
const CHECK_EVERY: u64 = 64;

fn worker(
    cfg: &Config,
    progress: &Progress,
    deadline: Option<Instant>,
    sampler: bool,
) -> io::Result<Option<Stop>> {
    let target = SockAddr::from(cfg.target);
    let max = cfg.max_tries.unwrap_or(u64::MAX);
    let mut sock = new_socket(cfg)?;
    let mut n: u64 = 0;
    loop {
        if progress.stopped() {
            return Ok(Some(Stop::Interrupted));
        }
        if progress.tries.fetch_add(1, Ordering::Relaxed) >= max {
            return Ok(Some(Stop::Limit));
        }
        n += 1;
        if n % CHECK_EVERY == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Some(Stop::Timeout));
        }
        if cfg.mode == SocketMode::Fresh && n > 1 {
            // close first, then open, as a client that reconnects does
            drop(sock);
            sock = new_socket(cfg)?;
        }
        // In reuse mode the sampled try uses a side socket of its own: a
        // socket whose non-blocking connect failed answers the next
        // connect() with ECONNABORTED. The port walk depends on the
        // destination only, not on the socket.
        let r = if sampler && n % CHECK_EVERY == 1 {
            match cfg.mode {
                SocketMode::Fresh => connect_sampled(&sock, &target, progress).map(|()| None),
                SocketMode::Reuse => {
                    let side = new_socket(cfg)?;
                    connect_sampled(&side, &target, progress).map(|()| Some(side))
                }
            }
        } else {
            sock.connect(&target).map(|()| None)
        };
        match r {
            Ok(side) => {
                let sock = side.unwrap_or(sock);
                if progress.stop.swap(true, Ordering::Relaxed) {
                    // another worker won first; reset ours quietly
                    release(sock, true);
                    return Ok(None);
                }
                if let Some(p) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                    progress
                        .last_port
                        .store(u32::from(p.port()), Ordering::Relaxed);
                }
                return Ok(Some(Stop::Found(sock)));
            }
            Err(e) => match e.raw_os_error() {
                // refused: nothing listens, and the chosen port was not the target
                Some(libc::ECONNREFUSED) => {}
                // every candidate port busy for this 4-tuple right now: retry
                Some(libc::EADDRNOTAVAIL) => {}
                // interrupted by a signal (Ctrl-C handler): loop checks stop
                Some(libc::EINTR) => {}
                // the socket is wedged after an odd failure: start afresh
                Some(libc::EISCONN)
                | Some(libc::EALREADY)
                | Some(libc::EINVAL)
                | Some(libc::ECONNABORTED) => {
                    sock = new_socket(cfg)?;
                }
                _ => return Err(e),
            },
        }
    }
}

/// One try that also learns the source port the kernel picked: a
/// non-blocking `connect()`, `getsockname()` while the handshake is in
/// flight, then `poll()` and `SO_ERROR` for the result. A blocking refused
/// connect resets the socket before its port can be read, so this is how
/// the live progress line shows the port walk (every [`CHECK_EVERY`] tries).
fn connect_sampled(sock: &Socket, target: &SockAddr, progress: &Progress) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    let r = match sock.connect(target) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            if let Some(p) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                if p.port() != 0 {
                    progress
                        .last_port
                        .store(u32::from(p.port()), Ordering::Relaxed);
                }
            }
            wait_connected(sock)
        }
        other => other,
    };
    sock.set_nonblocking(false)?;
    r
}

fn wait_connected(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsFd;
    // 5 s at most: on loopback the answer is there at once.
    if !crate::sys::poll::writable(sock.as_fd(), 5000)? {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    match sock.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How long to hold a loop before releasing it.
pub enum Hold {
    /// Release at once.
    No,
    /// Hold this long.
    For(Duration),
    /// Hold until a line (Enter) arrives on this reader, read on a thread
    /// of its own so that a stop still ends the wait.
    UntilLine(Box<dyn io::Read + Send>),
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::No => f.write_str("No"),
            Hold::For(d) => write!(f, "For({d:?})"),
            Hold::UntilLine(_) => f.write_str("UntilLine"),
        }
    }
}

impl Hold {
    /// What a display says before the hold: `None` when not held,
    /// `Some(Some(d))` for a hold of `d`, `Some(None)` until Enter.
    pub fn shown(&self) -> Option<Option<Duration>> {
        match self {
            Hold::No => None,
            Hold::For(d) => Some(Some(*d)),
            Hold::UntilLine(_) => Some(None),
        }
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Not held.
    No,
    /// Held for the time asked, or until Enter.
    Done,
    /// `stop` said so (Ctrl-C).
    Interrupted,
    /// Someone else destroyed the loop while it was held (`tcploop kill`,
    /// `ss -K`).
    Destroyed,
}

/// What a loop proves, and how it was let go: [`prove`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// The socket wrote [`ECHO`] and read the same bytes back from itself.
    pub echo: bool,
    /// A server's `bind()` of the port (with SO_REUSEADDR) got EADDRINUSE
    /// while the loop was held: the port is stolen.
    pub stolen: bool,
    /// How the hold ended.
    pub held: Held,
    /// The loop was gone before its release (destroyed by another process):
    /// there was nothing left to release.
    pub destroyed: bool,
    /// A server could bind the port again right after the release (RST
    /// frees it at once; a graceful close leaves it in TIME-WAIT).
    pub freed: bool,
}

/// How a run ended, once a loop was proved and released: [`conclude`]'s
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A loop, with what it proved.
    Loop(Proof),
    /// A real listener answered (released with RST at once).
    Listener,
    /// The try limit was reached.
    TryLimit,
    /// The time limit was reached.
    TimeLimit,
    /// Stopped (Ctrl-C).
    Interrupted,
}

/// Finishes a run: a loop is proved ([`prove`]), a listener's connection
/// is reset, anything else is said as is.
pub fn conclude(
    outcome: Outcome,
    target: SocketAddr,
    hold: Hold,
    rst: bool,
    stop: &dyn Fn() -> bool,
    shown: &mut dyn FnMut(&Proof) -> io::Result<()>,
) -> io::Result<Ended> {
    Ok(match outcome {
        Outcome::SelfConnect(sock) => Ended::Loop(prove(sock, target, hold, rst, stop, shown)?),
        Outcome::Listener(sock) => {
            release(sock, true);
            Ended::Listener
        }
        Outcome::MaxTries => Ended::TryLimit,
        Outcome::Timeout => Ended::TimeLimit,
        Outcome::Interrupted => Ended::Interrupted,
    })
}

/// What `connect` knows before its first try: the destination as this
/// namespace sees it, the predictor's verdict, and a port that would loop.
#[derive(Debug)]
pub struct Plan {
    /// The destination, classified.
    pub host: crate::host::Host,
    /// The address the tries go to (the effective address, the port).
    pub target: SocketAddr,
    /// The verdict on the port.
    pub prediction: crate::predict::Prediction,
    /// A port of this host that can loop, when the asked one cannot.
    pub suggestion: Option<u16>,
}

impl Plan {
    /// Whether the predictor rules a loop out (no loop, or a listener).
    pub fn cannot_loop(&self) -> bool {
        use crate::predict::Verdict;
        matches!(
            self.prediction.verdict,
            Verdict::Impossible | Verdict::Listening
        )
    }
}

/// Surveys this namespace and predicts a plain `connect()` to `port` of
/// `resolved`.
pub fn plan(resolved: &crate::host::Resolved, port: u16) -> Result<Plan, crate::ports::FactsError> {
    use crate::predict::{self, Client};
    let survey = crate::survey::Survey::take()?;
    let host = survey.host(resolved.addr, resolved.scope_id);
    let target = match host.effective {
        std::net::IpAddr::V6(v6) => {
            SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, resolved.scope_id))
        }
        v4 => SocketAddr::new(v4, port),
    };
    let sit = survey.situation(&host, Client::Connect);
    let prediction = predict::predict(&sit, port);
    let mut plan = Plan {
        target,
        prediction,
        suggestion: None,
        host: host.clone(),
    };
    if plan.cannot_loop() && host.source_is_destination() {
        plan.suggestion = predict::suggest(&sit, port);
    }
    Ok(plan)
}

/// The bytes a loop writes to itself.
pub const ECHO: &[u8] = b"tcploop";

/// The proof of a loop, for `connect` and `demo` alike: echo [`ECHO`]
/// through the socket, probe a server's `bind()` of `target` with
/// SO_REUSEADDR, as servers do (the one bind probe,
/// [`crate::sys::diag::bind_probe`]: stolen),
/// tell `shown` (a display: the proof so far, before the hold), hold the
/// loop as asked (`stop` is polled: Ctrl-C), release it (RST when `rst`,
/// else FIN) and probe the bind again (freed). An error of `shown` is
/// returned after the release.
pub fn prove(
    sock: Socket,
    target: SocketAddr,
    hold: Hold,
    rst: bool,
    stop: &dyn Fn() -> bool,
    shown: &mut dyn FnMut(&Proof) -> io::Result<()>,
) -> io::Result<Proof> {
    let echo = echo(&sock, ECHO).is_ok_and(|b| b == ECHO);
    let stolen = matches!(bind_probe(target, true), Ok(false));
    let mut proof = Proof {
        echo,
        stolen,
        held: Held::No,
        destroyed: false,
        freed: false,
    };
    if let Err(e) = shown(&proof) {
        release(sock, true);
        return Err(e);
    }
    let held = hold_loop(&sock, hold, stop);
    let destroyed = held == Held::Destroyed || !still_connected(&sock);
    release(sock, rst);
    proof.freed = matches!(bind_probe(target, true), Ok(true));
    proof.held = held;
    proof.destroyed = destroyed;
    Ok(proof)
}

/// Writes `msg` and reads as many bytes back (1 s at most): on a loop, the
/// socket receives what it sent.
pub fn echo(sock: &Socket, msg: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s: &Socket = sock;
    s.write_all(msg)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; msg.len()];
    let r = s.read_exact(&mut buf);
    let _ = sock.set_read_timeout(None);
    r.map(|()| buf)
}

fn hold_loop(sock: &Socket, hold: Hold, stop: &dyn Fn() -> bool) -> Held {
    let check = |sock: &Socket| {
        if stop() {
            Some(Held::Interrupted)
        } else if !still_connected(sock) {
            Some(Held::Destroyed)
        } else {
            None
        }
    };
    match hold {
        Hold::No => Held::No,
        Hold::For(d) => {
            let end = Instant::now() + d;
            while Instant::now() < end {
                if let Some(h) = check(sock) {
                    return h;
                }
                std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
            }
            Held::Done
        }
        Hold::UntilLine(mut input) => {
            let (tx, rx) = std::sync::mpsc::channel();
            // detached: a blocked read of a terminal cannot be cancelled
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while matches!(input.read(&mut b), Ok(1)) && b[0] != b'\n' {}
                let _ = tx.send(());
            });
            loop {
                if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                    return Held::Done;
                }
                if let Some(h) = check(sock) {
                    return h;
                }
            }
        }
    }
}

/// Whether a held loop is still connected: `getpeername(2)` fails with
/// ENOTCONN once someone else destroyed it (`tcploop kill`, `ss -K`: the
/// socket is then closed, with ECONNABORTED pending).
pub fn still_connected(sock: &Socket) -> bool {
    sock.peer_addr().is_ok()
}

/// Closes a socket: with `rst`, by SO_LINGER {1, 0} so that it sends RST
/// and leaves nothing behind; otherwise gracefully (FIN), which leaves the
/// 4-tuple in TIME-WAIT for 60 s, on loopback too: a server's `bind()` of
/// the port gets EADDRINUSE all that time, even with SO_REUSEADDR
/// (`tcp_tw_reuse` only lets a new `connect()` reuse the 4-tuple, after
/// about 1 s on loopback).
pub fn release(sock: Socket, rst: bool) {
    if rst {
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
    drop(sock);
}

/// What `tcploop connect` is asked to do.
#[derive(Debug)]
pub struct ConnectConfig {
    /// The destination, resolved (the tries go to its effective address).
    pub resolved: crate::host::Resolved,
    /// The destination port.
    pub port: u16,
    /// Try even when the predictor rules a loop out.
    pub force: bool,
    /// The reproducer (its target is replaced by the plan's).
    pub repro: Config,
    /// How long to hold a loop.
    pub hold: Hold,
    /// Release with RST (else FIN: the port stays in TIME-WAIT).
    pub rst: bool,
}

/// One step of [`connect`], in order.
#[derive(Debug)]
pub enum Step<'a> {
    /// The destination as resolved, before anything is read.
    Resolved(&'a crate::host::Resolved),
    /// The verdict before the first try.
    Planned(&'a Plan),
    /// Not trying: the port cannot loop (the end).
    Refused(&'a Plan),
    /// Trying, though the destination is not an address of this namespace.
    NotLocal(&'a Plan),
    /// The tries start.
    Trying {
        /// The try limit.
        max_tries: Option<u64>,
    },
    /// The counters, every 50 ms while the tries run.
    Tick(&'a Progress),
    /// The tries ended.
    Tried,
    /// A loop, proved, before the hold (`hold`: as [`Hold::shown`]).
    Proved {
        /// The run.
        report: &'a Report,
        /// Where the tries went.
        target: SocketAddr,
        /// What the loop proved.
        proof: &'a Proof,
        /// How long it will be held, if it is.
        hold: Option<Option<Duration>>,
    },
    /// How the run ended, after any hold and release (the end).
    Ended {
        /// The run.
        report: &'a Report,
        /// Where the tries went.
        target: SocketAddr,
        /// How it ended.
        ended: Ended,
        /// Released with RST.
        rst: bool,
    },
}

/// Why `tcploop connect` stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The ephemeral-port facts could not be read.
    #[error("reading the ephemeral-port facts")]
    Facts(#[source] crate::ports::FactsError),
    /// The reproducer failed.
    #[error(transparent)]
    Repro(#[from] ReproError),
    /// The loop could not be proved or released.
    #[error("proving the loop")]
    Prove(#[source] io::Error),
    /// The caller's report failed.
    #[error("writing the report")]
    Report(#[source] io::Error),
}

/// `tcploop connect`: the plan, then (unless the port cannot loop and
/// `force` is off) the reproducer, the proof, the hold and the release.
/// Each step goes to `on`; `stop()` (Ctrl-C) ends the tries and the hold.
/// `None`: refused before any try.
pub fn connect(
    cfg: ConnectConfig,
    stop: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Step<'_>) -> io::Result<()>,
) -> Result<Option<Ended>, ConnectError> {
    on(Step::Resolved(&cfg.resolved)).map_err(ConnectError::Report)?;
    let plan = plan(&cfg.resolved, cfg.port).map_err(ConnectError::Facts)?;
    on(Step::Planned(&plan)).map_err(ConnectError::Report)?;
    if plan.cannot_loop() && !cfg.force {
        on(Step::Refused(&plan)).map_err(ConnectError::Report)?;
        return Ok(None);
    }
    if !plan.host.source_is_destination() {
        on(Step::NotLocal(&plan)).map_err(ConnectError::Report)?;
    }
    let rcfg = Config {
        target: plan.target,
        ..cfg.repro
    };
    let target = rcfg.target;
    on(Step::Trying {
        max_tries: rcfg.max_tries,
    })
    .map_err(ConnectError::Report)?;
    let progress = Progress::default();
    let mut report = run_watched(&rcfg, &progress, &mut |p| {
        if stop() {
            p.stop();
        }
        on(Step::Tick(p))
    })
    .map_err(ConnectError::Report)??;
    on(Step::Tried).map_err(ConnectError::Report)?;
    let outcome = std::mem::replace(&mut report.outcome, Outcome::Interrupted);
    let hold = cfg.hold.shown();
    // An error of the report while the loop is shown is the report's.
    let mut report_failed = false;
    let ended = conclude(outcome, target, cfg.hold, cfg.rst, stop, &mut |proof| {
        let r = on(Step::Proved {
            report: &report,
            target,
            proof,
            hold,
        });
        report_failed = r.is_err();
        r
    });
    let ended = match ended {
        Ok(e) => e,
        Err(e) if report_failed => return Err(ConnectError::Report(e)),
        Err(e) => return Err(ConnectError::Prove(e)),
    };
    on(Step::Ended {
        report: &report,
        target,
        ended,
        rst: cfg.rst,
    })
    .map_err(ConnectError::Report)?;
    Ok(Some(ended))
}
