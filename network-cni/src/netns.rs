//! Pinned network namespaces without a process (CRI-O's `pinns` idea, done on a thread).
//!
//! * [`NetNs::create`] spawns a dedicated std thread that `unshare(CLONE_NEWNET)`s itself,
//!   bind-mounts `/proc/thread-self/ns/net` onto the pin file and exits. The caller never forks
//!   (it is multi-threaded) and the thread that changed namespace never returns to a pool.
//! * [`NetNs::remove`] unmounts the pin (`MNT_DETACH`, repeated while stacked) and unlinks it;
//!   missing is fine, so it is idempotent.
//! * [`run_in`] runs a closure on a fresh thread that `setns`'d into the namespace.
//!
//! Mount propagation: before the first pin in a directory, the directory is made a mount point
//! (bind-mounted onto itself when it is not one) with **shared** propagation (`MS_SHARED|MS_REC`),
//! exactly what containerd and `ip netns` do for their netns directories. We chose shared over
//! private on purpose: with a private directory, a mount namespace created later (a helper,
//! a container before it pivots) keeps a *copy* of every pin mount, and our unmount does not reach
//! that copy, so the namespace (and its veth, its IPs) would live on after `remove`. With shared
//! propagation the unmount propagates to those copies (they are peers or slaves). Pins show up
//! in peer mount namespaces too, which is what CNI daemons that mount the netns directory with
//! `HostToContainer` propagation expect.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs, statfs};

use crate::error::CniError;

/// An open handle on a pinned network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Creates a network namespace pinned at `pin_path` (a file in a directory owned by the
    /// daemon; the directory is created and prepared as the module docs describe). Fails with
    /// [`CniError::NetNsExists`] when the path already holds a namespace; a plain file left by a
    /// crash is reused.
    pub fn create(pin_path: &Path) -> Result<NetNs, CniError> {
        let err = |op: &'static str| {
            move |e: Errno| CniError::CreateNetNs {
                path: pin_path.to_path_buf(),
                op,
                source: e.into(),
            }
        };
        let dir = pin_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| CniError::InvalidArgument {
                what: "netns pin path",
                value: pin_path.display().to_string(),
                reason: "must name a file inside a directory",
            })?;
        prepare_pin_dir(dir)?;
        if is_pinned(pin_path) {
            return Err(CniError::NetNsExists {
                path: pin_path.to_path_buf(),
            });
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o444)
            .open(pin_path)
            .map_err(|source| CniError::CreateNetNs {
                path: pin_path.to_path_buf(),
                op: "create pin file",
                source,
            })?;

        let target = pin_path.to_path_buf();
        let pinned = std::thread::Builder::new()
            .name("unicri-netns-pin".into())
            .spawn(move || -> Result<(), CniError> {
                let err = |op: &'static str| {
                    let path = target.clone();
                    move |e: Errno| CniError::CreateNetNs {
                        path,
                        op,
                        source: e.into(),
                    }
                };
                // Only this thread moves; it exits right after, taking the namespace switch
                // with it. The bind mount keeps the namespace alive.
                unshare(CloneFlags::CLONE_NEWNET).map_err(err("unshare(CLONE_NEWNET)"))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(err("bind mount /proc/thread-self/ns/net"))
            })
            .map_err(|source| CniError::CreateNetNs {
                path: pin_path.to_path_buf(),
                op: "spawn pin thread",
                source,
            })?
            .join()
            .unwrap_or_else(|_| Err(err("pin thread panicked")(Errno::EIO)));
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(pin_path);
            return Err(e);
        }
        NetNs::open(pin_path)
    }

    /// Opens the namespace pinned at `pin_path`; [`CniError::NotNetNs`] when the path exists but
    /// holds none.
    pub fn open(pin_path: &Path) -> Result<NetNs, CniError> {
        let file = File::open(pin_path).map_err(|source| CniError::OpenNetNs {
            path: pin_path.to_path_buf(),
            source,
        })?;
        let fs = fstatfs(&file).map_err(|e| CniError::OpenNetNs {
            path: pin_path.to_path_buf(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(CniError::NotNetNs {
                path: pin_path.to_path_buf(),
            });
        }
        Ok(NetNs {
            path: pin_path.to_path_buf(),
            file,
        })
    }

    /// Unpins and deletes the namespace at `pin_path` (it dies once nothing else holds it).
    /// Idempotent: a missing file or a file without a mount is fine.
    pub fn remove(pin_path: &Path) -> Result<(), CniError> {
        // a pin can be stacked (two mounts on one file after a race); unmount until none is left
        for _ in 0..16 {
            match umount2(pin_path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(e) => {
                    return Err(CniError::RemoveNetNs {
                        path: pin_path.to_path_buf(),
                        op: "umount",
                        source: e.into(),
                    });
                }
            }
        }
        match std::fs::remove_file(pin_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::RemoveNetNs {
                path: pin_path.to_path_buf(),
                op: "unlink",
                source,
            }),
        }
    }

    /// The pin path (what plugins get as `CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside this namespace and returns its value. The thread exits
    /// afterwards; a panic in `f` is resumed on the caller. Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn run<F, T>(&self, f: F) -> Result<T, CniError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T, CniError> {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| CniError::EnterNetNs {
                    path: self.path.clone(),
                    source: e.into(),
                })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` inside the namespace pinned at `pin_path` (see [`NetNs::run`]).
pub fn run_in<F, T>(pin_path: &Path, f: F) -> Result<T, CniError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    NetNs::open(pin_path)?.run(f)
}

/// True when `path` holds a pinned namespace (its file system is nsfs).
pub fn is_pinned(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Creates `dir` and makes it a shared mount point (see `unicri-mounts` for why).
pub fn prepare_pin_dir(dir: &Path) -> Result<(), CniError> {
    unicri_mounts::prepare_shared_dir(dir).map_err(|e| CniError::PreparePinDir {
        dir: dir.to_path_buf(),
        op: e.op,
        source: e.source,
    })
}

/// Undoes [`prepare_pin_dir`]'s self bind mount of `dir` (lazily; pins inside go with it). For
/// tests and tooling; the daemon keeps its directory prepared.
pub fn release_pin_dir(dir: &Path) -> Result<(), CniError> {
    unicri_mounts::release_shared_dir(dir).map_err(|e| CniError::PreparePinDir {
        dir: dir.to_path_buf(),
        op: e.op,
        source: e.source,
    })
}

/// Counters of one network interface (from `/proc/net/dev`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (f.len() >= 11).then(|| InterfaceStats {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

/// The interface counters inside the pinned namespace at `pin_path` (read on a thread that
/// joined it; `lo` included).
pub fn interface_stats(pin_path: &Path) -> Result<Vec<InterfaceStats>, CniError> {
    let text = run_in(pin_path, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })?;
    text.map(|t| parse_net_dev(&t))
        .map_err(|source| CniError::EnterNetNs {
            path: pin_path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod net_dev_tests {
    use super::*;

    #[test]
    fn proc_net_dev_is_parsed() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 1234567      10    3    0    0     0          0         0    98765       9    4    0    0     0       0          0
";
        let s = parse_net_dev(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 1_234_567,
                rx_errors: 3,
                tx_bytes: 98_765,
                tx_errors: 4,
            }
        );
    }
}
