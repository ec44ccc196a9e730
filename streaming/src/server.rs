//! The streaming server: the CRI Exec/Attach/PortForward calls register a request and get a
//! one-time URL; the client upgrades that URL to SPDY/3.1 or a WebSocket and the session runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::http::{self, Prefixed};
use crate::remotecommand::{self, Options, Target};
use crate::runtime::StreamRuntime;
use crate::{portforward, spdy, ws};

/// How long a URL may wait for its client (kubelet's streaming cache uses one minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Outstanding URLs at most (kubelet's limit too).
pub const MAX_TOKENS: usize = 1000;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A registered, not yet used, streaming request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// CRI Exec.
    Exec {
        /// Container id.
        container_id: String,
        /// Command.
        cmd: Vec<String>,
        /// Streams.
        opts: Options,
    },
    /// CRI Attach.
    Attach {
        /// Container id.
        container_id: String,
        /// Streams.
        opts: Options,
    },
    /// CRI PortForward.
    PortForward {
        /// Pod id.
        pod_id: String,
        /// Ports named by the request (empty: any).
        ports: Vec<u16>,
    },
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

/// Registering failed.
#[derive(Debug, thiserror::Error)]
#[error("too many streaming requests are waiting for their client ({MAX_TOKENS})")]
pub struct TooManyRequests;

struct Inner {
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
    base_url: String,
    runtime: Arc<dyn StreamRuntime>,
}

/// A running streaming server (cheap to clone).
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

/// The server's certificate and key (PEM), for HTTPS URLs.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key (PKCS#8), PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity")
    }
}

impl Server {
    /// Binds `addr` (port 0: any) and serves on the current runtime until the process ends;
    /// with `tls`, over HTTPS (the URLs say `https`).
    pub async fn start(
        addr: SocketAddr,
        runtime: Arc<dyn StreamRuntime>,
        tls: Option<TlsIdentity>,
    ) -> std::io::Result<Self> {
        let acceptor = match tls {
            Some(id) => {
                let identity = native_tls::Identity::from_pkcs8(&id.cert_pem, &id.key_pem)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let acceptor = native_tls::TlsAcceptor::new(identity)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Some(tokio_native_tls::TlsAcceptor::from(acceptor))
            }
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let inner = Arc::new(Inner {
            tokens: Mutex::new(HashMap::new()),
            base_url: format!("{scheme}://{host}:{}", addr.port()),
            runtime,
        });
        let accept = inner.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let inner = accept.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            let result = match acceptor {
                                Some(a) => {
                                    match tokio::time::timeout(HEAD_TIMEOUT, a.accept(stream)).await
                                    {
                                        Ok(Ok(tls)) => serve_conn(inner, tls).await,
                                        Ok(Err(e)) => Err(std::io::Error::other(e)),
                                        Err(_) => Ok(()),
                                    }
                                }
                                None => serve_conn(inner, stream).await,
                            };
                            if let Err(error) = result {
                                tracing::debug!(%peer, %error, "streaming connection failed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "streaming server accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(%addr, "streaming server listening");
        Ok(Self { inner, addr })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers `req` and returns its one-time URL.
    pub fn register(&self, req: Pending) -> Result<String, TooManyRequests> {
        let mut tokens = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_TTL);
        if tokens.len() >= MAX_TOKENS {
            return Err(TooManyRequests);
        }
        let token: String = {
            use base64::Engine;
            let raw: [u8; 12] = rand::random();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        };
        let url = format!("{}/{}/{}", self.inner.base_url, req.path(), token);
        tokens.insert(token, (req, Instant::now()));
        Ok(url)
    }

    /// Requests registered and not yet used (or expired).
    pub fn outstanding(&self) -> usize {
        let mut tokens = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_TTL);
        tokens.len()
    }
}

impl Inner {
    fn consume(&self, path: &str) -> Option<Pending> {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next()?, parts.next()?);
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (pending, at) = tokens.remove(token)?;
        (pending.path() == kind && at.elapsed() < TOKEN_TTL).then_some(pending)
    }
}

/// The client's first protocol that is in `ours`.
fn negotiate(theirs: &[String], ours: &[&str]) -> Option<String> {
    theirs.iter().find(|t| ours.contains(&t.as_str())).cloned()
}

/// A connection: TCP, or TLS over it.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Conn for T {}

async fn serve_conn<S: Conn>(inner: Arc<Inner>, mut stream: S) -> std::io::Result<()> {
    let req = match tokio::time::timeout(HEAD_TIMEOUT, http::read_request(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let _ = http::respond(&mut stream, 400, "Bad Request", &e.to_string()).await;
            return Err(e);
        }
        Err(_) => return Ok(()),
    };
    let Some(pending) = inner.consume(&req.path) else {
        return http::respond(
            &mut stream,
            404,
            "Not Found",
            "unknown or expired streaming URL (each URL serves one session)",
        )
        .await;
    };
    let runtime = inner.runtime.clone();
    match req.upgrade().as_deref() {
        Some("spdy/3.1") => serve_spdy(stream, req, pending, runtime).await,
        Some("websocket") => serve_ws(stream, req, pending, runtime).await,
        _ => {
            http::respond(
                &mut stream,
                400,
                "Bad Request",
                "streaming needs an upgrade to SPDY/3.1 or websocket",
            )
            .await
        }
    }
}

async fn serve_spdy<S: Conn>(
    mut stream: S,
    req: http::Request,
    pending: Pending,
    runtime: Arc<dyn StreamRuntime>,
) -> std::io::Result<()> {
    let offered = req.values("x-stream-protocol-version");
    let ours: &[&str] = match pending {
        Pending::PortForward { .. } => &[portforward::PROTOCOL],
        _ => remotecommand::SPDY_PROTOCOLS,
    };
    let protocol = if offered.is_empty() {
        // clients that name no version speak the oldest one
        match pending {
            Pending::PortForward { .. } => portforward::PROTOCOL.to_string(),
            _ => "channel.k8s.io".to_string(),
        }
    } else if let Some(p) = negotiate(&offered, ours) {
        p
    } else {
        let msg = format!(
            "unable to upgrade: none of the offered protocols {offered:?} is supported ({ours:?})"
        );
        return http::respond(&mut stream, 403, "Forbidden", &msg).await;
    };
    http::switch(
        &mut stream,
        &[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", &protocol),
        ],
    )
    .await?;
    let conn = spdy::Connection::new(Prefixed::new(req.leftover, stream), spdy::Role::Server);
    match pending {
        Pending::Exec {
            container_id,
            cmd,
            opts,
        } => {
            let target = Target::Exec { container_id, cmd };
            remotecommand::serve_spdy(conn, &protocol, opts, target, runtime).await;
        }
        Pending::Attach { container_id, opts } => {
            let target = Target::Attach { container_id };
            remotecommand::serve_spdy(conn, &protocol, opts, target, runtime).await;
        }
        Pending::PortForward { pod_id, ports } => {
            portforward::serve(conn, pod_id, ports, runtime).await;
        }
    }
    Ok(())
}

async fn serve_ws<S: Conn>(
    mut stream: S,
    req: http::Request,
    pending: Pending,
    runtime: Arc<dyn StreamRuntime>,
) -> std::io::Result<()> {
    let Some(key) = req.header("sec-websocket-key").map(str::to_string) else {
        return http::respond(&mut stream, 400, "Bad Request", "no Sec-WebSocket-Key").await;
    };
    let offered = req.values("sec-websocket-protocol");
    let tunnel = format!("SPDY/3.1+{}", portforward::PROTOCOL);
    let ours: Vec<&str> = match pending {
        Pending::PortForward { .. } => vec![tunnel.as_str()],
        _ => remotecommand::WS_PROTOCOLS.to_vec(),
    };
    let Some(protocol) = negotiate(&offered, &ours) else {
        let msg = format!(
            "unable to upgrade: none of the offered subprotocols {offered:?} is supported ({ours:?})"
        );
        return http::respond(&mut stream, 400, "Bad Request", &msg).await;
    };
    http::switch(
        &mut stream,
        &[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Accept", &ws::accept_key(&key)),
            ("Sec-WebSocket-Protocol", &protocol),
        ],
    )
    .await?;
    let (rx, tx) = ws::split(stream, ws::Role::Server, req.leftover);
    match pending {
        Pending::Exec {
            container_id,
            cmd,
            opts,
        } => {
            let target = Target::Exec { container_id, cmd };
            remotecommand::serve_ws(rx, tx, &protocol, opts, target, runtime).await;
        }
        Pending::Attach { container_id, opts } => {
            let target = Target::Attach { container_id };
            remotecommand::serve_ws(rx, tx, &protocol, opts, target, runtime).await;
        }
        Pending::PortForward { pod_id, ports } => {
            let conn = spdy::Connection::new(ws::tunnel(rx, tx), spdy::Role::Server);
            portforward::serve(conn, pod_id, ports, runtime).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported() {
        let theirs: Vec<String> = [
            "v9.channel.k8s.io",
            "v3.channel.k8s.io",
            "v4.channel.k8s.io",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            negotiate(&theirs, remotecommand::SPDY_PROTOCOLS).as_deref(),
            Some("v3.channel.k8s.io")
        );
        assert_eq!(negotiate(&theirs[..1], remotecommand::SPDY_PROTOCOLS), None);
    }
}
