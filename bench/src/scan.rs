//! Benchmark: `tcploop scan` against `ss -tan`, `ss -tanp` and
//! `lsof -nP -iTCP` at 1k, 10k and 100k TCP sockets, inside a throwaway
//! network namespace (the host's sockets are neither seen nor touched).
//!
//! The sockets are loopback connections (both ends held) spread over holder
//! processes of at most 16,668 fds each (the open-files hard limit here is
//! 20,000), plus one small "client" process holding 10 loops, made the way
//! they happen in real life: a plain `connect()` picking the destination
//! port as its source port. One more loop sits in the largest holder: the
//! worst case for the owner lookup, measured with `--port`.
//!
//! Wall time: the median of several rounds, the contenders alternating
//! within each round so that noise hurts all alike; ratios are taken within
//! the run. Peak memory: one extra run of each contender under
//! `/usr/bin/time -f %M` (GNU time, max RSS in KiB), kept out of the timed
//! rounds.
//!
//! `cargo run --release -p tcploop-bench -- scan [--sizes 1000,10000,100000] [--rounds 5]`
//!
//! With `--doctor`, the same sockets time `tcploop doctor PORT` (one port's
//! whole diagnosis: holders, owners, bind probes, prediction) against
//! `ss -tanp 'sport = :PORT'`, what a user would run to find the holder.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::common;

/// Most sockets one holder process keeps (2 per connection, under the
/// 20,000 open-files limit with room to spare).
const PER_HOLDER: u64 = 16_668;
/// The loops of the small client process, from this port on (even, so a
/// plain connect can pick them).
const LOOP_BASE: u16 = 61_100;
/// The loop inside the largest holder (worst case for the owner lookup).
const BIG_LOOP: u16 = 61_200;
const RANGE: &str = "10000-60999";

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Socket counts to measure at
    #[arg(long, value_delimiter = ',', default_values_t = [1000u64, 10_000, 100_000])]
    sizes: Vec<u64>,
    /// Timed rounds per size (each runs every contender once)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Time `tcploop doctor PORT` against `ss -tanp 'sport = :PORT'` instead
    #[arg(long)]
    doctor: bool,
    /// (internal) running inside the sandbox
    #[arg(long, hide = true)]
    inner: bool,
    /// (internal) a holder process: this many connections
    #[arg(long, hide = true)]
    holder: Option<u64>,
    /// (internal) the holder's listening port
    #[arg(long, hide = true, default_value_t = 0)]
    listen_port: u16,
    /// (internal) loops the holder makes, from this port on, one per 2 ports
    #[arg(long, hide = true, num_args = 2, value_names = ["BASE", "COUNT"])]
    loops: Vec<u16>,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(conns) = args.holder {
        return holder(conns, args.listen_port, &args.loops);
    }
    let tcploop = common::tcploop_bin()?;
    if args.inner {
        return inner(&args, &tcploop);
    }
    for tool in ["ss", "lsof", "/usr/bin/time"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("{tool} is needed (Debian packages iproute2, lsof, time)");
        }
    }
    let me = std::env::current_exe()?;
    println!(
        "kernel {}, {} CPUs; sockets spread over holders of at most {PER_HOLDER} fds",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| sockets | tool | median wall | vs {} | max RSS |",
        if args.doctor {
            "tcploop doctor"
        } else {
            "tcploop scan"
        }
    );
    println!("| ---: | --- | ---: | ---: | ---: |");
    // a fresh namespace for each size: nothing left over from the last one
    for size in &args.sizes {
        let mut a = vec![
            "scan".to_string(),
            "--inner".into(),
            format!("--sizes={size}"),
            format!("--rounds={}", args.rounds),
        ];
        if args.doctor {
            a.push("--doctor".into());
        }
        let status = common::sandboxed(&tcploop, RANGE, &me, &a)
            .env("TCPLOOP_BIN", &tcploop)
            .status()?;
        anyhow::ensure!(status.success(), "the benchmark inside the sandbox failed");
    }
    Ok(())
}

/// A holder: `conns` loopback connections to its own listener (both ends
/// kept), and loops on request; prints `ready`, then waits for stdin to close.
fn holder(conns: u64, port: u16, loops: &[u16]) -> anyhow::Result<()> {
    let mut keep = vec![];
    if conns > 0 {
        let l = TcpListener::bind(("127.0.0.1", port)).context("holder listener")?;
        for i in 0..conns {
            let c = TcpStream::connect(("127.0.0.1", port))
                .with_context(|| format!("connection {i}"))?;
            let (a, _) = l.accept()?;
            keep.push(c);
            keep.push(a);
        }
    }
    if let [base, count] = *loops {
        for i in 0..count {
            keep.push(plain_loop(base + 2 * i)?);
        }
    }
    println!("ready {}", keep.len());
    std::io::stdout().flush()?;
    // `loop P` on stdin: make one more loop; end of input: exit
    for line in std::io::stdin().lines() {
        let line = line?;
        if let Some(p) = line.strip_prefix("loop ") {
            keep.push(plain_loop(p.trim().parse()?)?);
            println!("ok");
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

const RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// A loop by a plain connect(): with the range `P P+1`, P is the only port
/// connect() can pick. The sandbox's range is restored afterwards.
fn plain_loop(port: u16) -> anyhow::Result<TcpStream> {
    let old = std::fs::read_to_string(RANGE_FILE)?;
    std::fs::write(RANGE_FILE, format!("{port} {}", port + 1))?;
    let s = TcpStream::connect(("127.0.0.1", port));
    std::fs::write(RANGE_FILE, old.trim())?;
    let s = s.with_context(|| format!("self-connect to {port}"))?;
    anyhow::ensure!(s.local_addr()? == s.peer_addr()?, "no loop on {port}");
    Ok(s)
}

struct Holder(Child);

impl Holder {
    /// Asks the holder for one more loop on `port`.
    fn add_loop(&mut self, port: u16) -> anyhow::Result<()> {
        writeln!(self.0.stdin.as_mut().expect("piped"), "loop {port}")?;
        let mut line = String::new();
        BufReader::new(self.0.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "ok",
            "holder could not make a loop on {port}"
        );
        Ok(())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn spawn_holder(
    me: &Path,
    conns: u64,
    port: u16,
    loops: Option<(u16, u16)>,
) -> anyhow::Result<Holder> {
    // a shell raises the soft open-files limit to the hard one first
    let mut c = Command::new("sh");
    c.args(["-c", "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" \"$@\""])
        .arg(me)
        .args([
            "scan",
            "--holder",
            &conns.to_string(),
            "--listen-port",
            &port.to_string(),
        ]);
    if let Some((base, n)) = loops {
        c.args(["--loops", &base.to_string(), &n.to_string()]);
    }
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!("holder failed to start ({conns} connections)");
    }
    Ok(Holder(child))
}

/// One contender: a name and a command line.
struct Contender {
    name: String,
    argv: Vec<String>,
}

fn contenders(tcploop: &Path, phase2: bool, doctor: bool) -> Vec<Contender> {
    let t = tcploop.display().to_string();
    let c = |name: &str, argv: &[&str]| Contender {
        name: name.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
    };
    if doctor {
        let (port, what) = if phase2 {
            (BIG_LOOP, "the largest holder's loop")
        } else {
            (LOOP_BASE, "a loop in the small client")
        };
        let p = port.to_string();
        let filter = format!("sport = :{port}");
        return vec![
            c(
                &format!("tcploop doctor {port} ({what})"),
                &[&t, "doctor", &p],
            ),
            c(&format!("ss -tanp '{filter}'"), &["ss", "-tanp", &filter]),
            c(
                &format!("tcploop scan --port {port}"),
                &[&t, "scan", "--port", &p],
            ),
        ];
    }
    if phase2 {
        return vec![
            c(
                "+1 loop in the largest holder: tcploop scan (11 loops)",
                &[&t, "scan"],
            ),
            c(
                "tcploop scan --port (only the largest holder's loop)",
                &[&t, "scan", "--port", &BIG_LOOP.to_string()],
            ),
            c("tcploop scan --no-owners", &[&t, "scan", "--no-owners"]),
        ];
    }
    vec![
        c("tcploop scan (10 loops, with owners)", &[&t, "scan"]),
        c(
            "tcploop scan --source proc",
            &[&t, "scan", "--source", "proc"],
        ),
        c("ss -tan (no owners)", &["ss", "-tan"]),
        c("ss -tanp", &["ss", "-tanp"]),
        c("lsof -nP -iTCP", &["lsof", "-nP", "-iTCP"]),
    ]
}

/// Runs once, output discarded; returns wall seconds and the exit code.
fn time_once(argv: &[String]) -> anyhow::Result<(f64, i32)> {
    let t = Instant::now();
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok((t.elapsed().as_secs_f64(), st.code().unwrap_or(-1)))
}

/// Max RSS in KiB, from GNU time.
fn max_rss_kib(argv: &[String], scratch: &Path) -> anyhow::Result<u64> {
    let f = scratch.join("rss");
    Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&f)
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let text = std::fs::read_to_string(&f)?;
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no max RSS from /usr/bin/time: {text:?}"))
}

fn count_ss_lines() -> anyhow::Result<u64> {
    let o = Command::new("ss").args(["-tanH"]).output()?;
    Ok(String::from_utf8_lossy(&o.stdout).lines().count() as u64)
}

fn inner(args: &Args, tcploop: &Path) -> anyhow::Result<()> {
    let me: PathBuf = std::env::current_exe()?;
    let scratch = common::scratch("scan")?;
    for &size in &args.sizes {
        let conns = size / 2;
        let holders = size.div_ceil(PER_HOLDER).max(1);
        let per = conns.div_ceil(holders);
        let mut hs = vec![];
        let mut left = conns;
        for i in 0..holders {
            let n = per.min(left);
            left -= n;
            hs.push(spawn_holder(&me, n, 62_000 + i as u16, None)?);
        }
        // the looping client: a small process
        hs.push(spawn_holder(&me, 0, 0, Some((LOOP_BASE, 10)))?);
        let seen = count_ss_lines()?;
        let base = measure(args, tcploop, &scratch, (size, seen), 10, None)?;
        // the worst case for the owner lookup: a loop in the largest holder
        hs[0].add_loop(BIG_LOOP)?;
        measure(args, tcploop, &scratch, (size, seen + 1), 11, Some(base))?;
        drop(hs);
    }
    Ok(())
}

fn measure(
    args: &Args,
    tcploop: &Path,
    scratch: &Path,
    (size, seen): (u64, u64),
    want_loops: u64,
    base: Option<f64>,
) -> anyhow::Result<f64> {
    let phase2 = base.is_some();
    // check the answer before timing it
    let o = Command::new(tcploop).args(["scan", "--json"]).output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    let summary = text
        .lines()
        .last()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()?
        .context("no summary from tcploop scan")?;
    let loops = summary["data"]["loops_found"].as_u64().unwrap_or(0);
    let unknown = summary["data"]["owners_unknown"].as_u64().unwrap_or(99);
    anyhow::ensure!(
        loops == want_loops && unknown == 0,
        "tcploop scan found {summary}"
    );
    let cs = contenders(tcploop, phase2, args.doctor);
    let mut samples: Vec<Vec<f64>> = vec![vec![]; cs.len()];
    for round in 0..args.rounds {
        for k in 0..cs.len() {
            let i = (k + round) % cs.len();
            let (t, _) = time_once(&cs[i].argv)?;
            samples[i].push(t);
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| common::median(s)).collect();
    for (i, c) in cs.iter().enumerate() {
        let rss = max_rss_kib(&c.argv, scratch)?;
        println!(
            "| {} | {} | {:.1} ms | {:.2}x | {:.1} MB |",
            if i == 0 && !phase2 {
                format!("{size} ({seen} seen)")
            } else {
                String::new()
            },
            c.name,
            medians[i] * 1e3,
            medians[i]
                / if args.doctor {
                    medians[0]
                } else {
                    base.unwrap_or(medians[0])
                },
            rss as f64 / 1024.0
        );
    }
    Ok(medians[0])
}
