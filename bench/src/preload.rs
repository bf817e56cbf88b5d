//! Benchmark: what the preload guard costs a connect-heavy program.
//!
//! A C program (`cc -O2`) connects to a live loopback listener in a loop
//! (an accept thread closes each connection; the client closes with
//! `SO_LINGER {1, 0}` so that no TIME_WAIT piles up) and reports its own
//! connects per second, timed around the loop only. It runs in a sandbox
//! (`tcploop sandbox`, the default port range), alternately plain and under
//! `tcploop run`, in two styles: a blocking `connect()` (the guard adds one
//! `getsockname()` per connect) and a non-blocking connect with `poll()` and
//! `getsockopt(SO_ERROR)` (the guard adds `getsockname()` and
//! `getpeername()` per connect). The figure is the median, over rounds, of
//! each round's guarded/plain ratio.
//!
//! The same program, in `udp` mode, sends UDP datagrams with `sendto()` to
//! a socket of its own and receives each: what the guard's `sendto()`
//! interposition (there for TCP Fast Open) costs every other send.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::common;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds (runs of each contender in each setting)
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Connects per run
    #[arg(long, default_value_t = 20_000)]
    connects: u32,
    /// Connects per batch in the one-process comparison
    #[arg(long, default_value_t = 100)]
    batch: u32,
}

const CLIENT: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);

static int lfd;
static struct sockaddr_in a;
static int nonblocking;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* n connections through these functions, each accepted by the listener and
   closed (the client with a RST: no TIME_WAIT piles up); seconds taken. */
static double batch(connect_fn conn, getsockopt_fn gso, long n) {
    struct linger lg = {1, 0};
    double t0 = now();
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (nonblocking) {
            fcntl(fd, F_SETFL, O_NONBLOCK);
            if (conn(fd, (struct sockaddr *)&a, sizeof a) != 0) {
                if (errno != EINPROGRESS) { perror("connect"); exit(1); }
                struct pollfd p = {fd, POLLOUT, 0};
                poll(&p, 1, 5000);
                int e = 0; socklen_t l = sizeof e;
                gso(fd, SOL_SOCKET, SO_ERROR, &e, &l);
                if (e) { fprintf(stderr, "connect: %s\n", strerror(e)); exit(1); }
            }
        } else if (conn(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("connect"); exit(1);
        }
        int c = accept(lfd, NULL, NULL);
        if (c < 0) { perror("accept"); exit(1); }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
        close(c);
    }
    return now() - t0;
}

/* n UDP datagrams sent with this sendto() to a socket of ours on loopback,
   each received at once (so none is dropped); seconds taken. */
static int ufd, urx;
static struct sockaddr_in ua;
static double batch_udp(sendto_fn snd, long n) {
    char b[16] = "tcploop";
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (snd(ufd, b, 8, 0, (struct sockaddr *)&ua, sizeof ua) != 8) { perror("sendto"); exit(1); }
        if (recv(urx, b, sizeof b, 0) != 8) { perror("recv"); exit(1); }
    }
    return now() - t0;
}

static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* connbench STYLE N PORT              -> connects/s through connect() as linked
   connbench STYLE N PORT interleave B  -> pairs of batches of B connects, one
      through connect() as linked (the guard, when preloaded), one through
      libc's own connect()/getsockopt() (dlsym on libc.so.6), in alternating
      order; prints the median over pairs of linked/libc time, and the median
      time of one connection through libc, in ns */
int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) return 2;
    if (strcmp(argv[1], "udp") == 0 && argc == 6) {
        /* udp N - interleave B: sendto() as linked against libc's */
        long n = atol(argv[2]), b = atol(argv[5]);
        ua.sin_family = AF_INET;
        ua.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t ul = sizeof ua;
        urx = socket(AF_INET, SOCK_DGRAM, 0);
        ufd = socket(AF_INET, SOCK_DGRAM, 0);
        if (bind(urx, (struct sockaddr *)&ua, sizeof ua) ||
            getsockname(urx, (struct sockaddr *)&ua, &ul)) { perror("udp"); return 1; }
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        sendto_fn libc_sendto = (sendto_fn)dlsym(libc, "sendto");
        if (!libc_sendto) { fprintf(stderr, "no libc sendto\n"); return 1; }
        long pairs = n / (2 * b);
        double *r = calloc(pairs, sizeof *r), *d = calloc(pairs, sizeof *d);
        batch_udp(libc_sendto, b); /* warm-up */
        for (long i = 0; i < pairs; i++) {
            double linked, direct;
            if (i % 2 == 0) {
                linked = batch_udp(sendto, b);
                direct = batch_udp(libc_sendto, b);
            } else {
                direct = batch_udp(libc_sendto, b);
                linked = batch_udp(sendto, b);
            }
            r[i] = linked / direct;
            d[i] = direct / b * 1e9;
        }
        qsort(r, pairs, sizeof *r, cmp);
        qsort(d, pairs, sizeof *d, cmp);
        printf("%.6f %.1f\n", r[pairs / 2], d[pairs / 2]);
        return 0;
    }
    nonblocking = strcmp(argv[1], "nonblocking") == 0;
    long n = atol(argv[2]);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(atoi(argv[3]));
    socklen_t al = sizeof a;
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 64) ||
        getsockname(lfd, (struct sockaddr *)&a, &al)) { perror("listener"); return 1; }
    if (argc == 4) {
        printf("%.1f\n", n / batch(connect, getsockopt, n));
        return 0;
    }
    long b = atol(argv[5]);
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    connect_fn libc_connect = (connect_fn)dlsym(libc, "connect");
    getsockopt_fn libc_getsockopt = (getsockopt_fn)dlsym(libc, "getsockopt");
    if (!libc_connect || !libc_getsockopt) { fprintf(stderr, "no libc connect\n"); return 1; }
    long pairs = n / (2 * b);
    double *r = calloc(pairs, sizeof *r), *d = calloc(pairs, sizeof *d);
    batch(libc_connect, libc_getsockopt, b); /* warm-up */
    for (long i = 0; i < pairs; i++) {
        double linked, direct;
        if (i % 2 == 0) {
            linked = batch(connect, getsockopt, b);
            direct = batch(libc_connect, libc_getsockopt, b);
        } else {
            direct = batch(libc_connect, libc_getsockopt, b);
            linked = batch(connect, getsockopt, b);
        }
        r[i] = linked / direct;
        d[i] = direct / b * 1e9;
    }
    qsort(r, pairs, sizeof *r, cmp);
    qsort(d, pairs, sizeof *d, cmp);
    printf("%.6f %.1f\n", r[pairs / 2], d[pairs / 2]);
    return 0;
}
"#;

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.connects > 0 && args.batch > 0,
        "nothing to measure"
    );
    let tcploop = common::tcploop_bin()?;
    let lib = preload_lib()?;
    let client = compile()?;
    let b = Bench {
        tcploop: &tcploop,
        lib: &lib,
        client: &client,
    };
    let n = args.connects.to_string();
    println!(
        "preload: {} rounds x {} connects a run; library {}",
        args.rounds,
        args.connects,
        lib.display()
    );
    println!();
    println!(
        "One process, batches of {} connects alternating between connect() as linked and \
         libc's own connect() (dlsym on libc.so.6); under `tcploop run` the first is the guard, \
         without it both are libc (the noise floor):",
        args.batch
    );
    println!();
    println!("| listener port | style | under | time through connect() / through libc | overhead | one connection through libc | added per connection |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for (port_name, port) in PORTS {
        for style in STYLES {
            for guarded in [true, false] {
                let (mut ratios, mut costs) = (vec![], vec![]);
                for _ in 0..args.rounds {
                    let args = [style, &n, port, "interleave", &args.batch.to_string()];
                    let v = parse(&b.one(guarded, &args)?, 2)?;
                    ratios.push(v[0]);
                    costs.push(v[1]);
                }
                let ratio = common::median(&mut ratios);
                let cost = common::median(&mut costs);
                println!(
                    "| {port_name} | {style} | {} | {ratio:.4} | {:+.2}% | {:.1} µs | {:+.0} ns |",
                    if guarded {
                        "tcploop run"
                    } else {
                        "plain (control)"
                    },
                    (ratio - 1.0) * 100.0,
                    cost / 1000.0,
                    (ratio - 1.0) * cost
                );
            }
        }
    }
    println!();
    println!(
        "UDP sendto() without MSG_FASTOPEN (what the Fast Open interposition costs everyone \
         else: one flag test), a datagram sent and received each time, in the same \
         interleaved way:"
    );
    println!();
    println!("| under | time through sendto() / through libc | overhead | one datagram through libc | added per datagram |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for guarded in [true, false] {
        let (mut ratios, mut costs) = (vec![], vec![]);
        for _ in 0..args.rounds {
            let args = ["udp", &n, "-", "interleave", &args.batch.to_string()];
            let v = parse(&b.one(guarded, &args)?, 2)?;
            ratios.push(v[0]);
            costs.push(v[1]);
        }
        let ratio = common::median(&mut ratios);
        let cost = common::median(&mut costs);
        println!(
            "| {} | {ratio:.4} | {:+.2}% | {:.2} µs | {:+.0} ns |",
            if guarded {
                "tcploop run"
            } else {
                "plain (control)"
            },
            (ratio - 1.0) * 100.0,
            cost / 1000.0,
            (ratio - 1.0) * cost
        );
    }
    println!();
    println!("Whole processes, alternating plain and `tcploop run` (the order flips every round):");
    println!();
    println!("| listener port | style | plain (connects/s) | tcploop run (connects/s) | guarded/plain | time overhead |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (port_name, port) in PORTS {
        for style in STYLES {
            let (mut plain, mut guarded, mut ratios) = (vec![], vec![], vec![]);
            for round in 0..args.rounds {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                let mut r = [0.0; 2];
                for g in order {
                    r[usize::from(g)] = parse(&b.one(g, &[style, &n, port])?, 1)?[0];
                }
                plain.push(r[0]);
                guarded.push(r[1]);
                ratios.push(r[1] / r[0]);
            }
            let ratio = common::median(&mut ratios);
            println!(
                "| {port_name} | {style} | {:.0} | {:.0} | {ratio:.3} | {:+.1}% |",
                common::median(&mut plain),
                common::median(&mut guarded),
                (1.0 / ratio - 1.0) * 100.0
            );
        }
    }
    Ok(())
}

const STYLES: [&str; 2] = ["blocking", "nonblocking"];
/// A service port outside the ephemeral range (the common case: no system
/// call added), and an ephemeral port (the listener binds port 0: the worst
/// case, where the guard checks every connection).
const PORTS: [(&str, &str); 2] = [("8080 (service)", "8080"), ("ephemeral", "0")];

struct Bench<'a> {
    tcploop: &'a Path,
    lib: &'a Path,
    client: &'a Path,
}

impl Bench<'_> {
    /// One run of the client in a fresh sandbox; its stdout.
    fn one(&self, guarded: bool, args: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new(self.tcploop);
        c.args(["sandbox", "--"]);
        if guarded {
            c.arg(self.tcploop).args(["run", "--"]);
        }
        c.arg(self.client)
            .args(args)
            .env("TCPLOOP_PRELOAD", self.lib);
        let o = c.output().with_context(|| format!("running {c:?}"))?;
        anyhow::ensure!(
            o.status.success(),
            "{c:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

/// The `n` numbers the client printed.
fn parse(out: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let v = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<f64>, _>>()
        .with_context(|| format!("bad client output {out:?}"))?;
    anyhow::ensure!(v.len() == n, "bad client output {out:?}");
    Ok(v)
}

/// The release preload library, built if needed (`TCPLOOP_PRELOAD` overrides).
fn preload_lib() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TCPLOOP_PRELOAD") {
        return Ok(PathBuf::from(p));
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "tcploop-preload"])
        .current_dir(common::root())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "cargo build --release -p tcploop-preload failed"
    );
    Ok(common::root().join("target/release/libtcploop_preload.so"))
}

fn compile() -> anyhow::Result<PathBuf> {
    let dir = common::scratch("preload")?;
    let src = dir.join("connbench.c");
    let bin = dir.join("connbench");
    std::fs::write(&src, CLIENT)?;
    let o = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-ldl")
        .output()
        .context("running cc")?;
    anyhow::ensure!(
        o.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(bin)
}
