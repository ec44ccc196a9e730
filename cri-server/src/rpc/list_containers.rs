//! `ListContainers` and `StreamContainers`, with CRI's filters (id prefix, pod, state, labels).

use unicri_proto::v1;

use super::container_status::{cri_state, to_cri_container};
use crate::error::CriError;
use crate::server::Cri;

async fn filtered(
    cri: &Cri,
    filter: Option<v1::ContainerFilter>,
) -> Result<Vec<v1::Container>, CriError> {
    let f = filter.unwrap_or_default();
    let pod = if f.pod_sandbox_id.is_empty() {
        None
    } else {
        match cri.pods.resolve(&f.pod_sandbox_id).await {
            Ok(Some(p)) => Some(p.row.id),
            // a filter naming no pod matches nothing
            Ok(None) | Err(_) => return Ok(vec![]),
        }
    };
    let mut out = vec![];
    for c in cri.containers.list(pod.as_deref()).await? {
        if !f.id.is_empty() && !c.row.id.starts_with(&f.id) {
            continue;
        }
        if f.state
            .as_ref()
            .is_some_and(|s| s.state != cri_state(&c.row.state) as i32)
        {
            continue;
        }
        if !super::labels_match(&f.label_selector, &c.config.labels) {
            continue;
        }
        out.push(to_cri_container(&c));
    }
    Ok(out)
}

pub(crate) async fn list_containers(
    cri: &Cri,
    req: v1::ListContainersRequest,
) -> Result<v1::ListContainersResponse, CriError> {
    Ok(v1::ListContainersResponse {
        containers: filtered(cri, req.filter).await?,
    })
}

pub(crate) async fn stream_containers(
    cri: &Cri,
    req: v1::StreamContainersRequest,
) -> Result<Vec<v1::StreamContainersResponse>, CriError> {
    let all = filtered(cri, req.filter).await?;
    Ok(super::pages(&all, |containers| {
        v1::StreamContainersResponse { containers }
    }))
}
