//! [`Cni`]: network lists run as libcni runs them (ADD / DEL / CHECK / STATUS), the result cache,
//! readiness, and the pod-level setup/teardown the runtime calls.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cache::{CACHE_KIND, CacheEntry, ResultCache};
use crate::conf::{LOOPBACK_NETWORK, NetworkConfigList, Version};
use crate::error::CniError;
use crate::exec::{CniCommand, PluginExec};
use crate::netns;
use crate::result::{CniResult, primary_ip};
use crate::runtime::{
    Bandwidth, CapabilityArgs, Dns, K8sArgs, PortMapping, RuntimeConf, plugin_stdin,
};

/// The interface name of the pod's network inside its netns.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Default deadline of one plugin run.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where configuration, plugins and the cache live.
#[derive(Clone, Debug)]
pub struct CniOptions {
    /// Directory of network configuration files (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin binary directories, searched in order (`/opt/cni/bin`, `/usr/lib/cni`).
    pub bin_dirs: Vec<PathBuf>,
    /// Result cache directory (under the daemon's state directory).
    pub cache_dir: PathBuf,
    /// Deadline of one plugin run; the plugin's process group is killed on expiry.
    pub plugin_timeout: Duration,
    /// Also attach every pod to the built-in loopback network (`loopback` plugin, `lo`), which
    /// brings `lo` up. On by default.
    pub loopback: bool,
}

impl CniOptions {
    /// Options with the default timeout and loopback on.
    pub fn new(
        conf_dir: impl Into<PathBuf>,
        bin_dirs: Vec<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        CniOptions {
            conf_dir: conf_dir.into(),
            bin_dirs,
            cache_dir: cache_dir.into(),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            loopback: true,
        }
    }
}

/// Why the network is not ready (CRI `NetworkReady=false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReadyReason {
    /// Machine-readable reason, `NetworkPluginNotReady` as kubelet shows it.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl std::fmt::Display for NotReadyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// One pod's network request.
#[derive(Clone, Debug, Default)]
pub struct PodNetwork {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub sandbox_id: String,
    /// The pinned netns path.
    pub netns: PathBuf,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Host port mappings (`portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
    /// Traffic shaping (`bandwidth` capability).
    pub bandwidth: Option<Bandwidth>,
    /// DNS settings (`dns` capability).
    pub dns: Option<Dns>,
}

impl PodNetwork {
    fn k8s_args(&self) -> Vec<(String, String)> {
        K8sArgs {
            pod_namespace: self.pod_namespace.clone(),
            pod_name: self.pod_name.clone(),
            infra_container_id: self.sandbox_id.clone(),
            pod_uid: self.pod_uid.clone(),
        }
        .to_pairs()
    }

    fn capability_args(&self) -> CapabilityArgs {
        let mut caps = CapabilityArgs::default();
        caps.set_port_mappings(&self.port_mappings);
        if let Some(b) = &self.bandwidth {
            caps.set_bandwidth(b);
        }
        if let Some(d) = &self.dns {
            caps.set_dns(d);
        }
        caps
    }

    /// Runtime parameters for `ifname`; the netns is left out when it is gone.
    fn runtime_conf(&self, ifname: &str, caps: CapabilityArgs, netns_alive: bool) -> RuntimeConf {
        RuntimeConf {
            container_id: self.sandbox_id.clone(),
            netns: netns_alive.then(|| self.netns.clone()),
            ifname: ifname.to_string(),
            args: self.k8s_args(),
            capability_args: caps,
        }
    }
}

/// What setting a pod's network up produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PodNetworkStatus {
    /// The network the pod joined.
    pub network: String,
    /// The sandbox interface (`eth0`).
    pub ifname: String,
    /// The sandbox interface's addresses, in result order (v4 and v6).
    pub ips: Vec<IpAddr>,
    /// The final ADD result as the plugins printed it.
    pub result: Value,
}

impl PodNetworkStatus {
    /// The pod IP CRI reports first: the first IPv4 address, else the first address.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        primary_ip(&self.ips)
    }

    /// The other addresses (CRI `additional_ips`).
    pub fn additional_ips(&self) -> Vec<IpAddr> {
        let primary = self.primary_ip();
        self.ips
            .iter()
            .copied()
            .filter(|ip| Some(*ip) != primary)
            .collect()
    }
}

/// The CNI front: configuration, readiness, network lists and pod setup/teardown.
///
/// Calls for one sandbox must not overlap (the caller serializes per pod); calls for different
/// sandboxes may run concurrently.
#[derive(Clone, Debug)]
pub struct Cni {
    opts: CniOptions,
    exec: PluginExec,
    cache: ResultCache,
}

impl Cni {
    /// A CNI front over `opts`; nothing is read until used.
    pub fn new(opts: CniOptions) -> Self {
        let exec = PluginExec::new(opts.bin_dirs.clone(), opts.plugin_timeout);
        let cache = ResultCache::new(opts.cache_dir.clone());
        Cni { opts, exec, cache }
    }

    /// The options.
    pub fn options(&self) -> &CniOptions {
        &self.opts
    }

    /// The result cache.
    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// The plugin runner.
    pub fn exec(&self) -> &PluginExec {
        &self.exec
    }

    /// Loads the current network (the first config file of `conf_dir`). Read on every call so
    /// a config dropped in by a network daemon takes effect without a restart.
    pub fn load_network(&self) -> Result<NetworkConfigList, CniError> {
        NetworkConfigList::load_dir(&self.opts.conf_dir)
    }

    /// `NetworkReady`: a valid network config exists and every plugin it names (and `loopback`)
    /// is in the binary directories.
    pub fn status(&self) -> Result<(), NotReadyReason> {
        let not_ready = |message: String| NotReadyReason {
            reason: "NetworkPluginNotReady".into(),
            message,
        };
        let list = self.load_network().map_err(|e| match e {
            CniError::NoConfig { dir } => not_ready(format!(
                "cni config uninitialized: no network config found in {}",
                dir.display()
            )),
            e => not_ready(format!("cni config invalid: {e}")),
        })?;
        let mut types: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        if self.opts.loopback {
            types.push("loopback");
        }
        for t in types {
            self.exec
                .find(t)
                .map_err(|e| not_ready(format!("network {}: {e}", list.name)))?;
        }
        Ok(())
    }

    /// Runs STATUS on every plugin of the current network when its version is ≥ 1.1.0 (earlier
    /// versions have no STATUS; then this only loads the config).
    pub async fn plugin_status(&self) -> Result<(), CniError> {
        let list = self.load_network()?;
        self.status_list(&list).await
    }

    /// STATUS of one list (no-op below 1.1.0).
    pub async fn status_list(&self, list: &NetworkConfigList) -> Result<(), CniError> {
        if list.version() < Version(1, 1, 0) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, None, &CapabilityArgs::default());
            self.exec
                .run(
                    &list.name,
                    &plugin.plugin_type,
                    CniCommand::Status,
                    None,
                    &to_bytes(&stdin),
                )
                .await?;
        }
        Ok(())
    }

    /// ADD of a whole list: each plugin in order gets the previous plugin's result as
    /// `prevResult`; the final result is cached with the config and arguments used, then
    /// returned. Nothing is cached when a plugin fails (the caller runs DEL, as containerd does).
    pub async fn add_list(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Value, CniError> {
        rt.validate()?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, prev.as_ref(), &rt.capability_args);
            let out = self
                .exec
                .run(
                    &list.name,
                    &plugin.plugin_type,
                    CniCommand::Add,
                    Some(rt),
                    &to_bytes(&stdin),
                )
                .await?;
            let result: Value =
                serde_json::from_slice(&out).map_err(|e| CniError::InvalidResult {
                    plugin: plugin.plugin_type.clone(),
                    command: "ADD",
                    reason: format!("not JSON: {e}"),
                })?;
            if !result.is_object() {
                return Err(CniError::InvalidResult {
                    plugin: plugin.plugin_type.clone(),
                    command: "ADD",
                    reason: "result is not a JSON object".into(),
                });
            }
            prev = Some(result);
        }
        let result = prev.unwrap_or(Value::Null);
        CniResult::from_value(&result).map_err(|reason| CniError::InvalidResult {
            plugin: list
                .plugins
                .last()
                .map(|p| p.plugin_type.clone())
                .unwrap_or_default(),
            command: "ADD",
            reason,
        })?;
        let entry = CacheEntry {
            kind: CACHE_KIND.into(),
            network_name: list.name.clone(),
            container_id: rt.container_id.clone(),
            if_name: rt.ifname.clone(),
            netns: rt.netns.clone(),
            config: list.raw.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: result.clone(),
        };
        let cache = self.cache.clone();
        blocking(move || cache.write(&entry)).await?;
        Ok(result)
    }

    /// DEL of network `network` for `rt`'s container and interface, idempotently:
    ///
    /// * With a cache entry, the cached config, capability args and (version ≥ 0.4.0) result as
    ///   `prevResult` are used, so DEL undoes exactly what ADD did even if the config changed.
    /// * Without one, `current` (if it is the same network) runs with no `prevResult` (libcni).
    ///   With neither there is nothing we could run: logged, `Ok`.
    /// * Plugins run in reverse order. A plugin failure that says the object is gone
    ///   ("no such file or directory", "not found" — go-cni's rule) is logged and the next plugin
    ///   still runs; any other failure stops and keeps the cache entry for a retry.
    /// * On success the cache entry is removed; a second DEL is therefore a no-cache DEL, which
    ///   plugins must tolerate per the spec.
    pub async fn del_list(
        &self,
        network: &str,
        current: Option<&NetworkConfigList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        rt.validate()?;
        let cached = self.read_cache(network, rt).await?;
        let (list, prev, caps) = match cached {
            Some(entry) => {
                match NetworkConfigList::from_list_value(entry.config.clone(), "cni cache") {
                    Ok(list) => {
                        let prev = (list.version() >= Version(0, 4, 0)).then_some(entry.result);
                        (list, prev, entry.capability_args)
                    }
                    Err(e) => {
                        tracing::warn!(network, error = %e, "cached cni config unusable, using current config");
                        match current.filter(|c| c.name == network) {
                            Some(c) => (c.clone(), None, rt.capability_args.clone()),
                            None => return self.remove_cache(network, rt).await,
                        }
                    }
                }
            }
            None => match current.filter(|c| c.name == network) {
                Some(c) => (c.clone(), None, rt.capability_args.clone()),
                None => {
                    tracing::warn!(
                        network,
                        container_id = %rt.container_id,
                        "no cached cni result and no config for this network; nothing to delete"
                    );
                    return Ok(());
                }
            },
        };
        let rt = RuntimeConf {
            capability_args: caps,
            ..rt.clone()
        };
        for plugin in list.plugins.iter().rev() {
            let stdin = plugin_stdin(&list, plugin, prev.as_ref(), &rt.capability_args);
            match self
                .exec
                .run(
                    &list.name,
                    &plugin.plugin_type,
                    CniCommand::Del,
                    Some(&rt),
                    &to_bytes(&stdin),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_gone() => {
                    tracing::info!(network, plugin = %plugin.plugin_type, error = %e, "cni DEL: already gone");
                }
                Err(e) => return Err(e),
            }
        }
        self.remove_cache(network, &rt).await
    }

    /// CHECK of network `network` against the cached ADD (config, args and result). Needs
    /// version ≥ 0.4.0 and a cache entry; a list with `disableCheck` passes without running.
    pub async fn check_list(&self, network: &str, rt: &RuntimeConf) -> Result<(), CniError> {
        rt.validate()?;
        let Some(entry) = self.read_cache(network, rt).await? else {
            return Err(CniError::NoCachedResult {
                network: network.to_string(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
            });
        };
        let list = NetworkConfigList::from_list_value(entry.config.clone(), "cni cache")?;
        if list.version() < Version(0, 4, 0) {
            return Err(CniError::UnsupportedCommand {
                network: list.name,
                version: list.cni_version,
                command: "CHECK",
            });
        }
        if list.disable_check {
            return Ok(());
        }
        let rt = RuntimeConf {
            capability_args: entry.capability_args.clone(),
            ..rt.clone()
        };
        for plugin in &list.plugins {
            let stdin = plugin_stdin(&list, plugin, Some(&entry.result), &rt.capability_args);
            self.exec
                .run(
                    &list.name,
                    &plugin.plugin_type,
                    CniCommand::Check,
                    Some(&rt),
                    &to_bytes(&stdin),
                )
                .await?;
        }
        Ok(())
    }

    /// Sets up a pod's network in its (already pinned) netns: the loopback network on `lo` (if
    /// enabled), then the current network on `eth0`. On failure everything attempted is torn
    /// down again and the error carries both the original failure and any cleanup failure.
    pub async fn setup_pod(&self, pod: &PodNetwork) -> Result<PodNetworkStatus, CniError> {
        let caps = pod.capability_args();
        let main_rt = pod.runtime_conf(DEFAULT_IFNAME, caps, true);
        main_rt.validate()?;
        let list = {
            let this = self.clone();
            blocking(move || this.load_network()).await?
        };
        if self.opts.loopback {
            let lo = NetworkConfigList::loopback();
            let lo_rt = pod.runtime_conf("lo", CapabilityArgs::default(), true);
            if let Err(e) = self.add_list(&lo, &lo_rt).await {
                let cleanup = self
                    .del_list(LOOPBACK_NETWORK, Some(&lo), &lo_rt)
                    .await
                    .err();
                return Err(setup_failed(e, cleanup));
            }
        }
        let outcome = match self.add_list(&list, &main_rt).await {
            Ok(result) => CniResult::from_value(&result)
                .map(|r| (r.sandbox_ips(DEFAULT_IFNAME), result))
                .map_err(|reason| CniError::InvalidResult {
                    plugin: list.name.clone(),
                    command: "ADD",
                    reason,
                }),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((ips, result)) => Ok(PodNetworkStatus {
                network: list.name,
                ifname: DEFAULT_IFNAME.into(),
                ips,
                result,
            }),
            Err(e) => {
                let cleanup = self.teardown_with(pod, Some(&list)).await.err();
                Err(setup_failed(e, cleanup))
            }
        }
    }

    /// CHECK of a pod's networks (loopback and main) against what ADD cached.
    pub async fn check_pod(&self, pod: &PodNetwork) -> Result<(), CniError> {
        let rt = pod.runtime_conf(DEFAULT_IFNAME, pod.capability_args(), true);
        let networks = self.cached_networks(&rt).await?;
        if networks.is_empty() {
            return Err(CniError::NoCachedResult {
                network: "*".into(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
            });
        }
        for network in networks {
            self.check_list(&network, &rt).await?;
        }
        if self.opts.loopback {
            let lo_rt = pod.runtime_conf("lo", CapabilityArgs::default(), true);
            self.check_list(LOOPBACK_NETWORK, &lo_rt).await?;
        }
        Ok(())
    }

    /// Tears a pod's network down; idempotent (a second call, or a call after a restart, is
    /// fine). Every network the pod has a cache entry for is deleted (so a renamed or replaced
    /// config does not strand the old attachment); with no entry the current network runs
    /// without `prevResult`. When the netns is gone, `CNI_NETNS` is empty (containerd).
    /// Loopback is deleted last; all deletions are attempted and the first error is returned.
    pub async fn teardown_pod(&self, pod: &PodNetwork) -> Result<(), CniError> {
        let current = {
            let this = self.clone();
            blocking(move || this.load_network()).await.ok()
        };
        self.teardown_with(pod, current.as_ref()).await
    }

    async fn teardown_with(
        &self,
        pod: &PodNetwork,
        current: Option<&NetworkConfigList>,
    ) -> Result<(), CniError> {
        let alive = {
            let p = pod.netns.clone();
            blocking(move || netns::is_pinned(&p)).await
        };
        let rt = pod.runtime_conf(DEFAULT_IFNAME, pod.capability_args(), alive);
        rt.validate()?;
        let mut networks = self.cached_networks(&rt).await?;
        if networks.is_empty()
            && let Some(c) = current
        {
            networks.push(c.name.clone());
        }
        let mut first_err = None;
        for network in networks {
            if let Err(e) = self.del_list(&network, current, &rt).await {
                tracing::warn!(network = %network, container_id = %rt.container_id, error = %e, "cni DEL failed");
                first_err.get_or_insert(e);
            }
        }
        if self.opts.loopback {
            let lo = NetworkConfigList::loopback();
            let lo_rt = pod.runtime_conf("lo", CapabilityArgs::default(), alive);
            if let Err(e) = self.del_list(LOOPBACK_NETWORK, Some(&lo), &lo_rt).await {
                tracing::warn!(container_id = %rt.container_id, error = %e, "cni loopback DEL failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Names of the non-loopback networks with a cache entry for `rt`'s container/interface.
    async fn cached_networks(&self, rt: &RuntimeConf) -> Result<Vec<String>, CniError> {
        let dir = self.cache.dir().to_path_buf();
        let file = format!("{}-{}.json", rt.container_id, rt.ifname);
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
                Err(source) => return Err(CniError::Cache { path: dir, source }),
            };
            let mut names = vec![];
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name != LOOPBACK_NETWORK && entry.path().join(&file).is_file() {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn read_cache(
        &self,
        network: &str,
        rt: &RuntimeConf,
    ) -> Result<Option<CacheEntry>, CniError> {
        let cache = self.cache.clone();
        let (n, c, i) = (
            network.to_string(),
            rt.container_id.clone(),
            rt.ifname.clone(),
        );
        blocking(move || cache.read(&n, &c, &i)).await
    }

    async fn remove_cache(&self, network: &str, rt: &RuntimeConf) -> Result<(), CniError> {
        let cache = self.cache.clone();
        let (n, c, i) = (
            network.to_string(),
            rt.container_id.clone(),
            rt.ifname.clone(),
        );
        blocking(move || cache.remove(&n, &c, &i)).await
    }
}

fn setup_failed(source: CniError, cleanup: Option<CniError>) -> CniError {
    CniError::SetupFailed {
        source: Box::new(source),
        cleanup: cleanup.map(Box::new),
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // serializing a Value cannot fail (map keys are strings)
    serde_json::to_vec(v).unwrap_or_default()
}

/// Runs blocking file-system work off the async runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking cni task cancelled: {e}"),
    }
}

/// The default plugin directories: `/opt/cni/bin` (upstream) then `/usr/lib/cni` (Debian).
pub fn default_bin_dirs() -> Vec<PathBuf> {
    vec![
        Path::new("/opt/cni/bin").into(),
        Path::new("/usr/lib/cni").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::FakePlugins;

    struct Env {
        f: FakePlugins,
        cni: Cni,
    }

    fn env(conflist: &str) -> Env {
        let f = FakePlugins::new();
        let conf = f.dir.path().join("net.d");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(conf.join("10-test.conflist"), conflist).expect("write conf");
        let mut opts = CniOptions::new(conf, vec![f.bin()], f.dir.path().join("cache"));
        opts.loopback = false;
        opts.plugin_timeout = Duration::from_secs(10);
        Env {
            cni: Cni::new(opts),
            f,
        }
    }

    const CHAIN: &str = r#"{"cniVersion":"1.0.0","name":"chain","plugins":[
        {"type":"p1"},
        {"type":"p2","capabilities":{"portMappings":true}}
    ]}"#;

    fn pod() -> PodNetwork {
        PodNetwork {
            sandbox_id: "sb1".into(),
            netns: "/nonexistent/netns/sb1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "uid-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..PodNetwork::default()
        }
    }

    fn commands(f: &FakePlugins) -> Vec<String> {
        f.calls()
            .iter()
            .map(|c| c.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn add_chains_caches_and_del_replays_in_reverse() {
        let e = env(CHAIN);
        e.f.add_ok("p1", "10.9.0.5");
        e.f.add_ok("p2", "10.9.0.6");
        let st = e.cni.setup_pod(&pod()).await.expect("setup");
        assert_eq!(st.network, "chain");
        assert_eq!(st.ips, vec!["10.9.0.6".parse::<IpAddr>().expect("ip")]);
        assert_eq!(st.result["dns"]["domain"], "p2");
        let p1_in = e.f.stdin("ADD", "p1");
        assert!(p1_in.get("prevResult").is_none());
        assert!(
            p1_in.get("runtimeConfig").is_none(),
            "p1 declares no capability"
        );
        assert_eq!(
            (p1_in["name"].as_str(), p1_in["cniVersion"].as_str()),
            (Some("chain"), Some("1.0.0"))
        );
        let p2_in = e.f.stdin("ADD", "p2");
        assert_eq!(p2_in["prevResult"]["dns"]["domain"], "p1");
        assert_eq!(p2_in["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        let cached = e
            .cni
            .cache()
            .read("chain", "sb1", "eth0")
            .expect("read")
            .expect("cached");
        assert_eq!(cached.result, st.result);
        assert!(e.f.dir.path().join("cache/chain/sb1-eth0.json").is_file());

        // CHECK runs in order with the cached result
        e.cni.check_pod(&pod()).await.expect("check");
        assert_eq!(
            e.f.stdin("CHECK", "p1")["prevResult"]["dns"]["domain"],
            "p2"
        );

        // the config changes (renamed network, other plugins) before the pod goes away
        std::fs::write(
            e.cni.options().conf_dir.join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"p3"}]}"#,
        )
        .expect("rewrite conf");
        e.f.add_ok("p3", "10.9.0.7");
        let mut gone_pod = pod();
        gone_pod.port_mappings.clear();
        e.cni.teardown_pod(&gone_pod).await.expect("teardown");
        assert_eq!(
            commands(&e.f),
            [
                "ADD p1", "ADD p2", "CHECK p1", "CHECK p2", "DEL p2", "DEL p1"
            ]
        );
        // the cached result and the cached capability args were used
        let p1_del = e.f.stdin("DEL", "p1");
        assert_eq!(p1_del["prevResult"]["dns"]["domain"], "p2");
        assert_eq!(
            e.f.stdin("DEL", "p2")["runtimeConfig"]["portMappings"][0]["containerPort"],
            80
        );
        // the netns path does not exist: CNI_NETNS is empty
        assert!(
            e.f.calls()[4].contains(" netns= eth0 "),
            "{}",
            e.f.calls()[4]
        );
        assert!(!e.f.dir.path().join("cache/chain/sb1-eth0.json").exists());

        // DEL twice: no cache, so the current network runs without prevResult
        e.cni.teardown_pod(&gone_pod).await.expect("teardown twice");
        assert_eq!(commands(&e.f)[6..], ["DEL p3"]);
        assert!(e.f.stdin("DEL", "p3").get("prevResult").is_none());
    }

    #[tokio::test]
    async fn del_tolerates_gone_and_keeps_cache_on_real_failures() {
        let e = env(CHAIN);
        e.f.add_ok("p1", "10.9.0.5");
        e.f.add_ok("p2", "10.9.0.6");
        e.cni.setup_pod(&pod()).await.expect("setup");
        e.f.add(
            "p2",
            r#"[ "$CNI_COMMAND" = DEL ] && { printf '{"code":5,"msg":"iptables: resource busy"}'; exit 1; }"#,
        );
        let err = e.cni.teardown_pod(&pod()).await.expect_err("p2 fails");
        assert!(err.to_string().contains("resource busy"), "{err}");
        assert!(
            e.f.dir.path().join("cache/chain/sb1-eth0.json").exists(),
            "cache kept for retry"
        );
        // now p2 reports its object gone: p1 still runs and the cache goes
        e.f.add(
            "p2",
            r#"[ "$CNI_COMMAND" = DEL ] && { printf '{"code":7,"msg":"link not found"}'; exit 1; }"#,
        );
        e.cni.teardown_pod(&pod()).await.expect("gone is fine");
        assert_eq!(commands(&e.f)[2..], ["DEL p2", "DEL p2", "DEL p1"]);
        assert!(!e.f.dir.path().join("cache/chain/sb1-eth0.json").exists());
    }

    #[tokio::test]
    async fn failed_setup_rolls_back() {
        let e = env(CHAIN);
        e.f.add_ok("p1", "10.9.0.5");
        e.f.add(
            "p2",
            r#"[ "$CNI_COMMAND" = ADD ] && { printf '{"code":7,"msg":"bad config"}'; exit 1; }"#,
        );
        let err = e.cni.setup_pod(&pod()).await.expect_err("fails");
        assert!(
            matches!(&err, CniError::SetupFailed { cleanup: None, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("bad config"), "{err}");
        // no cache was written, so DEL ran the current list without prevResult
        assert_eq!(commands(&e.f), ["ADD p1", "ADD p2", "DEL p2", "DEL p1"]);
        assert!(e.f.stdin("DEL", "p1").get("prevResult").is_none());
        assert!(
            e.cni
                .cache()
                .read("chain", "sb1", "eth0")
                .expect("read")
                .is_none()
        );
    }

    #[tokio::test]
    async fn check_rules() {
        let e = env(CHAIN);
        e.f.add_ok("p1", "10.9.0.5");
        e.f.add_ok("p2", "10.9.0.6");
        let err = e.cni.check_pod(&pod()).await.expect_err("nothing cached");
        assert!(matches!(err, CniError::NoCachedResult { .. }), "{err}");

        let old = NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"0.3.1","name":"old","plugins":[{"type":"p1"}]}"#,
            "t",
        )
        .expect("valid");
        let rt = pod().runtime_conf("eth0", CapabilityArgs::default(), false);
        e.cni.add_list(&old, &rt).await.expect("add");
        let err = e
            .cni
            .check_list("old", &rt)
            .await
            .expect_err("0.3.1 has no CHECK");
        assert!(matches!(err, CniError::UnsupportedCommand { .. }), "{err}");
        // DEL below 0.4.0 gets no prevResult even with a cache entry
        e.cni.del_list("old", None, &rt).await.expect("del");
        assert!(e.f.stdin("DEL", "p1").get("prevResult").is_none());

        let nocheck = NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"nocheck","disableCheck":true,"plugins":[{"type":"p1"}]}"#,
            "t",
        )
        .expect("valid");
        e.cni.add_list(&nocheck, &rt).await.expect("add");
        e.cni
            .check_list("nocheck", &rt)
            .await
            .expect("check disabled");
        assert!(!commands(&e.f).contains(&"CHECK p1".to_string()));
    }

    #[tokio::test]
    async fn readiness_and_status_command() {
        let e = env(CHAIN);
        let nr = e.cni.status().expect_err("no binaries");
        assert_eq!(nr.reason, "NetworkPluginNotReady");
        assert!(nr.message.contains("\"p1\" not found"), "{}", nr.message);
        e.f.add_ok("p1", "10.9.0.5");
        e.f.add_ok("p2", "10.9.0.6");
        e.cni.status().expect("ready");
        // loopback on: its binary is needed too
        let mut opts = e.cni.options().clone();
        opts.loopback = true;
        let with_lo = Cni::new(opts);
        assert!(
            with_lo
                .status()
                .expect_err("no loopback")
                .message
                .contains("loopback")
        );

        // 1.0.0 has no STATUS: nothing runs
        e.cni.plugin_status().await.expect("status");
        assert!(e.f.calls().is_empty());
        std::fs::write(
            e.cni.options().conf_dir.join("10-test.conflist"),
            r#"{"cniVersion":"1.1.0","name":"chain","plugins":[{"type":"p1"},{"type":"p2"}]}"#,
        )
        .expect("rewrite");
        e.cni.plugin_status().await.expect("status");
        assert_eq!(commands(&e.f), ["STATUS p1", "STATUS p2"]);
        e.f.add(
            "p2",
            r#"printf '{"code":50,"msg":"no ipam leases left"}'; exit 1"#,
        );
        let err = e.cni.plugin_status().await.expect_err("not available");
        assert_eq!(
            unicri_sandbox::Classify::kind(&err),
            unicri_sandbox::ErrorKind::Unavailable
        );

        std::fs::remove_file(e.cni.options().conf_dir.join("10-test.conflist")).expect("rm");
        let nr = e.cni.status().expect_err("no config");
        assert!(
            nr.message.starts_with("cni config uninitialized"),
            "{}",
            nr.message
        );
        std::fs::write(e.cni.options().conf_dir.join("10-test.conf"), "{").expect("write");
        let nr = e.cni.status().expect_err("bad config");
        assert!(
            nr.message.starts_with("cni config invalid"),
            "{}",
            nr.message
        );
        // with no config and no cache, teardown has nothing to run and succeeds
        e.cni
            .teardown_pod(&pod())
            .await
            .expect("teardown without config");
    }

    #[tokio::test]
    async fn pod_status_ip_selection() {
        let st = PodNetworkStatus {
            network: "n".into(),
            ifname: "eth0".into(),
            ips: vec![
                "fd00::5".parse().expect("ip"),
                "10.0.0.5".parse().expect("ip"),
            ],
            result: Value::Null,
        };
        assert_eq!(st.primary_ip(), Some("10.0.0.5".parse().expect("ip")));
        assert_eq!(
            st.additional_ips(),
            vec!["fd00::5".parse::<IpAddr>().expect("ip")]
        );
    }
}
