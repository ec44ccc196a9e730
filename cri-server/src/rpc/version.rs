//! `Version`: who we are.

use unicri_proto::v1;

/// The kubelet-facing API version string CRI runtimes answer with.
const KUBELET_API_VERSION: &str = "0.1.0";

pub(crate) fn version(_req: v1::VersionRequest) -> v1::VersionResponse {
    v1::VersionResponse {
        version: KUBELET_API_VERSION.to_string(),
        runtime_name: "unicri".to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: unicri_proto::CRI_API_VERSION.to_string(),
    }
}
