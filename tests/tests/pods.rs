//! Pod sandboxes end to end: the real daemon, Debian's CNI plugins (bridge + host-local), pinned
//! namespaces without any process, persistence across a restart, idempotent stop/remove, and a
//! leak check (mounts, cgroups, veths, rows) at the end.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use unicri_e2e::daemon::{Daemon, DaemonOpts};
use unicri_proto::v1;

use unicri_e2e::cni::{Net, PLUGINS};

fn pod_config(name: &str, labels: &[(&str, &str)]) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        dns_config: Some(v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["e2e.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        ..Default::default()
    }
}

async fn list(d: &Daemon, f: v1::PodSandboxFilter) -> Result<Vec<v1::PodSandbox>> {
    Ok(d.runtime()
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(f) })
        .await?
        .into_inner()
        .items)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    unicri_e2e::leaks::mounts_under(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_with_real_cni_and_restart() -> Result<()> {
    if !Path::new(PLUGINS).join("bridge").exists() {
        eprintln!(
            "\n******** SKIP pod_lifecycle_with_real_cni_and_restart: {PLUGINS}/bridge missing (apt-get install -y containernetworking-plugins) ********\n"
        );
        return Ok(());
    }
    let net = Net::new()?;
    let mut d = Daemon::start(DaemonOpts {
        extra_config: net.config(),
        ..Default::default()
    })
    .await?;
    let mut rt = d.runtime();

    let st = rt
        .status(v1::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let conds = st.status.map(|s| s.conditions).unwrap_or_default();
    let network = conds
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("NetworkReady")?;
    ensure!(network.status, "NetworkReady with a conflist: {network:?}");

    let id = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod_config("web", &[("app", "web")])),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    ensure!(id.len() == 64, "id {id}");
    let status = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    ensure!(status.state == v1::PodSandboxState::SandboxReady as i32);
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    ensure!(
        ip.starts_with(&format!("{}.", net.subnet)),
        "pod ip {ip:?} not in {}.0/24",
        net.subnet
    );
    ensure!(net.veths_on_bridge() == 1, "one veth on the bridge");
    // namespaces pinned, no process: pins and shm are mounts under the state dir
    let pinned = mounts_under(&d.state);
    ensure!(
        pinned.len() >= 4,
        "expected netns, ipc, uts pins and shm under state: {pinned:?}"
    );
    let resolv = std::fs::read_to_string(d.state.join("pods").join(&id).join("resolv.conf"))?;
    ensure!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let hosts = std::fs::read_to_string(d.state.join("pods").join(&id).join("hosts"))?;
    ensure!(hosts.contains(&ip), "hosts file lacks the pod ip: {hosts}");

    // the same identity again is refused; nothing new is made
    let err = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod_config("web", &[])),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("same pod identity");
    ensure!(err.code() == tonic::Code::AlreadyExists, "{err:?}");
    // bad input: unknown handler, missing config, a non-namespaced sysctl — nothing left behind
    let err = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod_config("x", &[])),
            runtime_handler: "nope".into(),
        })
        .await
        .expect_err("unknown handler");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let err = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest::default())
        .await
        .expect_err("no config");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let mut bad = pod_config("bad", &[]);
    bad.linux = Some(v1::LinuxPodSandboxConfig {
        sysctls: [("kernel.pid_max".to_string(), "4096".to_string())].into(),
        ..Default::default()
    });
    let err = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("non-namespaced sysctl");
    ensure!(err.code() != tonic::Code::Ok);
    ensure!(
        mounts_under(&d.state).len() == pinned.len(),
        "a failed pod left mounts"
    );
    ensure!(
        std::fs::read_dir(d.state.join("pods"))?.count() == 1,
        "a failed pod left its dir"
    );

    // a host-network pod: no netns, no ip
    let mut host = pod_config("host", &[("app", "host")]);
    host.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                network: v1::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_id = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;

    // list with filters
    ensure!(list(&d, v1::PodSandboxFilter::default()).await?.len() == 2);
    let web = list(
        &d,
        v1::PodSandboxFilter {
            label_selector: [("app".into(), "web".into())].into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(web.len() == 1 && web[0].id == id);
    ensure!(
        list(
            &d,
            v1::PodSandboxFilter {
                id: id[..12].to_string(),
                ..Default::default()
            }
        )
        .await?
        .len()
            == 1
    );

    // restart (kill -9): pods and their pins survive, the record is read back
    d.kill9();
    d.restart().await?;
    let mut rt = d.runtime();
    let again = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("status after restart")?;
    ensure!(again.network.map(|n| n.ip) == Some(ip.clone()));
    ensure!(
        mounts_under(&d.state).len() == pinned.len() + 2,
        "host pod adds ipc pin + shm only"
    );

    // stop: network released, state NOTREADY; stop again and unknown ids are fine
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: "f".repeat(64),
    })
    .await?;
    let stopped = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("status after stop")?;
    ensure!(stopped.state == v1::PodSandboxState::SandboxNotready as i32);
    ensure!(net.veths_on_bridge() == 0, "veth left after stop");
    let ready_only = list(
        &d,
        v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        },
    )
    .await?;
    ensure!(ready_only.len() == 1 && ready_only[0].id == host_id);

    // remove both (twice), then nothing is left
    for pid in [&id, &host_id, &id, &host_id] {
        rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: pid.to_string(),
        })
        .await?;
    }
    let err = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    ensure!(list(&d, v1::PodSandboxFilter::default()).await?.is_empty());
    // Only the pin directories' own (shared) bind mounts may remain while the daemon runs; the
    // daemon releases them at shutdown when no pod is left (checked by `finish`).
    let left: Vec<String> = mounts_under(&d.state)
        .into_iter()
        .filter(|m| !m.ends_with("/state/pods") && !m.ends_with("/state/netns"))
        .collect();
    ensure!(left.is_empty(), "mounts left: {left:?}");
    for pid in [&id, &host_id] {
        for ctrl in ["memory", "pids", "cpu"] {
            let p = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("unicri")
                .join(format!("pod-{pid}"));
            ensure!(!p.exists(), "cgroup {} left", p.display());
        }
    }
    ensure!(
        std::fs::read_dir(net.dir.path().join("ipam/unicri-e2e"))
            .map(|d| d
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count())
            .unwrap_or(0)
            == 0,
        "host-local lease left"
    );
    d.finish().await?;
    // With no pod left, the daemon's shutdown also removed the default parent cgroup.
    for ctrl in ["memory", "pids", "cpu"] {
        let p = Path::new("/sys/fs/cgroup").join(ctrl).join("unicri");
        ensure!(!p.exists(), "cgroup {} left after shutdown", p.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidr_from_kubelet_renders_the_cni_template() -> Result<()> {
    if !Path::new(PLUGINS).join("bridge").exists() {
        eprintln!(
            "\n******** SKIP pod_cidr_from_kubelet_renders_the_cni_template: {PLUGINS}/bridge missing (apt-get install -y containernetworking-plugins) ********\n"
        );
        return Ok(());
    }
    let net = Net::new()?;
    // the only network config is a template waiting for the node's pod CIDR
    let conflist = net.dir.path().join("net.d/10-e2e.conflist");
    let text = std::fs::read_to_string(&conflist)?;
    let template = net.dir.path().join("template.conflist");
    std::fs::write(
        &template,
        text.replace(&format!("{}.0/24", net.subnet), "{{.PodCIDR}}"),
    )?;
    std::fs::remove_file(&conflist)?;
    let d = Daemon::start(DaemonOpts {
        extra_config: format!(
            "{}conf_template = \"{}\"\n",
            net.config(),
            template.display()
        ),
        ..Default::default()
    })
    .await?;
    let mut rt = d.runtime();
    let cidr = format!("{}.128/25", net.subnet);
    rt.update_runtime_config(v1::UpdateRuntimeConfigRequest {
        runtime_config: Some(v1::RuntimeConfig {
            network_config: Some(v1::NetworkConfig {
                pod_cidr: cidr.clone(),
            }),
        }),
    })
    .await?;
    let id = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod_config("cidr", &[])),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let ip = rt
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("pod ip")?;
    let last: u8 = ip
        .strip_prefix(&format!("{}.", net.subnet))
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("ip {ip} outside {}", net.subnet))?;
    ensure!(last > 128, "ip {ip} is not in the pod cidr {cidr}");
    // a CIDR that is not one is refused
    let err = rt
        .update_runtime_config(v1::UpdateRuntimeConfigRequest {
            runtime_config: Some(v1::RuntimeConfig {
                network_config: Some(v1::NetworkConfig {
                    pod_cidr: "10.0.0.0/99".into(),
                }),
            }),
        })
        .await
        .expect_err("bad cidr");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await?;
    d.finish().await
}
