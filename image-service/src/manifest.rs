//! Manifests, indexes and image configs: media types, tolerant parsing, platform selection.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::reference::is_valid_digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI layer media types.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (seen in docker-save derived images).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The `Accept` header for manifest requests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a layer media type can be unpacked.
pub fn layer_supported(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_TAR | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER_TAR
    )
}

/// An OCI content descriptor (the fields we use).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// Platform of an index entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    /// Entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// Config descriptor.
    pub config: Descriptor,
    /// Layers, bottom to top.
    pub layers: Vec<Descriptor>,
}

/// A parsed manifest-ish document.
#[derive(Clone, Debug)]
pub enum Parsed {
    /// An index or manifest list.
    Index(Index),
    /// An image manifest.
    Manifest(Manifest),
}

fn parse_err(what: &str, digest: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Parse {
        what: format!("{what} {digest}"),
        reason: reason.into(),
    }
}

/// Parses a manifest or index. `content_type` is the HTTP Content-Type (or descriptor media
/// type); the document's own `mediaType` field wins when present.
pub fn parse(
    data: &[u8],
    content_type: Option<&str>,
    digest: &str,
) -> Result<(Parsed, String), ImageError> {
    let probe: Probe =
        serde_json::from_slice(data).map_err(|e| parse_err("manifest", digest, e.to_string()))?;
    if probe.schema_version == Some(1) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
        });
    }
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let mt = match (probe.media_type.clone(), ct) {
        (Some(m), _) if !m.is_empty() => m,
        (_, Some(c)) if c != "application/json" && c != "text/plain" && !c.is_empty() => c,
        _ => {
            // OCI allows an absent mediaType: infer from the shape.
            if probe.manifests.is_some() {
                OCI_INDEX.to_string()
            } else if probe.layers.is_some() && probe.config.is_some() {
                OCI_MANIFEST.to_string()
            } else {
                return Err(parse_err("manifest", digest, "cannot determine media type"));
            }
        }
    };
    match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let idx: Index = serde_json::from_slice(data)
                .map_err(|e| parse_err("index", digest, e.to_string()))?;
            for d in &idx.manifests {
                if !is_valid_digest(&d.digest) {
                    return Err(parse_err(
                        "index",
                        digest,
                        format!("invalid digest {:?}", d.digest),
                    ));
                }
            }
            Ok((Parsed::Index(idx), mt))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest = serde_json::from_slice(data)
                .map_err(|e| parse_err("manifest", digest, e.to_string()))?;
            if !is_valid_digest(&m.config.digest) {
                return Err(parse_err(
                    "manifest",
                    digest,
                    format!("invalid config digest {:?}", m.config.digest),
                ));
            }
            if !m.config.media_type.is_empty()
                && m.config.media_type != OCI_CONFIG
                && m.config.media_type != DOCKER_CONFIG
            {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("config of manifest {digest}"),
                    media_type: m.config.media_type.clone(),
                });
            }
            for l in &m.layers {
                if !layer_supported(&l.media_type) {
                    return Err(ImageError::UnsupportedMediaType {
                        what: format!("layer {} of manifest {digest}", l.digest),
                        media_type: l.media_type.clone(),
                    });
                }
                if !is_valid_digest(&l.digest) {
                    return Err(parse_err(
                        "manifest",
                        digest,
                        format!("invalid layer digest {:?}", l.digest),
                    ));
                }
            }
            Ok((Parsed::Manifest(m), mt))
        }
        other => Err(ImageError::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type: other.into(),
        }),
    }
}

/// Picks the linux/amd64 image manifest from an index (variant ignored).
pub fn select_platform(idx: &Index, index_digest: &str) -> Result<Descriptor, ImageError> {
    let is_manifest = |d: &Descriptor| {
        d.media_type.is_empty() || d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST
    };
    if let Some(d) = idx.manifests.iter().find(|d| {
        is_manifest(d)
            && d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    }) {
        return Ok(d.clone());
    }
    // Entries without a platform are taken only when no entry declares one.
    if idx.manifests.iter().all(|d| d.platform.is_none())
        && let Some(d) = idx.manifests.iter().find(|d| is_manifest(d))
    {
        return Ok(d.clone());
    }
    Err(ImageError::SelectPlatform {
        digest: index_digest.to_string(),
    })
}

/// What the service needs from an image config.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig {
    /// `config.User` ("" if none).
    pub user: String,
    /// `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawInner>,
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawInner {
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type", default)]
    kind: String,
    diff_ids: Vec<String>,
}

/// Parses an image config.
pub fn parse_config(data: &[u8], digest: &str) -> Result<ImageConfig, ImageError> {
    let c: RawConfig =
        serde_json::from_slice(data).map_err(|e| parse_err("config", digest, e.to_string()))?;
    if c.rootfs.kind != "layers" {
        return Err(parse_err(
            "config",
            digest,
            format!("rootfs.type {:?} is not \"layers\"", c.rootfs.kind),
        ));
    }
    for d in &c.rootfs.diff_ids {
        if !is_valid_digest(d) {
            return Err(parse_err(
                "config",
                digest,
                format!("invalid diff id {d:?}"),
            ));
        }
    }
    Ok(ImageConfig {
        user: c.config.and_then(|i| i.user).unwrap_or_default(),
        diff_ids: c.rootfs.diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::{Classify, ErrorKind};

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn index_selection() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let (p, mt) = parse(idx.as_bytes(), None, "sha256:x").expect("parse");
        assert_eq!(mt, DOCKER_LIST);
        let Parsed::Index(i) = p else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&i, "x").expect("amd64").digest, D2);
        let only_arm = Index {
            manifests: vec![i.manifests[0].clone()],
        };
        let e = select_platform(&only_arm, "sha256:x").expect_err("no amd64");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("no linux/amd64 manifest"));
    }

    #[test]
    fn manifests_and_rejections() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{D2}","size":9}}]}}"#
        );
        let (p, mt) = parse(
            m.as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            "d",
        )
        .expect("parse");
        assert_eq!(mt, OCI_MANIFEST);
        assert!(matches!(p, Parsed::Manifest(ref m) if m.layers.len() == 1));
        // no media type anywhere: inferred
        assert!(parse(m.as_bytes(), None, "d").is_ok());

        let foreign = m.replace(
            OCI_LAYER_GZIP,
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        );
        let e = parse(foreign.as_bytes(), Some(DOCKER_MANIFEST), "d").expect_err("foreign");
        assert!(matches!(e, ImageError::UnsupportedMediaType { .. }));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);

        let schema1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            parse(schema1.as_bytes(), None, "d"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let weird = r#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart"}"#;
        assert!(matches!(
            parse(weird.as_bytes(), None, "d"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let helm_cfg = m.replace(OCI_CONFIG, "application/vnd.cncf.helm.config.v1+json");
        assert!(matches!(
            parse(helm_cfg.as_bytes(), None, "d"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse(b"not json", None, "d"),
            Err(ImageError::Parse { .. })
        ));
        let bad_digest = m.replace(D2, "sha256:zz");
        assert!(matches!(
            parse(bad_digest.as_bytes(), None, "d"),
            Err(ImageError::Parse { .. })
        ));
    }

    #[test]
    fn configs() {
        let c = format!(
            r#"{{"architecture":"amd64","config":{{"User":"1000:1000"}},"rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}"#
        );
        let p = parse_config(c.as_bytes(), "d").expect("parse");
        assert_eq!(p.user, "1000:1000");
        assert_eq!(p.diff_ids, [D1]);
        let c = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}"#);
        assert_eq!(parse_config(c.as_bytes(), "d").expect("parse").user, "");
        assert!(parse_config(br#"{"rootfs":{"type":"x","diff_ids":[]}}"#, "d").is_err());
        assert!(parse_config(br#"{}"#, "d").is_err());
    }
}
