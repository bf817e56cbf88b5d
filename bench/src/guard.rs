//! Benchmark: `tcploop_guard::connect` against plain
//! `std::net::TcpStream::connect`, to a live loopback listener (the case a
//! service pays for on every connection), inside a sandbox so that hundreds
//! of thousands of connections touch nothing of the host.
//!
//! Each round makes `--per-round` plain connects and as many guarded ones,
//! interleaved one by one (which of a pair goes first alternates), timing
//! each `connect` call; the figure is the median over rounds of the
//! guarded/plain ratio of the rounds' median connect times, so a noisy
//! 2-core machine hurts both contenders alike (the ratio of the means is
//! printed too). Every connection is closed the same way for both
//! (SO_LINGER 0, so no TIME-WAIT piles up over the run); an accept thread
//! drains the listener, whose backlog is deep enough for a whole round. The cost of the guard's check alone (one
//! `getsockname()`, as the guard does it, and the full
//! `is_self_connected`) is timed too, for scale.
//!
//! `cargo run --release -p tcploop-bench -- guard [--rounds 41] [--per-round 2000]`

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (each: plain and guarded, alternating which goes first)
    #[arg(long, default_value_t = 41)]
    rounds: u32,
    /// Connections per contender per round
    #[arg(long, default_value_t = 2000)]
    per_round: u32,
    /// Run the measurement here (used inside the sandbox)
    #[arg(long, hide = true)]
    inner: bool,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.inner {
        return measure(&args);
    }
    let tcploop = common::tcploop_bin()?;
    let me = std::env::current_exe()?;
    let status = Command::new(tcploop)
        .args(["sandbox", "--"])
        .arg(me)
        .args([
            "guard",
            "--inner",
            "--rounds",
            &args.rounds.to_string(),
            "--per-round",
            &args.per_round.to_string(),
        ])
        .status()?;
    anyhow::ensure!(status.success(), "the sandboxed benchmark failed");
    Ok(())
}

fn close(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// One connection's times: the `connect` call, and connect plus close.
fn timed(f: impl FnOnce() -> std::io::Result<TcpStream>) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let s = f()?;
    let connect = t.elapsed().as_secs_f64();
    close(s);
    Ok((connect, t.elapsed().as_secs_f64()))
}

/// Per-round figures of one contender.
#[derive(Debug, Default)]
struct Side {
    /// Median `connect` time of each round.
    connect: Vec<f64>,
    /// Median connect+close time of each round.
    whole: Vec<f64>,
    /// Sum of all connect times.
    sum: f64,
}

impl Side {
    fn round(&mut self, mut samples: Vec<(f64, f64)>) {
        self.sum += samples.iter().map(|s| s.0).sum::<f64>();
        // The median of the round: a connect that waited for the CPU (the
        // machine is shared) does not swing it.
        let mut c: Vec<f64> = samples.iter().map(|s| s.0).collect();
        self.connect.push(common::median(&mut c));
        let mut w: Vec<f64> = samples.drain(..).map(|s| s.1).collect();
        self.whole.push(common::median(&mut w));
    }
}

/// Median and interquartile range of per-round ratios.
fn ratios(g: &[f64], p: &[f64]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = g.iter().zip(p).map(|(g, p)| g / p).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| r[((r.len() - 1) as f64 * f).round() as usize];
    (common::median(&mut r.clone()), q(0.25), q(0.75))
}

fn measure(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0 && args.per_round > 0, "nothing to measure");
    // A deep backlog: connects complete in the kernel without waiting for
    // accept(), and a full queue would drop SYNs (a 1 s retransmit each).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    sock.listen(4096)?;
    let server: TcpListener = sock.into();
    let addr: SocketAddr = server.local_addr()?;
    std::thread::spawn(move || {
        for c in server.incoming() {
            drop(c);
        }
    });
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    println!(
        "guard: {} rounds x {} connects each, to a live listener on {addr} \
         (sandbox, ip_local_port_range {})",
        args.rounds,
        args.per_round,
        range.split_whitespace().collect::<Vec<_>>().join("-")
    );
    // Warm up both paths.
    for _ in 0..args.per_round {
        timed(|| TcpStream::connect(addr))?;
        timed(|| tcploop_guard::connect(addr))?;
    }

    let (mut plain, mut guarded) = (Side::default(), Side::default());
    for r in 0..args.rounds {
        // Interleaved one connection at a time (which goes first alternates),
        // so that a burst of load from elsewhere hits both alike.
        let n = args.per_round as usize;
        let (mut p, mut g) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..args.per_round {
            if (r + i) % 2 == 0 {
                p.push(timed(|| TcpStream::connect(addr))?);
                g.push(timed(|| tcploop_guard::connect(addr))?);
            } else {
                g.push(timed(|| tcploop_guard::connect(addr))?);
                p.push(timed(|| TcpStream::connect(addr))?);
            }
        }
        plain.round(p);
        guarded.round(g);
    }
    let (c_med, c_q1, c_q3) = ratios(&guarded.connect, &plain.connect);
    let (w_med, w_q1, w_q3) = ratios(&guarded.whole, &plain.whole);

    // The check alone, on a connected stream.
    let s = TcpStream::connect(addr)?;
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(s.local_addr()?);
    }
    let getsockname = t.elapsed().as_secs_f64() / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tcploop_guard::is_self_connected(&s)?);
    }
    let full_check = t.elapsed().as_secs_f64() / f64::from(n);
    // For scale: the cheapest system call there is (getppid).
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::os::unix::process::parent_id());
    }
    let syscall = t.elapsed().as_secs_f64() / f64::from(n);
    close(s);

    let us = |v: &[f64]| common::median(&mut v.to_vec()) * 1e6;
    println!(
        "  plain   TcpStream::connect      connect {:>6.2} us, connect+close {:>6.2} us (medians)",
        us(&plain.connect),
        us(&plain.whole)
    );
    println!(
        "  guarded tcploop_guard::connect  connect {:>6.2} us, connect+close {:>6.2} us",
        us(&guarded.connect),
        us(&guarded.whole)
    );
    println!(
        "  guarded/plain, connect:       {c_med:.4} (rounds' interquartile {c_q1:.4}-{c_q3:.4}) \
         = {:+.2}%; ratio of the mean connects {:.4}",
        (c_med - 1.0) * 100.0,
        guarded.sum / plain.sum
    );
    println!(
        "  guarded/plain, connect+close: {w_med:.4} (rounds' interquartile {w_q1:.4}-{w_q3:.4}) \
         = {:+.2}%",
        (w_med - 1.0) * 100.0
    );
    println!(
        "  the check alone: getsockname {:.0} ns (what the guard does), \
         getsockname+getpeername {:.0} ns; a getppid() {:.0} ns, for scale",
        getsockname * 1e9,
        full_check * 1e9,
        syscall * 1e9
    );
    Ok(())
}
