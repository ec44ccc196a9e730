//! The daemon's side of the streaming server: [`Streams`] implements
//! [`unicri_streaming::StreamRuntime`] for `linux` pods, bridging a session's stdio to a keeper
//! session (exec, attach) and dialling ports inside a pod's network namespace.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use unicri_runtime_linux::keeper::KeeperSession;
use unicri_runtime_linux::keeper::proto::frame;
use unicri_streaming::{Io, StreamError, StreamRuntime};

use crate::containers::Containers;
use crate::pods::Pods;

/// Streaming for the pods and containers of this daemon.
pub struct Streams {
    /// Containers (and their keeper).
    pub containers: Arc<Containers>,
    /// Pods (for their network namespaces).
    pub pods: Arc<Pods>,
}

/// Aborts its tasks when dropped: a session whose client went away takes its pumps along, which
/// closes the keeper connection (and so kills an exec).
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Carries a session's stdio over a keeper session until the keeper's exit frame.
async fn bridge(session: KeeperSession, io: Io) -> Result<i32, StreamError> {
    let KeeperSession {
        mut reader,
        mut writer,
    } = session;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let mut tasks = Tasks(Vec::new());
    tasks.0.push(
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if writer.write_all(&f).await.is_err() {
                    break;
                }
            }
            // closing the write half tells the keeper the client is gone: hold it until the
            // session ends (this task is aborted then)
            std::future::pending::<()>().await;
            drop(writer);
        })
        .abort_handle(),
    );
    if let Some(mut stdin) = io.stdin {
        let tx = tx.clone();
        tasks.0.push(
            tokio::spawn(async move {
                while let Some(d) = stdin.recv().await {
                    for chunk in d.chunks(frame::MAX) {
                        if tx.send(frame::encode(frame::STDIN, chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send(frame::encode(frame::STDIN_CLOSE, b"")).await;
            })
            .abort_handle(),
        );
    }
    if let Some(mut resize) = io.resize {
        let tx = tx.clone();
        tasks.0.push(
            tokio::spawn(async move {
                while let Some(size) = resize.recv().await {
                    let mut p = size.width.to_be_bytes().to_vec();
                    p.extend_from_slice(&size.height.to_be_bytes());
                    if tx.send(frame::encode(frame::RESIZE, &p)).await.is_err() {
                        return;
                    }
                }
            })
            .abort_handle(),
        );
    }
    // the writer task ends when every sender is gone; this one is not needed any more
    drop(tx);
    let (stdout, stderr) = (io.stdout, io.stderr);
    loop {
        match frame::read(&mut reader).await {
            Ok(Some((frame::STDOUT, d))) => {
                if let Some(o) = &stdout {
                    let _ = o.send(d.into()).await;
                }
            }
            Ok(Some((frame::STDERR, d))) => {
                if let Some(e) = &stderr {
                    let _ = e.send(d.into()).await;
                }
            }
            Ok(Some((frame::EXIT, d))) if d.len() == 4 => {
                return Ok(i32::from_be_bytes([d[0], d[1], d[2], d[3]]));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(StreamError::Failed("the keeper ended the session".into())),
            Err(e) => return Err(StreamError::Failed(format!("keeper session: {e}"))),
        }
    }
}

fn stream_error(e: crate::error::CriError) -> StreamError {
    if e.kind == unicri_sandbox::ErrorKind::NotFound {
        StreamError::NotFound(e.to_string())
    } else {
        StreamError::Failed(e.to_string())
    }
}

#[async_trait::async_trait]
impl StreamRuntime for Streams {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        io: Io,
    ) -> Result<i32, StreamError> {
        let (id, _) = self
            .containers
            .running(container_id)
            .await
            .map_err(stream_error)?;
        let session = self
            .containers
            .open_exec_stream(&id, cmd, tty, io.stdin.is_some())
            .await
            .map_err(stream_error)?;
        bridge(session, io).await
    }

    async fn attach(&self, container_id: &str, _tty: bool, io: Io) -> Result<(), StreamError> {
        let (id, _) = self
            .containers
            .running(container_id)
            .await
            .map_err(stream_error)?;
        let session = self
            .containers
            .open_attach(&id, io.stdin.is_some())
            .await
            .map_err(stream_error)?;
        bridge(session, io).await.map(|_| ())
    }

    async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        let pod = self
            .pods
            .resolve(pod_id)
            .await
            .map_err(stream_error)?
            .ok_or_else(|| StreamError::NotFound(format!("pod sandbox {pod_id} not found")))?;
        if let Some(vm) = &pod.state.vm {
            // the guest's loopback, through its agent
            return self
                .pods
                .vm
                .agent(vm)
                .port_forward(port)
                .await
                .map_err(|e| {
                    StreamError::Failed(format!(
                        "connect to localhost:{port} inside the guest of pod {pod_id}: {e}"
                    ))
                });
        }
        match pod.state.netns.clone() {
            None => dial_loopback(port)
                .await
                .map_err(|e| StreamError::Failed(format!("connect to localhost:{port}: {e}"))),
            Some(netns) => dial_in_netns(netns.clone(), port).await.map_err(|e| {
                StreamError::Failed(format!(
                    "connect to localhost:{port} inside network namespace {}: {e}",
                    netns.display()
                ))
            }),
        }
    }
}

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

async fn dial_loopback(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let v4 = tokio::time::timeout(
        DIAL_TIMEOUT,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    match v4 {
        Ok(s) => Ok(s),
        Err(e) => tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(("::1", port)))
            .await
            .map_err(|_| e)?,
    }
}

/// Connects to the pod's loopback from a thread that joins the pod's network namespace
/// (`network-cni`'s `run_in`: a fresh thread, so no thread of the daemon stays in it; a socket
/// keeps the namespace it was made in).
async fn dial_in_netns(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::task::spawn_blocking(move || {
        unicri_network_cni::run_in(&netns, || {
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT).or_else(|e| {
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e)
            })
        })
        .map_err(std::io::Error::other)
    })
    .await
    .map_err(std::io::Error::other)???;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}
