//! Mount helpers: what is mounted (from `/proc/self/mountinfo`), mount-once, unmount.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, umount2};

use super::error::{Error, Result};

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in a mountinfo text, in order.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape))
        .collect()
}

/// The calling process's mount points.
pub fn current() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mount_points(&t))
        .unwrap_or_default()
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &str) -> bool {
    current().iter().any(|m| m == path)
}

/// Mount points at or under `dir`, deepest first.
pub fn under(points: &[String], dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut v: Vec<String> = points
        .iter()
        .filter(|m| m.as_str() == dir || m.starts_with(&prefix))
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// Mount `source` at `target` unless something is mounted there already.
pub fn mount_once(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("create mount point {target}"), &e))?;
    nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        Error::precondition(format!(
            "mount {fstype} {source} at {target}: {}",
            std::io::Error::from(e)
        ))
    })
}

/// Unmount everything at or under `dir` (lazily if busy).
pub fn unmount_all_under(dir: &str) -> Result<()> {
    for m in under(&current(), dir) {
        unmount(Path::new(&m))?;
    }
    Ok(())
}

/// Unmount `path` (lazily if it is busy); not mounted is fine.
pub fn unmount(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => Ok(()),
            Err(e) => Err(Error::sys(
                format!("unmount {} (lazily)", path.display()),
                e,
            )),
        },
        Err(e) => Err(Error::sys(format!("unmount {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw shared:1 - tmpfs tmpfs rw
23 22 0:5 / /proc rw - proc proc rw
40 22 0:30 / /run rw - tmpfs tmpfs rw
41 40 254:16 / /run/unicri/images/ubdb ro - erofs /dev/ubdb ro
42 40 0:31 / /run/unicri/c/abc/rootfs rw - overlay overlay rw,lowerdir=/run/unicri/images/ubdb
43 40 0:32 / /run/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo() {
        let m = mount_points(INFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[3], "/run/unicri/images/ubdb");
        assert_eq!(m[5], "/run/with space");
        assert_eq!(
            under(&m, "/run/unicri/c/abc"),
            vec!["/run/unicri/c/abc/rootfs".to_string()]
        );
        assert!(under(&m, "/run/unicri/c/ab").is_empty());
        assert_eq!(under(&m, "/run").len(), 4);
        assert_eq!(under(&m, "/run")[0], "/run/with space");
    }
}
