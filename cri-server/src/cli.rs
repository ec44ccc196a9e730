//! The human CLI: the same binary, speaking CRI (and the admin service) over the socket.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use unicri_proto::admin::admin_client::AdminClient;
use unicri_proto::{ImageServiceClient, RuntimeServiceClient, v1};

/// Connects to the daemon's unix socket.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| {
            format!(
                "connect to unicri at {} (is the daemon running?)",
                socket.display()
            )
        })?;
    Ok(channel)
}

fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

/// `unicri version`
pub async fn version(ch: Channel) -> anyhow::Result<()> {
    let v = RuntimeServiceClient::new(ch)
        .version(v1::VersionRequest {
            version: String::new(),
        })
        .await
        .map_err(|s| status_err("version", s))?
        .into_inner();
    println!("Version:  {}", v.version);
    println!("RuntimeName:  {}", v.runtime_name);
    println!("RuntimeVersion:  {}", v.runtime_version);
    println!("RuntimeApiVersion:  {}", v.runtime_api_version);
    Ok(())
}

/// `unicri info`
pub async fn info(ch: Channel) -> anyhow::Result<()> {
    let s = RuntimeServiceClient::new(ch)
        .status(v1::StatusRequest { verbose: true })
        .await
        .map_err(|s| status_err("status", s))?
        .into_inner();
    let conditions: Vec<_> = s
        .status
        .map(|st| st.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| serde_json::json!({"type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message}))
        .collect();
    let mut info = serde_json::Map::new();
    for (k, v) in s.info {
        let parsed = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
        info.insert(k, parsed);
    }
    let handlers: Vec<_> = s.runtime_handlers.into_iter().map(|h| h.name).collect();
    let out = serde_json::json!({"status": {"conditions": conditions}, "runtimeHandlers": handlers, "info": info});
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `unicri pull`: a progress bar per layer on a terminal, plain CRI PullImage otherwise.
pub async fn pull(ch: Channel, image: &str, creds: Option<&str>) -> anyhow::Result<()> {
    let (username, password) = match creds {
        Some(c) => {
            let (u, p) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
            (u.to_string(), p.to_string())
        }
        None => (String::new(), String::new()),
    };
    let image_ref = if std::io::stderr().is_terminal() {
        pull_with_progress(ch, image, username, password).await?
    } else {
        let auth = (!username.is_empty()).then(|| v1::AuthConfig {
            username,
            password,
            ..Default::default()
        });
        ImageServiceClient::new(ch)
            .pull_image(v1::PullImageRequest {
                image: Some(v1::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await
            .map_err(|s| status_err("pull image", s))?
            .into_inner()
            .image_ref
    };
    println!("Image is up to date for {image_ref}");
    Ok(())
}

async fn pull_with_progress(
    ch: Channel,
    image: &str,
    username: String,
    password: String,
) -> anyhow::Result<String> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let mut stream = AdminClient::new(ch)
        .pull_image_with_progress(unicri_proto::admin::PullImageWithProgressRequest {
            image: image.to_string(),
            username,
            password,
        })
        .await
        .map_err(|s| status_err("pull image", s))?
        .into_inner();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: std::collections::HashMap<String, ProgressBar> = std::collections::HashMap::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| status_err("pull image", s))?
    {
        if !msg.image_ref.is_empty() {
            // Replace the live bars by one settled line per layer.
            let _ = multi.clear();
            let mut done: Vec<_> = bars
                .iter()
                .map(|(d, b)| (d.clone(), b.length().unwrap_or(0)))
                .collect();
            done.sort();
            for (digest, total) in done {
                eprintln!("{digest}: done {}", human_size(total));
            }
            return Ok(msg.image_ref);
        }
        let bar = bars.entry(msg.layer_digest.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(msg.total));
            b.set_style(style.clone());
            let short = msg
                .layer_digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>();
            b.set_prefix(short);
            b
        });
        bar.set_length(msg.total);
        bar.set_position(msg.done);
    }
    bail!("pull stream ended without a result")
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    // Display only: the float conversion's precision loss is irrelevant here.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", UNITS[u])
    }
}

fn split_repo_tag(name: &str) -> (&str, &str) {
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "<none>"),
    }
}

/// `unicri images`
pub async fn images(ch: Channel, quiet: bool, digests: bool) -> anyhow::Result<()> {
    let list = ImageServiceClient::new(ch)
        .list_images(v1::ListImagesRequest { filter: None })
        .await
        .map_err(|s| status_err("list images", s))?
        .into_inner()
        .images;
    if quiet {
        for i in list {
            println!("{}", i.id);
        }
        return Ok(());
    }
    let mut rows = vec![];
    for i in &list {
        let short_id: String =
            i.id.trim_start_matches("sha256:")
                .chars()
                .take(13)
                .collect();
        let digest = i
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map(|(_, d)| {
                d.trim_start_matches("sha256:")
                    .chars()
                    .take(13)
                    .collect::<String>()
            })
            .unwrap_or_else(|| "<none>".into());
        if i.repo_tags.is_empty() {
            let repo = i
                .repo_digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map_or("<none>", |(r, _)| r);
            rows.push((
                repo.to_string(),
                "<none>".to_string(),
                digest,
                short_id,
                human_size(i.size),
            ));
        } else {
            for t in &i.repo_tags {
                let (r, tag) = split_repo_tag(t);
                rows.push((
                    r.to_string(),
                    tag.to_string(),
                    digest.clone(),
                    short_id.clone(),
                    human_size(i.size),
                ));
            }
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(3);
    if digests {
        println!(
            "{:w0$}   {:w1$}   {:13}   {:13}   SIZE",
            "IMAGE", "TAG", "DIGEST", "IMAGE ID"
        );
    } else {
        println!("{:w0$}   {:w1$}   {:13}   SIZE", "IMAGE", "TAG", "IMAGE ID");
    }
    for (r, t, d, id, size) in rows {
        if digests {
            println!("{r:w0$}   {t:w1$}   {d:13}   {id:13}   {size}");
        } else {
            println!("{r:w0$}   {t:w1$}   {id:13}   {size}");
        }
    }
    Ok(())
}

/// `unicri inspecti`
pub async fn inspecti(ch: Channel, image: &str) -> anyhow::Result<()> {
    let resp = ImageServiceClient::new(ch)
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .map_err(|s| status_err("image status", s))?
        .into_inner();
    let Some(img) = resp.image else {
        bail!("no such image {image:?} present");
    };
    let info: serde_json::Value = resp
        .info
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let out = serde_json::json!({
        "status": {
            "id": img.id,
            "repoTags": img.repo_tags,
            "repoDigests": img.repo_digests,
            "size": img.size.to_string(),
            "uid": img.uid.map(|u| u.value),
            "username": img.username,
            "pinned": img.pinned,
        },
        "info": info,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `unicri rmi`
pub async fn rmi(ch: Channel, images: &[String]) -> anyhow::Result<()> {
    let mut client = ImageServiceClient::new(ch);
    let mut failed = false;
    for image in images {
        let spec = Some(v1::ImageSpec {
            image: image.clone(),
            ..Default::default()
        });
        let status = client
            .image_status(v1::ImageStatusRequest {
                image: spec.clone(),
                verbose: false,
            })
            .await
            .map_err(|s| status_err("image status", s))?
            .into_inner();
        let Some(img) = status.image else {
            eprintln!("no such image {image}");
            failed = true;
            continue;
        };
        client
            .remove_image(v1::RemoveImageRequest {
                image: Some(v1::ImageSpec {
                    image: img.id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| status_err("remove image", s))?;
        for t in img.repo_tags.iter().chain(img.repo_digests.iter()) {
            println!("Deleted: {t}");
        }
        println!("Deleted: {}", img.id);
    }
    if failed {
        bail!("some images were not found");
    }
    Ok(())
}

/// `unicri image import`
pub async fn import(ch: Channel, path: &Path) -> anyhow::Result<()> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let resp = AdminClient::new(ch)
        .import_images(unicri_proto::admin::ImportImagesRequest {
            path: abs.display().to_string(),
        })
        .await
        .map_err(|s| status_err("import", s))?
        .into_inner();
    for i in resp.images {
        let names: Vec<_> = i
            .repo_tags
            .iter()
            .chain(i.repo_digests.iter())
            .cloned()
            .collect();
        println!("imported {} {}", i.id, names.join(" "));
    }
    Ok(())
}

/// `unicri pods`
pub async fn pods(ch: Channel, quiet: bool) -> anyhow::Result<()> {
    let items = RuntimeServiceClient::new(ch)
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .map_err(|s| status_err("list pods", s))?
        .into_inner()
        .items;
    if quiet {
        for p in items {
            println!("{}", p.id);
        }
        return Ok(());
    }
    println!(
        "{:13}   {:8}   {:30}   {:15}   HANDLER",
        "POD ID", "STATE", "NAME", "NAMESPACE"
    );
    for p in items {
        let md = p.metadata.unwrap_or_default();
        let state = if p.state == v1::PodSandboxState::SandboxReady as i32 {
            "Ready"
        } else {
            "NotReady"
        };
        let short: String = p.id.chars().take(13).collect();
        println!(
            "{short:13}   {state:8}   {:30}   {:15}   {}",
            md.name, md.namespace, p.runtime_handler
        );
    }
    Ok(())
}

/// `unicri rmp`: stop and remove pods (all of them with `--all`).
pub async fn rmp(ch: Channel, ids: &[String], all: bool) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let mut ids = ids.to_vec();
    if all {
        let items = rt
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| status_err("list pods", s))?
            .into_inner()
            .items;
        ids.extend(items.into_iter().map(|p| p.id));
    }
    for id in ids {
        rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|s| status_err("stop pod", s))?;
        rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .map_err(|s| status_err("remove pod", s))?;
        println!("Removed sandbox {id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tags_format_like_crictl() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(
            split_repo_tag("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split_repo_tag("localhost:5000/x"),
            ("localhost:5000/x", "<none>")
        );
        assert_eq!(
            split_repo_tag("localhost:5000/x:1"),
            ("localhost:5000/x", "1")
        );
    }
}
