//! The human CLI: the same binary, speaking CRI (and the admin service) over the socket.

use std::io::{IsTerminal, Write};
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

pub(crate) fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
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
    let image_ref = pull_image(ch, image, creds).await?;
    println!("Image is up to date for {image_ref}");
    Ok(())
}

/// Pulls `image` (progress bars on a terminal); returns the image ref.
async fn pull_image(ch: Channel, image: &str, creds: Option<&str>) -> anyhow::Result<String> {
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
    Ok(image_ref)
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

pub(crate) fn human_size(n: u64) -> String {
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

/// How often a followed log file and the container's state are polled.
const LOG_POLL: Duration = Duration::from_millis(100);

fn state_name(state: i32) -> &'static str {
    match v1::ContainerState::try_from(state) {
        Ok(v1::ContainerState::ContainerCreated) => "Created",
        Ok(v1::ContainerState::ContainerRunning) => "Running",
        Ok(v1::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(13).collect()
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// "5 seconds ago" for a CRI timestamp (ns since the epoch).
fn age(created_at_ns: i64, now_ns: i64) -> String {
    let secs = now_ns.saturating_sub(created_at_ns).max(0) / 1_000_000_000;
    match secs {
        0 => "Less than a second ago".into(),
        1 => "1 second ago".into(),
        2..60 => format!("{secs} seconds ago"),
        60..120 => "About a minute ago".into(),
        120..3600 => format!("{} minutes ago", secs / 60),
        3600..7200 => "About an hour ago".into(),
        7200..172_800 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

async fn container_status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<v1::ContainerStatus, tonic::Status> {
    rt.container_status(v1::ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    })
    .await?
    .into_inner()
    .status
    .ok_or_else(|| tonic::Status::not_found(format!("container {id} has no status")))
}

/// Writes one CRI log record's text to our stdout or stderr: `P` (partial) records get no
/// newline, so they join the record that follows. A malformed line goes to stdout as is.
fn print_record(line: &[u8], out: &mut impl Write, err: &mut impl Write) -> std::io::Result<()> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let (_ts, stream, tag, text) = (it.next(), it.next(), it.next(), it.next());
    let partial = match tag {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return writeln_bytes(out, line, true),
    };
    let text = text.unwrap_or_default();
    match stream {
        Some(b"stdout") => writeln_bytes(out, text, !partial),
        Some(b"stderr") => writeln_bytes(err, text, !partial),
        _ => writeln_bytes(out, line, true),
    }
}

fn writeln_bytes(w: &mut impl Write, text: &[u8], newline: bool) -> std::io::Result<()> {
    w.write_all(text)?;
    if newline {
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads a container's CRI log file as it grows and prints its records; survives rotation (the
/// path naming a new file: the old one is drained, the new one read from its start) and
/// truncation in place.
struct LogFollower<O: Write, E: Write> {
    path: std::path::PathBuf,
    out: O,
    err: E,
    file: Option<std::fs::File>,
    /// (device, inode) of `file`.
    ident: (u64, u64),
    pos: u64,
    /// Bytes after the last newline read so far.
    pending: Vec<u8>,
    /// Print only the last this many lines of the first read.
    tail: Option<usize>,
}

impl<O: Write, E: Write> LogFollower<O, E> {
    fn new(path: std::path::PathBuf, tail: Option<usize>, out: O, err: E) -> Self {
        LogFollower {
            path,
            out,
            err,
            file: None,
            ident: (0, 0),
            pos: 0,
            pending: Vec::new(),
            tail,
        }
    }

    /// Opens the path; `false` if it does not exist (yet).
    fn open(&mut self) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::File::open(&self.path) {
            Ok(f) => {
                let m = f.metadata()?;
                self.ident = (m.dev(), m.ino());
                self.file = Some(f);
                self.pos = 0;
                self.pending.clear();
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Prints every complete record the file holds now; returns how many bytes were read.
    fn drain(&mut self) -> std::io::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        if self.file.is_none() && !self.open()? {
            return Ok(0);
        }
        // Look at the path before reading: if it names another file now, the writer has
        // already switched to it, so the old file is complete once read to its end.
        let rotated = match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.ident => Some(true),
            Ok(m) if m.len() < self.pos => Some(false),
            _ => None,
        };
        let mut n = 0;
        match rotated {
            Some(true) => {
                n += self.read_available()?;
                self.flush_pending()?;
                self.file = None;
                if self.open()? {
                    n += self.read_available()?;
                }
            }
            Some(false) => {
                // truncated in place (copytruncate): start over
                self.pos = 0;
                self.pending.clear();
                n += self.read_available()?;
            }
            None => n += self.read_available()?,
        }
        Ok(n)
    }

    fn read_available(&mut self) -> std::io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(f) = self.file.as_mut() else {
            return Ok(0);
        };
        f.seek(SeekFrom::Start(self.pos))?;
        let mut data = Vec::new();
        let n = f.read_to_end(&mut data)?;
        self.pos += n as u64;
        if n == 0 {
            return Ok(0);
        }
        self.pending.extend_from_slice(&data);
        let Some(last_nl) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Ok(n);
        };
        let rest = self.pending.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        let lines: Vec<&[u8]> = complete[..complete.len() - 1]
            .split(|b| *b == b'\n')
            .collect();
        let skip = self
            .tail
            .take()
            .map_or(0, |t| lines.len().saturating_sub(t));
        for line in &lines[skip..] {
            print_record(line, &mut self.out, &mut self.err)?;
        }
        self.out.flush()?;
        self.err.flush()?;
        Ok(n)
    }

    /// Prints a last line left without its newline.
    fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.pending);
        print_record(&line, &mut self.out, &mut self.err)?;
        self.out.flush()?;
        self.err.flush()
    }

    /// After the writer is done: reads until the file stays quiet, then prints what is left.
    async fn finish(&mut self) -> std::io::Result<()> {
        self.drain()?;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.drain()? == 0 {
                break;
            }
        }
        self.flush_pending()
    }
}

/// Prints `id`'s log until the container has exited and the file is drained. With `sigint`,
/// Ctrl-C stops the container (timeout 10 s, then 0 on a second Ctrl-C) and following goes on.
/// Returns the final status, or `None` if the container disappeared.
async fn follow_until_exited(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    log: &mut LogFollower<impl Write, impl Write>,
    mut sigint: Option<tokio::signal::unix::Signal>,
) -> anyhow::Result<Option<v1::ContainerStatus>> {
    let mut interrupts = 0;
    loop {
        log.drain().context("read container log")?;
        let st = match container_status(rt, id).await {
            Ok(st) => st,
            Err(s) if s.code() == tonic::Code::NotFound => {
                log.finish().await.context("read container log")?;
                return Ok(None);
            }
            Err(s) => return Err(status_err("container status", s)),
        };
        if st.state == v1::ContainerState::ContainerExited as i32 {
            log.finish().await.context("read container log")?;
            return Ok(Some(st));
        }
        let tick = tokio::time::sleep(LOG_POLL);
        let Some(sig) = sigint.as_mut() else {
            tick.await;
            continue;
        };
        tokio::select! {
            () = tick => {}
            _ = sig.recv() => {
                interrupts += 1;
                let timeout = if interrupts == 1 { 10 } else { 0 };
                eprintln!("unicri: stopping container {} (timeout {timeout}s)", short_id(id));
                let mut rt = rt.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(s) = rt
                        .stop_container(v1::StopContainerRequest { container_id: id, timeout })
                        .await
                    {
                        eprintln!("unicri: {:#}", status_err("stop container", s));
                    }
                });
            }
        }
    }
}

fn parse_env(kv: &str) -> anyhow::Result<v1::KeyValue> {
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (
            kv.to_string(),
            std::env::var(kv).with_context(|| format!("-e {kv}: not set here (use KEY=VALUE)"))?,
        ),
    };
    if key.is_empty() {
        bail!("-e {kv:?}: empty variable name");
    }
    Ok(v1::KeyValue { key, value })
}

/// `unicri run`'s options.
#[derive(Debug)]
pub struct RunOpts {
    /// Runtime handler ("" for the default).
    pub runtime: String,
    /// Pod and container name.
    pub name: Option<String>,
    /// Remove the pod and its log directory afterwards.
    pub rm: bool,
    /// KEY=VALUE (or KEY: from our environment).
    pub env: Vec<String>,
    /// Parent of the pod's log directory.
    pub log_dir: std::path::PathBuf,
    /// Image reference.
    pub image: String,
    /// Command (empty: the image's).
    pub command: Vec<String>,
}

/// `unicri run`: a pod with one container, its output followed; exits with the container's
/// exit code.
pub async fn run(ch: Channel, o: RunOpts) -> anyhow::Result<()> {
    let envs = o
        .env
        .iter()
        .map(|kv| parse_env(kv))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let present = ImageServiceClient::new(ch.clone())
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: o.image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(|s| status_err("image status", s))?
        .into_inner()
        .image
        .is_some();
    if !present {
        let image_ref = pull_image(ch.clone(), &o.image, None).await?;
        eprintln!("Pulled {image_ref}");
    }
    let name = match &o.name {
        Some(n) => n.clone(),
        None => format!("run-{}", random_hex(3)?),
    };
    let log_dir = o.log_dir.join(&name);
    let created_log_dir = !log_dir.exists();
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("create log directory {}", log_dir.display()))?;
    let remove_log_dir = || {
        if created_log_dir && let Err(e) = std::fs::remove_dir_all(&log_dir) {
            eprintln!("unicri: remove {}: {e}", log_dir.display());
        }
    };
    let pod_config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.clone(),
            uid: random_hex(16)?,
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    };
    let mut rt = RuntimeServiceClient::new(ch);
    let pod_id = match rt
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: o.runtime.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(s) => {
            remove_log_dir();
            return Err(status_err("run pod", s));
        }
    };
    let config = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: o.image.clone(),
            ..Default::default()
        }),
        command: o.command.clone(),
        envs,
        log_path: format!("{name}/0.log"),
        ..Default::default()
    };
    let result = run_container(&mut rt, &pod_id, pod_config, config).await;
    let cleanup = if o.rm {
        let r = remove_pod(&mut rt, &pod_id).await;
        if r.is_ok() {
            remove_log_dir();
        }
        r
    } else {
        Ok(())
    };
    let code = result?;
    cleanup?;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Creates and starts the container, follows its log; its exit code.
async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod_config: v1::PodSandboxConfig,
    config: v1::ContainerConfig,
) -> anyhow::Result<i32> {
    let id = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        })
        .await
        .map_err(|s| status_err("create container", s))?
        .into_inner()
        .container_id;
    let log_path = container_status(rt, &id)
        .await
        .map_err(|s| status_err("container status", s))?
        .log_path;
    let sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("install the SIGINT handler")?;
    rt.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|s| status_err("start container", s))?;
    let mut log = LogFollower::new(log_path.into(), None, std::io::stdout(), std::io::stderr());
    match follow_until_exited(rt, &id, &mut log, Some(sigint)).await? {
        Some(st) => Ok(st.exit_code),
        None => bail!("container {} disappeared", short_id(&id)),
    }
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .map_err(|s| status_err("stop pod", s))?;
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .map_err(|s| status_err("remove pod", s))?;
    Ok(())
}

/// `unicri ps`
pub async fn ps(ch: Channel, all: bool, quiet: bool, pod: Option<&str>) -> anyhow::Result<()> {
    let filter = v1::ContainerFilter {
        pod_sandbox_id: pod.unwrap_or_default().to_string(),
        state: (!all).then_some(v1::ContainerStateValue {
            state: v1::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let mut list = RuntimeServiceClient::new(ch)
        .list_containers(v1::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|s| status_err("list containers", s))?
        .into_inner()
        .containers;
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    if quiet {
        for c in list {
            println!("{}", c.id);
        }
        return Ok(());
    }
    let now = now_ns();
    let rows: Vec<_> = list
        .iter()
        .map(|c| {
            let md = c.metadata.clone().unwrap_or_default();
            [
                short_id(&c.id),
                c.image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| c.image_ref.clone()),
                age(c.created_at, now),
                state_name(c.state).to_string(),
                md.name,
                md.attempt.to_string(),
                short_id(&c.pod_sandbox_id),
            ]
        })
        .collect();
    let header = [
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(widths.iter()).enumerate() {
            if i + 1 == header.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:w$}   "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    Ok(())
}

/// `unicri logs`
pub async fn logs(
    ch: Channel,
    container: &str,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let st = container_status(&mut rt, container)
        .await
        .map_err(|s| status_err("container status", s))?;
    if st.log_path.is_empty() {
        bail!("container {} has no log file", short_id(&st.id));
    }
    let mut log = LogFollower::new(
        st.log_path.clone().into(),
        tail,
        std::io::stdout(),
        std::io::stderr(),
    );
    if follow {
        follow_until_exited(&mut rt, &st.id, &mut log, None).await?;
        return Ok(());
    }
    if !Path::new(&st.log_path).exists() {
        bail!("log file {} does not exist", st.log_path);
    }
    log.drain().context("read container log")?;
    log.flush_pending().context("read container log")?;
    Ok(())
}

/// `unicri exec`: ExecSync; exits with the command's exit code.
pub async fn exec(
    ch: Channel,
    container: &str,
    command: &[String],
    timeout: i64,
) -> anyhow::Result<()> {
    let r = RuntimeServiceClient::new(ch)
        .exec_sync(v1::ExecSyncRequest {
            container_id: container.to_string(),
            cmd: command.to_vec(),
            timeout,
        })
        .await
        .map_err(|s| status_err("exec", s))?
        .into_inner();
    let mut out = std::io::stdout().lock();
    out.write_all(&r.stdout)?;
    out.flush()?;
    let mut err = std::io::stderr().lock();
    err.write_all(&r.stderr)?;
    err.flush()?;
    if r.exit_code != 0 {
        std::process::exit(r.exit_code);
    }
    Ok(())
}

/// `unicri stop`
pub async fn stop(ch: Channel, containers: &[String], timeout: i64) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let mut failed = false;
    for c in containers {
        // StopContainer is idempotent (an unknown id is fine): name unknown ids here
        let r = match container_status(&mut rt, c).await {
            Ok(st) => rt
                .stop_container(v1::StopContainerRequest {
                    container_id: st.id,
                    timeout,
                })
                .await
                .map(|_| ())
                .map_err(|s| status_err("stop container", s)),
            Err(s) => Err(status_err("container status", s)),
        };
        match r {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("unicri: {c}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some containers were not stopped");
    }
    Ok(())
}

/// `unicri rm`: a running container needs `-f` (which stops it with timeout 0 first).
pub async fn rm(ch: Channel, containers: &[String], force: bool) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(ch);
    let mut failed = false;
    for c in containers {
        match rm_one(&mut rt, c, force).await {
            Ok(()) => println!("{c}"),
            Err(e) => {
                eprintln!("unicri: {c}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some containers were not removed");
    }
    Ok(())
}

async fn rm_one(
    rt: &mut RuntimeServiceClient<Channel>,
    container: &str,
    force: bool,
) -> anyhow::Result<()> {
    let st = container_status(rt, container)
        .await
        .map_err(|s| status_err("container status", s))?;
    if force {
        rt.stop_container(v1::StopContainerRequest {
            container_id: st.id.clone(),
            timeout: 0,
        })
        .await
        .map_err(|s| status_err("stop container", s))?;
    } else if st.state == v1::ContainerState::ContainerRunning as i32 {
        bail!("container is running: stop it first, or use rm -f");
    }
    rt.remove_container(v1::RemoveContainerRequest {
        container_id: st.id,
    })
    .await
    .map_err(|s| status_err("remove container", s))?;
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

    #[test]
    fn records_go_to_their_stream_and_partials_join() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for line in [
            "2024-01-01T00:00:00.000000001Z stdout F hello world",
            "2024-01-01T00:00:00.000000002Z stderr F oops",
            "2024-01-01T00:00:00.000000003Z stdout P par",
            "2024-01-01T00:00:00.000000004Z stdout F tial",
            "2024-01-01T00:00:00.000000005Z stdout F ",
            "garbage",
        ] {
            print_record(line.as_bytes(), &mut out, &mut err).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "hello world\npartial\n\ngarbage\n"
        );
        assert_eq!(String::from_utf8(err).unwrap(), "oops\n");
    }

    #[test]
    fn ages_read_like_crictl() {
        let s = 1_000_000_000;
        assert_eq!(age(0, 0), "Less than a second ago");
        assert_eq!(age(0, 5 * s), "5 seconds ago");
        assert_eq!(age(0, 90 * s), "About a minute ago");
        assert_eq!(age(0, 600 * s), "10 minutes ago");
        assert_eq!(age(0, 5 * 3600 * s), "5 hours ago");
        assert_eq!(age(0, 3 * 86_400 * s), "3 days ago");
        assert_eq!(age(10 * s, 0), "Less than a second ago");
    }

    fn rec(stream: &str, tag: &str, text: &str) -> String {
        format!("2024-01-01T00:00:00.000000000Z {stream} {tag} {text}\n")
    }

    #[test]
    fn follower_tails_waits_for_whole_lines_and_survives_rotation() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = LogFollower::new(path.clone(), Some(2), Vec::new(), Vec::new());
        // no file yet
        assert_eq!(f.drain().unwrap(), 0);
        let mut w = std::fs::File::create(&path).unwrap();
        for i in 0..4 {
            w.write_all(rec("stdout", "F", &format!("l{i}")).as_bytes())
                .unwrap();
        }
        // half a record: held back until its newline arrives
        let last = rec("stderr", "F", "e1");
        w.write_all(&last.as_bytes()[..10]).unwrap();
        f.drain().unwrap();
        assert_eq!(String::from_utf8_lossy(&f.out), "l2\nl3\n");
        w.write_all(&last.as_bytes()[10..]).unwrap();
        f.drain().unwrap();
        assert_eq!(String::from_utf8_lossy(&f.err), "e1\n");

        // rotation: the old file gets a last line, then the path names a new file
        w.write_all(rec("stdout", "F", "old-last").as_bytes())
            .unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        let mut w = std::fs::File::create(&path).unwrap();
        w.write_all(rec("stdout", "F", "new").as_bytes()).unwrap();
        f.drain().unwrap();
        assert_eq!(String::from_utf8_lossy(&f.out), "l2\nl3\nold-last\nnew\n");

        // truncation in place: read again from the start
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.set_len(0).unwrap();
        std::fs::write(&path, rec("stdout", "F", "t")).unwrap();
        f.drain().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&f.out),
            "l2\nl3\nold-last\nnew\nt\n"
        );
        // a last line without its newline is printed at the end
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"2024-01-01T00:00:00Z stdout F end")
            .unwrap();
        f.drain().unwrap();
        f.flush_pending().unwrap();
        assert!(String::from_utf8_lossy(&f.out).ends_with("t\nend\n"));
    }

    #[test]
    fn env_flags_parse() {
        let kv = parse_env("A=b=c").unwrap();
        assert_eq!((kv.key.as_str(), kv.value.as_str()), ("A", "b=c"));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("UNICRI_SURELY_UNSET_VARIABLE").is_err());
    }
}
