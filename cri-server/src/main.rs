//! `unicri`: the daemon (`unicri daemon`) and the human CLI in one binary.

mod admin;
mod cli;
mod cli_stream;
mod config;
mod container_spec;
mod containers;
mod crashpoint;
mod daemon;
mod deadline;
mod error;
mod events;
mod images;
mod instrument;
mod memory;
mod pods;
mod recover;
mod reserve;
mod rpc;
mod server;
mod streaming;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "unicri",
    version,
    about = "unicri: a Kubernetes container runtime (CRI v1) in one daemon"
)]
struct Cli {
    /// CRI socket: where the daemon listens / the CLI connects.
    #[arg(long, global = true, env = "UNICRI_ADDRESS")]
    address: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Daemon {
        /// Config file (TOML). Default: /etc/unicri/config.toml if it exists.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Persistent root (state.db, images). Default: /var/lib/unicri.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Volatile state dir. Default: /run/unicri.
        #[arg(long)]
        state: Option<PathBuf>,
        /// error, warn, info, debug, trace, or a tracing filter.
        #[arg(long, default_value = "info", env = "UNICRI_LOG")]
        log_level: String,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Print the runtime's version.
    Version,
    /// Print the runtime's status and configuration.
    Info,
    /// Pull an image.
    Pull {
        /// Image reference, e.g. busybox or registry.k8s.io/pause:3.9.
        image: String,
        /// Registry credentials USER:PASSWORD.
        #[arg(long)]
        creds: Option<String>,
    },
    /// List images.
    Images {
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Show digests.
        #[arg(long)]
        digests: bool,
    },
    /// Show an image's status and config.
    Inspecti {
        /// Id, tag or digest reference.
        image: String,
    },
    /// Remove images.
    Rmi {
        /// Ids, tags or digest references.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List pod sandboxes.
    Pods {
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Stop and remove pod sandboxes.
    Rmp {
        /// Pod ids (or unique prefixes).
        ids: Vec<String>,
        /// Every pod.
        #[arg(short, long)]
        all: bool,
    },
    /// Run a command in a new pod (pulling the image if needed), following its output; exit with
    /// its exit code.
    Run {
        /// Runtime handler (default: the daemon's default).
        #[arg(long, default_value = "")]
        runtime: String,
        /// Pod and container name. Default: run-<random>.
        #[arg(long)]
        name: Option<String>,
        /// Remove the pod (and the log directory made for it) when the container has exited.
        #[arg(long)]
        rm: bool,
        /// Environment variable KEY=VALUE (KEY alone: its value here).
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
        envs: Vec<String>,
        /// Where the pod's log directory (<dir>/<name>) is made.
        #[arg(long, default_value = "/var/log/unicri/run")]
        log_dir: PathBuf,
        /// Image reference.
        image: String,
        /// Command and arguments. Default: the image's.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Every container, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Only this pod's (id or unique prefix).
        #[arg(long)]
        pod: Option<String>,
    },
    /// Print a container's log.
    Logs {
        /// Keep following until the container has exited.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Container id (or unique prefix).
        container: String,
    },
    /// Run a command in a running container; exit with its exit code. Without -i/-t it runs
    /// through ExecSync; with them through an interactive streaming session.
    Exec {
        /// Seconds before the command is killed (0: no limit; ExecSync only).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        /// Keep stdin open and send it to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Streaming protocol.
        #[arg(long, value_enum, default_value = "spdy")]
        transport: cli_stream::TransportArg,
        /// Container id (or unique prefix).
        container: String,
        /// Command and arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Join a running container's stdio.
    Attach {
        /// Send stdin to the container (it must have been created with stdin).
        #[arg(short, long)]
        interactive: bool,
        /// The container has a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Streaming protocol.
        #[arg(long, value_enum, default_value = "spdy")]
        transport: cli_stream::TransportArg,
        /// Container id (or unique prefix).
        container: String,
    },
    /// Forward local ports to ports on a pod's loopback.
    PortForward {
        /// Streaming protocol.
        #[arg(long, value_enum, default_value = "spdy")]
        transport: cli_stream::TransportArg,
        /// Pod id (or unique prefix).
        pod: String,
        /// LOCAL:REMOTE (or PORT for both).
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Resource usage of running containers.
    Stats {
        /// Only this container (id or unique prefix).
        container: Option<String>,
    },
    /// Print container and pod events as they happen (JSON lines).
    Events,
    /// Stop containers.
    Stop {
        /// Seconds between the stop signal and SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        timeout: i64,
        /// Container ids (or unique prefixes).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
        /// Container ids (or unique prefixes).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run the node keeper (started by the daemon; parent of every `linux` container).
    Keeper {
        /// Keeper directory (socket, records, libcontainer state).
        #[arg(long)]
        dir: PathBuf,
        /// Exit after holding no container for this long (0: never).
        #[arg(long, default_value_t = 2000)]
        idle_exit_ms: u64,
        /// error, warn, info, debug, trace, or a tracing filter.
        #[arg(long, default_value = "info", env = "UNICRI_LOG")]
        log_level: String,
    },
    /// Run the `wasm` node keeper (started by the daemon; runs every WebAssembly container as
    /// one of its threads).
    WasmKeeper {
        /// Keeper directory (socket, records, compile cache).
        #[arg(long)]
        dir: PathBuf,
        /// Exit after holding no container for this long (0: never).
        #[arg(long, default_value_t = 2000)]
        idle_exit_ms: u64,
        /// error, warn, info, debug, trace, or a tracing filter.
        #[arg(long, default_value = "info", env = "UNICRI_LOG")]
        log_level: String,
    },
    /// Run one microVM (the `vm` handler's KVM engine; issue 5): its serial console on stdout;
    /// exit 0 when the guest resets or powers off, 2 when it crashes, 1 on a VMM error.
    Vmm {
        /// Guest kernel: ELF vmlinux (PVH entry when it has the note) or bzImage.
        #[arg(long, required_unless_present = "probe")]
        kernel: Option<PathBuf>,
        /// initramfs.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
        cmdline: String,
        /// Memory in MiB.
        #[arg(long, default_value_t = 128)]
        mem_mib: u64,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Print what kind of KVM this host has and exit.
        #[arg(long)]
        probe: bool,
        /// error, warn, info, debug, trace, or a tracing filter.
        #[arg(long, default_value = "warn", env = "UNICRI_LOG")]
        log_level: String,
    },
    /// Image subcommands.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI layout directory, OCI archive or docker-save archive.
    Import {
        /// Path on the daemon's host.
        path: PathBuf,
    },
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Daemon {
        config,
        root,
        state,
        log_level,
        log_format,
    } = cli.command
    {
        init_tracing(&log_level, log_format);
        let cfg = daemon::effective_config(&daemon::Overrides {
            config,
            root,
            state,
            address: cli.address,
        })?;
        return daemon::run(cfg).await;
    }
    let socket = cli
        .address
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_ADDRESS));
    let ch = cli::connect(&socket).await?;
    match cli.command {
        Command::Daemon { .. }
        | Command::Keeper { .. }
        | Command::WasmKeeper { .. }
        | Command::Vmm { .. } => Ok(()),
        Command::Version => cli::version(ch).await,
        Command::Info => cli::info(ch).await,
        Command::Pull { image, creds } => cli::pull(ch, &image, creds.as_deref()).await,
        Command::Images { quiet, digests } => cli::images(ch, quiet, digests).await,
        Command::Inspecti { image } => cli::inspecti(ch, &image).await,
        Command::Rmi { images } => cli::rmi(ch, &images).await,
        Command::Image {
            command: ImageCommand::Import { path },
        } => cli::import(ch, &path).await,
        Command::Pods { quiet } => cli::pods(ch, quiet).await,
        Command::Rmp { ids, all } => cli::rmp(ch, &ids, all).await,
        Command::Run {
            runtime,
            name,
            rm,
            envs,
            log_dir,
            image,
            command,
        } => {
            let opts = cli::RunOpts {
                runtime,
                name,
                rm,
                env: envs,
                log_dir,
                image,
                command,
            };
            cli::run(ch, opts).await
        }
        Command::Ps { all, quiet, pod } => cli::ps(ch, all, quiet, pod.as_deref()).await,
        Command::Logs {
            follow,
            tail,
            container,
        } => cli::logs(ch, &container, follow, tail).await,
        Command::Exec {
            timeout,
            interactive,
            tty,
            transport,
            container,
            command,
        } => {
            if interactive || tty {
                cli_stream::exec(ch, &container, &command, interactive, tty, transport).await
            } else {
                cli::exec(ch, &container, &command, timeout).await
            }
        }
        Command::Attach {
            interactive,
            tty,
            transport,
            container,
        } => cli_stream::attach(ch, &container, interactive, tty, transport).await,
        Command::PortForward {
            transport,
            pod,
            ports,
        } => cli_stream::port_forward(ch, &pod, &ports, transport).await,
        Command::Stats { container } => cli_stream::stats(ch, container.as_deref()).await,
        Command::Events => cli_stream::events(ch).await,
        Command::Stop {
            timeout,
            containers,
        } => cli::stop(ch, &containers, timeout).await,
        Command::Rm { force, containers } => cli::rm(ch, &containers, force).await,
    }
}

/// The keeper runs on one thread with its own runtime: libcontainer forks from it.
fn keeper(dir: PathBuf, idle_exit_ms: u64, log_level: &str) -> anyhow::Result<()> {
    init_tracing(log_level, LogFormat::Text);
    let cfg = unicri_runtime_linux::keeper::server::KeeperConfig {
        dir,
        idle_exit: (idle_exit_ms > 0).then(|| std::time::Duration::from_millis(idle_exit_ms)),
    };
    if !unicri_runtime_linux::keeper::server::run(cfg)? {
        tracing::info!("another keeper owns this directory; exiting");
    }
    Ok(())
}

/// The `wasm` keeper: its own small runtime for the socket, a thread per instance.
fn wasm_keeper(dir: PathBuf, idle_exit_ms: u64, log_level: &str) -> anyhow::Result<()> {
    init_tracing(log_level, LogFormat::Text);
    let cfg = unicri_runtime_wasm::keeper::KeeperConfig {
        dir,
        idle_exit: (idle_exit_ms > 0).then(|| std::time::Duration::from_millis(idle_exit_ms)),
    };
    if !unicri_runtime_wasm::keeper::run(cfg)? {
        tracing::info!("another wasm keeper owns this directory; exiting");
    }
    Ok(())
}

/// `unicri vmm`: one VM in this process, no tokio.
fn vmm(cfg: Option<unicri_vmm::VmConfig>, log_level: &str) -> ExitCode {
    init_tracing(log_level, LogFormat::Text);
    let flavor = unicri_vmm::host::KvmFlavor::detect();
    let Some(cfg) = cfg else {
        println!("{}", flavor.describe());
        return ExitCode::SUCCESS;
    };
    let vm = match unicri_vmm::Vm::new(&cfg, Box::new(std::io::stdout())) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("unicri vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let end = vm.run();
    match &end {
        unicri_vmm::VmExit::Reset => eprintln!("unicri vmm: the guest reset (reboot/power-off)"),
        unicri_vmm::VmExit::Stopped => eprintln!("unicri vmm: stopped through the control channel"),
        unicri_vmm::VmExit::Shutdown => eprintln!("unicri vmm: the guest shut down (crash)"),
        unicri_vmm::VmExit::Error(e) => eprintln!("unicri vmm: {e} ({})", flavor.describe()),
    }
    ExitCode::from(end.code() as u8)
}

fn main() -> ExitCode {
    memory::limit_malloc_arenas();
    let cli = Cli::parse();
    if let Command::Vmm {
        kernel,
        initrd,
        cmdline,
        mem_mib,
        vcpus,
        probe,
        log_level,
    } = cli.command
    {
        let cfg = kernel
            .filter(|_| !probe)
            .map(|kernel| unicri_vmm::VmConfig {
                kernel,
                initrd,
                cmdline,
                mem_mib,
                vcpus,
                ..unicri_vmm::VmConfig::default()
            });
        return vmm(cfg, &log_level);
    }
    let result = match cli.command {
        Command::Keeper {
            dir,
            idle_exit_ms,
            log_level,
        } => keeper(dir, idle_exit_ms, &log_level),
        Command::WasmKeeper {
            dir,
            idle_exit_ms,
            log_level,
        } => wasm_keeper(dir, idle_exit_ms, &log_level),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(cli))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unicri: {e:#}");
            ExitCode::FAILURE
        }
    }
}
