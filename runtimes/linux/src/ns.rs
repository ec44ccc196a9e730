//! The pod's IPC and UTS namespaces, pinned by bind mounts without a process (CRI-O's `pinns`,
//! done on a thread like `network-cni`'s netns pins).
//!
//! * [`pin_ipc_uts`] spawns a dedicated std thread that `unshare`s `CLONE_NEWIPC|CLONE_NEWUTS`
//!   (either or both), sets the pod's hostname inside the new UTS namespace, writes the IPC
//!   sysctls from inside the new IPC namespace, bind-mounts `/proc/thread-self/ns/{ipc,uts}` onto
//!   the pin files and exits. The caller's threads never change namespace.
//! * [`unpin`] unmounts a pin (`MNT_DETACH`, repeated while stacked) and unlinks it; missing is fine.
//! * [`run_in`] runs a closure on a fresh thread that `setns`'d into a pinned namespace.
//!
//! Mount propagation: the directory that holds pod directories is made a mount point with
//! **shared** propagation once per process ([`prepare_pods_dir`]), for the reason `network-cni`'s
//! netns module gives: mount namespaces created later (helpers, containers before they pivot)
//! keep copies of the pins and of the shm tmpfs; with shared propagation our unmount reaches those
//! copies, with private propagation the namespaces would outlive `remove`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::error::LinuxError;
use crate::sysctl::{self, Sysctl};

/// A namespace kind this crate pins or enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    /// IPC namespace.
    Ipc,
    /// UTS namespace (hostname).
    Uts,
    /// Network namespace (pinned by `network-cni`; only entered here).
    Net,
}

impl NsKind {
    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Net => CloneFlags::CLONE_NEWNET,
        }
    }

    fn proc_name(self) -> &'static str {
        match self {
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Net => "net",
        }
    }
}

/// What [`pin_ipc_uts`] should create.
#[derive(Debug, Default)]
pub struct PinRequest<'a> {
    /// Pin file for a new IPC namespace (`None`: host IPC).
    pub ipc: Option<PathBuf>,
    /// Pin file for a new UTS namespace (`None`: host network, so the node's UTS).
    pub uts: Option<PathBuf>,
    /// Hostname to set in the new UTS namespace (empty: keep the node's, copied on unshare).
    pub hostname: &'a str,
    /// IPC sysctls to write inside the new IPC namespace.
    pub ipc_sysctls: &'a [Sysctl],
}

/// Creates and pins the requested namespaces. On error nothing stays mounted or created (the
/// pin files this call created are unmounted and removed).
pub fn pin_ipc_uts(req: &PinRequest<'_>) -> Result<(), LinuxError> {
    let targets: Vec<(NsKind, PathBuf)> = [(NsKind::Ipc, &req.ipc), (NsKind::Uts, &req.uts)]
        .into_iter()
        .filter_map(|(k, p)| p.clone().map(|p| (k, p)))
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    if !req.ipc_sysctls.is_empty() && req.ipc.is_none() {
        return Err(LinuxError::InvalidArgument {
            what: "sysctl",
            value: req.ipc_sysctls[0].name.clone(),
            reason: "IPC sysctl with host IPC namespace".into(),
        });
    }
    for (_, pin) in &targets {
        if is_pinned(pin) {
            return Err(LinuxError::PodExists { path: pin.clone() });
        }
        let dir = pin.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(pin_err(dir, "create ns directory"))?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o444)
            .open(pin)
            .map_err(pin_err(pin, "create pin file"))?;
    }
    let result = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("unicri-pod-pin".into())
            .spawn_scoped(s, || pin_thread(req, &targets))
            .map_err(pin_err(Path::new("/proc/thread-self"), "spawn pin thread"))?;
        handle.join().unwrap_or_else(|_| {
            Err(LinuxError::PinNamespaces {
                path: PathBuf::from("/proc/thread-self"),
                op: "pin thread panicked",
                source: std::io::Error::other("panic"),
            })
        })
    });
    if let Err(e) = result {
        let cleanup: Vec<LinuxError> = targets.iter().filter_map(|(_, p)| unpin(p).err()).collect();
        return Err(match LinuxError::collect(cleanup) {
            None => e,
            Some(c) => LinuxError::RollbackFailed {
                error: Box::new(e),
                cleanup: Box::new(c),
            },
        });
    }
    Ok(())
}

/// Body of the pin thread: it changes namespace and exits right after (never returns to a pool).
fn pin_thread(req: &PinRequest<'_>, targets: &[(NsKind, PathBuf)]) -> Result<(), LinuxError> {
    let flags = targets
        .iter()
        .fold(CloneFlags::empty(), |f, (k, _)| f | k.flag());
    let proc_thread = Path::new("/proc/thread-self/ns");
    unshare(flags).map_err(|e| pin_err(proc_thread, "unshare")(e.into()))?;
    if req.uts.is_some() && !req.hostname.is_empty() {
        nix::unistd::sethostname(req.hostname)
            .map_err(|e| pin_err(proc_thread, "sethostname")(e.into()))?;
    }
    sysctl::write_all(req.ipc_sysctls)?;
    for (kind, pin) in targets {
        let source = proc_thread.join(kind.proc_name());
        mount(
            Some(&source),
            pin,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            pin_err(
                pin,
                match kind {
                    NsKind::Ipc => "bind mount /proc/thread-self/ns/ipc",
                    _ => "bind mount /proc/thread-self/ns/uts",
                },
            )(e.into())
        })?;
    }
    Ok(())
}

/// Unpins the namespace at `pin` and deletes the file. Idempotent: missing is fine.
pub fn unpin(pin: &Path) -> Result<(), LinuxError> {
    unmount_all(pin)?;
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LinuxError::PodFile {
            op: "unlink pin",
            path: pin.to_path_buf(),
            source,
        }),
    }
}

/// Unmounts everything stacked on `path` (lazily); nothing mounted or missing is fine.
pub(crate) fn unmount_all(path: &Path) -> Result<(), LinuxError> {
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(LinuxError::Unmount {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// True when `path` holds a pinned namespace (its file system is nsfs).
pub fn is_pinned(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Runs `f` on a new thread that `setns`'d into the `kind` namespace pinned at `pin`, and returns
/// its value; the thread exits afterwards. A panic in `f` is resumed on the caller.
pub fn run_in<F, T>(pin: &Path, kind: NsKind, f: F) -> Result<T, LinuxError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let enter_err = |source: std::io::Error| LinuxError::EnterNamespace {
        path: pin.to_path_buf(),
        source,
    };
    if !is_pinned(pin) {
        return Err(enter_err(std::io::Error::other("not a pinned namespace")));
    }
    let file = File::open(pin).map_err(enter_err)?;
    std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T, LinuxError> {
            setns(&file, kind.flag()).map_err(|e| enter_err(e.into()))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Creates `dir` and makes it a shared mount point (see `unicri-mounts` for why). Done once per
/// directory per process; `LinuxPod::create` calls it for the pod dir's parent.
pub fn prepare_pods_dir(dir: &Path) -> Result<(), LinuxError> {
    unicri_mounts::prepare_shared_dir(dir).map_err(|e| LinuxError::PreparePodsDir {
        dir: dir.to_path_buf(),
        op: e.op,
        source: e.source,
    })
}

/// Undoes [`prepare_pods_dir`]'s self bind mount (lazily). For tests and tooling; the daemon keeps
/// its pods directory prepared.
pub fn release_pods_dir(dir: &Path) -> Result<(), LinuxError> {
    unicri_mounts::release_shared_dir(dir).map_err(|e| LinuxError::Unmount {
        path: dir.to_path_buf(),
        source: e.source,
    })
}

fn pin_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LinuxError {
    let path = path.to_path_buf();
    move |source| LinuxError::PinNamespaces { path, op, source }
}
