//! `unicri daemon`: load the config, open the state store and image service, serve CRI (and the
//! admin service) on the unix socket until SIGTERM/SIGINT. Shutting down never stops workloads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use unicri_image::{ImageService, ImageServiceConfig, Limits};
use unicri_proto::{ImageServiceServer, RuntimeServiceServer, admin::admin_server::AdminServer};
use unicri_storage::Store;

use crate::admin::Admin;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::images::Images;
use crate::server::Cri;

/// Command-line overrides of the config file.
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--config`; when absent the default path is read if it exists.
    pub config: Option<PathBuf>,
    /// `--root`
    pub root: Option<PathBuf>,
    /// `--state`
    pub state: Option<PathBuf>,
    /// `--address`
    pub address: Option<PathBuf>,
}

/// Resolves the effective configuration: file (or defaults), then flags.
pub fn effective_config(o: &Overrides) -> anyhow::Result<Config> {
    let mut cfg = match &o.config {
        Some(p) => Config::load(p, true)?,
        None => Config::load(Path::new(DEFAULT_CONFIG), false)?,
    };
    if let Some(r) = &o.root {
        cfg.root = absolute(r)?;
    }
    if let Some(s) = &o.state {
        cfg.state = absolute(s)?;
    }
    if let Some(a) = &o.address {
        cfg.grpc.address = absolute(a)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("current dir")?.join(p))
}

fn make_dir(p: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))?;
    Ok(())
}

/// Takes an exclusive lock on `<root>/unicri.lock` so two daemons never share a root.
fn lock_root(root: &Path) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    let path = root.join("unicri.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| anyhow::anyhow!("another unicri daemon holds {} ({errno})", path.display()),
    )
}

/// Binds the CRI socket: a stale socket file is replaced, a live one is an error. Mode 0660.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("socket {} is in use by a running server", path.display());
        }
        fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; only kill will stop the daemon");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down; workloads keep running"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down; workloads keep running"),
    }
}

/// Runs the daemon until a shutdown signal.
/// The keeper exits this long after its last container (and pod init) is gone.
const KEEPER_IDLE_EXIT_MS: u64 = 2000;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    make_dir(&cfg.root, 0o711)?;
    make_dir(&cfg.state, 0o711)?;
    let _lock = lock_root(&cfg.root)?;

    let store = Store::open(&cfg.root.join("state.db"))
        .await
        .context("open state store")?;
    let hosts_dir = cfg
        .registry
        .config_path
        .is_dir()
        .then(|| cfg.registry.config_path.clone());
    if hosts_dir.is_none() {
        tracing::info!(path = %cfg.registry.config_path.display(), "no registry hosts dir; using registry defaults");
    }
    let image_service = ImageService::new(ImageServiceConfig {
        root: cfg.root.join("images"),
        hosts_dir,
        credentials_file: cfg.registry.credentials_file.clone(),
        max_concurrent_downloads: cfg.registry.max_concurrent_downloads,
        limits: Limits::default(),
    })
    .await
    .context("start image service")?;
    let images = Arc::new(Images::new(Arc::new(image_service), store.clone()));
    let max_msg = cfg.grpc.max_recv_message_size;
    let address = cfg.grpc.address.clone();
    let config = Arc::new(cfg);
    let exe = std::env::current_exe().context("find the unicri binary")?;
    let keeper = unicri_runtime_linux::keeper::KeeperClient::new(
        config.state.join("keeper"),
        exe.clone(),
        KEEPER_IDLE_EXIT_MS,
    );
    let wasm_keeper = unicri_runtime_linux::keeper::KeeperClient::new(
        config.state.join("wasm-keeper"),
        exe,
        KEEPER_IDLE_EXIT_MS,
    )
    .with_command("wasm-keeper");
    let vm = Arc::new(crate::vm::VmBackend::new(config.clone()));
    let pods = Arc::new(crate::pods::Pods::new(
        config.clone(),
        store.clone(),
        keeper.clone(),
        vm,
    ));
    let containers = Arc::new(crate::containers::Containers::new(
        &config.root,
        store.clone(),
        images.clone(),
        pods.clone(),
        keeper,
        wasm_keeper,
    ));
    crate::recover::recover(&store, &pods, &containers)
        .await
        .map_err(|e| anyhow::anyhow!("recover: {}", e.message))?;
    containers
        .watch_exits()
        .await
        .map_err(|e| anyhow::anyhow!("watch container exits: {}", e.message))?;
    containers
        .resume_vm_relays()
        .await
        .map_err(|e| anyhow::anyhow!("resume vm log relays: {}", e.message))?;
    let stream_addr: std::net::SocketAddr = config
        .streaming
        .address
        .parse()
        .context("streaming.address")?;
    let tls = match (
        &config.streaming.tls_cert_file,
        &config.streaming.tls_key_file,
    ) {
        (Some(cert), Some(key)) => Some(unicri_streaming::TlsIdentity {
            cert_pem: std::fs::read(cert)
                .with_context(|| format!("read streaming.tls_cert_file {}", cert.display()))?,
            key_pem: std::fs::read(key)
                .with_context(|| format!("read streaming.tls_key_file {}", key.display()))?,
        }),
        _ => None,
    };
    let streaming = unicri_streaming::Server::start(
        stream_addr,
        Arc::new(crate::streaming::Streams {
            containers: containers.clone(),
            pods: pods.clone(),
        }),
        tls,
    )
    .await
    .with_context(|| format!("start the streaming server on {stream_addr}"))?;
    let cri = Arc::new(Cri {
        config,
        images,
        pods,
        containers,
        streaming,
    });

    let listener = bind_socket(&address).await?;
    tracing::info!(address = %address.display(), version = env!("CARGO_PKG_VERSION"), "serving CRI v1");
    let runtime = RuntimeServiceServer::from_arc(cri.clone())
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let image = ImageServiceServer::from_arc(cri.clone())
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let admin = AdminServer::new(Admin { cri: cri.clone() });
    let served = tonic::transport::Server::builder()
        .layer(crate::deadline::DeadlineLayer)
        .add_service(runtime)
        .add_service(image)
        .add_service(admin)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    let _ = fs::remove_file(&address);
    cri.pods.release_if_idle().await;
    store.close().await;
    served.context("grpc server")?;
    tracing::info!("stopped");
    Ok(())
}
