//! Leak checks run after a daemon stops: its process is gone, no process refers to the test's
//! directories, nothing is mounted under root/state, no cgroup of a pod or container its log
//! names is left, and the image ingest dir is empty.

use std::path::Path;

use anyhow::{Result, bail};

use crate::daemon::Daemon;

/// Runs every check for a stopped daemon; the error lists all findings.
pub fn check(d: &Daemon) -> Result<()> {
    let mut problems = Vec::new();
    if Path::new(&format!("/proc/{}", d.pid())).exists() && !is_zombie(d.pid()) {
        problems.push(format!("daemon pid {} still running", d.pid()));
    }
    // the keeper exits by itself ~2 s after its last container is gone
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut procs = processes_referring_to(d.base_dir());
    while !procs.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        procs = processes_referring_to(d.base_dir());
    }
    for (pid, cmd) in procs {
        problems.push(format!("process {pid} left behind: {cmd}"));
    }
    for m in mounts_under(&d.root)
        .into_iter()
        .chain(mounts_under(&d.state))
    {
        problems.push(format!("mount left behind: {m}"));
    }
    for dir in cgroups_of(&d.log()) {
        problems.push(format!("cgroup left behind: {}", dir.display()));
    }
    let ingest = d.images_dir().join("ingest");
    if let Ok(rd) = std::fs::read_dir(&ingest) {
        let left: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !left.is_empty() {
            problems.push(format!(
                "ingest dir {} not empty: {left:?}",
                ingest.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("leak check failed:\n  {}", problems.join("\n  "))
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Live processes (other than us) whose command line or cwd mentions `dir`.
pub fn processes_referring_to(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cmd.contains(&needle) || cwd.starts_with(&needle) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// Mount points (from /proc/self/mountinfo) at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp == &prefix || mp.starts_with(&format!("{prefix}/")))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Object ids (64 hex digits) named in a daemon log.
fn ids_in(log: &str) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    for word in log.split(|c: char| !c.is_ascii_hexdigit()) {
        if word.len() == 64 {
            ids.insert(word.to_ascii_lowercase());
        }
    }
    ids
}

/// cgroup directories of the pods and containers a daemon's log names that still exist, in any
/// hierarchy: pods without a cgroup parent live at `/unicri/pod-<id>`, containers at
/// `<pod cgroup>/<id>`.
pub fn cgroups_of(log: &str) -> Vec<std::path::PathBuf> {
    let ids = ids_in(log);
    let mut left = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return left;
    };
    for h in hierarchies.flatten() {
        let base = h.path().join("unicri");
        let Ok(pods) = std::fs::read_dir(&base) else {
            continue;
        };
        for pod in pods.flatten().filter(|e| e.path().is_dir()) {
            let name = pod.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("pod-").is_some_and(|id| ids.contains(id)) {
                left.push(pod.path());
                continue;
            }
            if let Ok(ctrs) = std::fs::read_dir(pod.path()) {
                for c in ctrs.flatten().filter(|e| e.path().is_dir()) {
                    if ids.contains(&c.file_name().to_string_lossy().to_ascii_lowercase()) {
                        left.push(c.path());
                    }
                }
            }
        }
    }
    left
}
