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

/// The CNCF wasm OCI artifact config (`architecture: "wasm"`, `os: "wasip1"`/`"wasip2"`,
/// `layerDigests`, optional `component`).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The OCI empty descriptor media type (blob `{}`), used as the config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Wasm layer: the CNCF wasm OCI artifact layer (a module or a component).
pub const WASM_LAYER: &str = "application/wasm";
/// Wasm layer: a core module (W3C media type).
pub const WASM_MODULE_LAYER: &str = "application/vnd.w3c.wasm.module.v1+wasm";
/// Wasm layer: runwasi's component layer.
pub const WASM_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// Wasm layer: the older `wasm-to-oci` content layer.
pub const WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Every layer media type holding a bare wasm binary (not a tar). Such a layer's snapshot is a
/// directory holding just the module file (see [`wasm_module_name`]).
pub const WASM_LAYER_MEDIA_TYPES: [&str; 4] = [
    WASM_LAYER,
    WASM_MODULE_LAYER,
    WASM_COMPONENT_LAYER,
    WASM_CONTENT_LAYER,
];
/// The descriptor annotation naming a layer's file.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// The module's file name when a wasm layer's title is missing or unsafe.
pub const WASM_MODULE_FALLBACK_NAME: &str = "module.wasm";
/// The label of a synthesized wasm image config naming the (first) layer's media type.
pub const WASM_ARTIFACT_LABEL: &str = "org.unicri.wasm.artifact";

/// The `Accept` header for manifest requests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a layer media type is a tar layer this runtime unpacks (wasm layers, which are not
/// tars, are [`is_wasm_layer`]).
pub fn layer_supported(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_TAR | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER_TAR
    )
}

/// Whether a layer media type is a bare wasm binary (one of [`WASM_LAYER_MEDIA_TYPES`]).
pub fn is_wasm_layer(mt: &str) -> bool {
    WASM_LAYER_MEDIA_TYPES.contains(&mt)
}

/// Whether `name` is a safe single file name for a wasm module in a snapshot: non-empty, at
/// most 255 bytes, no `/` or NUL, and not `.` or `..`.
pub fn is_safe_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// The file name of the module a wasm layer unpacks to: the layer's
/// `org.opencontainers.image.title` annotation when that is a safe file name
/// ([`is_safe_module_name`]), else [`WASM_MODULE_FALLBACK_NAME`].
pub fn wasm_module_name(layer: &Descriptor) -> String {
    layer
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TITLE))
        .filter(|t| is_safe_module_name(t))
        .cloned()
        .unwrap_or_else(|| WASM_MODULE_FALLBACK_NAME.to_string())
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

impl Manifest {
    /// Whether this is a wasm artifact: at least one layer and every layer a wasm layer
    /// ([`parse`] refuses manifests mixing wasm and tar layers).
    pub fn is_wasm_artifact(&self) -> bool {
        !self.layers.is_empty() && self.layers.iter().all(|l| is_wasm_layer(&l.media_type))
    }
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
            let cfg_mt = m.config.media_type.as_str();
            let artifact_config = cfg_mt == WASM_CONFIG || cfg_mt == OCI_EMPTY;
            if !cfg_mt.is_empty()
                && cfg_mt != OCI_CONFIG
                && cfg_mt != DOCKER_CONFIG
                && !artifact_config
            {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("config of manifest {digest}"),
                    media_type: m.config.media_type.clone(),
                });
            }
            for l in &m.layers {
                if !layer_supported(&l.media_type) && !is_wasm_layer(&l.media_type) {
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
            let first_wasm = m.layers.iter().find(|l| is_wasm_layer(&l.media_type));
            if let Some(w) = first_wasm
                && !m.is_wasm_artifact()
            {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!(
                        "layer {} of manifest {digest} (wasm layers cannot be mixed with tar layers)",
                        w.digest
                    ),
                    media_type: w.media_type.clone(),
                });
            }
            if artifact_config && first_wasm.is_none() {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!(
                        "config of manifest {digest} (an artifact config needs wasm layers)"
                    ),
                    media_type: m.config.media_type.clone(),
                });
            }
            Ok((Parsed::Manifest(m), mt))
        }
        other => Err(ImageError::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type: other.into(),
        }),
    }
}

/// Platform `os` values of wasm entries in an index (with architecture `wasm`).
pub const WASM_PLATFORM_OS: [&str; 3] = ["wasip1", "wasip2", "wasi"];

/// Picks the linux/amd64 image manifest from an index (variant ignored); without one, the first
/// wasm entry (architecture `wasm`, os one of [`WASM_PLATFORM_OS`]).
pub fn select_platform(idx: &Index, index_digest: &str) -> Result<Descriptor, ImageError> {
    let is_manifest = |d: &Descriptor| {
        d.media_type.is_empty() || d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST
    };
    let find = |want: &dyn Fn(&Platform) -> bool| {
        idx.manifests
            .iter()
            .find(|d| is_manifest(d) && d.platform.as_ref().is_some_and(want))
    };
    if let Some(d) = find(&|p| p.os == "linux" && p.architecture == "amd64") {
        return Ok(d.clone());
    }
    if let Some(d) =
        find(&|p| p.architecture == "wasm" && WASM_PLATFORM_OS.contains(&p.os.as_str()))
    {
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

/// The OCI image config stored (as [`crate::ImageRecord::config_json`]) for a wasm artifact, so
/// the container side finds the module like any image's entrypoint:
///
/// ```json
/// {"architecture": "wasm", "os": "wasip1",
///  "config": {"Entrypoint": ["/<module>"], "Labels": {"org.unicri.wasm.artifact": "<layer media type>"}},
///  "rootfs": {"type": "layers", "diff_ids": ["<layer digest>", ...]}}
/// ```
///
/// `os` is the real config's `os` when it has one (`wasip1`/`wasip2` in a wasm config), else
/// `wasip1`; its `created` and `author` are carried over. When the real config is an OCI/Docker
/// image config (`config_media_type`), its `config` object (`Env`, `Cmd`, `WorkingDir`, `User`,
/// `Labels`, ...) is kept, with `Entrypoint` replaced and the label added. `module` is the file
/// name of the first layer's module; `layer_media_type` that layer's media type; `diff_ids` the
/// layers' diff ids (their blob digests). `config` must be a JSON object (`{}` for an empty
/// config).
pub fn synthesize_wasm_config(
    config: &[u8],
    config_media_type: &str,
    config_digest: &str,
    module: &str,
    layer_media_type: &str,
    diff_ids: &[String],
) -> Result<String, ImageError> {
    use serde_json::{Map, Value, json};
    let real: Value = serde_json::from_slice(config)
        .map_err(|e| parse_err("config", config_digest, e.to_string()))?;
    let Value::Object(real) = real else {
        return Err(parse_err("config", config_digest, "not a json object"));
    };
    let image_config = matches!(config_media_type, "" | OCI_CONFIG | DOCKER_CONFIG);
    let mut inner = match real.get("config") {
        Some(Value::Object(o)) if image_config => o.clone(),
        _ => Map::new(),
    };
    inner.insert("Entrypoint".into(), json!([format!("/{module}")]));
    let mut labels = match inner.remove("Labels") {
        Some(Value::Object(l)) => l,
        _ => Map::new(),
    };
    labels.insert(WASM_ARTIFACT_LABEL.into(), json!(layer_media_type));
    inner.insert("Labels".into(), Value::Object(labels));
    let os = match real.get("os") {
        Some(Value::String(os)) if !os.is_empty() => os.clone(),
        _ => "wasip1".to_string(),
    };
    let mut out = Map::new();
    out.insert("architecture".into(), json!("wasm"));
    out.insert("os".into(), json!(os));
    for key in ["created", "author"] {
        if let Some(v @ Value::String(_)) = real.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("config".into(), Value::Object(inner));
    out.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    serde_json::to_string(&Value::Object(out)).map_err(|e| {
        parse_err(
            "config",
            config_digest,
            format!("serialize wasm config: {e}"),
        )
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

    fn wasm_manifest(config_mt: &str, layers: &[(&str, Option<&str>)]) -> String {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(mt, title)| {
                let mut d = serde_json::json!({"mediaType": mt, "digest": D2, "size": 9});
                if let Some(t) = title {
                    d["annotations"] = serde_json::json!({ANNOTATION_TITLE: t});
                }
                d
            })
            .collect();
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.wasm.config.v0+json",
            "config": {"mediaType": config_mt, "digest": D1, "size": 2},
            "layers": layers,
        })
        .to_string()
    }

    #[test]
    fn wasm_artifacts_parse() {
        assert_eq!(WASM_LAYER_MEDIA_TYPES.len(), 4);
        for mt in WASM_LAYER_MEDIA_TYPES {
            assert!(is_wasm_layer(mt));
            assert!(!layer_supported(mt));
            for cfg in [WASM_CONFIG, OCI_EMPTY, OCI_CONFIG, DOCKER_CONFIG, ""] {
                let m = wasm_manifest(cfg, &[(mt, Some("app.wasm")), (mt, None)]);
                let (p, _) = parse(m.as_bytes(), None, "d").expect("artifact parses");
                let Parsed::Manifest(m) = p else {
                    panic!("not a manifest")
                };
                assert!(m.is_wasm_artifact(), "{cfg} {mt}");
                assert_eq!(wasm_module_name(&m.layers[0]), "app.wasm");
                assert_eq!(wasm_module_name(&m.layers[1]), WASM_MODULE_FALLBACK_NAME);
            }
        }
        assert!(!is_wasm_layer(OCI_LAYER_GZIP));
        assert!(!is_wasm_layer("application/wasm+gzip"));
        let unsupported = |m: String| {
            let e = parse(m.as_bytes(), None, "d").expect_err("refused");
            assert!(matches!(e, ImageError::UnsupportedMediaType { .. }), "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            e.to_string()
        };
        // a helm chart is still refused, for its config and for its layer
        let helm = wasm_manifest(
            "application/vnd.cncf.helm.config.v1+json",
            &[("application/vnd.cncf.helm.chart.content.v1.tar+gzip", None)],
        );
        assert!(unsupported(helm).contains("helm.config"));
        let helm_layer = wasm_manifest(
            OCI_EMPTY,
            &[("application/vnd.cncf.helm.chart.content.v1.tar+gzip", None)],
        );
        assert!(unsupported(helm_layer).contains("helm.chart.content"));
        // wasm and tar layers mixed
        let mixed = wasm_manifest(OCI_CONFIG, &[(OCI_LAYER_GZIP, None), (WASM_LAYER, None)]);
        assert!(unsupported(mixed).contains("cannot be mixed"));
        // an artifact config without wasm layers
        let tar_only = wasm_manifest(WASM_CONFIG, &[(OCI_LAYER_GZIP, None)]);
        assert!(unsupported(tar_only).contains("needs wasm layers"));
        let empty = wasm_manifest(OCI_EMPTY, &[]);
        assert!(unsupported(empty).contains("needs wasm layers"));
        // an image config with no layers is still an (empty) image, not an artifact
        let (p, _) =
            parse(wasm_manifest(OCI_CONFIG, &[]).as_bytes(), None, "d").expect("no layers");
        assert!(matches!(p, Parsed::Manifest(ref m) if !m.is_wasm_artifact()));
    }

    #[test]
    fn module_names() {
        let desc = |title: &str| Descriptor {
            media_type: WASM_LAYER.into(),
            digest: D2.into(),
            size: 1,
            platform: None,
            annotations: Some(HashMap::from([(
                ANNOTATION_TITLE.to_string(),
                title.into(),
            )])),
        };
        for ok in [
            "app.wasm",
            "x",
            ".hidden",
            "with space.wasm",
            "..a",
            &"a".repeat(255),
        ] {
            assert!(is_safe_module_name(ok), "{ok:?}");
            assert_eq!(wasm_module_name(&desc(ok)), ok);
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs.wasm",
            "../../etc/passwd",
            "dir/",
            "nul\0.wasm",
            long.as_str(),
        ] {
            assert!(!is_safe_module_name(bad), "{bad:?}");
            assert_eq!(wasm_module_name(&desc(bad)), WASM_MODULE_FALLBACK_NAME);
        }
        let untitled = Descriptor {
            annotations: Some(HashMap::from([("other".to_string(), "x".to_string())])),
            ..desc("x")
        };
        assert_eq!(wasm_module_name(&untitled), WASM_MODULE_FALLBACK_NAME);
        let bare = Descriptor {
            annotations: None,
            ..desc("x")
        };
        assert_eq!(wasm_module_name(&bare), WASM_MODULE_FALLBACK_NAME);
    }

    #[test]
    fn synthesized_wasm_configs() {
        let diff_ids = vec![D2.to_string(), D1.to_string()];
        let wasm_cfg = format!(
            r#"{{"created":"2024-01-02T03:04:05Z","author":"me","architecture":"wasm","os":"wasip2",
            "layerDigests":["{D2}","{D1}"],"component":{{"exports":["wasi:cli/run@0.2.0"]}}}}"#
        );
        let json = synthesize_wasm_config(
            wasm_cfg.as_bytes(),
            WASM_CONFIG,
            "d",
            "app.wasm",
            WASM_LAYER,
            &diff_ids,
        )
        .expect("synthesize");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "architecture": "wasm", "os": "wasip2",
                "created": "2024-01-02T03:04:05Z", "author": "me",
                "config": {"Entrypoint": ["/app.wasm"],
                           "Labels": {WASM_ARTIFACT_LABEL: WASM_LAYER}},
                "rootfs": {"type": "layers", "diff_ids": [D2, D1]},
            })
        );
        // the synthesized config reads back as an image config
        let p = parse_config(json.as_bytes(), "d").expect("image config");
        assert_eq!(p.diff_ids, diff_ids);
        assert_eq!(p.user, "");

        // the empty config: os defaults to wasip1
        let json = synthesize_wasm_config(
            b"{}",
            OCI_EMPTY,
            "d",
            WASM_MODULE_FALLBACK_NAME,
            WASM_COMPONENT_LAYER,
            &diff_ids[..1],
        )
        .expect("synthesize");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "architecture": "wasm", "os": "wasip1",
                "config": {"Entrypoint": ["/module.wasm"],
                           "Labels": {WASM_ARTIFACT_LABEL: WASM_COMPONENT_LAYER}},
                "rootfs": {"type": "layers", "diff_ids": [D2]},
            })
        );

        // an image config (runwasi style): its runtime config is kept, the entrypoint replaced
        let oci_cfg = br#"{"architecture":"wasm","os":"wasip1","config":{"Entrypoint":["_start"],
            "Cmd":["--flag"],"Env":["A=b"],"User":"1000","Labels":{"k":"v"}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let json = synthesize_wasm_config(
            oci_cfg,
            OCI_CONFIG,
            "d",
            "m.wasm",
            WASM_MODULE_LAYER,
            &diff_ids[..1],
        )
        .expect("synthesize");
        let p = parse_config(json.as_bytes(), "d").expect("image config");
        assert_eq!(p.user, "1000");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            v["config"],
            serde_json::json!({"Entrypoint": ["/m.wasm"], "Cmd": ["--flag"], "Env": ["A=b"],
                "User": "1000", "Labels": {"k": "v", WASM_ARTIFACT_LABEL: WASM_MODULE_LAYER}})
        );
        assert_eq!(v["rootfs"]["diff_ids"], serde_json::json!([D2]));
        // a wasm config's stray `config` object is not taken as a runtime config
        let json = synthesize_wasm_config(
            br#"{"config":{"User":"0","Entrypoint":["/bin/sh"]}}"#,
            WASM_CONFIG,
            "d",
            "m.wasm",
            WASM_LAYER,
            &diff_ids[..1],
        )
        .expect("synthesize");
        assert_eq!(parse_config(json.as_bytes(), "d").expect("parse").user, "");
        assert!(json.contains(r#""Entrypoint":["/m.wasm"]"#), "{json}");

        for bad in [&b"[]"[..], b"not json", b"\"x\""] {
            let e = synthesize_wasm_config(bad, WASM_CONFIG, "d", "m", WASM_LAYER, &diff_ids)
                .expect_err("not an object");
            assert!(matches!(e, ImageError::Parse { .. }), "{e}");
        }
    }

    #[test]
    fn index_falls_back_to_wasm() {
        let entry = |d: &str, os: &str, arch: &str| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
            annotations: None,
        };
        for os in WASM_PLATFORM_OS {
            let idx = Index {
                manifests: vec![entry(D1, "linux", "arm64"), entry(D2, os, "wasm")],
            };
            assert_eq!(select_platform(&idx, "i").expect("wasm").digest, D2);
        }
        // linux/amd64 wins wherever it is
        let idx = Index {
            manifests: vec![entry(D2, "wasip1", "wasm"), entry(D1, "linux", "amd64")],
        };
        assert_eq!(select_platform(&idx, "i").expect("amd64").digest, D1);
        // wasi needs architecture wasm, and wasm needs a wasi os
        for (os, arch) in [("wasip1", "amd64"), ("linux", "wasm"), ("wasip3", "wasm")] {
            let idx = Index {
                manifests: vec![entry(D2, os, arch)],
            };
            let e = select_platform(&idx, "i").expect_err("none");
            assert!(
                matches!(e, ImageError::SelectPlatform { .. }),
                "{os}/{arch}"
            );
        }
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
