//! `ListContainerStats` and `StreamContainerStats`, with CRI's filters (id, pod, labels).

use unicri_proto::v1;

use super::container_stats::stats_of;
use crate::error::CriError;
use crate::server::Cri;

async fn filtered(
    cri: &Cri,
    filter: Option<v1::ContainerStatsFilter>,
) -> Result<Vec<v1::ContainerStats>, CriError> {
    let f = filter.unwrap_or_default();
    let pod = if f.pod_sandbox_id.is_empty() {
        None
    } else {
        match cri.pods.resolve(&f.pod_sandbox_id).await {
            Ok(Some(p)) => Some(p.row.id),
            Ok(None) | Err(_) => return Ok(vec![]),
        }
    };
    let mut all = cri.containers.list(pod.as_deref()).await?;
    cri.containers.with_guest_usage(&mut all).await;
    cri.containers.forget_samples(
        &all.iter()
            .map(|c| c.state.cgroups_path.clone())
            .collect::<Vec<_>>(),
    );
    Ok(all
        .iter()
        .filter(|c| f.id.is_empty() || c.row.id.starts_with(&f.id))
        .filter(|c| super::labels_match(&f.label_selector, &c.config.labels))
        .map(|c| stats_of(cri, c))
        .collect())
}

pub(crate) async fn list_container_stats(
    cri: &Cri,
    req: v1::ListContainerStatsRequest,
) -> Result<v1::ListContainerStatsResponse, CriError> {
    Ok(v1::ListContainerStatsResponse {
        stats: filtered(cri, req.filter).await?,
    })
}

pub(crate) async fn stream_container_stats(
    cri: &Cri,
    req: v1::StreamContainerStatsRequest,
) -> Result<Vec<v1::StreamContainerStatsResponse>, CriError> {
    let all = filtered(cri, req.filter).await?;
    Ok(super::pages(&all, |container_stats| {
        v1::StreamContainerStatsResponse { container_stats }
    }))
}
