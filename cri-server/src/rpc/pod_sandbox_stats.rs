//! `PodSandboxStats`: CPU, memory and process count of the pod cgroup, plus its containers'
//! stats. A pod has no process of its own, so a stopped pod reports zeros with a timestamp.

use unicri_proto::v1;

use super::container_stats::{cgroup_usage, stats_of};
use crate::error::CriError;
use crate::pods::{READY, StoredPod, now_nanos};
use crate::server::Cri;

/// The CRI stats of a pod.
pub(crate) async fn pod_stats_of(
    cri: &Cri,
    p: &StoredPod,
) -> Result<v1::PodSandboxStats, CriError> {
    let mut list = cri.containers.list(Some(&p.row.id)).await?;
    cri.containers.with_guest_usage(&mut list).await;
    let containers = list.iter().map(|c| stats_of(cri, c)).collect();
    Ok(pod_stats_with(cri, p, containers))
}

/// The pod's own figures (its cgroup, network, processes) with `containers` as its
/// containers' stats.
pub(crate) fn pod_stats_with(
    cri: &Cri,
    p: &StoredPod,
    containers: Vec<v1::ContainerStats>,
) -> v1::PodSandboxStats {
    let path = p
        .state
        .linux
        .as_ref()
        .and_then(|l| l.cgroup.as_ref())
        .map(|c| c.path.clone())
        .unwrap_or_else(|| p.state.cgroup_parent.clone());
    let ready = p.row.state == READY;
    let (cpu, memory, s) = cgroup_usage(cri, &path, ready && !path.is_empty());
    let md = p.config.metadata.clone().unwrap_or_default();
    v1::PodSandboxStats {
        attributes: Some(v1::PodSandboxAttributes {
            id: p.row.id.clone(),
            metadata: Some(md),
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
        }),
        linux: Some(v1::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: network_usage(p, ready),
            process: Some(v1::ProcessUsage {
                timestamp: now_nanos(),
                process_count: Some(v1::UInt64Value {
                    value: s.pids.unwrap_or(0),
                }),
            }),
            containers,
            io: None,
        }),
        windows: None,
    }
}

/// The pod's interface counters, read inside its network namespace (`eth0` is the default
/// interface, as kubelet expects; `lo` is left out). `None` for host-network or stopped pods.
fn network_usage(p: &StoredPod, ready: bool) -> Option<v1::NetworkUsage> {
    let netns = p.state.netns.as_ref().filter(|_| ready)?;
    let stats = unicri_network_cni::interface_stats(netns)
        .map_err(|e| tracing::debug!(pod = %p.row.id, error = %e, "pod network counters"))
        .ok()?;
    let to_cri = |s: &unicri_network_cni::InterfaceStats| v1::NetworkInterfaceUsage {
        name: s.name.clone(),
        rx_bytes: Some(v1::UInt64Value { value: s.rx_bytes }),
        rx_errors: Some(v1::UInt64Value { value: s.rx_errors }),
        tx_bytes: Some(v1::UInt64Value { value: s.tx_bytes }),
        tx_errors: Some(v1::UInt64Value { value: s.tx_errors }),
    };
    let interfaces: Vec<_> = stats.iter().filter(|s| s.name != "lo").collect();
    let default = interfaces
        .iter()
        .find(|s| s.name == "eth0")
        .or(interfaces.first())
        .map(|s| s.name.clone());
    Some(v1::NetworkUsage {
        timestamp: now_nanos(),
        default_interface: interfaces
            .iter()
            .find(|s| Some(&s.name) == default.as_ref())
            .map(|s| to_cri(s)),
        // CRI: every other interface
        interfaces: interfaces
            .iter()
            .filter(|s| Some(&s.name) != default.as_ref())
            .map(|s| to_cri(s))
            .collect(),
    })
}

pub(crate) async fn pod_sandbox_stats(
    cri: &Cri,
    req: v1::PodSandboxStatsRequest,
) -> Result<v1::PodSandboxStatsResponse, CriError> {
    let p = cri
        .pods
        .resolve(&req.pod_sandbox_id)
        .await?
        .ok_or_else(|| {
            CriError::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
        })?;
    Ok(v1::PodSandboxStatsResponse {
        stats: Some(pod_stats_of(cri, &p).await?),
    })
}
