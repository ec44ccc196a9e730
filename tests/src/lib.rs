//! Black-box end-to-end test support for unicri.
//!
//! - [`registry`]: a real Debian `docker-registry` (distribution 2.8) on 127.0.0.1 with
//!   optional htpasswd basic auth or bearer-token auth, and access-log inspection.
//! - [`oci`]: an offline OCI / docker image builder (layers from in-memory entries, gzip / zstd /
//!   uncompressed, single- and multi-arch manifests), a registry pusher, and writers for OCI
//!   layout dirs, OCI archives and docker-save tars; plus a busybox rootfs layer helper.
//! - [`daemon`]: spawns the real `unicri` binary on a temp root/state/socket and hands out CRI
//!   clients over the unix socket.
//! - [`leaks`]: what must be gone after a daemon stops (processes, mounts, ingest files).
//! - [`cni`]: a bridge + host-local + portmap CNI network for pods.
//! - [`fixtures`]: a daemon with a busybox image on a CNI network, skip checks, container status.
//! - [`wasm`]: WASI test modules (WAT) and a WASI 0.2 component, in compat-image and wasm OCI
//!   artifact form, pushed to the test registry for the `wasm` runtime handler.

pub mod cni;
pub mod daemon;
pub mod fixtures;
pub mod leaks;
pub mod oci;
pub mod registry;
pub mod wasm;

/// Returns `true` (and prints a loud `SKIP` line) when the tests cannot run on this machine
/// because Debian's `docker-registry` is not installed.
pub fn skip_without_registry(test: &str) -> bool {
    if registry::Registry::available() {
        return false;
    }
    eprintln!(
        "\n******** SKIP {test}: {} not found (apt-get install -y docker-registry apache2-utils) ********\n",
        registry::REGISTRY_BIN
    );
    true
}

/// `return` from the calling test (with `Ok(())`) after printing a loud `SKIP` line when the
/// registry binary is missing.
#[macro_export]
macro_rules! require_registry {
    ($name:expr) => {
        if $crate::skip_without_registry($name) {
            return Ok(());
        }
    };
}

/// sha256 of `data` as `sha256:<hex>`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
