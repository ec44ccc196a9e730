//! Process, mount and disk helpers: everything the benchmark starts must be gone when it ends.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;

/// First line of `bin args...` (stdout, else stderr), or a note why not.
pub fn command_line_output(bin: &str, args: &[&str]) -> String {
    match std::process::Command::new(bin).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("({bin}: {e})"),
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps the child.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Pids of processes whose argv\[0\] file name starts with `exe_prefix` and whose command line
/// holds `needle` as one whole argument (e.g. the containerd socket a shim was started for).
pub fn find_processes(exe_prefix: &str, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(ent.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let Some(argv0) = args.first() else { continue };
        let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        if name.starts_with(exe_prefix.as_bytes()) && args.contains(&needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(p) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(ent.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// SIGKILLs `pid` and its direct children (a shim and the container init it started: killing
/// a pid namespace's init kills the namespace).
pub fn kill_tree(pid: i32) {
    for c in children(pid) {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().trim_end_matches('/').to_string();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out.dedup();
    out
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Lazily unmounts everything at or below `dir`; returns what it unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for m in mounts_under(dir) {
        if nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).is_ok() {
            done.push(m);
        }
    }
    done
}

/// Disk usage of a tree in bytes (allocated blocks, hard links counted once, symlinks not
/// followed). Unreadable entries are skipped.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((md.dev(), md.ino())) {
            total += md.blocks() * 512;
        }
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// One process of a `/proc` snapshot.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its command line.
    pub argv: Vec<String>,
    /// (device, inode) of its executable, when readable.
    pub exe: Option<(u64, u64)>,
}

/// Every process visible in `/proc` (processes that exit while it is read are skipped).
pub fn snapshot() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(ent.path().join("stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let argv = std::fs::read(ent.path().join("cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let exe = std::fs::metadata(ent.path().join("exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        out.push(ProcInfo {
            pid,
            ppid,
            argv,
            exe,
        });
    }
    out
}

/// (device, inode) of a file (following symlinks).
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Proportional set size of `pid` in KiB from `/proc/<pid>/smaps_rollup`: (`Pss:`,
/// `Pss_Anon:`, `Pss_File:`); `None` when the process is gone or the file unreadable (a kernel
/// without the split reports 0 for the last two).
pub fn pss_kib(pid: i32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((
        field("Pss:")?,
        field("Pss_Anon:").unwrap_or(0),
        field("Pss_File:").unwrap_or(0),
    ))
}

/// `pids` and all their descendants in `procs`.
pub fn with_descendants(procs: &[ProcInfo], pids: &[i32]) -> Vec<i32> {
    let mut set: Vec<i32> = pids.to_vec();
    let mut i = 0;
    while i < set.len() {
        let p = set[i];
        for c in procs.iter().filter(|c| c.ppid == p) {
            if !set.contains(&c.pid) {
                set.push(c.pid);
            }
        }
        i += 1;
    }
    set
}

/// Busy CPU time of the whole machine since boot, in seconds: the `cpu` line of `/proc/stat`
/// without idle and iowait (guest time is already part of user time).
pub fn cpu_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(busy as f64 / hz)
}
