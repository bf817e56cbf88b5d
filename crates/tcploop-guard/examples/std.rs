//! A client that keeps reconnecting to a server that is down, the way
//! services and test suites do, with and without the guard.
//!
//! ```text
//! cargo build -p tcploop-guard --example std
//! # in a namespace whose ephemeral range is 10 ports, a loop comes fast:
//! tcploop sandbox --range 40000-40009 -- target/debug/examples/std 127.0.0.1:40004 --plain
//! tcploop sandbox --range 40000-40009 -- target/debug/examples/std 127.0.0.1:40004
//! tcploop sandbox --range 40000-40009 -- target/debug/examples/std 127.0.0.1:40004 --retries=0
//! ```
//!
//! Usage: `std ADDR [TRIES] [--plain | --retries=N]`. With `--plain` it uses
//! `std::net::TcpStream::connect` and stops at the first stream connected to
//! itself; without, the guard (`tcploop_guard::connect`), which never
//! returns one; `--retries=0` shows the loops the guard meets, refused
//! instead of returned.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::process::ExitCode;

use tcploop_guard::{Guard, SelfConnectError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let guard = match args.iter().find_map(|a| a.strip_prefix("--retries=")) {
        None => Guard::new(),
        Some(n) => match n.parse() {
            Ok(n) => Guard::new().retries(n),
            Err(e) => {
                eprintln!("--retries: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut pos = args.iter().filter(|a| !a.starts_with("--"));
    let Some(addr) = pos.next() else {
        eprintln!("usage: std ADDR [TRIES] [--plain | --retries=N]");
        return ExitCode::from(2);
    };
    let tries: u64 = match pos.next().map(|t| t.parse()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("TRIES: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut refused, mut caught, mut other) = (0u64, 0u64, 0u64);
    for i in 1..=tries {
        let r = if plain {
            TcpStream::connect(addr.as_str())
        } else {
            guard.connect(addr.as_str())
        };
        match r {
            Ok(s) => {
                let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
                if tcploop_guard::is_self_connected(&s).unwrap_or(false) {
                    println!("attempt {i}: connected TO ITSELF: local {local} == peer {peer}");
                    return ExitCode::from(1);
                }
                println!("attempt {i}: connected to a real server ({local} -> {peer})");
                return ExitCode::SUCCESS;
            }
            Err(e) if SelfConnectError::of(&e).is_some() => {
                if caught == 0 {
                    println!("attempt {i}: {e}");
                }
                caught += 1;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => {
                other += 1;
                eprintln!("attempt {i}: {e}");
            }
        }
    }
    println!(
        "{tries} attempts with {}: {refused} refused, {caught} refused after {} loop(s) in a row, \
         {other} other errors; no stream connected to itself",
        if plain { "std" } else { "the guard" },
        guard.retry_bound() + 1
    );
    ExitCode::SUCCESS
}
