//! Shared by the benchmarks: finding the release binaries, running
//! commands inside a sandbox, statistics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The release `tcploop` binary, built if needed (`TCPLOOP_BIN` overrides).
pub fn tcploop_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TCPLOOP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "tcploop"])
        .current_dir(root())
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --release -p tcploop failed");
    Ok(root().join("target/release/tcploop"))
}

/// `tcploop sandbox --range RANGE -- PROGRAM ARGS`.
pub fn sandboxed(tcploop: &Path, range: &str, program: &Path, args: &[String]) -> Command {
    let mut c = Command::new(tcploop);
    c.args(["sandbox", "--range", range, "--"])
        .arg(program)
        .args(args);
    c
}

/// `tcploop sandbox --netns-only --range RANGE -- PROGRAM ARGS`: a plain
/// network namespace (root only), where the caller keeps its privileges in
/// the initial user namespace (BPF needs them).
pub fn sandboxed_netns_only(
    tcploop: &Path,
    range: &str,
    program: &Path,
    args: &[String],
) -> Command {
    let mut c = Command::new(tcploop);
    c.args(["sandbox", "--netns-only", "--range", range, "--"])
        .arg(program)
        .args(args);
    c
}

/// Median of samples.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A scratch directory under target/bench.
pub fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let d = root().join("target/bench").join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
