//! Running one plugin binary: lookup in the binary directories, the CNI environment, stdin,
//! a deadline, and turning the outcome into bytes or a [`CniError`].
//!
//! A plugin runs in its own process group so that on expiry of the deadline the plugin and
//! anything it started (`iptables`, `ip`, ...) are killed together.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{CniError, PluginError};
use crate::runtime::RuntimeConf;

/// The CNI operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach the container to the network.
    Add,
    /// Detach it; must be idempotent.
    Del,
    /// Verify the attachment (spec ≥ 0.4.0).
    Check,
    /// Ask whether the plugin is ready for ADDs (spec ≥ 1.1.0).
    Status,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
        }
    }
}

/// Finds and runs plugin binaries.
#[derive(Clone, Debug)]
pub struct PluginExec {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

impl PluginExec {
    /// Plugins are looked up in `bin_dirs` in order; each run may take at most `timeout`.
    pub fn new(bin_dirs: Vec<PathBuf>, timeout: Duration) -> Self {
        PluginExec { bin_dirs, timeout }
    }

    /// The binary directories.
    pub fn bin_dirs(&self) -> &[PathBuf] {
        &self.bin_dirs
    }

    /// The first executable regular file named `plugin_type` in the binary directories.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        if !plugin_type.contains('/') {
            for dir in &self.bin_dirs {
                let path = dir.join(plugin_type);
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.is_file()
                    && meta.permissions().mode() & 0o111 != 0
                {
                    return Ok(path);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin_type.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// `CNI_PATH`: the binary directories joined by `:`.
    pub fn cni_path(&self) -> OsString {
        let mut out = OsString::new();
        for (i, d) in self.bin_dirs.iter().enumerate() {
            if i > 0 {
                out.push(":");
            }
            out.push(d.as_os_str());
        }
        out
    }

    /// Runs plugin `plugin_type` with `command`, the runtime parameters (`None` for STATUS, which
    /// gets only `CNI_COMMAND` and `CNI_PATH`) and `stdin`; returns its stdout on success.
    pub async fn run(
        &self,
        network: &str,
        plugin_type: &str,
        command: CniCommand,
        rt: Option<&RuntimeConf>,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let path = self.find(plugin_type)?;
        let mut cmd = Command::new(&path);
        // the daemon's own CNI_* variables (if any) must not leak into the invocation
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_PATH", self.cni_path());
        if let Some(rt) = rt {
            cmd.env("CNI_CONTAINERID", &rt.container_id)
                .env(
                    "CNI_NETNS",
                    rt.netns.as_deref().unwrap_or(Path::new("")).as_os_str(),
                )
                .env("CNI_IFNAME", &rt.ifname)
                .env("CNI_ARGS", rt.cni_args());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0)
            .kill_on_drop(true);

        let mut child = spawn_retrying(&mut cmd)
            .await
            .map_err(|source| CniError::SpawnPlugin {
                plugin: path.clone(),
                command: command.as_str(),
                source,
            })?;
        let pgid = child.id();
        let mut child_stdin = child.stdin.take();
        let io = async {
            let write = async {
                if let Some(mut s) = child_stdin.take() {
                    // a plugin may exit without reading stdin (EPIPE): its exit status decides
                    let _ = s.write_all(stdin).await;
                    let _ = s.shutdown().await;
                }
            };
            let (_, out) = tokio::join!(write, child.wait_with_output());
            out
        };
        let output = match tokio::time::timeout(self.timeout, io).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(CniError::SpawnPlugin {
                    plugin: path,
                    command: command.as_str(),
                    source,
                });
            }
            Err(_) => {
                // the child itself is killed on drop; this also takes its helpers down
                if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                tracing::warn!(
                    network,
                    plugin = plugin_type,
                    command = command.as_str(),
                    timeout_ms = self.timeout.as_millis() as u64,
                    "cni plugin timed out, killed"
                );
                return Err(CniError::PluginTimeout {
                    plugin: plugin_type.to_string(),
                    command: command.as_str(),
                    timeout: self.timeout,
                });
            }
        };
        if output.status.success() {
            tracing::debug!(
                network,
                plugin = plugin_type,
                command = command.as_str(),
                "cni plugin succeeded"
            );
            Ok(output.stdout)
        } else {
            let error = PluginError::from_output(&output.stdout, &output.stderr);
            tracing::debug!(
                network,
                plugin = plugin_type,
                command = command.as_str(),
                status = %output.status,
                code = error.code,
                "cni plugin failed"
            );
            Err(CniError::PluginFailed {
                network: network.to_string(),
                plugin: plugin_type.to_string(),
                command: command.as_str(),
                error,
            })
        }
    }
}

/// Spawns, retrying briefly on ETXTBSY: a binary that was just written (an installer copying
/// plugins, a test writing a script) can be busy while another thread's fork still holds it open.
async fn spawn_retrying(cmd: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) && attempt < 20 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CapabilityArgs, K8sArgs};
    use crate::testutil::FakePlugins;

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            args: K8sArgs {
                pod_namespace: "ns".into(),
                pod_name: "p".into(),
                infra_container_id: "c1".into(),
                pod_uid: "u".into(),
            }
            .to_pairs(),
            capability_args: CapabilityArgs::default(),
        }
    }

    #[tokio::test]
    async fn passes_env_and_stdin() {
        let f = FakePlugins::new();
        f.add("echo", r#"printf '{"ok":true}'"#);
        let exec = PluginExec::new(
            vec![f.dir.path().join("none"), f.bin()],
            Duration::from_secs(10),
        );
        assert_eq!(exec.find("echo").expect("found"), f.bin().join("echo"));
        let out = exec
            .run(
                "net",
                "echo",
                CniCommand::Add,
                Some(&rt()),
                br#"{"type":"echo"}"#,
            )
            .await
            .expect("run");
        assert_eq!(out, br#"{"ok":true}"#);
        let calls = f.calls();
        assert_eq!(
            calls,
            vec![format!(
                "ADD echo c1 netns=/run/netns/x eth0 IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u {}:{}",
                f.dir.path().join("none").display(),
                f.bin().display()
            )]
        );
        assert_eq!(f.stdin("ADD", "echo"), serde_json::json!({"type":"echo"}));

        // STATUS gets only CNI_COMMAND and CNI_PATH; a missing netns is an empty CNI_NETNS
        exec.run("net", "echo", CniCommand::Status, None, b"{}")
            .await
            .expect("status");
        let mut gone = rt();
        gone.netns = None;
        exec.run("net", "echo", CniCommand::Del, Some(&gone), b"{}")
            .await
            .expect("del");
        let calls = f.calls();
        assert!(
            calls[1].starts_with("STATUS echo  netns=  "),
            "{}",
            calls[1]
        );
        assert!(
            calls[2].starts_with("DEL echo c1 netns= eth0 "),
            "{}",
            calls[2]
        );
    }

    #[tokio::test]
    async fn parses_plugin_errors() {
        let f = FakePlugins::new();
        f.add(
            "fail",
            r#"printf '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"retry"}'; echo noise >&2; exit 1"#,
        );
        f.add("crash", "echo 'panic: runtime error' >&2; exit 2");
        let exec = PluginExec::new(vec![f.bin()], Duration::from_secs(10));
        let err = exec
            .run("net", "fail", CniCommand::Add, Some(&rt()), b"{}")
            .await
            .expect_err("fails");
        match &err {
            CniError::PluginFailed {
                error,
                plugin,
                command,
                ..
            } => {
                assert_eq!(
                    (error.code, error.msg.as_str(), error.details.as_str()),
                    (11, "busy", "retry")
                );
                assert_eq!((plugin.as_str(), *command), ("fail", "ADD"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "cni plugin fail ADD failed (network net): code 11 (try again later): busy; retry"
        );
        let err = exec
            .run("net", "crash", CniCommand::Del, Some(&rt()), b"{}")
            .await
            .expect_err("fails");
        assert!(err.to_string().ends_with("panic: runtime error"), "{err}");
        let err = exec
            .run("net", "absent", CniCommand::Add, Some(&rt()), b"{}")
            .await
            .expect_err("missing");
        assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn kills_plugins_that_overrun() {
        let f = FakePlugins::new();
        let pidfile = f.dir.path().join("child.pid");
        f.add(
            "slow",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let exec = PluginExec::new(vec![f.bin()], Duration::from_millis(500));
        let started = std::time::Instant::now();
        let err = exec
            .run("net", "slow", CniCommand::Add, Some(&rt()), b"{}")
            .await
            .expect_err("times out");
        assert!(matches!(err, CniError::PluginTimeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // the plugin's helper (same process group) died too
        let pid = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .to_string();
        let mut dead = false;
        for _ in 0..100 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => dead = true,
                Ok(stat) => dead = stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')),
            }
            if dead {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dead, "helper process {pid} survived the timeout");
    }
}
