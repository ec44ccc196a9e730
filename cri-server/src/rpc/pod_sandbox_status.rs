//! `PodSandboxStatus` and the CRI view of a stored pod.

use std::collections::HashMap;

use unicri_proto::v1;

use crate::error::CriError;
use crate::pods::{READY, StoredPod};
use crate::server::Cri;

/// The CRI `PodSandboxStatus` of a stored pod.
pub(crate) fn status_of(p: &StoredPod) -> v1::PodSandboxStatus {
    let ready = p.row.state == READY;
    let ns = p
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let mut ips = p.state.ips.iter();
    let network = (ready && !p.state.ips.is_empty()).then(|| v1::PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| v1::PodIp { ip: ip.clone() }).collect(),
    });
    v1::PodSandboxStatus {
        id: p.row.id.clone(),
        metadata: p.config.metadata.clone(),
        state: if ready {
            v1::PodSandboxState::SandboxReady
        } else {
            v1::PodSandboxState::SandboxNotready
        } as i32,
        created_at: p.row.created_at,
        network,
        linux: Some(v1::LinuxPodSandboxStatus {
            namespaces: Some(v1::Namespace { options: ns }),
        }),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.row.handler.clone(),
    }
}

pub(crate) async fn pod_sandbox_status(
    cri: &Cri,
    req: v1::PodSandboxStatusRequest,
) -> Result<v1::PodSandboxStatusResponse, CriError> {
    let Some(pod) = cri.pods.resolve(&req.pod_sandbox_id).await? else {
        return Err(CriError::not_found(format!(
            "pod sandbox {:?} not found",
            req.pod_sandbox_id
        )));
    };
    let mut info = HashMap::new();
    if req.verbose {
        let v = serde_json::json!({ "backendState": pod.state, "handler": pod.row.handler });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(v1::PodSandboxStatusResponse {
        status: Some(status_of(&pod)),
        info,
        containers_statuses: vec![],
        timestamp: 0,
    })
}
