//! Benchmark: the eBPF event source (`tcploop trace`, `watch --source
//! ebpf`) against polling, in four parts, each in a network namespace of its
//! own (`sandbox --netns-only`: root keeps the capabilities BPF needs; the
//! host's ports are not touched):
//!
//! - `caught`: N loops, each closed with RST the moment it forms (they live
//!   microseconds), made at a steady pace over a few seconds, watched at
//!   once by `tcploop trace`, `tcploop watch --source poll --interval 1s`
//!   and `ss -tanHe` run every second (distinct socket cookies counted);
//! - `latency`: from the state change (the event's CLOCK_MONOTONIC stamp) to
//!   the moment the harness reads trace's JSON line, over the same loops;
//! - `cost`: what the attached program costs the host: a tight refused
//!   connect() loop and a connect/accept loop, in short windows without and
//!   with the program attached, alternating pair by pair, as the median
//!   ratio (goal: at least 0.98);
//! - `cpu`: `watch --source ebpf` against `watch --source poll
//!   --interval 1s` at 10k and 100k idle sockets (the sockets spread over
//!   holder processes of at most 16,668 fds: the open-files hard limit here
//!   is 20,000), CPU from `/proc/PID/stat`, alternating.
//!
//! `cargo run --release -p tcploop-bench -- trace [--parts caught,cost,cpu]`

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which parts: caught (and latency), cost, cpu
    #[arg(long, value_delimiter = ',', default_values_t = ["caught".to_string(), "cost".into(), "cpu".into()])]
    parts: Vec<String>,
    /// Short-lived loops a round (caught)
    #[arg(long, default_value_t = 1000)]
    loops: u32,
    /// Seconds the loops are spread over (caught)
    #[arg(long, default_value_t = 5)]
    spread: u64,
    /// Rounds (every part)
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Milliseconds of each cost window
    #[arg(long, default_value_t = 500)]
    cost_window_ms: u64,
    /// Idle socket counts (cpu)
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000])]
    sizes: Vec<u64>,
    /// Seconds each watch runs per round (cpu)
    #[arg(long, default_value_t = 20)]
    cpu_seconds: u64,
    /// (internal) the part to run, inside the namespace
    #[arg(long, hide = true)]
    inner: Option<String>,
    /// (internal) a holder of this many connections
    #[arg(long, hide = true)]
    holder: Option<u64>,
    /// (internal) the holder's port
    #[arg(long, hide = true, default_value_t = 0)]
    listen_port: u16,
}

const LOOP_PORT: u16 = 40004;

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.holder {
        return holder(n, args.listen_port);
    }
    let tcploop = common::tcploop_bin()?;
    if let Some(part) = &args.inner {
        return match part.as_str() {
            "caught" => caught(&args, &tcploop),
            "cost" => cost(&args, &tcploop),
            "cpu" => cpu(&args, &tcploop),
            p => anyhow::bail!("unknown part {p}"),
        };
    }
    anyhow::ensure!(
        is_root(),
        "run as root: the BPF program needs CAP_BPF and CAP_PERFMON"
    );
    let me = std::env::current_exe()?;
    println!(
        "kernel {}, {} CPUs, load average {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")?
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for part in &args.parts {
        let range = if part == "cpu" {
            "10000-60999"
        } else {
            "40000-40009"
        };
        let mut c = Command::new(&tcploop);
        c.args(["sandbox", "--netns-only", "--range", range, "--"])
            .arg(&me)
            .args([
                "trace",
                "--inner",
                part,
                "--loops",
                &args.loops.to_string(),
                "--spread",
                &args.spread.to_string(),
                "--rounds",
                &args.rounds.to_string(),
                "--cost-window-ms",
                &args.cost_window_ms.to_string(),
                "--cpu-seconds",
                &args.cpu_seconds.to_string(),
            ])
            .arg(format!(
                "--sizes={}",
                args.sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .env("TCPLOOP_BIN", &tcploop);
        anyhow::ensure!(c.status()?.success(), "part {part} failed");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    uid == 0
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(c.id() as i32, sig)
    };
}

/// One short-lived loop: connect until the socket is connected to itself,
/// then close it with RST.
fn one_loop(to: SocketAddr) {
    loop {
        if let Ok(s) = TcpStream::connect(to) {
            if s.local_addr().ok() == s.peer_addr().ok() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

/// Starts `tcploop ARGS`, returning once its first stderr line is out
/// (trace) or its first stdout line (watch).
fn start(tcploop: &Path, args: &[&str], ready_on_stderr: bool) -> anyhow::Result<Child> {
    let mut c = Command::new(tcploop)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(if ready_on_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()?;
    if ready_on_stderr {
        let mut err = BufReader::new(c.stderr.take().expect("piped"));
        let mut line = String::new();
        err.read_line(&mut line)?;
        anyhow::ensure!(line.contains("tracing"), "trace did not start: {line}");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    Ok(c)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Part `caught` (and `latency`).
fn caught(args: &Args, tcploop: &Path) -> anyhow::Result<()> {
    let to: SocketAddr = ([127, 0, 0, 1], LOOP_PORT).into();
    let me = std::process::id();
    println!();
    println!(
        "caught: {} loops a round, each RST-closed at once, spread over {} s; {} rounds",
        args.loops, args.spread, args.rounds
    );
    let mut latencies: Vec<f64> = vec![];
    let mut rows = vec![];
    for round in 1..=args.rounds {
        // trace: its JSON lines read as they come, stamped on arrival
        let mut trace = start(tcploop, &["trace", "--json"], true)?;
        let out = BufReader::new(trace.stdout.take().expect("piped"));
        let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let seen2 = seen.clone();
        let reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let now = monotonic_ns();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["type"] == "loop" && v["data"]["pid"] == me {
                    let ts = v["data"]["ts_ns"].as_u64().unwrap_or(now);
                    seen2.lock().unwrap().push((ts, now));
                }
            }
        });
        let mut watch = start(
            tcploop,
            &["watch", "--json", "--source", "poll", "--interval", "1s"],
            false,
        )?;
        let wout = BufReader::new(watch.stdout.take().expect("piped"));
        let watch_reader = std::thread::spawn(move || {
            let mut n = 0u64;
            for line in wout.lines().map_while(Result::ok) {
                if line.contains("\"loop_appeared\"") {
                    n += 1;
                }
            }
            n
        });
        // ss -tanHe every second: distinct cookies of self-connected sockets
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let ss = std::thread::spawn(move || {
            let mut cookies = std::collections::HashSet::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(o) = Command::new("ss").args(["-tanHe"]).output() {
                    for l in String::from_utf8_lossy(&o.stdout).lines() {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        if f.len() > 4 && f[3] == f[4] {
                            if let Some(c) = f.iter().find(|x| x.starts_with("sk:")) {
                                cookies.insert(c.to_string());
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            cookies.len() as u64
        });
        std::thread::sleep(Duration::from_millis(1200));
        let pace = Duration::from_secs(args.spread) / args.loops.max(1);
        let t0 = Instant::now();
        for i in 0..args.loops {
            one_loop(to);
            let next = t0 + pace * (i + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        signal(&trace, libc::SIGINT);
        signal(&watch, libc::SIGINT);
        let _ = trace.wait();
        let _ = watch.wait();
        reader.join().expect("reader");
        let by_watch = watch_reader.join().expect("watch reader");
        let by_ss = ss.join().expect("ss");
        let got = seen.lock().unwrap().clone();
        for (ts, at) in &got {
            latencies.push(at.saturating_sub(*ts) as f64 / 1000.0);
        }
        println!(
            "  round {round}: trace {} / {}, watch --source poll {by_watch}, ss -tan every 1 s {by_ss}",
            got.len(),
            args.loops
        );
        rows.push((got.len() as u64, by_watch, by_ss));
    }
    let sum = |f: fn(&(u64, u64, u64)) -> u64| rows.iter().map(f).sum::<u64>();
    let total = u64::from(args.loops) * u64::from(args.rounds);
    println!();
    println!("| contender | loops caught | of |");
    println!("| --- | ---: | ---: |");
    println!("| `tcploop trace` | {} | {total} |", sum(|r| r.0));
    println!(
        "| `tcploop watch --source poll --interval 1s` | {} | {total} |",
        sum(|r| r.1)
    );
    println!("| `ss -tanHe` every second | {} | {total} |", sum(|r| r.2));
    println!();
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    println!(
        "latency, state change to trace's JSON line read by the harness ({} loops): p50 {p50:.0} µs, p99 {p99:.0} µs",
        latencies.len()
    );
    Ok(())
}

/// How many times a second `f` runs, over `window`.
fn rate(window: Duration, f: &dyn Fn()) -> f64 {
    let t0 = Instant::now();
    let end = t0 + window;
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Part `cost`: short windows, with and without the program, alternating
/// pair by pair (which goes first alternates too), so that the machine's
/// load swings hit both alike; the ratio is the median of the pairs'.
/// The program is loaded in this process (the library's loader), as
/// `tcploop trace` loads it, and detached between windows.
fn cost(args: &Args, _tcploop: &Path) -> anyhow::Result<()> {
    use tcploop::sys::bpf::loops::{LoopSource, Options};
    // outside the namespace's range (40000-40009): never a loop
    let closed: SocketAddr = ([127, 0, 0, 1], 39_999).into();
    let listener = TcpListener::bind("127.0.0.1:39998")?;
    let open = listener.local_addr()?;
    let refused = || {
        let _ = TcpStream::connect(closed);
    };
    let accept = || {
        if let Ok(c) = TcpStream::connect(open) {
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            if let Ok((s, _)) = listener.accept() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
    };
    let window = Duration::from_millis(args.cost_window_ms);
    let pairs = args.rounds * 10;
    println!();
    println!(
        "cost: {pairs} pairs of {} ms windows, without and with the program attached, alternating",
        args.cost_window_ms
    );
    let netns = std::fs::metadata("/proc/self/ns/net").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino() as u32
    })?;
    let opts = Options {
        netns: Some(netns),
        ring_bytes: None,
    };
    let mut ratios: [Vec<f64>; 2] = [vec![], vec![]];
    for i in 0..pairs {
        for (k, f) in [&refused as &dyn Fn(), &accept].into_iter().enumerate() {
            let measure = |with: bool| -> anyhow::Result<f64> {
                let src = if with {
                    Some(LoopSource::open(&opts).map_err(|e| anyhow::anyhow!("{e}"))?)
                } else {
                    None
                };
                let r = rate(window, f);
                drop(src);
                Ok(r)
            };
            let (without, with) = if i % 2 == 0 {
                let a = measure(false)?;
                (a, measure(true)?)
            } else {
                let b = measure(true)?;
                (measure(false)?, b)
            };
            ratios[k].push(with / without);
        }
    }
    println!();
    println!("| loop | rate with the program / without (median of {pairs} pairs) | middle half of the pairs |");
    println!("| --- | ---: | ---: |");
    for (k, name) in [
        "refused connect() (fresh socket each)",
        "connect + accept, RST close",
    ]
    .into_iter()
    .enumerate()
    {
        let v = &mut ratios[k];
        let m = common::median(v);
        let (q1, q3) = (percentile(v, 0.25), percentile(v, 0.75));
        println!("| {name} | {m:.3} | {q1:.3} to {q3:.3} |");
    }
    Ok(())
}

/// A holder process: `conns` loopback connections to its own listener,
/// both ends kept; prints `ready`, waits for stdin to close.
fn holder(conns: u64, port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("127.0.0.1", port))?;
    let mut keep = Vec::with_capacity(2 * conns as usize);
    for _ in 0..conns {
        let c = TcpStream::connect(("127.0.0.1", port))?;
        let (a, _) = l.accept()?;
        keep.push(c);
        keep.push(a);
    }
    println!("ready {}", keep.len());
    std::io::stdout().flush()?;
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    Ok(())
}

/// (user + system) clock ticks of a process.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Part `cpu`.
fn cpu(args: &Args, tcploop: &Path) -> anyhow::Result<()> {
    const PER_HOLDER: u64 = 8_334; // connections: 16,668 fds
    let me: PathBuf = std::env::current_exe()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!();
    println!(
        "cpu: idle sockets, {} s a watch a round, {} rounds, alternating",
        args.cpu_seconds, args.rounds
    );
    let mut table = vec![];
    let mut holders: Vec<Child> = vec![];
    let mut held = 0u64;
    for (i, &size) in args.sizes.iter().enumerate() {
        while held * 2 < size {
            let conns = PER_HOLDER.min((size / 2).saturating_sub(held)).max(1);
            let mut h = Command::new("sh")
                .args(["-c", "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" \"$@\""])
                .arg(&me)
                .args([
                    "trace",
                    "--holder",
                    &conns.to_string(),
                    "--listen-port",
                    &(61_000 + i as u16 * 100 + holders.len() as u16).to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(h.stdout.as_mut().expect("piped")).read_line(&mut line)?;
            anyhow::ensure!(line.starts_with("ready"), "holder failed: {line}");
            holders.push(h);
            held += conns;
        }
        let contenders: [(&str, &[&str]); 2] = [
            ("watch --source ebpf", &["watch", "--source", "ebpf"]),
            (
                "watch --source poll --interval 1s",
                &["watch", "--source", "poll", "--interval", "1s"],
            ),
        ];
        let mut samples = vec![vec![]; contenders.len()];
        for round in 1..=args.rounds {
            for (k, (name, argv)) in contenders.iter().enumerate() {
                let mut c = Command::new(tcploop)
                    .args(*argv)
                    .stdout(Stdio::null())
                    .spawn()?;
                // start-up: load, attach, the first dump
                std::thread::sleep(Duration::from_millis(2000));
                let t1 = cpu_ticks(c.id())?;
                let w0 = Instant::now();
                std::thread::sleep(Duration::from_secs(args.cpu_seconds));
                let t2 = cpu_ticks(c.id())?;
                let secs = w0.elapsed().as_secs_f64();
                signal(&c, libc::SIGINT);
                let _ = c.wait();
                let pct = (t2 - t1) as f64 / tck / secs * 100.0;
                println!(
                    "  {} sockets, round {round}: {name:<36} {pct:.3}% of one core",
                    held * 2
                );
                samples[k].push(pct);
            }
        }
        for (k, (name, _)) in contenders.iter().enumerate() {
            table.push((held * 2, *name, common::median(&mut samples[k])));
        }
    }
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    println!();
    println!("| idle sockets | watch | CPU, % of one core (median) |");
    println!("| ---: | --- | ---: |");
    for (n, name, pct) in table {
        println!("| {n} | `{name}` | {pct:.3} |");
    }
    println!("(clock ticks of 1/{tck} s: 0.000 means no tick was used)");
    Ok(())
}
