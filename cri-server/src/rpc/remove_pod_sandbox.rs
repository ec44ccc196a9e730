//! `RemovePodSandbox`: stops if needed, removes namespaces, files, shm, cgroup and the row;
//! idempotent.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn remove_pod_sandbox(
    cri: &Cri,
    req: v1::RemovePodSandboxRequest,
) -> Result<v1::RemovePodSandboxResponse, CriError> {
    cri.pods.remove(&req.pod_sandbox_id).await?;
    Ok(v1::RemovePodSandboxResponse {})
}
