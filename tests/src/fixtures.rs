//! Fixtures shared by the container tiers (`tests/containers.rs`, `tests/cli.rs`): the skip
//! check for Debian's CNI plugins and busybox, a daemon on a CNI network with a busybox image
//! imported, and the CRI status of a container.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use unicri_proto::v1;

use crate::cni::{Net, PLUGINS};
use crate::daemon::{Daemon, DaemonOpts};
use crate::oci::{Compression, ImageBuilder, busybox_layer};

/// Returns `true` (and prints a loud `SKIP` line) when the CNI bridge plugin or Debian's dynamic
/// busybox is missing.
pub fn skip_without_cni_and_busybox(test: &str) -> bool {
    if Path::new(PLUGINS).join("bridge").exists() && Path::new("/bin/busybox").exists() {
        return false;
    }
    eprintln!(
        "\n******** SKIP {test}: needs {PLUGINS}/bridge and /bin/busybox (apt-get install -y containernetworking-plugins busybox) ********\n"
    );
    true
}

/// Starts a daemon on `net` with a busybox image imported as `reference` (env `FROM_IMAGE=yes`,
/// default command `cmd`).
pub async fn daemon_with_busybox(net: &Net, reference: &str, cmd: &[&str]) -> Result<Daemon> {
    let d = Daemon::start(DaemonOpts {
        extra_config: net.config(),
        ..Default::default()
    })
    .await?;
    import_busybox(&d, reference, cmd)?;
    Ok(d)
}

/// Imports a busybox image as `reference` (env `FROM_IMAGE=yes`, default command `cmd`) into
/// a running daemon.
pub fn import_busybox(d: &Daemon, reference: &str, cmd: &[&str]) -> Result<()> {
    let img = ImageBuilder::new()
        .layer(busybox_layer()?.build(Compression::Gzip)?)
        .env(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes"])
        .cmd(cmd)
        .build()?;
    let tmp = tempfile::tempdir()?;
    img.write_oci_layout(tmp.path(), reference)?;
    let out = d.cli([
        std::ffi::OsStr::new("image"),
        std::ffi::OsStr::new("import"),
        tmp.path().as_os_str(),
    ])?;
    ensure!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `ContainerStatus` (not verbose) of `id`.
pub async fn container_status(d: &Daemon, id: &str) -> Result<v1::ContainerStatus> {
    d.runtime()
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no container status")
}

/// A pod config named `name` (namespace `e2e`) logging under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    }
}

/// StopPodSandbox, then RemovePodSandbox.
pub async fn remove_pod(d: &Daemon, id: &str) -> Result<()> {
    let mut rt = d.runtime();
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await?;
    Ok(())
}
