//! The gRPC edge: `Cri` implements CRI v1's RuntimeService and ImageService. Each implemented
//! RPC lives in its own file under `rpc/`; this file only routes, through [`instrument::rpc`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};
use unicri_proto::v1;

use crate::config::Config;
use crate::error::CriError;
use crate::images::Images;
use crate::instrument::{Level, rpc};
use crate::rpc as r;

/// Everything the RPC handlers share.
pub struct Cri {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Image orchestration.
    pub images: Arc<Images>,
    /// Pod sandboxes.
    pub pods: Arc<crate::pods::Pods>,
    /// Containers.
    pub containers: Arc<crate::containers::Containers>,
    /// The streaming server (Exec, Attach, PortForward URLs).
    pub streaming: unicri_streaming::Server,
}

type Resp<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// An RPC whose issue has not come yet: `Unimplemented`, saying when it will.
macro_rules! not_yet {
    ($name:literal, $when:expr) => {
        rpc($name, Level::Mutating, async {
            Err(CriError::unimplemented($name, $when))
        })
        .await
    };
}

#[tonic::async_trait]
impl v1::runtime_service_server::RuntimeService for Cri {
    async fn version(&self, req: Request<v1::VersionRequest>) -> Resp<v1::VersionResponse> {
        rpc("Version", Level::Polled, async {
            Ok(r::version::version(req.into_inner()))
        })
        .await
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Resp<v1::StatusResponse> {
        rpc(
            "Status",
            Level::Polled,
            r::status::status(self, req.into_inner()),
        )
        .await
    }

    async fn runtime_config(
        &self,
        req: Request<v1::RuntimeConfigRequest>,
    ) -> Resp<v1::RuntimeConfigResponse> {
        rpc("RuntimeConfig", Level::Polled, async {
            Ok(r::runtime_config::runtime_config(req.into_inner()))
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        req: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Resp<v1::UpdateRuntimeConfigResponse> {
        rpc(
            "UpdateRuntimeConfig",
            Level::Mutating,
            r::update_runtime_config::update_runtime_config(self, req.into_inner()),
        )
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<v1::RunPodSandboxRequest>,
    ) -> Resp<v1::RunPodSandboxResponse> {
        rpc(
            "RunPodSandbox",
            Level::Mutating,
            r::run_pod_sandbox::run_pod_sandbox(self, req.into_inner()),
        )
        .await
    }
    async fn stop_pod_sandbox(
        &self,
        req: Request<v1::StopPodSandboxRequest>,
    ) -> Resp<v1::StopPodSandboxResponse> {
        rpc(
            "StopPodSandbox",
            Level::Mutating,
            r::stop_pod_sandbox::stop_pod_sandbox(self, req.into_inner()),
        )
        .await
    }
    async fn remove_pod_sandbox(
        &self,
        req: Request<v1::RemovePodSandboxRequest>,
    ) -> Resp<v1::RemovePodSandboxResponse> {
        rpc(
            "RemovePodSandbox",
            Level::Mutating,
            r::remove_pod_sandbox::remove_pod_sandbox(self, req.into_inner()),
        )
        .await
    }
    async fn pod_sandbox_status(
        &self,
        req: Request<v1::PodSandboxStatusRequest>,
    ) -> Resp<v1::PodSandboxStatusResponse> {
        rpc(
            "PodSandboxStatus",
            Level::Polled,
            r::pod_sandbox_status::pod_sandbox_status(self, req.into_inner()),
        )
        .await
    }
    async fn list_pod_sandbox(
        &self,
        req: Request<v1::ListPodSandboxRequest>,
    ) -> Resp<v1::ListPodSandboxResponse> {
        rpc(
            "ListPodSandbox",
            Level::Polled,
            r::list_pod_sandbox::list_pod_sandbox(self, req.into_inner()),
        )
        .await
    }
    type StreamPodSandboxesStream = BoxStream<v1::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        req: Request<v1::StreamPodSandboxesRequest>,
    ) -> Resp<Self::StreamPodSandboxesStream> {
        rpc("StreamPodSandboxes", Level::Polled, async {
            let pages = r::list_pod_sandbox::stream_pod_sandboxes(self, req.into_inner()).await?;
            let s: Self::StreamPodSandboxesStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }
    async fn create_container(
        &self,
        req: Request<v1::CreateContainerRequest>,
    ) -> Resp<v1::CreateContainerResponse> {
        rpc(
            "CreateContainer",
            Level::Mutating,
            r::create_container::create_container(self, req.into_inner()),
        )
        .await
    }
    async fn start_container(
        &self,
        req: Request<v1::StartContainerRequest>,
    ) -> Resp<v1::StartContainerResponse> {
        rpc(
            "StartContainer",
            Level::Mutating,
            r::start_container::start_container(self, req.into_inner()),
        )
        .await
    }
    async fn stop_container(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> Resp<v1::StopContainerResponse> {
        rpc(
            "StopContainer",
            Level::Mutating,
            r::stop_container::stop_container(self, req.into_inner()),
        )
        .await
    }
    async fn remove_container(
        &self,
        req: Request<v1::RemoveContainerRequest>,
    ) -> Resp<v1::RemoveContainerResponse> {
        rpc(
            "RemoveContainer",
            Level::Mutating,
            r::remove_container::remove_container(self, req.into_inner()),
        )
        .await
    }
    async fn list_containers(
        &self,
        req: Request<v1::ListContainersRequest>,
    ) -> Resp<v1::ListContainersResponse> {
        rpc(
            "ListContainers",
            Level::Polled,
            r::list_containers::list_containers(self, req.into_inner()),
        )
        .await
    }
    type StreamContainersStream = BoxStream<v1::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        req: Request<v1::StreamContainersRequest>,
    ) -> Resp<Self::StreamContainersStream> {
        rpc("StreamContainers", Level::Polled, async {
            let pages = r::list_containers::stream_containers(self, req.into_inner()).await?;
            let s: Self::StreamContainersStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }
    async fn container_status(
        &self,
        req: Request<v1::ContainerStatusRequest>,
    ) -> Resp<v1::ContainerStatusResponse> {
        rpc(
            "ContainerStatus",
            Level::Polled,
            r::container_status::container_status(self, req.into_inner()),
        )
        .await
    }
    async fn update_container_resources(
        &self,
        req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Resp<v1::UpdateContainerResourcesResponse> {
        rpc("UpdateContainerResources", Level::Mutating, async {
            let req = req.into_inner();
            if req.container_id.is_empty() {
                return Err(CriError::invalid("container id is empty"));
            }
            let linux = req.linux.ok_or_else(|| {
                CriError::invalid("only linux resources can be updated, and none were given")
            })?;
            self.containers
                .update_resources(&req.container_id, &linux)
                .await?;
            Ok(v1::UpdateContainerResourcesResponse {})
        })
        .await
    }
    async fn reopen_container_log(
        &self,
        req: Request<v1::ReopenContainerLogRequest>,
    ) -> Resp<v1::ReopenContainerLogResponse> {
        rpc(
            "ReopenContainerLog",
            Level::Mutating,
            r::reopen_container_log::reopen_container_log(self, req.into_inner()),
        )
        .await
    }
    async fn exec_sync(&self, req: Request<v1::ExecSyncRequest>) -> Resp<v1::ExecSyncResponse> {
        rpc(
            "ExecSync",
            Level::Mutating,
            r::exec_sync::exec_sync(self, req.into_inner()),
        )
        .await
    }
    async fn exec(&self, req: Request<v1::ExecRequest>) -> Resp<v1::ExecResponse> {
        rpc(
            "Exec",
            Level::Mutating,
            r::streaming::exec(self, req.into_inner()),
        )
        .await
    }
    async fn attach(&self, req: Request<v1::AttachRequest>) -> Resp<v1::AttachResponse> {
        rpc(
            "Attach",
            Level::Mutating,
            r::streaming::attach(self, req.into_inner()),
        )
        .await
    }
    async fn port_forward(
        &self,
        req: Request<v1::PortForwardRequest>,
    ) -> Resp<v1::PortForwardResponse> {
        rpc(
            "PortForward",
            Level::Mutating,
            r::streaming::port_forward(self, req.into_inner()),
        )
        .await
    }
    async fn container_stats(
        &self,
        req: Request<v1::ContainerStatsRequest>,
    ) -> Resp<v1::ContainerStatsResponse> {
        rpc(
            "ContainerStats",
            Level::Polled,
            r::container_stats::container_stats(self, req.into_inner()),
        )
        .await
    }
    async fn list_container_stats(
        &self,
        req: Request<v1::ListContainerStatsRequest>,
    ) -> Resp<v1::ListContainerStatsResponse> {
        rpc(
            "ListContainerStats",
            Level::Polled,
            r::list_container_stats::list_container_stats(self, req.into_inner()),
        )
        .await
    }
    type StreamContainerStatsStream = BoxStream<v1::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        req: Request<v1::StreamContainerStatsRequest>,
    ) -> Resp<Self::StreamContainerStatsStream> {
        rpc("StreamContainerStats", Level::Polled, async {
            let pages =
                r::list_container_stats::stream_container_stats(self, req.into_inner()).await?;
            let s: Self::StreamContainerStatsStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }
    async fn pod_sandbox_stats(
        &self,
        req: Request<v1::PodSandboxStatsRequest>,
    ) -> Resp<v1::PodSandboxStatsResponse> {
        rpc(
            "PodSandboxStats",
            Level::Polled,
            r::pod_sandbox_stats::pod_sandbox_stats(self, req.into_inner()),
        )
        .await
    }
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Resp<v1::ListPodSandboxStatsResponse> {
        rpc(
            "ListPodSandboxStats",
            Level::Polled,
            r::list_pod_sandbox_stats::list_pod_sandbox_stats(self, req.into_inner()),
        )
        .await
    }
    type StreamPodSandboxStatsStream = BoxStream<v1::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<v1::StreamPodSandboxStatsRequest>,
    ) -> Resp<Self::StreamPodSandboxStatsStream> {
        rpc("StreamPodSandboxStats", Level::Polled, async {
            let pages =
                r::list_pod_sandbox_stats::stream_pod_sandbox_stats(self, req.into_inner()).await?;
            let s: Self::StreamPodSandboxStatsStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }
    async fn checkpoint_container(
        &self,
        _: Request<v1::CheckpointContainerRequest>,
    ) -> Resp<v1::CheckpointContainerResponse> {
        not_yet!(
            "CheckpointContainer",
            "checkpoint/restore with CRIU is not built yet"
        )
    }
    type GetContainerEventsStream = BoxStream<v1::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _req: Request<v1::GetEventsRequest>,
    ) -> Resp<Self::GetContainerEventsStream> {
        rpc("GetContainerEvents", Level::Mutating, async {
            let rx = self.containers.events.subscribe();
            let s: Self::GetContainerEventsStream =
                Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok));
            Ok(s)
        })
        .await
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Resp<v1::ListMetricDescriptorsResponse> {
        rpc("ListMetricDescriptors", Level::Polled, async {
            Ok(r::metrics::list_metric_descriptors())
        })
        .await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Resp<v1::ListPodSandboxMetricsResponse> {
        rpc(
            "ListPodSandboxMetrics",
            Level::Polled,
            r::metrics::list_pod_sandbox_metrics(self),
        )
        .await
    }
    type StreamPodSandboxMetricsStream = BoxStream<v1::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<v1::StreamPodSandboxMetricsRequest>,
    ) -> Resp<Self::StreamPodSandboxMetricsStream> {
        rpc("StreamPodSandboxMetrics", Level::Polled, async {
            let pages = r::metrics::stream_pod_sandbox_metrics(self).await?;
            let s: Self::StreamPodSandboxMetricsStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }
    async fn update_pod_sandbox_resources(
        &self,
        req: Request<v1::UpdatePodSandboxResourcesRequest>,
    ) -> Resp<v1::UpdatePodSandboxResourcesResponse> {
        rpc(
            "UpdatePodSandboxResources",
            Level::Mutating,
            r::update_pod_sandbox_resources::update_pod_sandbox_resources(self, req.into_inner()),
        )
        .await
    }
}

#[tonic::async_trait]
impl v1::image_service_server::ImageService for Cri {
    async fn list_images(
        &self,
        req: Request<v1::ListImagesRequest>,
    ) -> Resp<v1::ListImagesResponse> {
        rpc(
            "ListImages",
            Level::Polled,
            r::list_images::list_images(self, req.into_inner()),
        )
        .await
    }

    type StreamImagesStream = BoxStream<v1::StreamImagesResponse>;
    async fn stream_images(
        &self,
        req: Request<v1::StreamImagesRequest>,
    ) -> Resp<Self::StreamImagesStream> {
        rpc("StreamImages", Level::Polled, async {
            let pages = r::list_images::stream_images(self, req.into_inner()).await?;
            let s: Self::StreamImagesStream =
                Box::pin(tokio_stream::iter(pages.into_iter().map(Ok)));
            Ok(s)
        })
        .await
    }

    async fn image_status(
        &self,
        req: Request<v1::ImageStatusRequest>,
    ) -> Resp<v1::ImageStatusResponse> {
        rpc(
            "ImageStatus",
            Level::Polled,
            r::image_status::image_status(self, req.into_inner()),
        )
        .await
    }

    async fn pull_image(&self, req: Request<v1::PullImageRequest>) -> Resp<v1::PullImageResponse> {
        rpc(
            "PullImage",
            Level::Mutating,
            r::pull_image::pull_image(self, req.into_inner()),
        )
        .await
    }

    async fn remove_image(
        &self,
        req: Request<v1::RemoveImageRequest>,
    ) -> Resp<v1::RemoveImageResponse> {
        rpc(
            "RemoveImage",
            Level::Mutating,
            r::remove_image::remove_image(self, req.into_inner()),
        )
        .await
    }

    async fn image_fs_info(
        &self,
        req: Request<v1::ImageFsInfoRequest>,
    ) -> Resp<v1::ImageFsInfoResponse> {
        rpc(
            "ImageFsInfo",
            Level::Polled,
            r::image_fs_info::image_fs_info(self, req.into_inner()),
        )
        .await
    }
}
