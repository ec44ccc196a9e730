//! CRI v1 clients over a unix socket, for any runtime endpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use unicri_proto::v1;
use unicri_proto::{ImageServiceClient, RuntimeServiceClient};

/// gRPC message limit for responses (ListImages on a busy node can be large).
const MAX_MSG: usize = 64 * 1024 * 1024;

/// Deadline of runtime-service calls, kubelet's default `--runtime-request-timeout`.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(120);

/// A request with kubelet's deadline (sent as `grpc-timeout`, so the runtime sees it too).
fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(RUNTIME_TIMEOUT);
    r
}

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

impl Cri {
    /// `Status`: (RuntimeReady, NetworkReady), with the reasons of a false condition.
    pub async fn ready(&self) -> Result<(bool, bool, String)> {
        let st = self
            .runtime()
            .status(req(v1::StatusRequest { verbose: false }))
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        let mut runtime = false;
        let mut network = false;
        let mut why = Vec::new();
        for c in st.conditions {
            match c.r#type.as_str() {
                "RuntimeReady" => runtime = c.status,
                "NetworkReady" => network = c.status,
                _ => {}
            }
            if !c.status {
                why.push(format!("{}: {} {}", c.r#type, c.reason, c.message));
            }
        }
        Ok((runtime, network, why.join("; ")))
    }

    /// `RunPodSandbox` with the default handler; returns the pod id.
    pub async fn run_pod(&self, config: v1::PodSandboxConfig) -> Result<String> {
        self.run_pod_with(config, "").await
    }

    /// `RunPodSandbox` with runtime handler `handler` (empty: the default); returns the pod id.
    pub async fn run_pod_with(
        &self,
        config: v1::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let r = self
            .runtime()
            .run_pod_sandbox(req(v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            }))
            .await
            .with_context(|| format!("RunPodSandbox (handler {handler:?})"))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        self.runtime()
            .stop_pod_sandbox(req(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    /// `RemovePodSandbox`.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        self.runtime()
            .remove_pod_sandbox(req(v1::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// `PodSandboxStatus`: (state is READY, primary IP).
    pub async fn pod_status(&self, id: &str) -> Result<(bool, String)> {
        let st = self
            .runtime()
            .pod_sandbox_status(req(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }))
            .await
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .unwrap_or_default();
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        Ok((st.state == v1::PodSandboxState::SandboxReady as i32, ip))
    }

    /// `ListPodSandbox` (no filter): every pod id.
    pub async fn list_pods(&self) -> Result<Vec<String>> {
        let r = self
            .runtime()
            .list_pod_sandbox(req(v1::ListPodSandboxRequest { filter: None }))
            .await
            .context("ListPodSandbox")?;
        Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
    }

    /// `CreateContainer` in pod `pod_id`; returns the container id.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: v1::ContainerConfig,
        sandbox_config: v1::PodSandboxConfig,
    ) -> Result<String> {
        let r = self
            .runtime()
            .create_container(req(v1::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .await
            .with_context(|| format!("CreateContainer in {pod_id}"))?;
        Ok(r.into_inner().container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.runtime()
            .start_container(req(v1::StartContainerRequest {
                container_id: id.into(),
            }))
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.runtime()
            .remove_container(req(v1::RemoveContainerRequest {
                container_id: id.into(),
            }))
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        Ok(())
    }

    /// `ContainerStatus`: the status (state, exit code, reason, message, ...).
    pub async fn container_status(&self, id: &str) -> Result<v1::ContainerStatus> {
        self.runtime()
            .container_status(req(v1::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .with_context(|| format!("ContainerStatus {id}: no status"))
    }

    /// `ContainerStats`: the working set in bytes, when reported.
    pub async fn container_working_set(&self, id: &str) -> Result<Option<u64>> {
        let st = self
            .runtime()
            .container_stats(req(v1::ContainerStatsRequest {
                container_id: id.into(),
            }))
            .await
            .with_context(|| format!("ContainerStats {id}"))?
            .into_inner()
            .stats;
        Ok(st
            .and_then(|s| s.memory)
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value))
    }

    /// `GetContainerEvents`: the event stream (no deadline; it lasts until dropped).
    pub async fn container_events(
        &self,
    ) -> std::result::Result<tonic::Streaming<v1::ContainerEventResponse>, tonic::Status> {
        Ok(self
            .runtime()
            .get_container_events(v1::GetEventsRequest {})
            .await?
            .into_inner())
    }

    /// The underlying channel (for services other than CRI on the same socket).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `ListContainers` (no filter): (id, pod id, state) of every container.
    pub async fn list_containers(&self) -> Result<Vec<(String, String, v1::ContainerState)>> {
        let r = self
            .runtime()
            .list_containers(req(v1::ListContainersRequest { filter: None }))
            .await
            .context("ListContainers")?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| {
                let state = v1::ContainerState::try_from(c.state)
                    .unwrap_or(v1::ContainerState::ContainerUnknown);
                (c.id, c.pod_sandbox_id, state)
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
