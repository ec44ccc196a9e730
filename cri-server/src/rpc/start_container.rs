//! `StartContainer`.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn start_container(
    cri: &Cri,
    req: v1::StartContainerRequest,
) -> Result<v1::StartContainerResponse, CriError> {
    cri.containers.start(&req.container_id).await?;
    Ok(v1::StartContainerResponse {})
}
