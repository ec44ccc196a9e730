//! `ListPodSandbox` and `StreamPodSandboxes`, with CRI's filters (id prefix, state, labels).

use unicri_proto::v1;

use super::pod_sandbox_status::status_of;
use crate::error::CriError;
use crate::pods::READY;
use crate::server::Cri;

async fn filtered(
    cri: &Cri,
    filter: Option<v1::PodSandboxFilter>,
) -> Result<Vec<v1::PodSandbox>, CriError> {
    let f = filter.unwrap_or_default();
    let mut out = vec![];
    for p in cri.pods.list().await? {
        if !f.id.is_empty() && !p.row.id.starts_with(&f.id) {
            continue;
        }
        let ready = p.row.state == READY;
        let state = if ready {
            v1::PodSandboxState::SandboxReady
        } else {
            v1::PodSandboxState::SandboxNotready
        } as i32;
        if f.state.as_ref().is_some_and(|s| s.state != state) {
            continue;
        }
        if !super::labels_match(&f.label_selector, &p.config.labels) {
            continue;
        }
        let st = status_of(&p);
        out.push(v1::PodSandbox {
            id: st.id,
            metadata: st.metadata,
            state,
            created_at: st.created_at,
            labels: st.labels,
            annotations: st.annotations,
            runtime_handler: st.runtime_handler,
        });
    }
    Ok(out)
}

pub(crate) async fn list_pod_sandbox(
    cri: &Cri,
    req: v1::ListPodSandboxRequest,
) -> Result<v1::ListPodSandboxResponse, CriError> {
    Ok(v1::ListPodSandboxResponse {
        items: filtered(cri, req.filter).await?,
    })
}

pub(crate) async fn stream_pod_sandboxes(
    cri: &Cri,
    req: v1::StreamPodSandboxesRequest,
) -> Result<Vec<v1::StreamPodSandboxesResponse>, CriError> {
    let all = filtered(cri, req.filter).await?;
    Ok(super::pages(&all, |pod_sandboxes| {
        v1::StreamPodSandboxesResponse { pod_sandboxes }
    }))
}
