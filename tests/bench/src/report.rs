//! Statistics and the markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::images::PushedImage;
use crate::procs;
use crate::runtimes::{Daemon, Kind};

const MIB: f64 = 1024.0 * 1024.0;

/// Measured samples per (image, runtime).
#[derive(Default, Debug)]
pub struct Results {
    samples: BTreeMap<(String, String), Vec<Duration>>,
    disk: BTreeMap<(String, String), Vec<u64>>,
}

impl Results {
    /// Records one measured pull.
    pub fn add(&mut self, image: &str, kind: Kind, took: Duration, disk: u64) {
        let key = (image.to_string(), kind.to_string());
        self.samples.entry(key.clone()).or_default().push(took);
        self.disk.entry(key).or_default().push(disk);
    }

    fn stats(&self, image: &str, kind: Kind) -> Option<Stats> {
        let v = self.samples.get(&(image.to_string(), kind.to_string()))?;
        Stats::of(v)
    }

    fn disk(&self, image: &str, kind: Kind) -> Option<u64> {
        let v = self.disk.get(&(image.to_string(), kind.to_string()))?;
        let mut v = v.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    fn raw(&self, image: &str, kind: Kind) -> String {
        self.samples
            .get(&(image.to_string(), kind.to_string()))
            .map(|v| {
                v.iter()
                    .map(|d| format!("{:.3}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }
}

/// min / median / max in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(v: &[Duration]) -> Option<Stats> {
        let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            min: s[0],
            median,
            max: s[n - 1],
        })
    }

    fn cell(&self) -> String {
        format!("{:.3} / **{:.3}** / {:.3}", self.min, self.median, self.max)
    }
}

fn ratio(imgname: &str, kinds: &[Kind], r: &Results) -> String {
    if !(kinds.contains(&Kind::Unicri) && kinds.contains(&Kind::Containerd)) {
        return "n/a".into();
    }
    match (
        r.stats(imgname, Kind::Unicri),
        r.stats(imgname, Kind::Containerd),
    ) {
        (Some(u), Some(c)) if c.median > 0.0 => format!("{:.2}", u.median / c.median),
        _ => "n/a".into(),
    }
}

/// The results table (markdown, also printed to stdout).
pub fn table(imgs: &[PushedImage], kinds: &[Kind], r: &Results) -> String {
    let mut s = String::new();
    let _ = write!(s, "| image | layers | download MiB | unpacked MiB |");
    for k in kinds {
        let _ = write!(s, " {k} min / **median** / max (s) |");
    }
    s.push_str(" unicri / containerd (median) |\n|---|---:|---:|---:|");
    for _ in kinds {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    for img in imgs {
        let _ = write!(
            s,
            "| {} | {} | {:.1} | {:.1} |",
            img.name,
            img.layers,
            img.compressed as f64 / MIB,
            img.uncompressed as f64 / MIB
        );
        for &k in kinds {
            let cell = r
                .stats(img.name, k)
                .map(|st| st.cell())
                .unwrap_or_else(|| "-".into());
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s, " {} |", ratio(img.name, kinds, r));
    }
    s
}

/// Facts about the machine, the run and the software.
#[derive(Debug, Default)]
pub struct Meta {
    pub started: String,
    pub finished: String,
    pub nproc: usize,
    pub cpu: String,
    pub mem: String,
    pub kernel: String,
    pub os: String,
    pub load_before: String,
    pub load_after: String,
    pub rounds: usize,
    pub warmup: usize,
    pub seed: u64,
    pub versions: Vec<(String, String, String)>,
    pub registry_version: String,
    pub runc_version: String,
}

impl Meta {
    /// Collects the facts after a run of `rounds` measured rounds after `warmup` ones.
    pub fn collect(
        (rounds, warmup, seed): (usize, usize, u64),
        daemons: &[Daemon],
        started: String,
        load_before: String,
    ) -> Meta {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_default();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Meta {
            started,
            finished: utc_now(),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu,
            mem,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            os,
            load_before,
            load_after: loadavg(),
            rounds,
            warmup,
            seed,
            versions: daemons
                .iter()
                .map(|d| {
                    (
                        d.kind.to_string(),
                        d.bin_version.clone(),
                        d.cri_version.clone(),
                    )
                })
                .collect(),
            registry_version: String::new(),
            runc_version: procs::command_line_output("runc", &["--version"]),
        }
    }
}

/// The whole markdown report.
pub fn markdown(m: &Meta, imgs: &[PushedImage], kinds: &[Kind], r: &Results) -> String {
    let mut s = String::new();
    s.push_str("# Image pull benchmark: unicri vs containerd\n\n");
    s.push_str("Generated by `unicri-bench pull` (crate `tests/bench`). Time of one CRI `PullImage` call, which covers ");
    s.push_str("resolving, downloading and unpacking the image (containerd's CRI plugin unpacks into its snapshotter ");
    s.push_str("during the pull), from a local plain-HTTP `docker-registry` on 127.0.0.1. After each pull the image is ");
    s.push_str("removed with `RemoveImage` and the tool waits until the runtime's root holds none of its content, so ");
    s.push_str("every pull downloads and unpacks again. Runtimes alternate which goes first, per round and image.\n\n");
    let _ = writeln!(
        s,
        "## Results (seconds, {} measured rounds after {} warmup)\n",
        m.rounds, m.warmup
    );
    s.push_str(&table(imgs, kinds, r));
    s.push_str("\nOn disk after a pull (median growth of the runtime's root, MiB):\n\n| image |");
    for k in kinds {
        let _ = write!(s, " {k} |");
    }
    s.push_str("\n|---|");
    for _ in kinds {
        s.push_str("---:|");
    }
    s.push('\n');
    for img in imgs {
        let _ = write!(s, "| {} |", img.name);
        for &k in kinds {
            let v = r
                .disk(img.name, k)
                .map(|b| format!("{:.1}", b as f64 / MIB))
                .unwrap_or_else(|| "-".into());
            let _ = write!(s, " {v} |");
        }
        s.push('\n');
    }
    s.push_str("\n## Machine and run\n\n");
    let _ = writeln!(s, "- date: {} to {} (UTC)", m.started, m.finished);
    let _ = writeln!(s, "- nproc: {}; CPU: {}; memory: {}", m.nproc, m.cpu, m.mem);
    let _ = writeln!(s, "- kernel: {}; OS: {}", m.kernel, m.os);
    let _ = writeln!(
        s,
        "- load average before / after: {} / {}",
        m.load_before, m.load_after
    );
    let _ = writeln!(s, "- content seed: {}", m.seed);
    s.push_str("\n## Versions\n\n");
    for (k, bin, cri) in &m.versions {
        let _ = writeln!(s, "- {k}: {bin}; CRI Version: {cri}");
    }
    if m.versions
        .iter()
        .any(|(k, bin, _)| k == "unicri" && bin.contains("/debug/"))
    {
        s.push_str("- **note**: the unicri binary is a debug build (`[profile.dev]`, dependencies at opt-level 1); ");
        s.push_str("release numbers will differ\n");
    }
    let _ = writeln!(s, "- registry: `{}`", m.registry_version);
    let _ = writeln!(s, "- runc: `{}`", m.runc_version);
    s.push_str("\n## Images\n\n");
    s.push_str("Generated gzip layers (OCI manifest, no index): files alternate uniformly random bytes and random hex text, ");
    s.push_str("a fifth of each layer's bytes in 16 KiB files and the rest in 1 MiB files.\n\n");
    for img in imgs {
        let _ = writeln!(
            s,
            "- `{}`: {} layer(s), {:.1} MiB compressed, {:.1} MiB uncompressed, manifest `{}`",
            img.name,
            img.layers,
            img.compressed as f64 / MIB,
            img.uncompressed as f64 / MIB,
            img.manifest_digest
        );
    }
    s.push_str("\n## Configuration\n\n");
    s.push_str("- both runtimes: their own root, state dir and socket in a fresh temporary dir; registry host configured by ");
    s.push_str("`<config_path>/127.0.0.1:<port>/hosts.toml` (`server = \"http://...\"`, capabilities pull + resolve); ");
    s.push_str("3 concurrent layer downloads (both defaults).\n");
    s.push_str("- containerd: config version 2, CRI plugin, `snapshotter = \"overlayfs\"`, `restrict_oom_score_adj = true`.\n");
    s.push_str("- unicri: `unicri daemon --config F --root R --state S --address SOCK`, config `[registry] config_path`.\n");
    s.push_str("\n## Raw samples (seconds)\n\n");
    for img in imgs {
        for &k in kinds {
            let _ = writeln!(s, "- {} / {k}: {}", img.name, r.raw(img.name, k));
        }
    }
    s
}

/// Machine, run dates and software versions as markdown bullet lists under `###` headings.
pub fn machine_and_versions(m: &Meta) -> String {
    let mut s = String::new();
    s.push_str("### Machine and run\n\n");
    let _ = writeln!(s, "- date: {} to {} (UTC)", m.started, m.finished);
    let _ = writeln!(s, "- nproc: {}; CPU: {}; memory: {}", m.nproc, m.cpu, m.mem);
    let _ = writeln!(s, "- kernel: {}; OS: {}", m.kernel, m.os);
    let _ = writeln!(
        s,
        "- load average before / after: {} / {}",
        m.load_before, m.load_after
    );
    s.push_str("\n### Versions\n\n");
    for (k, bin, cri) in &m.versions {
        let _ = writeln!(s, "- {k}: {bin}; CRI Version: {cri}");
    }
    if m.versions
        .iter()
        .any(|(k, bin, _)| k == "unicri" && bin.contains("/debug/"))
    {
        s.push_str("- **note**: the unicri binary is a debug build; release numbers will differ\n");
    }
    if !m.registry_version.is_empty() {
        let _ = writeln!(s, "- registry: `{}`", m.registry_version);
    }
    let _ = writeln!(s, "- runc: `{}`", m.runc_version);
    s
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_min_median_max() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Stats::of(&ms(&[30, 10, 20])).unwrap();
        assert_eq!((s.min, s.median, s.max), (0.01, 0.02, 0.03));
        let s = Stats::of(&ms(&[40, 10, 20, 30])).unwrap();
        assert!((s.median - 0.025).abs() < 1e-9);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn utc_now_shape() {
        let t = utc_now();
        assert_eq!(t.len(), 19, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
