//! unicri's admin service (not CRI): offline import and pull with progress, for the CLI.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use unicri_image::{Credentials, PullProgress};
use unicri_proto::admin;

use crate::error::CriError;
use crate::instrument::{Level, rpc};
use crate::server::Cri;

/// Serves `unicri.admin.v1.Admin` over the shared state.
pub struct Admin {
    /// The CRI state it shares.
    pub cri: Arc<Cri>,
}

struct ChannelProgress(mpsc::Sender<Result<admin::PullProgress, Status>>);

impl PullProgress for ChannelProgress {
    fn layer(&self, digest: &str, total: u64, done: u64) {
        // Progress is best effort: a slow reader loses intermediate updates, never the pull.
        let _ = self.0.try_send(Ok(admin::PullProgress {
            layer_digest: digest.to_string(),
            total,
            done,
            image_ref: String::new(),
        }));
    }
}

type ProgressStream =
    Pin<Box<dyn Stream<Item = Result<admin::PullProgress, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl admin::admin_server::Admin for Admin {
    async fn import_images(
        &self,
        req: Request<admin::ImportImagesRequest>,
    ) -> Result<Response<admin::ImportImagesResponse>, Status> {
        rpc("ImportImages", Level::Mutating, async {
            let path = req.into_inner().path;
            if path.is_empty() {
                return Err(CriError::invalid("import path is empty"));
            }
            let imported = self.cri.images.import(std::path::Path::new(&path)).await?;
            Ok(admin::ImportImagesResponse {
                images: imported
                    .into_iter()
                    .map(|i| admin::ImportedImage {
                        id: i.row.id,
                        repo_tags: i.row.tags,
                        repo_digests: i.row.digests,
                    })
                    .collect(),
            })
        })
        .await
    }

    type PullImageWithProgressStream = ProgressStream;

    async fn pull_image_with_progress(
        &self,
        req: Request<admin::PullImageWithProgressRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        rpc("PullImageWithProgress", Level::Mutating, async {
            let req = req.into_inner();
            if req.image.trim().is_empty() {
                return Err(CriError::invalid("image reference is empty"));
            }
            let creds = (!req.username.is_empty()).then(|| Credentials {
                username: req.username.clone(),
                password: req.password.clone(),
                ..Default::default()
            });
            let (tx, rx) = mpsc::channel(256);
            let cri = self.cri.clone();
            let progress: Arc<dyn PullProgress> = Arc::new(ChannelProgress(tx.clone()));
            tokio::spawn(async move {
                let last = match cri
                    .images
                    .pull(req.image.trim(), creds, Some(progress))
                    .await
                {
                    Ok(img) => Ok(admin::PullProgress {
                        image_ref: img.row.id,
                        ..Default::default()
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let _ = tx.send(last).await;
            });
            let s: ProgressStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(s)
        })
        .await
    }
}
