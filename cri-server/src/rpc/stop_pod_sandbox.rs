//! `StopPodSandbox`: kills the pod's containers, releases its network; idempotent (an unknown id
//! is not an error).

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn stop_pod_sandbox(
    cri: &Cri,
    req: v1::StopPodSandboxRequest,
) -> Result<v1::StopPodSandboxResponse, CriError> {
    let pod = cri.pods.resolve(&req.pod_sandbox_id).await?;
    if let Some(pod) = &pod {
        cri.containers.stop_pod(&pod.row.id).await?;
    }
    cri.pods.stop(&req.pod_sandbox_id).await?;
    if let Some(pod) = pod.filter(|p| p.row.state == crate::pods::READY) {
        cri.containers
            .emit(
                &pod.row.id,
                &pod.row.id,
                v1::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
    }
    Ok(v1::StopPodSandboxResponse {})
}
