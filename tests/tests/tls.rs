//! End-to-end pulls over HTTPS: a real `docker-registry` serving TLS with a certificate from a
//! throwaway CA, the real `unicri` daemon configured through containerd-style `hosts.toml`
//! (`ca`, `skip_verify`, mirrors). Each test ends with `Daemon::finish` (stop + leak check).

use anyhow::{Context, Result, bail, ensure};
use unicri_e2e::daemon::{Daemon, DaemonOpts};
use unicri_e2e::oci::{Compression, Image, ImageBuilder, LayerBuilder};
use unicri_e2e::registry::{Registry, RegistryOpts, TlsFiles};
use unicri_e2e::require_registry;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A small distinct image: `/etc/marker` holds `marker`.
fn marker_image(marker: &str) -> Result<Image> {
    let l = LayerBuilder::new()
        .dir("/etc")
        .file("/etc/marker", format!("{marker}\n"))
        .build(Compression::Gzip)?;
    ImageBuilder::new()
        .layer(l)
        .cmd(&["/bin/sh"])
        .label("e2e.marker", marker)
        .build()
}

/// A TLS registry holding `marker_image(marker)` as `repo:tag`.
async fn tls_registry_with(
    opts: RegistryOpts,
    repo: &str,
    tag: &str,
    marker: &str,
) -> Result<(Registry, Image)> {
    let reg = Registry::start_tls(opts)
        .await
        .context("start docker-registry with TLS")?;
    ensure!(reg.url().starts_with("https://"), "url {}", reg.url());
    let img = marker_image(marker)?;
    reg.pusher()
        .push_image(repo, tag, &img)
        .await
        .context("push over https")?;
    Ok((reg, img))
}

async fn start_daemon(opts: DaemonOpts) -> Result<Daemon> {
    Daemon::start(opts).await.context("start unicri daemon")
}

/// A TOML basic string for `s` (paths).
fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

fn ca_path(reg: &Registry) -> Result<String> {
    Ok(reg
        .ca_cert_path()
        .context("registry without TLS")?
        .display()
        .to_string())
}

/// The image `name` is pulled, listed, tagged and unpacked on `d`.
async fn expect_pulled(d: &Daemon, name: &str, img: &Image, marker: &str) -> Result<()> {
    let r = d.pull(name, None).await?;
    ensure!(
        r == img.id(),
        "PullImage ref {r} != config digest {}",
        img.id()
    );
    let listed = d.list_images(None).await?;
    ensure!(
        listed.iter().any(|i| i.id == img.id()),
        "{} not in ListImages: {:?}",
        img.id(),
        listed.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    let st = d
        .image_status(name)
        .await?
        .context("no ImageStatus after pull")?;
    ensure!(
        st.repo_tags.iter().any(|t| t == name),
        "tags {:?}",
        st.repo_tags
    );
    let top = img.chain_ids().last().context("no layers")?.clone();
    let fs = d
        .images_dir()
        .join("snapshots")
        .join(top.trim_start_matches("sha256:"))
        .join("fs");
    let got = std::fs::read_to_string(fs.join("etc/marker"))
        .with_context(|| format!("marker in {}", fs.display()))?;
    ensure!(got == format!("{marker}\n"), "marker {got:?}");
    Ok(())
}

/// PullImage of `name` fails with a non-OK code, and leaves no image and no ingest files.
/// Returns the status message.
async fn expect_pull_fails(d: &Daemon, name: &str) -> Result<String> {
    let err = match d.pull(name, None).await {
        Ok(r) => bail!("PullImage {name} succeeded ({r}) but should have failed"),
        Err(e) => e,
    };
    let status = err
        .downcast_ref::<tonic::Status>()
        .with_context(|| format!("PullImage error is not a gRPC status: {err:#}"))?;
    ensure!(
        status.code() != tonic::Code::Ok,
        "PullImage failed with code OK: {status:?}"
    );
    ensure!(
        d.list_images(None).await?.is_empty(),
        "an image is listed after a failed pull"
    );
    ensure!(d.image_status(name).await?.is_none());
    let ingest = d.images_dir().join("ingest");
    if let Ok(rd) = std::fs::read_dir(&ingest) {
        let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        ensure!(
            left.is_empty(),
            "ingest not empty after failed pull: {left:?}"
        );
    }
    Ok(format!("{:?}: {}", status.code(), status.message()))
}

/// Whether an error message blames TLS certificate verification.
fn mentions_certificate(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    ["certificate", "x509", "tls", "ssl", "verify"]
        .iter()
        .any(|w| m.contains(w))
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

/// `[host."https://127.0.0.1:PORT"]` with `ca = "<abs path>"`: the pull verifies the server
/// certificate against the CA and succeeds (and never falls back to plain http).
#[tokio::test]
async fn https_pull_with_ca() -> Result<()> {
    require_registry!("https_pull_with_ca");
    let (reg, img) = tls_registry_with(RegistryOpts::default(), "e2e/tls", "v1", "tls-ca").await?;
    let hosts = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {}\n",
        reg.url(),
        toml_str(&ca_path(&reg)?)
    );
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    let name = format!("{}/e2e/tls:v1", reg.host());
    expect_pulled(&d, &name, &img, "tls-ca").await?;
    ensure!(reg.manifest_gets("v1") >= 1, "{}", reg.log());
    ensure!(
        !d.log().contains("falling back to plain http"),
        "fell back to http:\n{}",
        d.log()
    );
    d.finish().await
}

/// `server = "https://..."` with a top-level `ca` list applies the CA to the server itself.
#[tokio::test]
async fn https_server_with_top_level_ca_list() -> Result<()> {
    require_registry!("https_server_with_top_level_ca_list");
    let (reg, img) = tls_registry_with(RegistryOpts::default(), "e2e/srv", "v1", "tls-srv").await?;
    let hosts = format!(
        "server = \"{}\"\nca = [{}]\n",
        reg.url(),
        toml_str(&ca_path(&reg)?)
    );
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    expect_pulled(&d, &format!("{}/e2e/srv:v1", reg.host()), &img, "tls-srv").await?;
    d.finish().await
}

/// No `ca`, no `skip_verify`: the certificate is from an unknown CA, so the pull fails with a
/// TLS/certificate error; same with a `ca` that is some other CA.
#[tokio::test]
async fn https_pull_without_ca_fails() -> Result<()> {
    require_registry!("https_pull_without_ca_fails");
    let (reg, _img) =
        tls_registry_with(RegistryOpts::default(), "e2e/noca", "v1", "tls-noca").await?;
    let name = format!("{}/e2e/noca:v1", reg.host());

    // a CA that did not sign the server certificate
    let other = tempfile::tempdir()?;
    let other_ca = TlsFiles::generate(other.path())?.ca_cert;
    let hosts = format!(
        "server = \"{}\"\nca = {}\n",
        reg.url(),
        toml_str(&other_ca.display().to_string())
    );
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    let msg = expect_pull_fails(&d, &name).await?;
    eprintln!("PullImage error: {msg}");
    ensure!(
        mentions_certificate(&msg),
        "error does not mention TLS/certificates: {msg}"
    );
    d.finish().await?;

    // no ca at all: the system roots do not know the test CA
    let hosts = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        reg.url()
    );
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    let msg = expect_pull_fails(&d, &name).await?;
    eprintln!("PullImage error: {msg}");
    ensure!(
        mentions_certificate(&msg),
        "error does not mention TLS/certificates: {msg}"
    );
    ensure!(reg.manifest_gets("v1") == 0, "{}", reg.log());
    d.finish().await
}

/// No hosts.toml at all for a localhost HTTPS registry with an untrusted certificate: the
/// pull fails and the error names the certificate problem (a verification failure is not a
/// reason to retry over plain http).
#[tokio::test]
async fn https_localhost_without_config_reports_certificate_error() -> Result<()> {
    require_registry!("https_localhost_without_config_reports_certificate_error");
    let (reg, _img) =
        tls_registry_with(RegistryOpts::default(), "e2e/nocfg", "v1", "tls-nocfg").await?;
    let d = start_daemon(DaemonOpts::default()).await?;
    let msg = expect_pull_fails(&d, &format!("{}/e2e/nocfg:v1", reg.host())).await?;
    ensure!(
        mentions_certificate(&msg),
        "error does not mention TLS/certificates: {msg}"
    );
    d.finish().await
}

/// The counterpart: a plain-HTTP localhost registry without any hosts.toml is still reached
/// through the https -> http fallback (the server is not speaking TLS at all).
#[tokio::test]
async fn plain_http_localhost_without_config_falls_back() -> Result<()> {
    require_registry!("plain_http_localhost_without_config_falls_back");
    let reg = Registry::start_plain()
        .await
        .context("start docker-registry")?;
    let img = marker_image("plain-fallback")?;
    reg.pusher().push_image("e2e/plain", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default()).await?;
    expect_pulled(
        &d,
        &format!("{}/e2e/plain:v1", reg.host()),
        &img,
        "plain-fallback",
    )
    .await?;
    ensure!(
        d.log().contains("falling back to plain http"),
        "no fallback logged:\n{}",
        d.log()
    );
    d.finish().await
}

/// `skip_verify = true`: no CA needed.
#[tokio::test]
async fn https_pull_skip_verify() -> Result<()> {
    require_registry!("https_pull_skip_verify");
    let (reg, img) =
        tls_registry_with(RegistryOpts::default(), "e2e/skip", "v1", "tls-skip").await?;
    let hosts = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
        reg.url()
    );
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    expect_pulled(&d, &format!("{}/e2e/skip:v1", reg.host()), &img, "tls-skip").await?;
    ensure!(!d.log().contains("falling back to plain http"));
    d.finish().await
}

/// A mirror over HTTPS for an upstream name: `certs.d/registry.k8s.io/hosts.toml` with
/// `[host."https://127.0.0.1:PORT"]` and a `ca` relative to the hosts.toml dir.
#[tokio::test]
async fn https_mirror_for_upstream_registry() -> Result<()> {
    require_registry!("https_mirror_for_upstream_registry");
    let (reg, img) = tls_registry_with(RegistryOpts::default(), "x/y", "1", "tls-mirror").await?;
    let pem = reg.ca_pem()?.context("no CA")?;
    let hosts = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = [\"mirror-ca.crt\"]\n",
        reg.url()
    );
    let d = start_daemon(
        DaemonOpts::default()
            .hosts_toml("registry.k8s.io", &hosts)
            .hosts_file("registry.k8s.io/mirror-ca.crt", pem),
    )
    .await?;
    expect_pulled(&d, "registry.k8s.io/x/y:1", &img, "tls-mirror").await?;
    ensure!(
        reg.access_lines()
            .iter()
            .any(|l| l.contains("/v2/x/y/manifests/1?ns=registry.k8s.io")),
        "no mirror manifest request with ns=registry.k8s.io:\n{}",
        reg.log()
    );
    d.finish().await
}

/// Basic auth over HTTPS (credentials from the credentials file) with the CA configured.
#[tokio::test]
async fn https_basic_auth_with_ca() -> Result<()> {
    require_registry!("https_basic_auth_with_ca");
    let (user, pass) = ("tls-user", "tls-pass");
    let opts = RegistryOpts {
        basic_auth: Some((user.into(), pass.into())),
        ..RegistryOpts::default()
    };
    let (reg, img) = tls_registry_with(opts, "e2e/private", "v1", "tls-auth").await?;
    let hosts = format!(
        "server = \"{}\"\nca = {}\n",
        reg.url(),
        toml_str(&ca_path(&reg)?)
    );
    let name = format!("{}/e2e/private:v1", reg.host());
    let d = start_daemon(DaemonOpts::default().hosts_toml(&reg.host(), &hosts)).await?;
    expect_pull_fails(&d, &name).await?;
    d.finish().await?;
    let d = start_daemon(
        DaemonOpts::default()
            .hosts_toml(&reg.host(), &hosts)
            .credential(&reg.host(), user, pass),
    )
    .await?;
    expect_pulled(&d, &name, &img, "tls-auth").await?;
    d.finish().await
}
