//! The guest side: PID 1 of a `vm` pod's guest.

pub mod container;
pub mod error;
pub mod files;
pub mod init;
pub mod keeper;
pub mod logs;
pub mod mounts;
pub mod netlink;
pub mod ns;
pub mod pod;
pub mod resources;
pub mod server;
pub mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use unicri_vm_agent::proto;

/// How long boot waits for the control NIC.
const CTL_NIC_WAIT: Duration = Duration::from_secs(10);

/// Log to stderr (the console), plain text.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNICRI_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| stats::parse_uptime(&t))
        .unwrap_or(0.0)
}

/// PID 1: init duties, the keeper, the server. Never returns; a fatal error powers off.
pub fn run_pid1() -> ! {
    if init::needs_switch_root()
        && let Err(e) = init::switch_root()
    {
        eprintln!(
            "unicri-vm-agent: cannot leave the initramfs, containers will fail to pivot_root: {e}"
        );
    }
    init_tracing();
    if let Err(e) = init::mount_basics() {
        fatal(&format!("mounting the API filesystems: {e}"));
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        protocol = proto::PROTOCOL_VERSION,
        uptime_s = uptime(),
        "agent starting"
    );
    if let Err(e) = init::loopback_up() {
        tracing::error!(error = %e, "loopback");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match init::control_nic(&cmdline, CTL_NIC_WAIT) {
        Ok(nic) => tracing::info!(nic = %nic, ip = proto::GUEST_CTL_IP, "control link up"),
        Err(e) => tracing::error!(error = %e, "control link"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&format!("building the runtime: {e}")),
    };
    let ip: Ipv4Addr = proto::GUEST_CTL_IP.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let addr = SocketAddr::from((ip, proto::AGENT_PORT));
    let state = Arc::new(server::State::default());
    rt.block_on(async move {
        let listener = server::bind(addr).await;
        // the keeper (a second process loading this binary) competes for the guest's one CPU:
        // it starts once Health can be answered
        if let Err(e) = keeper::start() {
            fatal(&format!("starting the keeper threads: {e}"));
        }
        server::serve_on(listener, state).await;
    });
    fatal("the server stopped")
}

fn fatal(what: &str) -> ! {
    tracing::error!("fatal: {what}; powering off");
    eprintln!("unicri-vm-agent: fatal: {what}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
