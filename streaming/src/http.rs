//! The HTTP/1.1 part of the streaming server: read one request head, answer with an upgrade (or
//! an error) and hand the raw connection on. Every streaming URL is an upgrade, so no general
//! HTTP server is needed.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The request head.
#[derive(Debug, Default)]
pub struct Request {
    /// `GET`, `POST`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// Headers, names lower-case, in order (repeats kept).
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head (the start of the upgraded protocol).
    pub leftover: Bytes,
}

impl Request {
    /// Every value of `name`, comma-separated lists split.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Upgrade` token, lower-case.
    pub fn upgrade(&self) -> Option<String> {
        let connection = self.values("connection");
        if !connection.iter().any(|c| c.eq_ignore_ascii_case("upgrade")) {
            return None;
        }
        self.header("upgrade")
            .map(|u| u.trim().to_ascii_lowercase())
    }
}

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Reads one request head. `Ok(None)`: the peer closed before sending one.
pub async fn read_request<T: AsyncRead + Unpin>(io: &mut T) -> std::io::Result<Option<Request>> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside the request head"))
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf).map_err(|e| bad(&e.to_string()))? {
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(bad("request head too large"));
                }
            }
            httparse::Status::Complete(n) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let out = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    leftover: Bytes::new(),
                };
                let leftover = buf.split_off(n).freeze();
                return Ok(Some(Request { leftover, ..out }));
            }
        }
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Writes a complete non-upgrade response with a text body and closes the write side.
pub async fn respond<T: AsyncWrite + Unpin>(
    io: &mut T,
    status: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len() + 1
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.write_all(b"\n").await?;
    io.shutdown().await
}

/// Writes `101 Switching Protocols` with `headers`.
pub async fn switch<T: AsyncWrite + Unpin>(
    io: &mut T,
    headers: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n");
    for (n, v) in headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    io.flush().await
}

/// The value of `key` in a query string (`1`/`true` style flags are the caller's business).
pub fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// An `AsyncRead + AsyncWrite` that first yields bytes already read.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `prefix` is read before `inner`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let part = self.prefix.split_to(n);
            buf.put_slice(&part);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_head_and_leftover() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(
            b"POST /exec/abc?x=1&tty HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\
              Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
              X-Stream-Protocol-Version: v3.channel.k8s.io, v2.channel.k8s.io\r\n\r\n\x80\x03",
        )
        .await
        .expect("write");
        let req = read_request(&mut b).await.expect("ok").expect("request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/exec/abc");
        assert_eq!(query_value(&req.query, "x"), Some("1"));
        assert_eq!(query_value(&req.query, "tty"), Some(""));
        assert_eq!(query_value(&req.query, "y"), None);
        assert_eq!(req.upgrade().as_deref(), Some("spdy/3.1"));
        assert_eq!(
            req.values("x-stream-protocol-version"),
            [
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io"
            ]
        );
        assert_eq!(&req.leftover[..], b"\x80\x03");
    }

    #[tokio::test]
    async fn garbage_and_early_close() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"\x00\x01 nonsense\r\n\r\n")
            .await
            .expect("write");
        assert!(read_request(&mut b).await.is_err());
        let (a, mut b) = tokio::io::duplex(4096);
        drop(a);
        assert!(read_request(&mut b).await.expect("ok").is_none());
    }
}
