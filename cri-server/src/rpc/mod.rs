//! One file per implemented CRI RPC, named after it.

pub mod container_stats;
pub mod container_status;
pub mod create_container;
pub mod exec_sync;
pub mod image_fs_info;
pub mod image_status;
pub mod list_container_stats;
pub mod list_containers;
pub mod list_images;
pub mod list_pod_sandbox;
pub mod list_pod_sandbox_stats;
pub mod metrics;
pub mod pod_sandbox_stats;
pub mod pod_sandbox_status;
pub mod pull_image;
pub mod remove_container;
pub mod remove_image;
pub mod remove_pod_sandbox;
pub mod reopen_container_log;
pub mod run_pod_sandbox;
pub mod runtime_config;
pub mod start_container;
pub mod status;
pub mod stop_container;
pub mod stop_pod_sandbox;
pub mod streaming;
pub mod update_pod_sandbox_resources;
pub mod update_runtime_config;
pub mod version;

use unicri_proto::v1;

use crate::images::{StoredImage, split_user};

/// A stored image as CRI's `Image`.
pub(crate) fn to_cri_image(img: &StoredImage) -> v1::Image {
    let (uid, username) = split_user(&img.record.user);
    v1::Image {
        id: img.row.id.clone(),
        repo_tags: img.row.tags.clone(),
        repo_digests: img.row.digests.clone(),
        size: img.row.size.max(1),
        uid: uid.map(|value| v1::Int64Value { value }),
        username,
        spec: Some(v1::ImageSpec {
            image: img.row.id.clone(),
            ..Default::default()
        }),
        pinned: img.row.pinned,
    }
}

/// Items per message of the `Stream*` RPCs.
const STREAM_PAGE: usize = 100;

/// Splits a listing into `Stream*` messages of [`STREAM_PAGE`] items.
pub(crate) fn pages<T: Clone, R>(all: &[T], wrap: impl Fn(Vec<T>) -> R) -> Vec<R> {
    all.chunks(STREAM_PAGE).map(|c| wrap(c.to_vec())).collect()
}

/// CRI's label selector: every pair must be among `labels` (MatchLabels only).
pub(crate) fn labels_match(
    selector: &std::collections::HashMap<String, String>,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
