//! `RemoveContainer`: kills it if needed, removes its rootfs and record; idempotent.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn remove_container(
    cri: &Cri,
    req: v1::RemoveContainerRequest,
) -> Result<v1::RemoveContainerResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(CriError::invalid("container id is empty"));
    }
    cri.containers.remove(&req.container_id).await?;
    Ok(v1::RemoveContainerResponse {})
}
