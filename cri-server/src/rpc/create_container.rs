//! `CreateContainer`: rootfs overlay, OCI spec, and the keeper's libcontainer create.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn create_container(
    cri: &Cri,
    req: v1::CreateContainerRequest,
) -> Result<v1::CreateContainerResponse, CriError> {
    let config = req
        .config
        .ok_or_else(|| CriError::invalid("CreateContainer needs a container config"))?;
    if req.pod_sandbox_id.is_empty() {
        return Err(CriError::invalid("pod sandbox id is empty"));
    }
    let id = cri
        .containers
        .create(&req.pod_sandbox_id, config, req.sandbox_config)
        .await?;
    Ok(v1::CreateContainerResponse { container_id: id })
}
