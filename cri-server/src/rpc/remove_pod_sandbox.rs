//! `RemovePodSandbox`: removes its containers, stops if needed, removes namespaces, files, shm, cgroup and the row;
//! idempotent.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn remove_pod_sandbox(
    cri: &Cri,
    req: v1::RemovePodSandboxRequest,
) -> Result<v1::RemovePodSandboxResponse, CriError> {
    let pod = cri.pods.resolve(&req.pod_sandbox_id).await?;
    if let Some(pod) = &pod {
        cri.containers.remove_pod(&pod.row.id).await?;
    }
    cri.pods.remove(&req.pod_sandbox_id).await?;
    if let Some(pod) = pod {
        cri.containers
            .emit(
                &pod.row.id,
                &pod.row.id,
                v1::ContainerEventType::ContainerDeletedEvent,
            )
            .await;
    }
    Ok(v1::RemovePodSandboxResponse {})
}
