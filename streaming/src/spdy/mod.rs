//! SPDY/3.1, as far as Kubernetes streaming uses it: the framing ([`frame`]), header blocks with
//! the zlib dictionary ([`headers`]) and a session of concurrent streams ([`session`]).
//! There is no maintained Rust SPDY crate; this module is the whole implementation.

pub mod frame;
pub mod headers;
pub mod session;

pub use headers::{Headers, get as header};
pub use session::{Connection, Role, Stream, StreamReader, StreamWriter};

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_end_with_fin() {
        let (a, b) = tokio::io::duplex(1024);
        let mut client = Connection::new(a, Role::Client);
        let mut server = Connection::new(b, Role::Server);

        let mut s1 = client
            .open(h(&[("streamType", "stdout")]), false)
            .await
            .expect("open");
        let s2 = client
            .open(h(&[("streamType", "stdin")]), false)
            .await
            .expect("open");
        let r1 = server.accept().await.expect("stream 1");
        let mut r2 = server.accept().await.expect("stream 2");
        assert_eq!((r1.id, r2.id), (1, 3));
        assert_eq!(header(&r1.headers, "streamtype"), Some("stdout"));
        assert_eq!(header(&r2.headers, "streamtype"), Some("stdin"));

        // a large write crosses many frames and a small transport buffer
        let big = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let w = s2.writer.clone();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            w.write(sent).await.expect("write");
            w.close().await.expect("fin");
        });
        let mut got = Vec::new();
        while let Some(d) = r2.reader.read().await {
            got.extend_from_slice(&d);
        }
        writer.await.expect("writer");
        assert_eq!(got, big);

        r1.writer
            .write(Bytes::from_static(b"hello"))
            .await
            .expect("write");
        r1.writer.close().await.expect("fin");
        assert_eq!(s1.reader.read().await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(s1.reader.read().await, None, "FIN ends the stream");
        drop(s2);

        server.close().await;
        assert!(client.accept().await.is_none(), "GOAWAY ends the client");
    }

    #[tokio::test]
    async fn reset_and_session_end_end_readers() {
        let (a, b) = tokio::io::duplex(4096);
        let mut client = Connection::new(a, Role::Client);
        let mut server = Connection::new(b, Role::Server);
        let s = client.open(h(&[("x", "1")]), false).await.expect("open");
        let mut r = server.accept().await.expect("stream");
        s.writer.reset(frame::rst::CANCEL).await.expect("reset");
        assert_eq!(r.reader.read().await, None);

        let _s = client.open(h(&[("x", "2")]), false).await.expect("open");
        let mut r = server.accept().await.expect("stream");
        drop(client);
        assert_eq!(r.reader.read().await, None, "transport gone");
        assert!(server.accept().await.is_none());
    }

    #[tokio::test]
    async fn received_data_is_granted_back_with_window_updates() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut raw, b) = tokio::io::duplex(1 << 20);
        let mut server = Connection::new(b, Role::Server);
        let mut out = bytes::BytesMut::new();
        let block = headers::Compressor::new()
            .compress(&h(&[("streamtype", "stdin")]))
            .expect("compress");
        frame::encode(
            &frame::Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                block: block.into(),
            },
            &mut out,
        );
        // more than SPDY/3.1's initial 64 KiB window, in frames of 16 KiB
        for _ in 0..8 {
            frame::encode(
                &frame::Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::from(vec![1u8; 16 * 1024]),
                },
                &mut out,
            );
        }
        raw.write_all(&out).await.expect("write");
        let mut s = server.accept().await.expect("stream");
        let mut got = 0;
        while got < 8 * 16 * 1024 {
            got += s.reader.read().await.expect("data").len();
        }
        let mut buf = bytes::BytesMut::new();
        let mut granted = 0u32;
        while granted < 8 * 16 * 1024 {
            raw.read_buf(&mut buf).await.expect("read");
            while let Some(f) = frame::decode(&mut buf).expect("frame") {
                if let frame::Frame::WindowUpdate {
                    stream_id: 1,
                    delta,
                } = f
                {
                    granted += delta;
                }
            }
        }
        assert_eq!(
            granted,
            8 * 16 * 1024,
            "every byte consumed is granted back"
        );
    }

    #[tokio::test]
    async fn pings_are_answered_and_streams_with_the_wrong_parity_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut raw, b) = tokio::io::duplex(4096);
        let mut server = Connection::new(b, Role::Server);
        let mut out = bytes::BytesMut::new();
        frame::encode(&frame::Frame::Ping { id: 1 }, &mut out);
        let block = headers::Compressor::new()
            .compress(&Vec::new())
            .expect("compress");
        frame::encode(
            &frame::Frame::SynStream {
                stream_id: 2,
                associated_to: 0,
                priority: 0,
                flags: 0,
                block: block.into(),
            },
            &mut out,
        );
        raw.write_all(&out).await.expect("write");
        let mut buf = bytes::BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            raw.read_buf(&mut buf).await.expect("read");
            while let Some(f) = frame::decode(&mut buf).expect("frame") {
                frames.push(f);
            }
        }
        assert_eq!(frames[0], frame::Frame::Ping { id: 1 });
        assert_eq!(
            frames[1],
            frame::Frame::RstStream {
                stream_id: 2,
                status: frame::rst::PROTOCOL_ERROR
            }
        );
        drop(raw);
        assert!(server.accept().await.is_none());
    }
}
