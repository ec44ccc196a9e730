//! `RunPodSandbox`: namespaces pinned by bind mounts, network through CNI, no process.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn run_pod_sandbox(
    cri: &Cri,
    req: v1::RunPodSandboxRequest,
) -> Result<v1::RunPodSandboxResponse, CriError> {
    let config = req
        .config
        .ok_or_else(|| CriError::invalid("pod sandbox config is missing"))?;
    let pod_sandbox_id = cri.pods.run(config, &req.runtime_handler).await?;
    for kind in [
        v1::ContainerEventType::ContainerCreatedEvent,
        v1::ContainerEventType::ContainerStartedEvent,
    ] {
        cri.containers
            .emit(&pod_sandbox_id, &pod_sandbox_id, kind)
            .await;
    }
    tracing::info!(pod_id = %pod_sandbox_id, handler = %req.runtime_handler, "pod sandbox ready");
    Ok(v1::RunPodSandboxResponse { pod_sandbox_id })
}
