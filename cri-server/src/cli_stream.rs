//! The streaming commands of the CLI: `exec -i/-t`, `attach`, `port-forward`, `stats` and
//! `events`. Sessions go through the daemon's streaming server like kubelet's and crictl's do.
#![allow(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use unicri_proto::{RuntimeServiceClient, v1};
use unicri_streaming::TermSize;
use unicri_streaming::client::{self, Transport};

use crate::cli::{human_size, status_err};

/// `--transport`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TransportArg {
    /// SPDY/3.1 (kubelet's default).
    Spdy,
    /// WebSocket (`v5.channel.k8s.io`).
    Websocket,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Spdy => Transport::Spdy,
            TransportArg::Websocket => Transport::WebSocket,
        }
    }
}

/// The local terminal in raw mode while this lives.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("read terminal settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("set raw terminal")?;
        Ok(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

fn terminal_size() -> Option<TermSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let fd = std::io::stdout().as_raw_fd();
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, valid and exclusively
    // borrowed for the call; `fd` is this process's stdout.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (rc == 0 && ws.ws_col > 0).then_some(TermSize {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}

/// Sends the terminal's size now and after every SIGWINCH.
fn resize_feed() -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(size) = terminal_size() {
            let _ = tx.send(size).await;
        }
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(size) = terminal_size()
                && tx.send(size).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

async fn session(
    url: &str,
    transport: Transport,
    opts: unicri_streaming::Options,
) -> anyhow::Result<i32> {
    let raw = if opts.tty {
        if !std::io::stdin().is_terminal() {
            bail!("-t needs a terminal on stdin");
        }
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    let stdin = opts.stdin.then(tokio::io::stdin);
    let resize = opts.tty.then(resize_feed);
    let trust = client::Trust::Insecure;
    let at = client::Endpoint {
        url,
        trust: &trust,
        transport,
        opts,
    };
    let result =
        client::remote_command(at, stdin, tokio::io::stdout(), tokio::io::stderr(), resize).await;
    drop(raw);
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// The streams of an interactive session: stdout always, stderr unless on a terminal.
fn interactive(stdin: bool, tty: bool) -> unicri_streaming::Options {
    unicri_streaming::Options {
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
    }
}

/// `unicri exec -i/-t`: an interactive exec; exits with the command's exit code.
pub async fn exec(
    ch: Channel,
    container: &str,
    command: &[String],
    stdin: bool,
    tty: bool,
    transport: TransportArg,
) -> anyhow::Result<()> {
    let opts = interactive(stdin, tty);
    let url = RuntimeServiceClient::new(ch)
        .exec(v1::ExecRequest {
            container_id: container.to_string(),
            cmd: command.to_vec(),
            tty,
            stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await
        .map_err(|s| status_err("exec", s))?
        .into_inner()
        .url;
    let code = session(&url, transport.into(), opts).await?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `unicri attach`: joins a running container's stdio.
pub async fn attach(
    ch: Channel,
    container: &str,
    stdin: bool,
    tty: bool,
    transport: TransportArg,
) -> anyhow::Result<()> {
    let opts = interactive(stdin, tty);
    let url = RuntimeServiceClient::new(ch)
        .attach(v1::AttachRequest {
            container_id: container.to_string(),
            stdin,
            tty,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await
        .map_err(|s| status_err("attach", s))?
        .into_inner()
        .url;
    session(&url, transport.into(), opts).await.map(|_| ())
}

/// `unicri port-forward POD LOCAL:REMOTE...`: listens on 127.0.0.1:LOCAL and forwards each
/// connection to REMOTE on the pod's loopback, until interrupted.
pub async fn port_forward(
    ch: Channel,
    pod: &str,
    ports: &[String],
    transport: TransportArg,
) -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    for p in ports {
        let (local, remote) = p.split_once(':').unwrap_or((p.as_str(), p.as_str()));
        let local: u16 = local
            .parse()
            .with_context(|| format!("local port in {p:?}"))?;
        let remote: u16 = remote
            .parse()
            .with_context(|| format!("remote port in {p:?}"))?;
        pairs.push((local, remote));
    }
    let mut rt = RuntimeServiceClient::new(ch);
    let mut tasks = tokio::task::JoinSet::new();
    for (local, remote) in pairs {
        let url = rt
            .port_forward(v1::PortForwardRequest {
                pod_sandbox_id: pod.to_string(),
                port: vec![i32::from(remote)],
            })
            .await
            .map_err(|s| status_err("port-forward", s))?
            .into_inner()
            .url;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listen on 127.0.0.1:{local}"))?;
        let bound = listener.local_addr()?;
        println!("Forwarding from {bound} -> {remote}");
        let transport = transport.into();
        tasks.spawn(async move {
            client::port_forward(&url, &client::Trust::Insecure, transport, remote, listener).await
        });
    }
    tokio::select! {
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => bail!("port-forward: {e}"),
            _ => Ok(()),
        },
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// `unicri stats`: CPU, memory and writable layer of running containers.
pub async fn stats(ch: Channel, container: Option<&str>) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let stats = rt
        .list_container_stats(v1::ListContainerStatsRequest {
            filter: Some(v1::ContainerStatsFilter {
                id: container.unwrap_or_default().to_string(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| status_err("stats", s))?
        .into_inner()
        .stats;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<13} {:<24} {:>8} {:>10} {:>10}",
        "CONTAINER", "NAME", "CPU %", "MEM", "DISK"
    )?;
    for s in stats {
        let attrs = s.attributes.unwrap_or_default();
        let name = attrs.metadata.map(|m| m.name).unwrap_or_default();
        let cpu = s
            .cpu
            .and_then(|c| c.usage_nano_cores)
            .map(|v| format!("{:.2}", v.value as f64 / 1e7))
            .unwrap_or_else(|| "-".into());
        let mem = s
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| human_size(v.value))
            .unwrap_or_else(|| "-".into());
        let disk = s
            .writable_layer
            .and_then(|w| w.used_bytes)
            .map(|v| human_size(v.value))
            .unwrap_or_else(|| "-".into());
        let id: String = attrs.id.chars().take(13).collect();
        writeln!(out, "{id:<13} {name:<24} {cpu:>8} {mem:>10} {disk:>10}")?;
    }
    Ok(())
}

/// `unicri events`: prints container and pod events as they happen (one JSON object per
/// line), until interrupted.
pub async fn events(ch: Channel) -> anyhow::Result<()> {
    let mut stream = RuntimeServiceClient::new(ch)
        .get_container_events(v1::GetEventsRequest {})
        .await
        .map_err(|s| status_err("events", s))?
        .into_inner();
    loop {
        let ev = tokio::select! {
            m = stream.message() => m.map_err(|s| status_err("events", s))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(ev) = ev else { return Ok(()) };
        let kind = v1::ContainerEventType::try_from(ev.container_event_type)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        let pod = ev.pod_sandbox_status.as_ref().map(|p| p.id.clone());
        let line = serde_json::json!({
            "time": ev.created_at,
            "type": kind,
            "id": ev.container_id,
            "pod": pod,
            "containers": ev.containers_statuses.iter().map(|c| serde_json::json!({
                "id": c.id,
                "state": v1::ContainerState::try_from(c.state).map(|s| s.as_str_name()).unwrap_or("?"),
            })).collect::<Vec<_>>(),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}
