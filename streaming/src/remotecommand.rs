//! Exec and attach sessions: Kubernetes' remotecommand protocols over SPDY (`v4`, `v3`, `v2`,
//! `channel.k8s.io`) and WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::runtime::{Io, StreamError, StreamRuntime, TermSize};
use crate::spdy;
use crate::ws;

/// SPDY protocol versions served, best first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// WebSocket subprotocols served, best first.
pub const WS_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// How long the client has to open every stream it must open.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output still buffered is given to reach the client after the process ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new process.
    Exec {
        /// Container id.
        container_id: String,
        /// Command.
        cmd: Vec<String>,
    },
    /// The container's own stdio.
    Attach {
        /// Container id.
        container_id: String,
    },
}

/// Which streams the CRI request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Stdin.
    pub stdin: bool,
    /// Stdout.
    pub stdout: bool,
    /// Stderr (ignored with a TTY).
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// The outcome told to the client on the error stream.
#[derive(Debug)]
enum Outcome {
    Exit(i32),
    Attached,
    Failed(StreamError),
}

/// The `metav1.Status` JSON of protocol v4 and v5.
fn status_json(outcome: &Outcome) -> String {
    let failure = |message: &str, reason: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
        });
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in more {
                obj.insert(k.clone(), x.clone());
            }
        }
        v.to_string()
    };
    match outcome {
        Outcome::Exit(0) | Outcome::Attached => {
            serde_json::json!({"metadata": {}, "status": "Success"}).to_string()
        }
        Outcome::Exit(code) => failure(
            &format!("command terminated with non-zero exit code: exit status {code}"),
            "NonZeroExitCode",
            serde_json::json!({"details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
        ),
        Outcome::Failed(StreamError::NotFound(m)) => {
            failure(m, "NotFound", serde_json::json!({"code": 404}))
        }
        Outcome::Failed(StreamError::Failed(m)) => {
            failure(m, "InternalError", serde_json::json!({"code": 500}))
        }
    }
}

/// The plain-text error of protocols before v4 (empty on success).
fn status_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exit(0) | Outcome::Attached => String::new(),
        Outcome::Exit(code) => format!("command terminated with non-zero exit code: {code}"),
        Outcome::Failed(e) => e.to_string(),
    }
}

/// Sends output from an [`Io`] sender to the client; the task ends when the runtime drops the
/// sender (then `finish` runs).
fn output_pump<F, Fut>(send: F) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>)
where
    F: Fn(Option<Bytes>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if send(Some(data)).await.is_err() {
                // the client is gone: drain so the runtime never blocks
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = send(None).await;
    });
    (tx, task)
}

/// Parses the resize stream: a sequence of JSON objects.
fn resize_decoder() -> impl FnMut(&[u8]) -> Vec<TermSize> {
    let mut buf = Vec::new();
    move |data: &[u8]| {
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        while let Some(Ok(size)) = it.next() {
            out.push(size);
            consumed = it.byte_offset();
        }
        buf.drain(..consumed);
        if buf.len() > 4096 {
            buf.clear();
        }
        out
    }
}

async fn run(runtime: &Arc<dyn StreamRuntime>, target: &Target, tty: bool, io: Io) -> Outcome {
    let result = match target {
        Target::Exec { container_id, cmd } => runtime
            .exec(container_id, cmd.clone(), tty, io)
            .await
            .map(Outcome::Exit),
        Target::Attach { container_id } => runtime
            .attach(container_id, tty, io)
            .await
            .map(|()| Outcome::Attached),
    };
    result.unwrap_or_else(Outcome::Failed)
}

async fn drain(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let all = futures::future::join_all(tasks);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, all).await;
}

/// Serves one remotecommand session on an upgraded SPDY connection.
pub async fn serve_spdy(
    mut conn: spdy::Connection,
    protocol: &str,
    opts: Options,
    target: Target,
    runtime: Arc<dyn StreamRuntime>,
) {
    let v4 = protocol == "v4.channel.k8s.io";
    let resize_supported = v4 || protocol == "v3.channel.k8s.io";
    let want_stderr = opts.stderr && !opts.tty;
    let want_resize = opts.tty && resize_supported;
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let complete = |e: &Option<spdy::Stream>,
                    i: &Option<spdy::Stream>,
                    o: &Option<spdy::Stream>,
                    r: &Option<spdy::Stream>,
                    z: &Option<spdy::Stream>| {
        e.is_some()
            && (!opts.stdin || i.is_some())
            && (!opts.stdout || o.is_some())
            && (!want_stderr || r.is_some())
            && (!want_resize || z.is_some())
    };
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !complete(&error, &stdin, &stdout, &stderr, &resize) {
        let Ok(Some(s)) = tokio::time::timeout_at(deadline, conn.accept()).await else {
            tracing::debug!("remotecommand: the client did not open every stream in time");
            if let Some(e) = &error {
                let msg = "timed out waiting for the client to create streams";
                let _ = e.writer.write(Bytes::from(msg)).await;
            }
            conn.close().await;
            return;
        };
        let slot = match spdy::header(&s.headers, "streamtype") {
            Some("error") => &mut error,
            Some("stdin") => &mut stdin,
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            Some("resize") => &mut resize,
            other => {
                tracing::debug!(?other, "remotecommand: stream of unknown type refused");
                let _ = s.writer.reset(spdy::frame::rst::REFUSED_STREAM).await;
                continue;
            }
        };
        *slot = Some(s);
    }
    let Some(error) = error else { return };

    let mut io = Io::default();
    let mut outputs = Vec::new();
    if let Some(mut s) = stdin {
        let (tx, rx) = mpsc::channel(16);
        io.stdin = Some(rx);
        tokio::spawn(async move {
            while let Some(d) = s.reader.read().await {
                if tx.send(d).await.is_err() {
                    break;
                }
            }
        });
    }
    for (stream, slot) in [(stdout, &mut io.stdout), (stderr, &mut io.stderr)] {
        let Some(s) = stream else { continue };
        let w = s.writer;
        // the client does not write on output streams; not reading them is fine (they are
        // dropped, and anything sent on them is discarded)
        let (tx, task) = output_pump(move |d| {
            let w = w.clone();
            async move {
                match d {
                    Some(d) => w.write(d).await,
                    None => w.close().await,
                }
            }
        });
        *slot = Some(tx);
        outputs.push(task);
    }
    if let Some(mut s) = resize {
        let (tx, rx) = mpsc::channel(8);
        io.resize = Some(rx);
        tokio::spawn(async move {
            let mut decode = resize_decoder();
            while let Some(d) = s.reader.read().await {
                for size in decode(&d) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    let outcome = {
        let session = run(&runtime, &target, opts.tty, io);
        tokio::pin!(session);
        tokio::select! {
            o = &mut session => Some(o),
            () = async { while conn.accept().await.is_some() {} } => None,
        }
    };
    let Some(outcome) = outcome else {
        tracing::debug!(?target, "remotecommand: client went away");
        return;
    };
    drain(outputs).await;
    let message = if v4 {
        status_json(&outcome)
    } else {
        status_text(&outcome)
    };
    if !message.is_empty() {
        let _ = error.writer.write(Bytes::from(message)).await;
    }
    let _ = error.writer.close().await;
    conn.close().await;
}

/// v5 and v4 channel ids.
const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
/// v5: `[255, channel]` closes the channel.
const CH_CLOSE: u8 = 255;

fn channel_message(ch: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(ch);
    b.put_slice(data);
    b.freeze()
}

/// Serves one remotecommand session on an upgraded WebSocket.
pub async fn serve_ws<T>(
    mut rx: ws::Receiver<T>,
    tx: ws::Sender,
    protocol: &str,
    opts: Options,
    target: Target,
    runtime: Arc<dyn StreamRuntime>,
) where
    T: tokio::io::AsyncRead + Send + 'static,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let mut io = Io::default();
    let mut outputs = Vec::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let mut stdin_tx = Some(stdin_tx);
    if opts.stdin {
        io.stdin = Some(stdin_rx);
    }
    let (resize_tx, resize_rx) = mpsc::channel(8);
    if opts.tty {
        io.resize = Some(resize_rx);
    }
    let want = [
        (opts.stdout, CH_STDOUT),
        (opts.stderr && !opts.tty, CH_STDERR),
    ];
    for (wanted, ch) in want {
        if !wanted {
            continue;
        }
        let out = tx.clone();
        let (sender, task) = output_pump(move |d| {
            let out = out.clone();
            async move {
                // the end of an output channel is not signalled: client-go's v5 client only
                // knows the close signal for stdin (the session's end closes everything)
                match d {
                    Some(d) => out.binary(channel_message(ch, &d)).await,
                    None => Ok(()),
                }
            }
        });
        if ch == CH_STDOUT {
            io.stdout = Some(sender);
        } else {
            io.stderr = Some(sender);
        }
        outputs.push(task);
    }
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut decode = resize_decoder();
        while let Ok(Some(msg)) = rx.recv().await {
            let ws::Message::Binary(data) = msg else {
                continue;
            };
            let Some((&ch, rest)) = data.split_first() else {
                continue;
            };
            match ch {
                CH_STDIN => {
                    if let Some(t) = &stdin_tx
                        && t.send(Bytes::copy_from_slice(rest)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                CH_RESIZE => {
                    for size in decode(rest) {
                        let _ = resize_tx.try_send(size);
                    }
                }
                CH_CLOSE if v5 && rest.first() == Some(&CH_STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let outcome = tokio::select! {
        o = run(&runtime, &target, opts.tty, io) => Some(o),
        _ = gone_rx => None,
    };
    let Some(outcome) = outcome else {
        tracing::debug!(?target, "remotecommand: client went away");
        return;
    };
    drain(outputs).await;
    let _ = tx
        .binary(channel_message(CH_ERROR, status_json(&outcome).as_bytes()))
        .await;
    tx.close(ws::CLOSE_NORMAL).await;
    // the peer answers the close; then the reader ends
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_client_go_decodes() {
        let ok: serde_json::Value =
            serde_json::from_str(&status_json(&Outcome::Exit(0))).expect("json");
        assert_eq!(ok["status"], "Success");
        let failed: serde_json::Value =
            serde_json::from_str(&status_json(&Outcome::Exit(7))).expect("json");
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "7");
        let missing: serde_json::Value = serde_json::from_str(&status_json(&Outcome::Failed(
            StreamError::NotFound("container x not found".into()),
        )))
        .expect("json");
        assert_eq!(missing["message"], "container x not found");
        assert_eq!(status_text(&Outcome::Exit(0)), "");
        assert!(status_text(&Outcome::Exit(2)).contains('2'));
    }

    #[test]
    fn resize_messages_split_anywhere() {
        let mut d = resize_decoder();
        assert!(d(br#"{"Width":80,"#).is_empty());
        assert_eq!(
            d(br#""Height":24}{"Width":100,"Height":50}"#),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(
            d(b"\n{\"Width\":1,\"Height\":2}\n"),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }
}
