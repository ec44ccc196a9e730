//! The `wasm` runtime handler end to end: the real daemon, a real local registry holding the
//! WASI test modules of `unicri_e2e::wasm` (compat images and wasm OCI artifacts), Debian's CNI
//! plugins. Pods are `RunPodSandbox` with `runtime_handler: "wasm"`; containers are pulled,
//! created, started and watched through CRI: CRI logs, args and env, exit codes and reasons
//! (Completed, Error, traps, OOMKilled from a linear-memory limit), StopContainer of a spinning
//! module, refused Exec, a linux image refused in a wasm pod, a host mount preopened for the
//! module, a WASI 0.2 component, stats, and a running module across `kill -9` of the daemon. A
//! leak check runs at the end of each test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use unicri_e2e::cni::Net;
use unicri_e2e::daemon::{Daemon, DaemonOpts};
use unicri_e2e::fixtures::{
    container_status, import_busybox, pod_config, remove_pod, skip_without_cni_and_busybox,
};
use unicri_e2e::registry::Registry;
use unicri_e2e::wasm::{
    self, GROW_CAPPED, GROW_FAILED, HELLO_LINE, NO_CONFIG_EXIT, NO_CONFIG_LINE, PushedImage,
    TICKER_EXIT, TICKER_LINES, WasmImages, skip_without_registry_and_cni,
};
use unicri_proto::v1;

const HANDLER: &str = "wasm";
/// How often status and logs are polled.
const POLL: Duration = Duration::from_millis(50);
/// How long a container may take to reach a state.
const STATE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a line may take to reach the CRI log once written (or once the module ended).
const LOG_DEADLINE: Duration = Duration::from_secs(15);

/// A daemon on a CNI network that reaches a local registry holding every wasm test image.
struct Env {
    d: Daemon,
    images: WasmImages,
    logs: tempfile::TempDir,
    _net: Net,
    _reg: Registry,
}

impl Env {
    /// `None` (after a loud SKIP line) when the registry or the CNI plugins are missing.
    async fn setup(test: &str) -> Result<Option<Env>> {
        if skip_without_registry_and_cni(test) {
            return Ok(None);
        }
        let reg = Registry::start_plain()
            .await
            .context("start docker-registry")?;
        let images = wasm::push_test_images(&reg)
            .await
            .context("push the wasm test images")?;
        let net = Net::new()?;
        let d = Daemon::start(
            DaemonOpts {
                extra_config: net.config(),
                ..Default::default()
            }
            .local_registry(&reg),
        )
        .await
        .context("start unicri daemon")?;
        Ok(Some(Env {
            d,
            images,
            logs: tempfile::tempdir()?,
            _net: net,
            _reg: reg,
        }))
    }

    /// PullImage; the answered image ref must name the image.
    async fn pull(&self, img: &PushedImage) -> Result<()> {
        let r = self.d.pull(&img.reference, None).await?;
        ensure!(
            img.is_ref(&r),
            "PullImage {} answered {r:?} (config {}, manifest {})",
            img.reference,
            img.config_digest,
            img.manifest_digest
        );
        Ok(())
    }

    /// A pod of the `wasm` handler.
    async fn run_pod(&self, name: &str) -> Result<Pod> {
        let log_dir = self.logs.path().join(name);
        let config = pod_config(name, &log_dir);
        let id = self
            .d
            .runtime()
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: HANDLER.into(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {name} with handler {HANDLER}"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            config,
            log_dir,
        })
    }

    /// Stops the daemon and runs the leak check.
    async fn finish(self) -> Result<()> {
        self.d.finish().await
    }
}

struct Pod {
    id: String,
    config: v1::PodSandboxConfig,
    log_dir: PathBuf,
}

impl Pod {
    /// The CRI log of container `name` (see [`container_config`]).
    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(name).join("0.log")
    }
}

/// A container named `name` running `img`, env `GREETING=hi there`, log `<name>/0.log`.
fn container_config(name: &str, img: &PushedImage) -> v1::ContainerConfig {
    container_config_for(name, &img.reference)
}

/// [`container_config`] for an image given by reference.
fn container_config_for(name: &str, reference: &str) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: reference.into(),
            ..Default::default()
        }),
        envs: vec![v1::KeyValue {
            key: "GREETING".into(),
            value: "hi there".into(),
        }],
        labels: HashMap::from([("c".to_string(), name.to_string())]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

async fn create(d: &Daemon, pod: &Pod, cfg: v1::ContainerConfig) -> Result<String> {
    let name = cfg.metadata.as_ref().map(|m| m.name.clone());
    Ok(d.runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name:?}"))?
        .into_inner()
        .container_id)
}

async fn start(d: &Daemon, id: &str) -> Result<()> {
    d.runtime()
        .start_container(v1::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("StartContainer {id}"))?;
    Ok(())
}

/// CreateContainer then StartContainer.
async fn run(d: &Daemon, pod: &Pod, cfg: v1::ContainerConfig) -> Result<String> {
    let id = create(d, pod, cfg).await?;
    start(d, &id).await?;
    Ok(id)
}

async fn remove_container(d: &Daemon, id: &str) -> Result<()> {
    d.runtime()
        .remove_container(v1::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("RemoveContainer {id}"))?;
    Ok(())
}

fn state_name(state: i32) -> String {
    v1::ContainerState::try_from(state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("state {state}"))
}

/// Polls ContainerStatus every [`POLL`] until the container is in `state` (up to
/// [`STATE_DEADLINE`]).
async fn wait_state(
    d: &Daemon,
    id: &str,
    state: v1::ContainerState,
) -> Result<v1::ContainerStatus> {
    let deadline = Instant::now() + STATE_DEADLINE;
    loop {
        let st = container_status(d, id).await?;
        if st.state == state as i32 {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!(
                "container {id} not {} within {STATE_DEADLINE:?}: {} {st:?}\n--- daemon log (end) ---\n{}",
                state.as_str_name(),
                state_name(st.state),
                log_tail(d)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_exited(d: &Daemon, id: &str) -> Result<v1::ContainerStatus> {
    wait_state(d, id, v1::ContainerState::ContainerExited).await
}

/// The last 6000 bytes of the daemon log (for failure messages).
fn log_tail(d: &Daemon) -> String {
    let log = d.log();
    let mut cut = log.len().saturating_sub(6000);
    while !log.is_char_boundary(cut) {
        cut += 1;
    }
    log[cut..].to_string()
}

/// One CRI log record.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    stream: String,
    tag: String,
    text: String,
}

/// The log file's records; checks each line's RFC 3339 timestamp. A missing file has none.
fn log_records(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut out = vec![];
    for line in text.lines() {
        let mut it = line.splitn(4, ' ');
        let (Some(ts), Some(stream), Some(tag)) = (it.next(), it.next(), it.next()) else {
            bail!("malformed log line {line:?}");
        };
        ensure!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'),
            "timestamp {ts:?} in {line:?}"
        );
        ensure!(
            stream == "stdout" || stream == "stderr",
            "stream {stream:?} in {line:?}"
        );
        ensure!(tag == "F" || tag == "P", "tag {tag:?} in {line:?}");
        out.push(Record {
            stream: stream.into(),
            tag: tag.into(),
            text: it.next().unwrap_or_default().to_string(),
        });
    }
    Ok(out)
}

/// The texts of `stream`'s records.
fn lines(recs: &[Record], stream: &str) -> Vec<String> {
    recs.iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.text.clone())
        .collect()
}

/// Polls the log until `done` holds for its records (up to [`LOG_DEADLINE`]).
async fn wait_log(
    path: &Path,
    what: &str,
    done: impl Fn(&[Record]) -> bool,
) -> Result<Vec<Record>> {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        let recs = log_records(path)?;
        if done(&recs) {
            return Ok(recs);
        }
        if Instant::now() > deadline {
            bail!(
                "{}: no {what} within {LOG_DEADLINE:?}; records: {recs:#?}",
                path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `stdout` has exactly `out` and `stderr` exactly `err`, all full lines.
async fn expect_log(path: &Path, out: &[&str], err: &[&str]) -> Result<()> {
    let recs = wait_log(path, "complete output", |r| {
        lines(r, "stdout").len() >= out.len() && lines(r, "stderr").len() >= err.len()
    })
    .await?;
    ensure!(
        lines(&recs, "stdout") == out && lines(&recs, "stderr") == err,
        "{}: expected stdout {out:?} and stderr {err:?}; records: {recs:#?}",
        path.display()
    );
    ensure!(
        recs.iter().all(|r| r.tag == "F"),
        "{}: every line is written whole, yet: {recs:#?}",
        path.display()
    );
    Ok(())
}

/// The status names `img`: `image.image` is the reference asked for (or the image id) and
/// `image_ref` the image id or a repo digest of it.
fn ensure_image_fields(st: &v1::ContainerStatus, img: &PushedImage) -> Result<()> {
    let image = st.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
    ensure!(
        image == img.reference || img.is_ref(image),
        "ContainerStatus.image {image:?} for {}: {st:?}",
        img.reference
    );
    ensure!(
        img.is_ref(&st.image_ref),
        "ContainerStatus.image_ref {:?} names neither config {} nor manifest {}",
        st.image_ref,
        img.config_digest,
        img.manifest_digest
    );
    Ok(())
}

/// Exit code, reason and timestamps of an exited container.
fn ensure_exit(st: &v1::ContainerStatus, code: i32, reason: &str) -> Result<()> {
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32,
        "not exited: {st:?}"
    );
    ensure!(
        st.exit_code == code && st.reason == reason,
        "expected exit code {code} with reason {reason:?}, got {} {:?} (message {:?}): {st:?}",
        st.exit_code,
        st.reason,
        st.message
    );
    ensure!(
        st.started_at > 0 && st.finished_at >= st.started_at && st.started_at >= st.created_at,
        "timestamps: {st:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

/// Both image forms run `hello`: args from `args` after the image's entrypoint, env from
/// `envs`, stdout and stderr in the CRI log, Completed with 0, image fields named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_from_compat_image_and_artifact() -> Result<()> {
    let Some(env) = Env::setup("hello_runs_from_compat_image_and_artifact").await? else {
        return Ok(());
    };
    let d = &env.d;
    let imgs = env.images.clone();
    env.pull(&imgs.hello_compat).await?;
    env.pull(&imgs.hello_artifact).await?;
    let pod = env.run_pod("hello").await?;
    let status = d
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no pod status")?;
    ensure!(
        status.runtime_handler == HANDLER
            && status.state == v1::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    ensure!(
        status.network.as_ref().is_some_and(|n| !n.ip.is_empty()),
        "a wasm pod gets a pod IP from CNI: {status:?}"
    );

    // compat: argv = Entrypoint ["/app.wasm"] + args
    let mut cfg = container_config("compat", &imgs.hello_compat);
    cfg.args = vec!["one".into(), "two words".into()];
    let compat = create(d, &pod, cfg).await?;
    let st = container_status(d, &compat).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );
    ensure!(
        st.log_path == pod.log("compat").display().to_string(),
        "{st:?}"
    );
    ensure_image_fields(&st, &imgs.hello_compat)?;
    start(d, &compat).await?;
    let st = wait_exited(d, &compat).await?;
    ensure_exit(&st, 0, "Completed")?;
    ensure_image_fields(&st, &imgs.hello_compat)?;
    expect_log(
        &pod.log("compat"),
        &[HELLO_LINE, "one", "two words", "GREETING=hi there"],
        &["bye"],
    )
    .await?;

    // artifact: the raw module, no args
    let artifact = run(d, &pod, container_config("artifact", &imgs.hello_artifact)).await?;
    let st = wait_exited(d, &artifact).await?;
    ensure_exit(&st, 0, "Completed")?;
    ensure_image_fields(&st, &imgs.hello_artifact)?;
    expect_log(
        &pod.log("artifact"),
        &[HELLO_LINE, "GREETING=hi there"],
        &["bye"],
    )
    .await?;

    // `command` replaces the entrypoint: argv[0] is still the module path
    let mut cfg = container_config("command", &imgs.hello_compat);
    cfg.command = vec!["/app.wasm".into(), "from-command".into()];
    cfg.envs.clear();
    let command = run(d, &pod, cfg).await?;
    let st = wait_exited(d, &command).await?;
    ensure_exit(&st, 0, "Completed")?;
    expect_log(&pod.log("command"), &[HELLO_LINE, "from-command"], &["bye"]).await?;

    let listed = d
        .runtime()
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(
        listed.len() == 3
            && listed
                .iter()
                .all(|c| c.state == v1::ContainerState::ContainerExited as i32),
        "{listed:?}"
    );

    for id in [&compat, &artifact, &command] {
        remove_container(d, id).await?;
        let err = d
            .runtime()
            .container_status(v1::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect_err("removed container");
        ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    }
    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// `proc_exit(0)` is Completed, `proc_exit(3)` is Error with 3, a trap is Error with 134 and
/// the trap text in `message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_traps() -> Result<()> {
    let Some(env) = Env::setup("exit_codes_and_traps").await? else {
        return Ok(());
    };
    let d = &env.d;
    let imgs = env.images.clone();
    for img in [&imgs.exit0, &imgs.exit3, &imgs.trap] {
        env.pull(img).await?;
    }
    let pod = env.run_pod("exits").await?;

    let exit0 = run(d, &pod, container_config("exit0", &imgs.exit0)).await?;
    let exit3 = run(d, &pod, container_config("exit3", &imgs.exit3)).await?;
    let trap = run(d, &pod, container_config("trap", &imgs.trap)).await?;

    let st = wait_exited(d, &exit0).await?;
    ensure_exit(&st, 0, "Completed")?;
    expect_log(&pod.log("exit0"), &["exiting with 0"], &[]).await?;

    let st = wait_exited(d, &exit3).await?;
    ensure_exit(&st, 3, "Error")?;
    expect_log(&pod.log("exit3"), &["exiting with 3"], &[]).await?;

    let st = wait_exited(d, &trap).await?;
    ensure_exit(&st, 134, "Error")?;
    ensure!(
        st.message.contains("unreachable"),
        "a trap's message names it: {:?}",
        st.message
    );
    let recs = wait_log(&pod.log("trap"), "the line before the trap", |r| {
        lines(r, "stdout").contains(&"about to trap".to_string())
    })
    .await?;
    ensure!(lines(&recs, "stdout") == ["about to trap"], "{recs:#?}");

    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// `memory_limit_in_bytes` bounds linear memory: `grow` is denied near 4 MiB, traps, and is
/// OOMKilled with 137; without a limit it grows to its cap and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_bounds_linear_memory() -> Result<()> {
    let Some(env) = Env::setup("memory_limit_bounds_linear_memory").await? else {
        return Ok(());
    };
    let d = &env.d;
    let imgs = env.images.clone();
    env.pull(&imgs.grow).await?;
    let pod = env.run_pod("memory").await?;

    let mut cfg = container_config("limited", &imgs.grow);
    cfg.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 4 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let limited = run(d, &pod, cfg).await?;
    let st = wait_exited(d, &limited).await?;
    ensure_exit(&st, 137, "OOMKilled")?;
    let recs = wait_log(&pod.log("limited"), "the denied growth", |r| {
        lines(r, "stdout")
            .iter()
            .any(|l| l.starts_with(GROW_FAILED))
    })
    .await?;
    let failed = lines(&recs, "stdout")
        .into_iter()
        .find(|l| l.starts_with(GROW_FAILED))
        .unwrap_or_default();
    let mib: u32 = failed
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("MiB in {failed:?}"))?;
    ensure!(
        mib <= 4,
        "a 4 MiB limit let linear memory grow by {mib} MiB: {failed:?}"
    );

    let unlimited = run(d, &pod, container_config("unlimited", &imgs.grow)).await?;
    let st = wait_exited(d, &unlimited).await?;
    ensure_exit(&st, 0, "Completed")?;
    wait_log(&pod.log("unlimited"), "the cap line", |r| {
        lines(r, "stdout")
            .iter()
            .any(|l| l.starts_with(GROW_CAPPED))
    })
    .await?;

    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// A module in an endless loop: ExecSync and Exec are refused (FailedPrecondition, "not for
/// WebAssembly"), StopContainer with a 2 s timeout ends it with 143 and it stays exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_spinning_module_and_exec_is_refused() -> Result<()> {
    let Some(env) = Env::setup("stop_ends_a_spinning_module_and_exec_is_refused").await? else {
        return Ok(());
    };
    let d = &env.d;
    let mut rt = d.runtime();
    let imgs = env.images.clone();
    env.pull(&imgs.spin).await?;
    let pod = env.run_pod("spin").await?;
    let spin = run(d, &pod, container_config("spin", &imgs.spin)).await?;
    let st = container_status(d, &spin).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerRunning as i32,
        "after StartContainer: {st:?}"
    );
    wait_log(&pod.log("spin"), "the spinning line", |r| {
        lines(r, "stdout").contains(&"spinning".to_string())
    })
    .await?;

    let err = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: spin.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            timeout: 5,
        })
        .await
        .expect_err("ExecSync in a wasm container");
    ensure!(
        err.code() == tonic::Code::FailedPrecondition
            && err.message().to_lowercase().contains("webassembly"),
        "ExecSync: {err:?}"
    );
    let err = rt
        .exec(v1::ExecRequest {
            container_id: spin.clone(),
            cmd: vec!["/bin/sh".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .expect_err("Exec in a wasm container");
    ensure!(
        err.code() == tonic::Code::FailedPrecondition
            && err.message().to_lowercase().contains("webassembly"),
        "Exec: {err:?}"
    );
    // the refusals did not disturb it
    let st = container_status(d, &spin).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerRunning as i32,
        "after the refused execs: {st:?}"
    );

    rt.stop_container(v1::StopContainerRequest {
        container_id: spin.clone(),
        timeout: 2,
    })
    .await
    .context("StopContainer")?;
    let st = container_status(d, &spin).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32 && st.exit_code == 143,
        "a stopped spinning module: {st:?}"
    );
    ensure!(st.finished_at >= st.started_at, "{st:?}");
    // it does not come back: still exited a while later, and no running container is listed
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = container_status(d, &spin).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32 && st.exit_code == 143,
        "half a second after the stop: {st:?}"
    );
    let running = rt
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                state: Some(v1::ContainerStateValue {
                    state: v1::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(running.is_empty(), "still running: {running:?}");
    // a second stop is fine
    rt.stop_container(v1::StopContainerRequest {
        container_id: spin.clone(),
        timeout: 0,
    })
    .await
    .context("StopContainer again")?;
    let err = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: spin.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .expect_err("ExecSync in an exited wasm container");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");

    remove_container(d, &spin).await?;
    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// ContainerStats of a running module: a working set and CPU stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_running_module() -> Result<()> {
    let Some(env) = Env::setup("stats_of_a_running_module").await? else {
        return Ok(());
    };
    let d = &env.d;
    let mut rt = d.runtime();
    let imgs = env.images.clone();
    env.pull(&imgs.ticker_long).await?;
    let pod = env.run_pod("stats").await?;
    let id = run(d, &pod, container_config("ticker", &imgs.ticker_long)).await?;
    wait_log(&pod.log("ticker"), "two ticks", |r| {
        lines(r, "stdout").contains(&"tick 1".to_string())
    })
    .await?;

    let stats = rt
        .container_stats(v1::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .context("ContainerStats")?
        .into_inner()
        .stats
        .context("no stats")?;
    ensure!(
        stats.attributes.as_ref().is_some_and(|a| a.id == id),
        "{stats:?}"
    );
    let mem = stats.memory.as_ref().context("no memory stats")?;
    ensure!(
        mem.working_set_bytes.map(|v| v.value).unwrap_or(0) > 0,
        "working set of a running module: {mem:?}"
    );
    ensure!(stats.cpu.is_some(), "no cpu stats: {stats:?}");
    let listed = rt
        .list_container_stats(v1::ListContainerStatsRequest {
            filter: Some(v1::ContainerStatsFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats;
    ensure!(listed.len() == 1, "{listed:?}");

    // the instance runs inside the pod's network namespace: one `wasm` thread of this daemon's
    // wasm keeper is in the netns pinned for the pod (and so not in the node's)
    let pin = d.base_dir().join("state/netns").join(&pod.id);
    let pin_ns = format!(
        "net:[{}]",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&pin).context("netns pin")?)
    );
    let nets = wasm_thread_netns(d.base_dir());
    ensure!(
        nets.contains(&pin_ns),
        "no wasm thread in the pod netns {pin_ns}: {nets:?}"
    );

    rt.stop_container(v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .context("StopContainer")?;
    let st = container_status(d, &id).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    remove_container(d, &id).await?;
    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// A linux image (busybox) in a wasm pod is refused with InvalidArgument and leaves nothing;
/// the pod still runs wasm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_image_in_a_wasm_pod_is_refused() -> Result<()> {
    if skip_without_cni_and_busybox("linux_image_in_a_wasm_pod_is_refused") {
        return Ok(());
    }
    let Some(env) = Env::setup("linux_image_in_a_wasm_pod_is_refused").await? else {
        return Ok(());
    };
    let d = &env.d;
    const BUSYBOX: &str = "docker.io/e2e/busybox:w1";
    import_busybox(d, BUSYBOX, &["sh"])?;
    let pod = env.run_pod("mixed").await?;
    let mut cfg = container_config_for("linux", BUSYBOX);
    cfg.command = vec!["sh".into(), "-c".into(), "echo hi".into()];
    let err = d
        .runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .expect_err("a linux image in a wasm pod");
    ensure!(
        err.code() == tonic::Code::InvalidArgument
            && err.message().to_lowercase().contains("webassembly"),
        "{err:?}"
    );
    let listed = d
        .runtime()
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    ensure!(listed.is_empty(), "a refused create left {listed:?}");
    let dirs = d.root.join("containers");
    if dirs.exists() {
        ensure!(
            std::fs::read_dir(&dirs)?.count() == 0,
            "a refused create left a container dir"
        );
    }
    ensure!(
        unicri_e2e::leaks::mounts_under(&d.root).is_empty(),
        "a refused create left mounts: {:?}",
        unicri_e2e::leaks::mounts_under(&d.root)
    );

    // the pod is fine: a wasm container runs in it
    let imgs = env.images.clone();
    env.pull(&imgs.hello_compat).await?;
    let id = run(d, &pod, container_config("wasm", &imgs.hello_compat)).await?;
    let st = wait_exited(d, &id).await?;
    ensure_exit(&st, 0, "Completed")?;
    expect_log(
        &pod.log("wasm"),
        &[HELLO_LINE, "GREETING=hi there"],
        &["bye"],
    )
    .await?;

    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// A read-only host mount at `/config` is a preopened directory of the module; without it the
/// module finds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mount_is_preopened_for_the_module() -> Result<()> {
    let Some(env) = Env::setup("host_mount_is_preopened_for_the_module").await? else {
        return Ok(());
    };
    let d = &env.d;
    let imgs = env.images.clone();
    env.pull(&imgs.read_config).await?;
    let pod = env.run_pod("mounts").await?;
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("greeting"), "hello from a config map\n")?;

    let mut cfg = container_config("with", &imgs.read_config);
    cfg.mounts = vec![v1::Mount {
        container_path: "/config".into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let with = run(d, &pod, cfg).await?;
    let st = wait_exited(d, &with).await?;
    ensure_exit(&st, 0, "Completed")?;
    expect_log(&pod.log("with"), &["hello from a config map"], &[]).await?;

    let without = run(d, &pod, container_config("without", &imgs.read_config)).await?;
    let st = wait_exited(d, &without).await?;
    ensure_exit(&st, NO_CONFIG_EXIT, "Error")?;
    expect_log(&pod.log("without"), &[], &[NO_CONFIG_LINE]).await?;
    // the host file is untouched
    ensure!(std::fs::read_to_string(host.path().join("greeting"))? == "hello from a config map\n");

    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// A WASI 0.2 component (command world) runs from both image forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_runs_from_artifact_and_compat_image() -> Result<()> {
    let Some(env) = Env::setup("component_runs_from_artifact_and_compat_image").await? else {
        return Ok(());
    };
    let d = &env.d;
    let imgs = env.images.clone();
    env.pull(&imgs.component_artifact).await?;
    env.pull(&imgs.component_compat).await?;
    let pod = env.run_pod("component").await?;

    for (name, img) in [
        ("artifact", &imgs.component_artifact),
        ("compat", &imgs.component_compat),
    ] {
        let id = run(d, &pod, container_config(name, img)).await?;
        let st = wait_exited(d, &id).await?;
        ensure_exit(&st, 0, "Completed").with_context(|| format!("component, {name} form"))?;
        ensure_image_fields(&st, img)?;
        expect_log(
            &pod.log(name),
            &[wasm::COMPONENT_LINE, "GREETING=hi there"],
            &["bye"],
        )
        .await
        .with_context(|| format!("component, {name} form"))?;
        remove_container(d, &id).await?;
    }

    remove_pod(d, &pod.id).await?;
    env.finish().await
}

/// `kill -9` of the daemon while a module runs: after the restart the container is still
/// running with the same times, then exits with its own code, and its log has every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_module_survives_kill_9_of_the_daemon() -> Result<()> {
    let Some(mut env) = Env::setup("running_module_survives_kill_9_of_the_daemon").await? else {
        return Ok(());
    };
    let imgs = env.images.clone();
    env.pull(&imgs.ticker).await?;
    let pod = env.run_pod("restart").await?;
    let id = run(&env.d, &pod, container_config("ticker", &imgs.ticker)).await?;
    let before = container_status(&env.d, &id).await?;
    ensure!(
        before.state == v1::ContainerState::ContainerRunning as i32,
        "{before:?}"
    );
    // about a second in
    wait_log(&pod.log("ticker"), "tick 3", |r| {
        lines(r, "stdout").contains(&"tick 3".to_string())
    })
    .await?;

    env.d.kill9();
    env.d.restart().await?;
    let after = container_status(&env.d, &id).await?;
    ensure!(
        after.state == v1::ContainerState::ContainerRunning as i32,
        "after the restart: {after:?}"
    );
    ensure!(
        after.created_at == before.created_at && after.started_at == before.started_at,
        "times changed across the restart: {before:?} → {after:?}"
    );

    let st = wait_exited(&env.d, &id).await?;
    ensure_exit(&st, TICKER_EXIT, "Error")?;
    let want: Vec<String> = (0..TICKER_LINES).map(|i| format!("tick {i}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_log(&pod.log("ticker"), &want, &[]).await?;

    remove_pod(&env.d, &pod.id).await?;
    env.finish().await
}

/// The network namespaces (`net:[inode]`) of the `wasm` instance threads of the wasm keeper
/// whose state dir is under `base`.
fn wasm_thread_netns(base: &std::path::Path) -> Vec<String> {
    let base = base.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("wasm-keeper") || !cmd.contains(&base) {
            continue;
        }
        for t in std::fs::read_dir(p.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == "wasm"
                && let Ok(link) = std::fs::read_link(t.path().join("ns/net"))
            {
                out.push(link.to_string_lossy().into_owned());
            }
        }
    }
    out
}
