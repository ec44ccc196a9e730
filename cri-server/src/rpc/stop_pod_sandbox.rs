//! `StopPodSandbox`: releases the pod's network; idempotent (an unknown id is not an error).

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn stop_pod_sandbox(
    cri: &Cri,
    req: v1::StopPodSandboxRequest,
) -> Result<v1::StopPodSandboxResponse, CriError> {
    cri.pods.stop(&req.pod_sandbox_id).await?;
    Ok(v1::StopPodSandboxResponse {})
}
