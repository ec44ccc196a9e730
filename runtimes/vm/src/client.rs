//! The daemon's client of the guest agent ([`proto`]): TCP to
//! [`proto::GUEST_CTL_IP`]`:`[`proto::AGENT_PORT`] over the pod's control link.
//!
//! The control tap lives in the pod's network namespace, and a socket belongs to the netns it
//! was created in: each connection's socket is created on a short-lived dedicated thread that
//! enters the netns (the daemon's tokio threads never change namespace), then connected and
//! used from tokio.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use unicri_vm_agent::proto;

use crate::error::VmError;

/// How long [`AgentClient::wait_ready`] waits for one connection attempt (a SYN that got no
/// answer by then is given up for a fresh one).
pub const CONNECT_ATTEMPT: Duration = Duration::from_millis(50);

/// The agent of one pod's guest.
#[derive(Clone, Debug)]
pub struct AgentClient {
    netns: PathBuf,
    timeout: Duration,
}

fn agent_addr() -> SocketAddr {
    let ip: Ipv4Addr = proto::GUEST_CTL_IP
        .parse()
        .unwrap_or(Ipv4Addr::new(169, 254, 100, 2));
    SocketAddr::from((ip, proto::AGENT_PORT))
}

/// A TCP socket created inside the netns pinned at `netns`, on a thread of its own.
async fn socket_in(netns: &Path) -> std::io::Result<TcpSocket> {
    let netns = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vm-agent-sock".into())
        .spawn(move || {
            let made = (|| -> std::io::Result<std::net::TcpStream> {
                let ns = std::fs::File::open(&netns).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("open netns {}: {e}", netns.display()))
                })?;
                // this thread only: it ends right after
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let fd = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC
                        | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                    None,
                )?;
                Ok(std::net::TcpStream::from(fd))
            })();
            let _ = tx.send(made);
        })?;
    let std_sock = rx
        .await
        .map_err(|_| std::io::Error::other("socket thread ended without an answer"))??;
    Ok(TcpSocket::from_std_stream(std_sock))
}

impl AgentClient {
    /// A client for the guest behind the netns pinned at `netns`, with a 10 s timeout per
    /// request.
    pub fn new(netns: impl Into<PathBuf>) -> AgentClient {
        AgentClient {
            netns: netns.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    /// Connects to the agent and sends `hello`; the connection is then the hello's (see
    /// [`proto`]).
    pub async fn connect(&self, hello: &proto::Hello) -> std::io::Result<TcpStream> {
        let sock = socket_in(&self.netns).await?;
        let mut stream = sock.connect(agent_addr()).await?;
        stream.set_nodelay(true)?;
        let mut line = serde_json::to_vec(hello).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        Ok(stream)
    }

    async fn with_timeout_of<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, VmError>>,
    ) -> Result<T, VmError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| VmError::Timeout {
                what,
                ms: self.timeout.as_millis() as u64,
            })?
    }

    /// One agent request. An `error` answer is [`VmError::Agent`] (classified by its kind);
    /// every other answer is returned.
    pub async fn request(&self, req: proto::Request) -> Result<proto::Response, VmError> {
        self.with_timeout_of("agent request", async {
            let stream = self
                .connect(&proto::Hello::Agent { request: req })
                .await
                .map_err(|source| VmError::AgentIo {
                    op: "connect",
                    source,
                })?;
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .await
                .map_err(|source| VmError::AgentIo { op: "read", source })?;
            parse_response(&line)
        })
        .await
    }

    /// Polls [`proto::Request::Health`] until the agent answers (or `timeout` runs out);
    /// returns the `Health` answer.
    ///
    /// A SYN sent before the guest has its control address (or before the agent listens)
    /// is lost, and TCP would send it again only after a second: each connection attempt
    /// gets [`CONNECT_ATTEMPT`], then a fresh socket sends a fresh SYN. A connection that
    /// was made waits for the answer longer (250 ms, doubling up to 2 s), so a slow but live
    /// guest still gets through.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<proto::Response, VmError> {
        let deadline = Instant::now() + timeout;
        let hello = proto::Hello::Agent {
            request: proto::Request::Health,
        };
        let mut answer_wait = Duration::from_millis(250);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                let stream = tokio::time::timeout(CONNECT_ATTEMPT.min(left), self.connect(&hello))
                    .await
                    .map_err(|_| VmError::Timeout {
                        what: "agent connect",
                        ms: CONNECT_ATTEMPT.as_millis() as u64,
                    })?
                    .map_err(|source| VmError::AgentIo {
                        op: "connect",
                        source,
                    })?;
                let wait = answer_wait.min(left);
                answer_wait = (answer_wait * 2).min(Duration::from_secs(2));
                let mut line = String::new();
                tokio::time::timeout(wait, BufReader::new(stream).read_line(&mut line))
                    .await
                    .map_err(|_| VmError::Timeout {
                        what: "agent health answer",
                        ms: wait.as_millis() as u64,
                    })?
                    .map_err(|source| VmError::AgentIo { op: "read", source })?;
                parse_response(&line)
            };
            match attempt.await {
                Ok(r @ proto::Response::Health { .. }) => return Ok(r),
                Ok(other) => {
                    return Err(VmError::AgentUnexpected {
                        request: "health",
                        answer: serde_json::to_string(&other).unwrap_or_default(),
                    });
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        tracing::debug!(error = %e, "agent not ready");
                        return Err(VmError::Timeout {
                            what: "agent health",
                            ms: timeout.as_millis() as u64,
                        });
                    }
                    tracing::trace!(error = %e, "agent not ready yet");
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A connection to `port` on the pod's loopback in the guest (after the agent's `ok`).
    pub async fn port_forward(&self, port: u16) -> Result<TcpStream, VmError> {
        self.stream(&proto::Hello::PortForward { port }, true).await
    }

    /// The bytes of container `id`'s guest log from `offset` on, followed as it grows.
    pub async fn logs(&self, id: &str, offset: u64) -> Result<TcpStream, VmError> {
        self.stream(
            &proto::Hello::Logs {
                id: id.to_string(),
                offset,
            },
            true,
        )
        .await
    }

    /// A connection relayed to the guest keeper (the `linux` keeper protocol from here on).
    pub async fn keeper_stream(&self) -> Result<TcpStream, VmError> {
        self.stream(&proto::Hello::Keeper, false).await
    }

    async fn stream(&self, hello: &proto::Hello, wants_ok: bool) -> Result<TcpStream, VmError> {
        self.with_timeout_of("agent stream", async {
            let mut stream = self
                .connect(hello)
                .await
                .map_err(|source| VmError::AgentIo {
                    op: "connect",
                    source,
                })?;
            if wants_ok {
                // byte by byte: what follows the line belongs to the caller
                let mut line = Vec::new();
                loop {
                    let b = stream
                        .read_u8()
                        .await
                        .map_err(|source| VmError::AgentIo { op: "read", source })?;
                    if b == b'\n' {
                        break;
                    }
                    line.push(b);
                    if line.len() > 64 * 1024 {
                        return Err(VmError::AgentIo {
                            op: "read",
                            source: std::io::Error::other("answer line too long"),
                        });
                    }
                }
                match parse_response(&String::from_utf8_lossy(&line))? {
                    proto::Response::Ok => {}
                    other => {
                        return Err(VmError::AgentUnexpected {
                            request: "stream",
                            answer: serde_json::to_string(&other).unwrap_or_default(),
                        });
                    }
                }
            }
            Ok(stream)
        })
        .await
    }
}

fn parse_response(line: &str) -> Result<proto::Response, VmError> {
    if line.trim().is_empty() {
        return Err(VmError::AgentIo {
            op: "read",
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ),
        });
    }
    match serde_json::from_str::<proto::Response>(line.trim()) {
        Ok(proto::Response::Error { kind, message }) => Err(VmError::Agent { kind, message }),
        Ok(r) => Ok(r),
        Err(e) => Err(VmError::AgentIo {
            op: "parse answer",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::{Classify, ErrorKind};

    #[test]
    fn responses_parse() {
        assert_eq!(
            parse_response("{\"result\":\"ok\"}\n").expect("ok"),
            proto::Response::Ok
        );
        let e = parse_response(r#"{"result":"error","kind":"not_found","message":"x"}"#)
            .expect_err("error");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            parse_response("").expect_err("eof").kind(),
            ErrorKind::Unavailable
        );
    }
}
