//! `tcploop connect` against a minimal C reproducer equivalent to the
//! article's program (written and compiled here with `cc -O2`), inside a
//! sandbox, against a closed port that cannot loop (odd, `--force`), so that
//! both run exactly `--tries` refused connects. Three variants: one socket
//! reused (the article's program), a fresh socket per try (the article's
//! pseudo-code), and the reused socket with two threads. Each contender
//! reports its own loop rate (tries / time in the loop); rounds alternate
//! the order of the two contenders.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (each runs every variant once per contender)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Refused connects per run
    #[arg(long, default_value_t = 200_000)]
    tries: u64,
}

/// The article's program, fixed (its malloc size, braces and empty address
/// are broken as printed), with a mode, threads and a try limit added so
/// it can be compared run for run. SO_REUSEADDR as in the article.
const C_SOURCE: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in remote;
static long max_tries;
static int fresh;
static atomic_long tries;
static atomic_int found;

static int new_socket(void) {
    int opt = 1;
    int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (fd < 0) { perror("socket"); exit(2); }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &opt, sizeof(opt));
    return fd;
}

static void *worker(void *arg) {
    (void)arg;
    int fd = new_socket();
    long n = 0;
    while (!atomic_load_explicit(&found, memory_order_relaxed)) {
        if (atomic_fetch_add_explicit(&tries, 1, memory_order_relaxed) >= max_tries) break;
        if (fresh && n++ > 0) { close(fd); fd = new_socket(); }
        if (connect(fd, (struct sockaddr *)&remote, sizeof(remote)) == 0) {
            atomic_store(&found, 1);
            break;
        }
    }
    close(fd);
    return NULL;
}

int main(int argc, char *argv[]) {
    if (argc != 5) { fprintf(stderr, "usage: %s PORT reuse|fresh JOBS MAX\n", argv[0]); return 2; }
    memset(&remote, 0, sizeof(remote));
    remote.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
    remote.sin_port = htons(atoi(argv[1]));
    fresh = strcmp(argv[2], "fresh") == 0;
    int jobs = atoi(argv[3]);
    max_tries = atol(argv[4]);
    pthread_t t[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < jobs; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < jobs; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    long n = atomic_load(&tries);
    if (n > max_tries) n = max_tries;
    printf("%ld %.6f %d\n", n, s, atomic_load(&found));
    return 0;
}
"#;

fn build_c() -> anyhow::Result<PathBuf> {
    let dir = common::scratch("connect")?;
    let src = dir.join("tcploop_c.c");
    let bin = dir.join("tcploop_c");
    std::fs::write(&src, C_SOURCE)?;
    let st = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()?;
    anyhow::ensure!(st.success(), "cc failed");
    Ok(bin)
}

const RANGE: &str = "40000-40009";
const PORT: &str = "40005";

fn run_c(tcploop: &Path, c: &Path, mode: &str, jobs: u32, tries: u64) -> anyhow::Result<f64> {
    let o = common::sandboxed(
        tcploop,
        RANGE,
        c,
        &[
            PORT.into(),
            mode.into(),
            jobs.to_string(),
            tries.to_string(),
        ],
    )
    .output()?;
    anyhow::ensure!(o.status.success(), "C reproducer failed: {:?}", o);
    let text = String::from_utf8(o.stdout)?;
    let f: Vec<&str> = text.split_whitespace().collect();
    anyhow::ensure!(f.len() == 3 && f[2] == "0", "C reproducer said {text:?}");
    let n: f64 = f[0].parse()?;
    let s: f64 = f[1].parse()?;
    anyhow::ensure!(n as u64 == tries, "C made {n} tries");
    Ok(n / s)
}

fn run_tcploop(tcploop: &Path, mode: &str, jobs: u32, tries: u64) -> anyhow::Result<f64> {
    let mode_flag = if mode == "fresh" {
        "--fresh-socket"
    } else {
        "--reuse-socket"
    };
    let args: Vec<String> = [
        "connect",
        PORT,
        "--force",
        "--reuseaddr",
        "--json",
        mode_flag,
        "--jobs",
        &jobs.to_string(),
        "--max-tries",
        &tries.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = common::sandboxed(tcploop, RANGE, tcploop, &args).output()?;
    let text = String::from_utf8(o.stdout)?;
    let result = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "result")
        .ok_or_else(|| anyhow::anyhow!("no result line from tcploop: {text}"))?;
    let d = &result["data"];
    anyhow::ensure!(d["outcome"] == "gave-up", "tcploop said {d}");
    anyhow::ensure!(d["tries"] == tries, "tcploop made {} tries", d["tries"]);
    d["tries_per_s"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no rate"))
}

/// Runs the benchmark and prints a Markdown table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let tcploop = common::tcploop_bin()?;
    let c = build_c()?;
    let variants = [("reuse", 1u32), ("fresh", 1), ("reuse", 2)];
    let mut rates: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![(vec![], vec![], vec![]); 3];
    for round in 0..args.rounds {
        for (i, &(mode, jobs)) in variants.iter().enumerate() {
            let (t, cr) = if round % 2 == 0 {
                let t = run_tcploop(&tcploop, mode, jobs, args.tries)?;
                (t, run_c(&tcploop, &c, mode, jobs, args.tries)?)
            } else {
                let cr = run_c(&tcploop, &c, mode, jobs, args.tries)?;
                (run_tcploop(&tcploop, mode, jobs, args.tries)?, cr)
            };
            eprintln!("round {round} {mode} x{jobs}: tcploop {t:.0}/s  C {cr:.0}/s");
            rates[i].0.push(t);
            rates[i].1.push(cr);
            rates[i].2.push(t / cr);
        }
    }
    println!(
        "| variant | tcploop tries/s (median) | C tries/s (median) | ratio tcploop/C (median of rounds) | min..max ratio |"
    );
    println!("|---|---:|---:|---:|---|");
    for (i, &(mode, jobs)) in variants.iter().enumerate() {
        let (t, c, r) = &mut rates[i];
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "| {}-socket, {jobs} job{} | {:.0} | {:.0} | {:.3} | {lo:.3}..{hi:.3} |",
            mode,
            if jobs > 1 { "s" } else { "" },
            common::median(t),
            common::median(c),
            common::median(r),
        );
    }
    Ok(())
}
