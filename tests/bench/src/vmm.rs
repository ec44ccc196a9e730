//! `unicri-bench vmm`: unicri's VMM (`unicri-vmm`) against Firecracker on the same tiny test
//! guest (`vmm/tests/guests/hello.S`, assembled here with gcc/ld): time from spawning the VMM
//! to the guest's first line on the serial console, and the VMM process's peak RSS (from
//! `wait4`), over N runs, alternating which VMM goes first in each round.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::report;

/// Options of `unicri-bench vmm`.
#[derive(clap::Args, Debug)]
pub struct VmmArgs {
    /// The unicri VMM binary.
    #[arg(long, default_value = "target/release/unicri-vmm")]
    pub unicri_vmm: PathBuf,
    /// A Firecracker binary (built outside this repository); without it only unicri runs.
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Measured runs per VMM and guest.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Warm-up runs (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Markdown report.
    #[arg(long, default_value = "BENCHMARKS-vmm.md")]
    pub out: PathBuf,
}

/// One run: time to the guest's first output, the VMM's peak RSS (KiB) then.
#[derive(Clone, Copy, Debug)]
struct Sample {
    first_output: Duration,
    maxrss_kib: i64,
}

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vmm/tests/guests")
}

/// Assembles the test guest; `pvh` keeps the PVH note.
fn build_guest(dir: &Path, pvh: bool) -> Result<PathBuf> {
    let name = if pvh { "hello-pvh" } else { "hello-64" };
    let (obj, elf) = (
        dir.join(format!("{name}.o")),
        dir.join(format!("{name}.elf")),
    );
    let mut cc = Command::new("gcc");
    cc.args(["-c", "-x", "assembler-with-cpp", "-DWAIT"]);
    if !pvh {
        cc.arg("-DNO_PVH");
    }
    ensure!(
        cc.arg(guests_dir().join("hello.S"))
            .arg("-o")
            .arg(&obj)
            .status()
            .context("gcc")?
            .success(),
        "assembling the test guest failed"
    );
    ensure!(
        Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "-z",
                "noexecstack"
            ])
            .arg("--build-id=none")
            .arg("-T")
            .arg(guests_dir().join("guest.ld"))
            .arg(&obj)
            .arg("-o")
            .arg(&elf)
            .status()
            .context("ld")?
            .success(),
        "linking the test guest failed"
    );
    Ok(elf)
}

/// The `VmHWM` (peak resident set of the current image, KiB) of `pid`.
fn vm_hwm(pid: u32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Spawns `cmd`, reads its stdout until `marker` (the guest then halts), reads the VMM's
/// `VmHWM` (the peak RSS of the VMM image itself: `wait4`'s `ru_maxrss` would include the
/// forking parent's pages), then kills and reaps it.
fn run_once(mut cmd: Command, marker: &str) -> Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("spawn the VMM")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first = None;
    while first.is_none() {
        let n = out.read(&mut buf).context("read the console")?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(marker) {
            first = Some(t0.elapsed());
        }
    }
    let hwm = vm_hwm(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let Some(first_output) = first else {
        bail!(
            "the guest never printed {marker:?}; console: {}",
            String::from_utf8_lossy(&seen)
        );
    };
    Ok(Sample {
        first_output,
        maxrss_kib: hwm.context("the VMM exited before its memory could be read")?,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Engine {
    name: String,
    command: Box<dyn Fn() -> Command>,
    marker: &'static str,
    samples: Vec<Sample>,
}

/// Runs the benchmark and writes the report.
pub fn run(a: &VmmArgs) -> Result<()> {
    ensure!(
        a.unicri_vmm.exists(),
        "{} missing (cargo build --release -p unicri-vmm)",
        a.unicri_vmm.display()
    );
    ensure!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing");
    let dir = tempfile::tempdir()?;
    let pvh = build_guest(dir.path(), true)?;
    let long = build_guest(dir.path(), false)?;
    let started = report::utc_now();
    let load_before = report::loadavg();
    let mut engines: Vec<Engine> = Vec::new();
    for (guest, label, marker) in [
        (&long, "64-bit entry", "hello from a 64-bit guest"),
        (&pvh, "PVH entry", "hello from a PVH guest"),
    ] {
        let (bin, g) = (a.unicri_vmm.clone(), guest.clone());
        engines.push(Engine {
            name: format!("unicri-vmm, {label}"),
            command: Box::new(move || {
                let mut c = Command::new(&bin);
                c.arg("--kernel").arg(&g).args(["--mem-mib", "128"]);
                c
            }),
            marker,
            samples: Vec::new(),
        });
        if let Some(fc) = &a.firecracker {
            let cfg = dir.path().join(format!(
                "fc-{}.json",
                if marker.contains("PVH") { "pvh" } else { "64" }
            ));
            std::fs::write(
                &cfg,
                serde_json::json!({
                    "boot-source": {
                        "kernel_image_path": guest,
                        "boot_args": "console=ttyS0 reboot=k panic=-1"
                    },
                    "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
                    "drives": []
                })
                .to_string(),
            )?;
            let fc = fc.clone();
            engines.push(Engine {
                name: format!("Firecracker, {label}"),
                command: Box::new(move || {
                    let mut c = Command::new(&fc);
                    // its own log goes to stdout by default, interleaved with the console
                    c.arg("--no-api").arg("--config-file").arg(&cfg).args([
                        "--log-path",
                        "/dev/null",
                        "--level",
                        "Error",
                    ]);
                    c
                }),
                marker,
                samples: Vec::new(),
            });
        }
    }
    // an engine that cannot boot a guest is reported, not fatal
    let mut failures: Vec<(String, String)> = Vec::new();
    for round in 0..a.warmup + a.runs {
        let n = engines.len();
        for k in 0..n {
            let e = &mut engines[(k + round) % n];
            if failures.iter().any(|(name, _)| *name == e.name) {
                continue;
            }
            match run_once((e.command)(), e.marker) {
                Ok(s) if round >= a.warmup => e.samples.push(s),
                Ok(_) => {}
                Err(err) => failures.push((e.name.clone(), format!("{err:#}"))),
            }
        }
    }
    let load_after = report::loadavg();
    let finished = report::utc_now();

    let mut md = String::new();
    md.push_str("## VMM start and memory: unicri-vmm vs Firecracker\n\n");
    md.push_str(&format!(
        "Generated by `unicri-bench vmm` (crate `tests/bench`). Each run spawns the VMM on the \
         project's test guest (`vmm/tests/guests/hello.S` built with `-DWAIT`: prints one line on \
         the 8250 serial port, then halts with interrupts off), 1 vCPU, 128 MiB; the time is \
         from spawn to the guest's line arriving on the VMM's stdout; the memory is the VMM \
         process's `VmHWM` (peak RSS of its own image, guest pages it touched included) read \
         right then, before it is killed. {} measured runs per row after {} warm-up rounds; \
         the VMMs alternate which goes first in each round.\n\n",
        a.runs, a.warmup
    ));
    md.push_str("| VMM, guest entry | first output p50 (ms) | p90 | min / max | VMM peak RSS median (KiB) |\n|---|---:|---:|---:|---:|\n");
    let mut p50s: Vec<(String, Duration, i64)> = Vec::new();
    for e in &engines {
        if e.samples.is_empty() {
            continue;
        }
        let mut first: Vec<Duration> = e.samples.iter().map(|s| s.first_output).collect();
        first.sort();
        let mut rss: Vec<i64> = e.samples.iter().map(|s| s.maxrss_kib).collect();
        rss.sort();
        let rss_med = rss[rss.len() / 2];
        md.push_str(&format!(
            "| {} | **{}** | {} | {} / {} | **{}** |\n",
            e.name,
            ms(percentile(&first, 0.5)),
            ms(percentile(&first, 0.9)),
            ms(first[0]),
            ms(first[first.len() - 1]),
            rss_med
        ));
        p50s.push((e.name.clone(), percentile(&first, 0.5), rss_med));
    }
    for (u, f) in [
        ("unicri-vmm, 64-bit entry", "Firecracker, 64-bit entry"),
        ("unicri-vmm, PVH entry", "Firecracker, PVH entry"),
    ] {
        let (Some(u), Some(f)) = (
            p50s.iter().find(|x| x.0 == u),
            p50s.iter().find(|x| x.0 == f),
        ) else {
            continue;
        };
        md.push_str(&format!(
            "\n{} / {}: first output {:.2}×, peak RSS {:.2}×",
            u.0,
            f.0,
            u.1.as_secs_f64() / f.1.as_secs_f64().max(1e-9),
            u.2 as f64 / (f.2 as f64).max(1.0)
        ));
    }
    md.push('\n');
    if !failures.is_empty() {
        md.push_str("\nEngines that could not run the guest:\n\n");
        for (name, why) in &failures {
            md.push_str(&format!("- {name}: {why}\n"));
        }
    }
    md.push_str("\n### Machine and run\n\n");
    md.push_str(&format!("- date: {started} to {finished} (UTC)\n"));
    md.push_str(&format!(
        "- kernel: {}; KVM: {}\n",
        crate::procs::command_line_output("uname", &["-r"]),
        if Path::new("/sys/module/kvm_pvm").exists() {
            "PVM (kvm_pvm)"
        } else {
            "hardware"
        }
    ));
    md.push_str(&format!(
        "- load average before / after: {load_before} / {load_after}\n"
    ));
    md.push_str(&format!(
        "- unicri-vmm: `{}` ({} bytes)\n",
        a.unicri_vmm.display(),
        std::fs::metadata(&a.unicri_vmm)
            .map(|m| m.len())
            .unwrap_or(0)
    ));
    if let Some(fc) = &a.firecracker {
        md.push_str(&format!(
            "- firecracker: `{}` ({})\n",
            fc.display(),
            crate::procs::command_line_output(&fc.to_string_lossy(), &["--version"])
        ));
    }
    std::fs::write(&a.out, &md).with_context(|| format!("write {}", a.out.display()))?;
    println!("{md}");
    Ok(())
}
