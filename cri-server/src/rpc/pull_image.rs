//! `PullImage`: resolve, download, verify and unpack; record the image under its names.

use unicri_image::Credentials;
use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn pull_image(
    cri: &Cri,
    req: v1::PullImageRequest,
) -> Result<v1::PullImageResponse, CriError> {
    let image = req.image.map(|s| s.image).unwrap_or_default();
    if image.trim().is_empty() {
        return Err(CriError::invalid("image reference is empty"));
    }
    let creds = req.auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    });
    tracing::info!(image = %image, with_auth = creds.is_some(), "pulling");
    let img = cri.images.pull(image.trim(), creds, None).await?;
    tracing::info!(image = %image, id = %img.row.id, size = img.row.size, "pulled");
    Ok(v1::PullImageResponse {
        image_ref: img.row.id,
    })
}
