//! `RemoveImage`: by id, prefix, tag or digest; removes the image with all its names.
//! Idempotent: an image that is already gone is not an error. An image a container was created
//! from is refused (`FailedPrecondition`): its layers are that container's rootfs. The image's
//! EROFS block image for vm pods is removed with it when no running guest has it attached.

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn remove_image(
    cri: &Cri,
    req: v1::RemoveImageRequest,
) -> Result<v1::RemoveImageResponse, CriError> {
    let spec = req.image.map(|s| s.image).unwrap_or_default();
    if spec.trim().is_empty() {
        return Err(CriError::invalid("image reference is empty"));
    }
    if let Some(img) = cri.images.resolve(&spec).await?
        && let Some(user) = cri.containers.image_user(&img.row.id).await?
    {
        return Err(CriError::new(
            unicri_sandbox::ErrorKind::FailedPrecondition,
            format!("image {spec} is in use by container {user}"),
        ));
    }
    match cri.images.remove(&spec).await? {
        Some(id) => {
            tracing::info!(image = %spec, id = %id, "removed");
            // its block image for vm pods goes too, unless a running guest still has it
            // attached (a vm pod keeps its images until it stops)
            let key = id.trim_start_matches("sha256:");
            let attached = cri
                .pods
                .list()
                .await?
                .iter()
                .filter_map(|p| p.state.vm.as_ref())
                .any(|vm| vm.images.contains_key(key));
            if !attached {
                cri.pods.vm.remove_image(key).await;
            }
        }
        None => tracing::info!(image = %spec, "not present; nothing to remove"),
    }
    Ok(v1::RemoveImageResponse {})
}
