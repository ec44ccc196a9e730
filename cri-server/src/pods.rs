//! Pod sandboxes of the `linux` backend, without a pause container or any process: the pod's
//! IPC/UTS namespaces, files, /dev/shm and cgroup come from `unicri-runtime-linux`, its network
//! namespace and CNI attachment from `unicri-network-cni`, its record from SQLite.
//!
//! Pods are created in parallel, each holding its CRI identity (`reserve.rs`) while it works;
//! stop and remove take a lock of their pod. A failed `run` rolls back everything it
//! made, the row included, so kubelet's retry of the same pod never finds its name taken.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use serde::{Deserialize, Serialize};
use unicri_network_cni::{Cni, CniOptions, NetNs, NotReadyReason, PodNetwork, PodNetworkStatus};
use unicri_proto::v1;
use unicri_runtime_linux::{LinuxPod, PodState};
use unicri_sandbox::ErrorKind;
use unicri_sandbox::pod::{
    DnsSpec, NamespaceMode, PidMode, PodNamespaces, PodSpec, PortMapping, Protocol,
};
use unicri_storage::{PodRow, Store};

use crate::config::{Backend, Config};
use crate::error::CriError;

/// Stored `state` of a pod whose sandbox is up.
pub const READY: &str = "ready";
/// Stored `state` of a stopped pod.
pub const NOT_READY: &str = "notready";

/// What the daemon keeps about a pod besides its CRI config (the row's `backend_state`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodBackendState {
    /// The linux backend's state (pins, shm, files, cgroup).
    pub linux: Option<PodState>,
    /// The pinned network namespace (absent for host-network pods and after stop).
    pub netns: Option<PathBuf>,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// The pod's cgroup path.
    pub cgroup_parent: String,
    /// Pid of the pod's init when it shares one PID namespace (held by the keeper as
    /// `pod-<id>`); containers join `/proc/<pid>/ns/pid`.
    #[serde(default)]
    pub pid_init: Option<i32>,
    /// A `vm` pod's guest (engine process, attached images); `None` once stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<crate::vm::VmPodRecord>,
}

/// A stored pod with its decoded config and state.
#[derive(Clone, Debug)]
pub struct StoredPod {
    /// The row.
    pub row: PodRow,
    /// The CRI config it was created with.
    pub config: v1::PodSandboxConfig,
    /// Backend state.
    pub state: PodBackendState,
}

/// Pod orchestration.
pub struct Pods {
    store: Store,
    cni: Cni,
    config: Arc<Config>,
    pods_dir: PathBuf,
    netns_dir: PathBuf,
    keeper: unicri_runtime_linux::keeper::KeeperClient,
    /// The `vm` backend.
    pub vm: Arc<crate::vm::VmBackend>,
    /// One lock per pod id: stop and remove of one pod are serialized, different pods run in
    /// parallel (run holds only its name, see `names`).
    locks:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Pod identities being created.
    names: crate::reserve::Reservations,
}

/// The keeper's record id of a pod's init.
pub fn pod_init_id(pod_id: &str) -> String {
    format!("pod-{pod_id}")
}

fn internal(what: &str, e: impl std::fmt::Display) -> CriError {
    CriError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn mode(m: i32) -> NamespaceMode {
    if m == v1::NamespaceMode::Node as i32 {
        NamespaceMode::Node
    } else {
        NamespaceMode::Pod
    }
}

/// Maps a CRI pod config to the backend-neutral [`PodSpec`].
pub fn pod_spec(id: &str, c: &v1::PodSandboxConfig) -> Result<PodSpec, CriError> {
    let md = c.metadata.clone().unwrap_or_default();
    if md.name.is_empty() || md.namespace.is_empty() || md.uid.is_empty() {
        return Err(CriError::invalid(
            "pod sandbox metadata needs name, namespace and uid",
        ));
    }
    let linux = c.linux.clone().unwrap_or_default();
    let ns = linux
        .security_context
        .and_then(|s| s.namespace_options)
        .unwrap_or_default();
    let pid = match v1::NamespaceMode::try_from(ns.pid).unwrap_or(v1::NamespaceMode::Container) {
        v1::NamespaceMode::Pod => PidMode::Pod,
        v1::NamespaceMode::Node => PidMode::Node,
        v1::NamespaceMode::Target => PidMode::Target(ns.target_id.clone()),
        v1::NamespaceMode::Container => PidMode::Container,
    };
    let dns = c.dns_config.clone().unwrap_or_default();
    pod_bandwidth(&c.annotations.clone().into_iter().collect())?;
    let mut port_mappings = vec![];
    for p in &c.port_mappings {
        let (Ok(container_port), Ok(host_port)) =
            (u16::try_from(p.container_port), u16::try_from(p.host_port))
        else {
            return Err(CriError::invalid(format!(
                "port mapping {}:{} out of range",
                p.host_port, p.container_port
            )));
        };
        let protocol = match v1::Protocol::try_from(p.protocol).unwrap_or(v1::Protocol::Tcp) {
            v1::Protocol::Tcp => Protocol::Tcp,
            v1::Protocol::Udp => Protocol::Udp,
            v1::Protocol::Sctp => Protocol::Sctp,
        };
        port_mappings.push(PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: p.host_ip.clone(),
        });
    }
    Ok(PodSpec {
        id: id.to_string(),
        name: md.name,
        namespace: md.namespace,
        uid: md.uid,
        attempt: md.attempt,
        hostname: c.hostname.clone(),
        log_directory: c.log_directory.clone(),
        dns: DnsSpec {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        port_mappings,
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces: PodNamespaces {
            network: mode(ns.network),
            ipc: mode(ns.ipc),
            pid,
        },
        shm_size: None,
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
    })
}

/// Parses a Kubernetes quantity (`10M`, `1Gi`, `500k`, `1000`) into a whole number.
fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    let v = value * mult;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// The `bandwidth` capability from kubelet's pod annotations `kubernetes.io/ingress-bandwidth`
/// and `kubernetes.io/egress-bandwidth` (bits per second; burst unlimited, as containerd does).
pub fn pod_bandwidth(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<unicri_network_cni::Bandwidth>, CriError> {
    let get = |key: &str| -> Result<Option<u64>, CriError> {
        match annotations.get(key) {
            None => Ok(None),
            Some(v) => parse_quantity(v)
                .filter(|r| *r > 0)
                .map(Some)
                .ok_or_else(|| CriError::invalid(format!("annotation {key}: bad quantity {v:?}"))),
        }
    };
    let ingress = get("kubernetes.io/ingress-bandwidth")?;
    let egress = get("kubernetes.io/egress-bandwidth")?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let burst = u64::from(u32::MAX);
    Ok(Some(unicri_network_cni::Bandwidth {
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: if ingress.is_some() { burst } else { 0 },
        egress_rate: egress.unwrap_or(0),
        egress_burst: if egress.is_some() { burst } else { 0 },
    }))
}

fn pod_network(spec: &PodSpec, netns: &Path) -> PodNetwork {
    PodNetwork {
        sandbox_id: spec.id.clone(),
        netns: netns.to_path_buf(),
        pod_namespace: spec.namespace.clone(),
        pod_name: spec.name.clone(),
        pod_uid: spec.uid.clone(),
        port_mappings: spec
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| unicri_network_cni::PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: format!("{:?}", p.protocol).to_lowercase(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        // validated in `pod_spec`
        bandwidth: pod_bandwidth(&spec.annotations).ok().flatten(),
        dns: (!spec.dns.is_empty()).then(|| unicri_network_cni::Dns {
            servers: spec.dns.servers.clone(),
            searches: spec.dns.searches.clone(),
            ..Default::default()
        }),
    }
}

/// The memory a vm pod's guest needs from its CRI config: the pod's resources (the sum of its
/// containers' limits, kubelet ≥ 1.32) plus its overhead (RuntimeClass overhead); `None` when
/// the pod sets no memory limit (the handler's default size applies).
pub fn vm_memory(config: &v1::PodSandboxConfig) -> Option<u64> {
    let linux = config.linux.as_ref()?;
    let limit = linux.resources.as_ref()?.memory_limit_in_bytes;
    if limit <= 0 {
        return None;
    }
    let overhead = linux
        .overhead
        .as_ref()
        .map_or(0, |o| o.memory_limit_in_bytes.max(0));
    u64::try_from(limit.saturating_add(overhead)).ok()
}

impl Pods {
    /// Pod orchestration over the configured CNI directories and the state dir.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        keeper: unicri_runtime_linux::keeper::KeeperClient,
        vm: Arc<crate::vm::VmBackend>,
    ) -> Self {
        let cni = Cni::new(CniOptions::new(
            config.cni.conf_dir.clone(),
            config.cni.bin_dirs.clone(),
            config.state.join("cni-cache"),
        ));
        Self {
            store,
            cni,
            pods_dir: config.state.join("pods"),
            netns_dir: config.state.join("netns"),
            keeper,
            vm,
            config,
            locks: std::sync::Mutex::new(std::collections::HashMap::new()),
            names: crate::reserve::Reservations::default(),
        }
    }

    /// Whether pod networking can work (CRI `NetworkReady`).
    pub fn network_status(&self) -> Result<(), NotReadyReason> {
        self.cni.status()
    }

    fn decode(row: PodRow) -> Result<StoredPod, CriError> {
        let config = v1::PodSandboxConfig::decode(row.config.as_slice())
            .map_err(|e| internal(&format!("decode stored config of pod {}", row.id), e))?;
        let state: PodBackendState = serde_json::from_str(&row.backend_state)
            .map_err(|e| internal(&format!("decode stored state of pod {}", row.id), e))?;
        Ok(StoredPod { row, config, state })
    }

    /// The pod `id` (full or a unique prefix) names, if any.
    pub async fn resolve(&self, id: &str) -> Result<Option<StoredPod>, CriError> {
        if id.is_empty() {
            return Err(CriError::invalid("pod sandbox id is empty"));
        }
        if let Some(row) = self.store.pod(id).await? {
            return Self::decode(row).map(Some);
        }
        if !unicri_sandbox::id::is_id_prefix(id) {
            return Ok(None);
        }
        match self.store.pod_ids_with_prefix(id).await?.as_slice() {
            [one] => self.store.pod(one).await?.map(Self::decode).transpose(),
            [] => Ok(None),
            many => Err(CriError::invalid(format!(
                "pod id prefix {id:?} is ambiguous ({} pods)",
                many.len()
            ))),
        }
    }

    /// Every pod.
    pub async fn list(&self) -> Result<Vec<StoredPod>, CriError> {
        self.store
            .list_pods()
            .await?
            .into_iter()
            .map(Self::decode)
            .collect()
    }

    /// The backend serving pods of `handler`.
    pub fn backend_of(&self, handler: &str) -> Option<Backend> {
        self.config.backend_for(handler)
    }

    /// `RunPodSandbox`: returns the new pod's id.
    pub async fn run(
        &self,
        config: v1::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        match self.config.backend_for(handler) {
            None => {
                return Err(CriError::not_found(format!(
                    "runtime handler {handler:?} is not configured"
                )));
            }
            // a wasm pod is a linux pod without processes of its own: the same pinned
            // namespaces, netns + CNI and pod cgroup; its containers are keeper threads.
            // A vm pod is one too on the host, plus its guest.
            Some(Backend::Linux | Backend::Wasm | Backend::Vm) => {}
        }
        let id = unicri_sandbox::id::new_id();
        let spec = pod_spec(&id, &config)?;
        if self.config.backend_for(handler) == Some(Backend::Vm)
            && spec.namespaces.network != NamespaceMode::Pod
        {
            return Err(CriError::invalid(
                "a pod on a vm runtime handler cannot use the node's network namespace: its \
                 guest kernel has a network stack of its own (hostNetwork is not supported)",
            ));
        }
        let identity = format!(
            "{}/{}/{}/{}",
            spec.namespace, spec.name, spec.uid, spec.attempt
        );
        let Some(_reserved) = self.names.try_reserve(identity) else {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) is being created by another request",
                    spec.namespace, spec.name, spec.uid, spec.attempt
                ),
            ));
        };
        if let Some(existing) = self
            .store
            .pod_by_identity(&spec.name, &spec.namespace, &spec.uid, spec.attempt)
            .await?
        {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) already exists as {}",
                    spec.namespace, spec.name, spec.uid, spec.attempt, existing.id
                ),
            ));
        }
        let pod_dir = self.pods_dir.join(&id);
        let cgroup = unicri_runtime_linux::cgroups::pod_cgroup_path(&spec.cgroup_parent, &id)
            .unwrap_or_default();
        let payload = serde_json::json!({
            "pod_dir": pod_dir,
            "netns": self.netns_dir.join(&id),
            "cgroup": cgroup,
            "pid_init": spec.namespaces.pid == PidMode::Pod,
        })
        .to_string();
        let op = self
            .store
            .journal_begin("run_pod_sandbox", &id, &payload)
            .await?;
        let mut state = PodBackendState {
            cgroup_parent: spec.cgroup_parent.clone(),
            ..Default::default()
        };
        let result = self
            .build(&spec, &pod_dir, &mut state, &config, handler)
            .await;
        if let Err(e) = &result {
            tracing::info!(pod_id = %id, error = %e.message, "run pod sandbox failed; rolling back");
            if let Err(cleanup) = self.teardown(&spec, &state, true).await {
                tracing::error!(pod_id = %id, error = %cleanup.message, "rollback of a failed pod left something behind");
            }
        }
        self.store.journal_finish(op).await?;
        result.map(|()| id)
    }

    async fn build(
        &self,
        spec: &PodSpec,
        pod_dir: &Path,
        state: &mut PodBackendState,
        config: &v1::PodSandboxConfig,
        handler: &str,
    ) -> Result<(), CriError> {
        let (dir, s) = (pod_dir.to_path_buf(), spec.clone());
        let linux = tokio::task::spawn_blocking(move || LinuxPod::create(&dir, &s))
            .await
            .map_err(|e| internal("create pod", e))?
            .map_err(|e| CriError::from_classified("create pod sandbox", &e))?;
        state.linux = Some(linux.clone());
        // a WebAssembly container has no processes to share a PID namespace with
        let wasm = self.config.backend_for(handler) == Some(Backend::Wasm);
        let vm = self.config.backend_for(handler) == Some(Backend::Vm);
        if spec.namespaces.pid == PidMode::Pod && !wasm && !vm {
            let init = self
                .keeper
                .pod_init(&pod_init_id(&spec.id))
                .await
                .map_err(|e| CriError::from_classified("start the pod's init", &e))?;
            state.pid_init = Some(init.pid);
        }
        if spec.namespaces.network == NamespaceMode::Pod {
            let pin = self.netns_dir.join(&spec.id);
            let p = pin.clone();
            tokio::task::spawn_blocking(move || NetNs::create(&p))
                .await
                .map_err(|e| internal("create netns", e))?
                .map_err(|e| CriError::from_classified("create pod network namespace", &e))?;
            state.netns = Some(pin.clone());
            let (p, s) = (pin.clone(), spec.clone());
            tokio::task::spawn_blocking(move || {
                unicri_runtime_linux::sysctl::apply_net_sysctls(&p, &s)
            })
            .await
            .map_err(|e| internal("apply sysctls", e))?
            .map_err(|e| CriError::from_classified("apply pod sysctls", &e))?;
            let net: PodNetworkStatus = self
                .cni
                .setup_pod(&pod_network(spec, &pin))
                .await
                .map_err(|e| CriError::from_classified("set up pod network", &e))?;
            state.ips = net
                .primary_ip()
                .into_iter()
                .chain(net.additional_ips())
                .map(|ip| ip.to_string())
                .collect();
            if let (Some(ip), Some(hosts)) = (net.primary_ip(), linux.hosts_file.clone()) {
                let hostname = linux.hostname.clone();
                tokio::task::spawn_blocking(move || {
                    unicri_runtime_linux::files::add_pod_ip(&hosts, ip, &hostname)
                })
                .await
                .map_err(|e| internal("write hosts", e))?
                .map_err(|e| CriError::from_classified("write pod hosts file", &e))?;
            }
        }
        if vm {
            self.build_vm(spec, state, &linux, handler, config).await?;
        }
        crate::crashpoint::crashpoint("run_pod_sandbox:before_record");
        let backend_state =
            serde_json::to_string(&*state).map_err(|e| internal("encode pod state", e))?;
        let row = PodRow {
            id: spec.id.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            uid: spec.uid.clone(),
            attempt: spec.attempt,
            handler: handler.to_string(),
            state: READY.to_string(),
            created_at: now_nanos(),
            config: config.encode_to_vec(),
            backend_state,
        };
        if !self.store.insert_pod(&row).await? {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "pod sandbox {}/{} already exists",
                    spec.namespace, spec.name
                ),
            ));
        }
        Ok(())
    }

    /// The `vm` part of RunPodSandbox: the guest, set up with the pod's network, files and
    /// namespaces; its init for a shared PID namespace lives in the guest.
    async fn build_vm(
        &self,
        spec: &PodSpec,
        state: &mut PodBackendState,
        linux: &PodState,
        handler: &str,
        config: &v1::PodSandboxConfig,
    ) -> Result<(), CriError> {
        let netns = state.netns.clone().ok_or_else(|| {
            CriError::new(
                ErrorKind::FailedPrecondition,
                "a vm pod needs its network namespace",
            )
        })?;
        let mut files = std::collections::BTreeMap::new();
        for (name, path) in [
            ("hosts", &linux.hosts_file),
            ("resolv.conf", &linux.resolv_conf),
            ("hostname", &linux.hostname_file),
        ] {
            if let Some(p) = path {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| internal(&format!("read pod file {}", p.display()), e))?;
                files.insert(name.to_string(), text);
            }
        }
        let setup = unicri_vm_agent::proto::PodSetup {
            pod_id: spec.id.clone(),
            hostname: linux.hostname.clone(),
            files,
            sysctls: spec.sysctls.clone(),
            shm_size: spec.shm_size.unwrap_or(0),
            ..Default::default()
        };
        let cgroup_dirs = linux
            .cgroup
            .as_ref()
            .map(|c| c.dirs.clone())
            .unwrap_or_default();
        let record = self
            .vm
            .start_pod(
                handler,
                &spec.id,
                &netns,
                &cgroup_dirs,
                vm_memory(config),
                setup,
            )
            .await?;
        state.vm = Some(record);
        if spec.namespaces.pid == PidMode::Pod {
            let init = self
                .vm
                .keeper(&spec.id, state.vm.as_ref())
                .pod_init(&pod_init_id(&spec.id))
                .await
                .map_err(|e| CriError::from_classified("start the pod's init in its guest", &e))?;
            state.pid_init = Some(init.pid);
        }
        Ok(())
    }

    /// Tears down the network (and with `all`, the namespaces, files, shm and cgroup). Idempotent.
    async fn teardown(
        &self,
        spec: &PodSpec,
        state: &PodBackendState,
        all: bool,
    ) -> Result<(), CriError> {
        let mut first_err: Option<CriError> = None;
        if let Some(vm) = &state.vm {
            // the guest (and with it the pod's init and containers) goes first
            if let Err(e) = self.vm.stop_pod(&spec.id, vm).await {
                first_err.get_or_insert(e);
            }
        } else if state.pid_init.is_some()
            && let Err(e) = self.keeper.delete(&pod_init_id(&spec.id)).await
        {
            first_err.get_or_insert(CriError::from_classified("stop the pod's init", &e));
        }
        if let Some(pin) = &state.netns {
            if let Err(e) = self.cni.teardown_pod(&pod_network(spec, pin)).await {
                first_err.get_or_insert(CriError::from_classified("tear down pod network", &e));
            }
            let p = pin.clone();
            match tokio::task::spawn_blocking(move || NetNs::remove(&p)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(CriError::from_classified(
                        "remove pod network namespace",
                        &e,
                    ));
                }
                Err(e) => {
                    first_err.get_or_insert(internal("remove netns", e));
                }
            }
        }
        if all && let Some(linux) = state.linux.clone() {
            match tokio::task::spawn_blocking(move || LinuxPod::remove(&linux)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(CriError::from_classified("remove pod sandbox", &e));
                }
                Err(e) => {
                    first_err.get_or_insert(internal("remove pod", e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Recovery of a `RunPodSandbox` that a crash interrupted: complete when its row was
    /// written (the last step), otherwise undo every step that may have happened — the pod's
    /// init, CNI attachment (from the cached result), netns pin, IPC/UTS pins, shm, pod files,
    /// and the default pod cgroup — from what the journal payload names. Idempotent.
    pub async fn recover_run(&self, id: &str, payload: &str) -> Result<(), CriError> {
        if self.store.pod(id).await?.is_some() {
            tracing::info!(pod_id = %id, "interrupted RunPodSandbox had completed");
            return Ok(());
        }
        tracing::warn!(pod_id = %id, "rolling back an interrupted RunPodSandbox");
        self.vm.recover_pod(id).await;
        let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let pod_dir = p["pod_dir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.pods_dir.join(id));
        let netns = p["netns"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.netns_dir.join(id));
        let cgroup_path = p["cgroup"].as_str().unwrap_or_default().to_string();
        let spec = PodSpec {
            id: id.to_string(),
            ..PodSpec::default()
        };
        // only the default parent is ours to remove; kubelet owns the cgroups it passes
        let cgroup = (cgroup_path == format!("/unicri/pod-{id}"))
            .then(|| unicri_runtime_linux::cgroups::CgroupManager::detect().ok())
            .flatten()
            .map(|m| {
                let dirs: Vec<PathBuf> = m
                    .roots()
                    .into_iter()
                    .map(|r| r.join(cgroup_path.trim_start_matches('/')))
                    .filter(|d| d.exists())
                    .collect();
                unicri_runtime_linux::cgroups::CgroupState {
                    path: cgroup_path.clone(),
                    created: dirs.clone(),
                    dirs,
                }
            });
        let state = PodBackendState {
            linux: Some(PodState {
                ipc_pin: Some(pod_dir.join("ns/ipc")),
                uts_pin: Some(pod_dir.join("ns/uts")),
                shm: Some(pod_dir.join("shm")),
                pod_dir,
                cgroup,
                ..PodState::default()
            }),
            netns: netns.exists().then_some(netns),
            pid_init: p["pid_init"].as_bool().unwrap_or(true).then_some(0),
            ..PodBackendState::default()
        };
        self.teardown(&spec, &state, true).await
    }

    /// At shutdown: when no pod is left, unmounts the self bind mounts that make the pin
    /// directories shared (they must stay while any pod's pins live under them).
    pub async fn release_if_idle(&self) {
        match self.store.list_pods().await {
            Ok(pods) if pods.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list pods at shutdown; pin dirs stay mounted");
                return;
            }
        }
        // The default parent of pods without a cgroup parent (`/unicri`), in every hierarchy;
        // rmdir only succeeds on an empty cgroup.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join("unicri"));
            }
        }
        let _ = std::fs::remove_dir("/sys/fs/cgroup/unicri");
        for dir in [&self.pods_dir, &self.netns_dir] {
            if let Err(e) = unicri_mounts::unmount_if_mount_point(dir) {
                tracing::warn!(dir = %dir.display(), op = e.op, error = %e.source, "unmount idle pin dir");
            }
        }
    }

    /// The lock of one pod (made on first use).
    async fn pod_lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// `StopPodSandbox`: releases the network; an unknown pod is not an error.
    pub async fn stop(&self, id: &str) -> Result<(), CriError> {
        let Some(pod) = self.resolve(id).await? else {
            return Ok(());
        };
        let _g = self.pod_lock(&pod.row.id).await;
        // re-read under the lock: a concurrent stop or remove may have changed it
        let Some(pod) = self.resolve(&pod.row.id).await? else {
            return Ok(());
        };
        let spec = pod_spec(&pod.row.id, &pod.config)?;
        self.teardown(&spec, &pod.state, false).await?;
        let state = PodBackendState {
            netns: None,
            pid_init: None,
            vm: None,
            ..pod.state
        };
        let json = serde_json::to_string(&state).map_err(|e| internal("encode pod state", e))?;
        self.store.update_pod(&pod.row.id, NOT_READY, &json).await?;
        Ok(())
    }

    /// Stores a changed vm record of a ready pod (an image attached to its guest), under the
    /// pod's lock; `f` edits the record read under the lock and returns a value.
    pub async fn with_vm_record<T>(
        &self,
        pod_id: &str,
        f: impl AsyncFnOnce(&mut crate::vm::VmPodRecord) -> Result<(T, bool), CriError>,
    ) -> Result<T, CriError> {
        let _g = self.pod_lock(pod_id).await;
        let pod = self
            .resolve(pod_id)
            .await?
            .ok_or_else(|| CriError::not_found(format!("pod sandbox {pod_id} not found")))?;
        let mut state = pod.state.clone();
        let Some(record) = state.vm.as_mut() else {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!("pod sandbox {pod_id} has no running guest"),
            ));
        };
        let (value, changed) = f(record).await?;
        if changed {
            let json =
                serde_json::to_string(&state).map_err(|e| internal("encode pod state", e))?;
            self.store
                .update_pod(&pod.row.id, &pod.row.state, &json)
                .await?;
        }
        Ok(value)
    }

    /// `RemovePodSandbox`: stops the pod if needed and removes everything; idempotent.
    pub async fn remove(&self, id: &str) -> Result<(), CriError> {
        let Some(pod) = self.resolve(id).await? else {
            return Ok(());
        };
        let _g = self.pod_lock(&pod.row.id).await;
        let Some(pod) = self.resolve(&pod.row.id).await? else {
            return Ok(());
        };
        let spec = pod_spec(&pod.row.id, &pod.config)?;
        self.teardown(&spec, &pod.state, true).await?;
        self.store.delete_pod(&pod.row.id).await?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pod.row.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "ns".into(),
                attempt: 2,
            }),
            hostname: "web-0".into(),
            port_mappings: vec![v1::PortMapping {
                protocol: v1::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            }],
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/podu1".into(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Node as i32,
                        pid: v1::NamespaceMode::Pod as i32,
                        ipc: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cri_config_maps_to_pod_spec() {
        let s = pod_spec("id1", &config()).unwrap();
        assert_eq!(
            (
                s.name.as_str(),
                s.namespace.as_str(),
                s.uid.as_str(),
                s.attempt
            ),
            ("web", "ns", "u1", 2)
        );
        assert_eq!(s.namespaces.network, NamespaceMode::Node);
        assert_eq!(s.namespaces.ipc, NamespaceMode::Pod);
        assert_eq!(s.namespaces.pid, PidMode::Pod);
        assert_eq!(s.cgroup_parent, "/kubepods/podu1");
        assert_eq!(s.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(s.port_mappings[0].host_port, 5353);
    }

    #[test]
    fn bandwidth_annotations_become_the_bandwidth_capability() {
        let mut a = std::collections::BTreeMap::new();
        assert_eq!(pod_bandwidth(&a).unwrap(), None);
        a.insert(
            "kubernetes.io/ingress-bandwidth".to_string(),
            "10M".to_string(),
        );
        let b = pod_bandwidth(&a).unwrap().unwrap();
        assert_eq!((b.ingress_rate, b.egress_rate), (10_000_000, 0));
        assert_eq!(b.ingress_burst, u64::from(u32::MAX));
        a.insert(
            "kubernetes.io/egress-bandwidth".to_string(),
            "1Mi".to_string(),
        );
        assert_eq!(pod_bandwidth(&a).unwrap().unwrap().egress_rate, 1 << 20);
        a.insert(
            "kubernetes.io/egress-bandwidth".to_string(),
            "fast".to_string(),
        );
        assert_eq!(
            pod_bandwidth(&a).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("2x"), None);
    }

    #[test]
    fn vm_pods_are_sized_from_resources_plus_overhead() {
        let mut c = config();
        assert_eq!(vm_memory(&c), None);
        let linux = c.linux.get_or_insert_with(Default::default);
        linux.resources = Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        });
        linux.overhead = Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 20 << 20,
            ..Default::default()
        });
        assert_eq!(vm_memory(&c), Some(120 << 20));
    }

    #[test]
    fn metadata_is_required_and_ports_checked() {
        let mut c = config();
        c.metadata = None;
        assert_eq!(
            pod_spec("x", &c).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut c = config();
        c.port_mappings[0].host_port = 70000;
        assert_eq!(
            pod_spec("x", &c).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
