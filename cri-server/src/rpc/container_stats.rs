//! `ContainerStats`, and the CRI stats of one stored container: CPU and memory from its cgroup,
//! the writable layer from its overlay upper dir. A container that does not run reports zeros
//! with a timestamp (kubelet and critest list stats of created containers too).

use unicri_proto::v1;
use unicri_runtime_linux::cgroups::{self, CgroupManager};
use unicri_sandbox::container::ContainerState;

use crate::containers::StoredContainer;
use crate::error::CriError;
use crate::pods::now_nanos;
use crate::server::Cri;

fn u(v: Option<u64>) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value {
        value: v.unwrap_or(0),
    })
}

/// The cgroup hierarchies' mount points, read from mountinfo once: a stats listing asks for every
/// container and the hierarchies do not move while the daemon runs.
fn cgroup_roots() -> &'static [std::path::PathBuf] {
    static ROOTS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        CgroupManager::detect()
            .map(|m| m.roots())
            .unwrap_or_default()
    })
}

/// CPU and memory usage of cgroup `path`.
pub(crate) fn cgroup_usage(
    cri: &Cri,
    path: &str,
    running: bool,
) -> (v1::CpuUsage, v1::MemoryUsage, cgroups::CgroupStats) {
    let now = now_nanos();
    let s = if running {
        cgroups::stats(cgroup_roots(), path)
    } else {
        cgroups::CgroupStats::default()
    };
    let nano_cores = s
        .cpu_usage_ns
        .and_then(|usage| cri.containers.nano_cores(path, now, usage));
    let cpu = v1::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u(s.cpu_usage_ns),
        usage_nano_cores: u(nano_cores),
        psi: None,
    };
    let memory = v1::MemoryUsage {
        timestamp: now,
        working_set_bytes: u(s.working_set),
        available_bytes: u(s
            .memory_limit
            .zip(s.working_set)
            .map(|(l, w)| l.saturating_sub(w))),
        usage_bytes: u(s.memory_usage),
        rss_bytes: u(s.rss),
        page_faults: u(s.page_faults),
        major_page_faults: u(s.major_page_faults),
        psi: None,
    };
    (cpu, memory, s)
}

/// CPU and memory of a container its keeper measures (a `wasm` instance: the CPU time of its
/// thread; its linear memories as working set).
pub(crate) fn keeper_usage(
    cri: &Cri,
    id: &str,
    usage: &unicri_runtime_linux::keeper::proto::Usage,
) -> (v1::CpuUsage, v1::MemoryUsage) {
    let now = now_nanos();
    let cpu = v1::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u(Some(usage.cpu_ns)),
        usage_nano_cores: u(cri.containers.nano_cores(id, now, usage.cpu_ns)),
        psi: None,
    };
    let available = (usage.memory_limit_bytes > 0)
        .then(|| usage.memory_limit_bytes.saturating_sub(usage.memory_bytes));
    let memory = v1::MemoryUsage {
        timestamp: now,
        working_set_bytes: u(Some(usage.memory_bytes)),
        available_bytes: u(available),
        usage_bytes: u(Some(usage.memory_bytes)),
        rss_bytes: u(Some(usage.memory_bytes)),
        page_faults: u(None),
        major_page_faults: u(None),
        psi: None,
    };
    (cpu, memory)
}

/// The CRI stats of a container.
pub(crate) fn stats_of(cri: &Cri, c: &StoredContainer) -> v1::ContainerStats {
    let running = ContainerState::parse(&c.row.state) == ContainerState::Running;
    let (cpu, memory) = match (&c.usage, c.state.is_wasm() || c.state.is_vm()) {
        (Some(usage), true) => keeper_usage(cri, &c.row.id, usage),
        _ => {
            let (cpu, memory, _) = cgroup_usage(cri, &c.state.cgroups_path, running);
            (cpu, memory)
        }
    };
    let upper = c.state.dir.join("upper");
    let (bytes, inodes) = match c.guest_writable_bytes {
        // a vm container's writable layer is in its guest (inodes are not counted there)
        Some(bytes) => (bytes, 0),
        None => cgroups::dir_usage(&upper),
    };
    v1::ContainerStats {
        attributes: Some(v1::ContainerAttributes {
            id: c.row.id.clone(),
            metadata: Some(super::container_status::metadata(c)),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: Some(v1::FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: upper.display().to_string(),
            }),
            used_bytes: u(Some(bytes)),
            inodes_used: u(Some(inodes)),
        }),
        swap: None,
        io: None,
    }
}

pub(crate) async fn container_stats(
    cri: &Cri,
    req: v1::ContainerStatsRequest,
) -> Result<v1::ContainerStatsResponse, CriError> {
    let c = cri
        .containers
        .resolve(&req.container_id)
        .await?
        .ok_or_else(|| CriError::not_found(format!("container {} not found", req.container_id)))?;
    let mut cs = [c];
    cri.containers.with_guest_usage(&mut cs).await;
    Ok(v1::ContainerStatsResponse {
        stats: Some(stats_of(cri, &cs[0])),
    })
}
