//! Pod cgroups through cgroupfs (no systemd): v2 unified or v1 (hybrid hosts included).
//!
//! * [`CgroupManager::detect`] reads `/proc/self/mountinfo`: `/sys/fs/cgroup/cgroup.controllers`
//!   means v2 unified; otherwise each mounted v1 hierarchy holding one of [`V1_CONTROLLERS`] is
//!   used (co-mounted ones such as `cpu,cpuacct` count once; unmounted ones are skipped).
//! * [`CgroupManager::create`] makes the pod cgroup in every hierarchy, level by level, and
//!   records which directories it made. On v1 `cpuset.cpus`/`cpuset.mems` are copied from the
//!   parent when empty (attaching would fail otherwise); on v2 the available controllers are
//!   enabled in the `cgroup.subtree_control` of each ancestor and of the pod cgroup itself (it
//!   never holds a process; its containers are created below it). Idempotent: existing levels are kept
//!   and not recorded.
//! * [`CgroupManager::remove`] rmdirs only recorded directories, deepest first. The pod's own
//!   directory is retried briefly on `EBUSY` and reported with its processes when it stays;
//!   recorded ancestors are shared with other pods, so they are removed only when empty.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{CgroupLeftover, LinuxError};
use crate::mountinfo::{self, MountEntry};

/// v1 controllers a pod cgroup is created in (when mounted).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "hugetlb", "freezer", "devices",
];

/// v2 controllers enabled for pod cgroups (when available).
pub const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// Default v2 mount point and v1 tmpfs.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

const EBUSY_RETRIES: u32 = 10;
const EBUSY_DELAY: Duration = Duration::from_millis(20);

/// One mounted v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// The controllers it carries (of [`V1_CONTROLLERS`]), e.g. `["cpu", "cpuacct"]`.
    pub controllers: Vec<String>,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The node's cgroup layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v1 (or hybrid: v1 controllers plus an empty unified tree, which we ignore).
    V1(Vec<V1Hierarchy>),
    /// cgroup v2 unified, mounted at the given root.
    V2(PathBuf),
}

/// What [`CgroupManager::create`] did; persisted with the pod (opaque JSON to the daemon).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupState {
    /// The pod cgroup path inside each hierarchy (e.g. `/kubepods/besteffort/pod<uid>`).
    pub path: String,
    /// The pod cgroup's directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// Directories this pod created (ancestors before descendants); only these are removed.
    pub created: Vec<PathBuf>,
}

impl CgroupState {
    /// Processes in the pod cgroup, over all hierarchies.
    pub fn pids(&self) -> Result<BTreeSet<i32>, LinuxError> {
        let mut all = BTreeSet::new();
        for d in &self.dirs {
            all.extend(pids_in(d)?);
        }
        Ok(all)
    }
}

/// Creates and removes pod cgroups with the cgroupfs driver.
#[derive(Clone, Debug)]
pub struct CgroupManager {
    layout: CgroupLayout,
}

impl CgroupManager {
    /// Detects the node's layout (see the module docs).
    pub fn detect() -> Result<CgroupManager, LinuxError> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Ok(CgroupManager {
                layout: CgroupLayout::V2(root.to_path_buf()),
            });
        }
        let entries = mountinfo::read().map_err(|e| LinuxError::DetectCgroups {
            reason: format!("read /proc/self/mountinfo: {e}"),
        })?;
        let hierarchies = v1_hierarchies(&entries);
        if hierarchies.is_empty() {
            return Err(LinuxError::DetectCgroups {
                reason: "neither cgroup v2 at /sys/fs/cgroup nor any v1 controller is mounted"
                    .into(),
            });
        }
        Ok(CgroupManager {
            layout: CgroupLayout::V1(hierarchies),
        })
    }

    /// A manager over a given layout (tests, unusual mounts).
    pub fn with_layout(layout: CgroupLayout) -> CgroupManager {
        CgroupManager { layout }
    }

    /// The layout in use.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// The mount points of the hierarchies in use.
    pub fn roots(&self) -> Vec<PathBuf> {
        match &self.layout {
            CgroupLayout::V1(h) => h.iter().map(|h| h.mount_point.clone()).collect(),
            CgroupLayout::V2(root) => vec![root.clone()],
        }
    }

    /// Creates the cgroup `path` (see [`pod_cgroup_path`]) in every hierarchy. On failure the
    /// directories made so far are removed again.
    pub fn create(&self, path: &str) -> Result<CgroupState, LinuxError> {
        let components = split_path(path)?;
        let mut state = CgroupState {
            path: path.to_string(),
            ..CgroupState::default()
        };
        let result = (|| {
            for root in self.roots() {
                let cpuset = match &self.layout {
                    CgroupLayout::V1(h) => h.iter().any(|h| {
                        h.mount_point == root && h.controllers.iter().any(|c| c == "cpuset")
                    }),
                    CgroupLayout::V2(_) => false,
                };
                let v2 = matches!(self.layout, CgroupLayout::V2(_));
                let leaf = create_in(&root, &components, cpuset, v2, &mut state.created)?;
                state.dirs.push(leaf);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(state),
            Err(e) => match CgroupManager::remove(&state) {
                Ok(()) => Err(e),
                Err(c) => Err(LinuxError::RollbackFailed {
                    error: Box::new(e),
                    cleanup: Box::new(c),
                }),
            },
        }
    }

    /// Removes the directories recorded in `state`, deepest first (see the module docs).
    /// Idempotent: missing directories are fine.
    pub fn remove(state: &CgroupState) -> Result<(), LinuxError> {
        let mut created = state.created.clone();
        created.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let mut leftovers = vec![];
        for dir in created {
            let is_pod_dir = state.dirs.contains(&dir);
            if !is_pod_dir && has_subdirs(&dir) {
                continue; // an ancestor shared with another pod
            }
            let mut attempt = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if !is_pod_dir => {
                        tracing::debug!(dir = %dir.display(), error = %e, "shared cgroup ancestor kept");
                        break;
                    }
                    Err(e)
                        if e.raw_os_error() == Some(nix::libc::EBUSY)
                            && attempt < EBUSY_RETRIES =>
                    {
                        attempt += 1;
                        std::thread::sleep(EBUSY_DELAY);
                    }
                    Err(error) => {
                        leftovers.push(CgroupLeftover {
                            pids: pids_in(&dir).unwrap_or_default(),
                            path: dir.clone(),
                            error,
                        });
                        break;
                    }
                }
            }
        }
        if leftovers.is_empty() {
            Ok(())
        } else {
            Err(LinuxError::RemoveCgroups { leftovers })
        }
    }
}

/// The cgroup path for a pod: `cgroup_parent` as given (kubelet passes the pod-level cgroup it
/// made, e.g. `/kubepods/besteffort/pod<uid>`), or `/unicri/pod-<id>` when empty. Refuses
/// systemd slice names (only the cgroupfs driver exists) and paths that leave the hierarchy.
pub fn pod_cgroup_path(cgroup_parent: &str, pod_id: &str) -> Result<String, LinuxError> {
    let path = if cgroup_parent.is_empty() {
        format!("/unicri/pod-{pod_id}")
    } else {
        cgroup_parent.to_string()
    };
    if path.ends_with(".slice") && !path.contains('/') {
        return Err(LinuxError::InvalidArgument {
            what: "cgroup parent",
            value: path,
            reason: "systemd slice names need the systemd cgroup driver; unicri uses cgroupfs"
                .into(),
        });
    }
    let components = split_path(&path)?;
    Ok(format!("/{}", components.join("/")))
}

/// Splits a cgroup path into its components: absolute or relative to the hierarchy root, no `.`
/// or `..`, not the root itself.
fn split_path(path: &str) -> Result<Vec<String>, LinuxError> {
    let invalid = |reason: &str| LinuxError::InvalidArgument {
        what: "cgroup path",
        value: path.to_string(),
        reason: reason.to_string(),
    };
    let mut out = vec![];
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("must not contain '.' or '..'"));
            }
        }
    }
    if out.is_empty() {
        return Err(invalid("must name a cgroup below the root"));
    }
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    Ok(out)
}

/// Creates `components` under `root` level by level; returns the leaf.
fn create_in(
    root: &Path,
    components: &[String],
    cpuset: bool,
    v2: bool,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, LinuxError> {
    let mut dir = root.to_path_buf();
    for c in components {
        if v2 {
            enable_v2_controllers(&dir);
        }
        let parent = dir.clone();
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(source) => {
                return Err(LinuxError::CreateCgroup {
                    path: dir,
                    op: "mkdir",
                    source,
                });
            }
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                copy_if_empty(&parent.join(file), &dir.join(file))?;
            }
        }
    }
    if v2 {
        // containers are created below the pod cgroup (which holds no process itself)
        enable_v2_controllers(&dir);
    }
    Ok(dir)
}

fn copy_if_empty(from: &Path, to: &Path) -> Result<(), LinuxError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| LinuxError::CreateCgroup {
            path: p.to_path_buf(),
            op: "read cpuset",
            source,
        })
    };
    if !read(to)?.trim().is_empty() {
        return Ok(());
    }
    let value = read(from)?;
    std::fs::write(to, value.trim()).map_err(|source| LinuxError::CreateCgroup {
        path: to.to_path_buf(),
        op: "copy cpuset from parent",
        source,
    })
}

/// Enables the wanted controllers `dir` offers in its `cgroup.subtree_control` (best effort:
/// a controller that cannot be enabled is logged, the pod still runs without it).
fn enable_v2_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in available.split_whitespace() {
        if V2_CONTROLLERS.contains(&c)
            && !enabled.split_whitespace().any(|e| e == c)
            && let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"))
        {
            tracing::warn!(dir = %dir.display(), controller = c, error = %e, "enable cgroup controller");
        }
    }
}

fn has_subdirs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false)
}

/// The processes in one cgroup directory (`cgroup.procs`); a missing directory has none.
pub fn pids_in(dir: &Path) -> Result<Vec<i32>, LinuxError> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(LinuxError::ReadCgroup {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The v1 hierarchies (mounted at their root) carrying any of [`V1_CONTROLLERS`], once each.
pub fn v1_hierarchies(entries: &[MountEntry]) -> Vec<V1Hierarchy> {
    let mut out: Vec<V1Hierarchy> = vec![];
    for e in entries
        .iter()
        .filter(|e| e.fs_type == "cgroup" && e.root == Path::new("/"))
    {
        let controllers: Vec<String> = e
            .super_options
            .iter()
            .filter(|o| V1_CONTROLLERS.contains(&o.as_str()))
            .cloned()
            .collect();
        if controllers.is_empty() || out.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        out.push(V1Hierarchy {
            controllers,
            mount_point: e.mount_point.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroup_paths() {
        assert_eq!(
            pod_cgroup_path("/kubepods/besteffort/pod123", "x").expect("ok"),
            "/kubepods/besteffort/pod123"
        );
        assert_eq!(
            pod_cgroup_path("kubepods//podA/", "x").expect("ok"),
            "/kubepods/podA"
        );
        assert_eq!(pod_cgroup_path("", "abc").expect("ok"), "/unicri/pod-abc");
        for bad in ["/", "/a/../b", "./a", "kubepods-besteffort.slice"] {
            assert!(pod_cgroup_path(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_v1_hierarchies_once_with_comounts() {
        let text = "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    32 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
                    33 25 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    34 25 0:27 / /mnt/memory-again rw - cgroup cgroup rw,memory\n\
                    35 25 0:30 /sub /mnt/pids-sub rw - cgroup cgroup rw,pids\n";
        let h = v1_hierarchies(&mountinfo::parse(text));
        assert_eq!(
            h,
            [
                V1Hierarchy {
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                    mount_point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                },
                V1Hierarchy {
                    controllers: vec!["memory".into()],
                    mount_point: "/sys/fs/cgroup/memory".into(),
                },
            ]
        );
    }

    #[test]
    fn create_and_remove_in_plain_directories() {
        // a plain directory stands in for a hierarchy: mkdir/rmdir semantics are enough here
        let dir = tempfile::tempdir().expect("tempdir");
        let mgr = CgroupManager::with_layout(CgroupLayout::V1(vec![V1Hierarchy {
            controllers: vec!["memory".into()],
            mount_point: dir.path().to_path_buf(),
        }]));
        std::fs::create_dir(dir.path().join("kubepods")).expect("existing parent");
        let state = mgr.create("/kubepods/a/pod1").expect("create");
        assert_eq!(state.dirs, [dir.path().join("kubepods/a/pod1")]);
        assert_eq!(
            state.created,
            [
                dir.path().join("kubepods/a"),
                dir.path().join("kubepods/a/pod1")
            ]
        );
        // idempotent: a second create records nothing
        let again = mgr.create("/kubepods/a/pod1").expect("create again");
        assert!(again.created.is_empty());
        // a sibling keeps the shared ancestor alive
        let sibling = mgr.create("/kubepods/a/pod2").expect("sibling");
        CgroupManager::remove(&state).expect("remove");
        assert!(!dir.path().join("kubepods/a/pod1").exists());
        assert!(dir.path().join("kubepods/a/pod2").exists());
        CgroupManager::remove(&sibling).expect("remove sibling");
        CgroupManager::remove(&state).expect("remove is idempotent");
        assert!(!dir.path().join("kubepods/a").exists());
        assert!(dir.path().join("kubepods").exists(), "not ours");
    }
}

/// Usage figures of one cgroup, over whichever hierarchies have them (`None`: not available).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time, ns (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub cpu_usage_ns: Option<u64>,
    /// Memory in use, bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file cache (kubelet's working set).
    pub working_set: Option<u64>,
    /// Anonymous + swap cache memory (v1 `total_rss`, v2 `anon`).
    pub rss: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// The memory limit, bytes (`None` when unlimited).
    pub memory_limit: Option<u64>,
    /// Processes in the cgroup (`pids.current`).
    pub pids: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reads the usage of cgroup `path` (as given to [`CgroupManager::create`] or a container's
/// `cgroupsPath`) below each of `roots`. Missing files leave their figures `None`.
pub fn stats(roots: &[PathBuf], path: &str) -> CgroupStats {
    let rel = path.trim_start_matches('/');
    let mut s = CgroupStats::default();
    for root in roots {
        let dir = root.join(rel);
        if !dir.is_dir() {
            continue;
        }
        if let Some(v) = read_u64(&dir.join("cpuacct.usage")) {
            s.cpu_usage_ns = Some(v);
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("cpu.stat"))
            && let Some(us) = stat_field(&text, "usage_usec")
        {
            s.cpu_usage_ns = Some(us.saturating_mul(1000));
        }
        // v1 memory controller
        if let Some(usage) = read_u64(&dir.join("memory.usage_in_bytes")) {
            let text = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_field(&text, "total_inactive_file").unwrap_or(0);
            s.memory_usage = Some(usage);
            s.working_set = Some(usage.saturating_sub(inactive));
            s.rss = stat_field(&text, "total_rss");
            s.page_faults = stat_field(&text, "total_pgfault");
            s.major_page_faults = stat_field(&text, "total_pgmajfault");
            // v1 reports "unlimited" as a huge page-aligned number
            s.memory_limit =
                read_u64(&dir.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 62));
        }
        // v2 memory controller
        if let Some(usage) = read_u64(&dir.join("memory.current")) {
            let text = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_field(&text, "inactive_file").unwrap_or(0);
            s.memory_usage = Some(usage);
            s.working_set = Some(usage.saturating_sub(inactive));
            s.rss = stat_field(&text, "anon");
            s.page_faults = stat_field(&text, "pgfault");
            s.major_page_faults = stat_field(&text, "pgmajfault");
            s.memory_limit = read_u64(&dir.join("memory.max"));
        }
        if let Some(v) = read_u64(&dir.join("pids.current")) {
            s.pids = Some(v);
        }
    }
    s
}

/// Applies `r` live to cgroup `path` below each of `roots` (CRI UpdateContainerResources).
/// Zero/empty fields are left as they are. v1: `cpu.*`, `memory.*`, `cpuset.*`,
/// `hugetlb.*`; v2: `cpu.max`, `cpu.weight`, `memory.max`, `memory.swap.max`, `cpuset.*` and
/// the `unified` keys. A memory limit below current usage the kernel cannot reclaim fails with
/// the kernel's error.
pub fn update_resources(
    roots: &[PathBuf],
    path: &str,
    r: &unicri_sandbox::container::Resources,
) -> Result<(), LinuxError> {
    let rel = path.trim_start_matches('/');
    let mut applied = false;
    for root in roots {
        let dir = root.join(rel);
        if !dir.is_dir() {
            continue;
        }
        applied = true;
        let write = |file: &str, value: String| -> Result<(), LinuxError> {
            let p = dir.join(file);
            std::fs::write(&p, &value).map_err(|source| LinuxError::CreateCgroup {
                path: p.clone(),
                op: "write resource limit",
                source,
            })
        };
        let has = |file: &str| dir.join(file).exists();
        let v2 = has("cgroup.controllers");
        if v2 {
            if r.cpu_quota != 0 || r.cpu_period > 0 {
                let period = if r.cpu_period > 0 {
                    r.cpu_period
                } else {
                    100_000
                };
                let quota = if r.cpu_quota > 0 {
                    r.cpu_quota.to_string()
                } else {
                    "max".to_string()
                };
                write("cpu.max", format!("{quota} {period}"))?;
            }
            if r.cpu_shares > 0 {
                // the kubelet/runc conversion from shares (2..262144) to weight (1..10000)
                let shares = r.cpu_shares.clamp(2, 262_144) as u64;
                write(
                    "cpu.weight",
                    (1 + ((shares - 2) * 9999) / 262_142).to_string(),
                )?;
            }
            if r.memory_limit_in_bytes > 0 {
                write("memory.max", r.memory_limit_in_bytes.to_string())?;
                if r.memory_swap_limit_in_bytes > 0 && has("memory.swap.max") {
                    let swap = (r.memory_swap_limit_in_bytes - r.memory_limit_in_bytes).max(0);
                    write("memory.swap.max", swap.to_string())?;
                }
            }
            for (k, v) in &r.unified {
                write(k, v.clone())?;
            }
        } else {
            if r.cpu_shares > 0 && has("cpu.shares") {
                write("cpu.shares", r.cpu_shares.to_string())?;
            }
            if r.cpu_period > 0 && has("cpu.cfs_period_us") {
                write("cpu.cfs_period_us", r.cpu_period.to_string())?;
            }
            if r.cpu_quota != 0 && has("cpu.cfs_quota_us") {
                write("cpu.cfs_quota_us", r.cpu_quota.to_string())?;
            }
            if r.memory_limit_in_bytes > 0 && has("memory.limit_in_bytes") {
                let mem = r.memory_limit_in_bytes.to_string();
                let swap = (r.memory_swap_limit_in_bytes > 0 && has("memory.memsw.limit_in_bytes"))
                    .then(|| r.memory_swap_limit_in_bytes.to_string());
                // memory <= memsw must hold at every step: raise memsw first when growing
                if let Some(sw) = &swap {
                    if write("memory.limit_in_bytes", mem.clone()).is_err() {
                        write("memory.memsw.limit_in_bytes", sw.clone())?;
                        write("memory.limit_in_bytes", mem)?;
                    } else {
                        write("memory.memsw.limit_in_bytes", sw.clone())?;
                    }
                } else {
                    write("memory.limit_in_bytes", mem)?;
                }
            }
            for (size, limit) in &r.hugepage_limits {
                let file = format!("hugetlb.{size}.limit_in_bytes");
                if has(&file) {
                    write(&file, limit.to_string())?;
                }
            }
        }
        if !r.cpuset_cpus.is_empty() && has("cpuset.cpus") {
            write("cpuset.cpus", r.cpuset_cpus.clone())?;
        }
        if !r.cpuset_mems.is_empty() && has("cpuset.mems") {
            write("cpuset.mems", r.cpuset_mems.clone())?;
        }
    }
    if !applied {
        return Err(LinuxError::ReadCgroup {
            path: PathBuf::from(path),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the container has no cgroup (it is not running)",
            ),
        });
    }
    Ok(())
}

/// Bytes and inodes used under `dir` (not crossing into other filesystems' mount points is not
/// checked: callers pass a container's upper dir, which holds no mounts).
pub fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else {
                continue;
            };
            inodes += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn v1_and_v2_files_are_read_and_missing_ones_stay_none() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (v1cpu, v1mem, v2) = (
            tmp.path().join("cpuacct"),
            tmp.path().join("memory"),
            tmp.path().join("unified"),
        );
        let rel = "pod/c1";
        for r in [&v1cpu, &v1mem, &v2] {
            std::fs::create_dir_all(r.join(rel)).expect("mkdir");
        }
        std::fs::write(v1cpu.join(rel).join("cpuacct.usage"), "12345\n").expect("w");
        std::fs::write(v1mem.join(rel).join("memory.usage_in_bytes"), "1000\n").expect("w");
        std::fs::write(
            v1mem.join(rel).join("memory.stat"),
            "cache 5\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        )
        .expect("w");
        std::fs::write(
            v1mem.join(rel).join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("w");
        let s = stats(&[v1cpu.clone(), v1mem.clone()], "/pod/c1");
        assert_eq!(s.cpu_usage_ns, Some(12345));
        assert_eq!(s.memory_usage, Some(1000));
        assert_eq!(s.working_set, Some(700));
        assert_eq!(s.rss, Some(600));
        assert_eq!((s.page_faults, s.major_page_faults), (Some(7), Some(1)));
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.pids, None);

        std::fs::write(v2.join(rel).join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").expect("w");
        std::fs::write(v2.join(rel).join("memory.current"), "2000\n").expect("w");
        std::fs::write(
            v2.join(rel).join("memory.stat"),
            "anon 900\ninactive_file 100\n",
        )
        .expect("w");
        std::fs::write(v2.join(rel).join("pids.current"), "3\n").expect("w");
        let s = stats(&[v2], "pod/c1");
        assert_eq!(s.cpu_usage_ns, Some(5000));
        assert_eq!(s.working_set, Some(1900));
        assert_eq!(s.rss, Some(900));
        assert_eq!(s.pids, Some(3));
        assert_eq!(
            stats(&[tmp.path().join("none")], "x"),
            CgroupStats::default()
        );
    }

    #[test]
    fn dir_usage_counts_files_and_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("a/b")).expect("mkdir");
        std::fs::write(tmp.path().join("a/b/f"), vec![1u8; 10_000]).expect("w");
        let (bytes, inodes) = dir_usage(tmp.path());
        assert_eq!(inodes, 3);
        assert!(bytes >= 10_000, "{bytes}");
    }
}
