//! Guest and container resource usage: `/proc/meminfo`, `/proc/uptime`, cgroup v2 files, the
//! size of a container's writable layer.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use unicri_vm_agent::proto::ContainerUsage;

/// `MemTotal` and `MemAvailable` in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let mut total = 0;
    let mut available = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        let bytes = match it.next() {
            Some("kB") => v.saturating_mul(1024),
            _ => v,
        };
        match key {
            "MemTotal:" => total = bytes,
            "MemAvailable:" => available = bytes,
            _ => {}
        }
    }
    (total, available)
}

/// Seconds since boot, from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`, `memory.stat`).
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// One container's usage from its cgroup directory (missing files count as 0) and its
/// writable layer.
pub fn container_usage(cgroup_dir: &Path, upper: &Path) -> ContainerUsage {
    let cpu_usec = read(&cgroup_dir.join("cpu.stat"))
        .and_then(|t| flat_key(&t, "usage_usec"))
        .unwrap_or(0);
    let current = read(&cgroup_dir.join("memory.current"))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let inactive = read(&cgroup_dir.join("memory.stat"))
        .and_then(|t| flat_key(&t, "inactive_file"))
        .unwrap_or(0);
    ContainerUsage {
        cpu_ns: cpu_usec.saturating_mul(1000),
        memory_working_set: current.saturating_sub(inactive),
        memory_usage: current,
        writable_bytes: disk_usage(upper),
    }
}

/// Bytes allocated under `dir` (like `du -s --block-size=1`), not crossing mounts, not
/// following symlinks; 0 if it does not exist.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:         123456 kB\nMemFree:           1000 kB\nMemAvailable:      65536 kB\nHugePages_Total:       0\n";
        assert_eq!(parse_meminfo(text), (123456 * 1024, 65536 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("12.50 3.20\n"), Some(12.5));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("memory.current"), "1048576\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 4096\nactive_file 100\ninactive_file 48576\n",
        )
        .unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        std::fs::write(upper.join("f"), vec![1u8; 10000]).unwrap();
        let u = container_usage(dir.path(), &upper);
        assert_eq!(u.cpu_ns, 2_500_000);
        assert_eq!(u.memory_usage, 1048576);
        assert_eq!(u.memory_working_set, 1000000);
        assert!(u.writable_bytes >= 10000, "{}", u.writable_bytes);
        // a cgroup not made yet: zeros
        let none = container_usage(&dir.path().join("missing"), &dir.path().join("missing"));
        assert_eq!(none, ContainerUsage::default());
        assert_eq!(
            flat_key("inactive_file_x 5\ninactive_file 7", "inactive_file"),
            Some(7)
        );
    }
}
