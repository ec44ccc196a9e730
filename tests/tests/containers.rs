//! Containers end to end: the real daemon and keeper, a busybox image built from Debian's
//! busybox and imported, Debian's CNI plugins; lifecycle, CRI logs, ExecSync, stop signals, and
//! `kill -9` of the daemon while containers run. A leak check runs at the end of each test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use unicri_e2e::cni::Net;
use unicri_e2e::daemon::Daemon;
use unicri_e2e::fixtures::{
    container_status, daemon_with_busybox, pod_config, remove_pod, skip_without_cni_and_busybox,
};
use unicri_proto::v1;

const IMAGE: &str = "docker.io/e2e/busybox:c1";

fn container_config(name: &str, cmd: &[&str]) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        envs: vec![v1::KeyValue {
            key: "GREETING".into(),
            value: "hi there".into(),
        }],
        labels: HashMap::from([("c".to_string(), name.to_string())]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

struct Pod {
    id: String,
    config: v1::PodSandboxConfig,
    log_dir: PathBuf,
}

async fn run_pod(d: &Daemon, name: &str, log_root: &Path) -> Result<Pod> {
    let log_dir = log_root.join(name);
    let config = pod_config(name, &log_dir);
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok(Pod {
        id,
        config,
        log_dir,
    })
}

async fn create(d: &Daemon, pod: &Pod, cfg: v1::ContainerConfig) -> Result<String> {
    Ok(d.runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.config.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(d: &Daemon, id: &str) -> Result<()> {
    d.runtime()
        .start_container(v1::StartContainerRequest {
            container_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn exec(d: &Daemon, id: &str, cmd: &[&str], timeout: i64) -> Result<v1::ExecSyncResponse> {
    Ok(d.runtime()
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await?
        .into_inner())
}

/// Polls until the container has exited (or 20 s pass).
async fn wait_exited(d: &Daemon, id: &str) -> Result<v1::ContainerStatus> {
    for _ in 0..200 {
        let st = container_status(d, id).await?;
        if st.state == v1::ContainerState::ContainerExited as i32 {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("container {id} did not exit within 20 s")
}

/// The log file's records as (stream, tag, text); checks the timestamp of each.
fn log_records(path: &Path) -> Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
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
        out.push((
            stream.to_string(),
            tag.to_string(),
            it.next().unwrap_or_default().to_string(),
        ));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_logs_exec_and_stop() -> Result<()> {
    if skip_without_cni_and_busybox("container_lifecycle_logs_exec_and_stop") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "life", logs.path()).await?;
    let mut rt = d.runtime();

    // a container that logs to both streams and then waits
    let id = create(
        &d,
        &pod,
        container_config(
            "app",
            &[
                "sh",
                "-c",
                "echo \"$GREETING $FROM_IMAGE\"; echo oops >&2; printf partial; sleep 1000",
            ],
        ),
    )
    .await?;
    ensure!(id.len() == 64, "id {id}");
    let st = container_status(&d, &id).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerCreated as i32,
        "{st:?}"
    );
    ensure!(st.log_path == pod.log_dir.join("app/0.log").display().to_string());
    ensure!(st.image.as_ref().map(|i| i.image.as_str()) == Some(IMAGE));

    // the same name and attempt again is refused, and leaves nothing
    let err = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(container_config("app", &["true"])),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .expect_err("duplicate name");
    ensure!(err.code() == tonic::Code::AlreadyExists, "{err:?}");
    // bad input gets clear codes
    let err = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: "f".repeat(64),
            config: Some(container_config("x", &["true"])),
            sandbox_config: None,
        })
        .await
        .expect_err("unknown pod");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let mut no_image = container_config("y", &["true"]);
    no_image.image = Some(v1::ImageSpec {
        image: "docker.io/e2e/absent:v1".into(),
        ..Default::default()
    });
    let err = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(no_image),
            sandbox_config: None,
        })
        .await
        .expect_err("image not present");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    ensure!(
        std::fs::read_dir(d.root.join("containers"))?.count() == 1,
        "a refused create left a container dir"
    );

    start(&d, &id).await?;
    let st = container_status(&d, &id).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    ensure!(st.started_at >= st.created_at && st.started_at > 0);
    let err = rt
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("start twice");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");

    // ExecSync: output, exit code, the container's env and hostname
    let r = exec(
        &d,
        &id,
        &["sh", "-c", "echo $GREETING; hostname; exit 3"],
        10,
    )
    .await?;
    ensure!(r.exit_code == 3, "{r:?}");
    ensure!(
        String::from_utf8_lossy(&r.stdout) == "hi there\nlife\n",
        "exec stdout {:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    let r = exec(&d, &id, &["sh", "-c", "echo bad >&2"], 0).await?;
    ensure!(r.exit_code == 0 && r.stderr == b"bad\n", "{r:?}");
    // timeout: the command is killed and the call fails
    let err = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "4321".into()],
            timeout: 1,
        })
        .await
        .expect_err("exec timeout");
    ensure!(err.code() == tonic::Code::DeadlineExceeded, "{err:?}");
    let r = exec(
        &d,
        &id,
        &[
            "sh",
            "-c",
            "ps | grep -v grep | grep -c 'sleep 4321' || true",
        ],
        10,
    )
    .await?;
    ensure!(
        String::from_utf8_lossy(&r.stdout).trim() == "0",
        "timed-out exec still runs: {r:?}"
    );

    // stats from the container's cgroup and writable layer
    let stats = rt
        .container_stats(v1::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    let mem = stats.memory.context("no memory stats")?;
    let cpu = stats.cpu.context("no cpu stats")?;
    ensure!(mem.timestamp > 0 && cpu.timestamp > 0, "{stats:?}");
    ensure!(
        mem.working_set_bytes.map(|v| v.value).unwrap_or(0) > 0,
        "working set of a running shell: {mem:?}"
    );
    ensure!(
        cpu.usage_core_nano_seconds.map(|v| v.value).unwrap_or(0) > 0,
        "cpu time of a running shell: {cpu:?}"
    );
    let listed = rt
        .list_container_stats(v1::ListContainerStatsRequest {
            filter: Some(v1::ContainerStatsFilter {
                label_selector: HashMap::from([("c".to_string(), "app".to_string())]),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(listed.len() == 1, "{listed:?}");
    let none = rt
        .list_container_stats(v1::ListContainerStatsRequest {
            filter: Some(v1::ContainerStatsFilter {
                label_selector: HashMap::from([("c".to_string(), "other".to_string())]),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(none.is_empty(), "{none:?}");
    let pod_stats = rt
        .pod_sandbox_stats(v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .context("no pod stats")?;
    ensure!(pod_stats.containers.len() == 1, "{pod_stats:?}");

    // logs in kubelet's format
    let log = pod.log_dir.join("app/0.log");
    let recs = log_records(&log)?;
    ensure!(
        recs.contains(&("stdout".into(), "F".into(), "hi there yes".into())),
        "{recs:?}"
    );
    ensure!(
        recs.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{recs:?}"
    );

    // rotation: rename, reopen, new lines go to the new file
    std::fs::rename(&log, pod.log_dir.join("app/0.log.1"))?;
    rt.reopen_container_log(v1::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await?;
    ensure!(log.exists(), "reopen did not create a new log file");

    // list with filters
    let all = rt
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    ensure!(all.len() == 1 && all[0].id == id && all[0].pod_sandbox_id == pod.id);
    let none = rt
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                state: Some(v1::ContainerStateValue {
                    state: v1::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(none.is_empty(), "{none:?}");

    // stop: SIGTERM is ignored by sh as PID 1 with a child... SIGKILL after the timeout
    rt.stop_container(v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await?;
    let st = container_status(&d, &id).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    ensure!(st.exit_code == 137 && st.reason == "Error", "{st:?}");
    ensure!(st.finished_at >= st.started_at);
    // stop again, and stop of an unknown id, are fine
    rt.stop_container(v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await?;
    rt.stop_container(v1::StopContainerRequest {
        container_id: "e".repeat(64),
        timeout: 0,
    })
    .await?;
    let err = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .expect_err("exec in exited");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");

    // stopped right after it started: its TERM handler still gets the stop signal
    let trapper = create(
        &d,
        &pod,
        container_config(
            "trapper",
            &["sh", "-c", "trap 'exit 5' TERM; while :; do sleep 1; done"],
        ),
    )
    .await?;
    start(&d, &trapper).await?;
    rt.stop_container(v1::StopContainerRequest {
        container_id: trapper.clone(),
        timeout: 10,
    })
    .await?;
    let st = container_status(&d, &trapper).await?;
    ensure!(st.exit_code == 5, "stop signal right after start: {st:?}");

    // a container that ends by itself: Completed / Error with its code
    let done = create(&d, &pod, container_config("done", &["sh", "-c", "exit 0"])).await?;
    start(&d, &done).await?;
    let st = wait_exited(&d, &done).await?;
    ensure!(st.exit_code == 0 && st.reason == "Completed", "{st:?}");
    let failed = create(
        &d,
        &pod,
        container_config("failed", &["sh", "-c", "exit 7"]),
    )
    .await?;
    start(&d, &failed).await?;
    let st = wait_exited(&d, &failed).await?;
    ensure!(st.exit_code == 7 && st.reason == "Error", "{st:?}");

    // remove: twice, and unknown ids; then NotFound
    for cid in [&id, &id, &done, &trapper] {
        rt.remove_container(v1::RemoveContainerRequest {
            container_id: cid.to_string(),
        })
        .await?;
    }
    let err = rt
        .container_status(v1::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    // the pod's removal takes its remaining container with it
    remove_pod(&d, &pod.id).await?;
    ensure!(
        std::fs::read_dir(d.root.join("containers"))?.count() == 0,
        "container dirs left"
    );
    d.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_kill_9_of_the_daemon() -> Result<()> {
    if skip_without_cni_and_busybox("containers_survive_kill_9_of_the_daemon") {
        return Ok(());
    }
    let net = Net::new()?;
    let mut d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "restart", logs.path()).await?;

    let ticker = create(
        &d,
        &pod,
        container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
        ),
    )
    .await?;
    let ender = create(
        &d,
        &pod,
        container_config("ender", &["sh", "-c", "sleep 2; exit 42"]),
    )
    .await?;
    start(&d, &ticker).await?;
    start(&d, &ender).await?;
    let before = container_status(&d, &ticker).await?;
    let log = pod.log_dir.join("ticker/0.log");

    d.kill9();
    let lines_at_kill = log_records(&log)?.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines_while_down = log_records(&log)?.len();
    ensure!(
        lines_while_down > lines_at_kill + 5,
        "log lines did not keep arriving while the daemon was down ({lines_at_kill} → {lines_while_down})"
    );
    d.restart().await?;

    let after = container_status(&d, &ticker).await?;
    ensure!(
        after.state == v1::ContainerState::ContainerRunning as i32,
        "{after:?}"
    );
    ensure!(
        after.created_at == before.created_at && after.started_at == before.started_at,
        "times changed across the restart"
    );
    let st = container_status(&d, &ender).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32 && st.exit_code == 42,
        "exit while the daemon was down: {st:?}"
    );
    let r = exec(&d, &ticker, &["echo", "still here"], 10).await?;
    ensure!(r.stdout == b"still here\n", "{r:?}");
    let listed = d
        .runtime()
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    ensure!(listed.len() == 2, "{listed:?}");

    remove_pod(&d, &pod.id).await?;
    d.finish().await
}

/// `kill -9` (an abort at a crash point) in the middle of RunPodSandbox and of CreateContainer:
/// after the restart the half-made pod and container are gone — no mounts, netns, veth, keeper
/// record or row — and kubelet's retry of the same pod and container succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_run_pod_and_create_container_rolls_back() -> Result<()> {
    if skip_without_cni_and_busybox("crash_mid_run_pod_and_create_container_rolls_back") {
        return Ok(());
    }
    let net = Net::new()?;
    let mut d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let mounts_before = unicri_e2e::leaks::mounts_under(&d.state).len();

    // RunPodSandbox dies after CNI ADD, before its record
    d.set_env(vec![(
        "UNICRI_CRASH_AT".into(),
        "run_pod_sandbox:before_record".into(),
    )]);
    d.kill9();
    d.restart().await?;
    let cfg = pod_config("crashpod", &logs.path().join("crashpod"));
    let err = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("the daemon aborts mid-way");
    ensure!(err.code() != tonic::Code::Ok);
    d.wait_exit()?;
    ensure!(
        net.veths_on_bridge() == 1,
        "CNI ADD had happened before the crash"
    );
    d.set_env(vec![]);
    d.restart().await?;
    ensure!(net.veths_on_bridge() == 0, "recovery left the veth");
    ensure!(
        std::fs::read_dir(d.state.join("pods"))?.count() == 0,
        "recovery left the pod dir"
    );
    ensure!(
        std::fs::read_dir(d.state.join("netns"))?.count() == 0,
        "recovery left the netns pin"
    );
    let left = unicri_e2e::leaks::mounts_under(&d.state);
    ensure!(
        left.len() <= mounts_before + 2,
        "recovery left mounts: {left:?}"
    );
    // kubelet's retry of the very same pod works
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let pod = Pod {
        id,
        config: cfg,
        log_dir: logs.path().join("crashpod"),
    };

    // CreateContainer dies after the keeper made the container, before its record
    d.set_env(vec![(
        "UNICRI_CRASH_AT".into(),
        "create_container:before_record".into(),
    )]);
    d.kill9();
    d.restart().await?;
    let err = d
        .runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(container_config("app", &["sleep", "1000"])),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .expect_err("the daemon aborts mid-way");
    ensure!(err.code() != tonic::Code::Ok);
    d.wait_exit()?;
    ensure!(
        std::fs::read_dir(d.root.join("containers"))?.count() == 1,
        "the container dir existed at the crash"
    );
    d.set_env(vec![]);
    d.restart().await?;
    ensure!(
        std::fs::read_dir(d.root.join("containers"))?.count() == 0,
        "recovery left the container dir"
    );
    ensure!(
        unicri_e2e::leaks::mounts_under(&d.root).is_empty(),
        "recovery left the rootfs mounted"
    );
    // the retry works and the container runs
    let cid = create(&d, &pod, container_config("app", &["sleep", "1000"])).await?;
    start(&d, &cid).await?;
    let st = container_status(&d, &cid).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    let listed = d
        .runtime()
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    ensure!(listed.len() == 1, "{listed:?}");
    remove_pod(&d, &pod.id).await?;
    d.finish().await
}

fn security(f: impl FnOnce(&mut v1::LinuxContainerSecurityContext)) -> v1::LinuxContainerConfig {
    let mut sc = v1::LinuxContainerSecurityContext::default();
    f(&mut sc);
    v1::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    }
}

async fn run_and_exec(
    d: &Daemon,
    pod: &Pod,
    name: &str,
    linux: v1::LinuxContainerConfig,
    cmd: &[&str],
) -> Result<(String, v1::ExecSyncResponse)> {
    let mut cfg = container_config(name, &["sleep", "1000"]);
    cfg.linux = Some(linux);
    let id = create(d, pod, cfg).await?;
    start(d, &id).await?;
    let r = exec(d, &id, cmd, 10).await?;
    Ok((id, r))
}

fn out(r: &v1::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// Users and groups, read-only rootfs, capabilities, seccomp, DNS, the memory limit (OOMKilled
/// with 137), pod-to-pod traffic over the bridge and a hostPort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_limits_dns_and_networking() -> Result<()> {
    if skip_without_cni_and_busybox("security_limits_dns_and_networking") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let mut cfg = pod_config("sec", &logs.path().join("sec"));
    cfg.dns_config = Some(v1::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    cfg.port_mappings = vec![v1::PortMapping {
        protocol: v1::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18781,
        host_ip: String::new(),
    }];
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let pod = Pod {
        id,
        config: cfg,
        log_dir: logs.path().join("sec"),
    };

    // numeric user, group and supplemental groups; a user name from the image's /etc/passwd
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "uid",
        security(|s| {
            s.run_as_user = Some(v1::Int64Value { value: 1000 });
            s.run_as_group = Some(v1::Int64Value { value: 1001 });
            s.supplemental_groups = vec![2000];
        }),
        &["id"],
    )
    .await?;
    let id_out = out(&r);
    ensure!(
        id_out.starts_with("uid=1000 gid=1001") && id_out.contains("2000"),
        "id: {id_out}"
    );
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "username",
        security(|s| s.run_as_username = "nobody".into()),
        &["id", "-u"],
    )
    .await?;
    ensure!(out(&r) == "65534", "id -u for nobody: {r:?}");

    // read-only rootfs
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "ro",
        security(|s| s.readonly_rootfs = true),
        &["touch", "/newfile"],
    )
    .await?;
    ensure!(r.exit_code != 0, "touch on a read-only rootfs: {r:?}");

    // capabilities: CHOWN is in the default set; dropped, chown fails
    let (_, r) = run_and_exec(&d, &pod, "caps", security(|_| {}), &["chown", "1", "/tmp"]).await?;
    ensure!(r.exit_code == 0, "chown with CAP_CHOWN: {r:?}");
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "nocaps",
        security(|s| {
            s.capabilities = Some(v1::Capability {
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            })
        }),
        &["chown", "1", "/tmp"],
    )
    .await?;
    ensure!(r.exit_code != 0, "chown without CAP_CHOWN: {r:?}");

    // seccomp: a localhost profile that refuses mkdir
    let prof_dir = tempfile::tempdir()?;
    let profile = prof_dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )?;
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "seccomp",
        security(|s| {
            s.seccomp = Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::Localhost as i32,
                localhost_ref: profile.display().to_string(),
            })
        }),
        &["mkdir", "/tmp/d"],
    )
    .await?;
    ensure!(
        r.exit_code != 0,
        "mkdir under a profile that blocks it: {r:?}"
    );
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "seccomp-default",
        security(|s| {
            s.seccomp = Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            })
        }),
        &[
            "sh",
            "-c",
            "mkdir /tmp/d && grep Seccomp: /proc/self/status",
        ],
    )
    .await?;
    ensure!(
        r.exit_code == 0 && out(&r).ends_with('2'),
        "runtime default profile: {r:?}"
    );

    // DNS from the pod config
    let (_, r) = run_and_exec(
        &d,
        &pod,
        "dns",
        security(|_| {}),
        &["cat", "/etc/resolv.conf"],
    )
    .await?;
    let resolv = out(&r);
    ensure!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search e2e.svc.cluster.local")
            && resolv.contains("ndots:5"),
        "resolv.conf: {resolv}"
    );

    // the memory limit: OOM-killed, reported as OOMKilled with 137
    let mut hog = container_config("hog", &["tail", "/dev/zero"]);
    hog.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = create(&d, &pod, hog).await?;
    start(&d, &hog).await?;
    let st = wait_exited(&d, &hog).await?;
    ensure!(
        st.exit_code == 137 && st.reason == "OOMKilled",
        "memory hog: {st:?}"
    );

    // pod-to-pod over the bridge, and the hostPort from the node
    let (web, _) = run_and_exec(
        &d,
        &pod,
        "web",
        security(|_| {}),
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html",
        ],
    )
    .await?;
    let r = exec(&d, &web, &["httpd", "-p", "80", "-h", "/tmp/www"], 10).await?;
    ensure!(r.exit_code == 0, "httpd: {r:?}");
    let ip = d
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    let client = run_pod(&d, "client", logs.path()).await?;
    let (_, r) = run_and_exec(
        &d,
        &client,
        "wget",
        security(|_| {}),
        &["wget", "-q", "-O", "-", &format!("http://{ip}/")],
    )
    .await?;
    ensure!(out(&r) == "hello-from-web", "pod to pod: {r:?}");
    // the hostPort, reached at the node's address on the bridge (the gateway): traffic from the
    // node itself is intercepted by this machine's egress proxy, so it comes from a pod
    let gateway = format!("{}.1", net.subnet);
    let (_, r) = run_and_exec(
        &d,
        &client,
        "hostport",
        security(|_| {}),
        &["wget", "-q", "-O", "-", &format!("http://{gateway}:18781/")],
    )
    .await?;
    ensure!(
        out(&r) == "hello-from-web",
        "hostPort 18781 via {gateway}: {r:?}"
    );

    remove_pod(&d, &client.id).await?;
    remove_pod(&d, &pod.id).await?;
    d.finish().await
}

/// `shareProcessNamespace`: the pod gets one PID namespace whose PID 1 is the pod's minimal
/// init; its containers see each other's processes; a second pod does not. Stopping the pod ends
/// the init (the leak check at `finish` finds any process left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_has_a_pod_init() -> Result<()> {
    if skip_without_cni_and_busybox("shared_pid_namespace_has_a_pod_init") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let mut cfg = pod_config("shared", &logs.path().join("shared"));
    cfg.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                pid: v1::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let pod = Pod {
        id,
        config: cfg,
        log_dir: logs.path().join("shared"),
    };
    let pod_pid = |mut c: v1::ContainerConfig| {
        c.linux = Some(v1::LinuxContainerConfig {
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    pid: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let a = create(&d, &pod, pod_pid(container_config("a", &["sleep", "4242"]))).await?;
    let b = create(&d, &pod, pod_pid(container_config("b", &["sleep", "1000"]))).await?;
    start(&d, &a).await?;
    start(&d, &b).await?;
    let r = exec(&d, &b, &["ps", "-o", "pid,args"], 10).await?;
    let ps = String::from_utf8_lossy(&r.stdout).to_string();
    ensure!(
        ps.contains("sleep 4242"),
        "b does not see a's process: {ps}"
    );
    let first = ps
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_default()
        .to_string();
    ensure!(
        !first.contains("sleep"),
        "PID 1 must be the pod's init, not a container: {ps}"
    );

    // a pod with its own PID namespaces per container does not see them
    let other = run_pod(&d, "other", logs.path()).await?;
    let c = create(&d, &other, container_config("c", &["sleep", "1000"])).await?;
    start(&d, &c).await?;
    let r = exec(&d, &c, &["ps", "-o", "pid,args"], 10).await?;
    let ps = String::from_utf8_lossy(&r.stdout).to_string();
    ensure!(
        !ps.contains("4242"),
        "another pod sees the shared namespace: {ps}"
    );

    remove_pod(&d, &other.id).await?;
    remove_pod(&d, &pod.id).await?;
    d.finish().await
}
