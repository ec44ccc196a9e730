//! A `linux` pod without a process: pinned IPC/UTS namespaces, `/dev/shm` tmpfs, pod files and the
//! pod cgroup, created with full rollback and removed idempotently.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use serde::{Deserialize, Serialize};
use unicri_sandbox::pod::{NamespaceMode, PodSpec};

use crate::cgroups::{self, CgroupManager, CgroupState};
use crate::error::LinuxError;
use crate::files;
use crate::mountinfo;
use crate::ns::{self, NsKind, PinRequest};
use crate::sysctl;

/// Default size of a pod's `/dev/shm` (Docker's and containerd's default).
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// What [`LinuxPod::create`] made; the daemon persists it (opaque JSON) and hands it back to
/// [`LinuxPod::remove`] and [`LinuxPod::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodState {
    /// The pod directory (canonical); everything else of the pod's lives below it.
    pub pod_dir: PathBuf,
    /// Pin of the pod's IPC namespace (`None`: host IPC).
    pub ipc_pin: Option<PathBuf>,
    /// Pin of the pod's UTS namespace (`None`: host network, so the node's hostname).
    pub uts_pin: Option<PathBuf>,
    /// Mount point of the pod's `/dev/shm` tmpfs (`None`: host IPC, containers use the node's).
    pub shm: Option<PathBuf>,
    /// The pod's hostname (the spec's, or the node's when the spec has none).
    pub hostname: String,
    /// `<pod_dir>/hostname`.
    pub hostname_file: Option<PathBuf>,
    /// `<pod_dir>/hosts`.
    pub hosts_file: Option<PathBuf>,
    /// `<pod_dir>/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The pod cgroup.
    pub cgroup: Option<CgroupState>,
}

/// Something [`LinuxPod::check`] found wrong with a pod after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The pod directory is gone.
    PodDirMissing(PathBuf),
    /// A namespace pin is no longer mounted (the namespace may be gone).
    PinMissing {
        /// `ipc` or `uts`.
        kind: &'static str,
        /// The pin file.
        path: PathBuf,
    },
    /// The shm tmpfs is not mounted.
    ShmNotMounted(PathBuf),
    /// A pod file is missing.
    FileMissing(PathBuf),
    /// A pod cgroup directory is missing.
    CgroupMissing(PathBuf),
}

/// The pod half of the `linux` backend (associated functions; no state of its own).
#[derive(Debug)]
pub struct LinuxPod;

impl LinuxPod {
    /// Creates the pod described by `spec` under `pod_dir` (which must not hold a live pod). The
    /// parent of `pod_dir` is made a shared mount once per process (see [`ns`]). Steps: pinned
    /// IPC/UTS namespaces with hostname and IPC sysctls, shm tmpfs, pod files, pod cgroup. Any
    /// failure undoes every earlier step; the error is the original one, wrapped in
    /// [`LinuxError::RollbackFailed`] only when the undo failed too.
    ///
    /// `net.*` sysctls are validated here but applied by [`sysctl::apply_net_sysctls`] once the
    /// network namespace exists. Blocking: call it from `spawn_blocking` in async code.
    pub fn create(pod_dir: &Path, spec: &PodSpec) -> Result<PodState, LinuxError> {
        // everything that can be refused is refused before anything is made
        let (ipc_sysctls, _net) = sysctl::validate(spec)?;
        if !spec.hostname.is_empty() {
            files::check_hostname(&spec.hostname)?;
        }
        if spec.shm_size == Some(0) {
            return Err(LinuxError::InvalidArgument {
                what: "shm size",
                value: "0".into(),
                reason: "must be positive (tmpfs size 0 means unlimited)".into(),
            });
        }
        let resolv = if spec.dns.is_empty() {
            None
        } else {
            Some(files::render_resolv_conf(&spec.dns)?)
        };
        let cgroup_path = cgroups::pod_cgroup_path(&spec.cgroup_parent, &spec.id)?;
        let cgroup_manager = CgroupManager::detect()?;
        let parent = pod_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| LinuxError::InvalidArgument {
                what: "pod directory",
                value: pod_dir.display().to_string(),
                reason: "must be a directory inside the pods directory".into(),
            })?;
        ns::prepare_pods_dir(parent)?;
        if pod_dir.exists() {
            let live = live_mounts(pod_dir)?;
            if !live.is_empty() {
                return Err(LinuxError::PodExists {
                    path: pod_dir.to_path_buf(),
                });
            }
        }

        let span = tracing::info_span!("linux_pod_create", pod_id = %spec.id);
        let _enter = span.enter();
        let mut state = PodState::default();
        match create_steps(
            pod_dir,
            spec,
            &ipc_sysctls,
            resolv.as_deref(),
            &cgroup_manager,
            &cgroup_path,
            &mut state,
        ) {
            Ok(()) => {
                tracing::info!(pod_dir = %state.pod_dir.display(), cgroup = %cgroup_path, "linux pod created");
                Ok(state)
            }
            Err(error) => {
                tracing::warn!(%error, "linux pod create failed; rolling back");
                // the pod dir may exist without being recorded yet
                if state.pod_dir.as_os_str().is_empty() {
                    state.pod_dir = pod_dir.to_path_buf();
                }
                match LinuxPod::remove(&state) {
                    Ok(()) => Err(error),
                    Err(cleanup) => Err(LinuxError::RollbackFailed {
                        error: Box::new(error),
                        cleanup: Box::new(cleanup),
                    }),
                }
            }
        }
    }

    /// Removes everything `state` records: unpins namespaces (`MNT_DETACH`), unmounts shm,
    /// removes the cgroups this pod created and the pod directory (only when nothing is mounted
    /// below it any more). Idempotent: missing parts are fine. Every step is tried; the errors are
    /// returned together.
    pub fn remove(state: &PodState) -> Result<(), LinuxError> {
        let mut errors = vec![];
        for pin in [&state.ipc_pin, &state.uts_pin].into_iter().flatten() {
            if let Err(e) = ns::unpin(pin) {
                errors.push(e);
            }
        }
        if let Some(shm) = &state.shm
            && let Err(e) = ns::unmount_all(shm)
        {
            errors.push(e);
        }
        if let Some(cg) = &state.cgroup
            && let Err(e) = CgroupManager::remove(cg)
        {
            errors.push(e);
        }
        if let Err(e) = remove_pod_dir(&state.pod_dir) {
            errors.push(e);
        }
        match LinuxError::collect(errors) {
            None => {
                tracing::info!(pod_dir = %state.pod_dir.display(), "linux pod removed");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    /// What is wrong with a pod after a restart (empty when all is in place).
    pub fn check(state: &PodState) -> Vec<Problem> {
        let mut problems = vec![];
        if !state.pod_dir.is_dir() {
            problems.push(Problem::PodDirMissing(state.pod_dir.clone()));
        }
        for (kind, pin) in [("ipc", &state.ipc_pin), ("uts", &state.uts_pin)] {
            if let Some(pin) = pin
                && !ns::is_pinned(pin)
            {
                problems.push(Problem::PinMissing {
                    kind,
                    path: pin.clone(),
                });
            }
        }
        if let Some(shm) = &state.shm {
            let mounted = mountinfo::read()
                .map(|m| mountinfo::mounted_at(&m, shm).is_some_and(|e| e.fs_type == "tmpfs"))
                .unwrap_or(false);
            if !mounted {
                problems.push(Problem::ShmNotMounted(shm.clone()));
            }
        }
        for f in [&state.hostname_file, &state.hosts_file, &state.resolv_conf]
            .into_iter()
            .flatten()
        {
            if !f.is_file() {
                problems.push(Problem::FileMissing(f.clone()));
            }
        }
        for d in state.cgroup.iter().flat_map(|c| &c.dirs) {
            if !d.is_dir() {
                problems.push(Problem::CgroupMissing(d.clone()));
            }
        }
        problems
    }

    /// Runs `f` inside the pod's UTS namespace (or the node's when the pod has none).
    pub fn run_in_uts<F, T>(state: &PodState, f: F) -> Result<T, LinuxError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match &state.uts_pin {
            Some(pin) => ns::run_in(pin, NsKind::Uts, f),
            None => Ok(f()),
        }
    }

    /// Runs `f` inside the pod's IPC namespace (or the node's when the pod has none).
    pub fn run_in_ipc<F, T>(state: &PodState, f: F) -> Result<T, LinuxError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match &state.ipc_pin {
            Some(pin) => ns::run_in(pin, NsKind::Ipc, f),
            None => Ok(f()),
        }
    }
}

fn create_steps(
    pod_dir: &Path,
    spec: &PodSpec,
    ipc_sysctls: &[sysctl::Sysctl],
    resolv: Option<&str>,
    cgroup_manager: &CgroupManager,
    cgroup_path: &str,
    state: &mut PodState,
) -> Result<(), LinuxError> {
    let file_err = |op: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| LinuxError::PodFile { op, path, source }
    };
    // 1. pod directory
    match std::fs::create_dir(pod_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {} // leftover without mounts
        Err(e) => return Err(file_err("create pod directory", pod_dir)(e)),
    }
    let dir = std::fs::canonicalize(pod_dir).map_err(file_err("canonicalize", pod_dir))?;
    state.pod_dir = dir.clone();

    // 2. namespaces: host IPC → no IPC pin; host network → no UTS pin (node hostname)
    let pod_ipc = spec.namespaces.ipc == NamespaceMode::Pod;
    let pod_net = spec.namespaces.network == NamespaceMode::Pod;
    let hostname = if spec.hostname.is_empty() {
        nix::unistd::gethostname()
            .map_err(|e| file_err("gethostname", Path::new("/proc/sys/kernel/hostname"))(e.into()))?
            .to_string_lossy()
            .into_owned()
    } else {
        spec.hostname.clone()
    };
    state.hostname = hostname.clone();
    let req = PinRequest {
        ipc: pod_ipc.then(|| dir.join("ns/ipc")),
        uts: pod_net.then(|| dir.join("ns/uts")),
        hostname: if pod_net { &spec.hostname } else { "" },
        ipc_sysctls,
    };
    ns::pin_ipc_uts(&req)?;
    state.ipc_pin = req.ipc;
    state.uts_pin = req.uts;

    // 3. /dev/shm
    if pod_ipc {
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(file_err("create shm directory", &shm))?;
        let size = spec.shm_size.unwrap_or(DEFAULT_SHM_SIZE);
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,size={size}").as_str()),
        )
        .map_err(|e| LinuxError::MountShm {
            path: shm.clone(),
            source: e.into(),
        })?;
        state.shm = Some(shm);
    }

    // 4. files
    let hostname_file = dir.join("hostname");
    files::write_atomic(&hostname_file, format!("{hostname}\n").as_bytes())?;
    state.hostname_file = Some(hostname_file);
    let hosts = dir.join("hosts");
    if pod_net {
        files::write_atomic(&hosts, files::HOSTS_HEADER.as_bytes())?;
    } else {
        files::copy_atomic(Path::new(files::HOST_HOSTS), &hosts)?;
    }
    state.hosts_file = Some(hosts);
    let resolv_conf = dir.join("resolv.conf");
    match resolv {
        Some(text) => files::write_atomic(&resolv_conf, text.as_bytes())?,
        None => files::copy_atomic(Path::new(files::HOST_RESOLV_CONF), &resolv_conf)?,
    }
    state.resolv_conf = Some(resolv_conf);

    // 5. cgroup (last: the step most likely to fail on a misconfigured node)
    state.cgroup = Some(cgroup_manager.create(cgroup_path)?);
    Ok(())
}

/// Mount points at or below `dir` in this mount namespace.
fn live_mounts(dir: &Path) -> Result<Vec<PathBuf>, LinuxError> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let entries = mountinfo::read().map_err(|source| LinuxError::PodFile {
        op: "read mountinfo",
        path: PathBuf::from("/proc/self/mountinfo"),
        source,
    })?;
    Ok(mountinfo::mounts_under(&entries, &dir))
}

fn remove_pod_dir(dir: &Path) -> Result<(), LinuxError> {
    if dir.as_os_str().is_empty() || dir == Path::new("/") || !dir.exists() {
        return Ok(());
    }
    let mounts = live_mounts(dir)?;
    if !mounts.is_empty() {
        return Err(LinuxError::MountsLeft {
            path: dir.to_path_buf(),
            mounts,
        });
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LinuxError::PodFile {
            op: "remove pod directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}
