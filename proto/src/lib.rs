//! CRI v1 protocol types and gRPC services (`runtime.v1`).
//!
//! Generated at build time from `cri/api.proto`, which is the Kubernetes `cri-api` v0.36.0 definition,
//! vendored unchanged (see `docs/adr/0004-vendored-cri-proto.md`). Only `cri-server` and the test
//! tiers depend on this crate: it is the one place CRI types exist.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// unicri's own admin service (import, pull progress), served beside CRI on the same socket.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin {
    tonic::include_proto!("unicri.admin.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::image_service_server::{ImageService, ImageServiceServer};
pub use v1::runtime_service_client::RuntimeServiceClient;
pub use v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};

/// The CRI API version this crate speaks, as reported by `Version`.
pub const CRI_API_VERSION: &str = "v1";
