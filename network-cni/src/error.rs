//! The crate's error type: one variant per failed operation, each mapped to one [`ErrorKind`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use unicri_sandbox::{Classify, ErrorKind};

/// The CNI error object a plugin prints on stdout when it fails (CNI spec, "Error").
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    /// The spec's error code (1–99 well-known, ≥ 100 plugin-specific); 0 when the plugin gave none.
    #[serde(default)]
    pub code: u32,
    /// Short message.
    #[serde(default)]
    pub msg: String,
    /// Longer explanation, may be empty.
    #[serde(default)]
    pub details: String,
}

impl PluginError {
    /// Well-known code 11: "try again later".
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Well-known code 50: the plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Well-known code 51: limited connectivity (STATUS).
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// Parses a plugin's output after a failed run: the CNI error JSON when it is one, otherwise
    /// the trimmed text of stdout (or stderr when stdout is empty) as the message.
    pub fn from_output(stdout: &[u8], stderr: &[u8]) -> Self {
        if let Ok(e) = serde_json::from_slice::<PluginError>(stdout)
            && (e.code != 0 || !e.msg.is_empty())
        {
            return e;
        }
        let text = if stdout.iter().all(u8::is_ascii_whitespace) {
            stderr
        } else {
            stdout
        };
        let msg = String::from_utf8_lossy(text).trim().to_string();
        PluginError {
            code: 0,
            msg: if msg.is_empty() {
                "plugin failed without output".to_string()
            } else {
                msg
            },
            details: String::new(),
        }
    }

    /// The spec's name of a well-known code, if it is one.
    pub fn code_name(&self) -> Option<&'static str> {
        Some(match self.code {
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            11 => "try again later",
            50 => "plugin not available",
            51 => "plugin limited connectivity",
            _ => return None,
        })
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code != 0 {
            write!(f, "code {}", self.code)?;
            if let Some(name) = self.code_name() {
                write!(f, " ({name})")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

/// Errors of the network crate.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No network configuration file in the configuration directory.
    #[error("no network config found in {dir}")]
    NoConfig { dir: PathBuf },
    /// The configuration directory could not be read.
    #[error("read cni config dir {dir}: {source}")]
    ReadConfigDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A configuration file could not be read.
    #[error("read cni config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration file is not valid.
    #[error("invalid cni config {origin}: {reason}")]
    InvalidConfig { origin: String, reason: String },
    /// A plugin binary named by the configuration is in none of the binary directories.
    #[error("cni plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// The caller passed an invalid argument (container id, interface name, CNI_ARGS value).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The configuration's CNI version does not support the command.
    #[error("cni version {version} of network {network} does not support {command}")]
    UnsupportedCommand {
        network: String,
        version: String,
        command: &'static str,
    },
    /// A plugin could not be started.
    #[error("spawn cni plugin {plugin} for {command}: {source}")]
    SpawnPlugin {
        plugin: PathBuf,
        command: &'static str,
        source: std::io::Error,
    },
    /// A plugin did not finish in time and was killed.
    #[error("cni plugin {plugin} {command} timed out after {timeout:?} (killed)")]
    PluginTimeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    /// A plugin exited with a failure.
    #[error("cni plugin {plugin} {command} failed (network {network}): {error}")]
    PluginFailed {
        network: String,
        plugin: String,
        command: &'static str,
        error: PluginError,
    },
    /// A plugin succeeded but printed something that is not a CNI result.
    #[error("cni plugin {plugin} {command} printed an invalid result: {reason}")]
    InvalidResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    /// The result cache could not be read or written.
    #[error("cni result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// CHECK needs the result of a previous ADD and there is none.
    #[error(
        "no cached cni result for network {network} container {container_id} ({ifname}); ADD first"
    )]
    NoCachedResult {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// Creating a network namespace failed.
    #[error("create network namespace {path}: {op}: {source}")]
    CreateNetNs {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The pin file already holds a network namespace.
    #[error("network namespace {path} already exists")]
    NetNsExists { path: PathBuf },
    /// Opening a pinned network namespace failed.
    #[error("open network namespace {path}: {source}")]
    OpenNetNs {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a pinned network namespace")]
    NotNetNs { path: PathBuf },
    /// Removing a pinned network namespace failed.
    #[error("remove network namespace {path}: {op}: {source}")]
    RemoveNetNs {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// Entering a network namespace (setns) on a helper thread failed.
    #[error("enter network namespace {path}: {source}")]
    EnterNetNs {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Preparing the directory that holds pin files failed.
    #[error("prepare netns pin dir {dir}: {op}: {source}")]
    PreparePinDir {
        dir: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// Setting a pod's network up failed; cleanup ran and may have failed too.
    #[error("{source}{}", cleanup.as_ref().map(|c| format!(" (cleanup also failed: {c})")).unwrap_or_default())]
    SetupFailed {
        #[source]
        source: Box<CniError>,
        cleanup: Option<Box<CniError>>,
    },
}

impl CniError {
    /// True when the error means "the thing to delete is already gone": a DEL that fails this way
    /// counts as done (go-cni's `Remove` tolerates the same two phrases).
    pub fn is_gone(&self) -> bool {
        match self {
            CniError::PluginFailed { error, .. } => {
                let text = format!("{} {}", error.msg, error.details).to_ascii_lowercase();
                text.contains("no such file or directory") || text.contains("not found")
            }
            _ => false,
        }
    }
}

impl Classify for CniError {
    fn kind(&self) -> ErrorKind {
        match self {
            CniError::NoConfig { .. }
            | CniError::InvalidConfig { .. }
            | CniError::PluginNotFound { .. }
            | CniError::UnsupportedCommand { .. }
            | CniError::NoCachedResult { .. } => ErrorKind::FailedPrecondition,
            CniError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            CniError::PluginTimeout { .. } => ErrorKind::DeadlineExceeded,
            CniError::PluginFailed { error, .. } => match error.code {
                PluginError::TRY_AGAIN_LATER
                | PluginError::NOT_AVAILABLE
                | PluginError::LIMITED_CONNECTIVITY => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            CniError::NetNsExists { .. } => ErrorKind::AlreadyExists,
            CniError::NotNetNs { .. } => ErrorKind::NotFound,
            CniError::OpenNetNs { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            CniError::SetupFailed { source, .. } => source.kind(),
            CniError::ReadConfigDir { .. }
            | CniError::ReadConfig { .. }
            | CniError::SpawnPlugin { .. }
            | CniError::InvalidResult { .. }
            | CniError::Cache { .. }
            | CniError::CreateNetNs { .. }
            | CniError::OpenNetNs { .. }
            | CniError::RemoveNetNs { .. }
            | CniError::EnterNetNs { .. }
            | CniError::PreparePinDir { .. } => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cni_error_json() {
        let e = PluginError::from_output(
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/33"}"#,
            b"",
        );
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "bad subnet");
        assert_eq!(
            e.to_string(),
            "code 7 (invalid network config): bad subnet; 10.0.0.0/33"
        );
    }

    #[test]
    fn falls_back_to_text_output() {
        let e = PluginError::from_output(b"  \n", b"panic: boom\n");
        assert_eq!(e.code, 0);
        assert_eq!(e.msg, "panic: boom");
        assert_eq!(e.to_string(), "panic: boom");
        let e = PluginError::from_output(b"not json", b"");
        assert_eq!(e.msg, "not json");
        let e = PluginError::from_output(b"", b"");
        assert_eq!(e.msg, "plugin failed without output");
        // JSON that is not an error object is shown as text
        let e = PluginError::from_output(br#"{"foo":1}"#, b"");
        assert_eq!(e.msg, r#"{"foo":1}"#);
    }

    #[test]
    fn classifies_plugin_errors() {
        let failed = |code| CniError::PluginFailed {
            network: "n".into(),
            plugin: "bridge".into(),
            command: "ADD",
            error: PluginError {
                code,
                msg: "x".into(),
                details: String::new(),
            },
        };
        assert_eq!(failed(11).kind(), ErrorKind::Unavailable);
        assert_eq!(failed(7).kind(), ErrorKind::Internal);
        let gone = CniError::PluginFailed {
            network: "n".into(),
            plugin: "loopback".into(),
            command: "DEL",
            error: PluginError {
                code: 0,
                msg: "failed to Statfs \"/x\": no such file or directory".into(),
                details: String::new(),
            },
        };
        assert!(gone.is_gone());
        assert!(!failed(7).is_gone());
    }
}
