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
//! As root the namespace is a plain network namespace (`sandbox
//! --netns-only`), so that `tcploop scan` can use its in-kernel owner walk
//! (BPF needs the initial user namespace); otherwise a user+net namespace,
//! where it falls back to `/proc` (the table says which).
//!
//! Each size is measured twice, in two groups of rows: the common case (the
//! loops are held by the small client), and the worst case for an owner
//! lookup (one more loop, held by the largest holder). `ss -tan`, `ss -tanp`
//! and lsof run in both groups; each group's ratios are to its own first
//! `tcploop scan`. A third table times the owner lookup's strategies apart,
//! through the library: the socket dump alone, loading the iterator, one
//! iterator pass testing the loop condition in the kernel, one pass looking
//! up the dump's inodes in a map, and the two ways to combine them with the
//! dump (A: the loop-condition pass beside the dump; B: the inode pass after
//! it, which `scan` does).
//!
//! Wall time: the median of several rounds, the contenders alternating
//! within each round so that noise hurts all alike; ratios are taken within
//! the run. Peak memory: one extra run of each contender under
//! `/usr/bin/time -f %M` (GNU time, max RSS in KiB), kept out of the timed
//! rounds.
//!
//! With `--doctor`, the same sockets time `tcploop doctor PORT` (one port's
//! whole diagnosis: holders, owners, bind probes, prediction) against
//! `ss -tanp 'sport = :PORT'`, what a user would run to find the holder.
//!
//! `cargo run --release -p tcploop-bench -- scan [--sizes 1000,10000,100000] [--rounds 5]`

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use tcploop::owners::OwnerSource;
use tcploop::scan::{scan, ScanOptions};
use tcploop::sys::bpf::owners::OwnerIter;

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
    let root = is_root();
    println!(
        "namespace: {}",
        if root {
            "plain network namespace (root: the in-kernel owner walk can load)"
        } else {
            "user+net namespace (not root: owners come from /proc)"
        }
    );
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average at start: {}",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
    println!();
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
        let mut c = if root {
            common::sandboxed_netns_only(&tcploop, RANGE, &me, &a)
        } else {
            common::sandboxed(&tcploop, RANGE, &me, &a)
        };
        let status = c.env("TCPLOOP_BIN", &tcploop).status()?;
        anyhow::ensure!(status.success(), "the benchmark inside the sandbox failed");
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average at end: {}",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// Whether this process's effective uid is 0 (`Uid:` of /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
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
    let others = [
        c("ss -tan (no owners)", &["ss", "-tan"]),
        c("ss -tanp", &["ss", "-tanp"]),
        c("lsof -nP -iTCP", &["lsof", "-nP", "-iTCP"]),
    ];
    let mut v = if phase2 {
        vec![
            c(
                "worst case, +1 loop in the largest holder: tcploop scan (11 loops)",
                &[&t, "scan"],
            ),
            c(
                "tcploop scan --owners proc",
                &[&t, "scan", "--owners", "proc"],
            ),
            c(
                "tcploop scan --port (only the largest holder's loop)",
                &[&t, "scan", "--port", &BIG_LOOP.to_string()],
            ),
        ]
    } else {
        vec![
            c("tcploop scan (10 loops, with owners)", &[&t, "scan"]),
            c(
                "tcploop scan --owners proc",
                &[&t, "scan", "--owners", "proc"],
            ),
            c("tcploop scan --no-owners", &[&t, "scan", "--no-owners"]),
        ]
    };
    v.extend(others);
    v
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
        println!(
            "| sockets | tool | median wall | vs {} | max RSS |",
            if args.doctor {
                "tcploop doctor"
            } else {
                "tcploop scan"
            }
        );
        println!("| ---: | --- | ---: | ---: | ---: |");
        let source = measure(args, tcploop, &scratch, (size, seen), 10, false)?;
        // the worst case for the owner lookup: a loop in the largest holder
        hs[0].add_loop(BIG_LOOP)?;
        measure(args, tcploop, &scratch, (size, seen + 1), 11, true)?;
        println!();
        println!("owners from: {source}");
        println!();
        strategies(args.rounds)?;
        println!();
        drop(hs);
    }
    Ok(())
}

/// Times the contenders; returns the owner source `tcploop scan` used.
fn measure(
    args: &Args,
    tcploop: &Path,
    scratch: &Path,
    (size, seen): (u64, u64),
    want_loops: u64,
    phase2: bool,
) -> anyhow::Result<String> {
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
    let source = summary["data"]["owners_source"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let source = match summary["data"]["owners_fallback"].as_str() {
        Some(why) => format!("{source} (BPF not used: {why})"),
        None => source,
    };
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
            medians[i] / medians[0],
            rss as f64 / 1024.0
        );
    }
    Ok(source)
}

/// The owner lookup's strategies, timed apart in this process (medians of
/// `rounds`, alternating): is it faster to test the loop condition in the
/// kernel while the dump runs, or to dump first and hand the iterator the
/// loops' inodes through a map?
fn strategies(rounds: usize) -> anyhow::Result<()> {
    // the result is dropped inside the timing: freeing is part of the cost
    fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<f64> {
        let t = Instant::now();
        drop(f()?);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
    let no_owners = ScanOptions {
        no_owners: true,
        ..ScanOptions::default()
    };
    let kernel = ScanOptions {
        owners: OwnerSource::Bpf,
        ..ScanOptions::default()
    };
    let iter = match OwnerIter::load_with_loop_test() {
        Ok(i) => i,
        Err(e) => {
            println!("(owner lookup strategies not measured: {e})");
            return Ok(());
        }
    };
    let inodes: Vec<u64> = scan(&no_owners)?
        .loops
        .iter()
        .map(|l| u64::from(l.socket.inode))
        .collect();
    let names = [
        "socket dump alone (scan --no-owners, in-process)",
        "loading the iterator (object BTF, verifier with CO-RE, attach)",
        "one pass, the loop condition tested in the kernel",
        "one pass, the dump's inodes looked up in a map",
        "A: load + loop-condition pass in a thread beside the dump",
        "B: load beside the dump, then the inode pass (what scan does)",
    ];
    let beside = || -> anyhow::Result<()> {
        let (dump, pass) = std::thread::scope(|sc| {
            let h = sc.spawn(|| OwnerIter::load_with_loop_test().map(|i| i.loops()));
            let dump = scan(&no_owners);
            (dump, h.join().expect("no panic"))
        });
        let (dump, pass) = (dump?, pass??);
        let wanted: std::collections::HashSet<u64> = dump
            .loops
            .iter()
            .map(|l| u64::from(l.socket.inode))
            .collect();
        let found = pass
            .records
            .iter()
            .filter(|r| wanted.contains(&r.inode))
            .count();
        anyhow::ensure!(found >= wanted.len(), "owners missing");
        Ok(())
    };
    let mut s: Vec<Vec<f64>> = vec![vec![]; 6];
    for round in 0..rounds.max(3) {
        for k in 0..6 {
            match (k + round) % 6 {
                0 => s[0].push(timed(|| Ok(scan(&no_owners)?))?),
                1 => s[1].push(timed(|| Ok(OwnerIter::load()?))?),
                2 => s[2].push(timed(|| Ok(iter.loops()?))?),
                3 => s[3].push(timed(|| Ok(iter.wanted(&inodes)?))?),
                4 => s[4].push(timed(beside)?),
                _ => s[5].push(timed(|| {
                    let r = scan(&kernel)?;
                    anyhow::ensure!(r.owners_unknown == 0, "owners unknown");
                    Ok(())
                })?),
            }
        }
    }
    let m: Vec<f64> = s.iter_mut().map(|v| common::median(v)).collect();
    println!("| owner lookup, by strategy | median |");
    println!("| --- | ---: |");
    for (n, v) in names.iter().zip(&m) {
        println!("| {n} | {v:.1} ms |");
    }
    Ok(())
}
