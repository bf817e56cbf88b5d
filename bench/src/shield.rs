//! Benchmark: ordinary loopback traffic with and without `tcploop shield`
//! (the bpf mechanism by default, `--mechanism iptables` for the other),
//! and what the shield is for: loops per 100,000 tries.
//!
//! Runs inside `tcploop sandbox --netns-only --range 40000-40009` (root), so
//! the shield is attached to that namespace's `lo`, never the host's. Each
//! round runs every workload once without and once with the shield (which
//! goes first alternates; `tcploop shield on/off` between), and the figure
//! is the median over rounds of the with/without ratio of the rates:
//! - bulk: one connection, 64 KiB writes, bytes/s;
//! - request/response: one connection, 1 byte each way, round trips/s;
//! - connect/accept: fresh connections to a listener, accepted in the same
//!   thread, both ends closed with RST, /s;
//! - refused: connect() to a closed port outside the range, /s, and each
//!   try's latency (p50, p99 over all rounds);
//! - loops per 100k: plain connect() to 40004 in the 10-port range, fresh
//!   socket each try, once without and once with the shield.
//!
//! `cargo run --release -p tcploop-bench -- shield [--rounds 11] [--mechanism bpf]`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (each: every workload without and with the shield)
    #[arg(long, default_value_t = 11)]
    rounds: u32,
    /// The mechanism: bpf or iptables
    #[arg(long, default_value = "bpf")]
    mechanism: String,
    /// Tries for the loop count (each contender)
    #[arg(long, default_value_t = 100_000)]
    loop_tries: u32,
    /// Run the measurement here (inside the sandbox), with this tcploop
    #[arg(long, hide = true)]
    inner: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(tcploop) = &args.inner {
        return measure(&args, tcploop);
    }
    let tcploop = common::tcploop_bin()?;
    let me = std::env::current_exe()?;
    let status = Command::new(&tcploop)
        .args(["sandbox", "--netns-only", "--range", "40000-40009", "--"])
        .arg(me)
        .args([
            "shield",
            "--rounds",
            &args.rounds.to_string(),
            "--mechanism",
            &args.mechanism,
            "--loop-tries",
            &args.loop_tries.to_string(),
            "--inner",
        ])
        .arg(&tcploop)
        .status()?;
    anyhow::ensure!(status.success(), "the sandboxed benchmark failed");
    Ok(())
}

const BULK_PORT: u16 = 50_100;
const RR_PORT: u16 = 50_101;
const ACCEPT_PORT: u16 = 50_102;
const CLOSED_PORT: u16 = 50_103;
const LOOP_PORT: u16 = 40_004;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn shield(tcploop: &Path, on: bool, mechanism: &str) -> anyhow::Result<()> {
    let mut c = Command::new(tcploop);
    c.args(["shield", if on { "on" } else { "off" }]);
    if on {
        c.args(["--mechanism", mechanism]);
    }
    let o = c.output()?;
    anyhow::ensure!(
        o.status.success(),
        "tcploop shield: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn rst_close(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// Bytes per second over one loopback connection.
fn bulk() -> f64 {
    const TOTAL: usize = 512 << 20;
    let l = TcpListener::bind(addr(BULK_PORT)).unwrap();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < TOTAL {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        rst_close(s);
    });
    let mut s = TcpStream::connect(addr(BULK_PORT)).unwrap();
    let buf = vec![7u8; 1 << 16];
    let t = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        s.write_all(&buf).unwrap();
        sent += buf.len();
    }
    rx.join().unwrap();
    let r = TOTAL as f64 / t.elapsed().as_secs_f64();
    rst_close(s);
    r
}

/// 1-byte round trips per second.
fn request_response() -> f64 {
    const N: u32 = 20_000;
    let l = TcpListener::bind(addr(RR_PORT)).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        for _ in 0..N {
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
        rst_close(s);
    });
    let mut s = TcpStream::connect(addr(RR_PORT)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [1u8; 1];
    let t = Instant::now();
    for _ in 0..N {
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
    }
    let r = N as f64 / t.elapsed().as_secs_f64();
    echo.join().unwrap();
    rst_close(s);
    r
}

/// Connections (connect, then accept, in one thread) per second. A
/// connect() that fails is retried (a port reused right after an RST close
/// is, rarely, reset: that happens with and without the shield alike).
fn connect_accept() -> f64 {
    const N: u32 = 5_000;
    let l = TcpListener::bind(addr(ACCEPT_PORT)).unwrap();
    let t = Instant::now();
    let mut done = 0;
    while done < N {
        let Ok(s) = TcpStream::connect(addr(ACCEPT_PORT)) else {
            continue;
        };
        let (a, _) = l.accept().unwrap();
        rst_close(a);
        rst_close(s);
        done += 1;
    }
    N as f64 / t.elapsed().as_secs_f64()
}

/// Refused connects per second, and each one's latency (ns).
fn refused(lat: &mut Vec<f64>) -> f64 {
    const N: u32 = 10_000;
    let t = Instant::now();
    for _ in 0..N {
        let t1 = Instant::now();
        let r = TcpStream::connect(addr(CLOSED_PORT));
        lat.push(t1.elapsed().as_nanos() as f64);
        assert!(r.is_err());
    }
    N as f64 / t.elapsed().as_secs_f64()
}

/// Loops among `n` plain connects to the loop port.
fn loops(n: u32) -> (u32, u32) {
    let (mut loops, mut refused) = (0, 0);
    for _ in 0..n {
        match TcpStream::connect(addr(LOOP_PORT)) {
            Ok(s) => {
                if s.local_addr().ok() == s.peer_addr().ok() {
                    loops += 1;
                }
                rst_close(s);
            }
            Err(_) => refused += 1,
        }
    }
    (loops, refused)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

const RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

fn measure(args: &Args, tcploop: &Path) -> anyhow::Result<()> {
    let m = args.mechanism.as_str();
    shield(tcploop, false, m)?;
    // The workloads get a wide range of their own (a 10-port range runs out
    // of ports for thousands of connections); the loop count the narrow one.
    std::fs::write(RANGE_FILE, "41000 49999")?;
    let names = ["bulk", "request/response", "connect/accept", "refused"];
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut rates: Vec<[Vec<f64>; 2]> = vec![[vec![], vec![]]; names.len()];
    let mut lat: [Vec<f64>; 2] = [vec![], vec![]];
    for round in 0..args.rounds {
        let mut got = [[0f64; 4]; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            shield(tcploop, on, m)?;
            let i = on as usize;
            got[i] = [
                bulk(),
                request_response(),
                connect_accept(),
                refused(&mut lat[i]),
            ];
        }
        shield(tcploop, false, m)?;
        for k in 0..names.len() {
            ratios[k].push(got[1][k] / got[0][k]);
            rates[k][0].push(got[0][k]);
            rates[k][1].push(got[1][k]);
        }
    }
    println!(
        "shield ({m}) against no shield, {} rounds, median of per-round ratios (with/without):",
        args.rounds
    );
    for (k, n) in names.iter().enumerate() {
        let unit = if k == 0 { "MB/s" } else { "/s" };
        let scale = if k == 0 { 1e-6 } else { 1.0 };
        println!(
            "  {n:<18} ratio {:.3}   (without {:.0} {unit}, with {:.0} {unit})",
            common::median(&mut ratios[k].clone()),
            common::median(&mut rates[k][0].clone()) * scale,
            common::median(&mut rates[k][1].clone()) * scale,
        );
    }
    for (i, what) in ["without", "with"].iter().enumerate() {
        let (p50, p99) = (
            percentile(&mut lat[i], 0.5) / 1e3,
            percentile(&mut lat[i], 0.99) / 1e3,
        );
        println!("  refused-try latency {what:<7} p50 {p50:.1} us, p99 {p99:.1} us");
    }
    std::fs::write(RANGE_FILE, "40000 40009")?;
    let (l0, r0) = loops(args.loop_tries);
    shield(tcploop, true, m)?;
    let (l1, r1) = loops(args.loop_tries);
    shield(tcploop, false, m)?;
    let per100k = |l: u32| l as f64 * 100_000.0 / args.loop_tries as f64;
    println!(
        "  loops per 100k tries to 40004 (range 40000-40009): without {:.0} ({l0} loops, {r0} refused), with {:.0} ({l1} loops, {r1} refused)",
        per100k(l0),
        per100k(l1)
    );
    Ok(())
}
