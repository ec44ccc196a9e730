//! `unicri-bench`: unicri against containerd, over CRI only, on this machine.
//!
//! `unicri-bench pull` starts a local `docker-registry`, pushes three generated images, starts
//! both runtimes on private roots with the same `hosts.toml`, and times `PullImage` (download +
//! unpack) round by round, removing the image after each pull so every pull downloads again.

mod cri;
mod images;
mod procs;
mod pull;
mod report;
mod runtimes;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::runtimes::Kind;

#[derive(Parser, Debug)]
#[command(
    name = "unicri-bench",
    version,
    about = "unicri vs containerd benchmarks over CRI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Image pull + unpack through CRI PullImage, against a local plain-HTTP registry.
    Pull(PullArgs),
}

/// Options of `unicri-bench pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Measured rounds (each pulls every image once per runtime).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Unmeasured rounds first (warm the registry's page cache and both daemons).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// unicri binary [default: target/release/unicri, else target/debug/unicri]
    #[arg(long)]
    pub unicri_bin: Option<PathBuf>,
    /// containerd binary.
    #[arg(long, default_value = "/usr/bin/containerd")]
    pub containerd_bin: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "BENCHMARKS-pull.md")]
    pub out: PathBuf,
    /// Benchmark only this runtime.
    #[arg(long, value_enum)]
    pub only: Option<Kind>,
    /// Only these images (comma-separated: small, five-layer, big).
    #[arg(long, value_delimiter = ',')]
    pub images: Vec<String>,
    /// Seed of the generated image content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parent of the temporary work dir (registry storage, daemon roots).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work dir (logs, roots) after the run.
    #[arg(long)]
    pub keep: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Pull(args) => pull::run(args).await,
    }
}
