//! `ContainerStatus` (with verbose info) and the CRI views of a stored container.

use std::collections::HashMap;

use unicri_proto::v1;
use unicri_sandbox::container::ContainerState;

use crate::container_spec::mounts_to_cri;
use crate::containers::StoredContainer;
use crate::error::CriError;
use crate::server::Cri;

pub(crate) fn cri_state(state: &str) -> v1::ContainerState {
    match ContainerState::parse(state) {
        ContainerState::Created => v1::ContainerState::ContainerCreated,
        ContainerState::Running => v1::ContainerState::ContainerRunning,
        ContainerState::Exited => v1::ContainerState::ContainerExited,
        ContainerState::Unknown => v1::ContainerState::ContainerUnknown,
    }
}

pub(crate) fn metadata(c: &StoredContainer) -> v1::ContainerMetadata {
    v1::ContainerMetadata {
        name: c.row.name.clone(),
        attempt: c.row.attempt,
    }
}

pub(crate) fn image_spec(c: &StoredContainer) -> v1::ImageSpec {
    v1::ImageSpec {
        image: c.state.spec.image_ref.clone(),
        ..Default::default()
    }
}

/// The list view of a container.
pub(crate) fn to_cri_container(c: &StoredContainer) -> v1::Container {
    v1::Container {
        id: c.row.id.clone(),
        pod_sandbox_id: c.row.pod_id.clone(),
        metadata: Some(metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.state.image_ref.clone(),
        state: cri_state(&c.row.state) as i32,
        created_at: c.row.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.row.image_id.clone(),
    }
}

/// The status view of a container.
pub(crate) fn status_of(c: &StoredContainer) -> v1::ContainerStatus {
    let r = &c.state.spec.resources;
    v1::ContainerStatus {
        id: c.row.id.clone(),
        metadata: Some(metadata(c)),
        state: cri_state(&c.row.state) as i32,
        created_at: c.row.created_at,
        started_at: c.row.started_at,
        finished_at: c.row.finished_at,
        exit_code: c.row.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.state.image_ref.clone(),
        reason: c.row.reason.clone(),
        message: c.row.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: mounts_to_cri(&c.state.spec),
        log_path: c.state.spec.log_path.clone(),
        resources: Some(v1::ContainerResources {
            linux: Some(v1::LinuxContainerResources {
                cpu_period: r.cpu_period,
                cpu_quota: r.cpu_quota,
                cpu_shares: r.cpu_shares,
                memory_limit_in_bytes: r.memory_limit_in_bytes,
                oom_score_adj: r.oom_score_adj,
                cpuset_cpus: r.cpuset_cpus.clone(),
                cpuset_mems: r.cpuset_mems.clone(),
                memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
                unified: r.unified.clone().into_iter().collect(),
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: c.row.image_id.clone(),
        user: None,
        stop_signal: 0,
    }
}

pub(crate) async fn container_status(
    cri: &Cri,
    req: v1::ContainerStatusRequest,
) -> Result<v1::ContainerStatusResponse, CriError> {
    let c = cri
        .containers
        .resolve(&req.container_id)
        .await?
        .ok_or_else(|| CriError::not_found(format!("container {} not found", req.container_id)))?;
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "id": c.row.id,
            "sandboxID": c.row.pod_id,
            "runtimeHandler": "linux",
            "bundle": c.state.dir,
            "cgroupsPath": c.state.cgroups_path,
            "stopSignal": c.state.stop_signal,
            "spec": c.state.spec,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(v1::ContainerStatusResponse {
        status: Some(status_of(&c)),
        info,
    })
}
