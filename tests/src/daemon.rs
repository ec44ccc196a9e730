//! Spawns the real `unicri` daemon on a temp root/state/socket and talks CRI to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};
use unicri_proto::v1::{
    AuthConfig, Image as CriImage, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ImageStatusResponse, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use unicri_proto::{ImageServiceClient, RuntimeServiceClient};

use crate::leaks;

/// How long to wait for the socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop()` waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Credentials written to the daemon's `credentials_file` (docker config.json).
#[derive(Clone, Debug)]
pub struct Credential {
    pub host: String,
    pub username: String,
    pub password: String,
}

/// How to start the daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonOpts {
    /// `(registry_host, mirror_url, skip_verify)`: one `[host."<mirror_url>"]` section in
    /// `<config_path>/<registry_host>/hosts.toml` per entry (entries of one host are grouped,
    /// in order).
    pub hosts: Vec<(String, String, bool)>,
    /// `(path, contents)`: raw files written under the hosts dir (`config_path`), `path`
    /// relative to it, e.g. `("registry.k8s.io/hosts.toml", text)` or a CA PEM next to it.
    /// A `hosts.toml` here must not be for a registry host that `hosts` also generates.
    pub hosts_files: Vec<(String, Vec<u8>)>,
    /// Written as the docker `config.json` given in `credentials_file`.
    pub credentials: Option<Vec<Credential>>,
    /// Appended verbatim to the config TOML.
    pub extra_config: String,
    /// `--log-level` (default `debug`).
    pub log_level: Option<String>,
    /// Extra environment of the daemon process (e.g. `UNICRI_CRASH_AT`).
    pub env: Vec<(String, String)>,
}

impl DaemonOpts {
    /// Adds a mirror: pulls of `registry_host/...` go to `mirror_url`.
    pub fn mirror(mut self, registry_host: &str, mirror_url: &str) -> Self {
        self.hosts
            .push((registry_host.to_string(), mirror_url.to_string(), true));
        self
    }
    /// Makes the daemon reach a local plain-HTTP registry by its own host (`127.0.0.1:port`).
    pub fn local_registry(self, reg: &crate::registry::Registry) -> Self {
        let (h, u) = (reg.host(), reg.url());
        self.mirror(&h, &u)
    }
    /// Mirrors each of `registries` (e.g. `docker.io`, `registry.k8s.io`) to `reg`, and `reg`'s
    /// own host to itself.
    pub fn mirrors_to(mut self, reg: &crate::registry::Registry, registries: &[&str]) -> Self {
        for r in registries {
            self = self.mirror(r, &reg.url());
        }
        self.local_registry(reg)
    }
    /// Uses `text` verbatim as `<config_path>/<registry_host>/hosts.toml`.
    pub fn hosts_toml(self, registry_host: &str, text: &str) -> Self {
        self.hosts_file(&format!("{registry_host}/hosts.toml"), text)
    }
    /// Writes `contents` to `<config_path>/<path>` (e.g. a CA certificate a `hosts.toml`
    /// names by a relative path).
    pub fn hosts_file(mut self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        self.hosts_files
            .push((path.to_string(), contents.as_ref().to_vec()));
        self
    }
    pub fn credential(mut self, host: &str, username: &str, password: &str) -> Self {
        self.credentials
            .get_or_insert_with(Vec::new)
            .push(Credential {
                host: host.into(),
                username: username.into(),
                password: password.into(),
            });
        self
    }
}

/// The `unicri` binary: `$UNICRI_BIN`, else `$CARGO_TARGET_DIR/debug/unicri`, else
/// `<workspace>/target/debug/unicri`.
pub fn unicri_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UNICRI_BIN") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("debug/unicri");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/unicri")
}

/// Writes `hosts.toml` files for `hosts` under `dir` (one subdir per registry host).
pub fn write_hosts_dir(dir: &Path, hosts: &[(String, String, bool)]) -> Result<()> {
    let mut by_host: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for (h, m, s) in hosts {
        by_host
            .entry(h.as_str())
            .or_default()
            .push((m.as_str(), *s));
    }
    for (host, mirrors) in by_host {
        let d = dir.join(host);
        std::fs::create_dir_all(&d)?;
        let mut t = String::new();
        for (m, skip) in mirrors {
            t.push_str(&format!(
                "[host.\"{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = {skip}\n\n"
            ));
        }
        std::fs::write(d.join("hosts.toml"), t)?;
    }
    Ok(())
}

/// Writes raw `(relative path, contents)` files under `dir`; refuses to overwrite a file
/// (e.g. a `hosts.toml` that [`write_hosts_dir`] generated) or to leave `dir`.
pub fn write_hosts_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, data) in files {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            bail!("hosts file path {rel:?} must be relative and stay under the hosts dir");
        }
        let p = dir.join(rel_path);
        if p.exists() {
            bail!(
                "hosts file {} is given twice (DaemonOpts.hosts and hosts_files?)",
                p.display()
            );
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// A docker `config.json` for `creds`.
pub fn docker_config_json(creds: &[Credential]) -> String {
    let mut auths = serde_json::Map::new();
    for c in creds {
        auths.insert(
            c.host.clone(),
            serde_json::json!({"auth": crate::oci::basic_auth_value(&c.username, &c.password)}),
        );
    }
    serde_json::json!({ "auths": auths }).to_string()
}

/// A running daemon. Dropping it SIGKILLs the process (tests should call
/// [`Daemon::finish`] to stop it gracefully and run the leak check).
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pid: i32,
    dir: Option<tempfile::TempDir>,
    base: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    opts: DaemonOpts,
    channel: Channel,
}

impl Daemon {
    pub async fn start(opts: DaemonOpts) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("unicri-e2e-").tempdir()?;
        let base = dir.path().to_path_buf();
        let (root, state) = (base.join("root"), base.join("state"));
        let socket = base.join("unicri.sock");
        let hosts_dir = base.join("certs.d");
        std::fs::create_dir_all(&hosts_dir)?;
        write_hosts_dir(&hosts_dir, &opts.hosts)?;
        write_hosts_files(&hosts_dir, &opts.hosts_files)?;
        let mut config = format!("[registry]\nconfig_path = \"{}\"\n", hosts_dir.display());
        if let Some(creds) = &opts.credentials {
            let p = base.join("config.json");
            std::fs::write(&p, docker_config_json(creds))?;
            config.push_str(&format!("credentials_file = \"{}\"\n", p.display()));
        }
        config.push('\n');
        config.push_str(&opts.extra_config);
        let config_path = base.join("unicri.toml");
        std::fs::write(&config_path, &config)?;
        let log_path = base.join("daemon.log");
        let mut d = Self::spawn_with(dir, root, state, socket, config_path, log_path, opts).await?;
        d.wait_socket().await?;
        Ok(d)
    }

    async fn spawn_with(
        dir: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
        socket: PathBuf,
        config_path: PathBuf,
        log_path: PathBuf,
        opts: DaemonOpts,
    ) -> Result<Daemon> {
        let child = spawn(&config_path, &root, &state, &socket, &log_path, &opts)?;
        let pid = i32::try_from(child.id())?;
        let channel = lazy_channel(&socket)?;
        Ok(Daemon {
            child: Some(child),
            pid,
            base: dir.path().to_path_buf(),
            dir: Some(dir),
            root,
            state,
            socket,
            config_path,
            log_path,
            opts,
            channel,
        })
    }

    async fn wait_socket(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "unicri exited before its socket appeared ({st})\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            if self.socket.exists() && tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.kill9();
                bail!(
                    "unicri socket {} did not appear within {:?}\n--- daemon log ---\n{log}",
                    self.socket.display(),
                    START_TIMEOUT
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Restarts a stopped daemon on the same root/state/socket/config.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        let child = spawn(
            &self.config_path,
            &self.root,
            &self.state,
            &self.socket,
            &self.log_path,
            &self.opts,
        )?;
        self.pid = i32::try_from(child.id())?;
        self.child = Some(child);
        self.channel = lazy_channel(&self.socket)?;
        self.wait_socket().await
    }

    /// Replaces the environment extras used by the next [`Daemon::restart`].
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.opts.env = env;
    }

    /// Waits (up to 10 s) for the daemon process to end by itself (e.g. at a crash point).
    pub fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("daemon not running")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("daemon did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The test's temp dir (root, state, socket, config and log live under it).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }
    pub fn opts(&self) -> &DaemonOpts {
        &self.opts
    }
    /// `<root>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }
    pub fn image(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs `unicri --address <socket> <args...>`.
    pub fn cli<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(unicri_bin())
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run unicri cli")
    }

    /// SIGTERM and wait (SIGKILL after [`STOP_TIMEOUT`]). Errors if the daemon had to be killed
    /// or exited non-zero.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            bail!(
                "unicri had already exited\n--- daemon log ---\n{}",
                self.log()
            );
        }
        kill(Pid::from_raw(self.pid), Signal::SIGTERM).context("SIGTERM unicri")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    bail!(
                        "unicri exited with {st} after SIGTERM\n--- daemon log ---\n{}",
                        self.log()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "unicri did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon gracefully and runs the leak check. Call at the end of each test.
    pub async fn finish(mut self) -> Result<()> {
        self.stop().await?;
        leaks::check(&self).with_context(|| format!("--- daemon log ---\n{}", self.log()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // a failed test must not leave its containers (and the keeper) to the next ones
        for (pid, _) in leaks::processes_referring_to(self.base_dir()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for m in leaks::mounts_under(&self.root)
            .into_iter()
            .rev()
            .chain(leaks::mounts_under(&self.state).into_iter().rev())
        {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if std::env::var_os("UNICRI_E2E_KEEP").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("UNICRI_E2E_KEEP: test dir kept at {}", d.keep().display());
        }
    }
}

fn spawn(
    config: &Path,
    root: &Path,
    state: &Path,
    socket: &Path,
    log_path: &Path,
    opts: &DaemonOpts,
) -> Result<Child> {
    let bin = unicri_bin();
    if !bin.exists() {
        bail!(
            "unicri binary not found at {} (cargo build -p unicri-cri-server, or set UNICRI_BIN)",
            bin.display()
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    Command::new(&bin)
        .arg("daemon")
        .arg("--config")
        .arg(config)
        .arg("--root")
        .arg(root)
        .arg("--state")
        .arg(state)
        .arg("--address")
        .arg(socket)
        .arg("--log-level")
        .arg(opts.log_level.as_deref().unwrap_or("debug"))
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))
}

/// A tonic channel over a unix socket (connects on first use).
pub fn lazy_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    let ep = Endpoint::try_from("http://[::]:50051")?;
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        })),
    )
}

/// A connected tonic channel over a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    let ep = Endpoint::try_from("http://[::]:50051")?;
    Ok(ep
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await?)
}

/// Thin CRI image helpers.
impl Daemon {
    /// PullImage; returns the image ref the daemon answered.
    pub async fn pull(&self, image: &str, auth: Option<AuthConfig>) -> Result<String> {
        let resp = self
            .image()
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("PullImage {image}"))?;
        Ok(resp.into_inner().image_ref)
    }
    /// PullImage with username/password.
    pub async fn pull_with_auth(&self, image: &str, user: &str, pass: &str) -> Result<String> {
        let auth = AuthConfig {
            username: user.into(),
            password: pass.into(),
            ..Default::default()
        };
        self.pull(image, Some(auth)).await
    }
    /// ImageStatus (not verbose); `None` when the image is unknown.
    pub async fn image_status(&self, image: &str) -> Result<Option<CriImage>> {
        Ok(self.image_status_verbose(image, false).await?.image)
    }
    pub async fn image_status_verbose(
        &self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse> {
        Ok(self
            .image()
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose,
            })
            .await
            .with_context(|| format!("ImageStatus {image}"))?
            .into_inner())
    }
    /// ListImages, optionally filtered by an image reference.
    pub async fn list_images(&self, filter: Option<&str>) -> Result<Vec<CriImage>> {
        let filter = filter.map(|f| ImageFilter {
            image: Some(spec(f)),
        });
        Ok(self
            .image()
            .list_images(ListImagesRequest { filter })
            .await
            .context("ListImages")?
            .into_inner()
            .images)
    }
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        self.image()
            .remove_image(RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .with_context(|| format!("RemoveImage {image}"))?;
        Ok(())
    }
    /// Sum of `used_bytes` over the image filesystems.
    pub async fn image_fs_used(&self) -> Result<u64> {
        let r = self
            .image()
            .image_fs_info(ImageFsInfoRequest {})
            .await
            .context("ImageFsInfo")?
            .into_inner();
        Ok(r.image_filesystems
            .iter()
            .filter_map(|f| f.used_bytes.as_ref())
            .map(|u| u.value)
            .sum())
    }
}

/// An `ImageSpec` for `image`.
pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}
