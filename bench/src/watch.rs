//! Benchmark: the CPU that `tcploop watch --interval 1s` costs on a host
//! with many sockets, against what a user would otherwise leave running:
//! a shell loop of `ss -tan` (sockets only) or `ss -tanp` (with the owning
//! processes, which is what naming a loop's owner needs) every second.
//!
//! Everything runs inside a sandbox (a fresh network namespace): the
//! harness re-executes itself there (`--inside`), opens N/2 loopback
//! connections (N sockets), then runs each contender for the same window,
//! alternating them round after round, and reads the CPU time each used
//! from `/proc/PID/stat` (utime + stime, plus cutime + cstime for the shell
//! loops, whose `ss` children it reaps). CPU is given as a percentage of
//! one core over the window.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TCP sockets to hold open (half of them connections' client ends)
    #[arg(long, default_value_t = 10_000)]
    pub sockets: u32,
    /// Seconds each contender runs per round
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Rounds (each runs every contender once, in turn)
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Also make this many network namespaces (idle, as containers mostly
    /// are) and compare `watch --all-netns` with a loop of `nsenter ... ss`
    /// over them instead
    #[arg(long, default_value_t = 0)]
    pub netns: u32,
    /// With --netns: each namespace holds a listening socket (a service),
    /// instead of none
    #[arg(long)]
    pub busy: bool,
    /// Internal: already inside the sandbox
    #[arg(long, hide = true)]
    pub inside: bool,
    /// Internal: the tcploop binary
    #[arg(long, hide = true)]
    pub tcploop: Option<std::path::PathBuf>,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.inside {
        return inside(&args);
    }
    let tcploop = common::tcploop_bin()?;
    let me = std::env::current_exe()?;
    let status = common::sandboxed(
        &tcploop,
        "20000-60999",
        &me,
        &[
            "watch".into(),
            "--inside".into(),
            "--sockets".into(),
            args.sockets.to_string(),
            "--seconds".into(),
            args.seconds.to_string(),
            "--rounds".into(),
            args.rounds.to_string(),
            "--tcploop".into(),
            tcploop.display().to_string(),
            "--netns".into(),
            args.netns.to_string(),
        ]
        .into_iter()
        .chain(args.busy.then(|| "--busy".to_string()))
        .collect::<Vec<_>>(),
    )
    .status()?;
    anyhow::ensure!(status.success(), "the benchmark failed inside the sandbox");
    Ok(())
}

/// (user, system) clock ticks, the reaped children's included.
fn user_sys(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name, which is in parentheses
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14
    let n = |i: usize| f[i - 3].parse::<u64>().unwrap_or(0);
    Ok((n(14) + n(16), n(15) + n(17)))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn raise_nofile() {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

struct Contender {
    name: &'static str,
    spawn: Box<dyn Fn() -> std::io::Result<Child>>,
    samples: Vec<f64>,
}

fn inside(args: &Args) -> anyhow::Result<()> {
    raise_nofile();
    let tcploop = args
        .tcploop
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--tcploop missing"))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(args.sockets as usize);
    for _ in 0..args.sockets / 2 {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        held.push(c);
        held.push(s);
    }
    let sockets = held.len() + 1;
    let scratch = common::scratch("watch")?;
    let textfile = scratch.join("tcploop.prom");
    let tf = textfile.clone();
    let tl = tcploop.clone();
    // Idle namespaces, one `sleep` holding each (`unshare -n`).
    let mut namespaces: Vec<Child> = vec![];
    for _ in 0..args.netns {
        let mut c = Command::new("unshare");
        if args.busy {
            c.args([
                "-n",
                "python3",
                "-c",
                "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',8080))\ns.listen()\ntime.sleep(1e6)",
            ]);
        } else {
            c.args(["-n", "sleep", "100000"]);
        }
        namespaces.push(c.stdout(Stdio::null()).spawn()?);
    }
    let pids: Vec<String> = namespaces.iter().map(|c| c.id().to_string()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut contenders = if args.netns > 0 {
        let (tf, tl) = (tf.clone(), tl.clone());
        let each = format!(
            "for p in {}; do nsenter -t $p -n ss -tan; done; ss -tan",
            pids.join(" ")
        );
        let each_p = each.replace("ss -tan", "ss -tanp");
        vec![
            Contender {
                name: "tcploop watch --all-netns --interval 1s",
                spawn: Box::new(move || {
                    Command::new(&tl)
                        .args(["watch", "--all-netns", "--interval", "1s", "--textfile"])
                        .arg(&tf)
                        .stdout(Stdio::null())
                        .spawn()
                }),
                samples: vec![],
            },
            Contender {
                name: "nsenter -n ss -tan in each, every 1 s",
                spawn: Box::new(move || shell_loop(&each)),
                samples: vec![],
            },
            Contender {
                name: "nsenter -n ss -tanp in each, every 1 s",
                spawn: Box::new(move || shell_loop(&each_p)),
                samples: vec![],
            },
        ]
    } else {
        vec![]
    };
    let mut single = vec![
        Contender {
            name: "tcploop watch --interval 1s",
            spawn: Box::new(move || {
                Command::new(&tl)
                    .args(["watch", "--interval", "1s", "--textfile"])
                    .arg(&tf)
                    .stdout(Stdio::null())
                    .spawn()
            }),
            samples: vec![],
        },
        Contender {
            name: "while :; do ss -tan; sleep 1; done",
            spawn: Box::new(|| shell_loop("ss -tan")),
            samples: vec![],
        },
        Contender {
            name: "while :; do ss -tanp; sleep 1; done",
            spawn: Box::new(|| shell_loop("ss -tanp")),
            samples: vec![],
        },
    ];
    if contenders.is_empty() {
        contenders.append(&mut single);
    }
    let tck = clk_tck();
    let window = Duration::from_secs(args.seconds);
    println!(
        "{sockets} TCP sockets in the namespace, {} more namespaces ({}); {} s a contender, {} rounds, alternating",
        args.netns,
        if args.busy { "a listener in each" } else { "idle" },
        args.seconds,
        args.rounds
    );
    for round in 1..=args.rounds {
        for c in &mut contenders {
            let mut child = (c.spawn)()?;
            // let it start up (and, for watch, do its first scan)
            std::thread::sleep(Duration::from_millis(1500));
            let (u1, s1) = user_sys(child.id())?;
            let start = Instant::now();
            std::thread::sleep(window);
            let (u2, s2) = user_sys(child.id())?;
            let secs = start.elapsed().as_secs_f64();
            let _ = child.kill();
            let _ = child.wait();
            let pct = |t: u64| t as f64 / tck / secs * 100.0;
            let total = pct(u2 + s2 - u1 - s1);
            println!(
                "  round {round}: {:<38} {total:6.2}% of one core (user {:.2}%, system {:.2}%)",
                c.name,
                pct(u2 - u1),
                pct(s2 - s1)
            );
            let pct = total;
            c.samples.push(pct);
        }
    }
    println!();
    println!("| contender | CPU, % of one core (median) | ratio to tcploop watch |");
    println!("| --- | ---: | ---: |");
    let base = common::median(&mut contenders[0].samples.clone());
    for c in &mut contenders {
        let m = common::median(&mut c.samples);
        println!("| `{}` | {m:.2} | {:.1}x |", c.name, m / base);
    }
    if let Ok(text) = std::fs::read_to_string(&textfile) {
        for l in text.lines() {
            if l.starts_with("tcploop_scan_duration_seconds ") || l.starts_with("tcploop_sockets ")
            {
                println!("last watch scan: {l}");
            }
        }
    }
    drop(held);
    for mut n in namespaces {
        let _ = n.kill();
        let _ = n.wait();
    }
    Ok(())
}

fn shell_loop(cmd: &str) -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("while :; do {cmd} >/dev/null; sleep 1; done"))
        .stdout(Stdio::null())
        .spawn()
}
