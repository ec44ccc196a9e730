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
//!
//! `unicri-bench vmm` times unicri's VMM (`unicri-vmm`) and Firecracker on the same tiny test
//! guest: spawn to the guest's first console line, and the VMM's peak RSS.
//!
//! `unicri-bench vm` runs pods of the `vm` handler (a user-mode-Linux kernel per pod):
//! RunPodSandbox → guest agent ready and where that time goes, pod + container start, pods
//! started at once, host memory per pod beyond guest RAM, and how many pods the machine holds.
//!
//! `unicri-bench wasm` runs WebAssembly modules on unicri's `wasm` handler (cold and warm
//! create + start → exited, throughput of 8 parallel workers, memory per sleeping instance),
//! side by side with unicri's `linux` handler and containerd + runc running busybox `true`.

mod cri;
mod exits;
mod images;
mod pods;
mod procs;
mod pull;
mod report;
mod runtimes;
mod vm;
mod vmm;
mod wasm;

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
    /// WebAssembly containers (`wasm` handler): cold and warm start, throughput, memory per
    /// instance; side by side with the `linux` handler and containerd + runc (busybox `true`).
    Wasm(WasmArgs),
    /// unicri's VMM against Firecracker on the same test guest: spawn → first guest output,
    /// peak RSS.
    Vmm(vmm::VmmArgs),
    /// Pods of the `vm` handler (issue 6, `uml` engine): RunPodSandbox → agent ready, pod +
    /// container running, pods started at once, host memory per pod, pods per machine.
    Vm(vm::VmArgs),
}

/// Options of `unicri-bench wasm`.
#[derive(clap::Args, Debug)]
pub struct WasmArgs {
    /// Cold starts (each a module the keeper never saw).
    #[arg(long, default_value_t = 25)]
    pub cold: usize,
    /// Measured warm starts per target.
    #[arg(long, default_value_t = 60)]
    pub warm: usize,
    /// Unmeasured warm starts per target first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// wasm starts right after the wasm keeper exited (module from the disk cache).
    #[arg(long, default_value_t = 5)]
    pub disk_warm: usize,
    /// Containers per throughput round.
    #[arg(long, default_value_t = 400)]
    pub total: usize,
    /// Parallel workers of the throughput phase.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Throughput rounds per target and variant.
    #[arg(long, default_value_t = 3)]
    pub throughput_rounds: usize,
    /// Containers per timed batch in the throughput variant without remove.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Sleeping wasm instances of the memory phase (0: skip it).
    #[arg(long, default_value_t = 100)]
    pub instances: usize,
    /// Only these targets (comma-separated: wasm, linux, containerd).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Vec<wasm::Target>,
    /// Observe containerd's exits through its CRI `GetContainerEvents` too (default: its own
    /// event service, `/tasks/exit`).
    #[arg(long)]
    pub containerd_cri_events: bool,
    /// `UNICRI_LOG` of the unicri daemon and its keepers (e.g. `debug`).
    #[arg(long)]
    pub unicri_log: Option<String>,
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
    #[arg(long, default_value = "BENCHMARKS-wasm.md")]
    pub out: PathBuf,
    /// Parent of the temporary work dir (registry storage, daemon roots, logs).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work dir (logs, roots) after the run.
    #[arg(long)]
    pub keep: bool,
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
        Cmd::Wasm(args) => wasm::run(args).await,
        Cmd::Vm(args) => vm::run(args).await,
        Cmd::Vmm(args) => tokio::task::spawn_blocking(move || vmm::run(&args)).await?,
    }
}
