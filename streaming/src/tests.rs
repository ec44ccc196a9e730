//! The whole server against a fake runtime, with this crate's own SPDY and WebSocket clients.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::{Io, StreamError, StreamRuntime};
use crate::{Options, Pending, Server, spdy, ws};

/// `cat` for exec (exit code = bytes read), a greeting for attach, an echo server for ports.
struct Fake {
    echo: std::net::SocketAddr,
}

#[async_trait::async_trait]
impl StreamRuntime for Fake {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        mut io: Io,
    ) -> Result<i32, StreamError> {
        if container_id == "missing" {
            return Err(StreamError::NotFound(format!(
                "container {container_id} not found"
            )));
        }
        let out = io.stdout.take().expect("stdout");
        out.send(Bytes::from(format!("{} tty={tty}\n", cmd.join(" "))))
            .await
            .expect("send");
        if let Some(err) = io.stderr.take() {
            err.send(Bytes::from_static(b"to stderr\n"))
                .await
                .expect("send");
        }
        let mut n = 0;
        if let Some(mut stdin) = io.stdin.take() {
            while let Some(d) = stdin.recv().await {
                n += d.len();
                out.send(d).await.expect("send");
            }
        }
        if let Some(mut resize) = io.resize.take()
            && let Ok(Some(size)) =
                tokio::time::timeout(std::time::Duration::from_millis(100), resize.recv()).await
        {
            out.send(Bytes::from(format!(
                "size {}x{}\n",
                size.width, size.height
            )))
            .await
            .expect("send");
        }
        Ok(n as i32)
    }

    async fn attach(&self, _id: &str, _tty: bool, io: Io) -> Result<(), StreamError> {
        let out = io.stdout.expect("stdout");
        out.send(Bytes::from_static(b"attached\n"))
            .await
            .expect("send");
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<TcpStream, StreamError> {
        if port != self.echo.port() {
            return Err(StreamError::Failed(format!("connection refused on {port}")));
        }
        TcpStream::connect(self.echo)
            .await
            .map_err(|e| StreamError::Failed(e.to_string()))
    }
}

async fn server() -> Server {
    server_with_echo().await.0
}

async fn server_with_echo() -> (Server, u16) {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let srv = Server::start(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Fake { echo: echo_addr }),
        None,
    )
    .await
    .expect("start");
    (srv, echo_addr.port())
}

/// Sends an upgrade request; the response head and the connection.
async fn upgrade(url: &str, headers: &[(&str, &str)]) -> (String, TcpStream, Bytes) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = TcpStream::connect(host).await.expect("connect");
    let mut head = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    (String::from_utf8_lossy(&buf).into_owned(), s, Bytes::new())
}

fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn read_all(r: &mut spdy::StreamReader) -> String {
    let mut out = Vec::new();
    while let Some(d) = r.read().await {
        out.extend_from_slice(&d);
    }
    String::from_utf8_lossy(&out).into_owned()
}

const SPDY_UPGRADE: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "SPDY/3.1"),
    ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
];

#[tokio::test]
async fn spdy_exec_with_stdin_stdout_stderr_and_exit_code() {
    let srv = server().await;
    let url = srv
        .register(Pending::Exec {
            container_id: "c1".into(),
            cmd: vec!["cat".into()],
            opts: Options {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            },
        })
        .expect("register");
    let (head, s, _) = upgrade(&url, SPDY_UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io"),
        "{head}"
    );
    let mut c = spdy::Connection::new(s, spdy::Role::Client);
    let mut error = c
        .open(h(&[("streamType", "error")]), false)
        .await
        .expect("open");
    let stdin = c
        .open(h(&[("streamType", "stdin")]), false)
        .await
        .expect("open");
    let mut stdout = c
        .open(h(&[("streamType", "stdout")]), false)
        .await
        .expect("open");
    let mut stderr = c
        .open(h(&[("streamType", "stderr")]), false)
        .await
        .expect("open");
    stdin
        .writer
        .write(Bytes::from_static(b"abc"))
        .await
        .expect("write");
    stdin.writer.close().await.expect("close");
    assert_eq!(read_all(&mut stdout.reader).await, "cat tty=false\nabc");
    assert_eq!(read_all(&mut stderr.reader).await, "to stderr\n");
    let status: serde_json::Value =
        serde_json::from_str(&read_all(&mut error.reader).await).expect("status json");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert!(c.accept().await.is_none(), "server ends the session");
    assert_eq!(srv.outstanding(), 0, "the URL is used up");
    let (head, _, _) = upgrade(&url, SPDY_UPGRADE).await;
    assert!(
        head.starts_with("HTTP/1.1 404"),
        "a URL serves once: {head}"
    );
}

#[tokio::test]
async fn spdy_exec_tty_resize_and_unknown_container() {
    let srv = server().await;
    let opts = Options {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let url = srv
        .register(Pending::Exec {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            opts,
        })
        .expect("register");
    let (_, s, _) = upgrade(&url, SPDY_UPGRADE).await;
    let mut c = spdy::Connection::new(s, spdy::Role::Client);
    let mut error = c
        .open(h(&[("streamType", "error")]), false)
        .await
        .expect("open");
    let stdin = c
        .open(h(&[("streamType", "stdin")]), false)
        .await
        .expect("open");
    let mut stdout = c
        .open(h(&[("streamType", "stdout")]), false)
        .await
        .expect("open");
    let resize = c
        .open(h(&[("streamType", "resize")]), false)
        .await
        .expect("open");
    resize
        .writer
        .write(Bytes::from_static(br#"{"Width":120,"Height":40}"#))
        .await
        .expect("resize");
    stdin.writer.close().await.expect("close");
    assert_eq!(
        read_all(&mut stdout.reader).await,
        "sh tty=true\nsize 120x40\n"
    );
    let status: serde_json::Value =
        serde_json::from_str(&read_all(&mut error.reader).await).expect("json");
    assert_eq!(status["status"], "Success");

    let url = srv
        .register(Pending::Exec {
            container_id: "missing".into(),
            cmd: vec!["true".into()],
            opts: Options {
                stdout: true,
                ..Options::default()
            },
        })
        .expect("register");
    let (_, s, _) = upgrade(&url, SPDY_UPGRADE).await;
    let mut c = spdy::Connection::new(s, spdy::Role::Client);
    let mut error = c
        .open(h(&[("streamType", "error")]), false)
        .await
        .expect("open");
    let _stdout = c
        .open(h(&[("streamType", "stdout")]), false)
        .await
        .expect("open");
    let status: serde_json::Value =
        serde_json::from_str(&read_all(&mut error.reader).await).expect("json");
    assert_eq!(status["message"], "container missing not found");
}

#[tokio::test]
async fn bad_upgrades_get_http_errors() {
    let srv = server().await;
    let url = srv
        .register(Pending::Attach {
            container_id: "c".into(),
            opts: Options::default(),
        })
        .expect("register");
    let (head, _, _) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let url = srv
        .register(Pending::Attach {
            container_id: "c".into(),
            opts: Options::default(),
        })
        .expect("register");
    let (head, _, _) = upgrade(&url, &[]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "no upgrade: {head}");
    let (head, _, _) = upgrade(&format!("http://{}/exec/nope", srv.addr()), SPDY_UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

async fn ws_connect(url: &str, protocol: &str) -> (ws::Receiver<TcpStream>, ws::Sender) {
    let (head, s, leftover) = upgrade(
        url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", protocol),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Protocol: {protocol}")),
        "{head}"
    );
    ws::split(s, ws::Role::Client, leftover)
}

#[tokio::test]
async fn websocket_v5_exec_closes_stdin_and_reports_status() {
    let srv = server().await;
    let url = srv
        .register(Pending::Exec {
            container_id: "c1".into(),
            cmd: vec!["cat".into()],
            opts: Options {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            },
        })
        .expect("register");
    let (mut rx, tx) = ws_connect(&url, "v5.channel.k8s.io").await;
    tx.binary(Bytes::from_static(b"\x00hello"))
        .await
        .expect("stdin");
    tx.binary(Bytes::from_static(b"\xff\x00"))
        .await
        .expect("close stdin");
    let (mut out, mut err, mut status, mut closed) = (Vec::new(), Vec::new(), None, Vec::new());
    while let Some(msg) = rx.recv().await.expect("recv") {
        let ws::Message::Binary(d) = msg else {
            continue;
        };
        match d[0] {
            1 => out.extend_from_slice(&d[1..]),
            2 => err.extend_from_slice(&d[1..]),
            3 => status = Some(String::from_utf8_lossy(&d[1..]).into_owned()),
            255 => closed.push(d[1]),
            c => panic!("unexpected channel {c}"),
        }
    }
    assert_eq!(out, b"cat tty=false\nhello");
    assert_eq!(err, b"to stderr\n");
    assert!(
        closed.is_empty(),
        "output channels are not closed one by one: {closed:?}"
    );
    let status: serde_json::Value = serde_json::from_str(&status.expect("status")).expect("json");
    assert_eq!(status["details"]["causes"][0]["message"], "5");
}

#[tokio::test]
async fn port_forward_over_spdy_and_websocket_tunnel() {
    let (srv, echo_port) = server_with_echo().await;
    {
        // the fake's echo server port is the only one that connects
        let url = srv
            .register(Pending::PortForward {
                pod_id: "p".into(),
                ports: vec![],
            })
            .expect("register");
        let (_, s, _) = upgrade(
            &url,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "portforward.k8s.io"),
            ],
        )
        .await;
        let mut c = spdy::Connection::new(s, spdy::Role::Client);
        let mut error = c
            .open(
                h(&[("streamType", "error"), ("port", "1"), ("requestID", "0")]),
                false,
            )
            .await
            .expect("open");
        let mut data = c
            .open(
                h(&[("streamType", "data"), ("port", "1"), ("requestID", "0")]),
                false,
            )
            .await
            .expect("open");
        let msg = read_all(&mut error.reader).await;
        assert!(msg.contains("connection refused on 1"), "{msg}");
        assert_eq!(read_all(&mut data.reader).await, "");
    }
    for websocket in [false, true] {
        let url = srv
            .register(Pending::PortForward {
                pod_id: "p".into(),
                ports: vec![],
            })
            .expect("register");
        let mut c = if websocket {
            let (rx, tx) = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
            spdy::Connection::new(ws::tunnel(rx, tx), spdy::Role::Client)
        } else {
            let (_, s, _) = upgrade(
                &url,
                &[
                    ("Connection", "Upgrade"),
                    ("Upgrade", "SPDY/3.1"),
                    ("X-Stream-Protocol-Version", "portforward.k8s.io"),
                ],
            )
            .await;
            spdy::Connection::new(s, spdy::Role::Client)
        };
        // two connections at once through one session
        let port = echo_port.to_string();
        let mut pairs = Vec::new();
        for id in ["0", "1"] {
            let error = c
                .open(
                    h(&[("streamType", "error"), ("port", &port), ("requestID", id)]),
                    false,
                )
                .await
                .expect("open");
            let data = c
                .open(
                    h(&[("streamType", "data"), ("port", &port), ("requestID", id)]),
                    false,
                )
                .await
                .expect("open");
            pairs.push((error, data));
        }
        for (i, (_, data)) in pairs.iter_mut().enumerate() {
            let msg = format!("ping {i} websocket={websocket}");
            data.writer
                .write(Bytes::from(msg.clone()))
                .await
                .expect("write");
            let got = data.reader.read().await.expect("echo");
            assert_eq!(&got[..], msg.as_bytes());
        }
        drop(pairs);
        drop(c);
    }
}

#[tokio::test]
async fn spdy_v3_reports_a_failure_as_text_on_the_error_stream() {
    let srv = server().await;
    let url = srv
        .register(Pending::Exec {
            container_id: "c1".into(),
            cmd: vec!["cat".into()],
            opts: Options {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            },
        })
        .expect("register");
    let (head, s, _) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
        ],
    )
    .await;
    assert!(
        head.contains("X-Stream-Protocol-Version: v3.channel.k8s.io"),
        "{head}"
    );
    let mut c = spdy::Connection::new(s, spdy::Role::Client);
    let mut error = c
        .open(h(&[("streamType", "error")]), false)
        .await
        .expect("open");
    let stdin = c
        .open(h(&[("streamType", "stdin")]), false)
        .await
        .expect("open");
    let mut stdout = c
        .open(h(&[("streamType", "stdout")]), false)
        .await
        .expect("open");
    stdin
        .writer
        .write(Bytes::from_static(b"xy"))
        .await
        .expect("write");
    stdin.writer.close().await.expect("close");
    assert_eq!(read_all(&mut stdout.reader).await, "cat tty=false\nxy");
    // before v4 the error stream carries plain text, not a metav1.Status
    assert_eq!(
        read_all(&mut error.reader).await,
        "command terminated with non-zero exit code: 2"
    );
}
