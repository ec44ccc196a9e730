//! A SPDY/3.1 session over any byte stream (an upgraded HTTP/1.1 connection, or a WebSocket
//! tunnel): streams opened by the peer arrive through [`Connection::accept`], each with its
//! headers, a reader of its data and a writer.
//!
//! One task reads frames and one writes them; they own the two zlib streams. Flow control:
//! every byte received is granted back with WINDOW_UPDATE, so a peer that honours SPDY/3.1
//! windows never stalls; windows granted to us are not enforced on sending, because the peers
//! that matter (moby/spdystream, used by kubelet, crictl and critest) never grant any.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, FLAG_FIN, Frame};
use super::headers::{Compressor, Decompressor, Headers};

/// Which side of the session this is (it decides stream id parity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens odd streams.
    Client,
    /// Opens even streams, replies to the client's.
    Server,
}

/// Largest data frame this side sends.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Buffered data frames per stream before the reader waits for the stream's consumer.
const STREAM_BUFFER: usize = 64;
/// How long [`Connection::close`] waits for the peer to hang up after GOAWAY.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

enum Out {
    Frame(Frame),
    Syn {
        stream_id: u32,
        headers: Headers,
        fin: bool,
    },
    Reply {
        stream_id: u32,
        headers: Headers,
    },
    Close(oneshot::Sender<()>),
}

/// The session: accept streams, open streams, close.
pub struct Connection {
    out: mpsc::Sender<Out>,
    incoming: mpsc::Receiver<Stream>,
    next_id: u32,
    opened: mpsc::Sender<(u32, mpsc::Sender<Bytes>)>,
    reader_done: Option<oneshot::Receiver<()>>,
    role: Role,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Connection {
    /// Dropping the connection ends the session (the transport is closed).
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .finish()
    }
}

/// One stream of the session.
#[derive(Debug)]
pub struct Stream {
    /// Stream id.
    pub id: u32,
    /// Headers of its SYN_STREAM.
    pub headers: Headers,
    /// Its data.
    pub reader: StreamReader,
    /// Writes to it.
    pub writer: StreamWriter,
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next piece of data; `None` once the peer finished the stream (FIN or reset) or the
    /// session ended.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// The sending half of a stream (cheap to clone).
#[derive(Clone, Debug)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "SPDY session closed")
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` (split into frames as needed).
    pub async fn write(&self, data: Bytes) -> std::io::Result<()> {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.send(chunk, 0).await?;
        }
        Ok(())
    }

    /// Sends everything `input` yields, then finishes the stream (stops early if the session
    /// is gone).
    pub async fn send_all_from<R: AsyncRead + Unpin>(&self, mut input: R) {
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        loop {
            match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = self.close().await;
    }

    /// Finishes this side of the stream (empty data frame with FIN).
    pub async fn close(&self) -> std::io::Result<()> {
        self.send(Bytes::new(), FLAG_FIN).await
    }

    /// Aborts the stream.
    pub async fn reset(&self, status: u32) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await
            .map_err(|_| gone())
    }

    async fn send(&self, data: Bytes, flags: u8) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                flags,
                data,
            }))
            .await
            .map_err(|_| gone())
    }
}

impl Connection {
    /// Starts the session on `io` (reader and writer tasks on the current runtime).
    pub fn new<T>(io: T, role: Role) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel::<Out>(64);
        let (in_tx, in_rx) = mpsc::channel::<Stream>(16);
        let (opened_tx, opened_rx) = mpsc::channel(16);
        let (done_tx, done_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(wr, out_rx)).abort_handle();
        let reader = Reader {
            role,
            out: out_tx.clone(),
            incoming: in_tx,
            opened: opened_rx,
            streams: HashMap::new(),
            decompressor: Decompressor::new(),
        };
        let reader = tokio::spawn(async move {
            if let Err(error) = reader.run(rd).await {
                tracing::debug!(%error, "SPDY session read ended");
            }
            let _ = done_tx.send(());
        })
        .abort_handle();
        Self {
            out: out_tx,
            incoming: in_rx,
            next_id: if role == Role::Client { 1 } else { 2 },
            opened: opened_tx,
            reader_done: Some(done_rx),
            role,
            tasks: [reader, writer],
        }
    }

    /// The next stream the peer opened; `None` when the session ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Opens a stream with `headers`.
    pub async fn open(&mut self, headers: Headers, fin: bool) -> std::io::Result<Stream> {
        let stream_id = self.next_id;
        self.next_id += 2;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.opened
            .send((stream_id, tx))
            .await
            .map_err(|_| gone())?;
        self.out
            .send(Out::Syn {
                stream_id,
                headers: headers.clone(),
                fin,
            })
            .await
            .map_err(|_| gone())?;
        Ok(Stream {
            id: stream_id,
            headers,
            reader: StreamReader { rx },
            writer: StreamWriter {
                id: stream_id,
                out: self.out.clone(),
            },
        })
    }

    /// Sends GOAWAY, flushes everything written so far, half-closes the transport and waits (a
    /// little) for the peer to hang up, so nothing written is lost to a reset.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            }))
            .await;
        if self.out.send(Out::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.incoming.close();
        if let Some(done) = self.reader_done.take() {
            let _ = tokio::time::timeout(CLOSE_LINGER, done).await;
        }
    }
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>) {
    tokio::pin!(wr);
    let mut compressor = Compressor::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = None;
        // coalesce what is queued into one write
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => frame::encode(&f, &mut buf),
                Out::Syn {
                    stream_id,
                    headers,
                    fin,
                } => match compressor.compress(&headers) {
                    Ok(block) => frame::encode(
                        &Frame::SynStream {
                            stream_id,
                            associated_to: 0,
                            priority: 0,
                            flags: if fin { FLAG_FIN } else { 0 },
                            block: block.into(),
                        },
                        &mut buf,
                    ),
                    Err(error) => tracing::warn!(%error, "cannot encode SPDY headers"),
                },
                Out::Reply { stream_id, headers } => match compressor.compress(&headers) {
                    Ok(block) => frame::encode(
                        &Frame::SynReply {
                            stream_id,
                            flags: 0,
                            block: block.into(),
                        },
                        &mut buf,
                    ),
                    Err(error) => tracing::warn!(%error, "cannot encode SPDY headers"),
                },
                Out::Close(ack) => {
                    close = Some(ack);
                    break;
                }
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            buf.clear();
        }
        if let Some(ack) = close {
            let _ = wr.shutdown().await;
            let _ = ack.send(());
            return;
        }
    }
}

struct Reader {
    role: Role,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Stream>,
    opened: mpsc::Receiver<(u32, mpsc::Sender<Bytes>)>,
    streams: HashMap<u32, mpsc::Sender<Bytes>>,
    decompressor: Decompressor,
}

fn protocol_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl Reader {
    async fn run<R: AsyncRead>(mut self, rd: R) -> std::io::Result<()> {
        tokio::pin!(rd);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(f) = frame::decode(&mut buf).map_err(protocol_error)? {
                if !self.handle(f).await? {
                    return Ok(());
                }
            }
            buf.reserve(32 * 1024);
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Streams this side opened, registered before their SYN_STREAM went out.
    fn take_opened(&mut self) {
        while let Ok((id, tx)) = self.opened.try_recv() {
            self.streams.insert(id, tx);
        }
    }

    async fn send(&self, out: Out) {
        let _ = self.out.send(out).await;
    }

    /// Handles one frame; `false` ends the session.
    async fn handle(&mut self, f: Frame) -> std::io::Result<bool> {
        self.take_opened();
        match f {
            Frame::SynStream {
                stream_id,
                flags,
                block,
                ..
            } => {
                let headers = self
                    .decompressor
                    .decompress(&block)
                    .map_err(protocol_error)?;
                let peer_parity = if self.role == Role::Server { 1 } else { 0 };
                if stream_id % 2 != peer_parity || self.streams.contains_key(&stream_id) {
                    self.send(Out::Frame(Frame::RstStream {
                        stream_id,
                        status: frame::rst::PROTOCOL_ERROR,
                    }))
                    .await;
                    return Ok(true);
                }
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                if flags & FLAG_FIN == 0 {
                    self.streams.insert(stream_id, tx);
                }
                // spdystream's writers wait for the reply before sending data
                self.send(Out::Reply {
                    stream_id,
                    headers: Vec::new(),
                })
                .await;
                let stream = Stream {
                    id: stream_id,
                    headers,
                    reader: StreamReader { rx },
                    writer: StreamWriter {
                        id: stream_id,
                        out: self.out.clone(),
                    },
                };
                if self.incoming.send(stream).await.is_err() {
                    // nobody accepts streams any more
                    self.streams.remove(&stream_id);
                    self.send(Out::Frame(Frame::RstStream {
                        stream_id,
                        status: frame::rst::REFUSED_STREAM,
                    }))
                    .await;
                }
            }
            Frame::SynReply { block, .. } | Frame::Headers { block, .. } => {
                // decoded only to keep the zlib stream in step
                self.decompressor
                    .decompress(&block)
                    .map_err(protocol_error)?;
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let n = data.len() as u32;
                if let Some(tx) = self.streams.get(&stream_id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        // the consumer dropped its reader: discard the rest
                    }
                    if flags & FLAG_FIN != 0 {
                        self.streams.remove(&stream_id);
                    }
                } else if !data.is_empty() {
                    self.send(Out::Frame(Frame::RstStream {
                        stream_id,
                        status: frame::rst::INVALID_STREAM,
                    }))
                    .await;
                }
                if n > 0 {
                    self.send(Out::Frame(Frame::WindowUpdate {
                        stream_id,
                        delta: n,
                    }))
                    .await;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                self.streams.remove(&stream_id);
            }
            Frame::Ping { id } => {
                let ours = if self.role == Role::Server { 0 } else { 1 };
                if id % 2 != ours {
                    self.send(Out::Frame(Frame::Ping { id })).await;
                }
            }
            Frame::GoAway { .. } => return Ok(false),
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
        Ok(true)
    }
}
