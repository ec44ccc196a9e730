//! `ListPodSandboxStats` and `StreamPodSandboxStats`, with CRI's filters (id prefix, labels).

use unicri_proto::v1;

use super::pod_sandbox_stats::pod_stats_of;
use crate::error::CriError;
use crate::server::Cri;

async fn filtered(
    cri: &Cri,
    filter: Option<v1::PodSandboxStatsFilter>,
) -> Result<Vec<v1::PodSandboxStats>, CriError> {
    let f = filter.unwrap_or_default();
    let mut out = vec![];
    for p in cri.pods.list().await? {
        if !f.id.is_empty() && !p.row.id.starts_with(&f.id) {
            continue;
        }
        if !super::labels_match(&f.label_selector, &p.config.labels) {
            continue;
        }
        out.push(pod_stats_of(cri, &p).await?);
    }
    Ok(out)
}

pub(crate) async fn list_pod_sandbox_stats(
    cri: &Cri,
    req: v1::ListPodSandboxStatsRequest,
) -> Result<v1::ListPodSandboxStatsResponse, CriError> {
    Ok(v1::ListPodSandboxStatsResponse {
        stats: filtered(cri, req.filter).await?,
    })
}

pub(crate) async fn stream_pod_sandbox_stats(
    cri: &Cri,
    req: v1::StreamPodSandboxStatsRequest,
) -> Result<Vec<v1::StreamPodSandboxStatsResponse>, CriError> {
    let all = filtered(cri, req.filter).await?;
    Ok(super::pages(&all, |pod_sandbox_stats| {
        v1::StreamPodSandboxStatsResponse { pod_sandbox_stats }
    }))
}
