//! Benchmark: scan (not written yet).

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the scan benchmark is not written yet")
}
