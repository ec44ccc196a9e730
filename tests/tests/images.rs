//! End-to-end image tests: the real `unicri` daemon, a real local `docker-registry`, CRI over
//! the unix socket. Each test ends with `Daemon::finish` (graceful stop + leak check).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use unicri_e2e::daemon::{Daemon, DaemonOpts};
use unicri_e2e::oci::{
    Compression, Image, ImageBuilder, Index, LayerBuilder, ManifestFormat, busybox_layer,
};
use unicri_e2e::registry::{Registry, RegistryOpts};
use unicri_e2e::require_registry;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A small distinct image: `/etc/marker` holds `marker`.
fn marker_image(marker: &str, c: Compression) -> Result<Image> {
    let l = LayerBuilder::new()
        .dir("/etc")
        .file("/etc/marker", format!("{marker}\n"))
        .build(c)?;
    ImageBuilder::new()
        .layer(l)
        .cmd(&["/bin/sh"])
        .label("e2e.marker", marker)
        .build()
}

/// A busybox image (busybox layer + a marker layer).
fn busybox_image(marker: &str) -> Result<Image> {
    let bb = busybox_layer()?.build(Compression::Gzip)?;
    let m = LayerBuilder::new()
        .dir("/etc")
        .file("/etc/marker", format!("{marker}\n"))
        .build(Compression::Gzip)?;
    ImageBuilder::new().layer(bb).layer(m).cmd(&["sh"]).build()
}

/// `<root>/images/snapshots/<chainid-hex>/fs` of the image's top layer.
fn top_snapshot(d: &Daemon, img: &Image) -> Result<PathBuf> {
    let chain = img.chain_ids();
    let top = chain.last().context("image without layers")?;
    Ok(snapshot_dir(d, top))
}

fn snapshot_dir(d: &Daemon, chain_id: &str) -> PathBuf {
    d.images_dir()
        .join("snapshots")
        .join(chain_id.trim_start_matches("sha256:"))
        .join("fs")
}

async fn start_registry(opts: RegistryOpts) -> Result<Registry> {
    Registry::start(opts).await.context("start docker-registry")
}

async fn start_daemon(opts: DaemonOpts) -> Result<Daemon> {
    Daemon::start(opts).await.context("start unicri daemon")
}

fn tags_of(img: &unicri_proto::v1::Image) -> String {
    format!("tags={:?} digests={:?}", img.repo_tags, img.repo_digests)
}

// ---------------------------------------------------------------------------------------------
// pulls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pull_by_tag_and_by_digest() -> Result<()> {
    require_registry!("pull_by_tag_and_by_digest");
    let reg = start_registry(RegistryOpts::default()).await?;
    let img = marker_image("by-tag", Compression::Gzip)?;
    let mdigest = reg.pusher().push_image("e2e/app", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;

    let name = format!("{}/e2e/app:v1", reg.host());
    let r = d.pull(&name, None).await?;
    ensure!(
        r == img.id(),
        "PullImage ref {r} != config digest {}",
        img.id()
    );
    let st = d
        .image_status(&name)
        .await?
        .context("no ImageStatus after pull")?;
    ensure!(st.id == img.id());
    ensure!(st.repo_tags.contains(&name), "{}", tags_of(&st));
    let by_digest = format!("{}/e2e/app@{mdigest}", reg.host());
    ensure!(st.repo_digests.contains(&by_digest), "{}", tags_of(&st));
    ensure!(st.size > 0);

    // status by id and by digest
    ensure!(
        d.image_status(img.id())
            .await?
            .is_some_and(|i| i.id == img.id())
    );
    ensure!(
        d.image_status(&by_digest)
            .await?
            .is_some_and(|i| i.id == img.id())
    );

    // pull by digest on a fresh daemon
    let d2 = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    let r = d2.pull(&by_digest, None).await?;
    ensure!(r == img.id());
    let st = d2
        .image_status(&by_digest)
        .await?
        .context("status by digest")?;
    ensure!(st.repo_digests.contains(&by_digest), "{}", tags_of(&st));
    // the marker file is unpacked
    let marker = std::fs::read_to_string(top_snapshot(&d2, &img)?.join("etc/marker"))?;
    ensure!(marker == "by-tag\n");
    d2.finish().await?;
    d.finish().await
}

#[tokio::test]
async fn bare_name_is_normalised_through_docker_io_mirror() -> Result<()> {
    require_registry!("bare_name_is_normalised_through_docker_io_mirror");
    let reg = start_registry(RegistryOpts::default()).await?;
    let img = busybox_image("docker-hub")?;
    reg.pusher()
        .push_image("library/busybox", "latest", &img)
        .await?;
    let d = start_daemon(DaemonOpts::default().mirrors_to(&reg, &["docker.io"])).await?;

    let r = d.pull("busybox", None).await?;
    ensure!(r == img.id());
    let full = "docker.io/library/busybox:latest";
    for name in ["busybox", "busybox:latest", "library/busybox", full] {
        let st = d
            .image_status(name)
            .await?
            .with_context(|| format!("status {name}"))?;
        ensure!(st.id == img.id(), "{name}");
        ensure!(st.repo_tags.iter().any(|t| t == full), "{}", tags_of(&st));
    }
    ensure!(
        reg.manifest_gets("latest") >= 1,
        "the mirror was not used:\n{}",
        reg.log()
    );
    d.finish().await
}

#[tokio::test]
async fn registry_k8s_io_name_served_by_mirror() -> Result<()> {
    require_registry!("registry_k8s_io_name_served_by_mirror");
    let reg = start_registry(RegistryOpts::default()).await?;
    let img = busybox_image("k8s")?;
    reg.pusher()
        .push_image("e2e-test-images/busybox", "1.29-2", &img)
        .await?;
    let pause = marker_image("pause", Compression::Gzip)?;
    reg.pusher().push_image("pause", "3.9", &pause).await?;
    let d = start_daemon(DaemonOpts::default().mirrors_to(&reg, &["registry.k8s.io"])).await?;
    let name = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
    ensure!(d.pull(name, None).await? == img.id());
    ensure!(d.pull("registry.k8s.io/pause:3.9", None).await? == pause.id());
    let st = d.image_status(name).await?.context("status")?;
    ensure!(st.repo_tags.iter().any(|t| t == name), "{}", tags_of(&st));
    // sh and applets are hard links to busybox in the snapshot
    let fs = snapshot_dir(&d, &img.chain_ids()[0]);
    let bb = std::fs::metadata(fs.join("bin/busybox"))?;
    let sh = std::fs::metadata(fs.join("bin/sh"))?;
    ensure!(
        bb.ino() == sh.ino(),
        "bin/sh is not a hard link of bin/busybox"
    );
    d.finish().await
}

#[tokio::test]
async fn whiteouts_opaque_dirs_links_and_modes() -> Result<()> {
    require_registry!("whiteouts_opaque_dirs_links_and_modes");
    let reg = start_registry(RegistryOpts::default()).await?;
    let l1 = LayerBuilder::new()
        .dir("/a")
        .dir("/a/keep")
        .file("/a/keep/file", "keep\n")
        .dir("/a/gone")
        .file("/a/gone/file", "gone\n")
        .file("/a/gonefile", "gone too\n")
        .dir("/opq")
        .file("/opq/old", "old\n")
        .file_with("/a/suid", "#!/bin/sh\n", 0o4755, 1000, 50)
        .dir_with("/a/sticky", 0o1777, 0, 0)
        .hardlink("/a/hl", "/a/keep/file")
        .symlink("/a/sl", "keep/file")
        .build(Compression::Gzip)?;
    let l2 = LayerBuilder::new()
        .whiteout("/a/gone")
        .whiteout("/a/gonefile")
        .opaque("/opq")
        .file("/opq/new", "new\n")
        .build(Compression::Gzip)?;
    let img = ImageBuilder::new().layer(l1).layer(l2).build()?;
    reg.pusher().push_image("e2e/whiteouts", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    d.pull(&format!("{}/e2e/whiteouts:v1", reg.host()), None)
        .await?;

    let chain = img.chain_ids();
    let lower = snapshot_dir(&d, &chain[0]);
    let upper = snapshot_dir(&d, &chain[1]);
    ensure!(lower.is_dir(), "missing snapshot {}", lower.display());
    ensure!(upper.is_dir(), "missing snapshot {}", upper.display());

    // lower layer content, modes, owners, links
    ensure!(std::fs::read_to_string(lower.join("a/gone/file"))? == "gone\n");
    let suid = std::fs::symlink_metadata(lower.join("a/suid"))?;
    ensure!(
        suid.mode() & 0o7777 == 0o4755,
        "suid mode {:o}",
        suid.mode()
    );
    ensure!(
        suid.uid() == 1000 && suid.gid() == 50,
        "owner {}:{}",
        suid.uid(),
        suid.gid()
    );
    let sticky = std::fs::symlink_metadata(lower.join("a/sticky"))?;
    ensure!(
        sticky.mode() & 0o7777 == 0o1777,
        "sticky mode {:o}",
        sticky.mode()
    );
    let hl = std::fs::metadata(lower.join("a/hl"))?;
    let orig = std::fs::metadata(lower.join("a/keep/file"))?;
    ensure!(hl.ino() == orig.ino(), "a/hl is not a hard link");
    ensure!(std::fs::read_link(lower.join("a/sl"))? == PathBuf::from("keep/file"));

    // whiteouts become overlay char devices 0/0
    for w in ["a/gone", "a/gonefile"] {
        let m = std::fs::symlink_metadata(upper.join(w)).with_context(|| w.to_string())?;
        ensure!(m.file_type().is_char_device(), "{w} is not a char device");
        ensure!(m.rdev() == 0, "{w} rdev {}", m.rdev());
    }
    ensure!(
        !upper.join("a/.wh.gone").exists(),
        ".wh. file left in snapshot"
    );
    // the opaque dir carries trusted.overlay.opaque=y
    let x = xattr::get(upper.join("opq"), "trusted.overlay.opaque")?;
    ensure!(x.as_deref() == Some(b"y".as_slice()), "opaque xattr {x:?}");
    ensure!(
        !upper.join("opq/.wh..wh..opq").exists(),
        "opaque marker left in snapshot"
    );
    ensure!(std::fs::read_to_string(upper.join("opq/new"))? == "new\n");
    d.finish().await
}

#[tokio::test]
async fn multi_arch_index_resolves_linux_amd64() -> Result<()> {
    require_registry!("multi_arch_index_resolves_linux_amd64");
    let reg = start_registry(RegistryOpts::default()).await?;
    for format in [ManifestFormat::Oci, ManifestFormat::Docker] {
        let mk = |arch: &str, variant: Option<&str>| -> Result<Image> {
            let l = LayerBuilder::new()
                .file("/arch", arch)
                .build(Compression::Gzip)?;
            ImageBuilder::new()
                .format(format)
                .platform("linux", arch, variant)
                .layer(l)
                .build()
        };
        // amd64 deliberately not first
        let idx = Index::new(
            vec![
                mk("arm64", Some("v8"))?,
                mk("arm", Some("v7"))?,
                mk("amd64", None)?,
                mk("s390x", None)?,
            ],
            format,
        )?;
        let repo = format!("e2e/multi-{format:?}").to_lowercase();
        reg.pusher().push_index(&repo, "latest", &idx).await?;
        let amd = idx.image_for("linux", "amd64").context("amd64")?;
        let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
        let name = format!("{}/{repo}:latest", reg.host());
        let r = d.pull(&name, None).await?;
        ensure!(
            r == amd.id(),
            "{format:?}: got {r}, want amd64 config {}",
            amd.id()
        );
        let st = d.image_status(&name).await?.context("status")?;
        ensure!(st.id == amd.id());
        let by_index = format!("{}/{repo}@{}", reg.host(), idx.digest());
        ensure!(
            st.repo_digests.contains(&by_index),
            "{format:?}: {}",
            tags_of(&st)
        );
        ensure!(std::fs::read_to_string(top_snapshot(&d, amd)?.join("arch"))? == "amd64");
        let arm = idx.image_for("linux", "arm64").context("arm64")?;
        ensure!(
            reg.blob_gets(&arm.layers[0].digest) == 0,
            "arm64 layer was fetched"
        );
        d.finish().await?;
    }
    Ok(())
}

#[tokio::test]
async fn gzip_zstd_and_uncompressed_layers() -> Result<()> {
    require_registry!("gzip_zstd_and_uncompressed_layers");
    let reg = start_registry(RegistryOpts::default()).await?;
    let cases = [
        ("gzip-oci", Compression::Gzip, ManifestFormat::Oci),
        ("zstd-oci", Compression::Zstd, ManifestFormat::Oci),
        ("none-oci", Compression::None, ManifestFormat::Oci),
        ("gzip-docker", Compression::Gzip, ManifestFormat::Docker),
        ("none-docker", Compression::None, ManifestFormat::Docker),
    ];
    let mut imgs = Vec::new();
    for (name, c, f) in cases {
        let l = LayerBuilder::new()
            .dir("/data")
            .file("/data/what", name)
            .file("/data/big", vec![b'x'; 256 * 1024])
            .build(c)?;
        let img = ImageBuilder::new().format(f).layer(l).build()?;
        reg.pusher()
            .push_image(&format!("e2e/{name}"), "v1", &img)
            .await?;
        imgs.push((name, img));
    }
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    for (name, img) in &imgs {
        let r = d
            .pull(&format!("{}/e2e/{name}:v1", reg.host()), None)
            .await?;
        ensure!(r == img.id(), "{name}");
        let fs = top_snapshot(&d, img)?;
        ensure!(
            std::fs::read_to_string(fs.join("data/what"))? == *name,
            "{name}"
        );
        ensure!(
            std::fs::metadata(fs.join("data/big"))?.len() == 256 * 1024,
            "{name}"
        );
    }
    d.finish().await
}

// ---------------------------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------------------------

async fn auth_case(token_auth: bool) -> Result<()> {
    let (user, pass) = ("e2e-user", "e2e-pass");
    let reg = start_registry(RegistryOpts {
        basic_auth: Some((user.into(), pass.into())),
        token_auth,
    })
    .await?;
    let img = marker_image("private", Compression::Gzip)?;
    reg.pusher().push_image("e2e/private", "v1", &img).await?;
    let name = format!("{}/e2e/private:v1", reg.host());

    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    ensure!(
        d.pull(&name, None).await.is_err(),
        "pull without credentials succeeded"
    );
    ensure!(
        d.pull_with_auth(&name, user, "wrong").await.is_err(),
        "pull with a wrong password succeeded"
    );
    ensure!(d.image_status(&name).await?.is_none());
    let r = d.pull_with_auth(&name, user, pass).await?;
    ensure!(r == img.id());
    // AuthConfig.auth (base64 user:pass) works too
    d.remove_image(&name).await?;
    let auth = unicri_proto::v1::AuthConfig {
        auth: unicri_e2e::oci::basic_auth_value(user, pass),
        ..Default::default()
    };
    ensure!(d.pull(&name, Some(auth)).await? == img.id());
    d.finish().await?;

    // credentials_file
    let d = start_daemon(DaemonOpts::default().local_registry(&reg).credential(
        &reg.host(),
        user,
        pass,
    ))
    .await?;
    ensure!(d.pull(&name, None).await? == img.id());
    d.finish().await
}

#[tokio::test]
async fn auth_basic_registry() -> Result<()> {
    require_registry!("auth_basic_registry");
    auth_case(false).await
}

#[tokio::test]
async fn auth_bearer_token_registry() -> Result<()> {
    require_registry!("auth_bearer_token_registry");
    auth_case(true).await
}

// ---------------------------------------------------------------------------------------------
// list / status / remove / fs info
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_status_remove_and_fs_info() -> Result<()> {
    require_registry!("list_status_remove_and_fs_info");
    let reg = start_registry(RegistryOpts::default()).await?;
    let a = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("/a", vec![b'a'; 100_000])
                .build(Compression::None)?,
        )
        .user("1234")
        .env(&["PATH=/bin", "E2E=yes"])
        .entrypoint(&["/a"])
        .cmd(&["arg"])
        .working_dir("/work")
        .label("e2e.label", "label-value-7731")
        .build()?;
    let b = marker_image("b", Compression::Gzip)?;
    let c = marker_image("c", Compression::Gzip)?;
    let p = reg.pusher();
    p.push_image("e2e/a", "v1", &a).await?;
    p.push_image("e2e/b", "v1", &b).await?;
    p.push_image("e2e/b", "v2", &b).await?;
    let c_digest = p.push_image("e2e/c", "v1", &c).await?;
    let h = reg.host();
    let (an, bn1, bn2, cn) = (
        format!("{h}/e2e/a:v1"),
        format!("{h}/e2e/b:v1"),
        format!("{h}/e2e/b:v2"),
        format!("{h}/e2e/c:v1"),
    );
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    let used0 = d.image_fs_used().await?;
    for n in [&an, &bn1, &bn2, &cn] {
        d.pull(n, None).await?;
    }
    let used1 = d.image_fs_used().await?;
    ensure!(used1 > 0, "ImageFsInfo used_bytes is 0 after pulls");
    ensure!(
        used1 > used0,
        "ImageFsInfo did not grow: {used0} -> {used1}"
    );

    // list + filter
    let all = d.list_images(None).await?;
    for id in [a.id(), b.id(), c.id()] {
        ensure!(all.iter().any(|i| i.id == id), "{id} not listed");
    }
    ensure!(all.len() == 3, "expected 3 images, got {}", all.len());
    let only_a = d.list_images(Some(&an)).await?;
    ensure!(
        only_a.len() == 1 && only_a[0].id == a.id(),
        "filter: {only_a:?}"
    );
    let bimg = all.iter().find(|i| i.id == b.id()).context("b")?;
    ensure!(
        bimg.repo_tags.contains(&bn1) && bimg.repo_tags.contains(&bn2),
        "{}",
        tags_of(bimg)
    );

    // status: uid from USER, verbose info carries the config
    let st = d.image_status(&an).await?.context("a")?;
    ensure!(
        st.uid.as_ref().map(|u| u.value) == Some(1234),
        "uid {:?}",
        st.uid
    );
    ensure!(st.username.is_empty());
    let v = d.image_status_verbose(&an, true).await?;
    let info = v.info.values().cloned().collect::<Vec<_>>().join("\n");
    ensure!(
        info.contains("label-value-7731"),
        "verbose info lacks the config: {info}"
    );
    ensure!(d.image_status("127.0.0.1:1/nope:v1").await?.is_none());

    // remove by id (all tags go)
    d.remove_image(b.id()).await?;
    ensure!(d.image_status(&bn1).await?.is_none() && d.image_status(&bn2).await?.is_none());
    // remove by tag
    d.remove_image(&an).await?;
    ensure!(d.image_status(&an).await?.is_none());
    ensure!(d.image_status(a.id()).await?.is_none());
    // remove by digest
    d.remove_image(&format!("{h}/e2e/c@{c_digest}")).await?;
    ensure!(d.image_status(&cn).await?.is_none());
    ensure!(d.list_images(None).await?.is_empty());
    // removing again is not an error (CRI: idempotent)
    d.remove_image(&cn).await?;

    // the space is given back (snapshots and blobs are collected, perhaps lazily)
    let mut used2 = d.image_fs_used().await?;
    for _ in 0..50 {
        if used2 < used1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        used2 = d.image_fs_used().await?;
    }
    ensure!(
        used2 < used1,
        "ImageFsInfo did not drop after removal: {used1} -> {used2}"
    );
    for img in [&a, &b, &c] {
        for cid in img.chain_ids() {
            let s = snapshot_dir(&d, &cid);
            ensure!(!s.exists(), "snapshot {} left after removal", s.display());
        }
    }
    d.finish().await
}

// ---------------------------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_pulls_download_each_blob_once() -> Result<()> {
    require_registry!("concurrent_pulls_download_each_blob_once");
    let reg = start_registry(RegistryOpts::default()).await?;
    let big = |seed: u8| -> Vec<u8> {
        // incompressible-ish so the download takes a little while
        let mut v = Vec::with_capacity(4 << 20);
        let mut x: u32 = 0x1234_5678 ^ u32::from(seed);
        for _ in 0..(4 << 20) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(x as u8);
        }
        v
    };
    let img = ImageBuilder::new()
        .layer(busybox_layer()?.build(Compression::Gzip)?)
        .layer(
            LayerBuilder::new()
                .file("/big1", big(1))
                .build(Compression::Gzip)?,
        )
        .layer(
            LayerBuilder::new()
                .file("/big2", big(2))
                .build(Compression::Zstd)?,
        )
        .build()?;
    reg.pusher().push_image("e2e/race", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    let name = format!("{}/e2e/race:v1", reg.host());
    let (r1, r2, r3) = tokio::join!(
        d.pull(&name, None),
        d.pull(&name, None),
        d.pull(&name, None)
    );
    ensure!(r1? == img.id());
    ensure!(r2? == img.id());
    ensure!(r3? == img.id());
    tokio::time::sleep(Duration::from_millis(300)).await; // access log flush
    for l in &img.layers {
        let n = reg.blob_gets(&l.digest);
        ensure!(
            n == 1,
            "layer {} fetched {n} times\n{}",
            l.digest,
            reg.log()
        );
    }
    ensure!(d.list_images(None).await?.len() == 1);
    d.finish().await
}

// ---------------------------------------------------------------------------------------------
// import and CLI
// ---------------------------------------------------------------------------------------------

fn check_cli(out: &std::process::Output, what: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

#[tokio::test]
async fn image_import_oci_layout_oci_archive_docker_save() -> Result<()> {
    // no registry needed
    let d = start_daemon(DaemonOpts::default()).await?;
    let tmp = tempfile::tempdir()?;
    let layout_img = marker_image("layout", Compression::Gzip)?;
    let archive_img = marker_image("archive", Compression::Zstd)?;
    let save_img = ImageBuilder::new()
        .docker()
        .layer(busybox_layer()?.build(Compression::None)?)
        .layer(
            LayerBuilder::new()
                .dir("/etc")
                .file("/etc/marker", "save\n")
                .build(Compression::None)?,
        )
        .build()?;
    let layout = tmp.path().join("layout");
    layout_img.write_oci_layout(&layout, "docker.io/e2e/layout:v1")?;
    let archive = tmp.path().join("archive.tar");
    archive_img.write_oci_archive(&archive, "docker.io/e2e/archive:v1")?;
    let save = tmp.path().join("save.tar");
    save_img.write_docker_save(&save, &["docker.io/e2e/save:v1"])?;

    for (path, img, name, marker) in [
        (&layout, &layout_img, "docker.io/e2e/layout:v1", "layout"),
        (
            &archive,
            &archive_img,
            "docker.io/e2e/archive:v1",
            "archive",
        ),
        (&save, &save_img, "docker.io/e2e/save:v1", "save"),
    ] {
        let out = d.cli([
            std::ffi::OsStr::new("image"),
            std::ffi::OsStr::new("import"),
            path.as_os_str(),
        ])?;
        check_cli(&out, &format!("unicri image import {}", path.display()))?;
        let st = d
            .image_status(img.id())
            .await?
            .with_context(|| format!("{name} not present after import"))?;
        ensure!(
            st.repo_tags.iter().any(|t| t == name),
            "{name}: {}",
            tags_of(&st)
        );
        let got = std::fs::read_to_string(top_snapshot(&d, img)?.join("etc/marker"))?;
        ensure!(got.trim() == marker, "{name}: marker {got:?}");
    }
    ensure!(d.list_images(None).await?.len() == 3);
    d.finish().await
}

#[tokio::test]
async fn cli_pull_images_inspecti_rmi_version() -> Result<()> {
    require_registry!("cli_pull_images_inspecti_rmi_version");
    let reg = start_registry(RegistryOpts::default()).await?;
    let img = marker_image("cli", Compression::Gzip)?;
    reg.pusher().push_image("e2e/cli", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    let name = format!("{}/e2e/cli:v1", reg.host());
    check_cli(&d.cli(["version"])?, "unicri version")?;
    check_cli(&d.cli(["pull", &name])?, "unicri pull")?;
    ensure!(d.image_status(&name).await?.is_some());
    let images = check_cli(&d.cli(["images"])?, "unicri images")?;
    ensure!(images.contains("e2e/cli"), "images output: {images}");
    let inspect = check_cli(&d.cli(["inspecti", &name])?, "unicri inspecti")?;
    let short = &img.id()["sha256:".len().."sha256:".len() + 12];
    ensure!(
        inspect.contains(short),
        "inspecti output lacks the id: {inspect}"
    );
    check_cli(&d.cli(["rmi", &name])?, "unicri rmi")?;
    ensure!(d.image_status(&name).await?.is_none());
    d.finish().await
}

#[tokio::test]
async fn restart_keeps_images() -> Result<()> {
    require_registry!("restart_keeps_images");
    let reg = start_registry(RegistryOpts::default()).await?;
    let img = marker_image("restart", Compression::Gzip)?;
    reg.pusher().push_image("e2e/restart", "v1", &img).await?;
    let mut d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;
    let name = format!("{}/e2e/restart:v1", reg.host());
    d.pull(&name, None).await?;
    d.restart().await?;
    let st = d
        .image_status(&name)
        .await?
        .context("image lost across restart")?;
    ensure!(st.id == img.id());
    d.finish().await
}

// ---------------------------------------------------------------------------------------------
// hostile input through the daemon
// ---------------------------------------------------------------------------------------------

/// A layer that writes through a symlink pointing outside the store fails the pull with
/// DATA_LOSS; nothing is written outside, and the daemon's clean-up leaves no blob, snapshot or
/// ingest file of the half-pulled image (its first, valid layer included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layer_fails_pull_and_leaves_nothing() -> Result<()> {
    require_registry!("hostile_layer_fails_pull_and_leaves_nothing");
    let reg = start_registry(RegistryOpts::default()).await?;
    let canary = tempfile::tempdir()?;
    let good = LayerBuilder::new()
        .dir("/etc")
        .file("/etc/marker", "good\n")
        .build(Compression::Gzip)?;
    let evil = LayerBuilder::new()
        .symlink("/evil", canary.path().to_str().context("canary path")?)
        .file("/evil/pwned", "pwned\n")
        .build(Compression::Gzip)?;
    let img = ImageBuilder::new().layer(good).layer(evil).build()?;
    reg.pusher().push_image("e2e/hostile", "v1", &img).await?;
    let d = start_daemon(DaemonOpts::default().local_registry(&reg)).await?;

    let name = format!("{}/e2e/hostile:v1", reg.host());
    let err = d
        .image()
        .pull_image(unicri_proto::v1::PullImageRequest {
            image: Some(unicri_e2e::daemon::spec(&name)),
            ..Default::default()
        })
        .await
        .expect_err("a layer writing through an outside symlink must fail the pull");
    ensure!(err.code() == tonic::Code::DataLoss, "{err:?}");
    ensure!(
        std::fs::read_dir(canary.path())?.count() == 0,
        "something was written outside the store"
    );
    ensure!(d.image_status(&name).await?.is_none());
    for sub in ["blobs/sha256", "snapshots", "ingest"] {
        let p = d.images_dir().join(sub);
        if p.exists() {
            let left: Vec<_> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect();
            ensure!(left.is_empty(), "{} still holds {left:?}", p.display());
        }
    }
    d.finish().await
}
