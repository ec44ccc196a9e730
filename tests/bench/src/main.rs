//! `unicri-bench`: unicri against containerd, over CRI only, on this machine.
//!
//! `unicri-bench pull` starts a local `docker-registry`, pushes three generated images, starts
//! both runtimes on private roots with the same `hosts.toml`, and times `PullImage` (download +
//! unpack) round by round, removing the image after each pull so every pull downloads again.
//!
//! `unicri-bench pods` pushes a busybox image (and a pause image for containerd), gives both
//! runtimes the same bridge + host-local + portmap CNI conflist (each its own bridge and /24),
//! and measures RunPodSandbox latency, pod + container start, 50 pods started in parallel, and
//! the proportional memory (PSS) of each runtime's management processes at 0 and 50 pods.

mod cri;
mod images;
mod pods;
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
    /// Pod sandbox and container start latency, 50 pods in parallel, management memory.
    Pods(PodsArgs),
}

/// Options of `unicri-bench pods`.
#[derive(clap::Args, Debug)]
pub struct PodsArgs {
    /// Serial RunPodSandbox calls per runtime (phase 1).
    #[arg(long, default_value_t = 100)]
    pub sandboxes: usize,
    /// Measured pod + container starts per runtime (phase 2).
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// Unmeasured pod + container starts per runtime before the measured phases.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Pod + container starts per runtime on a runtime with no other pod (unicri: its keeper
    /// has exited and is started again by the pod's container), reported on their own.
    #[arg(long, default_value_t = 5)]
    pub cold_rounds: usize,
    /// Pods started in parallel (phase 3).
    #[arg(long, default_value_t = 50)]
    pub parallel: usize,
    /// Rounds of the parallel phase (each runtime once per round, alternating who goes first).
    #[arg(long, default_value_t = 3)]
    pub parallel_rounds: usize,
    /// unicri binary [default: target/release/unicri, else target/debug/unicri]
    #[arg(long)]
    pub unicri_bin: Option<PathBuf>,
    /// containerd binary.
    #[arg(long, default_value = "/usr/bin/containerd")]
    pub containerd_bin: PathBuf,
    /// Directory of the CNI plugins (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "BENCHMARKS-pods.md")]
    pub out: PathBuf,
    /// Benchmark only this runtime.
    #[arg(long, value_enum)]
    pub only: Option<Kind>,
    /// Parent of the temporary work dir (registry storage, daemon roots, logs).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work dir (logs, roots) after the run.
    #[arg(long)]
    pub keep: bool,
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
        Cmd::Pods(args) => pods::run(args).await,
    }
}
