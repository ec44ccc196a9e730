//! The agent's TCP server on the control link: [`Hello`] first, then the keeper relay, one
//! agent request, a port forward into the pod's netns, or a log follower.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use unicri_vm_agent::proto::{self, GuestStats, Hello, Request, Response, paths};

use super::container::{self, Table};
use super::error::{Error, Result};
use super::{files, logs, ns, pod, resources, stats};

/// The longest first line accepted (a `PrepareContainer` carries files).
const MAX_HELLO: u64 = 64 << 20;
/// How long a client has to send its first line.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `Keeper` connection waits for the keeper's socket.
const KEEPER_WAIT: Duration = Duration::from_secs(5);

/// The agent's state.
#[derive(Default)]
pub struct State {
    /// `Setup` succeeded once.
    pub set_up: AtomicBool,
    /// Mutating requests run one at a time, on a blocking thread, under this lock.
    pub table: tokio::sync::Mutex<Table>,
    /// Containers removed since they were last prepared (log followers waiting for a file
    /// that will never come end).
    pub removed: Mutex<HashSet<String>>,
}

impl State {
    fn is_removed(&self, id: &str) -> bool {
        self.removed.lock().map(|r| r.contains(id)).unwrap_or(false)
    }
    fn mark_removed(&self, id: &str, removed: bool) {
        if let Ok(mut r) = self.removed.lock() {
            if removed {
                r.insert(id.to_string());
            } else {
                r.remove(id);
            }
        }
    }
}

/// Only the host end of the control link may talk to the agent.
pub fn peer_allowed(peer: &SocketAddr) -> bool {
    let host: Ipv4Addr = match proto::HOST_CTL_IP.parse() {
        Ok(ip) => ip,
        Err(_) => return false,
    };
    match peer.ip() {
        IpAddr::V4(ip) => ip == host,
        IpAddr::V6(ip) => ip.to_ipv4_mapped() == Some(host),
    }
}

/// Bind `addr` (retrying until the control address exists).
pub async fn bind(addr: SocketAddr) -> TcpListener {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(%addr, "agent serving");
    listener
}

/// Accept on `listener` forever.
pub async fn serve_on(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !peer_allowed(&peer) {
            tracing::warn!(%peer, "refused a connection from a peer other than the host");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, state).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Read the first line (without reading past it).
async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut limited = (&mut *reader).take(MAX_HELLO);
    let n = limited.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && n as u64 >= MAX_HELLO {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "first line too long",
        ));
    }
    Ok(Some(line))
}

async fn handle(stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let line = match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut reader)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let Some(line) = line else { return Ok(()) };
    let hello: Hello = match serde_json::from_slice(&line) {
        Ok(h) => h,
        Err(e) => {
            let err = Error::invalid(format!("bad first line: {e}"));
            return write_line(&mut reader, &err.into_response()).await;
        }
    };
    match hello {
        Hello::Keeper => relay_keeper(reader).await,
        Hello::Agent { request } => {
            let shutdown = matches!(request, Request::Shutdown);
            let response = dispatch(&state, request).await;
            tracing::debug!(?response, "answered");
            write_line(&mut reader, &response).await?;
            if shutdown && response == Response::Ok {
                power_off().await;
            }
            Ok(())
        }
        Hello::PortForward { port } => port_forward(reader, port).await,
        Hello::Logs { id, offset } => {
            if let Err(e) = container::validate_id(&id) {
                return write_line(&mut reader, &e.into_response()).await;
            }
            write_line(&mut reader, &Response::Ok).await?;
            let (mut rd, mut wr) = reader.into_inner().into_split();
            let path = paths::log(&id);
            let st = state.clone();
            tokio::select! {
                r = logs::follow(Path::new(&path), offset, &mut wr, || st.is_removed(&id), logs::POLL) => {
                    r?;
                    wr.shutdown().await
                }
                // the host went away: stop following
                _ = async { let mut b = [0u8; 512]; while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {} } => Ok(()),
            }
        }
    }
}

async fn relay_keeper(mut client: BufReader<TcpStream>) -> std::io::Result<()> {
    let socket = Path::new(paths::KEEPER_DIR).join("keeper.sock");
    let start = tokio::time::Instant::now();
    let mut keeper = loop {
        match UnixStream::connect(&socket).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() < KEEPER_WAIT => {
                tracing::trace!(error = %e, "keeper socket not ready");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => {
                // the keeper protocol's error line has the same shape
                let err = Error::new(
                    super::error::Kind::FailedPrecondition,
                    format!(
                        "the guest keeper is not serving at {}: {e}",
                        socket.display()
                    ),
                );
                return write_line(&mut client, &err.into_response()).await;
            }
        }
    };
    tokio::io::copy_bidirectional(&mut client, &mut keeper)
        .await
        .map(|_| ())
}

async fn port_forward(mut client: BufReader<TcpStream>, port: u16) -> std::io::Result<()> {
    let dialed = tokio::task::spawn_blocking(move || {
        ns::in_pod_netns(move || {
            let s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| {
                let what = format!("connect to 127.0.0.1:{port} in the pod's netns: {e}");
                match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Error::precondition(what),
                    _ => Error::internal(what),
                }
            })?;
            s.set_nonblocking(true)
                .map_err(|e| Error::io("make the forwarded socket non-blocking", &e))?;
            Ok(s)
        })
    })
    .await
    .map_err(|e| Error::internal(format!("port-forward dialer: {e}")))
    .and_then(|r| r);
    let upstream = match dialed {
        Ok(s) => s,
        Err(e) => return write_line(&mut client, &e.into_response()).await,
    };
    let mut upstream = TcpStream::from_std(upstream)?;
    write_line(&mut client, &Response::Ok).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map(|_| ())
}

/// Answer one agent request.
pub async fn dispatch(state: &Arc<State>, request: Request) -> Response {
    let op = op_name(&request);
    let result = run(state, request).await;
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(op, kind = e.kind.as_str(), error = %e.message, "request failed");
            e.into_response()
        }
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Health => "health",
        Request::Setup(_) => "setup",
        Request::PrepareContainer(_) => "prepare_container",
        Request::PutFiles { .. } => "put_files",
        Request::RemoveContainer { .. } => "remove_container",
        Request::UpdateResources { .. } => "update_resources",
        Request::Stats { .. } => "stats",
        Request::LogSize { .. } => "log_size",
        Request::Shutdown => "shutdown",
    }
}

/// Run `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker thread: {e}")))?
}

async fn run(state: &Arc<State>, request: Request) -> Result<Response> {
    match request {
        Request::Health => {
            let uptime = tokio::fs::read_to_string("/proc/uptime")
                .await
                .ok()
                .and_then(|t| stats::parse_uptime(&t))
                .unwrap_or(0.0);
            tracing::trace!("health");
            Ok(Response::Health {
                version: proto::PROTOCOL_VERSION,
                uptime_s: uptime,
                set_up: state.set_up.load(Ordering::SeqCst),
            })
        }
        Request::Setup(setup) => {
            tracing::info!(pod_id = %setup.pod_id, interfaces = setup.interfaces.len(), "setup");
            let _guard = state.table.lock().await;
            blocking(move || pod::setup(&setup)).await?;
            state.set_up.store(true, Ordering::SeqCst);
            Ok(Response::Ok)
        }
        Request::PrepareContainer(req) => {
            tracing::info!(container_id = %req.id, device = %req.image_device, "prepare container");
            container::validate(&req)?;
            container::wait_for_device(&req.image_device, container::DEVICE_WAIT).await?;
            let mut table = state.table.lock().await;
            let mut owned = std::mem::take(&mut *table);
            let id = req.id.clone();
            let (owned_back, result) = tokio::task::spawn_blocking(move || {
                let r = container::prepare(&mut owned, &req);
                (owned, r)
            })
            .await
            .map_err(|e| Error::internal(format!("worker thread: {e}")))?;
            *table = owned_back;
            if result.is_ok() {
                state.mark_removed(&id, false);
            }
            result
        }
        Request::PutFiles { files: entries } => {
            tracing::info!(files = entries.len(), "put files");
            files::validate(&entries)?;
            let _guard = state.table.lock().await;
            blocking(move || files::write_entries(Path::new("/"), &entries)).await?;
            Ok(Response::Ok)
        }
        Request::RemoveContainer { id } => {
            tracing::info!(container_id = %id, "remove container");
            container::validate_id(&id)?;
            let mut table = state.table.lock().await;
            let mut owned = std::mem::take(&mut *table);
            let rid = id.clone();
            let (owned_back, result) = tokio::task::spawn_blocking(move || {
                let r = container::remove(&mut owned, &rid);
                (owned, r)
            })
            .await
            .map_err(|e| Error::internal(format!("worker thread: {e}")))?;
            *table = owned_back;
            result?;
            state.mark_removed(&id, true);
            Ok(Response::Ok)
        }
        Request::UpdateResources { id, resources: r } => {
            tracing::info!(container_id = %id, resources = ?r, "update resources");
            container::validate_id(&id)?;
            let _guard = state.table.lock().await;
            blocking(move || resources::apply(Path::new(&container::cgroup_dir(&id)), &r)).await?;
            Ok(Response::Ok)
        }
        Request::Stats { ids } => {
            tracing::trace!(containers = ids.len(), "stats");
            blocking(move || Ok(Response::Stats(guest_stats(&ids)))).await
        }
        Request::LogSize { id } => {
            container::validate_id(&id)?;
            let bytes = match tokio::fs::metadata(paths::log(&id)).await {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => {
                    return Err(Error::internal(format!("stat {}: {e}", paths::log(&id))));
                }
            };
            Ok(Response::LogSize { bytes })
        }
        Request::Shutdown => {
            tracing::info!("shutdown");
            if std::process::id() != 1 {
                return Err(Error::precondition(
                    "not PID 1 of a guest: refusing to power off",
                ));
            }
            Ok(Response::Ok)
        }
    }
}

fn guest_stats(ids: &[String]) -> GuestStats {
    let (mem_total, mem_available) = std::fs::read_to_string("/proc/meminfo")
        .map(|t| stats::parse_meminfo(&t))
        .unwrap_or((0, 0));
    let mut out = GuestStats {
        mem_total,
        mem_available,
        ..GuestStats::default()
    };
    for id in ids {
        if container::validate_id(id).is_err() {
            continue;
        }
        let bundle = paths::bundle(id);
        if !Path::new(&bundle).is_dir() {
            continue;
        }
        let usage = stats::container_usage(
            Path::new(&container::cgroup_dir(id)),
            &Path::new(&bundle).join("upper"),
        );
        out.containers.insert(id.clone(), usage);
    }
    out
}

async fn power_off() {
    tracing::info!("powering off");
    let _ = tokio::task::spawn_blocking(|| {
        nix::unistd::sync();
        let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        tracing::error!(error = %e, "power off failed");
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_vm_agent::proto::{FileEntry, PodSetup, PrepareContainer};

    #[test]
    fn peers() {
        assert!(peer_allowed(&"169.254.100.1:40000".parse().unwrap()));
        assert!(peer_allowed(
            &"[::ffff:169.254.100.1]:40000".parse().unwrap()
        ));
        assert!(!peer_allowed(&"169.254.100.2:40000".parse().unwrap()));
        assert!(!peer_allowed(&"127.0.0.1:40000".parse().unwrap()));
        assert!(!peer_allowed(&"[::1]:40000".parse().unwrap()));
    }

    #[test]
    fn wire_round_trip() {
        let hellos = vec![
            Hello::Keeper,
            Hello::Agent {
                request: Request::Health,
            },
            Hello::Agent {
                request: Request::Setup(PodSetup {
                    pod_id: "p".into(),
                    hostname: "h".into(),
                    shm_size: 1 << 20,
                    ..PodSetup::default()
                }),
            },
            Hello::Agent {
                request: Request::PrepareContainer(PrepareContainer {
                    id: "c".into(),
                    image_device: "/dev/vdb".into(),
                    image_fstype: "erofs".into(),
                    config_json: "{}".into(),
                    files: vec![FileEntry {
                        path: "/x".into(),
                        kind: "file".into(),
                        mode: 0o644,
                        data: "aGk=".into(),
                    }],
                }),
            },
            Hello::Agent {
                request: Request::RemoveContainer { id: "c".into() },
            },
            Hello::Agent {
                request: Request::Stats {
                    ids: vec!["c".into()],
                },
            },
            Hello::Agent {
                request: Request::UpdateResources {
                    id: "c".into(),
                    resources: proto::Resources {
                        memory_limit_bytes: 1 << 20,
                        cpu_quota: 50_000,
                        cpu_period: 100_000,
                        ..proto::Resources::default()
                    },
                },
            },
            Hello::Agent {
                request: Request::Shutdown,
            },
            Hello::PortForward { port: 8080 },
            Hello::Logs {
                id: "c".into(),
                offset: 10,
            },
        ];
        for h in hellos {
            let line = serde_json::to_string(&h).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Hello>(&line).unwrap(), h);
        }
        // the shapes the host writes
        assert_eq!(
            serde_json::from_str::<Hello>(r#"{"svc":"agent","request":{"op":"health"}}"#).unwrap(),
            Hello::Agent {
                request: Request::Health
            }
        );
        assert_eq!(
            serde_json::from_str::<Hello>(
                r#"{"svc":"agent","request":{"op":"update_resources","id":"a","resources":{"pids_limit":5}}}"#
            )
            .unwrap(),
            Hello::Agent {
                request: Request::UpdateResources {
                    id: "a".into(),
                    resources: proto::Resources {
                        pids_limit: 5,
                        ..proto::Resources::default()
                    }
                }
            }
        );
        assert_eq!(
            serde_json::from_str::<Hello>(r#"{"svc":"logs","id":"a","offset":0}"#).unwrap(),
            Hello::Logs {
                id: "a".into(),
                offset: 0
            }
        );
        let responses = vec![
            Response::Ok,
            Error::not_found("x").into_response(),
            Response::Health {
                version: 1,
                uptime_s: 1.5,
                set_up: true,
            },
            Response::Prepared {
                bundle: "/b".into(),
                log_path: "/l".into(),
                cgroup_dir: "/c".into(),
            },
            Response::Stats(GuestStats::default()),
        ];
        for r in responses {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Error::invalid("bad").into_response()).unwrap(),
            r#"{"result":"error","kind":"invalid_argument","message":"bad"}"#
        );
    }

    #[tokio::test]
    async fn serves_health_and_rejects_garbage() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        // exercise the connection handler directly (the peer filter would refuse 127.0.0.1)
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move { handle(s, st).await });
            }
        });
        let ask = |line: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(line.as_bytes()).await.unwrap();
            let mut out = String::new();
            BufReader::new(s).read_line(&mut out).await.unwrap();
            serde_json::from_str::<Response>(&out).unwrap()
        };
        match ask("{\"svc\":\"agent\",\"request\":{\"op\":\"health\"}}\n").await {
            Response::Health {
                version, set_up, ..
            } => {
                assert_eq!(version, proto::PROTOCOL_VERSION);
                assert!(!set_up);
            }
            other => panic!("{other:?}"),
        }
        match ask("{\"svc\":\"nope\"}\n").await {
            Response::Error { kind, .. } => assert_eq!(kind, "invalid_argument"),
            other => panic!("{other:?}"),
        }
        match ask("{\"svc\":\"agent\",\"request\":{\"op\":\"remove_container\",\"id\":\"../x\"}}\n")
            .await
        {
            Response::Error { kind, .. } => assert_eq!(kind, "invalid_argument"),
            other => panic!("{other:?}"),
        }
        // not PID 1: no power off
        match ask("{\"svc\":\"agent\",\"request\":{\"op\":\"shutdown\"}}\n").await {
            Response::Error { kind, .. } => assert_eq!(kind, "failed_precondition"),
            other => panic!("{other:?}"),
        }
        // no pod netns on this host
        match ask("{\"svc\":\"port_forward\",\"port\":1}\n").await {
            Response::Error { kind, .. } => assert_eq!(kind, "failed_precondition"),
            other => panic!("{other:?}"),
        }
    }
}
