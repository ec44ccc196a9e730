//! The daemon's side of the `vm` backend (issue 6): pods behind a kernel of their own.
//!
//! A vm pod is made like a `linux` pod on the host (pod files, pod cgroup, a pinned netns with
//! CNI), then `unicri-runtime-vm` bridges the netns's `eth0` to a tap, makes the control link
//! and starts the engine (`uml`: a user-mode-Linux kernel process; `kvm`: `unicri-vmm`) inside
//! the netns and the pod cgroup. The guest agent answers on the control link; containers are
//! run by the `linux` keeper inside the guest, reached through the agent with the ordinary
//! [`KeeperClient`] protocol ([`VmBackend::keeper`]). Images are read-only EROFS block
//! images, built once per image and attached to each pod that uses them; CRI mounts are copied
//! in. Container logs are written in the guest and relayed to the host's CRI log file by one
//! task per container, which keeps its offset on disk so a daemon restart loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unicri_runtime_linux::keeper::KeeperClient;
use unicri_runtime_vm::client::AgentClient;
use unicri_sandbox::ErrorKind;
use unicri_vm_agent::proto;

use crate::config::{Config, RuntimeConfig, VmEngine};
use crate::error::CriError;

/// What the daemon stores about a vm pod (in the pod row's backend state).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmPodRecord {
    /// The engine process and its devices.
    pub engine: unicri_runtime_vm::VmState,
    /// The pod's pinned netns on the host (the control link lives there).
    pub netns: PathBuf,
    /// Image key → guest block device, for images attached to this pod.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

/// The `vm` backend's daemon state.
pub struct VmBackend {
    config: Arc<Config>,
    /// `<state>/vm`: per-pod engine dirs, log offsets.
    state_dir: PathBuf,
    /// `<root>/vm-images`: EROFS images and the initramfs cache.
    image_dir: PathBuf,
    /// Per pod: its keeper client, its attach lock.
    pods: Mutex<HashMap<String, Arc<PodHandle>>>,
    /// Per container: the running log relay.
    relays: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Per container: the task keeping its copied mounts in sync with the host.
    syncs: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Per container: how much of its guest log its relay has copied.
    copied: Arc<Mutex<HashMap<String, u64>>>,
    /// The last initramfs built, by the agent binary's path, size and mtime (building it means
    /// reading and hashing the whole agent: ~85 ms for a debug build).
    initramfs: Mutex<Option<(AgentStamp, PathBuf)>>,
}

/// What identifies an agent binary on disk without reading it.
type AgentStamp = (PathBuf, u64, std::time::SystemTime);

struct PodHandle {
    keeper: KeeperClient,
    /// Serializes image attaches of one pod.
    attach: tokio::sync::Mutex<()>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> CriError {
    CriError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

fn classified(what: &str, e: &unicri_runtime_vm::VmError) -> CriError {
    CriError::from_classified(what, e)
}

/// How long an exit report waits for the log relay to catch up.
pub const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// How often copied mounts are checked for changes on the host.
pub const SYNC_PERIOD: Duration = Duration::from_secs(2);

/// A fingerprint of the host sources of `mounts`: every entry's path, type, size, mtime,
/// mode and symlink target, hashed.
fn fingerprint(mounts: &[unicri_sandbox::container::MountSpec]) -> Vec<u8> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, h: &mut sha2::Sha256, depth: usize) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            h.update(b"missing");
            return;
        };
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(m.mode().to_le_bytes());
        h.update(m.size().to_le_bytes());
        h.update(m.mtime().to_le_bytes());
        h.update(m.mtime_nsec().to_le_bytes());
        if m.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(p) {
                h.update(t.as_os_str().as_encoded_bytes());
            }
        } else if m.is_dir() && depth < 32 {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            names.sort();
            for n in names {
                walk(&n, h, depth + 1);
            }
        }
    }
    let mut h = sha2::Sha256::new();
    for m in mounts.iter().filter(|m| !m.host_path.is_empty()) {
        let host = unicri_runtime_linux::spec::mounts::clean(&m.host_path);
        // the mount source itself is followed (a mounted symlink means its target)
        match std::fs::canonicalize(&host) {
            Ok(real) => walk(&real, &mut h, 0),
            Err(_) => h.update(b"missing"),
        }
    }
    h.finalize().to_vec()
}

/// The biggest host file or directory that is copied into a vm pod for a CRI mount.
pub const MAX_COPIED_MOUNT: u64 = 8 << 20;

impl VmBackend {
    /// The backend over the daemon's root and state dirs.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            state_dir: config.state.join("vm"),
            image_dir: config.root.join("vm-images"),
            config,
            pods: Mutex::new(HashMap::new()),
            relays: Mutex::new(HashMap::new()),
            syncs: Mutex::new(HashMap::new()),
            copied: Arc::new(Mutex::new(HashMap::new())),
            initramfs: Mutex::new(None),
        }
    }

    fn runtime(&self, handler: &str) -> RuntimeConfig {
        self.config.runtime(handler).cloned().unwrap_or_default()
    }

    /// The engine for a handler: configured, else `kvm` on hardware KVM with a built guest
    /// kernel, else `uml`.
    pub fn engine_of(&self, handler: &str) -> VmEngine {
        if let Some(e) = self.runtime(handler).engine {
            return e;
        }
        let hw_kvm = Path::new("/dev/kvm").exists()
            && (Path::new("/sys/module/kvm_intel").exists()
                || Path::new("/sys/module/kvm_amd").exists());
        if hw_kvm && newest_in("/var/cache/unicri/guest-kernel", "vmlinux").is_some() {
            VmEngine::Kvm
        } else {
            VmEngine::Uml
        }
    }

    fn kernel_of(&self, handler: &str, engine: VmEngine) -> Result<PathBuf, CriError> {
        if let Some(k) = self.runtime(handler).kernel {
            return Ok(k);
        }
        let found = match engine {
            VmEngine::Uml => newest_in("/var/cache/unicri/uml-kernel", "linux"),
            VmEngine::Kvm => newest_in("/var/cache/unicri/guest-kernel", "vmlinux"),
        };
        found.ok_or_else(|| {
            CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "runtime handler {handler:?}: no {} guest kernel is built (run \
                     scripts/build-guest-kernel{}, or set [runtimes.{handler}] kernel)",
                    engine_name(engine),
                    if engine == VmEngine::Uml { " uml" } else { "" }
                ),
            )
        })
    }

    fn agent_of(&self, handler: &str) -> Result<PathBuf, CriError> {
        if let Some(a) = self.runtime(handler).agent {
            return Ok(a);
        }
        let exe = std::env::current_exe().map_err(|e| internal("find the unicri binary", e))?;
        let agent = exe.with_file_name("unicri-vm-agent");
        if agent.exists() {
            Ok(agent)
        } else {
            Err(CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "runtime handler {handler:?}: the guest agent {} is missing (build it with \
                     `cargo build -p unicri-vm-agent`, or set [runtimes.{handler}] agent)",
                    agent.display()
                ),
            ))
        }
    }

    /// Starts a pod's guest: network bridge + control link in `netns`, the engine in the pod
    /// cgroup, then waits for the agent and sends it the pod's set-up. On error everything
    /// made is undone.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_pod(
        &self,
        handler: &str,
        pod_id: &str,
        netns: &Path,
        cgroup_dirs: &[PathBuf],
        mem_limit: Option<u64>,
        setup: proto::PodSetup,
    ) -> Result<VmPodRecord, CriError> {
        let engine = self.engine_of(handler);
        let kernel = self.kernel_of(handler, engine)?;
        let agent = self.agent_of(handler)?;
        let rt = self.runtime(handler);
        let initramfs = self.initramfs_for(agent).await?;
        let dir = self.pod_dir(pod_id);
        // pod memory: its limit plus room for the guest kernel and agent
        let mem_mib = match mem_limit {
            Some(bytes) if bytes > 0 => (bytes >> 20) + 64,
            _ => rt.mem_mib.unwrap_or(256),
        };
        let ns = netns.to_path_buf();
        let ctl_mac = unicri_runtime_vm::net::ctl_mac(pod_id);
        let net = tokio::task::spawn_blocking(move || {
            unicri_runtime_vm::net::setup(
                &ns,
                &unicri_runtime_vm::net::NetNames::default(),
                &ctl_mac,
            )
        })
        .await
        .map_err(|e| internal("set up the pod's taps", e))?
        .map_err(|e| classified("bridge the pod network to the guest", &e))?;
        let cfg = unicri_runtime_vm::VmConfig {
            engine: match engine {
                VmEngine::Uml => unicri_runtime_vm::Engine::Uml,
                VmEngine::Kvm => unicri_runtime_vm::Engine::Kvm,
            },
            pod_id: pod_id.to_string(),
            dir: dir.clone(),
            netns: netns.to_path_buf(),
            cgroup_procs: cgroup_dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
            mem_mib: u32::try_from(mem_mib).unwrap_or(u32::MAX),
            vcpus: rt.vcpus.unwrap_or(1),
            kernel,
            initramfs,
            nic: net.nic.clone(),
            ctl: (net.ctl_tap.clone(), net.ctl_mac.clone()),
            vmm_binary: std::env::current_exe()
                .map(|e| e.with_file_name("unicri-vmm"))
                .unwrap_or_else(|_| PathBuf::from("unicri-vmm")),
            ..Default::default()
        };
        let started = tokio::task::spawn_blocking(move || unicri_runtime_vm::engine::start(&cfg))
            .await
            .map_err(|e| internal("start the guest", e))?;
        let engine_state = match started {
            Ok(s) => s,
            Err(e) => {
                let ns = netns.to_path_buf();
                let _ = tokio::task::spawn_blocking(move || {
                    unicri_runtime_vm::net::teardown(
                        &ns,
                        &unicri_runtime_vm::net::NetNames::default(),
                    )
                })
                .await;
                return Err(classified("start the pod's guest", &e));
            }
        };
        let record = VmPodRecord {
            engine: engine_state,
            netns: netns.to_path_buf(),
            images: BTreeMap::new(),
        };
        // kept next to the engine so a crash before the pod row is written can be undone
        let _ = std::fs::write(
            dir.join("record.json"),
            serde_json::to_vec(&record).unwrap_or_default(),
        );
        let client = AgentClient::new(netns.to_path_buf());
        let mut setup = setup;
        setup.interfaces = net.interfaces.clone();
        setup.routes = net.routes.clone();
        let ready = async {
            client
                .wait_ready(Duration::from_secs(30))
                .await
                .map_err(|e| {
                    CriError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the guest agent of pod {pod_id} did not answer: {e} (console: {})",
                            dir.join("console.log").display()
                        ),
                    )
                })?;
            expect_ok(
                "set up the pod in its guest",
                client.request(proto::Request::Setup(setup)).await,
            )
        };
        if let Err(e) = ready.await {
            let _ = self.stop_pod(pod_id, &record).await;
            return Err(e);
        }
        Ok(record)
    }

    /// The guest initramfs for `agent`: remembered by the agent's size and mtime, rebuilt (or
    /// found in the content-keyed cache) when those change or the file went away.
    async fn initramfs_for(&self, agent: PathBuf) -> Result<PathBuf, CriError> {
        let stamp = std::fs::metadata(&agent)
            .and_then(|m| Ok((agent.clone(), m.len(), m.modified()?)))
            .map_err(|e| internal(&format!("stat the guest agent {}", agent.display()), e))?;
        if let Some((s, path)) = self
            .initramfs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *s == stamp
            && path.exists()
        {
            return Ok(path.clone());
        }
        let cache = self.image_dir.clone();
        let path = tokio::task::spawn_blocking(move || {
            unicri_runtime_vm::initramfs::build(&agent, &cache)
        })
        .await
        .map_err(|e| internal("build initramfs", e))?
        .map_err(|e| classified("build the guest initramfs", &e))?;
        *self.initramfs.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, path.clone()));
        Ok(path)
    }

    /// Stops a pod's guest (agent shutdown, then the engine), and removes its taps. Idempotent.
    pub async fn stop_pod(&self, pod_id: &str, record: &VmPodRecord) -> Result<(), CriError> {
        // the log relays of its containers end by themselves once the guest is gone
        if unicri_runtime_vm::engine::alive(&record.engine) {
            let client = AgentClient::new(record.netns.clone());
            let asked = tokio::time::timeout(
                Duration::from_secs(2),
                client.request(proto::Request::Shutdown),
            )
            .await;
            if matches!(asked, Ok(Ok(proto::Response::Ok))) {
                // the guest powers off and its engine exits: give it a second before the
                // engine is told to halt (a halted guest's console no longer answers)
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while unicri_runtime_vm::engine::alive(&record.engine)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let st = record.engine.clone();
        tokio::task::spawn_blocking(move || {
            unicri_runtime_vm::engine::stop(&st, Duration::from_secs(3))
        })
        .await
        .map_err(|e| internal("stop the guest", e))?
        .map_err(|e| classified("stop the pod's guest", &e))?;
        let ns = record.netns.clone();
        if ns.exists() {
            tokio::task::spawn_blocking(move || {
                unicri_runtime_vm::net::teardown(&ns, &unicri_runtime_vm::net::NetNames::default())
            })
            .await
            .map_err(|e| internal("remove taps", e))?
            .map_err(|e| classified("remove the pod's taps", &e))?;
        }
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
        let _ = std::fs::remove_dir_all(self.pod_dir(pod_id));
        Ok(())
    }

    /// Undoes a pod whose `RunPodSandbox` a crash interrupted: the engine named by the record
    /// next to it, if any.
    pub async fn recover_pod(&self, pod_id: &str) {
        let path = self.pod_dir(pod_id).join("record.json");
        let record = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VmPodRecord>(&b).ok());
        match record {
            Some(r) => {
                if let Err(e) = self.stop_pod(pod_id, &r).await {
                    tracing::warn!(%pod_id, error = %e.message, "rollback of a vm pod's guest");
                }
            }
            None => {
                let _ = std::fs::remove_dir_all(self.pod_dir(pod_id));
            }
        }
    }

    /// A pod's engine dir: short, since unix socket paths below it must fit in 108 bytes.
    fn pod_dir(&self, pod_id: &str) -> PathBuf {
        self.state_dir.join(pod_id.get(..16).unwrap_or(pod_id))
    }

    fn handle(&self, pod_id: &str, record: Option<&VmPodRecord>) -> Arc<PodHandle> {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = pods.get(pod_id) {
            return h.clone();
        }
        let target = record.map(|r| (r.netns.clone(), r.engine.clone()));
        let name = format!("the guest keeper of vm pod {pod_id}");
        let connect: unicri_runtime_linux::keeper::Connector = Arc::new(move || {
            let target = target.clone();
            Box::pin(async move {
                let Some((netns, engine)) = target else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the pod's guest is stopped",
                    ));
                };
                if !unicri_runtime_vm::engine::alive(&engine) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the pod's guest is not running",
                    ));
                }
                let s = AgentClient::new(netns)
                    .keeper_stream()
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(Box::new(s) as unicri_runtime_linux::keeper::BoxedStream)
            })
        });
        let h = Arc::new(PodHandle {
            keeper: KeeperClient::remote(name, connect),
            attach: tokio::sync::Mutex::new(()),
        });
        if record.is_some() {
            pods.insert(pod_id.to_string(), h.clone());
        }
        h
    }

    /// The keeper inside a pod's guest (a client that answers "holds nothing" once the guest
    /// is gone).
    pub fn keeper(&self, pod_id: &str, record: Option<&VmPodRecord>) -> KeeperClient {
        self.handle(pod_id, record).keeper.clone()
    }

    /// The agent of a running pod.
    pub fn agent(&self, record: &VmPodRecord) -> AgentClient {
        AgentClient::new(record.netns.clone())
    }

    /// The read-only block image of an image (built once, shared by every pod).
    pub async fn image(&self, key: &str, layers: Vec<PathBuf>) -> Result<PathBuf, CriError> {
        let (dir, key) = (self.image_dir.clone(), key.to_string());
        tokio::task::spawn_blocking(move || unicri_runtime_vm::image::build(&dir, &key, &layers))
            .await
            .map_err(|e| internal("build block image", e))?
            .map_err(|e| classified("build the image's block image", &e))
    }

    /// Removes an image's block image (after RemoveImage); a missing one is fine.
    pub async fn remove_image(&self, key: &str) {
        let (dir, key) = (self.image_dir.clone(), key.to_string());
        match tokio::task::spawn_blocking(move || unicri_runtime_vm::image::remove(&dir, &key))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "remove a vm block image"),
            Err(e) => tracing::warn!(error = %e, "remove a vm block image"),
        }
    }

    /// Attaches an image's block image to a pod's guest (once per pod); returns its guest
    /// device and whether the record changed.
    pub async fn attach_image(
        &self,
        pod_id: &str,
        record: &mut VmPodRecord,
        key: &str,
        path: &Path,
    ) -> Result<(String, bool), CriError> {
        if let Some(dev) = record.images.get(key) {
            return Ok((dev.clone(), false));
        }
        let h = self.handle(pod_id, Some(record));
        let _g = h.attach.lock().await;
        let mut engine = record.engine.clone();
        let p = path.to_path_buf();
        let (dev, engine) = tokio::task::spawn_blocking(move || {
            unicri_runtime_vm::engine::attach_image(&mut engine, &p).map(|d| (d, engine))
        })
        .await
        .map_err(|e| internal("attach image", e))?
        .map_err(|e| classified("attach the image to the pod's guest", &e))?;
        record.engine = engine;
        record.images.insert(key.to_string(), dev.clone());
        Ok((dev, true))
    }

    /// Starts (or restarts, after a daemon restart) the relay of a container's guest log to
    /// its CRI log file on the host.
    pub fn relay_logs(&self, record: &VmPodRecord, id: &str, host_log: &Path) {
        if host_log.as_os_str().is_empty() {
            return;
        }
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        if relays.get(id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        // the file exists from CreateContainer on, as with a keeper writing it directly
        if let Some(parent) = host_log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host_log)
        {
            tracing::warn!(container_id = %id, path = %host_log.display(), error = %e, "create the container's log file");
        }
        let offsets = self.state_dir.join("log-offsets");
        let client = self.agent(record);
        let engine = record.engine.clone();
        let (id2, log) = (id.to_string(), host_log.to_path_buf());
        let copied = self.copied.clone();
        let task = tokio::spawn(async move {
            relay(client, engine, &id2, &log, &offsets, &copied).await;
        });
        relays.insert(id.to_string(), task);
    }

    /// Waits (up to [`DRAIN_WAIT`]) until the relay of container `id` has copied its whole
    /// guest log so far, so a reader of the host log after the container's exit sees all of it.
    pub async fn drain_log(&self, record: &VmPodRecord, id: &str) {
        let size = match self
            .agent(record)
            .request(proto::Request::LogSize { id: id.into() })
            .await
        {
            Ok(proto::Response::LogSize { bytes }) => bytes,
            _ => return,
        };
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            let done = self
                .copied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .copied()
                .unwrap_or(0);
            if done >= size || tokio::time::Instant::now() >= deadline {
                if done < size {
                    tracing::warn!(container_id = %id, done, size, "log relay behind at exit");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Keeps the copies of a container's CRI mounts in its guest in sync with the host (Kata's
    /// "watchable mounts"): every [`SYNC_PERIOD`] the host sources are fingerprinted (paths,
    /// sizes, mtimes, modes, symlink targets — a ConfigMap update swaps a symlink) and, when that
    /// changed, copied in again (`PutFiles`: each file replaced atomically). Files deleted on
    /// the host stay in the guest. Ends with the guest or [`Self::forget_container`].
    pub fn sync_mounts(
        &self,
        record: &VmPodRecord,
        id: &str,
        mounts: Vec<unicri_sandbox::container::MountSpec>,
    ) {
        if mounts.iter().all(|m| m.host_path.is_empty()) {
            return;
        }
        let mut syncs = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
        if syncs.get(id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let client = self.agent(record);
        let engine = record.engine.clone();
        let id2 = id.to_string();
        let task = tokio::spawn(async move {
            let m = mounts.clone();
            let mut last = tokio::task::spawn_blocking(move || fingerprint(&m))
                .await
                .unwrap_or_default();
            loop {
                tokio::time::sleep(SYNC_PERIOD).await;
                if !unicri_runtime_vm::engine::alive(&engine) {
                    return;
                }
                let m = mounts.clone();
                let now = tokio::task::spawn_blocking(move || fingerprint(&m))
                    .await
                    .unwrap_or_default();
                if now == last {
                    continue;
                }
                let (m, i) = (mounts.clone(), id2.clone());
                let plan = match tokio::task::spawn_blocking(move || plan_mounts(&i, &m)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        tracing::warn!(container_id = %id2, error = %e.message, "mount sync: cannot copy the changed host files");
                        last = now;
                        continue;
                    }
                    Err(_) => return,
                };
                match client
                    .request(proto::Request::PutFiles { files: plan.files })
                    .await
                {
                    Ok(proto::Response::Ok) => {
                        tracing::debug!(container_id = %id2, "mount sync: copied changed host files in");
                        last = now;
                    }
                    Ok(other) => {
                        tracing::warn!(container_id = %id2, answer = ?other, "mount sync refused")
                    }
                    Err(e) => tracing::debug!(container_id = %id2, error = %e, "mount sync failed"),
                }
            }
        });
        syncs.insert(id.to_string(), task);
    }

    /// Stops a container's relay (after giving it a second to copy what is left: the agent
    /// ends the stream once the container is removed and its log sent) and forgets its offset.
    pub async fn forget_container(&self, id: &str) {
        let h = self
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(s) = self
            .syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            s.abort();
        }
        if let Some(h) = h {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), h)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(self.state_dir.join("log-offsets").join(id));
        self.copied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Relays the guest log of container `id` to `log` from the stored offset on, until the agent
/// closes the stream after the container's removal, or the guest is gone.
async fn relay(
    client: AgentClient,
    engine: unicri_runtime_vm::VmState,
    id: &str,
    log: &Path,
    offsets: &Path,
    copied: &Mutex<HashMap<String, u64>>,
) {
    let _ = std::fs::create_dir_all(offsets);
    let off_file = offsets.join(id);
    let mut offset: u64 = std::fs::read_to_string(&off_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    copied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), offset);
    loop {
        if !unicri_runtime_vm::engine::alive(&engine) {
            return;
        }
        let mut stream = match client.logs(id, offset).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(container_id = %id, error = %e, "log relay: connect");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => n,
                Err(_) => break,
            };
            if let Err(e) = append(log, &buf[..n]).await {
                tracing::warn!(container_id = %id, error = %e, "log relay: write");
            }
            offset += n as u64;
            let _ = tokio::fs::write(&off_file, offset.to_string()).await;
            copied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), offset);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Appends to a CRI log file, opening it each time (so a file rotated by kubelet is recreated).
async fn append(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    f.write_all(data).await
}

fn expect_ok(
    what: &str,
    r: Result<proto::Response, unicri_runtime_vm::VmError>,
) -> Result<(), CriError> {
    match r {
        Ok(proto::Response::Ok) => Ok(()),
        Ok(other) => Err(agent_refused(what, other)),
        Err(e) => Err(classified(what, &e)),
    }
}

/// An agent answer that is not the expected one, as a gRPC-mappable error.
pub fn agent_refused(what: &str, r: proto::Response) -> CriError {
    match r {
        proto::Response::Error { kind, message } => {
            let k = match kind.as_str() {
                "invalid_argument" => ErrorKind::InvalidArgument,
                "not_found" => ErrorKind::NotFound,
                "failed_precondition" => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            };
            CriError::new(k, format!("{what}: {message}"))
        }
        other => CriError::new(
            ErrorKind::Internal,
            format!("{what}: unexpected agent answer {other:?}"),
        ),
    }
}

/// The newest `<root>/*/<file>`.
fn newest_in(root: &str, file: &str) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join(file))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn engine_name(e: VmEngine) -> &'static str {
    match e {
        VmEngine::Uml => "uml",
        VmEngine::Kvm => "kvm",
    }
}

/// The guest side of one CRI mount of a container: what to copy in, and where.
#[derive(Debug, Default)]
pub struct CopiedMounts {
    /// Host path → guest path.
    pub map: HashMap<PathBuf, String>,
    /// The files to write.
    pub files: Vec<proto::FileEntry>,
}

/// Plans the copies of a container's CRI mounts into its guest: a file goes to the
/// container's `files/<n>`, a directory (emptyDir, ConfigMap, Secret, projected token…) to the
/// pod's volumes dir keyed by its host path, so containers of one pod mounting the same host
/// directory share it. Anything bigger than [`MAX_COPIED_MOUNT`], and sockets or devices,
/// cannot be shared into a guest: FailedPrecondition.
pub fn plan_mounts(
    id: &str,
    mounts: &[unicri_sandbox::container::MountSpec],
) -> Result<CopiedMounts, CriError> {
    use base64::Engine as _;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut out = CopiedMounts::default();
    for (i, m) in mounts.iter().enumerate() {
        if m.host_path.is_empty() {
            continue;
        }
        let host = unicri_runtime_linux::spec::mounts::clean(&m.host_path);
        let refuse = |why: String| {
            CriError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "mount of host path {} into a vm pod: {why}; a vm pod gets copies of host \
                     files and directories up to {} MiB (kept in sync), nothing else",
                    host.display(),
                    MAX_COPIED_MOUNT >> 20
                ),
            )
        };
        let meta = std::fs::metadata(&host).map_err(|e| {
            CriError::new(
                ErrorKind::InvalidArgument,
                format!("host path {} of a mount: {e}", host.display()),
            )
        })?;
        let ft = meta.file_type();
        if ft.is_file() {
            if meta.len() > MAX_COPIED_MOUNT {
                return Err(refuse(format!("it is {} bytes", meta.len())));
            }
            let data = std::fs::read(&host).map_err(|e| internal("read a mounted file", e))?;
            let guest = format!("{}/{i}", proto::paths::files(id));
            out.files.push(proto::FileEntry {
                path: guest.clone(),
                kind: "file".into(),
                mode: meta.permissions().mode() & 0o7777,
                data: base64::engine::general_purpose::STANDARD.encode(data),
            });
            out.insert(host, guest);
        } else if ft.is_dir() {
            let key = {
                use sha2::Digest;
                hex::encode(&sha2::Sha256::digest(host.as_os_str().as_encoded_bytes())[..8])
            };
            let guest = format!("{}/{key}", proto::paths::VOLUMES_DIR);
            let mut total = 0u64;
            let mut entries = vec![proto::FileEntry {
                path: guest.clone(),
                kind: "dir".into(),
                mode: meta.permissions().mode() & 0o7777,
                data: String::new(),
            }];
            copy_dir(&host, &guest, &mut entries, &mut total).map_err(|e| match e {
                CopyError::TooBig => refuse("it holds more than the limit".into()),
                CopyError::Special(p) => refuse(format!("{} is a socket, fifo or device", p)),
                CopyError::Io(e) => internal("read a mounted directory", e),
            })?;
            out.files.extend(entries);
            out.insert(host, guest);
        } else if ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device() {
            return Err(refuse("it is a socket, fifo or device".into()));
        }
    }
    Ok(out)
}

impl CopiedMounts {
    /// Maps a host path — and, when it goes through symlinks, the path they resolve to (the
    /// spec builder may name either) — to its guest copy.
    fn insert(&mut self, host: PathBuf, guest: String) {
        if let Ok(real) = std::fs::canonicalize(&host)
            && real != host
        {
            self.map.insert(real, guest.clone());
        }
        self.map.insert(host, guest);
    }
}

enum CopyError {
    TooBig,
    Special(String),
    Io(std::io::Error),
}

fn copy_dir(
    host: &Path,
    guest: &str,
    out: &mut Vec<proto::FileEntry>,
    total: &mut u64,
) -> Result<(), CopyError> {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(host)
        .map_err(CopyError::Io)?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let (hp, gp) = (e.path(), format!("{guest}/{name}"));
        let meta = std::fs::symlink_metadata(&hp).map_err(CopyError::Io)?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_symlink() {
            let target = std::fs::read_link(&hp).map_err(CopyError::Io)?;
            out.push(proto::FileEntry {
                path: gp,
                kind: "symlink".into(),
                mode,
                data: target.to_string_lossy().into_owned(),
            });
        } else if ft.is_dir() {
            out.push(proto::FileEntry {
                path: gp.clone(),
                kind: "dir".into(),
                mode,
                data: String::new(),
            });
            copy_dir(&hp, &gp, out, total)?;
        } else if ft.is_file() {
            *total += meta.len();
            if *total > MAX_COPIED_MOUNT {
                return Err(CopyError::TooBig);
            }
            let data = std::fs::read(&hp).map_err(CopyError::Io)?;
            out.push(proto::FileEntry {
                path: gp,
                kind: "file".into(),
                mode,
                data: base64::engine::general_purpose::STANDARD.encode(data),
            });
        } else {
            return Err(CopyError::Special(hp.display().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::container::MountSpec;

    fn mount(host: &Path) -> MountSpec {
        MountSpec {
            container_path: "/m".into(),
            host_path: host.display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn files_and_directories_are_planned_as_copies() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("token");
        std::fs::write(&file, "secret").unwrap();
        let dir = t.path().join("cm");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), "A").unwrap();
        std::os::unix::fs::symlink("sub/a", dir.join("link")).unwrap();
        let plan = plan_mounts("c1", &[mount(&file), mount(&dir)]).unwrap();
        assert_eq!(plan.map[&file], format!("{}/0", proto::paths::files("c1")));
        let guest_dir = &plan.map[&dir];
        assert!(
            guest_dir.starts_with(proto::paths::VOLUMES_DIR),
            "{guest_dir}"
        );
        let kinds: Vec<(String, String)> = plan
            .files
            .iter()
            .map(|f| (f.path.clone(), f.kind.clone()))
            .collect();
        assert!(kinds.contains(&(format!("{guest_dir}/link"), "symlink".into())));
        assert!(kinds.contains(&(format!("{guest_dir}/sub/a"), "file".into())));
        // the same host directory maps to the same guest directory for every container
        let again = plan_mounts("c2", &[mount(&dir)]).unwrap();
        assert_eq!(&again.map[&dir], guest_dir);
    }

    #[test]
    fn too_big_missing_and_special_sources_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_COPIED_MOUNT + 1).unwrap();
        let e = plan_mounts("c", &[mount(&big)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{}", e.message);
        let e = plan_mounts("c", &[mount(&t.path().join("nope"))]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
        let sock = t.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = plan_mounts("c", &[mount(&sock)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{}", e.message);
    }

    #[test]
    fn fingerprint_moves_when_the_host_changes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "1").unwrap();
        let m = [mount(t.path())];
        let before = fingerprint(&m);
        assert_eq!(before, fingerprint(&m));
        std::fs::write(t.path().join("b"), "2").unwrap();
        assert_ne!(before, fingerprint(&m));
    }
}
