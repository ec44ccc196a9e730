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
