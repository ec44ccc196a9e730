//! `ListImages` and `StreamImages`: every image, optionally filtered by a spec (id or name).

use unicri_proto::v1;

use super::to_cri_image;
use crate::error::CriError;
use crate::server::Cri;

async fn filtered(cri: &Cri, filter: Option<v1::ImageFilter>) -> Result<Vec<v1::Image>, CriError> {
    let spec = filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .unwrap_or_default();
    if spec.trim().is_empty() {
        return Ok(cri.images.list().await?.iter().map(to_cri_image).collect());
    }
    Ok(cri
        .images
        .resolve(&spec)
        .await?
        .iter()
        .map(to_cri_image)
        .collect())
}

pub(crate) async fn list_images(
    cri: &Cri,
    req: v1::ListImagesRequest,
) -> Result<v1::ListImagesResponse, CriError> {
    Ok(v1::ListImagesResponse {
        images: filtered(cri, req.filter).await?,
    })
}

pub(crate) async fn stream_images(
    cri: &Cri,
    req: v1::StreamImagesRequest,
) -> Result<Vec<v1::StreamImagesResponse>, CriError> {
    let all = filtered(cri, req.filter).await?;
    Ok(super::pages(&all, |images| v1::StreamImagesResponse {
        images,
    }))
}
