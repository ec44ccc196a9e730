//! `ImageStatus`: one image by id, prefix, tag or digest; `image: None` when absent.

use std::collections::HashMap;

use unicri_proto::v1;

use super::to_cri_image;
use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn image_status(
    cri: &Cri,
    req: v1::ImageStatusRequest,
) -> Result<v1::ImageStatusResponse, CriError> {
    let spec = req.image.map(|s| s.image).unwrap_or_default();
    let Some(img) = cri.images.resolve(&spec).await? else {
        return Ok(v1::ImageStatusResponse {
            image: None,
            info: HashMap::new(),
        });
    };
    let mut info = HashMap::new();
    if req.verbose {
        let config: serde_json::Value =
            serde_json::from_str(&img.record.config_json).unwrap_or(serde_json::Value::Null);
        let chain_id = img
            .record
            .layers
            .last()
            .map(|l| l.chain_id.clone())
            .unwrap_or_default();
        let verbose = serde_json::json!({
            "imageSpec": config,
            "chainID": chain_id,
            "manifestDigest": img.record.manifest_digest,
            "configDigest": img.record.config_digest,
            "layers": img.record.layers,
            "snapshots": cri.images.service().layer_dirs(&img.record),
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(v1::ImageStatusResponse {
        image: Some(to_cri_image(&img)),
        info,
    })
}
