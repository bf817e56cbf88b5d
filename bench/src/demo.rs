//! `tcploop demo` end to end: wall time from exec to exit, namespace set-up,
//! capture, reproduction, drawing and (optionally) the pcap and SVG files
//! included, for IPv4, IPv6, `--odd` (2,000 refused tries, then a loop) and
//! as uid 65534. The comparison is the shortest safe way to reproduce the
//! loop by hand, *without* seeing any packet: `unshare -rn`, `ip link set lo
//! up`, the port range, and a Python reproducer in the article's style that
//! checks the echo. Rounds alternate the order of the contenders.
//!
//! (Adding `tcpdump` to the by-hand way was tried and left out: inside
//! `unshare -rn` Debian's tcpdump cannot drop privileges and exits, and as
//! root in `unshare -n` 5 of 30 runs stopped writing after 16 packets, the
//! loop's segments missing; the cause was not investigated.)

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (each runs every contender once)
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// The by-hand way, as a shell script run inside `unshare -n`.
const BY_HAND: &str = r#"
set -e
ip link set lo up
echo "40000 40009" > /proc/sys/net/ipv4/ip_local_port_range
python3 -c '
import socket, struct
while True:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 40004))
        break
    except ConnectionRefusedError:
        s.close()
assert s.getsockname() == s.getpeername()
s.sendall(b"tcploop"); assert s.recv(7) == b"tcploop"
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
'
"#;

struct Contender {
    name: &'static str,
    cmd: Box<dyn Fn() -> Command>,
}

fn time_one(c: &Contender) -> anyhow::Result<f64> {
    let mut cmd = (c.cmd)();
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        c.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = common::tcploop_bin()?;
    let dir = common::scratch("demo")?;
    let root = is_root();
    let demo = |extra: &[&str], nobody: bool| {
        let bin = bin.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.arg("demo").args(&extra).stdout(Stdio::null());
            if nobody {
                use std::os::unix::process::CommandExt;
                c.uid(65534).gid(65534);
            }
            c
        }) as Box<dyn Fn() -> Command>
    };
    let pcap = dir.join("loop.pcap");
    let svg = dir.join("loop.svg");
    let (pcap, svg) = (pcap.to_string_lossy(), svg.to_string_lossy());
    let mut contenders = vec![
        Contender {
            name: "tcploop demo",
            cmd: demo(&[], false),
        },
        Contender {
            name: "tcploop demo -6",
            cmd: demo(&["-6"], false),
        },
        Contender {
            name: "tcploop demo --pcap F --svg G",
            cmd: demo(&["--pcap", &pcap, "--svg", &svg], false),
        },
        Contender {
            name: "tcploop demo --odd",
            cmd: demo(&["--odd"], false),
        },
    ];
    if root {
        contenders.push(Contender {
            name: "tcploop demo (as uid 65534)",
            cmd: demo(&[], true),
        });
    }
    contenders.push(Contender {
        name: "by hand, no capture: unshare -rn + ip + python3",
        cmd: Box::new(|| {
            let mut c = Command::new("unshare");
            c.args(["-rn", "sh", "-c", BY_HAND]).stdout(Stdio::null());
            c
        }),
    });
    let mut times: Vec<Vec<f64>> = vec![vec![]; contenders.len()];
    for round in 0..args.rounds {
        let n = contenders.len();
        for k in 0..n {
            let i = (k + round) % n;
            times[i].push(time_one(&contenders[i])?);
        }
    }
    let base = common::median(&mut times[0].clone());
    println!(
        "{} rounds, contenders alternating; wall time from exec to exit, in ms\n",
        args.rounds
    );
    println!("| command | median | p90 | max | median / `tcploop demo` |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (c, t) in contenders.iter().zip(&mut times) {
        let med = common::median(&mut t.clone());
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            c.name,
            med * 1e3,
            pct(t, 0.9) * 1e3,
            pct(t, 1.0) * 1e3,
            med / base
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
