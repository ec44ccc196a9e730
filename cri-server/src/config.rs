//! The daemon's configuration: one TOML file in containerd's spirit. Every key has a default, and
//! an unknown key is an error that names it (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default config file; optional.
pub const DEFAULT_CONFIG: &str = "/etc/unicri/config.toml";
/// Default persistent root (SQLite, images).
pub const DEFAULT_ROOT: &str = "/var/lib/unicri";
/// Default volatile state dir (socket, pinned namespaces).
pub const DEFAULT_STATE: &str = "/run/unicri";
/// Default CRI socket.
pub const DEFAULT_ADDRESS: &str = "/run/unicri/unicri.sock";
/// Default registry hosts dir (`<host>/hosts.toml`, containerd's format).
pub const DEFAULT_REGISTRY_CONFIG_PATH: &str = "/etc/unicri/certs.d";

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent root: `state.db`, `images/`.
    pub root: PathBuf,
    /// Volatile state: socket, per-pod runtime files.
    pub state: PathBuf,
    /// gRPC endpoint.
    pub grpc: GrpcConfig,
    /// Image pulls.
    pub registry: RegistryConfig,
    /// Pod networking.
    pub cni: CniConfig,
    /// The streaming server (exec, attach, port-forward).
    pub streaming: StreamingConfig,
    /// Runtime handlers by name (the CRI `runtime_handler` / RuntimeClass handler).
    pub runtimes: BTreeMap<String, RuntimeConfig>,
}

/// `[grpc]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Unix socket path.
    pub address: PathBuf,
    /// Largest gRPC message accepted or sent, bytes.
    pub max_recv_message_size: usize,
}

/// `[registry]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Directory of `<host>/hosts.toml` files (containerd's format): mirrors, plain HTTP,
    /// `skip_verify`, `ca`. A missing directory means no per-host configuration.
    pub config_path: PathBuf,
    /// Optional docker `config.json`-style credentials file (`{"auths": {...}}`).
    pub credentials_file: Option<PathBuf>,
    /// Layer downloads in flight per pull.
    pub max_concurrent_downloads: usize,
}

/// `[streaming]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// `ip:port` the streaming server listens on (port 0: any free port). The URLs handed to
    /// clients name this address.
    pub address: String,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PKCS#8 PEM).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".into(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// `[cni]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory holding `*.conflist` / `*.conf`; the first in lexical order is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// A conflist template (containerd's `conf_template`): when kubelet sends the node's pod
    /// CIDR (UpdateRuntimeConfig), `{{.PodCIDR}}` is replaced with its first range and
    /// `{{.PodCIDRRanges}}` with all of them (comma-separated), and the result is written to
    /// `<conf_dir>/00-unicri-podcidr.conflist`, which sorts first and so is used.
    pub conf_template: Option<PathBuf>,
}

/// The backend families a runtime handler can use.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Namespaces + cgroups through libcontainer.
    #[default]
    Linux,
    /// A kernel of its own per pod.
    Vm,
    /// WebAssembly on wasmtime.
    Wasm,
}

/// `[runtimes.<handler>]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Which backend serves pods of this handler.
    pub backend: Backend,
    /// `vm` only: the guest engine (default: `kvm` where /dev/kvm is hardware KVM and a guest
    /// kernel is built, else `uml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<VmEngine>,
    /// `vm` only: the guest kernel — for `uml` the user-mode-Linux `linux` executable, for
    /// `kvm` a `vmlinux` (default: the newest build of `scripts/build-guest-kernel [uml]` in
    /// `/var/cache/unicri/{uml,guest}-kernel/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// `vm` only: the guest agent binary (default: `unicri-vm-agent` next to `unicri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<PathBuf>,
    /// `vm` only: guest memory in MiB for a pod that sets no memory limit (default 256); a
    /// pod's limits plus overhead size it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// `vm` only: vCPUs for a pod that sets no CPU limit (default 1; `uml` has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
}

/// The guest engines of the `vm` backend.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VmEngine {
    /// A user-mode-Linux kernel process per pod.
    Uml,
    /// A KVM microVM on `unicri-vmm` per pod.
    Kvm,
}

impl Default for Config {
    fn default() -> Self {
        let mut runtimes = BTreeMap::new();
        for (name, backend) in [
            ("linux", Backend::Linux),
            ("runc", Backend::Linux),
            ("wasm", Backend::Wasm),
            ("vm", Backend::Vm),
        ] {
            runtimes.insert(
                name.to_string(),
                RuntimeConfig {
                    backend,
                    ..RuntimeConfig::default()
                },
            );
        }
        Self {
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            grpc: GrpcConfig::default(),
            registry: RegistryConfig::default(),
            cni: CniConfig::default(),
            streaming: StreamingConfig::default(),
            runtimes,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            address: PathBuf::from(DEFAULT_ADDRESS),
            max_recv_message_size: 16 * 1024 * 1024,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: PathBuf::from(DEFAULT_REGISTRY_CONFIG_PATH),
            credentials_file: None,
            max_concurrent_downloads: 3,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            conf_template: None,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, wrong type or unknown key (the message names the key).
    #[error("parse config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The TOML error, naming the offending key.
        message: String,
    },
    /// Semantically invalid value.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a config text. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`. A missing file gives the defaults only when `required` is false (the
    /// default path); an explicitly given file must exist.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Checks values that TOML types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (what, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be an absolute path, got {}",
                    p.display()
                )));
            }
        }
        if self
            .streaming
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "streaming.address must be ip:port, got {:?}",
                self.streaming.address
            )));
        }
        if self.streaming.tls_cert_file.is_some() != self.streaming.tls_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "streaming.tls_cert_file and streaming.tls_key_file go together".into(),
            ));
        }
        if self.registry.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "registry.max_concurrent_downloads must be at least 1".into(),
            ));
        }
        for name in self.runtimes.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(ConfigError::Invalid(format!(
                    "runtime handler name {name:?} is not a DNS-label-like name"
                )));
            }
        }
        Ok(())
    }

    /// The backend for a CRI runtime handler; the empty handler means `linux`.
    pub fn backend_for(&self, handler: &str) -> Option<Backend> {
        if handler.is_empty() {
            return Some(
                self.runtimes
                    .get("linux")
                    .map_or(Backend::Linux, |r| r.backend),
            );
        }
        self.runtimes.get(handler).map(|r| r.backend)
    }

    /// The `[runtimes.<handler>]` table of a handler.
    pub fn runtime(&self, handler: &str) -> Option<&RuntimeConfig> {
        self.runtimes
            .get(if handler.is_empty() { "linux" } else { handler })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.grpc.address, PathBuf::from(DEFAULT_ADDRESS));
        assert_eq!(c.backend_for(""), Some(Backend::Linux));
        assert_eq!(c.backend_for("runc"), Some(Backend::Linux));
        assert_eq!(c.backend_for("vm"), Some(Backend::Vm));
        assert_eq!(c.backend_for("nope"), None);
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
root = "/srv/unicri"
state = "/run/u"
[grpc]
address = "/run/u/u.sock"
[registry]
config_path = "/etc/u/certs.d"
credentials_file = "/etc/u/auth.json"
[cni]
conf_dir = "/etc/cni/net.d"
bin_dirs = ["/usr/lib/cni"]
[runtimes.kata]
backend = "vm"
engine = "uml"
mem_mib = 128
[runtimes.spin]
backend = "wasm"
"#,
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/unicri"));
        assert_eq!(c.backend_for("kata"), Some(Backend::Vm));
        assert_eq!(
            c.runtime("kata").and_then(|r| r.engine),
            Some(VmEngine::Uml)
        );
        assert_eq!(c.runtime("kata").and_then(|r| r.mem_mib), Some(128));
        assert_eq!(c.backend_for("spin"), Some(Backend::Wasm));
        assert_eq!(
            c.registry.credentials_file,
            Some(PathBuf::from("/etc/u/auth.json"))
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[registry]\nmirrorz = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("mirrorz"), "{e}");
        let e = Config::parse("rooot = \"/x\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("rooot"), "{e}");
        let e =
            Config::parse("[runtimes.x]\nbackend = \"bsd\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("bsd"), "{e}");
    }

    #[test]
    fn relative_paths_and_bad_values_are_refused() {
        assert!(Config::parse("root = \"rel\"\n", Path::new("c")).is_err());
        assert!(
            Config::parse("[registry]\nmax_concurrent_downloads = 0\n", Path::new("c")).is_err()
        );
    }

    #[test]
    fn missing_default_file_is_ok_missing_explicit_file_is_not() {
        let p = Path::new("/nonexistent/unicri/config.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).is_err());
    }
}
