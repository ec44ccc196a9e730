//! CRI v1 clients over a unix socket, for any runtime endpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use unicri_proto::v1;
use unicri_proto::{ImageServiceClient, RuntimeServiceClient};

/// gRPC message limit for responses (ListImages on a busy node can be large).
const MAX_MSG: usize = 64 * 1024 * 1024;

/// A connection to one CRI endpoint.
#[derive(Clone, Debug)]
pub struct Cri {
    channel: Channel,
}

impl Cri {
    /// Connects to the unix socket `path` (the connection is made lazily per request retry).
    pub async fn connect(path: &Path) -> Result<Cri> {
        let path: PathBuf = path.to_path_buf();
        let channel =
            Endpoint::try_from("http://[::1]:1")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .context("connect CRI socket")?;
        Ok(Cri { channel })
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MSG)
            .max_encoding_message_size(MAX_MSG)
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MSG)
    }

    /// `Version`: (runtime_name, runtime_version, runtime_api_version).
    pub async fn version(&self) -> Result<(String, String, String)> {
        let v = self
            .runtime()
            .version(v1::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// `PullImage`; returns the image ref the runtime answered with.
    pub async fn pull(&self, image: &str) -> Result<String> {
        let r = self
            .images()
            .pull_image(v1::PullImageRequest {
                image: Some(spec(image)),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("PullImage {image}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// `ImageStatus`: the image's size as the runtime reports it, or `None` when it is absent.
    pub async fn status(&self, image: &str) -> Result<Option<u64>> {
        let r = self
            .images()
            .image_status(v1::ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await
            .with_context(|| format!("ImageStatus {image}"))?;
        Ok(r.into_inner().image.map(|i| i.size))
    }

    /// `RemoveImage`.
    pub async fn remove(&self, image: &str) -> Result<()> {
        self.images()
            .remove_image(v1::RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .with_context(|| format!("RemoveImage {image}"))?;
        Ok(())
    }

    /// `ListImages`: every tag and digest reference known.
    pub async fn list(&self) -> Result<Vec<String>> {
        let r = self
            .images()
            .list_images(v1::ListImagesRequest { filter: None })
            .await?;
        Ok(r.into_inner()
            .images
            .into_iter()
            .flat_map(|i| {
                i.repo_tags
                    .into_iter()
                    .chain(i.repo_digests)
                    .chain(std::iter::once(i.id))
            })
            .collect())
    }
}

fn spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}
