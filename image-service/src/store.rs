//! The content store: `blobs/sha256/<hex>`, every blob verified before it gets its final name.
//! Writes go to a temp file in `ingest/` (hashed as they stream), are fsynced, then renamed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::PullProgress;
use crate::digest::{finish, hex_of};
use crate::error::ImageError;

/// The content-addressed blob store plus the ingest area.
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// What is being written (for error messages and size checks).
pub struct BlobSpec<'a> {
    /// Expected `sha256:<hex>` digest.
    pub digest: &'a str,
    /// Expected size, if known from a descriptor.
    pub size: Option<u64>,
    /// Hard limit on bytes accepted.
    pub limit: u64,
    /// Label for errors ("layer", "config", ...).
    pub what: &'a str,
}

impl ContentStore {
    /// A store under `root` (directories must exist).
    pub fn new(root: &Path) -> Self {
        ContentStore {
            blobs: root.join("blobs").join("sha256"),
            ingest: root.join("ingest"),
        }
    }

    /// The blobs directory (`blobs/sha256`).
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// The ingest directory.
    pub fn ingest_dir(&self) -> &Path {
        &self.ingest
    }

    /// Path of the blob `digest`.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(hex_of(digest, "blob digest")?))
    }

    /// Whether the blob is present.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a whole blob, refusing more than `limit` bytes.
    pub async fn read(&self, digest: &str, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.path(digest)?;
        let meta = tokio::fs::metadata(&p)
            .await
            .map_err(|e| ImageError::io("stat blob", &p, e))?;
        if meta.len() > limit {
            return Err(ImageError::TooLarge {
                what: format!("{what} {digest}"),
                limit,
            });
        }
        tokio::fs::read(&p)
            .await
            .map_err(|e| ImageError::io("read blob", &p, e))
    }

    fn check(spec: &BlobSpec<'_>, n: u64) -> Result<(), ImageError> {
        if n > spec.limit {
            return Err(ImageError::TooLarge {
                what: format!("{} {}", spec.what, spec.digest),
                limit: spec.limit,
            });
        }
        if let Some(size) = spec.size
            && n > size
        {
            return Err(ImageError::SizeMismatch {
                what: format!("{} {}", spec.what, spec.digest),
                expected: size,
                actual: n,
            });
        }
        Ok(())
    }

    fn verify_final(spec: &BlobSpec<'_>, n: u64, actual: String) -> Result<(), ImageError> {
        if let Some(size) = spec.size
            && n != size
        {
            return Err(ImageError::SizeMismatch {
                what: format!("{} {}", spec.what, spec.digest),
                expected: size,
                actual: n,
            });
        }
        if actual != spec.digest {
            return Err(ImageError::DigestMismatch {
                what: format!("{} {}", spec.what, spec.digest),
                expected: spec.digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Stores verified in-memory bytes (manifests, configs).
    pub async fn write_bytes(&self, spec: &BlobSpec<'_>, data: Bytes) -> Result<(), ImageError> {
        let s = futures::stream::once(async move { Ok::<_, ImageError>(data) });
        self.write_stream(spec, s, None).await
    }

    /// Streams a blob into the store: temp file in ingest, hash and size checked as bytes
    /// arrive, fsync, rename. Nothing reaches `blobs/` unless it verified.
    pub async fn write_stream<S>(
        &self,
        spec: &BlobSpec<'_>,
        stream: S,
        progress: Option<&Arc<dyn PullProgress>>,
    ) -> Result<(), ImageError>
    where
        S: Stream<Item = Result<Bytes, ImageError>>,
    {
        let final_path = self.path(spec.digest)?;
        if final_path.is_file() {
            return Ok(());
        }
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.ingest)
            .map_err(|e| ImageError::io("create ingest file", &self.ingest, e))?;
        let (file, temp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut n: u64 = 0;
        let total = spec.size.unwrap_or(0);
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            Self::check(spec, n)?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io("write ingest file", &*temp_path, e))?;
            if let Some(p) = progress {
                p.layer(spec.digest, total, n);
            }
        }
        Self::verify_final(spec, n, finish(hasher))?;
        file.sync_all()
            .await
            .map_err(|e| ImageError::io("fsync ingest file", &*temp_path, e))?;
        drop(file);
        temp_path
            .persist(&final_path)
            .map_err(|e| ImageError::io("rename blob", &final_path, e.error))?;
        Ok(())
    }

    /// Blocking: copies a local file (import) into the store, verifying digest and size.
    pub fn write_from_reader(
        &self,
        spec: &BlobSpec<'_>,
        mut src: impl Read,
    ) -> Result<(), ImageError> {
        let final_path = self.path(spec.digest)?;
        if final_path.is_file() {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.ingest)
            .map_err(|e| ImageError::io("create ingest file", &self.ingest, e))?;
        let mut hasher = Sha256::new();
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = src
                .read(&mut buf)
                .map_err(|e| ImageError::io("read import blob", tmp.path(), e))?;
            if k == 0 {
                break;
            }
            n += k as u64;
            Self::check(spec, n)?;
            hasher.update(&buf[..k]);
            tmp.write_all(&buf[..k])
                .map_err(|e| ImageError::io("write ingest file", tmp.path(), e))?;
        }
        Self::verify_final(spec, n, finish(hasher))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("fsync ingest file", tmp.path(), e))?;
        tmp.persist(&final_path)
            .map_err(|e| ImageError::io("rename blob", &final_path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("blobs/sha256")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("ingest")).expect("mkdir");
        let s = ContentStore::new(d.path());
        (d, s)
    }

    fn ingest_empty(s: &ContentStore) -> bool {
        std::fs::read_dir(s.ingest_dir())
            .map(|mut r| r.next().is_none())
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn writes_and_verifies() {
        let (_d, s) = store();
        let data = b"hello world".to_vec();
        let dg = sha256_digest(&data);
        let spec = BlobSpec {
            digest: &dg,
            size: Some(11),
            limit: 100,
            what: "blob",
        };
        s.write_bytes(&spec, Bytes::from(data.clone()))
            .await
            .expect("write");
        assert!(s.has(&dg));
        assert_eq!(s.read(&dg, 100, "blob").await.expect("read"), data);
        assert!(matches!(
            s.read(&dg, 5, "blob").await,
            Err(ImageError::TooLarge { .. })
        ));
        assert!(ingest_empty(&s));
    }

    #[tokio::test]
    async fn rejects_bad_content() {
        let (_d, s) = store();
        let dg = sha256_digest(b"good");
        // digest mismatch
        let spec = BlobSpec {
            digest: &dg,
            size: None,
            limit: 100,
            what: "blob",
        };
        let e = s
            .write_bytes(&spec, Bytes::from_static(b"evil"))
            .await
            .expect_err("mismatch");
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        // truncated
        let spec = BlobSpec {
            digest: &dg,
            size: Some(4),
            limit: 100,
            what: "blob",
        };
        let e = s
            .write_bytes(&spec, Bytes::from_static(b"goo"))
            .await
            .expect_err("short");
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        // too long for the descriptor
        let e = s
            .write_bytes(&spec, Bytes::from_static(b"goodX"))
            .await
            .expect_err("long");
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        // over limit
        let spec = BlobSpec {
            digest: &dg,
            size: None,
            limit: 3,
            what: "manifest",
        };
        let e = s
            .write_bytes(&spec, Bytes::from_static(b"good"))
            .await
            .expect_err("limit");
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
        // blocking path
        let spec = BlobSpec {
            digest: &dg,
            size: Some(4),
            limit: 100,
            what: "blob",
        };
        assert!(s.write_from_reader(&spec, &b"evil"[..]).is_err());
        assert!(!s.has(&dg));
        assert!(ingest_empty(&s));
        s.write_from_reader(&spec, &b"good"[..]).expect("good");
        assert!(s.has(&dg));
    }
}
