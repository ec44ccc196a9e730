//! The client side of the streaming protocols (for `unicri exec/attach/port-forward` and the
//! end-to-end tests): a remotecommand session over SPDY (`v4.channel.k8s.io`) or WebSocket
//! (`v5.channel.k8s.io`), and port-forward over SPDY or SPDY tunnelled through a WebSocket.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::runtime::TermSize;
use crate::{Options, spdy, ws};

/// Which protocol family to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 (client-go's default).
    Spdy,
    /// WebSocket.
    WebSocket,
}

/// A failed session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transport trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server refused the upgrade.
    #[error("upgrade refused: HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The server reported a failure on the error stream.
    #[error("{0}")]
    Remote(String),
}

/// A connection to the streaming server: TCP, or TLS over it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// How `https` URLs are trusted.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// The system's CA roots.
    #[default]
    System,
    /// This CA certificate (PEM) too.
    Ca(Vec<u8>),
    /// Any certificate (as crictl and critest do: the URL came from the runtime over its
    /// root-only socket).
    Insecure,
}

fn split_url(url: &str) -> Result<(bool, String, String), ClientError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(ClientError::Remote(format!(
            "unsupported streaming URL {url}"
        )));
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((tls, host.to_string(), format!("/{path}")))
}

async fn connect(url: &str, trust: &Trust) -> Result<(Box<dyn Conn>, String, String), ClientError> {
    let (tls, host, path) = split_url(url)?;
    let tcp = TcpStream::connect(&host).await?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok((Box::new(tcp), host, path));
    }
    let mut b = native_tls::TlsConnector::builder();
    match trust {
        Trust::System => {}
        Trust::Ca(pem) => {
            let ca = native_tls::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Remote(format!("CA certificate: {e}")))?;
            b.add_root_certificate(ca);
        }
        Trust::Insecure => {
            b.danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
    }
    let connector = b
        .build()
        .map_err(|e| ClientError::Remote(format!("TLS setup: {e}")))?;
    let name = host
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&host)
        .to_string();
    let stream = tokio_native_tls::TlsConnector::from(connector)
        .connect(&name, tcp)
        .await
        .map_err(|e| ClientError::Remote(format!("TLS handshake with {host}: {e}")))?;
    Ok((Box::new(stream), host, path))
}

/// Sends an upgrade request; on `101` returns the connection, the bytes read past the response
/// head and the response headers.
async fn upgrade(
    url: &str,
    trust: &Trust,
    method: &str,
    headers: &[(&str, String)],
) -> Result<(Box<dyn Conn>, Bytes, Vec<(String, String)>), ClientError> {
    let (mut s, host, path) = connect(url, trust).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut buf = bytes::BytesMut::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::Remote(
                "connection closed during upgrade".into(),
            ));
        }
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        match resp
            .parse(&buf)
            .map_err(|e| ClientError::Remote(format!("bad upgrade response: {e}")))?
        {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(n) => {
                let status = resp.code.unwrap_or(0);
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let rest = buf.split_off(n).freeze();
                if status != 101 {
                    let mut body = rest.to_vec();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        s.read_to_end(&mut body),
                    )
                    .await;
                    return Err(ClientError::Refused {
                        status,
                        body: String::from_utf8_lossy(&body).trim().to_string(),
                    });
                }
                return Ok((s, rest, headers));
            }
        }
    }
}

fn ws_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// Decodes the error stream's `metav1.Status`: the exit code, or the failure.
fn exit_code(status: &[u8]) -> Result<i32, ClientError> {
    if status.is_empty() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|_| ClientError::Remote(String::from_utf8_lossy(status).into_owned()))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode"
        && let Some(code) = v["details"]["causes"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    {
        return Ok(code);
    }
    Err(ClientError::Remote(
        v["message"]
            .as_str()
            .unwrap_or("remote failure")
            .to_string(),
    ))
}

/// Where and how a remotecommand session connects.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    /// The URL the CRI call returned.
    pub url: &'a str,
    /// How `https` is trusted.
    pub trust: &'a Trust,
    /// SPDY or WebSocket.
    pub transport: Transport,
    /// The streams (as in the CRI request).
    pub opts: Options,
}

/// Runs one exec/attach session: `stdin` is sent (and closed at its end), output is written to
/// `stdout`/`stderr`, terminal sizes from `resize` are sent. Returns the exit code (0 for an
/// attach that ended normally).
pub async fn remote_command<I, O, E>(
    at: Endpoint<'_>,
    stdin: Option<I>,
    stdout: O,
    stderr: E,
    resize: Option<mpsc::Receiver<TermSize>>,
) -> Result<i32, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let Endpoint {
        url,
        trust,
        transport,
        opts,
    } = at;
    match transport {
        Transport::Spdy => {
            remote_command_spdy(url, trust, opts, stdin, stdout, stderr, resize).await
        }
        Transport::WebSocket => {
            remote_command_ws(url, trust, opts, stdin, stdout, stderr, resize).await
        }
    }
}

/// A SPDY session on `url` speaking `protocol`.
async fn spdy_session(
    url: &str,
    trust: &Trust,
    protocol: &str,
) -> Result<spdy::Connection, ClientError> {
    let (s, leftover, _) = upgrade(
        url,
        trust,
        "POST",
        &[
            ("Upgrade", "SPDY/3.1".into()),
            ("X-Stream-Protocol-Version", protocol.into()),
        ],
    )
    .await?;
    Ok(spdy::Connection::new(
        crate::http::Prefixed::new(leftover, s),
        spdy::Role::Client,
    ))
}

/// A WebSocket on `url` with `subprotocol`.
async fn ws_session(
    url: &str,
    trust: &Trust,
    subprotocol: &str,
) -> Result<(ws::Receiver<Box<dyn Conn>>, ws::Sender), ClientError> {
    let (s, leftover, _) = upgrade(
        url,
        trust,
        "GET",
        &[
            ("Upgrade", "websocket".into()),
            ("Sec-WebSocket-Version", "13".into()),
            ("Sec-WebSocket-Key", ws_key()),
            ("Sec-WebSocket-Protocol", subprotocol.into()),
        ],
    )
    .await?;
    Ok(ws::split(s, ws::Role::Client, leftover))
}

fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn copy_out<W: AsyncWrite + Unpin>(mut r: spdy::StreamReader, mut w: W) {
    while let Some(d) = r.read().await {
        if w.write_all(&d).await.is_err() {
            break;
        }
        let _ = w.flush().await;
    }
}

async fn remote_command_spdy<I, O, E>(
    url: &str,
    trust: &Trust,
    opts: Options,
    stdin: Option<I>,
    stdout: O,
    stderr: E,
    resize: Option<mpsc::Receiver<TermSize>>,
) -> Result<i32, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = spdy_session(url, trust, "v4.channel.k8s.io").await?;
    let mut error = conn.open(h(&[("streamType", "error")]), false).await?;
    let mut tasks = Vec::new();
    if opts.stdin {
        let st = conn.open(h(&[("streamType", "stdin")]), false).await?;
        if let Some(input) = stdin {
            tokio::spawn(async move { st.writer.send_all_from(input).await });
        }
    }
    if opts.stdout {
        let st = conn.open(h(&[("streamType", "stdout")]), false).await?;
        tasks.push(tokio::spawn(copy_out(st.reader, stdout)));
    }
    if opts.stderr && !opts.tty {
        let st = conn.open(h(&[("streamType", "stderr")]), false).await?;
        tasks.push(tokio::spawn(copy_out(st.reader, stderr)));
    }
    if opts.tty {
        let st = conn.open(h(&[("streamType", "resize")]), false).await?;
        if let Some(mut sizes) = resize {
            let w = st.writer;
            tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let Ok(json) = serde_json::to_vec(&size) else {
                        continue;
                    };
                    if w.write(Bytes::from(json)).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut status = Vec::new();
    while let Some(d) = error.reader.read().await {
        status.extend_from_slice(&d);
    }
    drop(conn);
    exit_code(&status)
}

async fn remote_command_ws<I, O, E>(
    url: &str,
    trust: &Trust,
    opts: Options,
    stdin: Option<I>,
    mut stdout: O,
    mut stderr: E,
    resize: Option<mpsc::Receiver<TermSize>>,
) -> Result<i32, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    let (mut rx, tx) = ws_session(url, trust, "v5.channel.k8s.io").await?;
    if opts.stdin
        && let Some(mut input) = stdin
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf[0] = 0;
                        if tx.binary(Bytes::copy_from_slice(&buf[..=n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.binary(Bytes::from_static(&[255, 0])).await;
        });
    }
    if let Some(mut sizes) = resize {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let mut msg = vec![4u8];
                if serde_json::to_writer(&mut msg, &size).is_ok()
                    && tx.binary(Bytes::from(msg)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    let mut status = Vec::new();
    while let Some(msg) = rx.recv().await? {
        let ws::Message::Binary(d) = msg else {
            continue;
        };
        let Some((&ch, rest)) = d.split_first() else {
            continue;
        };
        match ch {
            1 => {
                stdout.write_all(rest).await?;
                stdout.flush().await?;
            }
            2 => {
                stderr.write_all(rest).await?;
                stderr.flush().await?;
            }
            3 => status.extend_from_slice(rest),
            _ => {}
        }
    }
    tx.close(ws::CLOSE_NORMAL).await;
    exit_code(&status)
}

/// Forwards connections accepted on `listener` to `remote_port` through the port-forward URL
/// (one session, one stream pair per connection) until the session ends.
pub async fn port_forward(
    url: &str,
    trust: &Trust,
    transport: Transport,
    remote_port: u16,
    listener: tokio::net::TcpListener,
) -> Result<(), ClientError> {
    let mut conn = match transport {
        Transport::Spdy => spdy_session(url, trust, crate::portforward::PROTOCOL).await?,
        Transport::WebSocket => {
            let tunnelled = format!("SPDY/3.1+{}", crate::portforward::PROTOCOL);
            let (rx, tx) = ws_session(url, trust, &tunnelled).await?;
            spdy::Connection::new(ws::tunnel(rx, tx), spdy::Role::Client)
        }
    };
    let port = remote_port.to_string();
    let mut request_id = 0u64;
    loop {
        let (local, _) = listener.accept().await?;
        let id = request_id.to_string();
        request_id += 1;
        let mut error = conn
            .open(
                h(&[("streamType", "error"), ("port", &port), ("requestID", &id)]),
                false,
            )
            .await?;
        let data = conn
            .open(
                h(&[("streamType", "data"), ("port", &port), ("requestID", &id)]),
                false,
            )
            .await?;
        tokio::spawn(async move {
            let (lr, mut lw) = local.into_split();
            let spdy::Stream {
                reader: mut dr,
                writer: dw,
                ..
            } = data;
            let up = tokio::spawn(async move { dw.send_all_from(lr).await });
            while let Some(d) = dr.read().await {
                if lw.write_all(&d).await.is_err() {
                    break;
                }
            }
            let _ = lw.shutdown().await;
            let mut msg = Vec::new();
            while let Some(d) = error.reader.read().await {
                msg.extend_from_slice(&d);
            }
            if !msg.is_empty() {
                tracing::warn!(message = %String::from_utf8_lossy(&msg), "port-forward error");
            }
            up.abort();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_to_exit_codes() {
        assert_eq!(exit_code(b"").ok(), Some(0));
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#).ok(),
            Some(0)
        );
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        assert_eq!(exit_code(failed).ok(), Some(42));
        let err = exit_code(br#"{"status":"Failure","message":"container x not found"}"#);
        assert!(matches!(err, Err(ClientError::Remote(m)) if m == "container x not found"));
    }
}
