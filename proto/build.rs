//! Generates the CRI v1 types, clients and servers from `cri/api.proto`, and unicri's admin
//! service from `unicri/admin.proto`.
//! `protoc` comes from the `protoc-bin-vendored` crate, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    #[allow(unsafe_code)]
    // SAFETY: a build script runs single-threaded, so no other thread reads the environment concurrently.
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=cri/api.proto");
    println!("cargo:rerun-if-changed=unicri/admin.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["cri/api.proto"], &["cri"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["unicri/admin.proto"], &["unicri"])?;
    Ok(())
}
