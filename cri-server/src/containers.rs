//! Containers of `linux` pods: the rootfs overlay and OCI spec are made here, the process is
//! created, run, reaped and logged by the node keeper (`unicri_runtime_linux::keeper`), the
//! record lives in SQLite. The keeper is the truth about processes; rows are brought up to date
//! from it whenever they are read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde::{Deserialize, Serialize};
use unicri_mounts::OverlayRootfs;
use unicri_proto::v1;
use unicri_runtime_linux::cgroups::CgroupManager;
use unicri_runtime_linux::keeper::KeeperClient;
use unicri_runtime_linux::keeper::KeeperSession;
use unicri_runtime_linux::keeper::proto::{
    ContainerInfo, CreateRequest, ExecRequest, ExecResult, ExecStreamRequest, Request, Usage,
};
use unicri_sandbox::ErrorKind;
use unicri_sandbox::container::{ContainerSpec, ContainerState};
use unicri_sandbox::pod::PidMode;
use unicri_storage::{ContainerRow, Store};

use crate::config::Backend;
use crate::container_spec;
use crate::error::CriError;
use crate::images::Images;
use crate::pods::{Pods, READY, StoredPod};

/// What the daemon keeps about a container besides its CRI config (the row's `backend_state`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerBackendState {
    /// The container directory (bundle: `config.json`, `rootfs`, `upper`, `work`).
    pub dir: PathBuf,
    /// The backend-neutral spec it was created from.
    pub spec: ContainerSpec,
    /// The image's repo digest (`repo@sha256:…`), or its id when it has none (CRI `image_ref`).
    pub image_ref: String,
    /// Signal number StopContainer sends first.
    pub stop_signal: i32,
    /// cgroup path (cgroupfs) of the container (`linux` only).
    pub cgroups_path: String,
    /// The backend that runs it: `wasm`, or empty for `linux` (rows from before backends).
    pub backend: String,
}

impl ContainerBackendState {
    /// Whether the `wasm` keeper runs this container.
    pub fn is_wasm(&self) -> bool {
        self.backend == "wasm"
    }

    /// Whether the keeper inside a `vm` pod's guest runs this container.
    pub fn is_vm(&self) -> bool {
        self.backend == "vm"
    }
}

/// A stored container with its decoded config and state.
#[derive(Clone, Debug)]
pub struct StoredContainer {
    /// The row.
    pub row: ContainerRow,
    /// The CRI config it was created with.
    pub config: v1::ContainerConfig,
    /// Backend state.
    pub state: ContainerBackendState,
    /// Resource use as its keeper measured it (`wasm` instances have no cgroup), when running.
    pub usage: Option<Usage>,
    /// Bytes in a vm container's writable layer, as its guest agent measured them.
    pub guest_writable_bytes: Option<u64>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> CriError {
    CriError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

fn mount_err(what: &str, e: unicri_mounts::StepError) -> CriError {
    internal(what, format!("{}: {}", e.op, e.source))
}

/// Container orchestration.
pub struct Containers {
    store: Store,
    images: Arc<Images>,
    pods: Arc<Pods>,
    keeper: KeeperClient,
    /// The `wasm` node keeper (same protocol, own process).
    wasm_keeper: KeeperClient,
    dir: PathBuf,
    /// Container names (pod, name, attempt) being created.
    names: crate::reserve::Reservations,
    /// Last CPU sample per cgroup path (time ns, usage ns), for `usage_nano_cores`.
    cpu_samples: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
    /// `GetContainerEvents` subscribers.
    pub events: crate::events::Events,
    /// Containers whose STOPPED event went out (a status call and the exit watch may both see
    /// the exit: one event).
    stopped_sent: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Started containers whose exit is to be watched (see [`Containers::watch_exits`]).
    watch_tx: tokio::sync::mpsc::UnboundedSender<String>,
    watch_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

impl Containers {
    /// Containers under `<root>/containers`, run by `keeper` (`linux`) and `wasm_keeper`.
    pub fn new(
        root: &Path,
        store: Store,
        images: Arc<Images>,
        pods: Arc<Pods>,
        keeper: KeeperClient,
        wasm_keeper: KeeperClient,
    ) -> Self {
        let (watch_tx, watch_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            store,
            images,
            pods,
            keeper,
            wasm_keeper,
            dir: root.join("containers"),
            names: crate::reserve::Reservations::default(),
            cpu_samples: std::sync::Mutex::new(std::collections::HashMap::new()),
            events: crate::events::Events::default(),
            stopped_sent: std::sync::Mutex::new(std::collections::HashSet::new()),
            watch_tx,
            watch_rx: std::sync::Mutex::new(Some(watch_rx)),
        }
    }

    /// Runs the exit watcher: one waiting task per running container (a task, not a process),
    /// so a container that ends by itself is recorded, and its STOPPED event sent, when it ends
    /// rather than at the next status query. Call once; containers already running are watched
    /// too (after a daemon restart).
    pub async fn watch_exits(self: &Arc<Self>) -> Result<(), CriError> {
        let rx = self
            .watch_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut rx) = rx else {
            return Ok(());
        };
        for c in self.list(None).await? {
            if ContainerState::parse(&c.row.state) == ContainerState::Running {
                let _ = self.watch_tx.send(c.row.id.clone());
            }
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let Some(me) = this.upgrade() else { return };
                tokio::spawn(async move {
                    let keeper = match me.store.container(&id).await {
                        Ok(Some(row)) => match Self::decode(row) {
                            Ok(c) => match me.keeper_for(&c.state, &c.row.pod_id).await {
                                Ok(k) => k,
                                Err(_) => return,
                            },
                            Err(_) => return,
                        },
                        _ => return,
                    };
                    // a keeper restart ends the wait early: wait again while it runs
                    loop {
                        match keeper.wait(&id, Duration::ZERO).await {
                            Ok(Some(info)) if info.exit.is_none() => continue,
                            _ => break,
                        }
                    }
                    if let Err(e) = me.resolve(&id).await {
                        tracing::debug!(%id, error = %e.message, "exit watch: refresh failed");
                    }
                });
            }
        });
        Ok(())
    }

    /// Sends a `GetContainerEvents` event for container (or pod sandbox) `id` of pod `pod_id`,
    /// with the pod's status and its containers' statuses as stored now.
    pub async fn emit(&self, id: &str, pod_id: &str, kind: v1::ContainerEventType) {
        if kind == v1::ContainerEventType::ContainerDeletedEvent {
            self.stopped_sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(id);
        }
        if !self.events.active() {
            return;
        }
        let pod = self.pods.resolve(pod_id).await.ok().flatten();
        let statuses = match self.store.list_containers(Some(pod_id)).await {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|r| Self::decode(r).ok())
                .map(|c| crate::rpc::container_status::status_of(&c))
                .collect(),
            Err(_) => Vec::new(),
        };
        self.events.send(v1::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: crate::pods::now_nanos(),
            pod_sandbox_status: pod.as_ref().map(crate::rpc::pod_sandbox_status::status_of),
            containers_statuses: statuses,
        });
    }

    fn decode(row: ContainerRow) -> Result<StoredContainer, CriError> {
        let config = v1::ContainerConfig::decode(row.config.as_slice())
            .map_err(|e| internal(&format!("decode stored config of container {}", row.id), e))?;
        let state: ContainerBackendState = serde_json::from_str(&row.backend_state)
            .map_err(|e| internal(&format!("decode stored state of container {}", row.id), e))?;
        Ok(StoredContainer {
            row,
            config,
            state,
            usage: None,
            guest_writable_bytes: None,
        })
    }

    /// The keeper that runs a container of this state (for `vm`: the one in its pod's guest).
    async fn keeper_for(
        &self,
        state: &ContainerBackendState,
        pod_id: &str,
    ) -> Result<KeeperClient, CriError> {
        if state.is_wasm() {
            Ok(self.wasm_keeper.clone())
        } else if state.is_vm() {
            let pod = self.pods.resolve(pod_id).await?;
            Ok(self
                .pods
                .vm
                .keeper(pod_id, pod.as_ref().and_then(|p| p.state.vm.as_ref())))
        } else {
            Ok(self.keeper.clone())
        }
    }

    /// The container `id` (full or unique prefix) names, if any, brought up to date.
    pub async fn resolve(&self, id: &str) -> Result<Option<StoredContainer>, CriError> {
        if id.is_empty() {
            return Err(CriError::invalid("container id is empty"));
        }
        let row = match self.store.container(id).await? {
            Some(r) => Some(r),
            None if unicri_sandbox::id::is_id_prefix(id) => {
                match self.store.container_ids_with_prefix(id).await?.as_slice() {
                    [one] => self.store.container(one).await?,
                    [] => None,
                    many => {
                        return Err(CriError::invalid(format!(
                            "container id prefix {id:?} is ambiguous ({} containers)",
                            many.len()
                        )));
                    }
                }
            }
            None => None,
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let mut c = Self::decode(row)?;
        let info = self
            .keeper_for(&c.state, &c.row.pod_id)
            .await?
            .state(&c.row.id)
            .await
            .map_err(|e| CriError::from_classified("ask the keeper", &e))?;
        self.refresh(&mut c, info.as_ref()).await?;
        Ok(Some(c))
    }

    /// Every container (of one pod), brought up to date.
    pub async fn list(&self, pod_id: Option<&str>) -> Result<Vec<StoredContainer>, CriError> {
        let rows = self.store.list_containers(pod_id).await?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let decoded = rows
            .into_iter()
            .map(Self::decode)
            .collect::<Result<Vec<_>, _>>()?;
        let infos = if decoded
            .iter()
            .any(|c| !c.state.is_wasm() && !c.state.is_vm())
        {
            self.keeper
                .list()
                .await
                .map_err(|e| CriError::from_classified("ask the keeper", &e))?
        } else {
            Vec::new()
        };
        let wasm_infos = if decoded.iter().any(|c| c.state.is_wasm()) {
            self.wasm_keeper
                .list()
                .await
                .map_err(|e| CriError::from_classified("ask the wasm keeper", &e))?
        } else {
            Vec::new()
        };
        // each vm pod's guest keeper, asked once
        let mut vm_infos: std::collections::HashMap<String, Vec<ContainerInfo>> =
            std::collections::HashMap::new();
        for c in decoded.iter().filter(|c| c.state.is_vm()) {
            if vm_infos.contains_key(&c.row.pod_id) {
                continue;
            }
            let list = self
                .keeper_for(&c.state, &c.row.pod_id)
                .await?
                .list()
                .await
                .map_err(|e| CriError::from_classified("ask the guest keeper", &e))?;
            vm_infos.insert(c.row.pod_id.clone(), list);
        }
        let mut out = Vec::with_capacity(decoded.len());
        for mut c in decoded {
            let from = if c.state.is_wasm() {
                &wasm_infos
            } else if c.state.is_vm() {
                vm_infos.get(&c.row.pod_id).unwrap_or(&infos)
            } else {
                &infos
            };
            let info = from.iter().find(|i| i.id == c.row.id);
            self.refresh(&mut c, info).await?;
            out.push(c);
        }
        Ok(out)
    }

    /// Brings a row up to date with the keeper's view and stores the change.
    async fn refresh(
        &self,
        c: &mut StoredContainer,
        info: Option<&ContainerInfo>,
    ) -> Result<(), CriError> {
        let before = c.row.clone();
        let state = ContainerState::parse(&c.row.state);
        c.usage = info.and_then(|i| i.usage);
        match info {
            Some(info) => {
                if info.started_at > 0 && c.row.started_at == 0 {
                    c.row.started_at = info.started_at;
                }
                if let Some(exit) = &info.exit {
                    c.row.state = ContainerState::Exited.as_str().into();
                    c.row.exit_code = exit.code;
                    c.row.finished_at = exit.finished_at;
                    c.row.reason = if info.state == "unknown" {
                        "Unknown".into()
                    } else {
                        exit.reason().into()
                    };
                    if c.row.started_at == 0 {
                        c.row.started_at = exit.finished_at;
                    }
                    if !exit.message.is_empty() {
                        c.row.message = exit.message.clone();
                    }
                } else if info.state == "running" {
                    c.row.state = ContainerState::Running.as_str().into();
                }
            }
            None if matches!(state, ContainerState::Created | ContainerState::Running) => {
                // the keeper has no record: its state was lost (node reboot)
                c.row.state = ContainerState::Exited.as_str().into();
                c.row.exit_code = 255;
                c.row.reason = "Unknown".into();
                c.row.message = "the keeper lost this container".into();
                c.row.finished_at = crate::pods::now_nanos();
            }
            None => {}
        }
        if c.row != before {
            let exited = ContainerState::Exited.as_str();
            if c.state.is_vm()
                && c.row.state == exited
                && before.state != exited
                && let Some(rec) = self
                    .pods
                    .resolve(&c.row.pod_id)
                    .await?
                    .and_then(|p| p.state.vm)
            {
                // the host log is complete before the exit is reported
                self.pods.vm.drain_log(&rec, &c.row.id).await;
            }
            self.store.update_container(&c.row).await?;
            let exited = ContainerState::Exited.as_str();
            let first = c.row.state == exited
                && before.state != exited
                && self
                    .stopped_sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(c.row.id.clone());
            if first {
                self.emit(
                    &c.row.id,
                    &c.row.pod_id,
                    v1::ContainerEventType::ContainerStoppedEvent,
                )
                .await;
            }
        }
        Ok(())
    }

    /// `CreateContainer`: returns the new container's id.
    pub async fn create(
        &self,
        pod_id: &str,
        config: v1::ContainerConfig,
        pod_config: Option<v1::PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let pod = self
            .pods
            .resolve(pod_id)
            .await?
            .ok_or_else(|| CriError::not_found(format!("pod sandbox {pod_id} not found")))?;
        if pod.row.state != READY {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!("pod sandbox {} is not ready", pod.row.id),
            ));
        }
        let pod_config = pod_config.unwrap_or_else(|| pod.config.clone());
        let image_spec = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_spec.is_empty() {
            return Err(CriError::invalid("container config has no image"));
        }
        let image = self.images.resolve(&image_spec).await?.ok_or_else(|| {
            CriError::not_found(format!("image {image_spec:?} not found: pull it first"))
        })?;
        let id = unicri_sandbox::id::new_id();
        let spec = container_spec::container_spec(
            &id,
            &pod.row.id,
            &pod_config,
            &config,
            &image_spec,
            &image.row.id,
        )?;
        let image_config = container_spec::image_config(&image.record.config_json)?;

        let Some(_reserved) = self
            .names
            .try_reserve(format!("{}/{}/{}", pod.row.id, spec.name, spec.attempt))
        else {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "container {:?} (attempt {}) in pod {} is being created by another request",
                    spec.name, spec.attempt, pod.row.id
                ),
            ));
        };
        if let Some(existing) = self
            .store
            .list_containers(Some(&pod.row.id))
            .await?
            .into_iter()
            .find(|c| c.name == spec.name && c.attempt == spec.attempt)
        {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "container {:?} (attempt {}) already exists in pod {} as {}",
                    spec.name, spec.attempt, pod.row.id, existing.id
                ),
            ));
        }
        let dir = self.dir.join(&id);
        let payload = serde_json::json!({ "dir": dir }).to_string();
        let op = self
            .store
            .journal_begin("create_container", &id, &payload)
            .await?;
        let result = self
            .build(&id, &dir, &pod, &spec, &image_config, &image, &config)
            .await;
        if let Err(e) = &result {
            tracing::info!(container_id = %id, error = %e.message, "create container failed; rolling back");
            if self.pods.backend_of(&pod.row.handler) == Some(Backend::Vm)
                && let Err(cleanup) = self.destroy_vm(&id, &pod.row.id).await
            {
                tracing::error!(container_id = %id, error = %cleanup.message, "rollback of a failed container left something in its guest");
            }
            if let Err(cleanup) = self.destroy(&id, &dir).await {
                tracing::error!(container_id = %id, error = %cleanup.message, "rollback of a failed container left something behind");
            }
        }
        self.store.journal_finish(op).await?;
        result?;
        self.emit(
            &id,
            &pod.row.id,
            v1::ContainerEventType::ContainerCreatedEvent,
        )
        .await;
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn build(
        &self,
        id: &str,
        dir: &Path,
        pod: &StoredPod,
        spec: &ContainerSpec,
        image_config: &unicri_sandbox::container::ImageConfig,
        image: &crate::images::StoredImage,
        config: &v1::ContainerConfig,
    ) -> Result<(), CriError> {
        let linux_pod = pod.state.linux.clone().ok_or_else(|| {
            CriError::new(
                ErrorKind::FailedPrecondition,
                format!("pod sandbox {} has no linux state", pod.row.id),
            )
        })?;
        let wasm = self.pods.backend_of(&pod.row.handler) == Some(Backend::Wasm);
        let vm = self.pods.backend_of(&pod.row.handler) == Some(Backend::Vm);
        let pod_spec = crate::pods::pod_spec(&pod.row.id, &pod.config)?;
        let pod_cgroup = linux_pod
            .cgroup
            .as_ref()
            .map(|c| c.path.clone())
            .unwrap_or_else(|| format!("/unicri/pod-{}", pod.row.id));
        let cgroups_path = if wasm {
            String::new()
        } else {
            format!("{}/{}", pod_cgroup.trim_end_matches('/'), id)
        };
        let layers = self.images.service().layer_dirs(&image.record);
        let overlay = OverlayRootfs::under(dir);
        let (ov, l) = (overlay.clone(), layers.clone());
        tokio::task::spawn_blocking(move || ov.mount(&l))
            .await
            .map_err(|e| internal("mount rootfs", e))?
            .map_err(|e| mount_err("mount container rootfs", e))?;

        let mut bundle = dir.to_path_buf();
        let mut log_path = (!spec.log_path.is_empty()).then(|| PathBuf::from(&spec.log_path));
        let (stop_signal, keeper, cgroup_dirs) = if wasm {
            let signal = self
                .build_wasm(dir, pod, &pod_spec, spec, image_config, &overlay.target)
                .await?;
            (signal, self.wasm_keeper.clone(), Vec::new())
        } else if vm {
            let built = self
                .build_vm(
                    id,
                    dir,
                    pod,
                    &pod_spec,
                    spec,
                    image_config,
                    image,
                    &overlay.target,
                )
                .await?;
            bundle = PathBuf::from(built.bundle);
            log_path = Some(PathBuf::from(built.log_path));
            (
                built.stop_signal,
                self.keeper_for(
                    &ContainerBackendState {
                        backend: "vm".into(),
                        ..Default::default()
                    },
                    &pod.row.id,
                )
                .await?,
                vec![PathBuf::from(built.cgroup_dir)],
            )
        } else {
            let pid_ns = self.pid_namespace(pod, spec).await?;
            let (s, ic, ps, lp, netns, rootfs, cg) = (
                spec.clone(),
                image_config.clone(),
                pod_spec.clone(),
                linux_pod.clone(),
                pod.state.netns.clone(),
                overlay.target.clone(),
                cgroups_path.clone(),
            );
            let bundle = dir.to_path_buf();
            let signal = tokio::task::spawn_blocking(move || {
                let inputs = unicri_runtime_linux::spec::SpecInputs {
                    container: &s,
                    image: &ic,
                    pod: &ps,
                    pod_state: &lp,
                    netns: netns.as_deref(),
                    rootfs: &rootfs,
                    cgroups_path: cg,
                    pid_ns: pid_ns.as_deref(),
                };
                let built = unicri_runtime_linux::spec::build(&inputs)?;
                built.spec.save(bundle.join("config.json")).map_err(|e| {
                    unicri_runtime_linux::LinuxError::InvalidArgument {
                        what: "oci spec",
                        value: bundle.display().to_string(),
                        reason: e.to_string(),
                    }
                })?;
                Ok::<_, unicri_runtime_linux::LinuxError>(built.stop_signal)
            })
            .await
            .map_err(|e| internal("build oci spec", e))?
            .map_err(|e| CriError::from_classified("build container spec", &e))?;
            let cgroup_dirs = CgroupManager::detect()
                .map(|m| {
                    m.roots()
                        .into_iter()
                        .map(|r| r.join(cgroups_path.trim_start_matches('/')))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            (signal, self.keeper.clone(), cgroup_dirs)
        };

        let state = ContainerBackendState {
            dir: dir.to_path_buf(),
            spec: spec.clone(),
            image_ref: image
                .row
                .digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.row.id.clone()),
            stop_signal,
            cgroups_path: if vm {
                unicri_vm_agent::proto::paths::cgroup(id)
            } else {
                cgroups_path.clone()
            },
            backend: if wasm {
                "wasm".into()
            } else if vm {
                "vm".into()
            } else {
                String::new()
            },
        };
        let info = keeper
            .create(CreateRequest {
                id: id.to_string(),
                bundle,
                log_path,
                oom_score_adj: spec.resources.oom_score_adj,
                cgroup_dirs,
                stdin: spec.stdin,
                stdin_once: spec.stdin_once,
                tty: spec.tty,
            })
            .await
            .map_err(|e| CriError::from_classified("create container", &e))?;
        if vm
            && let Some(rec) = self
                .pods
                .resolve(&pod.row.id)
                .await?
                .and_then(|p| p.state.vm)
        {
            self.pods.vm.relay_logs(&rec, id, Path::new(&spec.log_path));
            self.pods.vm.sync_mounts(&rec, id, spec.mounts.clone());
        }
        crate::crashpoint::crashpoint("create_container:before_record");
        let row = ContainerRow {
            id: id.to_string(),
            pod_id: pod.row.id.clone(),
            name: spec.name.clone(),
            attempt: spec.attempt,
            image_id: image.row.id.clone(),
            state: ContainerState::Created.as_str().into(),
            created_at: info.created_at,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            config: config.encode_to_vec(),
            backend_state: serde_json::to_string(&state)
                .map_err(|e| internal("encode container state", e))?,
        };
        if !self.store.insert_container(&row).await? {
            return Err(CriError::new(
                ErrorKind::AlreadyExists,
                format!("container {:?} already exists", spec.name),
            ));
        }
        Ok(())
    }

    /// The `wasm` part of CreateContainer: the spec (refusing non-WebAssembly images), file
    /// mounts bound into the rootfs, `wasm.json` in the bundle. Returns the stop signal.
    async fn build_wasm(
        &self,
        dir: &Path,
        pod: &StoredPod,
        pod_spec: &unicri_sandbox::pod::PodSpec,
        spec: &ContainerSpec,
        image_config: &unicri_sandbox::container::ImageConfig,
        rootfs: &Path,
    ) -> Result<i32, CriError> {
        let (s, ic, netns, root, bundle) = (
            spec.clone(),
            image_config.clone(),
            pod.state.netns.clone(),
            rootfs.to_path_buf(),
            dir.to_path_buf(),
        );
        let hostname = if pod_spec.hostname.is_empty() {
            pod_spec.name.clone()
        } else {
            pod_spec.hostname.clone()
        };
        tokio::task::spawn_blocking(move || {
            let inputs = unicri_runtime_wasm::spec::SpecInputs {
                container: &s,
                image: &ic,
                hostname: &hostname,
                rootfs: &root,
                netns: netns.as_deref(),
            };
            let built = unicri_runtime_wasm::spec::build(&inputs)
                .map_err(|e| CriError::from_classified("build WebAssembly container spec", &e))?;
            for m in &built.file_mounts {
                no_symlinks_below(&root, &m.target)?;
                bind_file(m).map_err(|e| {
                    CriError::new(
                        ErrorKind::Internal,
                        format!("bind {} onto {}: {e}", m.host.display(), m.target.display()),
                    )
                })?;
            }
            let json = serde_json::to_vec_pretty(&built.spec)
                .map_err(|e| internal("encode wasm spec", e))?;
            std::fs::write(bundle.join(unicri_runtime_wasm::spec::SPEC_FILE), json)
                .map_err(|e| internal("write wasm spec", e))?;
            let stop = if s.stop_signal.is_empty() {
                ic.stop_signal.clone()
            } else {
                s.stop_signal.clone()
            };
            if stop.is_empty() {
                Ok(15)
            } else {
                unicri_runtime_linux::spec::parse_signal(&stop)
                    .map_err(|e| CriError::from_classified("stop signal", &e))
            }
        })
        .await
        .map_err(|e| internal("build wasm spec", e))?
    }

    /// The `vm` part of CreateContainer: the OCI spec is built as for `linux` but with the
    /// guest's paths (the pod's pins, files and shm in the guest, the guest cgroup, a rootfs
    /// the agent mounts from the image's block image plus a writable layer); CRI mounts are
    /// copied in. The host overlay (`rootfs`) only serves the user lookup and is removed here.
    #[allow(clippy::too_many_arguments)]
    async fn build_vm(
        &self,
        id: &str,
        dir: &Path,
        pod: &StoredPod,
        pod_spec: &unicri_sandbox::pod::PodSpec,
        spec: &ContainerSpec,
        image_config: &unicri_sandbox::container::ImageConfig,
        image: &crate::images::StoredImage,
        rootfs: &Path,
    ) -> Result<VmBuilt, CriError> {
        use unicri_vm_agent::proto::{self, paths};
        if !spec.devices.is_empty() {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "host devices ({}) cannot be passed into a vm pod's guest",
                    spec.devices
                        .iter()
                        .map(|d| d.host_path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let linux_pod = pod.state.linux.clone().unwrap_or_default();
        let mounts = spec.mounts.clone();
        let cid = id.to_string();
        let copies = tokio::task::spawn_blocking(move || crate::vm::plan_mounts(&cid, &mounts))
            .await
            .map_err(|e| internal("copy mounts", e))??;
        let pid_ns = self.pid_namespace(pod, spec).await?;
        let guest_pod = unicri_runtime_linux::PodState {
            pod_dir: PathBuf::from(paths::POD_DIR),
            ipc_pin: Some(PathBuf::from(format!("{}/ipc", paths::NS_DIR))),
            uts_pin: Some(PathBuf::from(format!("{}/uts", paths::NS_DIR))),
            shm: Some(PathBuf::from(format!("{}/shm", paths::POD_DIR))),
            hostname: linux_pod.hostname.clone(),
            hostname_file: linux_pod
                .hostname_file
                .as_ref()
                .map(|_| PathBuf::from(format!("{}/hostname", paths::POD_DIR))),
            hosts_file: linux_pod
                .hosts_file
                .as_ref()
                .map(|_| PathBuf::from(format!("{}/hosts", paths::POD_DIR))),
            resolv_conf: linux_pod
                .resolv_conf
                .as_ref()
                .map(|_| PathBuf::from(format!("{}/resolv.conf", paths::POD_DIR))),
            cgroup: None,
        };
        let (s, ic, ps, root, cid) = (
            spec.clone(),
            image_config.clone(),
            pod_spec.clone(),
            rootfs.to_path_buf(),
            id.to_string(),
        );
        let map = copies.map.clone();
        let (config_json, stop_signal) = tokio::task::spawn_blocking(move || {
            let netns = PathBuf::from(format!("{}/net", paths::NS_DIR));
            let inputs = unicri_runtime_linux::spec::SpecInputs {
                container: &s,
                image: &ic,
                pod: &ps,
                pod_state: &guest_pod,
                netns: Some(&netns),
                rootfs: &root,
                cgroups_path: paths::cgroup(&cid),
                pid_ns: pid_ns.as_deref(),
            };
            let mut built = unicri_runtime_linux::spec::build(&inputs)
                .map_err(|e| CriError::from_classified("build container spec", &e))?;
            if let Some(r) = built.spec.root_mut() {
                r.set_path(PathBuf::from(paths::rootfs(&cid)));
            }
            if let Some(ms) = built.spec.mounts_mut() {
                for m in ms.iter_mut() {
                    if let Some(guest) = m.source().as_ref().and_then(|src| map.get(src)) {
                        m.set_source(Some(PathBuf::from(guest)));
                    }
                }
            }
            let json =
                serde_json::to_string(&built.spec).map_err(|e| internal("encode spec", e))?;
            Ok::<_, CriError>((json, built.stop_signal))
        })
        .await
        .map_err(|e| internal("build oci spec", e))??;
        // the host view of the image was only for the user lookup
        let overlay = OverlayRootfs::under(dir);
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || overlay.remove(&d))
            .await
            .map_err(|e| internal("remove host rootfs", e))?
            .map_err(|e| mount_err("remove the host view of the rootfs", e))?;
        std::fs::create_dir_all(dir).map_err(|e| internal("make container dir", e))?;

        let key = image.row.id.trim_start_matches("sha256:").to_string();
        let layers = self.images.service().layer_dirs(&image.record);
        let block = self.pods.vm.image(&key, layers).await?;
        let vm = self.pods.vm.clone();
        let pod_id = pod.row.id.clone();
        let (device, record) = self
            .pods
            .with_vm_record(&pod.row.id, async |rec: &mut crate::vm::VmPodRecord| {
                let (dev, changed) = vm.attach_image(&pod_id, rec, &key, &block).await?;
                Ok(((dev, rec.clone()), changed))
            })
            .await?;
        let answer = self
            .pods
            .vm
            .agent(&record)
            .request(proto::Request::PrepareContainer(proto::PrepareContainer {
                id: id.to_string(),
                image_device: device,
                image_fstype: "erofs".into(),
                config_json,
                files: copies.files,
            }))
            .await
            .map_err(|e| CriError::from_classified("prepare the container in its guest", &e))?;
        match answer {
            proto::Response::Prepared {
                bundle,
                log_path,
                cgroup_dir,
            } => Ok(VmBuilt {
                bundle,
                log_path,
                cgroup_dir,
                stop_signal,
            }),
            other => Err(crate::vm::agent_refused(
                "prepare the container in its guest",
                other,
            )),
        }
    }

    /// Removes what a container of a `vm` pod has in the guest (keeper record, bundle, log) and
    /// its log relay. A stopped guest holds nothing. Idempotent.
    async fn destroy_vm(&self, id: &str, pod_id: &str) -> Result<(), CriError> {
        let pod = self.pods.resolve(pod_id).await?;
        let record = pod.and_then(|p| p.state.vm);
        self.pods
            .vm
            .keeper(pod_id, record.as_ref())
            .delete(id)
            .await
            .map_err(|e| CriError::from_classified("delete container in its guest", &e))?;
        if let Some(rec) = &record
            && unicri_runtime_vm::engine::alive(&rec.engine)
        {
            let answer = self
                .pods
                .vm
                .agent(rec)
                .request(unicri_vm_agent::proto::Request::RemoveContainer { id: id.into() })
                .await
                .map_err(|e| CriError::from_classified("remove the container in its guest", &e))?;
            if answer != unicri_vm_agent::proto::Response::Ok {
                return Err(crate::vm::agent_refused(
                    "remove the container in its guest",
                    answer,
                ));
            }
        }
        self.pods.vm.forget_container(id).await;
        Ok(())
    }

    /// [`Self::destroy_vm`] for a container that has a row.
    async fn destroy_in_guest(&self, id: &str) -> Result<(), CriError> {
        let Some(row) = self.store.container(id).await? else {
            return Ok(());
        };
        let c = Self::decode(row)?;
        if !c.state.is_vm() {
            return Ok(());
        }
        self.destroy_vm(id, &c.row.pod_id).await
    }

    /// Fills `usage` of the running containers of vm pods from their guests (one agent call
    /// per pod): CPU time and memory from the guest cgroups.
    pub async fn with_guest_usage(&self, cs: &mut [StoredContainer]) {
        let mut pods: Vec<String> = cs
            .iter()
            .filter(|c| c.state.is_vm() && c.row.state == ContainerState::Running.as_str())
            .map(|c| c.row.pod_id.clone())
            .collect();
        pods.sort();
        pods.dedup();
        for pod_id in pods {
            let Ok(Some(rec)) = self
                .pods
                .resolve(&pod_id)
                .await
                .map(|p| p.and_then(|p| p.state.vm))
            else {
                continue;
            };
            let ids: Vec<String> = cs
                .iter()
                .filter(|c| c.row.pod_id == pod_id)
                .map(|c| c.row.id.clone())
                .collect();
            let Ok(unicri_vm_agent::proto::Response::Stats(stats)) = self
                .pods
                .vm
                .agent(&rec)
                .request(unicri_vm_agent::proto::Request::Stats { ids })
                .await
            else {
                continue;
            };
            for c in cs.iter_mut().filter(|c| c.row.pod_id == pod_id) {
                if let Some(u) = stats.containers.get(&c.row.id) {
                    c.guest_writable_bytes = Some(u.writable_bytes);
                    c.usage = Some(Usage {
                        cpu_ns: u.cpu_ns,
                        memory_bytes: u.memory_working_set,
                        memory_max_bytes: u.memory_usage,
                        memory_limit_bytes: u64::try_from(
                            c.state.spec.resources.memory_limit_in_bytes,
                        )
                        .unwrap_or(0),
                    });
                }
            }
        }
    }

    /// After a restart: the log relays of the containers of running vm pods.
    pub async fn resume_vm_relays(&self) -> Result<(), CriError> {
        for row in self.store.list_containers(None).await? {
            let Ok(c) = Self::decode(row) else { continue };
            if !c.state.is_vm() {
                continue;
            }
            if let Some(rec) = self
                .pods
                .resolve(&c.row.pod_id)
                .await?
                .and_then(|p| p.state.vm)
            {
                self.pods
                    .vm
                    .relay_logs(&rec, &c.row.id, Path::new(&c.state.spec.log_path));
                if c.row.state != ContainerState::Exited.as_str() {
                    self.pods
                        .vm
                        .sync_mounts(&rec, &c.row.id, c.state.spec.mounts.clone());
                }
            }
        }
        Ok(())
    }

    /// The PID namespace a container joins: the pod init's (POD) or the target container's
    /// (TARGET); `None` for a namespace of its own or the node's.
    async fn pid_namespace(
        &self,
        pod: &StoredPod,
        spec: &ContainerSpec,
    ) -> Result<Option<PathBuf>, CriError> {
        match &spec.security.pid {
            PidMode::Pod => {
                let pid = pod.state.pid_init.ok_or_else(|| {
                    CriError::new(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "pod sandbox {} has no shared PID namespace (its init is not running)",
                            pod.row.id
                        ),
                    )
                })?;
                Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
            }
            PidMode::Target(target) => {
                let t = self.resolve(target).await?.ok_or_else(|| {
                    CriError::not_found(format!("target container {target} not found"))
                })?;
                let info = self
                    .keeper_for(&t.state, &t.row.pod_id)
                    .await?
                    .state(&t.row.id)
                    .await
                    .map_err(|e| CriError::from_classified("ask the keeper", &e))?
                    .filter(|i| i.exit.is_none() && i.pid > 0)
                    .ok_or_else(|| {
                        CriError::new(
                            ErrorKind::FailedPrecondition,
                            format!("target container {target} is not running"),
                        )
                    })?;
                Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", info.pid))))
            }
            PidMode::Container | PidMode::Node => Ok(None),
        }
    }

    /// Removes the keepers' container and the container directory. Idempotent. Both keepers are
    /// asked (a keeper that does not run holds nothing and is not started for this).
    async fn destroy(&self, id: &str, dir: &Path) -> Result<(), CriError> {
        self.destroy_in_guest(id).await?;
        for keeper in [&self.keeper, &self.wasm_keeper] {
            keeper
                .delete(id)
                .await
                .map_err(|e| CriError::from_classified("delete container", &e))?;
        }
        let overlay = OverlayRootfs::under(dir);
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || overlay.remove(&d))
            .await
            .map_err(|e| internal("remove rootfs", e))?
            .map_err(|e| mount_err("remove container rootfs", e))
    }

    /// Recovery of a `CreateContainer` that a crash interrupted: complete when its row was
    /// written (the last step), otherwise remove what the keeper made and the rootfs.
    pub async fn recover_create(&self, id: &str, payload: &str) -> Result<(), CriError> {
        if self.store.container(id).await?.is_some() {
            tracing::info!(container_id = %id, "interrupted CreateContainer had completed");
            return Ok(());
        }
        tracing::warn!(container_id = %id, "rolling back an interrupted CreateContainer");
        let p: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
        let dir = p["dir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.join(id));
        self.destroy(id, &dir).await
    }

    /// After a restart: the keeper's containers and pod inits that no row owns are removed
    /// (their operation was rolled back or never recorded).
    pub async fn reconcile_keeper(&self) -> Result<(), CriError> {
        let infos = self
            .keeper
            .list()
            .await
            .map_err(|e| CriError::from_classified("ask the keeper", &e))?;
        for info in infos {
            let owned = match info.id.strip_prefix("pod-") {
                Some(pod_id) => self
                    .pods
                    .resolve(pod_id)
                    .await?
                    .is_some_and(|p| p.state.pid_init.is_some()),
                None => self.store.container(&info.id).await?.is_some(),
            };
            if !owned {
                tracing::warn!(id = %info.id, "removing a keeper record nothing owns");
                self.keeper
                    .delete(&info.id)
                    .await
                    .map_err(|e| CriError::from_classified("delete orphan", &e))?;
            }
        }
        let wasm = self
            .wasm_keeper
            .list()
            .await
            .map_err(|e| CriError::from_classified("ask the wasm keeper", &e))?;
        for info in wasm {
            if self.store.container(&info.id).await?.is_none() {
                tracing::warn!(id = %info.id, "removing a wasm keeper record nothing owns");
                self.wasm_keeper
                    .delete(&info.id)
                    .await
                    .map_err(|e| CriError::from_classified("delete orphan", &e))?;
            }
        }
        Ok(())
    }

    /// CPU use in nano-cores since the previous sample of the same cgroup (`None` on the first).
    pub fn nano_cores(&self, key: &str, now: i64, usage: u64) -> Option<u64> {
        let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
        let prev = samples.insert(key.to_string(), (now, usage));
        let (t0, u0) = prev?;
        let dt = u64::try_from(now - t0).ok().filter(|d| *d > 0)?;
        let du = usage.checked_sub(u0)?;
        Some(((du as u128) * 1_000_000_000 / dt as u128) as u64)
    }

    /// Forgets the CPU samples of removed cgroups.
    pub fn forget_samples(&self, keep: &[String]) {
        let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|k, _| keep.contains(k));
    }

    /// A container created from `image_id`, if any.
    pub async fn image_user(&self, image_id: &str) -> Result<Option<String>, CriError> {
        Ok(self
            .store
            .list_containers(None)
            .await?
            .into_iter()
            .find(|c| c.image_id == image_id)
            .map(|c| c.id))
    }

    /// `StartContainer`.
    pub async fn start(&self, id: &str) -> Result<(), CriError> {
        let c = self
            .resolve(id)
            .await?
            .ok_or_else(|| CriError::not_found(format!("container {id} not found")))?;
        if ContainerState::parse(&c.row.state) != ContainerState::Created {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!("container {} is {}, not created", c.row.id, c.row.state),
            ));
        }
        let info = self
            .keeper_for(&c.state, &c.row.pod_id)
            .await?
            .start(&c.row.id)
            .await
            .map_err(|e| CriError::from_classified("start container", &e))?;
        let mut c = c;
        self.refresh(&mut c, Some(&info)).await?;
        self.emit(
            &c.row.id,
            &c.row.pod_id,
            v1::ContainerEventType::ContainerStartedEvent,
        )
        .await;
        let _ = self.watch_tx.send(c.row.id.clone());
        Ok(())
    }

    /// `StopContainer`: the stop signal, SIGKILL after `timeout` seconds. Unknown ids and
    /// stopped containers are fine.
    pub async fn stop(&self, id: &str, timeout: i64) -> Result<(), CriError> {
        let Some(mut c) = self.resolve(id).await? else {
            return Ok(());
        };
        if ContainerState::parse(&c.row.state) == ContainerState::Exited {
            return Ok(());
        }
        let cid = c.row.id.clone();
        let signal = if c.state.stop_signal > 0 {
            c.state.stop_signal
        } else {
            15
        };
        let kerr =
            |e: unicri_runtime_linux::LinuxError| CriError::from_classified("stop container", &e);
        let keeper = self.keeper_for(&c.state, &c.row.pod_id).await?;
        if timeout > 0 && c.state.is_wasm() {
            // a module cannot handle a signal: the stop signal ends it at once
            keeper.kill(&cid, signal, false).await.map_err(kerr)?;
            if let Some(info) = keeper
                .wait(&cid, Duration::from_secs(timeout.unsigned_abs()))
                .await
                .map_err(kerr)?
                .filter(|i| i.exit.is_some())
            {
                return self.refresh(&mut c, Some(&info)).await;
            }
        } else if timeout > 0 {
            let total = Duration::from_secs(timeout.unsigned_abs());
            keeper.kill(&cid, signal, false).await.map_err(kerr)?;
            // A container stopped right after it started may not have installed its handler
            // yet, and as PID 1 of its namespace it then ignores the signal: within its first
            // seconds it gets the signal once more after a short wait.
            let young = crate::pods::now_nanos() - c.row.started_at < 2_000_000_000;
            let first = if young {
                total.min(Duration::from_millis(500))
            } else {
                total
            };
            let mut waited = keeper.wait(&cid, first).await.map_err(kerr)?;
            if young && first < total && waited.as_ref().is_some_and(|i| i.exit.is_none()) {
                keeper.kill(&cid, signal, false).await.map_err(kerr)?;
                waited = keeper.wait(&cid, total - first).await.map_err(kerr)?;
            }
            if let Some(info) = waited.filter(|i| i.exit.is_some()) {
                return self.refresh(&mut c, Some(&info)).await;
            }
        }
        keeper.kill(&cid, 9, true).await.map_err(kerr)?;
        let info = keeper
            .wait(&cid, Duration::from_secs(10))
            .await
            .map_err(kerr)?;
        self.refresh(&mut c, info.as_ref()).await
    }

    /// `RemoveContainer`: kills it if needed and removes everything. Unknown ids are fine.
    pub async fn remove(&self, id: &str) -> Result<(), CriError> {
        let Some(c) = self.resolve(id).await? else {
            return Ok(());
        };
        self.destroy(&c.row.id, &c.state.dir).await?;
        self.store.delete_container(&c.row.id).await?;
        self.emit(
            &c.row.id,
            &c.row.pod_id,
            v1::ContainerEventType::ContainerDeletedEvent,
        )
        .await;
        Ok(())
    }

    /// Stops (SIGKILL right away when `kill`) every container of a pod.
    pub async fn stop_pod(&self, pod_id: &str) -> Result<(), CriError> {
        for c in self.list(Some(pod_id)).await? {
            self.stop(&c.row.id, 0).await?;
        }
        Ok(())
    }

    /// Removes every container of a pod.
    pub async fn remove_pod(&self, pod_id: &str) -> Result<(), CriError> {
        for c in self.store.list_containers(Some(pod_id)).await? {
            let dir = Self::decode(c.clone())
                .map(|s| s.state.dir)
                .unwrap_or_else(|_| self.dir.join(&c.id));
            self.destroy(&c.id, &dir).await?;
            self.store.delete_container(&c.id).await?;
            self.emit(&c.id, pod_id, v1::ContainerEventType::ContainerDeletedEvent)
                .await;
        }
        Ok(())
    }

    /// `ExecSync`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecResult, CriError> {
        if cmd.is_empty() {
            return Err(CriError::invalid("exec needs a command"));
        }
        let c = self.running_container(id).await?;
        self.running(&c.row.id).await?;
        let id = c.row.id.clone();
        self.keeper_for(&c.state, &c.row.pod_id)
            .await?
            .exec(ExecRequest {
                id,
                argv: cmd,
                timeout_ms: u64::try_from(timeout.max(0))
                    .unwrap_or(0)
                    .saturating_mul(1000),
            })
            .await
            .map_err(|e| CriError::from_classified("exec in container", &e))
    }

    /// A keeper session running `cmd` in the running container `id` (CRI Exec, once its client
    /// connected).
    pub async fn open_exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<KeeperSession, CriError> {
        let keeper = match self.store.container(id).await? {
            Some(row) => {
                let c = Self::decode(row)?;
                self.keeper_for(&c.state, &c.row.pod_id).await?
            }
            None => self.keeper.clone(),
        };
        keeper
            .stream(&Request::ExecStream(ExecStreamRequest {
                id: id.to_string(),
                argv: cmd,
                tty,
                stdin,
            }))
            .await
            .map_err(|e| CriError::from_classified("exec in container", &e))
    }

    /// A keeper session joined to the stdio of the running container `id` (CRI Attach).
    pub async fn open_attach(&self, id: &str, stdin: bool) -> Result<KeeperSession, CriError> {
        let keeper = match self.store.container(id).await? {
            Some(row) => {
                let c = Self::decode(row)?;
                self.keeper_for(&c.state, &c.row.pod_id).await?
            }
            None => self.keeper.clone(),
        };
        keeper
            .stream(&Request::Attach {
                id: id.to_string(),
                stdin,
            })
            .await
            .map_err(|e| CriError::from_classified("attach to container", &e))
    }

    /// The running container `id` names (ExecSync, Exec, Attach): its full id and whether it
    /// was created with stdin. A WebAssembly container has no process to exec into or attach
    /// to: FailedPrecondition.
    pub async fn running(&self, id: &str) -> Result<(String, bool), CriError> {
        let c = self.running_container(id).await?;
        if c.state.is_wasm() {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "container {} is a WebAssembly instance on the wasm runtime handler: it has \
                     no shell or processes, so exec and attach are not available (read its \
                     output with logs)",
                    c.row.id
                ),
            ));
        }
        Ok((c.row.id.clone(), c.config.stdin))
    }

    /// The running container `id` names.
    async fn running_container(&self, id: &str) -> Result<StoredContainer, CriError> {
        let c = self
            .resolve(id)
            .await?
            .ok_or_else(|| CriError::not_found(format!("container {id} not found")))?;
        if ContainerState::parse(&c.row.state) != ContainerState::Running {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!("container {} is not running", c.row.id),
            ));
        }
        Ok(c)
    }

    /// `UpdateContainerResources`: the new limits go to the container's cgroup at once and
    /// replace the stored ones (ContainerStatus reports them).
    pub async fn update_resources(
        &self,
        id: &str,
        linux: &v1::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let mut c = self
            .resolve(id)
            .await?
            .ok_or_else(|| CriError::not_found(format!("container {id} not found")))?;
        if !matches!(
            ContainerState::parse(&c.row.state),
            ContainerState::Created | ContainerState::Running
        ) {
            return Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "container {} is {}: its resources cannot change",
                    c.row.id, c.row.state
                ),
            ));
        }
        if c.state.is_vm() {
            let new = container_spec::resources(linux)?;
            let rec = self
                .pods
                .resolve(&c.row.pod_id)
                .await?
                .and_then(|p| p.state.vm)
                .ok_or_else(|| {
                    CriError::new(
                        ErrorKind::FailedPrecondition,
                        format!("the guest of pod {} is not running", c.row.pod_id),
                    )
                })?;
            let r = &new;
            let answer = self
                .pods
                .vm
                .agent(&rec)
                .request(unicri_vm_agent::proto::Request::UpdateResources {
                    id: c.row.id.clone(),
                    resources: unicri_vm_agent::proto::Resources {
                        memory_limit_bytes: r.memory_limit_in_bytes,
                        cpu_period: r.cpu_period,
                        cpu_quota: r.cpu_quota,
                        cpu_shares: r.cpu_shares,
                        pids_limit: 0,
                        cpuset_cpus: r.cpuset_cpus.clone(),
                        cpuset_mems: r.cpuset_mems.clone(),
                    },
                })
                .await
                .map_err(|e| CriError::from_classified("update resources in the guest", &e))?;
            if answer != unicri_vm_agent::proto::Response::Ok {
                return Err(crate::vm::agent_refused(
                    "update resources in the guest",
                    answer,
                ));
            }
            c.state.spec.resources = new;
            c.row.backend_state = serde_json::to_string(&c.state)
                .map_err(|e| internal("encode container state", e))?;
            self.store.update_container(&c.row).await?;
            return Ok(());
        }
        if c.state.is_wasm() {
            return Err(CriError::unimplemented(
                "UpdateContainerResources of a WebAssembly container",
                "its limits are fixed when it is created",
            ));
        }
        let new = container_spec::resources(linux)?;
        let roots = CgroupManager::detect()
            .map(|m| m.roots())
            .map_err(|e| CriError::from_classified("find cgroups", &e))?;
        unicri_runtime_linux::cgroups::update_resources(&roots, &c.state.cgroups_path, &new)
            .map_err(|e| CriError::from_classified("update container resources", &e))?;
        c.state.spec.resources = new;
        c.row.backend_state =
            serde_json::to_string(&c.state).map_err(|e| internal("encode container state", e))?;
        self.store.update_container(&c.row).await?;
        Ok(())
    }

    /// `ReopenContainerLog`.
    pub async fn reopen_log(&self, id: &str) -> Result<(), CriError> {
        let c = self.running_container(id).await?;
        if c.state.is_vm() {
            // the host file is written by the log relay, which opens it for every write: make
            // the new file now, as a keeper reopening it would
            if !c.state.spec.log_path.is_empty() {
                let path = PathBuf::from(&c.state.spec.log_path);
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                    .map_err(|e| {
                        internal(&format!("reopen container log {}", path.display()), e)
                    })?;
            }
            return Ok(());
        }
        self.keeper_for(&c.state, &c.row.pod_id)
            .await?
            .reopen_log(&c.row.id)
            .await
            .map_err(|e| CriError::from_classified("reopen container log", &e))
    }
}

/// What [`Containers::build_vm`] made.
struct VmBuilt {
    bundle: String,
    log_path: String,
    cgroup_dir: String,
    stop_signal: i32,
}

/// Bind-mounts a file mount of a WebAssembly container onto its place in the rootfs (made as an
/// empty file first); read-only by a remount. Undone with the rootfs (a detached unmount of the
/// overlay takes the mounts below it).
fn bind_file(m: &unicri_runtime_wasm::spec::FileMount) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    if let Some(parent) = m.target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if !m.target.exists() {
        std::fs::File::create(&m.target)?;
    }
    mount(
        Some(&m.host),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    if m.readonly {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// Refuses a mount target whose path inside the rootfs goes through a symlink (an image could
/// point it anywhere on the node).
fn no_symlinks_below(root: &Path, target: &Path) -> Result<(), CriError> {
    let rel = target.strip_prefix(root).map_err(|_| {
        CriError::invalid(format!(
            "mount target {} is outside the rootfs",
            target.display()
        ))
    })?;
    let mut cur = root.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CriError::invalid(format!(
                    "mount target {} goes through the symlink {} in the image",
                    target.display(),
                    cur.display()
                )));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}
