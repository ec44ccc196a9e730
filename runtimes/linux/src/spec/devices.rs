//! Device nodes for a container: the devices a spec names, all of the node's for privileged
//! containers, and the device cgroup rules (runc's/containerd's default allow list).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use unicri_sandbox::container::DeviceSpec;

use crate::error::LinuxError;

/// Directories under `/dev` whose nodes are never passed to privileged containers (runc's list).
const SKIPPED_DEV_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The device cgroup rules always allowed: `(type, major, minor)` with `rwm`, `None` meaning `*`
/// (runc's default allow list: `c *:* m`, `b *:* m`, null, zero, full, random, urandom, tty,
/// console, ptmx and the pty slaves).
pub const DEFAULT_ALLOWED: &[(LinuxDeviceType, Option<i64>, Option<i64>, &str)] = &[
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),
    (LinuxDeviceType::C, Some(136), None, "rwm"),
];

/// A device cgroup rule.
pub fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// The device node whose metadata is `meta`, described for the `container` path; `None` when it
/// is no device node (nor FIFO).
pub fn device_at(meta: &std::fs::Metadata, container: &Path) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else if ft.is_fifo() {
        LinuxDeviceType::P
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(container.to_path_buf());
    d.set_typ(typ);
    // i64 holds every 32-bit major/minor number
    d.set_major(i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(i64::MAX));
    d.set_minor(i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(i64::MAX));
    d.set_file_mode(Some(meta.mode() & 0o7777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Some(d)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LinuxError {
    let path = path.to_path_buf();
    move |source| LinuxError::SpecIo { op, path, source }
}

/// Device nodes below `dir` (recursively, symlinks not followed), each with its path below
/// `dir`. Entries that vanish while walking are skipped.
fn walk(
    dir: &Path,
    skip_dirs: &[&str],
    out: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> Result<(), LinuxError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        let name = entry.file_name();
        if meta.is_dir() {
            if skip_dirs.iter().any(|s| name == *s) {
                continue;
            }
            walk(&path, skip_dirs, out)?;
        } else {
            out.push((path, meta));
        }
    }
    Ok(())
}

/// All device nodes of the node's `/dev` for a privileged container (runc's `HostDevices`: no
/// `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/dev/fd`, no `/dev/console`).
pub fn host_devices() -> Result<Vec<LinuxDevice>, LinuxError> {
    let mut found = vec![];
    walk(Path::new("/dev"), SKIPPED_DEV_DIRS, &mut found)?;
    Ok(found
        .into_iter()
        .filter(|(p, _)| p != Path::new("/dev/console"))
        .filter_map(|(p, m)| device_at(&m, &p))
        .collect())
}

/// Checks a cgroup permission string (`r`, `w`, `m` in any combination); empty means `rwm`.
fn permissions(d: &DeviceSpec) -> Result<String, LinuxError> {
    if d.permissions.is_empty() {
        return Ok("rwm".into());
    }
    if !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(LinuxError::InvalidArgument {
            what: "device permissions",
            value: d.permissions.clone(),
            reason: "only r, w and m are allowed".into(),
        });
    }
    Ok(d.permissions.clone())
}

/// The device nodes and cgroup rules for one [`DeviceSpec`]. A directory host path passes every
/// device below it, at the same relative path below the container path (containerd does so).
pub fn from_spec(d: &DeviceSpec) -> Result<Vec<(LinuxDevice, LinuxDeviceCgroup)>, LinuxError> {
    let host = Path::new(&d.host_path);
    let container = Path::new(&d.container_path);
    if !host.is_absolute() {
        return Err(LinuxError::InvalidArgument {
            what: "device host path",
            value: d.host_path.clone(),
            reason: "must be absolute".into(),
        });
    }
    if !container.is_absolute() {
        return Err(LinuxError::InvalidArgument {
            what: "device container path",
            value: d.container_path.clone(),
            reason: "must be absolute".into(),
        });
    }
    let access = permissions(d)?;
    let meta = match std::fs::metadata(host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LinuxError::SpecNotFound {
                what: "device",
                path: host.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err("stat", host)(e)),
    };
    let mut nodes = vec![];
    if meta.is_dir() {
        let mut found = vec![];
        walk(host, &[], &mut found)?;
        for (p, m) in found {
            let rel = p.strip_prefix(host).unwrap_or(&p);
            if let Some(dev) = device_at(&m, &container.join(rel)) {
                nodes.push(dev);
            }
        }
    } else {
        match device_at(&meta, container) {
            Some(dev) => nodes.push(dev),
            None => {
                return Err(LinuxError::InvalidArgument {
                    what: "device host path",
                    value: d.host_path.clone(),
                    reason: "not a device node".into(),
                });
            }
        }
    }
    Ok(nodes
        .into_iter()
        .map(|dev| {
            let r = rule(
                true,
                Some(dev.typ()),
                Some(dev.major()),
                Some(dev.minor()),
                &access,
            );
            (dev, r)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_becomes_a_device_with_rule() {
        let d = DeviceSpec {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        };
        let got = from_spec(&d).expect("device");
        assert_eq!(got.len(), 1);
        let (dev, rule) = &got[0];
        assert_eq!(dev.path(), Path::new("/dev/mynull"));
        assert_eq!(
            (dev.typ(), dev.major(), dev.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(rule.to_string(), "c 1:3 rw");
        assert!(rule.allow());
    }

    #[test]
    fn bad_devices_are_refused() {
        let d = |host: &str, perms: &str| DeviceSpec {
            container_path: "/dev/x".into(),
            host_path: host.into(),
            permissions: perms.into(),
        };
        assert!(matches!(
            from_spec(&d("/dev/does-not-exist-unicri", "")),
            Err(LinuxError::SpecNotFound { .. })
        ));
        assert!(matches!(
            from_spec(&d("/etc/hostname", "")),
            Err(LinuxError::InvalidArgument { .. }) | Err(LinuxError::SpecNotFound { .. })
        ));
        assert!(matches!(
            from_spec(&d("/dev/null", "rwx")),
            Err(LinuxError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn host_devices_include_null_but_not_pts_or_console() {
        let devs = host_devices().expect("walk /dev");
        assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
        assert!(!devs.iter().any(|d| d.path() == Path::new("/dev/console")));
    }
}
