//! `StopPodSandbox`: kills the pod's containers, releases its network; idempotent (an unknown id
//! is not an error).

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn stop_pod_sandbox(
    cri: &Cri,
    req: v1::StopPodSandboxRequest,
) -> Result<v1::StopPodSandboxResponse, CriError> {
    if let Some(pod) = cri.pods.resolve(&req.pod_sandbox_id).await? {
        cri.containers.stop_pod(&pod.row.id).await?;
    }
    cri.pods.stop(&req.pod_sandbox_id).await?;
    Ok(v1::StopPodSandboxResponse {})
}
