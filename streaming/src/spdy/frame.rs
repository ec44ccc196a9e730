//! SPDY/3.1 frames: the wire layout of every frame type kubelet's clients (moby/spdystream) send
//! or expect, encoded and decoded without I/O. Header blocks stay compressed here; see
//! [`super::headers`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version carried by every control frame.
pub const VERSION: u16 = 3;
/// Frame header length (control and data frames alike).
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame can carry (24-bit length).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// `FLAG_FIN` on SYN_STREAM, SYN_REPLY, HEADERS and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// `FLAG_UNIDIRECTIONAL` on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
    /// STREAM_IN_USE.
    pub const STREAM_IN_USE: u32 = 8;
}

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// One SPDY frame. `block` fields are compressed header blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd: client-initiated).
        stream_id: u32,
        /// Associated stream (0: none).
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// Compressed header block.
        block: Bytes,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Compressed header block.
        block: Bytes,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// See [`rst`].
        status: u32,
    },
    /// Connection settings (id, value); the flags of each entry are dropped.
    Settings {
        /// Entries.
        entries: Vec<(u32, u32)>,
    },
    /// Round trip probe, echoed by the receiver when the id has the other side's parity.
    Ping {
        /// Ping id.
        id: u32,
    },
    /// The sender will open no more streams.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// 0: OK.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Compressed header block.
        block: Bytes,
    },
    /// Grants more flow-control window.
    WindowUpdate {
        /// Stream id (0: the session).
        stream_id: u32,
        /// Bytes granted.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// Stream id.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type this module does not know (skipped, as SPDY requires).
    Unknown {
        /// Control frame type.
        kind: u16,
    },
}

/// A malformed frame: the session must end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Control frame with a version other than 3.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A fixed-size payload with the wrong length.
    #[error("control frame type {kind} has a bad length {len}")]
    Length {
        /// Frame type.
        kind: u16,
        /// Payload length.
        len: usize,
    },
    /// Stream id 0 where a stream is required.
    #[error("frame type {0} on stream 0")]
    StreamZero(u16),
}

fn sid(v: u32) -> u32 {
    v & 0x7fff_ffff
}

/// Decodes one frame from the front of `buf`, consuming it; `Ok(None)` when `buf` does not hold a
/// whole frame yet.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    buf.advance(HEADER_LEN);
    let mut p = buf.split_to(len).freeze();
    if first & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            stream_id: sid(first),
            flags,
            data: p,
        }));
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    let kind = (first & 0xffff) as u16;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let need = |min: usize| {
        if len < min {
            Err(FrameError::Length { kind, len })
        } else {
            Ok(())
        }
    };
    let exact = |n: usize| {
        if len != n {
            Err(FrameError::Length { kind, len })
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        SYN_STREAM => {
            need(10)?;
            let stream_id = sid(p.get_u32());
            let associated_to = sid(p.get_u32());
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            if stream_id == 0 {
                return Err(FrameError::StreamZero(kind));
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                block: p,
            }
        }
        SYN_REPLY => {
            need(4)?;
            Frame::SynReply {
                stream_id: sid(p.get_u32()),
                flags,
                block: p,
            }
        }
        RST_STREAM => {
            exact(8)?;
            Frame::RstStream {
                stream_id: sid(p.get_u32()),
                status: p.get_u32(),
            }
        }
        SETTINGS => {
            need(4)?;
            let n = p.get_u32() as usize;
            if n.checked_mul(8) != Some(p.remaining()) {
                return Err(FrameError::Length { kind, len });
            }
            let entries = (0..n)
                .map(|_| (p.get_u32() & 0x00ff_ffff, p.get_u32()))
                .collect();
            Frame::Settings { entries }
        }
        PING => {
            exact(4)?;
            Frame::Ping { id: p.get_u32() }
        }
        GOAWAY => {
            // SPDY/2 peers send no status
            need(4)?;
            let last_good_stream_id = sid(p.get_u32());
            let status = if p.remaining() >= 4 { p.get_u32() } else { 0 };
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        HEADERS => {
            need(4)?;
            Frame::Headers {
                stream_id: sid(p.get_u32()),
                flags,
                block: p,
            }
        }
        WINDOW_UPDATE => {
            exact(8)?;
            Frame::WindowUpdate {
                stream_id: sid(p.get_u32()),
                delta: p.get_u32() & 0x7fff_ffff,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_len(out, len);
}

fn put_len(out: &mut BytesMut, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD);
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
}

/// Appends the wire form of `frame` to `out`. Data longer than [`MAX_PAYLOAD`] must be split by
/// the caller.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            block,
        } => {
            control(out, SYN_STREAM, *flags, 10 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 0x7) << 5);
            out.put_u8(0);
            out.put_slice(block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            block,
        } => {
            control(out, SYN_REPLY, *flags, 4 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, RST_STREAM, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { entries } => {
            control(out, SETTINGS, 0, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for (id, value) in entries {
                out.put_u32(id & 0x00ff_ffff);
                out.put_u32(*value);
            }
        }
        Frame::Ping { id } => {
            control(out, PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control(out, GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Headers {
            stream_id,
            flags,
            block,
        } => {
            control(out, HEADERS, *flags, 4 + block.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(block);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u8(*flags);
            put_len(out, data.len());
            out.put_slice(data);
        }
        Frame::Unknown { kind } => control(out, *kind, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf);
        let wire_len = buf.len();
        // a frame split anywhere is not decoded until it is whole
        for cut in 0..wire_len {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(decode(&mut part), Ok(None), "cut at {cut} of {frame:?}");
        }
        buf.extend_from_slice(b"next");
        assert_eq!(decode(&mut buf), Ok(Some(frame)));
        assert_eq!(&buf[..], b"next", "exactly one frame consumed");
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 7,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            block: Bytes::from_static(b"\x78\x9c"),
        });
        round_trip(Frame::SynReply {
            stream_id: 3,
            flags: 0,
            block: Bytes::from_static(b"abc"),
        });
        round_trip(Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        });
        round_trip(Frame::Settings {
            entries: vec![(7, 65536), (4, 100)],
        });
        round_trip(Frame::Ping { id: 2 });
        round_trip(Frame::GoAway {
            last_good_stream_id: 9,
            status: 0,
        });
        round_trip(Frame::Headers {
            stream_id: 1,
            flags: FLAG_FIN,
            block: Bytes::new(),
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        });
        round_trip(Frame::Data {
            stream_id: 0x7fff_ffff,
            flags: FLAG_FIN,
            data: Bytes::from(vec![7u8; 70_000]),
        });
    }

    #[test]
    fn data_frame_wire_layout_is_the_specs() {
        let mut buf = BytesMut::new();
        encode(
            &Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi"),
            },
            &mut buf,
        );
        assert_eq!(&buf[..], b"\x00\x00\x00\x01\x01\x00\x00\x02hi");
        let mut buf = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut buf);
        assert_eq!(
            &buf[..],
            b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut v2 = BytesMut::from(&b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"[..]);
        assert_eq!(decode(&mut v2), Err(FrameError::Version(2)));
        let mut short_ping = BytesMut::from(&b"\x80\x03\x00\x06\x00\x00\x00\x02\x00\x01"[..]);
        assert!(matches!(
            decode(&mut short_ping),
            Err(FrameError::Length { kind: 6, len: 2 })
        ));
        let mut syn0 = BytesMut::new();
        encode(
            &Frame::SynStream {
                stream_id: 0,
                associated_to: 0,
                priority: 0,
                flags: 0,
                block: Bytes::new(),
            },
            &mut syn0,
        );
        assert_eq!(decode(&mut syn0), Err(FrameError::StreamZero(1)));
        let mut settings = BytesMut::from(
            &b"\x80\x03\x00\x04\x00\x00\x00\x08\x00\x00\x00\x02\x00\x00\x00\x01"[..],
        );
        assert!(
            decode(&mut settings).is_err(),
            "2 entries announced, 0.5 present"
        );
    }

    #[test]
    fn unknown_control_frames_are_skipped_whole() {
        let mut buf = BytesMut::from(&b"\x80\x03\x00\x0a\x00\x00\x00\x03xyz"[..]);
        assert_eq!(decode(&mut buf), Ok(Some(Frame::Unknown { kind: 10 })));
        assert!(buf.is_empty());
    }
}
