//! `ExecSync`: run a command in a running container, as its user, with its env; killed when the
//! timeout runs out; output capped at 16 MiB per stream (containerd's limit).

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn exec_sync(
    cri: &Cri,
    req: v1::ExecSyncRequest,
) -> Result<v1::ExecSyncResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(CriError::invalid("container id is empty"));
    }
    let r = cri
        .containers
        .exec_sync(&req.container_id, req.cmd, req.timeout)
        .await?;
    if r.timed_out {
        return Err(CriError::new(
            unicri_sandbox::ErrorKind::DeadlineExceeded,
            format!("command timed out after {}s and was killed", req.timeout),
        ));
    }
    Ok(v1::ExecSyncResponse {
        stdout: r.stdout,
        stderr: r.stderr,
        exit_code: r.exit_code,
    })
}
