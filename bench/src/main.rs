//! The comparison harness: tcploop against the tools a user would otherwise
//! use (the article's C program, ss, lsof), as ratios taken in one run,
//! alternating the contenders so that a noisy machine hurts both alike.
//! `cargo run --release -p tcploop-bench -- <area>`; see BENCHMARKS.md.

use clap::{Parser, Subcommand};

mod common;
mod connect;
mod demo;
mod guard;
mod preload;
mod scan;
mod shield;
mod shield_latency;
mod trace;
mod watch;

/// tcploop's benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "tcploop-bench")]
struct Cli {
    #[command(subcommand)]
    area: Area,
}

#[derive(Debug, Subcommand)]
enum Area {
    /// tcploop connect against the article's C reproducer (tries/s)
    Connect(connect::Args),
    /// tcploop scan against ss and lsof at 1k/10k/100k sockets
    Scan(scan::Args),
    /// tcploop demo end to end
    Demo(demo::Args),
    /// tcploop-guard connect against plain TcpStream::connect
    Guard(guard::Args),
    /// a connect-heavy program with and without the preload guard
    Preload(preload::Args),
    /// tcploop watch CPU use
    Watch(watch::Args),
    /// loopback traffic with and without tcploop shield; loops per 100k tries
    Shield(shield::Args),
    /// how soon tcploop shield daemon covers a new namespace
    ShieldLatency(shield_latency::Args),
    /// the eBPF event source: loops caught, latency, host cost, watch CPU
    Trace(trace::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().area {
        Area::Connect(a) => connect::run(a),
        Area::Scan(a) => scan::run(a),
        Area::Demo(a) => demo::run(a),
        Area::Guard(a) => guard::run(a),
        Area::Preload(a) => preload::run(a),
        Area::Watch(a) => watch::run(a),
        Area::Shield(a) => shield::run(a),
        Area::ShieldLatency(a) => shield_latency::run(a),
        Area::Trace(a) => trace::run(a),
    }
}
