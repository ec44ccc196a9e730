//! `UpdateResources`: a container's cgroup v2 files (`memory.max`, `cpu.max`, `cpu.weight`,
//! `pids.max`, `cpuset.*`) from a [`Resources`].

use std::io::Write;
use std::path::Path;

use unicri_vm_agent::proto::Resources;

use super::error::{Error, Result};

/// cgroup v2's `cpu.max` period bounds (µs).
const PERIOD_MIN: i64 = 1_000;
const PERIOD_MAX: i64 = 1_000_000;
/// cgroup v2's smallest `cpu.max` quota (µs).
const QUOTA_MIN: i64 = 1_000;
/// cgroup v1 shares bounds.
const SHARES_MIN: i64 = 2;
const SHARES_MAX: i64 = 262_144;

/// `cpu.weight` for cgroup v1 `shares` (2..262144 → 1..10000), as runc and crun convert it;
/// shares outside that range are clamped into it.
pub fn cpu_weight(shares: i64) -> i64 {
    let s = shares.clamp(SHARES_MIN, SHARES_MAX);
    1 + ((s - SHARES_MIN) * 9999) / (SHARES_MAX - SHARES_MIN)
}

/// The `cpu.max` line: `<quota|max> <period>` (period left out when 0: the kernel keeps its
/// current one).
pub fn cpu_max(quota: i64, period: i64) -> String {
    let q = if quota <= 0 {
        "max".to_string()
    } else {
        quota.to_string()
    };
    if period > 0 {
        format!("{q} {period}")
    } else {
        q
    }
}

/// The files to write, in order, for `r`: `(file name, value)`. Checks the values first, so
/// a bad request writes nothing.
pub fn plan(r: &Resources) -> Result<Vec<(&'static str, String)>> {
    if r.cpu_period != 0 && !(PERIOD_MIN..=PERIOD_MAX).contains(&r.cpu_period) {
        return Err(Error::invalid(format!(
            "cpu_period {} µs is out of range ({PERIOD_MIN}..={PERIOD_MAX}, or 0 to leave it)",
            r.cpu_period
        )));
    }
    if r.cpu_quota > 0 && r.cpu_quota < QUOTA_MIN {
        return Err(Error::invalid(format!(
            "cpu_quota {} µs is below the kernel's minimum of {QUOTA_MIN} µs",
            r.cpu_quota
        )));
    }
    if r.cpu_shares < 0 {
        return Err(Error::invalid(format!(
            "cpu_shares {} is negative",
            r.cpu_shares
        )));
    }
    for (name, v) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !v
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ',' | '-'))
        {
            return Err(Error::invalid(format!(
                "{name} {v:?} is not a cpu list (like 0-2,4)"
            )));
        }
    }
    let mut out = Vec::new();
    if !r.cpuset_cpus.is_empty() {
        out.push(("cpuset.cpus", r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        out.push(("cpuset.mems", r.cpuset_mems.clone()));
    }
    out.push((
        "memory.max",
        if r.memory_limit_bytes <= 0 {
            "max".to_string()
        } else {
            r.memory_limit_bytes.to_string()
        },
    ));
    out.push(("cpu.max", cpu_max(r.cpu_quota, r.cpu_period)));
    if r.cpu_shares != 0 {
        out.push(("cpu.weight", cpu_weight(r.cpu_shares).to_string()));
    }
    match r.pids_limit {
        0 => {}
        n if n < 0 => out.push(("pids.max", "max".to_string())),
        n => out.push(("pids.max", n.to_string())),
    }
    Ok(out)
}

/// The controller a cgroup file belongs to (`cpu.max` → `cpu`).
fn controller(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// Write `r` into the cgroup directory `dir` (blocking). A missing `dir` is `not_found`; a
/// file the cgroup lacks (its controller is not there) or a value the kernel refuses is
/// `failed_precondition`, naming the file, the value and the errno.
pub fn apply(dir: &Path, r: &Resources) -> Result<()> {
    let writes = plan(r)?;
    if !dir.is_dir() {
        return Err(Error::not_found(format!(
            "no cgroup {} (the container was not created, or was removed)",
            dir.display()
        )));
    }
    // a controller the kernel lacks fails before anything was written
    for (file, value) in &writes {
        if !dir.join(file).exists() {
            return Err(missing_controller(dir, file, value));
        }
    }
    for (file, value) in &writes {
        let path = dir.join(file);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() => {
                return Err(Error::not_found(format!(
                    "cgroup {} went away while writing {file}",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing_controller(dir, file, value));
            }
            Err(e) => {
                let errno = e
                    .raw_os_error()
                    .map(|n| format!(" ({})", nix::errno::Errno::from_raw(n)))
                    .unwrap_or_default();
                return Err(Error::precondition(format!(
                    "the kernel refused {value:?} for {}: {e}{errno}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

fn missing_controller(dir: &Path, file: &str, value: &str) -> Error {
    Error::precondition(format!(
        "cannot set {file} to {value:?}: the guest kernel has no {} controller for {} \
         (no {file} there)",
        controller(file),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_like_runc() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(512), 20);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1), 1);
        assert_eq!(cpu_weight(1 << 30), 10_000);
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max(50_000, 100_000), "50000 100000");
        assert_eq!(cpu_max(0, 100_000), "max 100000");
        assert_eq!(cpu_max(-1, 0), "max");
        assert_eq!(cpu_max(20_000, 0), "20000");
    }

    #[test]
    fn plans() {
        let r = Resources {
            memory_limit_bytes: 64 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 1024,
            pids_limit: 100,
            ..Resources::default()
        };
        assert_eq!(
            plan(&r).unwrap(),
            vec![
                ("memory.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("cpu.weight", "39".to_string()),
                ("pids.max", "100".to_string()),
            ]
        );
        // all unset: no limits, weight and pids left alone
        assert_eq!(
            plan(&Resources::default()).unwrap(),
            vec![
                ("memory.max", "max".to_string()),
                ("cpu.max", "max".to_string())
            ]
        );
        let r = Resources {
            pids_limit: -1,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            ..Resources::default()
        };
        assert_eq!(
            plan(&r).unwrap(),
            vec![
                ("cpuset.cpus", "0-1,3".to_string()),
                ("cpuset.mems", "0".to_string()),
                ("memory.max", "max".to_string()),
                ("cpu.max", "max".to_string()),
                ("pids.max", "max".to_string()),
            ]
        );
        for bad in [
            Resources {
                cpu_period: 10,
                ..Resources::default()
            },
            Resources {
                cpu_period: 2_000_000,
                ..Resources::default()
            },
            Resources {
                cpu_quota: 999,
                ..Resources::default()
            },
            Resources {
                cpu_shares: -5,
                ..Resources::default()
            },
            Resources {
                cpuset_cpus: "0\n1".into(),
                ..Resources::default()
            },
        ] {
            assert_eq!(
                plan(&bad).unwrap_err().kind.as_str(),
                "invalid_argument",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn applies_to_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("c1");
        let r = Resources {
            memory_limit_bytes: 1 << 20,
            cpu_quota: 25_000,
            cpu_period: 50_000,
            cpu_shares: 2,
            pids_limit: 7,
            ..Resources::default()
        };
        // no cgroup: not found
        assert_eq!(apply(&cg, &r).unwrap_err().kind.as_str(), "not_found");
        std::fs::create_dir(&cg).unwrap();
        for f in ["memory.max", "cpu.max", "cpu.weight", "pids.max"] {
            std::fs::write(cg.join(f), "old").unwrap();
        }
        apply(&cg, &r).unwrap();
        let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("cpu.max"), "25000 50000");
        assert_eq!(read("cpu.weight"), "1");
        assert_eq!(read("pids.max"), "7");
        // no cpuset controller: refused before anything is written
        let r2 = Resources {
            memory_limit_bytes: 2 << 20,
            cpuset_cpus: "0".into(),
            ..Resources::default()
        };
        let e = apply(&cg, &r2).unwrap_err();
        assert_eq!(e.kind.as_str(), "failed_precondition");
        assert!(e.message.contains("cpuset"), "{}", e.message);
        assert_eq!(read("memory.max"), "1048576");
    }
}
