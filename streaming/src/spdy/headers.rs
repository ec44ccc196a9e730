//! SPDY/3 header blocks: name/value pairs, zlib-compressed with the protocol's dictionary. Each
//! direction of a session is one zlib stream, flushed (SYNC) at the end of every block, so the
//! compressor and decompressor live as long as the session.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): these
/// words, each with a 4-byte big-endian length, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412\
413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 \
Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not \
Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, \
Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,\
application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=\
utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// The dictionary bytes.
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// Header name/value pairs, names lower-case. Repeated values of one name are separate pairs.
pub type Headers = Vec<(String, String)>;

/// The value of `name` (first, if repeated).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A header block that cannot be decoded: the session must end.
#[derive(Debug, thiserror::Error)]
#[error("bad SPDY header block: {0}")]
pub struct HeaderError(String);

/// One direction's compressor.
pub struct Compressor {
    z: Compress,
    dict_set: bool,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    /// A fresh zlib stream.
    pub fn new() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
            dict_set: false,
        }
    }

    /// The compressed block for `headers` (same-name values joined by NUL, as SPDY/3 wants).
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        if !self.dict_set {
            self.z
                .set_dictionary(&dictionary())
                .map_err(|e| HeaderError(e.to_string()))?;
            self.dict_set = true;
        }
        let mut merged: Vec<(String, String)> = Vec::new();
        for (n, v) in headers {
            let n = n.to_ascii_lowercase();
            match merged.iter_mut().find(|(m, _)| *m == n) {
                Some((_, mv)) => {
                    mv.push('\0');
                    mv.push_str(v);
                }
                None => merged.push((n, v.clone())),
            }
        }
        let mut plain = Vec::new();
        plain.extend_from_slice(&(merged.len() as u32).to_be_bytes());
        for (n, v) in &merged {
            plain.extend_from_slice(&(n.len() as u32).to_be_bytes());
            plain.extend_from_slice(n.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before_in = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError(e.to_string()))?;
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            // done when all input is in and the flush fit (spare room left)
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// One direction's decompressor.
pub struct Decompressor {
    z: Decompress,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

/// Header blocks are small; a block inflating past this is hostile.
const MAX_BLOCK: usize = 1 << 20;

impl Decompressor {
    /// A fresh zlib stream.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Decodes one compressed block.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.len() >= MAX_BLOCK {
                return Err(HeaderError("header block too large".into()));
            }
            plain.reserve(1024);
            let before_in = self.z.total_in();
            let before_out = plain.len();
            let r = self
                .z
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let progressed = used > 0 || plain.len() > before_out;
                    if input.is_empty() && plain.len() < plain.capacity() {
                        break;
                    }
                    if !progressed {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&dictionary())
                        .map_err(|e| HeaderError(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError(e.to_string())),
            }
        }
        parse_block(&plain)
    }
}

fn parse_block(mut p: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if p.len() < n {
            return Err(HeaderError("truncated".into()));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn len(p: &mut &[u8]) -> Result<usize, HeaderError> {
        let b = take(p, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let n = len(&mut p)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let nl = len(&mut p)?;
        let name = String::from_utf8_lossy(take(&mut p, nl)?).to_ascii_lowercase();
        let vl = len(&mut p)?;
        let value = take(&mut p, vl)?;
        for v in value.split(|b| *b == 0) {
            out.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Adler-32 of the SPDY/3 dictionary, as announced in every zlib header that uses it
        let (mut a, mut b) = (1u32, 0u32);
        for byte in &d {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn blocks_round_trip_through_one_zlib_stream() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let blocks = [
            h(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
            h(&[]),
            h(&[("streamType", "stdout")]),
            h(&[("a", "1"), ("a", "2"), ("b", &"x".repeat(5000))]),
        ];
        for block in &blocks {
            let wire = c.compress(block).expect("compress");
            let back = d.decompress(&wire).expect("decompress");
            let want: Headers = block
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            assert_eq!(back, want);
        }
        // later blocks reuse the window: repeating a block costs a few bytes
        let again = c.compress(&blocks[0]).expect("compress");
        assert!(again.len() < 20, "{} bytes", again.len());
        assert_eq!(
            get(&d.decompress(&again).expect("decompress"), "PORT"),
            Some("8080")
        );
    }

    #[test]
    fn first_block_announces_the_dictionary() {
        let wire = Compressor::new()
            .compress(&h(&[("x", "y")]))
            .expect("compress");
        // zlib header with FDICT set, then the dictionary's Adler-32
        assert_eq!(wire[1] & 0x20, 0x20);
        assert_eq!(&wire[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Decompressor::new();
        assert!(d.decompress(b"\x00\x01\x02\x03garbage").is_err());
        let mut d = Decompressor::new();
        let mut c = Compressor::new();
        let mut wire = c.compress(&h(&[("a", "b")])).expect("compress");
        wire.truncate(wire.len() / 2);
        assert!(d.decompress(&wire).is_err(), "truncated block");
    }
}
