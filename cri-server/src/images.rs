//! Image orchestration: the image service (content, snapshots) and the state store (records,
//! names) kept consistent. Names resolve here: a CRI image spec may be an id, an id prefix, a
//! tag reference or a digest reference, normalised docker-style.

use std::sync::Arc;

use tokio::sync::RwLock;
use unicri_image::reference::Reference;
use unicri_image::{Credentials, ImageRecord, ImageService, PullProgress};
use unicri_storage::{ImageRow, NameKind, Store};

use crate::error::CriError;

/// Images as the CRI edge sees them.
pub struct Images {
    service: Arc<ImageService>,
    store: Store,
    /// Pulls and imports hold it shared, garbage collection exclusively, so GC never deletes the
    /// blobs of an image that is being recorded.
    gc_lock: RwLock<()>,
}

/// A stored image with its decoded record.
#[derive(Clone, Debug)]
pub struct StoredImage {
    /// The row (id, names, size).
    pub row: ImageRow,
    /// The image service's record.
    pub record: ImageRecord,
}

fn hex_only(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Images {
    /// Wraps the two halves.
    pub fn new(service: Arc<ImageService>, store: Store) -> Self {
        Self {
            service,
            store,
            gc_lock: RwLock::new(()),
        }
    }

    /// The image service (for layer dirs, fs usage, verbose info).
    pub fn service(&self) -> &ImageService {
        &self.service
    }

    fn decode(row: ImageRow) -> Result<StoredImage, CriError> {
        let record: ImageRecord = serde_json::from_str(&row.record).map_err(|e| {
            CriError::new(
                unicri_sandbox::ErrorKind::Internal,
                format!("decode stored record of image {}: {e}", row.id),
            )
        })?;
        Ok(StoredImage { row, record })
    }

    /// Resolves a CRI image spec to a stored image: an exact name first, then `sha256:<id>`, then
    /// a unique id prefix (at least 3 hex digits). `Ok(None)` when nothing matches.
    pub async fn resolve(&self, spec: &str) -> Result<Option<StoredImage>, CriError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(CriError::invalid("image reference is empty"));
        }
        if let Some(hex) = spec.strip_prefix("sha256:") {
            if hex.len() == 64 && hex_only(hex) {
                return self
                    .store
                    .image_by_id(spec)
                    .await?
                    .map(Self::decode)
                    .transpose();
            }
            return Err(CriError::invalid(format!("invalid image id {spec:?}")));
        }
        // `name:tag@digest` is recorded (and looked up) as `name@digest`: the digest wins and a
        // pull by digest records no tag (containerd's ParseDockerRef does the same).
        if let Ok(r) = Reference::parse(spec)
            && let Some(row) = self
                .store
                .image_by_name(&match &r.digest {
                    Some(d) => format!("{}@{d}", r.name()),
                    None => r.to_string(),
                })
                .await?
        {
            return Self::decode(row).map(Some);
        }
        if spec.len() >= 3 && spec.len() <= 64 && hex_only(spec) {
            let ids = self.store.image_ids_with_prefix(spec).await?;
            match ids.as_slice() {
                [] => {}
                [one] => {
                    return self
                        .store
                        .image_by_id(one)
                        .await?
                        .map(Self::decode)
                        .transpose();
                }
                _ => {
                    return Err(CriError::invalid(format!(
                        "image id prefix {spec:?} is ambiguous ({} images)",
                        ids.len()
                    )));
                }
            }
        }
        if hex_only(spec) && spec.len() <= 64 {
            // An id (or id prefix) that matches nothing: absent, not malformed.
            return Ok(None);
        }
        match Reference::parse(spec) {
            Ok(_) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Pulls `reference` and records it under its tag and digest names. Returns the image id.
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<Credentials>,
        progress: Option<Arc<dyn PullProgress>>,
    ) -> Result<StoredImage, CriError> {
        let result = {
            let _shared = self.gc_lock.read().await;
            match self.service.pull(reference, creds, progress).await {
                Ok(record) => self.record(record).await,
                Err(e) => Err(e.into()),
            }
        };
        if result.is_err() {
            self.collect_after_failure().await;
        }
        result
    }

    /// A failed pull or import may have unpacked some layers before failing on a later one:
    /// collect them so no half image stays behind.
    async fn collect_after_failure(&self) {
        if let Err(e) = self.collect_garbage().await {
            tracing::warn!(error = %e.message, "garbage collection after a failed pull");
        }
    }

    /// Imports every image of an archive or layout at `path`.
    pub async fn import(&self, path: &std::path::Path) -> Result<Vec<StoredImage>, CriError> {
        let result = {
            let _shared = self.gc_lock.read().await;
            match self.service.import(path).await {
                Ok(records) => {
                    let mut out = Vec::with_capacity(records.len());
                    for r in records {
                        out.push(self.record(r).await?);
                    }
                    Ok(out)
                }
                Err(e) => Err(CriError::from(e)),
            }
        };
        if result.is_err() {
            self.collect_after_failure().await;
        }
        result
    }

    async fn record(&self, record: ImageRecord) -> Result<StoredImage, CriError> {
        let mut names = Vec::new();
        if let Some(tag) = &record.repo_tag {
            names.push((tag.clone(), NameKind::Tag));
        }
        if !record.repo_digest.is_empty() {
            names.push((record.repo_digest.clone(), NameKind::Digest));
        }
        let json = serde_json::to_string(&record).map_err(|e| {
            CriError::new(
                unicri_sandbox::ErrorKind::Internal,
                format!("encode image record: {e}"),
            )
        })?;
        self.store
            .put_image(&record.id, &json, record.size, &names)
            .await?;
        let row = self.store.image_by_id(&record.id).await?.ok_or_else(|| {
            CriError::new(
                unicri_sandbox::ErrorKind::Internal,
                format!("image {} vanished after recording it", record.id),
            )
        })?;
        Ok(StoredImage { row, record })
    }

    /// Every stored image.
    pub async fn list(&self) -> Result<Vec<StoredImage>, CriError> {
        self.store
            .list_images()
            .await?
            .into_iter()
            .map(Self::decode)
            .collect()
    }

    /// Removes the image `spec` resolves to, with all its names, then collects content no image
    /// needs any more. Removing an image that does not exist is not an error (CRI: idempotent).
    /// Returns the removed image id, if any.
    pub async fn remove(&self, spec: &str) -> Result<Option<String>, CriError> {
        let Some(img) = self.resolve(spec).await? else {
            return Ok(None);
        };
        self.store.delete_image(&img.row.id).await?;
        self.collect_garbage().await?;
        Ok(Some(img.row.id))
    }

    /// Deletes blobs and snapshots that no stored image references.
    pub async fn collect_garbage(&self) -> Result<(), CriError> {
        let _exclusive = self.gc_lock.write().await;
        let keep: Vec<ImageRecord> = self.list().await?.into_iter().map(|i| i.record).collect();
        self.service.remove_unreferenced(&keep).await?;
        Ok(())
    }
}

/// The image's user split the way CRI wants it: a numeric user gives `uid`, a name gives
/// `username`; a group part is ignored (CRI has no field for it).
pub fn split_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn images(dir: &std::path::Path) -> Images {
        let svc = ImageService::new(unicri_image::ImageServiceConfig::new(dir.join("images")))
            .await
            .expect("image service");
        let store = Store::open(&dir.join("state.db")).await.expect("store");
        Images::new(Arc::new(svc), store)
    }

    fn record(id_hex: char, digest_hex: char) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{}", id_hex.to_string().repeat(64)),
            repo_tag: None,
            repo_digest: format!(
                "docker.io/library/nginx@sha256:{}",
                digest_hex.to_string().repeat(64)
            ),
            manifest_digest: format!("sha256:{}", digest_hex.to_string().repeat(64)),
            config_digest: format!("sha256:{}", id_hex.to_string().repeat(64)),
            size: 1,
            layers: vec![],
            user: String::new(),
            config_json: "{}".into(),
        }
    }

    #[tokio::test]
    async fn tag_and_digest_reference_resolves_by_its_digest() {
        // Pulling `nginx:1.25@sha256:…` records only the digest name (like containerd); a
        // status query with the same spec must find it, or kubelet re-pulls on every start.
        let dir = tempfile::tempdir().expect("tempdir");
        let images = images(dir.path()).await;
        let rec = record('a', 'b');
        images.record(rec.clone()).await.expect("record");
        let spec = format!("nginx:1.25@sha256:{}", "b".repeat(64));
        let got = images.resolve(&spec).await.expect("resolve");
        assert_eq!(got.map(|i| i.row.id), Some(rec.id.clone()));
        let other = format!("nginx:1.25@sha256:{}", "c".repeat(64));
        assert!(images.resolve(&other).await.expect("resolve").is_none());
    }

    #[test]
    fn users_split_like_kubelet_expects() {
        assert_eq!(split_user(""), (None, String::new()));
        assert_eq!(split_user("1002"), (Some(1002), String::new()));
        assert_eq!(split_user("1003:1004"), (Some(1003), String::new()));
        assert_eq!(split_user("www-data"), (None, "www-data".to_string()));
        assert_eq!(split_user("www-data:1004"), (None, "www-data".to_string()));
        assert_eq!(split_user("0"), (Some(0), String::new()));
    }
}
