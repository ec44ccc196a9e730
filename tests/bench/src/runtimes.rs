//! The daemons under test, each on its own root, state dir and socket inside the benchmark's
//! work dir, with the same `hosts.toml` registry configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::cri::Cri;
use crate::procs;

/// Which runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// unicri (`unicri daemon`).
    Unicri,
    /// containerd with its CRI plugin.
    Containerd,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Unicri => "unicri",
            Kind::Containerd => "containerd",
        })
    }
}

/// Writes `<dir>/<host>/hosts.toml` sending `host` to itself over plain HTTP (containerd's format,
/// which unicri reads too). Returns `dir`.
pub fn write_hosts_dir(dir: &Path, host: &str) -> Result<PathBuf> {
    let d = dir.join(host);
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(dir.to_path_buf())
}

/// What a benchmark adds to a daemon's configuration beyond its roots and registry hosts.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// CNI: (conflist dir, plugin dir). `None` leaves each runtime's default.
    pub cni: Option<(PathBuf, PathBuf)>,
    /// containerd's `sandbox_image` (the pause image). Ignored for unicri, which has no pause.
    pub sandbox_image: Option<String>,
    /// Environment variables of the daemon (e.g. `UNICRI_LOG`).
    pub env: Vec<(String, String)>,
    /// More TOML appended to unicri's config (e.g. `[runtimes.vm]`). Ignored for containerd.
    pub config: String,
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// Which one.
    pub kind: Kind,
    child: Child,
    /// Persistent root (images live here).
    pub root: PathBuf,
    /// Volatile state dir.
    pub state: PathBuf,
    /// CRI socket.
    pub socket: PathBuf,
    /// Daemon log (stdout + stderr).
    pub log: PathBuf,
    /// `<bin> --version (<bin path>)`.
    pub bin_version: String,
    /// CRI `Version` answer, `name version (api)`.
    pub cri_version: String,
    /// CRI client.
    pub cri: Cri,
}

impl Daemon {
    /// Starts `bin` as `kind` under `dir` (root, state, socket, config, log) with registry
    /// config from `hosts_dir`, and waits until CRI `Version` answers.
    pub async fn start(kind: Kind, bin: &Path, dir: &Path, hosts_dir: &Path) -> Result<Daemon> {
        Self::start_with(kind, bin, dir, hosts_dir, &Extras::default()).await
    }

    /// [`Daemon::start`] with `extras` in the daemon's configuration.
    pub async fn start_with(
        kind: Kind,
        bin: &Path,
        dir: &Path,
        hosts_dir: &Path,
        extras: &Extras,
    ) -> Result<Daemon> {
        if !bin.exists() {
            bail!("{kind} binary {} not found", bin.display());
        }
        let dir = dir.join(kind.to_string());
        let root = dir.join("root");
        let state = dir.join("state");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&state)?;
        let socket = dir.join(format!("{kind}.sock"));
        let config = dir.join("config.toml");
        let log = dir.join(format!("{kind}.log"));
        let mut cmd = Command::new(bin);
        match kind {
            Kind::Containerd => {
                std::fs::write(
                    &config,
                    containerd_config(&dir, &root, &state, &socket, hosts_dir, extras),
                )?;
                cmd.arg("--config").arg(&config);
            }
            Kind::Unicri => {
                let mut text = format!(
                    "[registry]\nconfig_path = {:?}\n",
                    hosts_dir.display().to_string()
                );
                if let Some((conf_dir, bin_dir)) = &extras.cni {
                    text.push_str(&format!(
                        "\n[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}]\n",
                        conf_dir.display().to_string(),
                        bin_dir.display().to_string()
                    ));
                }
                text.push_str(&extras.config);
                std::fs::write(&config, text)?;
                cmd.arg("daemon")
                    .arg("--config")
                    .arg(&config)
                    .arg("--root")
                    .arg(&root)
                    .arg("--state")
                    .arg(&state)
                    .arg("--address")
                    .arg(&socket);
            }
        }
        let bin_version = format!(
            "{} ({})",
            procs::command_line_output(&bin.to_string_lossy(), &["--version"]),
            bin.display()
        );
        let out = std::fs::File::create(&log)?;
        cmd.envs(extras.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (cri, cri_version) = loop {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "{kind} exited during startup with {st}; see {}",
                    log.display()
                );
            }
            if socket.exists()
                && let Ok(cri) = Cri::connect(&socket).await
                && let Ok((name, version, api)) = cri.version().await
            {
                break (cri, format!("{name} {version} (CRI {api})"));
            }
            if Instant::now() > deadline {
                procs::terminate(&mut child, Duration::from_secs(5)).await;
                bail!(
                    "{kind} did not answer CRI Version within 60 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Ok(Daemon {
            kind,
            child,
            root,
            state,
            socket,
            log,
            bin_version,
            cri_version,
            cri,
        })
    }

    /// The daemon's pid (`None` once it has been reaped).
    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }

    /// The daemon's config file.
    pub fn config_path(&self) -> PathBuf {
        self.root
            .parent()
            .map(|d| d.join("config.toml"))
            .unwrap_or_default()
    }

    /// Stops the daemon and everything it left behind: its process group, containerd shims
    /// started for its socket (with their containers), runc state of its tasks, and mounts
    /// under its root and state dirs. Returns notes about anything that had to be cleaned up.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let pgid = self.child.id().map(|p| p as i32);
        procs::terminate(&mut self.child, Duration::from_secs(15)).await;
        if let Some(pgid) = pgid {
            // Anything still in the daemon's process group (it was started as a group leader).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if self.kind == Kind::Containerd {
            let sock = self.socket.to_string_lossy().to_string();
            for pid in procs::find_processes("containerd-shim", &sock) {
                notes.push(format!("killed leftover shim {pid}"));
                procs::kill_tree(pid);
            }
            notes.extend(cleanup_containerd_tasks(&self.state));
        }
        for d in [&self.state, &self.root] {
            for m in procs::unmount_under(d) {
                notes.push(format!("unmounted leftover {m}"));
            }
        }
        notes
    }
}

/// containerd 1.6 config: own root/state/sockets, CRI plugin with the overlayfs snapshotter,
/// `restrict_oom_score_adj` (an unprivileged-looking root here cannot lower oom_score_adj) and
/// registry hosts from `hosts_dir`; with `extras`, the pause image, runc (runc v2 shim, cgroupfs)
/// as the default runtime and the CNI dirs.
pub fn containerd_config(
    dir: &Path,
    root: &Path,
    state: &Path,
    socket: &Path,
    hosts_dir: &Path,
    extras: &Extras,
) -> String {
    let mut cri_top = String::new();
    let mut cri_tables = String::new();
    if let Some(img) = &extras.sandbox_image {
        cri_top.push_str(&format!("  sandbox_image = \"{img}\"\n"));
    }
    if let Some((conf_dir, bin_dir)) = &extras.cni {
        cri_tables.push_str(&format!(
            r#"    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{}"
    conf_dir = "{}"
"#,
            bin_dir.display(),
            conf_dir.display()
        ));
    }
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = "{dir}/debug.sock"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
{cri_top}  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
{cri_tables}"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
        dir = dir.display(),
        hosts = hosts_dir.display(),
    )
}

/// For every task dir containerd left under `state` (`io.containerd.runtime.v2.task/<ns>/<id>`):
/// `runc delete -f` its container in `/run/containerd/runc/<ns>` and remove its shim socket.
fn cleanup_containerd_tasks(state: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let Ok(nss) = std::fs::read_dir(state.join("io.containerd.runtime.v2.task")) else {
        return notes;
    };
    for ns in nss.flatten() {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let (ns_name, id_name) = (ns.file_name(), id.file_name());
            let runc_root = Path::new("/run/containerd/runc").join(&ns_name);
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f"])
                .arg(&id_name)
                .stderr(Stdio::null())
                .status();
            if let Ok(addr) = std::fs::read_to_string(id.path().join("address"))
                && let Some(path) = addr.trim().strip_prefix("unix://")
            {
                let _ = std::fs::remove_file(path);
            }
            notes.push(format!(
                "cleaned leftover task {}/{}",
                ns_name.to_string_lossy(),
                id_name.to_string_lossy()
            ));
        }
    }
    notes
}
