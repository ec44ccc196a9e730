//! `UpdatePodSandboxResources` (in-place pod resize): the pod's limits are the sum kubelet sends
//! plus the overhead. A pod cgroup unicri made (no CRI cgroup parent) gets them at once; a pod
//! cgroup under kubelet's cgroup parent is kubelet's to size, so the call is accepted and noted.

use unicri_proto::v1;
use unicri_sandbox::ErrorKind;

use crate::error::CriError;
use crate::server::Cri;

/// `a + b` of each limit that is set in either (quota: both must be limits, else unlimited).
fn sum(
    a: &v1::LinuxContainerResources,
    b: &v1::LinuxContainerResources,
) -> v1::LinuxContainerResources {
    let add = |x: i64, y: i64| {
        if x > 0 || y > 0 {
            x.max(0) + y.max(0)
        } else {
            0
        }
    };
    v1::LinuxContainerResources {
        cpu_period: a.cpu_period.max(b.cpu_period),
        cpu_quota: if a.cpu_quota > 0 && b.cpu_quota >= 0 {
            add(a.cpu_quota, b.cpu_quota)
        } else {
            a.cpu_quota
        },
        cpu_shares: add(a.cpu_shares, b.cpu_shares),
        memory_limit_in_bytes: if a.memory_limit_in_bytes > 0 {
            add(a.memory_limit_in_bytes, b.memory_limit_in_bytes)
        } else {
            0
        },
        cpuset_cpus: a.cpuset_cpus.clone(),
        cpuset_mems: a.cpuset_mems.clone(),
        ..Default::default()
    }
}

pub(crate) async fn update_pod_sandbox_resources(
    cri: &Cri,
    req: v1::UpdatePodSandboxResourcesRequest,
) -> Result<v1::UpdatePodSandboxResourcesResponse, CriError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(CriError::invalid("pod sandbox id is empty"));
    }
    let pod = cri
        .pods
        .resolve(&req.pod_sandbox_id)
        .await?
        .ok_or_else(|| {
            CriError::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
        })?;
    if pod.row.state != crate::pods::READY {
        return Err(CriError::new(
            ErrorKind::FailedPrecondition,
            format!("pod sandbox {} is not ready", pod.row.id),
        ));
    }
    let Some(resources) = req.resources.as_ref() else {
        return Ok(v1::UpdatePodSandboxResourcesResponse {});
    };
    let total = sum(resources, &req.overhead.unwrap_or_default());
    let kubelet_owned = pod
        .config
        .linux
        .as_ref()
        .is_some_and(|l| !l.cgroup_parent.is_empty());
    let path = pod
        .state
        .linux
        .as_ref()
        .and_then(|l| l.cgroup.as_ref())
        .map(|c| c.path.clone());
    match path {
        Some(path) if !kubelet_owned => {
            let limits = crate::container_spec::resources(&total)?;
            let roots = unicri_runtime_linux::cgroups::CgroupManager::detect()
                .map(|m| m.roots())
                .map_err(|e| CriError::from_classified("find cgroups", &e))?;
            unicri_runtime_linux::cgroups::update_resources(&roots, &path, &limits)
                .map_err(|e| CriError::from_classified("update pod resources", &e))?;
            tracing::info!(pod = %pod.row.id, %path, "pod resources updated");
        }
        _ => tracing::info!(pod = %pod.row.id, "pod resources noted (kubelet owns the pod cgroup)"),
    }
    Ok(v1::UpdatePodSandboxResourcesResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_adds_to_set_limits_only() {
        let r = v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 100,
            ..Default::default()
        };
        let o = v1::LinuxContainerResources {
            cpu_quota: 10_000,
            cpu_shares: 2,
            memory_limit_in_bytes: 20,
            ..Default::default()
        };
        let t = sum(&r, &o);
        assert_eq!(
            (t.cpu_quota, t.cpu_shares, t.memory_limit_in_bytes),
            (60_000, 514, 120)
        );
        let unlimited = sum(&v1::LinuxContainerResources::default(), &o);
        assert_eq!(
            unlimited.memory_limit_in_bytes, 0,
            "no pod limit stays no limit"
        );
    }
}
