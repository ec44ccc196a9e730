//! `unicri-bench pull`: PullImage timing, unicri vs containerd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::PullArgs;
use crate::images::{self, PushedImage};
use crate::procs;
use crate::report::{self, Meta, Results};
use crate::runtimes::{self, Daemon, Kind};
use unicri_e2e::registry::{REGISTRY_BIN, Registry};

/// Disk growth of a daemon root, over its level right after start, that still counts as "empty"
/// after RemoveImage (metadata databases, logs).
const SLACK: u64 = 8 * 1024 * 1024;
/// How long content may take to disappear after RemoveImage (asynchronous GC).
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything started, for cleanup on any exit path.
#[derive(Default)]
struct Env {
    registry: Option<Registry>,
    daemons: Vec<Daemon>,
}

impl Env {
    async fn stop(&mut self) {
        for d in self.daemons.drain(..) {
            let kind = d.kind;
            for n in d.stop().await {
                eprintln!("  {kind}: {n}");
            }
        }
        // Dropping the registry kills it and removes its storage.
        self.registry.take();
    }
}

/// The unicri binary: the flag, else the workspace's `target/release/unicri`, else
/// `target/debug/unicri`.
pub(crate) fn default_unicri_bin() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let target = target.canonicalize().unwrap_or(target);
    let release = target.join("release/unicri");
    if release.exists() {
        release
    } else {
        target.join("debug/unicri")
    }
}

pub async fn run(args: PullArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let kinds = match args.only {
        Some(k) => vec![k],
        None => vec![Kind::Containerd, Kind::Unicri],
    };
    let unicri_bin = args.unicri_bin.clone().unwrap_or_else(default_unicri_bin);
    let mut specs = images::standard_specs();
    if !args.images.is_empty() {
        for want in &args.images {
            if !specs.iter().any(|s| s.name == want) {
                bail!("unknown image {want:?} (small, five-layer, big)");
            }
        }
        specs.retain(|s| args.images.iter().any(|w| w == s.name));
    }
    let parent = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("unicri-bench-")
        .tempdir_in(&parent)?;
    eprintln!("work dir {}", work.path().display());

    let mut env = Env::default();
    let result = tokio::select! {
        r = body(&args, &kinds, &unicri_bin, &specs, work.path(), &mut env) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    env.stop().await;
    if args.keep {
        eprintln!("work dir kept: {}", work.keep().display());
    } else if result.is_err() {
        // Keep configs and logs for the post-mortem, not the image content.
        for k in kinds {
            let _ = std::fs::remove_dir_all(work.path().join(k.to_string()).join("root"));
        }
        eprintln!("work dir kept (logs): {}", work.keep().display());
    }
    result
}

async fn body(
    args: &PullArgs,
    kinds: &[Kind],
    unicri_bin: &Path,
    specs: &[images::ImageSpec],
    work: &Path,
    env: &mut Env,
) -> Result<()> {
    let started = report::utc_now();
    let load_before = report::loadavg();
    eprintln!("starting docker-registry");
    let reg = Registry::start_plain().await?;
    let host = reg.host();
    eprintln!("building and pushing images to {host}");
    let imgs = images::build_and_push(specs, args.seed, &reg).await?;
    env.registry = Some(reg);
    let hosts_dir = runtimes::write_hosts_dir(&work.join("hosts.d"), &host)?;

    let mut baselines = BTreeMap::new();
    for &k in kinds {
        let bin = match k {
            Kind::Unicri => unicri_bin.to_path_buf(),
            Kind::Containerd => args.containerd_bin.clone(),
        };
        eprintln!("starting {k} ({})", bin.display());
        let d = Daemon::start(k, &bin, work, &hosts_dir).await?;
        eprintln!("  {}: {}", k, d.cri_version);
        for img in &imgs {
            if d.cri.status(&img.reference).await?.is_some() {
                bail!("{k} already has {} before the first pull", img.reference);
            }
        }
        baselines.insert(k, procs::disk_usage(&d.root));
        env.daemons.push(d);
    }

    let mut results = Results::default();
    let total = args.warmup + args.rounds;
    for round in 0..total {
        let measured = round >= args.warmup;
        let label = if measured {
            format!("round {}/{}", round - args.warmup + 1, args.rounds)
        } else {
            format!("warmup {}/{}", round + 1, args.warmup)
        };
        for (ii, img) in imgs.iter().enumerate() {
            let mut order: Vec<usize> = (0..env.daemons.len()).collect();
            if (round + ii) % 2 == 1 {
                order.reverse();
            }
            for di in order {
                let d = &env.daemons[di];
                let base = baselines.get(&d.kind).copied().unwrap_or(0);
                let (took, disk) = pull_once(d, img, base).await.with_context(|| {
                    format!(
                        "{} {label} {}; daemon log {}",
                        d.kind,
                        img.name,
                        d.log.display()
                    )
                })?;
                eprintln!(
                    "  {label:<12} {:<10} {:<10} {:>8.3} s  ({:.1} MiB on disk)",
                    img.name,
                    d.kind.to_string(),
                    took.as_secs_f64(),
                    disk as f64 / 1048576.0
                );
                if measured {
                    results.add(img.name, d.kind, took, disk);
                }
            }
        }
    }

    let mut meta = Meta::collect(
        (args.rounds, args.warmup, args.seed),
        &env.daemons,
        started,
        load_before,
    );
    meta.registry_version = procs::command_line_output(REGISTRY_BIN, &["--version"]);
    let md = report::markdown(&meta, &imgs, kinds, &results);
    println!("{}", report::table(&imgs, kinds, &results));
    std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// One measured pull: PullImage (timed), disk usage, RemoveImage, then wait until the runtime's
/// root holds nothing of the image any more.
async fn pull_once(d: &Daemon, img: &PushedImage, baseline: u64) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    d.cri.pull(&img.reference).await?;
    let took = t0.elapsed();
    if d.cri.status(&img.reference).await?.is_none() {
        bail!("ImageStatus after a successful PullImage says the image is absent");
    }
    let disk = procs::disk_usage(&d.root).saturating_sub(baseline);
    d.cri.remove(&img.reference).await?;
    if d.cri.status(&img.reference).await?.is_some() {
        bail!("ImageStatus after RemoveImage still finds the image");
    }
    let listed = d.cri.list().await?;
    if listed
        .iter()
        .any(|r| r.contains(&img.manifest_digest) || r == &img.reference)
    {
        bail!("ListImages after RemoveImage still lists it: {listed:?}");
    }
    let deadline = Instant::now() + GONE_TIMEOUT;
    loop {
        let left = leftover_files(&d.root, &img.hexes);
        let usage = procs::disk_usage(&d.root);
        if left.is_empty() && usage <= baseline + SLACK {
            return Ok((took, disk));
        }
        if Instant::now() > deadline {
            bail!(
                "{} s after RemoveImage, the image's content is still on disk ({} bytes above the root's size at start; files named after its digests: {left:?}) — the next pull would not download again",
                GONE_TIMEOUT.as_secs(),
                usage.saturating_sub(baseline),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files under `root` whose names contain one of `hexes` (content-addressed blobs, layer dirs).
fn leftover_files(root: &Path, hexes: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if hexes.iter().any(|h| name.contains(h.as_str())) {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}
