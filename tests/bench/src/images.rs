//! Benchmark images: gzip layers of seeded random content, built and pushed with the e2e crate's
//! `oci` module (OCI manifest, monolithic blob uploads, gzip level 1).
//!
//! Content is "incompressible-ish": files alternate between uniformly random bytes (what a
//! binary or already-compressed asset looks like) and random hex text (4 bits of entropy per
//! byte, so inflate does real Huffman work), so a layer compresses to about 80 % of its size at gzip level 1.
//! A fifth of each layer's bytes sit in 16 KiB files and the rest in 1 MiB files, so unpacking
//! pays per-file costs too.

use std::time::Instant;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use unicri_e2e::oci::{Compression, Image, ImageBuilder, Layer};
use unicri_e2e::registry::Registry;

const MIB: u64 = 1024 * 1024;

/// What to build: a name and the uncompressed size of each layer.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Repository name in the registry and label in the report.
    pub name: &'static str,
    /// Uncompressed content bytes per layer.
    pub layers: Vec<u64>,
}

/// The three standard benchmark images.
pub fn standard_specs() -> Vec<ImageSpec> {
    vec![
        ImageSpec {
            name: "small",
            layers: vec![2 * MIB],
        },
        ImageSpec {
            name: "five-layer",
            layers: vec![10 * MIB; 5],
        },
        ImageSpec {
            name: "big",
            layers: vec![200 * MIB],
        },
    ]
}

/// A pushed image.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// Spec name.
    pub name: &'static str,
    /// Full reference, `127.0.0.1:<port>/bench/<name>:v1`.
    pub reference: String,
    /// Number of layers.
    pub layers: usize,
    /// Sum of uncompressed layer tar sizes.
    pub uncompressed: u64,
    /// Sum of compressed layer sizes (what is downloaded).
    pub compressed: u64,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Hex digests a content-addressed store might name files after: config, manifest,
    /// compressed layers, diff IDs and chain IDs. Used to detect leftovers after RemoveImage.
    pub hexes: Vec<String>,
}

/// GOARCH-style name of this machine's architecture.
pub(crate) fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The uncompressed tar of one layer.
fn layer_tar(rng: &mut StdRng, index: usize, bytes: u64) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::with_capacity(bytes as usize + bytes as usize / 50));
    let dir = format!("bench/layer{index}");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, "bench/", std::io::empty())?;
    tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;

    let small_total = bytes / 5;
    let mut files: Vec<u64> = Vec::new();
    let mut left = small_total;
    while left > 0 {
        let n = left.min(16 * 1024);
        files.push(n);
        left -= n;
    }
    left = bytes - small_total;
    while left > 0 {
        let n = left.min(MIB);
        files.push(n);
        left -= n;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = Vec::new();
    for (i, &size) in files.iter().enumerate() {
        buf.resize(size as usize, 0);
        rng.fill_bytes(&mut buf);
        if i % 2 == 1 {
            for b in buf.iter_mut() {
                *b = HEX[(*b & 15) as usize];
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, format!("{dir}/f{i:05}"), buf.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

fn build_image(spec: &ImageSpec, seed: u64) -> Result<Image> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = ImageBuilder::new()
        .platform("linux", goarch(), None)
        .cmd(&["/bin/true"]);
    for (i, &bytes) in spec.layers.iter().enumerate() {
        b = b.layer(Layer::from_tar(
            layer_tar(&mut rng, i, bytes)?,
            Compression::Gzip,
        )?);
    }
    b.build()
}

/// Hex digests a content-addressed store might name files after.
fn hexes(img: &Image) -> Vec<String> {
    let mut v: Vec<String> = [img.id(), img.manifest_digest()]
        .into_iter()
        .map(str::to_string)
        .chain(
            img.layers
                .iter()
                .flat_map(|l| [l.digest.clone(), l.diff_id.clone()]),
        )
        .chain(img.chain_ids())
        .map(|d| d.trim_start_matches("sha256:").to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Builds every spec (seeded by `seed`) and pushes it to `registry` as
/// `127.0.0.1:<port>/bench/<name>:v1`.
pub async fn build_and_push(
    specs: &[ImageSpec],
    seed: u64,
    registry: &Registry,
) -> Result<Vec<PushedImage>> {
    let pusher = registry.pusher();
    let host = registry.host();
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let t0 = Instant::now();
        let s = spec.clone();
        let img = tokio::task::spawn_blocking(move || {
            build_image(&s, seed.wrapping_add(i as u64 * 7919))
        })
        .await??;
        let built = t0.elapsed();
        let repo = format!("bench/{}", spec.name);
        pusher.push_image(&repo, "v1", &img).await?;
        let compressed: u64 = img.layers.iter().map(|l| l.blob.len() as u64).sum();
        let uncompressed: u64 = img.layers.iter().map(|l| l.tar.len() as u64).sum();
        eprintln!(
            "  image {:<10} {} layer(s), {:.1} MiB uncompressed, {:.1} MiB compressed \
             (built in {:.1} s, pushed in {:.1} s)",
            spec.name,
            img.layers.len(),
            uncompressed as f64 / MIB as f64,
            compressed as f64 / MIB as f64,
            built.as_secs_f64(),
            (t0.elapsed() - built).as_secs_f64(),
        );
        out.push(PushedImage {
            name: spec.name,
            reference: format!("{host}/{repo}:v1"),
            layers: img.layers.len(),
            uncompressed,
            compressed,
            manifest_digest: img.manifest_digest().to_string(),
            hexes: hexes(&img),
        });
    }
    Ok(out)
}
