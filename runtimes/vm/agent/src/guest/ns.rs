//! The pod's namespaces (net, ipc, uts), pinned by bind mounts under [`paths::NS_DIR`], and
//! running code inside them on a dedicated thread (namespaces are per thread; the thread ends
//! with its work, so no pool thread is ever left in a pod namespace).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::statfs::{FsType, fstatfs};
use unicri_vm_agent::proto::paths;

use super::error::{Error, Result};

const NSFS_MAGIC: FsType = FsType(0x6e73_6673);
/// The pinned namespaces: file name, clone flag.
const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// The pin of namespace `kind` (`net`, `ipc`, `uts`).
pub fn pin(kind: &str) -> PathBuf {
    Path::new(paths::NS_DIR).join(kind)
}

/// Whether `path` is a namespace pin (an nsfs bind mount).
pub fn is_pinned(path: &Path) -> bool {
    File::open(path)
        .ok()
        .and_then(|f| fstatfs(&f).ok())
        .is_some_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Which sysctls go to which namespace: `net.*` → net, `kernel.*`/`fs.mqueue.*` → ipc.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    if key.starts_with("net.") {
        Some("net")
    } else if key.starts_with("kernel.") || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else {
        None
    }
}

/// `/proc/sys/...` of a sysctl key (dots → slashes), refusing keys that could leave it.
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    if key.is_empty()
        || key.contains('/')
        || key.contains('\0')
        || key.split('.').any(|p| p.is_empty())
    {
        return Err(Error::invalid(format!(
            "sysctl {key:?} is not a valid name"
        )));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Make the pod's namespaces if they are not pinned yet, and (again) set the hostname and
/// sysctls in them.
pub fn ensure(hostname: &str, sysctls: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(paths::NS_DIR)
        .map_err(|e| Error::io(format!("create {}", paths::NS_DIR), &e))?;
    let pinned = KINDS.iter().all(|(k, _)| is_pinned(&pin(k)));
    let hostname = hostname.to_string();
    let sysctls = sysctls.to_vec();
    run_thread(move || {
        if pinned {
            for (kind, flag) in KINDS {
                join(&pin(kind), flag)?;
            }
        } else {
            for (kind, _) in KINDS {
                let p = pin(kind);
                if is_pinned(&p) {
                    super::mounts::unmount(&p)?;
                }
            }
            let flags = KINDS.iter().fold(CloneFlags::empty(), |f, (_, c)| f | *c);
            nix::sched::unshare(flags)
                .map_err(|e| Error::sys("unshare the pod's namespaces", e))?;
        }
        if !hostname.is_empty() {
            nix::unistd::sethostname(&hostname)
                .map_err(|e| Error::sys(format!("set hostname {hostname:?}"), e))?;
        }
        for (key, value) in &sysctls {
            let path = sysctl_path(key)?;
            std::fs::write(&path, value)
                .map_err(|e| Error::io(format!("set sysctl {key}={value}"), &e))?;
        }
        if !pinned {
            for (kind, _) in KINDS {
                let p = pin(kind);
                File::create(&p).map_err(|e| Error::io(format!("create {}", p.display()), &e))?;
                let src = format!("/proc/thread-self/ns/{kind}");
                nix::mount::mount(
                    Some(src.as_str()),
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| Error::sys(format!("pin {src} at {}", p.display()), e))?;
            }
        }
        Ok(())
    })
}

fn join(pin: &Path, flag: CloneFlags) -> Result<()> {
    let f = File::open(pin).map_err(|e| Error::io(format!("open {}", pin.display()), &e))?;
    nix::sched::setns(f, flag).map_err(|e| Error::sys(format!("join {}", pin.display()), e))
}

/// Run `f` on a new thread that first joined the pod's network namespace.
pub fn in_pod_netns<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let p = pin("net");
    if !is_pinned(&p) {
        return Err(Error::precondition(
            "the pod's network namespace does not exist (no Setup yet)",
        ));
    }
    run_thread(move || {
        join(&p, CloneFlags::CLONE_NEWNET)?;
        f()
    })
}

/// Run `f` on a thread of its own and wait for it.
pub fn run_thread<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::Builder::new()
        .name("agent-ns".into())
        .spawn(f)
        .map_err(|e| Error::io("spawn a namespace thread", &e))?
        .join()
        .map_err(|_| Error::internal("a namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls() {
        assert_eq!(sysctl_namespace("net.ipv4.ip_forward"), Some("net"));
        assert_eq!(sysctl_namespace("kernel.shm_rmid_forced"), Some("ipc"));
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some("ipc"));
        assert_eq!(sysctl_namespace("vm.swappiness"), None);
        assert_eq!(
            sysctl_path("net.ipv4.ping_group_range").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ping_group_range")
        );
        assert!(sysctl_path("net/../../x").is_err());
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("").is_err());
    }

    #[test]
    fn a_plain_file_is_no_pin() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_pinned(f.path()));
        assert!(!is_pinned(Path::new("/nonexistent/pin")));
    }
}
