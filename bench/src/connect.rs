//! Benchmark: connect (not written yet).

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the connect benchmark is not written yet")
}
