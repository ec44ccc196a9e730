//! Directories that hold namespace pins (bind mounts of `/proc/thread-self/ns/*`) must be mount
//! points with **shared** propagation: with private ones, a mount namespace created later keeps a
//! copy of every pin, our unmount never reaches that copy, and the namespace (with its veth and
//! IP) stays alive. `network-cni` (netns pins) and `runtimes/linux` (IPC/UTS pins) both prepare
//! their directory here; `cri-server` releases them when no pod is left.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Directories prepared by this process; `true` when this process bound it onto itself.
static PREPARED: Mutex<BTreeMap<PathBuf, bool>> = Mutex::new(BTreeMap::new());

/// A failed step of [`prepare_shared_dir`] or [`release_shared_dir`].
#[derive(Debug)]
pub struct StepError {
    /// The step: `create`, `canonicalize`, `bind onto itself`, `make rshared`, `umount`.
    pub op: &'static str,
    /// The cause.
    pub source: io::Error,
}

fn step(op: &'static str) -> impl FnOnce(io::Error) -> StepError {
    move |source| StepError { op, source }
}

/// Creates `dir` and makes it a mount point with shared propagation (bound onto itself first
/// when it is not a mount point yet). Done once per directory per process.
pub fn prepare_shared_dir(dir: &Path) -> Result<(), StepError> {
    std::fs::create_dir_all(dir).map_err(step("create"))?;
    let dir = std::fs::canonicalize(dir).map_err(step("canonicalize"))?;
    let mut prepared = PREPARED.lock().unwrap_or_else(|p| p.into_inner());
    if prepared.contains_key(&dir) {
        return Ok(());
    }
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    let mut bound = false;
    match mount(None::<&str>, &dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => {}
        Err(Errno::EINVAL) => {
            // not a mount point yet: bind it onto itself (MS_REC carries existing pins over)
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(&dir), &dir, None::<&str>, bind, None::<&str>)
                .map_err(|e| step("bind onto itself")(e.into()))?;
            bound = true;
            mount(None::<&str>, &dir, None::<&str>, shared, None::<&str>)
                .map_err(|e| step("make rshared")(e.into()))?;
        }
        Err(e) => return Err(step("make rshared")(e.into())),
    }
    prepared.insert(dir, bound);
    Ok(())
}

/// Undoes [`prepare_shared_dir`]'s self bind mount of `dir` if this process made it (lazily;
/// pins inside go with it). For tests and tooling.
pub fn release_shared_dir(dir: &Path) -> Result<(), StepError> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let mut prepared = PREPARED.lock().unwrap_or_else(|p| p.into_inner());
    if prepared.remove(&dir) == Some(true) {
        match umount2(&dir, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => return Err(step("umount")(e.into())),
        }
    }
    Ok(())
}

/// Whether `dir` is itself a mount point (per `/proc/self/mountinfo`).
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(dir), Ok(info)) = (
        std::fs::canonicalize(dir),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    let Some(dir) = dir.to_str() else {
        return false;
    };
    info.lines().any(|l| l.split(' ').nth(4) == Some(dir))
}

/// Lazily unmounts `dir` when it is a mount point, whoever mounted it (a daemon after a restart
/// did not make the self bind mount it finds). Returns whether it unmounted.
pub fn unmount_if_mount_point(dir: &Path) -> Result<bool, StepError> {
    if !is_mount_point(dir) {
        return Ok(false);
    }
    if let Ok(canon) = std::fs::canonicalize(dir) {
        PREPARED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&canon);
    }
    umount2(dir, MntFlags::MNT_DETACH).map_err(|e| step("umount")(e.into()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn prepare_makes_a_shared_mount_point_and_release_undoes_it() {
        if !root() {
            eprintln!("SKIP prepare_makes_a_shared_mount_point_and_release_undoes_it: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pins");
        assert!(!is_mount_point(&d));
        prepare_shared_dir(&d).unwrap();
        prepare_shared_dir(&d).unwrap(); // once per process
        assert!(is_mount_point(&d));
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let canon = std::fs::canonicalize(&d).unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == canon.to_str())
            .expect("mountinfo line");
        assert!(line.contains("shared:"), "not shared: {line}");
        release_shared_dir(&d).unwrap();
        assert!(!is_mount_point(&d));
        release_shared_dir(&d).unwrap();
    }

    #[test]
    fn unmount_if_mount_point_only_acts_on_mount_points() {
        if !root() {
            eprintln!("SKIP unmount_if_mount_point_only_acts_on_mount_points: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pins");
        std::fs::create_dir(&d).unwrap();
        assert!(!unmount_if_mount_point(&d).unwrap());
        prepare_shared_dir(&d).unwrap();
        assert!(unmount_if_mount_point(&d).unwrap());
        assert!(!is_mount_point(&d));
        // prepared again after an unmount: the cache forgot it
        prepare_shared_dir(&d).unwrap();
        assert!(is_mount_point(&d));
        release_shared_dir(&d).unwrap();
        assert!(!is_mount_point(&d));
    }
}

/// A container's writable rootfs: an overlay of read-only layer directories with its own upper
/// and work directories, all under one container directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayRootfs {
    /// The mount point (`<dir>/rootfs`).
    pub target: PathBuf,
    /// `<dir>/upper`.
    pub upper: PathBuf,
    /// `<dir>/work`.
    pub work: PathBuf,
}

impl OverlayRootfs {
    /// The layout under `dir`.
    pub fn under(dir: &Path) -> OverlayRootfs {
        OverlayRootfs {
            target: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    /// Mounts the overlay. `layers` are bottom to top (image order); an image without layers
    /// gets an empty lower directory. Mounting an already-mounted target is a no-op.
    pub fn mount(&self, layers: &[PathBuf]) -> Result<(), StepError> {
        for d in [&self.target, &self.upper, &self.work] {
            std::fs::create_dir_all(d).map_err(step("create"))?;
        }
        if is_mount_point(&self.target) {
            return Ok(());
        }
        let mut lowers: Vec<PathBuf> = layers.iter().rev().cloned().collect();
        if lowers.is_empty() {
            let empty = self.upper.with_file_name("empty");
            std::fs::create_dir_all(&empty).map_err(step("create"))?;
            lowers.push(empty);
        }
        for l in &lowers {
            if !l.is_dir() {
                return Err(StepError {
                    op: "find layer",
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("layer directory {} is missing", l.display()),
                    ),
                });
            }
        }
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let data = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            self.upper.display(),
            self.work.display()
        );
        if data.len() >= 4096 {
            return Err(StepError {
                op: "mount overlay",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} layers make the overlay options longer than a page",
                        lowers.len()
                    ),
                ),
            });
        }
        mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| StepError {
            op: "mount overlay",
            source: io::Error::from(e),
        })
    }

    /// Unmounts the overlay (detaching if busy) and removes the container directory `dir`.
    /// Idempotent.
    pub fn remove(&self, dir: &Path) -> Result<(), StepError> {
        if is_mount_point(&self.target) {
            match umount2(&self.target, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    umount2(&self.target, MntFlags::MNT_DETACH).map_err(|e| StepError {
                        op: "umount",
                        source: io::Error::from(e),
                    })?;
                }
                Err(e) => {
                    return Err(StepError {
                        op: "umount",
                        source: io::Error::from(e),
                    });
                }
            }
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StepError {
                op: "remove container dir",
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    #[test]
    fn overlay_mounts_layers_in_order_and_removes_cleanly() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP overlay_mounts_layers_in_order_and_removes_cleanly: needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
        std::fs::create_dir_all(&l1).expect("l1");
        std::fs::create_dir_all(&l2).expect("l2");
        std::fs::write(l1.join("f"), "bottom").expect("write");
        std::fs::write(l2.join("f"), "top").expect("write");
        std::fs::write(l1.join("only1"), "x").expect("write");
        let dir = tmp.path().join("c");
        let ov = OverlayRootfs::under(&dir);
        ov.mount(&[l1.clone(), l2.clone()]).expect("mount");
        ov.mount(&[l1.clone(), l2.clone()])
            .expect("second mount is a no-op");
        assert_eq!(
            std::fs::read_to_string(ov.target.join("f")).expect("read"),
            "top"
        );
        assert!(ov.target.join("only1").exists());
        std::fs::write(ov.target.join("new"), "w").expect("write through");
        assert!(ov.upper.join("new").exists());
        assert!(!l2.join("new").exists());
        ov.remove(&dir).expect("remove");
        assert!(!dir.exists());
        ov.remove(&dir).expect("remove again");
        let missing = OverlayRootfs::under(&tmp.path().join("d"));
        assert_eq!(
            missing
                .mount(&[tmp.path().join("nope")])
                .expect_err("missing layer")
                .op,
            "find layer"
        );
        missing.remove(&tmp.path().join("d")).expect("cleanup");
    }
}
