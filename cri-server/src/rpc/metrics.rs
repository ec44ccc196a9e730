//! `ListMetricDescriptors`, `ListPodSandboxMetrics` and `StreamPodSandboxMetrics`: the cAdvisor
//! metric names kubelet serves on `/metrics/cadvisor` when it takes pod and container stats from
//! the runtime, built from the same cgroup, writable-layer and netns counters as the stats RPCs.
//! Label values follow the keys of each descriptor, in order. CRI carries integer values, so
//! `container_cpu_usage_seconds_total` is in whole seconds (truncated).

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

const CONTAINER_LABELS: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
const NETWORK_LABELS: &[&str] = &[
    "container",
    "id",
    "image",
    "interface",
    "name",
    "namespace",
    "pod",
];

/// (name, help, counter?, network labels?)
const METRICS: &[(&str, &str, bool, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
        false,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        false,
        false,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (major page faults).",
        true,
        false,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        false,
        false,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        false,
        false,
    ),
    (
        "container_fs_inodes_total",
        "Number of inodes used by the container's writable layer.",
        false,
        false,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        false,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        true,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        true,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        true,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        true,
        true,
    ),
];

pub(crate) fn list_metric_descriptors() -> v1::ListMetricDescriptorsResponse {
    v1::ListMetricDescriptorsResponse {
        descriptors: METRICS
            .iter()
            .map(|(name, help, _, net)| v1::MetricDescriptor {
                name: name.to_string(),
                help: help.to_string(),
                label_keys: if *net {
                    NETWORK_LABELS
                } else {
                    CONTAINER_LABELS
                }
                .iter()
                .map(|s| s.to_string())
                .collect(),
            })
            .collect(),
    }
}

fn metric(name: &str, labels: &[String], value: u64) -> v1::Metric {
    let counter = METRICS.iter().any(|(n, _, c, _)| *n == name && *c);
    v1::Metric {
        name: name.to_string(),
        timestamp: 0,
        metric_type: if counter {
            v1::MetricType::Counter
        } else {
            v1::MetricType::Gauge
        } as i32,
        label_values: labels.to_vec(),
        value: Some(v1::UInt64Value { value }),
    }
}

/// Labels of a container (or, with `container` empty, the pod's own cgroup, as cAdvisor does).
fn labels(container: &str, id: &str, image: &str, name: &str, ns: &str, pod: &str) -> Vec<String> {
    [container, id, image, name, ns, pod]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn usage_metrics(
    out: &mut Vec<v1::Metric>,
    l: &[String],
    cpu: Option<&v1::CpuUsage>,
    mem: Option<&v1::MemoryUsage>,
) {
    let v = |x: &Option<v1::UInt64Value>| x.as_ref().map(|v| v.value);
    if let Some(ns) = cpu.and_then(|c| v(&c.usage_core_nano_seconds)) {
        out.push(metric(
            "container_cpu_usage_seconds_total",
            l,
            ns / 1_000_000_000,
        ));
    }
    if let Some(m) = mem {
        for (name, val) in [
            ("container_memory_usage_bytes", v(&m.usage_bytes)),
            (
                "container_memory_working_set_bytes",
                v(&m.working_set_bytes),
            ),
            ("container_memory_rss", v(&m.rss_bytes)),
            ("container_memory_failures_total", v(&m.major_page_faults)),
        ] {
            if let Some(val) = val {
                out.push(metric(name, l, val));
            }
        }
    }
}

async fn collect(cri: &Cri) -> Result<Vec<v1::PodSandboxMetrics>, CriError> {
    let mut out = Vec::new();
    for p in cri.pods.list().await? {
        if p.row.state != crate::pods::READY {
            continue;
        }
        // the pod's own figures; each running container's are read once, below
        let stats = super::pod_sandbox_stats::pod_stats_with(cri, &p, Vec::new());
        let md = p.config.metadata.clone().unwrap_or_default();
        let Some(linux) = stats.linux else { continue };
        let pod_labels = labels("", &p.row.id, "", "", &md.namespace, &md.name);
        let mut metrics = Vec::new();
        usage_metrics(
            &mut metrics,
            &pod_labels,
            linux.cpu.as_ref(),
            linux.memory.as_ref(),
        );
        if let Some(net) = &linux.network {
            for i in net.default_interface.iter().chain(&net.interfaces) {
                let mut l = pod_labels.clone();
                l.insert(3, i.name.clone());
                let val = |x: &Option<v1::UInt64Value>| x.as_ref().map_or(0, |v| v.value);
                metrics.push(metric(
                    "container_network_receive_bytes_total",
                    &l,
                    val(&i.rx_bytes),
                ));
                metrics.push(metric(
                    "container_network_transmit_bytes_total",
                    &l,
                    val(&i.tx_bytes),
                ));
                metrics.push(metric(
                    "container_network_receive_errors_total",
                    &l,
                    val(&i.rx_errors),
                ));
                metrics.push(metric(
                    "container_network_transmit_errors_total",
                    &l,
                    val(&i.tx_errors),
                ));
            }
        }
        let mut container_metrics = Vec::new();
        for c in cri.containers.list(Some(&p.row.id)).await? {
            if unicri_sandbox::container::ContainerState::parse(&c.row.state)
                != unicri_sandbox::container::ContainerState::Running
            {
                continue;
            }
            let s = super::container_stats::stats_of(cri, &c);
            let l = labels(
                &c.row.name,
                &c.row.id,
                &c.state.spec.image_ref,
                &c.row.id,
                &md.namespace,
                &md.name,
            );
            let mut m = Vec::new();
            usage_metrics(&mut m, &l, s.cpu.as_ref(), s.memory.as_ref());
            let limit = c.state.spec.resources.memory_limit_in_bytes;
            m.push(metric(
                "container_spec_memory_limit_bytes",
                &l,
                limit.max(0) as u64,
            ));
            if let Some(w) = &s.writable_layer {
                if let Some(b) = &w.used_bytes {
                    m.push(metric("container_fs_usage_bytes", &l, b.value));
                }
                if let Some(i) = &w.inodes_used {
                    m.push(metric("container_fs_inodes_total", &l, i.value));
                }
            }
            if c.row.started_at > 0 {
                m.push(metric(
                    "container_start_time_seconds",
                    &l,
                    (c.row.started_at / 1_000_000_000) as u64,
                ));
            }
            container_metrics.push(v1::ContainerMetrics {
                container_id: c.row.id.clone(),
                metrics: m,
            });
        }
        out.push(v1::PodSandboxMetrics {
            pod_sandbox_id: p.row.id.clone(),
            metrics,
            container_metrics,
        });
    }
    Ok(out)
}

pub(crate) async fn list_pod_sandbox_metrics(
    cri: &Cri,
) -> Result<v1::ListPodSandboxMetricsResponse, CriError> {
    Ok(v1::ListPodSandboxMetricsResponse {
        pod_metrics: collect(cri).await?,
    })
}

pub(crate) async fn stream_pod_sandbox_metrics(
    cri: &Cri,
) -> Result<Vec<v1::StreamPodSandboxMetricsResponse>, CriError> {
    let all = collect(cri).await?;
    Ok(super::pages(&all, |pod_sandbox_metrics| {
        v1::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_every_metric_once_with_sorted_label_keys() {
        let d = list_metric_descriptors().descriptors;
        assert_eq!(d.len(), METRICS.len());
        let mut names: Vec<_> = d.iter().map(|m| m.name.clone()).collect();
        names.dedup();
        assert_eq!(names.len(), d.len());
        for m in &d {
            let mut sorted = m.label_keys.clone();
            sorted.sort();
            assert_eq!(sorted, m.label_keys, "{}", m.name);
        }
        let l = labels("c", "i", "img", "n", "ns", "p");
        assert_eq!(l.len(), CONTAINER_LABELS.len());
        let cpu = metric("container_cpu_usage_seconds_total", &l, 3);
        assert_eq!(cpu.metric_type, v1::MetricType::Counter as i32);
        let mem = metric("container_memory_rss", &l, 3);
        assert_eq!(mem.metric_type, v1::MetricType::Gauge as i32);
    }
}
