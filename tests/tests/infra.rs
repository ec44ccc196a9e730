//! Self-tests of the harness (no unicri needed): registry modes, pushing, archives, busybox.

use anyhow::{Context, Result, ensure};
use unicri_e2e::oci::{
    Artifact, Compression, ImageBuilder, Index, LayerBuilder, ManifestFormat, Pusher, busybox_layer,
};
use unicri_e2e::registry::{Registry, RegistryOpts};
use unicri_e2e::require_registry;

fn small_image(marker: &str, arch: &str, c: Compression) -> Result<unicri_e2e::oci::Image> {
    let l = LayerBuilder::new()
        .dir("/etc")
        .file("/etc/marker", marker)
        .build(c)?;
    ImageBuilder::new()
        .platform("linux", arch, None)
        .layer(l)
        .cmd(&["/bin/sh"])
        .build()
}

async fn get_manifest(reg: &Registry, repo: &str, reference: &str) -> Result<reqwest::Response> {
    let mut rb = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{reference}", reg.url()))
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        );
    if let Some((u, p)) = reg.credentials() {
        rb = rb.basic_auth(u, Some(p));
    }
    Ok(rb.send().await?)
}

#[tokio::test]
async fn registry_plain_push_and_blob_count() -> Result<()> {
    require_registry!("registry_plain_push_and_blob_count");
    let reg = Registry::start(RegistryOpts::default()).await?;
    let img = small_image("one", "amd64", Compression::Gzip)?;
    let digest = reg.pusher().push_image("e2e/one", "v1", &img).await?;
    ensure!(digest == img.manifest_digest());
    let r = get_manifest(&reg, "e2e/one", "v1").await?;
    ensure!(r.status().is_success(), "{}", r.status());
    let body = r.bytes().await?;
    ensure!(unicri_e2e::sha256_digest(&body) == digest);
    let layer = &img.layers[0].digest;
    ensure!(reg.blob_gets(layer) == 0);
    let r = reqwest::get(format!("{}/v2/e2e/one/blobs/{layer}", reg.url())).await?;
    ensure!(r.status().is_success());
    let _ = r.bytes().await?;
    // the access log is written after the response
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    ensure!(reg.blob_gets(layer) == 1, "log:\n{}", reg.log());
    // index with two arches, docker formats, zstd
    let a = small_image("amd", "amd64", Compression::Zstd)?;
    let b = small_image("arm", "arm64", Compression::None)?;
    let idx = Index::new(vec![a, b], ManifestFormat::Oci)?;
    reg.pusher().push_index("e2e/multi", "latest", &idx).await?;
    let d = ImageBuilder::new()
        .docker()
        .layer(
            LayerBuilder::new()
                .file("/x", "x")
                .build(Compression::Gzip)?,
        )
        .build()?;
    let dl = Index::new(vec![d], ManifestFormat::Docker)?;
    reg.pusher()
        .push_index("e2e/dockerlist", "latest", &dl)
        .await?;
    let r = get_manifest(&reg, "e2e/multi", "latest").await?;
    ensure!(r.status().is_success());
    Ok(())
}

#[tokio::test]
async fn registry_basic_auth() -> Result<()> {
    require_registry!("registry_basic_auth");
    let reg = Registry::start(RegistryOpts {
        basic_auth: Some(("alice".into(), "s3cret".into())),
        token_auth: false,
    })
    .await?;
    let img = small_image("auth", "amd64", Compression::Gzip)?;
    let anon = Pusher::new(&reg.url(), None);
    ensure!(anon.push_image("e2e/auth", "v1", &img).await.is_err());
    reg.pusher().push_image("e2e/auth", "v1", &img).await?;
    let r = reqwest::get(format!("{}/v2/e2e/auth/manifests/v1", reg.url())).await?;
    ensure!(r.status() == 401);
    ensure!(
        get_manifest(&reg, "e2e/auth", "v1")
            .await?
            .status()
            .is_success()
    );
    Ok(())
}

#[tokio::test]
async fn registry_token_auth() -> Result<()> {
    require_registry!("registry_token_auth");
    let reg = Registry::start(RegistryOpts {
        basic_auth: Some(("bob".into(), "tok3n".into())),
        token_auth: true,
    })
    .await?;
    let img = small_image("token", "amd64", Compression::Gzip)?;
    let anon = Pusher::new(&reg.url(), None);
    ensure!(anon.push_image("e2e/tok", "v1", &img).await.is_err());
    let wrong = Pusher::new(&reg.url(), Some(("bob".into(), "nope".into())));
    ensure!(wrong.push_image("e2e/tok", "v1", &img).await.is_err());
    reg.pusher()
        .push_image("e2e/tok", "v1", &img)
        .await
        .with_context(|| format!("registry log:\n{}", reg.log()))?;
    ensure!(reg.token_requests() >= 1);
    Ok(())
}

#[test]
fn archives_and_busybox() -> Result<()> {
    let bb = busybox_layer()?.build(Compression::Gzip)?;
    let mut ar = tar::Archive::new(bb.tar.as_slice());
    let mut saw_sh = false;
    for e in ar.entries()? {
        let e = e?;
        if e.path()?.to_string_lossy() == "bin/sh" {
            ensure!(e.header().entry_type() == tar::EntryType::Link);
            saw_sh = true;
        }
    }
    ensure!(saw_sh, "no bin/sh hard link");
    let img = ImageBuilder::new().layer(bb).cmd(&["sh"]).build()?;
    let dir = tempfile::tempdir()?;
    img.write_oci_layout(&dir.path().join("layout"), "docker.io/library/bb:v1")?;
    ensure!(dir.path().join("layout/index.json").exists());
    img.write_oci_archive(&dir.path().join("oci.tar"), "docker.io/library/bb:v1")?;
    img.write_docker_save(&dir.path().join("save.tar"), &["bb:v1"])?;
    let idx = Index::new(vec![img.clone()], ManifestFormat::Oci)?;
    Artifact::Index(idx).write_oci_layout(&dir.path().join("layout-idx"), "bb:v2")?;
    // chain ids: one layer → chain id == diff id
    ensure!(img.chain_ids()[0] == img.layers[0].diff_id);
    Ok(())
}
