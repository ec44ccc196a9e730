//! `StopContainer`: the stop signal, SIGKILL after the timeout; idempotent.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn stop_container(
    cri: &Cri,
    req: v1::StopContainerRequest,
) -> Result<v1::StopContainerResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(CriError::invalid("container id is empty"));
    }
    cri.containers.stop(&req.container_id, req.timeout).await?;
    Ok(v1::StopContainerResponse {})
}
