//! `ReopenContainerLog`: the keeper closes and reopens the log file kubelet just rotated.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn reopen_container_log(
    cri: &Cri,
    req: v1::ReopenContainerLogRequest,
) -> Result<v1::ReopenContainerLogResponse, CriError> {
    cri.containers.reopen_log(&req.container_id).await?;
    Ok(v1::ReopenContainerLogResponse {})
}
