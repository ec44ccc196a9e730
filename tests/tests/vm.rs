//! The `vm` runtime handler end to end, on the engine the daemon picks (`uml`, a user-mode-Linux
//! kernel process per pod, here; `kvm` on `unicri-vmm` on a host with hardware KVM and a built
//! guest kernel — the same tests then run on it): the real
//! daemon, its guest agent, Debian's CNI plugins, a busybox image built by the tests.
//! Pod lifecycle with the pod IP, logs relayed from the guest, ExecSync in the guest kernel,
//! host ↔ vm pod and linux pod ↔ vm pod traffic through the tap + tc bridge, a hostPort, two containers
//! sharing the network and a volume (a host change synced in), exec with a terminal, port-forward to a server bound to
//! the guest's loopback, ContainerStats from the guest, UpdateContainerResources in the guest cgroup, an OOM kill inside the guest, and `kill -9` of the daemon while a
//! container logs. A leak check (engine processes, mounts, cgroups) runs after each test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unicri_e2e::cni::Net;
use unicri_e2e::daemon::Daemon;
use unicri_e2e::fixtures::{
    container_status, daemon_with_busybox, pod_config, remove_pod, skip_without_cni_and_busybox,
};
use unicri_proto::v1;
use unicri_streaming::Options;
use unicri_streaming::client::{self, Transport};

const IMAGE: &str = "docker.io/e2e/busybox:vm1";
const HANDLER: &str = "vm";

/// Returns `true` (after a loud SKIP line) when this machine cannot run vm pods: no UML kernel
/// built (`scripts/build-guest-kernel uml`) or no guest agent binary.
fn skip_without_vm(test: &str) -> bool {
    if skip_without_cni_and_busybox(test) {
        return true;
    }
    let kernel = std::fs::read_dir("/var/cache/unicri/uml-kernel")
        .map(|rd| rd.flatten().any(|e| e.path().join("linux").is_file()))
        .unwrap_or(false);
    let agent = unicri_e2e::daemon::unicri_bin().with_file_name("unicri-vm-agent");
    if kernel && agent.is_file() {
        return false;
    }
    eprintln!(
        "\n******** SKIP {test}: needs the user-mode-Linux kernel (scripts/build-guest-kernel uml: {}) and the guest agent ({}: {}) ********\n",
        if kernel { "built" } else { "missing" },
        agent.display(),
        if agent.is_file() { "built" } else { "missing" },
    );
    true
}

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
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

struct Pod {
    id: String,
    config: v1::PodSandboxConfig,
    log_dir: PathBuf,
}

async fn run_pod(d: &Daemon, name: &str, logs: &Path, handler: &str) -> Result<Pod> {
    run_pod_with(d, name, logs, handler, |_| {}).await
}

async fn run_pod_with(
    d: &Daemon,
    name: &str,
    logs: &Path,
    handler: &str,
    f: impl FnOnce(&mut v1::PodSandboxConfig),
) -> Result<Pod> {
    let log_dir = logs.join(name);
    let mut config = pod_config(name, &log_dir);
    f(&mut config);
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name} ({handler:?})"))?
        .into_inner()
        .pod_sandbox_id;
    Ok(Pod {
        id,
        config,
        log_dir,
    })
}

async fn create(d: &Daemon, pod: &Pod, cfg: v1::ContainerConfig) -> Result<String> {
    let name = cfg.metadata.clone().unwrap_or_default().name;
    Ok(d.runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id)
}

async fn run(d: &Daemon, pod: &Pod, cfg: v1::ContainerConfig) -> Result<String> {
    let id = create(d, pod, cfg).await?;
    d.runtime()
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok(id)
}

async fn exec(d: &Daemon, id: &str, cmd: &[&str]) -> Result<v1::ExecSyncResponse> {
    Ok(d.runtime()
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .with_context(|| format!("ExecSync {cmd:?}"))?
        .into_inner())
}

fn out(r: &v1::ExecSyncResponse) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    )
}

/// Polls the container until it has exited (60 s at most).
async fn wait_exited(d: &Daemon, id: &str) -> Result<v1::ContainerStatus> {
    for _ in 0..600 {
        let st = container_status(d, id).await?;
        if st.state == v1::ContainerState::ContainerExited as i32 {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("container {id} did not exit within 60 s")
}

/// Polls the host log file until it contains `needle` (30 s at most); returns its text.
async fn wait_log(path: &Path, needle: &str) -> Result<String> {
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{} never contained {needle:?}; it holds {text:?}",
        path.display()
    )
}

async fn pod_ip(d: &Daemon, id: &str) -> Result<String> {
    let st = d
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no pod status")?;
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    ensure!(!ip.is_empty(), "pod {id} has no IP: {st:?}");
    Ok(ip)
}

/// One HTTP/1.0 GET over `s`; the whole answer.
async fn http_get(mut s: tokio::net::TcpStream, path: &str) -> Result<String> {
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut page))
        .await
        .context("no answer within 10 s")??;
    Ok(page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_lifecycle_network_volumes_exec_port_forward_and_oom() -> Result<()> {
    if skip_without_vm("vm_pod_lifecycle_network_volumes_exec_port_forward_and_oom") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod_with(&d, "vmpod", logs.path(), HANDLER, |c| {
        c.port_mappings = vec![v1::PortMapping {
            protocol: v1::Protocol::Tcp as i32,
            container_port: 8081,
            host_port: 18791,
            host_ip: String::new(),
        }];
    })
    .await?;
    let ip = pod_ip(&d, &pod.id).await?;

    // a volume: a host directory both containers mount (copied into the guest, shared there)
    let vol = tempfile::tempdir()?;
    std::fs::write(vol.path().join("seed"), "seed-from-host\n")?;
    let volume = v1::Mount {
        container_path: "/vol".into(),
        host_path: vol.path().display().to_string(),
        ..Default::default()
    };
    let mut web = container_config(
        "web",
        &[
            "sh",
            "-c",
            "echo started in $(hostname); mkdir -p /www; echo hello-from-guest > /www/index.html; \
             echo from-web > /vol/from-web; httpd -p 127.0.0.1:8080 -h /www; \
             exec httpd -f -p 8081 -h /www",
        ],
    );
    web.mounts.push(volume.clone());
    let web = run(&d, &pod, web).await?;
    let text = wait_log(&pod.log_dir.join("web.log"), "started in vmpod").await?;
    ensure!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains(" stdout F ")),
        "CRI log format: {text:?}"
    );

    // the container runs on the guest's kernel, not the host's
    let r = exec(&d, &web, &["cat", "/proc/cpuinfo"]).await?;
    ensure!(
        r.exit_code == 0 && out(&r).contains("UML"),
        "not a user-mode-Linux guest: {}",
        out(&r)
    );
    let r = exec(&d, &web, &["cat", "/vol/seed"]).await?;
    ensure!(out(&r) == "seed-from-host\n", "volume copy: {}", out(&r));
    // a change on the host reaches the guest's copy (the daemon re-copies changed mounts)
    std::fs::write(vol.path().join("seed"), "seed-changed\n")?;
    let mut synced = String::new();
    for _ in 0..100 {
        synced = out(&exec(&d, &web, &["cat", "/vol/seed"]).await?);
        if synced == "seed-changed\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        synced == "seed-changed\n",
        "host change not synced into the guest: {synced:?}"
    );

    // host → vm pod over the pod network (CNI bridge → veth → tc → tap → guest)
    let mut page = String::new();
    for _ in 0..50 {
        if let Ok(s) = tokio::net::TcpStream::connect((ip.as_str(), 8081)).await {
            page = http_get(s, "/index.html").await.unwrap_or_default();
            if page.contains("hello-from-guest") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        page.contains("hello-from-guest"),
        "host → {ip}:8081 never served the page: {page:?}"
    );

    // a second container: same network namespace and volume
    let mut reader = container_config("reader", &["sleep", "3600"]);
    reader.mounts.push(volume);
    let reader = run(&d, &pod, reader).await?;
    let r = exec(&d, &reader, &["cat", "/vol/from-web"]).await?;
    ensure!(out(&r) == "from-web\n", "shared volume: {}", out(&r));
    let r = exec(
        &d,
        &reader,
        &["wget", "-qO-", "http://127.0.0.1:8080/index.html"],
    )
    .await?;
    ensure!(
        out(&r).contains("hello-from-guest"),
        "shared loopback: {}",
        out(&r)
    );
    let r = exec(&d, &reader, &["hostname"]).await?;
    ensure!(out(&r) == "vmpod\n", "hostname: {}", out(&r));

    // UpdateContainerResources reaches the container's cgroup in the guest
    d.runtime()
        .update_container_resources(v1::UpdateContainerResourcesRequest {
            container_id: reader.clone(),
            linux: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("UpdateContainerResources")?;
    let r = exec(
        &d,
        &reader,
        &[
            "sh",
            "-c",
            "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $d/memory.max $d/cpu.max",
        ],
    )
    .await?;
    ensure!(
        out(&r) == format!("{}\n50000 100000\n", 96 << 20),
        "guest cgroup after the update: {}",
        out(&r)
    );

    // a linux pod reaches the vm pod
    let lpod = run_pod(&d, "linuxpod", logs.path(), "").await?;
    let client = run(&d, &lpod, container_config("client", &["sleep", "3600"])).await?;
    let r = exec(
        &d,
        &client,
        &["wget", "-qO-", &format!("http://{ip}:8081/index.html")],
    )
    .await?;
    ensure!(
        out(&r).contains("hello-from-guest"),
        "linux pod → vm pod: {}",
        out(&r)
    );
    // the vm pod's hostPort, at the node's address on the bridge (traffic from the node itself
    // is intercepted by this machine's egress proxy, so it comes from a pod)
    let gateway = format!("{}.1", net.subnet);
    let r = exec(
        &d,
        &client,
        &[
            "wget",
            "-qO-",
            &format!("http://{gateway}:18791/index.html"),
        ],
    )
    .await?;
    ensure!(
        out(&r).contains("hello-from-guest"),
        "hostPort 18791 of the vm pod via {gateway}: {}",
        out(&r)
    );

    // exec with a terminal
    let url = d
        .runtime()
        .exec(v1::ExecRequest {
            container_id: reader.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await?
        .into_inner()
        .url;
    let (mut w, r) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = w.write_all(b"echo tty=$(tty) $((6*7))\nexit 3\n").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(w);
    });
    let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
    let (err_w, _err_r) = tokio::io::duplex(1 << 20);
    let code = tokio::time::timeout(
        Duration::from_secs(60),
        client::remote_command(
            client::Endpoint {
                url: &url,
                trust: &client::Trust::System,
                transport: Transport::WebSocket,
                opts: Options {
                    stdin: true,
                    stdout: true,
                    stderr: false,
                    tty: true,
                },
            },
            Some(r),
            out_w,
            err_w,
            None,
        ),
    )
    .await
    .context("exec -it did not end")??;
    let mut text = String::new();
    out_r.read_to_string(&mut text).await?;
    ensure!(
        code == 3 && text.contains("tty=/dev/pts/") && text.contains(" 42"),
        "exec -it: code {code}, output {text:?}"
    );

    // port-forward to a server bound to the guest's loopback
    let url = d
        .runtime()
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        })
        .await?
        .into_inner()
        .url;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let fwd = tokio::spawn(async move {
        client::port_forward(
            &url,
            &client::Trust::System,
            Transport::WebSocket,
            8080,
            listener,
        )
        .await
    });
    let page = http_get(tokio::net::TcpStream::connect(local).await?, "/index.html").await?;
    fwd.abort();
    ensure!(
        page.contains("hello-from-guest"),
        "port-forward to the guest's 127.0.0.1:8080: {page:?}"
    );

    // ContainerStats come from the guest: memory, CPU and the writable layer
    let r = exec(
        &d,
        &reader,
        &["dd", "if=/dev/zero", "of=/scratch", "bs=1024", "count=512"],
    )
    .await?;
    ensure!(r.exit_code == 0, "dd: {}", out(&r));
    let stats = d
        .runtime()
        .container_stats(v1::ContainerStatsRequest {
            container_id: reader.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    let used = |v: Option<&v1::UInt64Value>| v.map(|v| v.value).unwrap_or(0);
    let writable = used(
        stats
            .writable_layer
            .as_ref()
            .and_then(|w| w.used_bytes.as_ref()),
    );
    let memory = used(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref()),
    );
    let cpu = used(
        stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref()),
    );
    ensure!(
        writable >= 512 * 1024 && memory > 0 && cpu > 0,
        "stats from the guest: writable {writable}, working set {memory}, cpu {cpu}: {stats:?}"
    );

    // OOM inside the guest: a 24 MiB limit, a process that keeps growing
    let mut hog = container_config("hog", &["sh", "-c", "head -c 200000000 /dev/zero | tail"]);
    hog.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 24 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = run(&d, &pod, hog).await?;
    let st = wait_exited(&d, &hog).await?;
    ensure!(
        st.reason == "OOMKilled" && st.exit_code == 137,
        "OOM in the guest: {st:?}"
    );

    // stop and remove; the guest goes with the pod
    let mut rt = d.runtime();
    rt.stop_container(v1::StopContainerRequest {
        container_id: web.clone(),
        timeout: 5,
    })
    .await?;
    let st = container_status(&d, &web).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    rt.remove_container(v1::RemoveContainerRequest {
        container_id: web.clone(),
    })
    .await?;
    remove_pod(&d, &pod.id).await?;
    remove_pod(&d, &lpod.id).await?;
    ensure!(
        tokio::net::TcpStream::connect((ip.as_str(), 8081))
            .await
            .is_err(),
        "the vm pod still answers after its removal"
    );
    d.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pod_survives_kill_9_of_the_daemon() -> Result<()> {
    if skip_without_vm("vm_pod_survives_kill_9_of_the_daemon") {
        return Ok(());
    }
    let net = Net::new()?;
    let mut d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "vmrestart", logs.path(), HANDLER).await?;
    let ticker = run(
        &d,
        &pod,
        container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 60 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7",
            ],
        ),
    )
    .await?;
    let log = pod.log_dir.join("ticker.log");
    wait_log(&log, "tick 3\n").await?;
    let before = container_status(&d, &ticker).await?;

    d.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.restart().await?;

    let st = wait_exited(&d, &ticker).await?;
    ensure!(
        st.exit_code == 7 && st.started_at == before.started_at,
        "after the restart: {st:?}"
    );
    let text = wait_log(&log, "tick 59\n").await?;
    let ticks: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(" stdout F ").nth(1))
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("tick {i}")).collect();
    ensure!(
        ticks == want,
        "log lines lost or repeated across the restart: {ticks:?}"
    );
    remove_pod(&d, &pod.id).await?;
    d.finish().await
}
