//! Builds the images critest (cri-tools v1.36.0) pulls, offline, from Debian's dynamic busybox
//! and the `unicri-test-webserver` stand-in, and pushes them to a local registry under critest's
//! repository paths (the registry host is dropped: hosts.toml mirrors every upstream registry to
//! the one local registry).
//!
//! usage: unicri-testimages --registry http://127.0.0.1:5000 [--webserver PATH] [--list]
//!        unicri-testimages --free-port   (prints a free TCP port on 127.0.0.1)

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use unicri_e2e::oci::{
    Compression, Image, ImageBuilder, LayerBuilder, Pusher, RootfsBuilder, busybox_rootfs,
};

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Args {
    registry: Option<String>,
    webserver: PathBuf,
    list: bool,
}

fn parse_args() -> Result<Args> {
    let mut registry = None;
    let mut webserver = None;
    let mut list = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--registry" => registry = Some(it.next().context("--registry URL")?),
            "--webserver" => {
                webserver = Some(PathBuf::from(it.next().context("--webserver PATH")?))
            }
            "--list" => list = true,
            "--free-port" => {
                println!("{}", unicri_e2e::registry::free_port()?);
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "usage: unicri-testimages --registry http://127.0.0.1:PORT [--webserver PATH] [--list]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let webserver = match webserver {
        Some(w) => w,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("unicri-test-webserver"),
    };
    Ok(Args {
        registry,
        webserver,
        list,
    })
}

/// One image and the `repo:tag`s (registry host stripped) it is pushed under.
struct Target {
    refs: Vec<String>,
    image: Image,
}

fn layer_with_binary(webserver: &str, dest: &str, mode: u32) -> Result<LayerBuilder> {
    let mut r = RootfsBuilder::new();
    r.host_binary_with_mode(webserver, dest, mode)?;
    r.mkdir_p("var/run", 0o755);
    Ok(r.into_layer())
}

fn marker_layer(name: &str) -> Result<unicri_e2e::oci::Layer> {
    LayerBuilder::new()
        .file(&format!("/{name}"), "")
        .build(Compression::Gzip)
}

fn build(webserver: &str) -> Result<Vec<Target>> {
    let bb = busybox_rootfs(&["/usr/bin/pgrep", "/usr/bin/ipcs"])?
        .into_layer()
        .build(Compression::Gzip)?;
    let base = || {
        ImageBuilder::new()
            .layer(bb.clone())
            .env(&[PATH_ENV])
            .cmd(&["sh"])
    };
    let mut out = Vec::new();
    let mut add = |refs: &[&str], image: Image| {
        out.push(Target {
            refs: refs.iter().map(|s| s.to_string()).collect(),
            image,
        });
    };

    // registry.k8s.io/e2e-test-images/busybox:1.29-2 (default test image) and friends
    let busybox = base().build()?;
    add(
        &[
            "e2e-test-images/busybox:1.29-2",
            "library/busybox:latest",
            "library/busybox:1.37.0",
            "docker/library/busybox:1.35.0-glibc",
            "docker/library/busybox:1-uclibc",
            "docker/library/busybox:1",
            "docker/library/busybox:1-glibc",
            "docker/library/busybox:1-musl",
        ],
        busybox,
    );

    // web servers
    let nginx_layer = layer_with_binary(webserver, "usr/local/bin/nginx", 0o755)?
        .dir("/usr/share")
        .dir("/usr/share/nginx")
        .dir("/usr/share/nginx/html")
        .file(
            "/usr/share/nginx/html/index.html",
            "<h1>Welcome to nginx!</h1>\n",
        )
        .build(Compression::Gzip)?;
    let nginx = |port: &str| -> Result<Image> {
        base()
            .layer(nginx_layer.clone())
            .env(&[PATH_ENV, &format!("LISTEN_PORT={port}")])
            .cmd(&["/usr/local/bin/nginx", "-g", "daemon off;"])
            .expose(&format!("{port}/tcp"))
            .stop_signal("SIGQUIT")
            .build()
    };
    add(&["e2e-test-images/nginx:1.14-2"], nginx("80")?);
    add(
        &["k8s-staging-cri-tools/hostnet-nginx-amd64:latest"],
        nginx("12003")?,
    );
    let httpd = base()
        .layer(
            layer_with_binary(webserver, "usr/local/bin/httpd", 0o755)?.build(Compression::Gzip)?,
        )
        .env(&[PATH_ENV, "LISTEN_PORT=80"])
        .cmd(&["/usr/local/bin/httpd"])
        .expose("80/tcp")
        .build()?;
    add(&["e2e-test-images/httpd:2.4.39-4"], httpd);
    let nnp = base()
        .layer(
            layer_with_binary(webserver, "usr/local/bin/nonewprivs", 0o4755)?
                .build(Compression::Gzip)?,
        )
        .entrypoint(&["/usr/local/bin/nonewprivs"])
        .cmd(&[])
        .build()?;
    add(&["e2e-test-images/nonewprivs:1.3"], nnp);

    // pause (registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9 share this path): like the real
    // one, an executable /pause that sleeps until SIGTERM/SIGINT
    let pause = base()
        .layer(
            LayerBuilder::new()
                .file_with(
                    "/pause",
                    "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait; done\n",
                    0o755,
                    0,
                    0,
                )
                .build(Compression::Gzip)?,
        )
        .entrypoint(&["/pause"])
        .cmd(&[])
        .build()?;
    add(&["pause:3.9", "pause:3.10"], pause);

    // user images
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        let img = base().layer(marker_layer(name)?).user(user).build()?;
        add(&[&format!("k8s-staging-cri-tools/{name}:latest")], img);
    }
    let mut passwd = unicri_e2e::oci::PASSWD.to_string();
    passwd.push_str("default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n");
    let mut group = unicri_e2e::oci::GROUP.to_string();
    group.push_str("default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n");
    let predefined = base()
        .layer(
            LayerBuilder::new()
                .dir("/etc")
                .file("/etc/passwd", passwd)
                .file("/etc/group", group)
                .dir("/home")
                .dir_with("/home/default-user", 0o755, 1000, 1000)
                .build(Compression::Gzip)?,
        )
        .user("1000")
        .build()?;
    add(
        &["k8s-staging-cri-tools/test-image-predefined-group:latest"],
        predefined,
    );

    // small distinct images
    for name in [
        "test-image-latest",
        "test-image-1",
        "test-image-2",
        "test-image-3",
        "test-image-digest",
    ] {
        let img = base().layer(marker_layer(name)?).build()?;
        add(&[&format!("k8s-staging-cri-tools/{name}:latest")], img);
    }
    let same = base().layer(marker_layer("same-image")?).build()?;
    add(
        &[
            "k8s-staging-cri-tools/test-image-tags:1",
            "k8s-staging-cri-tools/test-image-tags:2",
            "k8s-staging-cri-tools/test-image-tags:3",
        ],
        same,
    );
    for tag in ["test", "all"] {
        let img = base().layer(marker_layer(tag)?).build()?;
        add(
            &[&format!("k8s-staging-cri-tools/test-image-tag:{tag}")],
            img,
        );
    }

    // WebAssembly images for the `wasm` handler (crictl tours, critest's handler runs): a hello
    // module as an OCI image (`/app.wasm` entrypoint) and as a wasm OCI artifact, a component as
    // an artifact, and a module that runs until stopped
    use unicri_e2e::wasm;
    let hello = wasm::hello()?;
    add(&["unicri/wasm-hello:compat"], wasm::compat_image(&hello)?);
    add(
        &["unicri/wasm-hello:artifact"],
        wasm::artifact(&hello, wasm::WASM_LAYER)?,
    );
    add(
        &["unicri/wasm-component:artifact"],
        wasm::artifact(&wasm::component()?, wasm::WASM_COMPONENT_LAYER)?,
    );
    add(
        &["unicri/wasm-ticker:compat"],
        wasm::compat_image(&wasm::ticker(100_000, 1000)?)?,
    );
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if !args.webserver.exists() {
        bail!(
            "{} missing (cargo build -p unicri-e2e --bins)",
            args.webserver.display()
        );
    }
    let ws = args.webserver.to_string_lossy().into_owned();
    let targets = build(&ws)?;
    if args.list {
        for t in &targets {
            for r in &t.refs {
                println!("{r}\t{}", t.image.id());
            }
        }
    }
    let Some(url) = args.registry else {
        return Ok(());
    };
    let pusher = Pusher::new(&url, None);
    for t in &targets {
        for r in &t.refs {
            let (repo, tag) = unicri_e2e::oci::split_tag(r);
            pusher
                .push_image(repo, tag, &t.image)
                .await
                .with_context(|| format!("push {r}"))?;
            println!("pushed {r} ({})", t.image.id());
        }
    }
    Ok(())
}
