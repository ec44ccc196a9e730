//! WebSocket (RFC 6455) framing after the HTTP upgrade: messages in, messages out, pings
//! answered, close handshake. Both roles: the server (the streaming server) and the client
//! (`unicri exec/attach` and the tests), which masks what it sends.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

/// The GUID of the opening handshake (RFC 6455 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Messages larger than this are refused (Kubernetes clients send at most 32 KiB).
const MAX_MESSAGE: usize = 16 << 20;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Which side of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Masks nothing, expects masked frames.
    Server,
    /// Masks every frame it sends.
    Client,
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Opcode 2.
    Binary(Bytes),
    /// Opcode 1.
    Text(String),
}

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Close status: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close status: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;

enum Out {
    Frame(u8, Bytes),
    Close(u16, Option<oneshot::Sender<()>>),
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Out")
    }
}

/// Sends messages (cheap to clone).
#[derive(Clone, Debug)]
pub struct Sender {
    out: mpsc::Sender<Out>,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "WebSocket closed")
}

impl Sender {
    /// Sends one binary message.
    pub async fn binary(&self, data: Bytes) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(OP_BINARY, data))
            .await
            .map_err(|_| gone())
    }

    /// Sends one text message.
    pub async fn text(&self, text: String) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(OP_TEXT, Bytes::from(text)))
            .await
            .map_err(|_| gone())
    }

    /// Starts the close handshake and waits until the close frame is written (the transport is
    /// then half-closed).
    pub async fn close(&self, code: u16) {
        let (tx, rx) = oneshot::channel();
        if self.out.send(Out::Close(code, Some(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Receives messages.
pub struct Receiver<T> {
    rd: ReadHalf<T>,
    buf: BytesMut,
    role: Role,
    out: mpsc::Sender<Out>,
    closed: bool,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("role", &self.role)
            .finish()
    }
}

/// Starts framing on an upgraded connection: the receiving half and a sender (whose writer task
/// runs on the current runtime).
pub fn split<T>(io: T, role: Role, leftover: Bytes) -> (Receiver<T>, Sender)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(write_loop(wr, rx, role));
    let mut buf = BytesMut::with_capacity(16 * 1024);
    buf.extend_from_slice(&leftover);
    (
        Receiver {
            rd,
            buf,
            role,
            out: tx.clone(),
            closed: false,
        },
        Sender { out: tx },
    )
}

async fn write_loop<T: AsyncWrite>(mut wr: WriteHalf<T>, mut rx: mpsc::Receiver<Out>, role: Role) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close_ack = None;
        let mut closing = false;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(op, data) => encode(op, &data, role, &mut buf),
                Out::Close(code, ack) => {
                    encode(OP_CLOSE, &code.to_be_bytes(), role, &mut buf);
                    close_ack = ack;
                    closing = true;
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
        if closing {
            let _ = wr.shutdown().await;
            if let Some(ack) = close_ack {
                let _ = ack.send(());
            }
            return;
        }
    }
}

/// Appends one frame (FIN set) to `out`.
pub fn encode(op: u8, data: &[u8], role: Role, out: &mut BytesMut) {
    out.put_u8(0x80 | op);
    let mask_bit = if role == Role::Client { 0x80 } else { 0 };
    match data.len() {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
    if role == Role::Client {
        let key: [u8; 4] = rand::random();
        out.put_slice(&key);
        out.extend(data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.put_slice(data);
    }
}

struct RawFrame {
    fin: bool,
    op: u8,
    payload: Bytes,
}

fn protocol(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Decodes one frame from `buf` (`Ok(None)`: incomplete). `expect_masked`: the peer is a client.
fn decode(buf: &mut BytesMut, expect_masked: bool) -> std::io::Result<Option<RawFrame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err(protocol("reserved bits set (no extension was negotiated)"));
    }
    let op = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    if masked != expect_masked {
        return Err(protocol(if expect_masked {
            "client frame not masked"
        } else {
            "server frame masked"
        }));
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n > MAX_MESSAGE as u64 {
                return Err(protocol("frame too large"));
            }
            (n as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    if len > MAX_MESSAGE {
        return Err(protocol("frame too large"));
    }
    let key = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let k = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(k)
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len);
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    if op >= 8 && (!fin || len > 125) {
        return Err(protocol("bad control frame"));
    }
    Ok(Some(RawFrame {
        fin,
        op,
        payload: payload.freeze(),
    }))
}

impl<T: AsyncRead> Receiver<T> {
    async fn frame(&mut self) -> std::io::Result<Option<RawFrame>> {
        loop {
            if let Some(f) = decode(&mut self.buf, self.role == Role::Server)? {
                return Ok(Some(f));
            }
            self.buf.reserve(16 * 1024);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next data message; `Ok(None)` after a close frame (answered) or the end of the
    /// transport.
    pub async fn recv(&mut self) -> std::io::Result<Option<Message>> {
        if self.closed {
            return Ok(None);
        }
        let mut partial: Option<(u8, BytesMut)> = None;
        loop {
            let Some(f) = self.frame().await? else {
                self.closed = true;
                return Ok(None);
            };
            match f.op {
                OP_PING => {
                    let _ = self.out.send(Out::Frame(OP_PONG, f.payload)).await;
                }
                OP_PONG => {}
                OP_CLOSE => {
                    self.closed = true;
                    let code = if f.payload.len() >= 2 {
                        u16::from_be_bytes([f.payload[0], f.payload[1]])
                    } else {
                        CLOSE_NORMAL
                    };
                    // echo the close (ignored if we already sent ours)
                    let _ = self.out.send(Out::Close(code, None)).await;
                    return Ok(None);
                }
                OP_TEXT | OP_BINARY => {
                    if partial.is_some() {
                        return Err(protocol("new message inside a fragmented one"));
                    }
                    if f.fin {
                        return Ok(Some(message(f.op, f.payload)?));
                    }
                    partial = Some((f.op, BytesMut::from(&f.payload[..])));
                }
                OP_CONT => {
                    let Some((op, mut data)) = partial.take() else {
                        return Err(protocol("continuation without a message"));
                    };
                    if data.len() + f.payload.len() > MAX_MESSAGE {
                        return Err(protocol("message too large"));
                    }
                    data.extend_from_slice(&f.payload);
                    if f.fin {
                        return Ok(Some(message(op, data.freeze())?));
                    }
                    partial = Some((op, data));
                }
                _ => return Err(protocol("unknown opcode")),
            }
        }
    }
}

fn message(op: u8, payload: Bytes) -> std::io::Result<Message> {
    if op == OP_TEXT {
        String::from_utf8(payload.to_vec())
            .map(Message::Text)
            .map_err(|_| protocol("text message is not UTF-8"))
    } else {
        Ok(Message::Binary(payload))
    }
}

/// A byte stream made of the binary messages of a WebSocket (for protocols tunnelled through
/// one, like SPDY for port-forward): returns the local end; two tasks pump until either side
/// ends.
pub fn tunnel<T>(rx: Receiver<T>, tx: Sender) -> tokio::io::DuplexStream
where
    T: AsyncRead + Send + 'static,
{
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (mut remote_rd, mut remote_wr) = tokio::io::split(remote);
    let mut rx = rx;
    tokio::spawn(async move {
        while let Ok(Some(msg)) = rx.recv().await {
            if let Message::Binary(data) = msg
                && remote_wr.write_all(&data).await.is_err()
            {
                break;
            }
        }
        let _ = remote_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match remote_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.binary(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(2), tx.close(CLOSE_NORMAL))
            .await
            .ok();
    });
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_in_both_roles_and_lengths() {
        for role in [Role::Client, Role::Server] {
            for n in [0usize, 125, 126, 65535, 65536, 100_000] {
                let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
                let mut buf = BytesMut::new();
                encode(OP_BINARY, &data, role, &mut buf);
                for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
                    let mut part = BytesMut::from(&buf[..cut.min(buf.len())]);
                    if cut < buf.len() {
                        assert!(
                            decode(&mut part, role == Role::Client)
                                .expect("ok")
                                .is_none()
                        );
                    }
                }
                let f = decode(&mut buf, role == Role::Client)
                    .expect("ok")
                    .expect("frame");
                assert!(f.fin);
                assert_eq!(f.op, OP_BINARY);
                assert_eq!(&f.payload[..], &data[..]);
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn unmasked_client_frames_are_refused() {
        let mut buf = BytesMut::new();
        encode(OP_BINARY, b"x", Role::Server, &mut buf);
        assert!(decode(&mut buf, true).is_err());
    }

    #[tokio::test]
    async fn messages_pings_fragments_and_close() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut srx, stx) = split(b, Role::Server, Bytes::new());
        let (mut raw_rd, mut raw_wr) = tokio::io::split(a);
        let mut wire = BytesMut::new();
        // a fragmented binary message with a ping in the middle
        wire.put_u8(OP_BINARY);
        wire.put_u8(0x80 | 3);
        wire.put_slice(&[0, 0, 0, 0]);
        wire.put_slice(b"abc");
        encode(OP_PING, b"p", Role::Client, &mut wire);
        wire.put_u8(0x80 | OP_CONT);
        wire.put_u8(0x80 | 2);
        wire.put_slice(&[1, 1, 1, 1]);
        wire.put_slice(&[b'd' ^ 1, b'e' ^ 1]);
        encode(OP_TEXT, "héllo".as_bytes(), Role::Client, &mut wire);
        encode(
            OP_CLOSE,
            &CLOSE_NORMAL.to_be_bytes(),
            Role::Client,
            &mut wire,
        );
        raw_wr.write_all(&wire).await.expect("write");

        assert_eq!(
            srx.recv().await.expect("ok"),
            Some(Message::Binary(Bytes::from_static(b"abcde")))
        );
        assert_eq!(
            srx.recv().await.expect("ok"),
            Some(Message::Text("héllo".into()))
        );
        stx.binary(Bytes::from_static(b"out")).await.expect("send");
        assert_eq!(srx.recv().await.expect("ok"), None, "close frame");

        let mut got = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            assert!(raw_rd.read_buf(&mut got).await.expect("read") > 0);
            while let Some(f) = decode(&mut got, false).expect("frame") {
                frames.push((f.op, f.payload));
            }
        }
        assert_eq!(frames[0], (OP_PONG, Bytes::from_static(b"p")));
        assert_eq!(frames[1], (OP_BINARY, Bytes::from_static(b"out")));
        assert_eq!(frames[2].0, OP_CLOSE);
    }

    #[tokio::test]
    async fn tunnel_carries_bytes_both_ways() {
        let (a, b) = tokio::io::duplex(1024);
        let (crx, ctx) = split(a, Role::Client, Bytes::new());
        let (srx, stx) = split(b, Role::Server, Bytes::new());
        let mut client = tunnel(crx, ctx);
        let mut server = tunnel(srx, stx);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let w = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
        drop(w.await.expect("writer"));
    }
}
