//! The CRI surface end to end: Exec, Attach and PortForward through the daemon's streaming
//! server over SPDY and WebSocket (with this project's client, `unicri_streaming::client`);
//! GetContainerEvents, stats that move, and UpdateContainerResources on the live cgroup. A leak
//! check runs at the end of each test.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unicri_e2e::cni::Net;
use unicri_e2e::daemon::Daemon;
use unicri_e2e::fixtures::{
    container_status, daemon_with_busybox, pod_config, remove_pod, skip_without_cni_and_busybox,
};
use unicri_proto::v1;
use unicri_streaming::client::{self, Transport};
use unicri_streaming::{Options, TermSize};

const IMAGE: &str = "docker.io/e2e/busybox:s1";

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

async fn run_pod(d: &Daemon, name: &str, logs: &Path) -> Result<(String, v1::PodSandboxConfig)> {
    let config = pod_config(name, &logs.join(name));
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, config))
}

async fn run_container(
    d: &Daemon,
    pod: &(String, v1::PodSandboxConfig),
    cfg: v1::ContainerConfig,
) -> Result<String> {
    let mut rt = d.runtime();
    let id = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod.1.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

async fn exec_url(d: &Daemon, id: &str, cmd: &[&str], opts: Options) -> Result<String> {
    Ok(d.runtime()
        .exec(v1::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: opts.tty,
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
        })
        .await?
        .into_inner()
        .url)
}

/// One session: `input` is written after `delay` and then stdin is closed. Returns (exit
/// code, stdout, stderr).
async fn session(
    url: &str,
    transport: Transport,
    opts: Options,
    input: &[u8],
    delay: Duration,
    resize: Option<TermSize>,
) -> Result<(i32, String, String)> {
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let input = input.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
    });
    let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
    let (err_w, mut err_r) = tokio::io::duplex(1 << 20);
    let sizes = resize.map(|s| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(s);
        // the sender stays alive for the session (a closed queue is fine too)
        std::mem::forget(tx);
        rx
    });
    let stdin = opts.stdin.then_some(r);
    let code = tokio::time::timeout(
        Duration::from_secs(60),
        client::remote_command(
            client::Endpoint {
                url,
                trust: &trust(),
                transport,
                opts,
            },
            stdin,
            out_w,
            err_w,
            sizes,
        ),
    )
    .await
    .context("session did not end within 60 s")??;
    let mut out = String::new();
    let mut err = String::new();
    out_r.read_to_string(&mut out).await?;
    err_r.read_to_string(&mut err).await?;
    Ok((code, out, err))
}

/// Plain `http` URLs need no trust settings.
fn trust() -> client::Trust {
    client::Trust::System
}

const PIPES: Options = Options {
    stdin: true,
    stdout: true,
    stderr: true,
    tty: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_and_port_forward_over_spdy_and_websocket() -> Result<()> {
    if skip_without_cni_and_busybox("exec_attach_and_port_forward_over_spdy_and_websocket") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "stream", logs.path()).await?;
    let web = run_container(
        &d,
        &pod,
        container_config(
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && \
                 exec httpd -f -p 8080 -h /tmp/www",
            ],
        ),
    )
    .await?;
    let mut rt = d.runtime();

    for transport in [Transport::Spdy, Transport::WebSocket] {
        let t = format!("{transport:?}");
        // pipes: stdin in, both streams out, the exit code back
        let url = exec_url(
            &d,
            &web,
            &["sh", "-c", "read x; echo got:$x; echo err >&2; exit 3"],
            PIPES,
        )
        .await?;
        let (code, out, err) =
            session(&url, transport, PIPES, b"hello\n", Duration::ZERO, None).await?;
        ensure!(
            (code, out.as_str(), err.as_str()) == (3, "got:hello\n", "err\n"),
            "{t}: {code} {out:?} {err:?}"
        );
        // a URL serves one session
        let again = client::remote_command(
            client::Endpoint {
                url: &url,
                trust: &trust(),
                transport,
                opts: PIPES,
            },
            None::<tokio::io::Empty>,
            tokio::io::sink(),
            tokio::io::sink(),
            None,
        )
        .await;
        ensure!(again.is_err(), "{t}: a used URL must be refused");

        // stdin closed: cat sees its end and exits 0
        let url = exec_url(&d, &web, &["cat"], PIPES).await?;
        let (code, out, _) = session(&url, transport, PIPES, b"abc", Duration::ZERO, None).await?;
        ensure!(
            (code, out.as_str()) == (0, "abc"),
            "{t}: cat: {code} {out:?}"
        );

        // a terminal: a real tty from the container's devpts, its size set by resize
        let tty = Options {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let url = exec_url(&d, &web, &["sh"], tty).await?;
        let (code, out, _) = session(
            &url,
            transport,
            tty,
            b"tty; stty size; exit 5\n",
            Duration::from_millis(500),
            Some(TermSize {
                width: 123,
                height: 45,
            }),
        )
        .await?;
        ensure!(code == 5, "{t}: tty exit code {code}: {out:?}");
        ensure!(out.contains("/dev/pts/"), "{t}: no tty in {out:?}");
        ensure!(
            out.contains("45 123"),
            "{t}: terminal size not applied: {out:?}"
        );

        // attach to a shell waiting on stdin (stdin_once: closing ours ends it)
        let mut cfg = container_config(&format!("shell-{}", t.to_lowercase()), &["sh"]);
        cfg.stdin = true;
        cfg.stdin_once = true;
        let shell = run_container(&d, &pod, cfg).await?;
        let url = rt
            .attach(v1::AttachRequest {
                container_id: shell.clone(),
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            })
            .await?
            .into_inner()
            .url;
        let (code, out, _) = session(
            &url,
            transport,
            PIPES,
            b"echo attached-$((40+2))\n",
            Duration::from_millis(300),
            None,
        )
        .await?;
        ensure!(
            (code, out.as_str()) == (0, "attached-42\n"),
            "{t}: attach: {code} {out:?}"
        );
        let mut exited = false;
        for _ in 0..50 {
            if container_status(&d, &shell).await?.state
                == v1::ContainerState::ContainerExited as i32
            {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(exited, "{t}: the shell did not end after its stdin closed");

        // port-forward to busybox httpd on the pod's loopback
        let url = rt
            .port_forward(v1::PortForwardRequest {
                pod_sandbox_id: pod.0.clone(),
                port: vec![8080],
            })
            .await?
            .into_inner()
            .url;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let fwd = tokio::spawn(async move {
            client::port_forward(&url, &trust(), transport, 8080, listener).await
        });
        let mut page = String::new();
        for attempt in 0..50 {
            page.clear();
            let mut s = tokio::net::TcpStream::connect(local).await?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut page)).await;
            if page.contains("hello-from-pod") {
                break;
            }
            ensure!(
                attempt < 49,
                "{t}: port-forward never served the page: {page:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fwd.abort();
    }

    // a container on a terminal: attach joins it, resizes it, and its output is logged
    let mut cfg = container_config("tty", &["sh"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    cfg.tty = true;
    let tty_ctr = run_container(&d, &pod, cfg).await?;
    let url = rt
        .attach(v1::AttachRequest {
            container_id: tty_ctr.clone(),
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        })
        .await?
        .into_inner()
        .url;
    let tty_opts = Options {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let (_, out, _) = session(
        &url,
        Transport::Spdy,
        tty_opts,
        b"tty; stty size; exit 3\n",
        Duration::from_millis(500),
        Some(TermSize {
            width: 99,
            height: 33,
        }),
    )
    .await?;
    ensure!(
        out.contains("/dev/pts/") && out.contains("33 99"),
        "tty attach: {out:?}"
    );
    let mut st = container_status(&d, &tty_ctr).await?;
    for _ in 0..50 {
        if st.state == v1::ContainerState::ContainerExited as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = container_status(&d, &tty_ctr).await?;
    }
    ensure!(st.exit_code == 3, "tty container: {st:?}");
    let log = std::fs::read_to_string(&st.log_path)?;
    ensure!(
        log.contains(" stdout ") && log.contains("33 99"),
        "tty log: {log:?}"
    );

    // a client that goes away takes its exec'd process along
    let opts = Options {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = exec_url(
        &d,
        &web,
        &["sh", "-c", "echo started; exec sleep 4242"],
        opts,
    )
    .await?;
    let (out_w, mut out_r) = tokio::io::duplex(4096);
    let (_keep_stdin_open, stdin_r) = tokio::io::duplex(16);
    let running = tokio::spawn(async move {
        client::remote_command(
            client::Endpoint {
                url: &url,
                trust: &trust(),
                transport: Transport::Spdy,
                opts,
            },
            Some(stdin_r),
            out_w,
            tokio::io::sink(),
            None,
        )
        .await
    });
    let mut started = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(20), out_r.read_exact(&mut started))
        .await
        .context("the exec never started")??;
    let sleeping = |d: &Daemon| {
        let mut rt = d.runtime();
        let id = web.clone();
        async move {
            let r = rt
                .exec_sync(v1::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["ps".into()],
                    timeout: 10,
                })
                .await?
                .into_inner();
            Ok::<bool, anyhow::Error>(String::from_utf8_lossy(&r.stdout).contains("sleep 4242"))
        }
    };
    ensure!(sleeping(&d).await?, "the exec'd process is not running");
    running.abort();
    let mut gone = false;
    for _ in 0..50 {
        if !sleeping(&d).await? {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(gone, "the exec'd process outlived its client");

    // 20 sessions at once
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let opts = Options {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let url = exec_url(
            &d,
            &web,
            &["sh", "-c", &format!("sleep 0.5; echo session-{i}")],
            opts,
        )
        .await?;
        let transport = if i % 2 == 0 {
            Transport::Spdy
        } else {
            Transport::WebSocket
        };
        set.spawn(async move {
            session(&url, transport, opts, b"", Duration::ZERO, None)
                .await
                .map(|r| (i, r))
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, (code, out, _)) = r??;
        ensure!(
            (code, out.clone()) == (0, format!("session-{i}\n")),
            "session {i}: {code} {out:?}"
        );
    }

    // bad requests get clear codes
    let err = rt
        .exec(v1::ExecRequest {
            container_id: "f".repeat(64),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let err = rt
        .exec(v1::ExecRequest {
            container_id: web.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await
        .expect_err("no streams");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = rt
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: pod.0.clone(),
            port: vec![70000],
        })
        .await
        .expect_err("bad port");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");

    remove_pod(&d, &pod.0).await?;
    d.finish().await
}

fn ensure_labels(m: &v1::Metric, keys: &[String]) -> Result<()> {
    ensure!(
        m.label_values.len() == keys.len(),
        "{}: {} label values for keys {keys:?}",
        m.name,
        m.label_values.len()
    );
    Ok(())
}

fn event_kind(e: &v1::ContainerEventResponse) -> v1::ContainerEventType {
    v1::ContainerEventType::try_from(e.container_event_type)
        .unwrap_or(v1::ContainerEventType::ContainerCreatedEvent)
}

/// The host directory of the container's cgroup in the v1 hierarchy `controller`.
async fn cgroup_dir(d: &Daemon, id: &str, controller: &str) -> Result<std::path::PathBuf> {
    let r = d
        .runtime()
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["cat".into(), "/proc/self/cgroup".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    let text = String::from_utf8_lossy(&r.stdout);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if ctrls.split(',').any(|c| c == controller) {
            let mount = std::fs::read_dir("/sys/fs/cgroup")?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.split(',').any(|c| c == controller))
                })
                .context("controller mount")?;
            return Ok(mount.join(path.trim_start_matches('/')));
        }
    }
    bail!("no {controller} cgroup in {text}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stats_and_live_resource_updates() -> Result<()> {
    if skip_without_cni_and_busybox("events_stats_and_live_resource_updates") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;
    let mut rt = d.runtime();
    let mut events = rt
        .get_container_events(v1::GetEventsRequest {})
        .await?
        .into_inner();
    let mut second = d
        .runtime()
        .get_container_events(v1::GetEventsRequest {})
        .await?
        .into_inner();

    let pod = run_pod(&d, "events", logs.path()).await?;
    // burns CPU and holds ~32 MiB in a shell variable
    let busy = run_container(
        &d,
        &pod,
        container_config(
            "busy",
            &[
                "sh",
                "-c",
                "x=$(head -c 33554432 /dev/zero | tr '\\0' a); while :; do :; done",
            ],
        ),
    )
    .await?;
    // ends by itself: its STOPPED event comes from the exit watch, not from a status call
    let quick = run_container(
        &d,
        &pod,
        container_config("quick", &["sh", "-c", "sleep 1; exit 7"]),
    )
    .await?;

    // stats move
    let stats = |d: &Daemon, id: String| {
        let mut rt = d.runtime();
        async move {
            rt.container_stats(v1::ContainerStatsRequest { container_id: id })
                .await
                .map(|r| r.into_inner().stats.unwrap_or_default())
        }
    };
    let mut memory = 0;
    let mut first_cpu = None;
    let mut cpu_moved = false;
    for _ in 0..100 {
        let s = stats(&d, busy.clone()).await?;
        let cpu = s
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value);
        memory = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        if let (Some(a), Some(b)) = (first_cpu, cpu) {
            cpu_moved = b > a + 100_000_000;
        }
        first_cpu = first_cpu.or(cpu);
        if cpu_moved && memory > 30 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(cpu_moved, "CPU usage did not grow");
    ensure!(
        memory > 30 << 20,
        "working set {memory} did not reach the 32 MiB held"
    );

    // pod network counters come from the pod's netns: traffic out of eth0 moves them
    let tx = |s: &v1::PodSandboxStats| {
        s.linux
            .as_ref()
            .and_then(|l| l.network.as_ref())
            .and_then(|n| n.default_interface.as_ref())
            .map(|i| (i.name.clone(), i.tx_bytes.as_ref().map_or(0, |v| v.value)))
    };
    let pod_stats = |d: &Daemon| {
        let mut rt = d.runtime();
        let id = pod.0.clone();
        async move {
            rt.pod_sandbox_stats(v1::PodSandboxStatsRequest { pod_sandbox_id: id })
                .await
                .map(|r| r.into_inner().stats.unwrap_or_default())
        }
    };
    let before = tx(&pod_stats(&d).await?).context("no network usage for the pod")?;
    ensure!(before.0 == "eth0", "default interface {before:?}");
    rt.exec_sync(v1::ExecSyncRequest {
        container_id: busy.clone(),
        cmd: ["ping", "-c", "2", "-W", "1", &format!("{}.1", net.subnet)]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        timeout: 10,
    })
    .await?;
    let after = tx(&pod_stats(&d).await?).context("no network usage")?;
    ensure!(
        after.1 > before.1,
        "eth0 tx bytes did not move: {before:?} -> {after:?}"
    );

    // the same figures as cAdvisor metrics
    let descriptors = rt
        .list_metric_descriptors(v1::ListMetricDescriptorsRequest {})
        .await?
        .into_inner()
        .descriptors;
    let keys = |name: &str| {
        descriptors
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.label_keys.clone())
            .unwrap_or_default()
    };
    ensure!(keys("container_memory_working_set_bytes").contains(&"pod".to_string()));
    let metrics = rt
        .list_pod_sandbox_metrics(v1::ListPodSandboxMetricsRequest {})
        .await?
        .into_inner()
        .pod_metrics;
    let pm = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod.0)
        .context("pod metrics")?;
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == busy)
        .context("container metrics")?;
    let value = |ms: &[v1::Metric], name: &str| {
        ms.iter().find(|m| m.name == name).and_then(|m| {
            ensure_labels(m, &keys(name)).ok()?;
            m.value.as_ref().map(|v| v.value)
        })
    };
    ensure!(
        value(&cm.metrics, "container_memory_working_set_bytes").is_some_and(|v| v > 30 << 20),
        "working set metric: {:?}",
        cm.metrics
    );
    ensure!(
        value(&pm.metrics, "container_network_transmit_bytes_total").is_some_and(|v| v >= after.1),
        "network metric: {:?}",
        pm.metrics
    );

    // resources change on the live cgroup
    rt.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: busy.clone(),
        linux: Some(v1::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 256,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mem_dir = cgroup_dir(&d, &busy, "memory").await?;
    let limit = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes"))?;
    ensure!(
        limit.trim() == (256u64 << 20).to_string(),
        "memory limit {limit:?} in {}",
        mem_dir.display()
    );
    let cpu_dir = cgroup_dir(&d, &busy, "cpu").await?;
    let quota = std::fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us"))?;
    ensure!(quota.trim() == "20000", "cpu quota {quota:?}");
    let shares = std::fs::read_to_string(cpu_dir.join("cpu.shares"))?;
    ensure!(shares.trim() == "256", "cpu shares {shares:?}");
    let st = container_status(&d, &busy).await?;
    let r = st
        .resources
        .and_then(|r| r.linux)
        .context("resources in status")?;
    ensure!(
        r.memory_limit_in_bytes == 256 << 20 && r.cpu_quota == 20_000,
        "{r:?}"
    );
    // the pod's own cgroup (unicri made it: no cgroup parent) takes in-place pod resizes
    rt.update_pod_sandbox_resources(v1::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod.0.clone(),
        overhead: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
    })
    .await?;
    let pod_dir = mem_dir.parent().context("pod cgroup")?;
    let pod_limit = std::fs::read_to_string(pod_dir.join("memory.limit_in_bytes"))?;
    ensure!(
        pod_limit.trim() == (528u64 << 20).to_string(),
        "pod memory limit {pod_limit:?} in {}",
        pod_dir.display()
    );

    // a limit below what the kernel can reclaim (anonymous memory, no swap) is refused, and
    // the limit stays
    let err = rt
        .update_container_resources(v1::UpdateContainerResourcesRequest {
            container_id: busy.clone(),
            linux: Some(v1::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("1 MiB is below the 32 MiB held");
    ensure!(err.message().contains("memory"), "{err:?}");
    let limit = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes"))?;
    ensure!(
        limit.trim() == (256u64 << 20).to_string(),
        "limit changed to {limit:?}"
    );
    let err = rt
        .update_container_resources(v1::UpdateContainerResourcesRequest {
            container_id: "e".repeat(64),
            linux: Some(v1::LinuxContainerResources::default()),
            ..Default::default()
        })
        .await
        .expect_err("unknown container");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");

    // the quick one's STOPPED arrives without anybody asking for its status
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.message())
            .await
            .context("no STOPPED event for a container that exited by itself")??
            .context("event stream ended")?;
        let done = ev.container_id == quick
            && event_kind(&ev) == v1::ContainerEventType::ContainerStoppedEvent;
        if done {
            let st = ev
                .containers_statuses
                .iter()
                .find(|c| c.id == quick)
                .context("status")?;
            ensure!(st.exit_code == 7, "{st:?}");
            ensure!(ev.pod_sandbox_status.as_ref().map(|p| p.id.as_str()) == Some(pod.0.as_str()));
        }
        seen.push(ev);
        if done {
            break;
        }
    }

    rt.stop_container(v1::StopContainerRequest {
        container_id: busy.clone(),
        timeout: 0,
    })
    .await?;
    rt.remove_container(v1::RemoveContainerRequest {
        container_id: busy.clone(),
    })
    .await?;
    remove_pod(&d, &pod.0).await?;

    // every event of the pod's life, in order, on both subscriptions
    let want_done = |evs: &[v1::ContainerEventResponse]| {
        evs.iter().any(|e| {
            e.container_id == pod.0
                && event_kind(e) == v1::ContainerEventType::ContainerDeletedEvent
        })
    };
    while !want_done(&seen) {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .context("events stopped")??
            .context("event stream ended")?;
        seen.push(ev);
    }
    use v1::ContainerEventType::*;
    let of = |id: &str| -> Vec<v1::ContainerEventType> {
        seen.iter()
            .filter(|e| e.container_id == id)
            .map(event_kind)
            .collect()
    };
    let life = vec![
        ContainerCreatedEvent,
        ContainerStartedEvent,
        ContainerStoppedEvent,
        ContainerDeletedEvent,
    ];
    ensure!(of(&pod.0) == life, "pod events {:?}", of(&pod.0));
    ensure!(of(&busy) == life, "busy events {:?}", of(&busy));
    ensure!(of(&quick) == life, "quick events {:?}", of(&quick));
    let pos = |id: &str, k| {
        seen.iter()
            .position(|e| e.container_id == id && event_kind(e) == k)
    };
    ensure!(
        pos(&pod.0, ContainerStartedEvent) < pos(&busy, ContainerCreatedEvent),
        "pod starts before its containers"
    );
    ensure!(
        pos(&busy, ContainerDeletedEvent) < pos(&pod.0, ContainerDeletedEvent),
        "containers go before their pod"
    );
    let mut other = Vec::new();
    while other.len() < seen.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), second.message())
            .await
            .context("second subscriber missed events")??
            .context("stream ended")?;
        other.push((ev.container_id, ev.container_event_type));
    }
    let mine: Vec<_> = seen
        .iter()
        .map(|e| (e.container_id.clone(), e.container_event_type))
        .collect();
    ensure!(other == mine, "two subscribers saw different sequences");
    drop(events);
    drop(second);
    d.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_over_tls() -> Result<()> {
    if skip_without_cni_and_busybox("streaming_over_tls") {
        return Ok(());
    }
    let certs = tempfile::tempdir()?;
    let tls = unicri_e2e::registry::TlsFiles::generate(certs.path())?;
    let net = Net::new()?;
    let d = unicri_e2e::daemon::Daemon::start(unicri_e2e::daemon::DaemonOpts {
        extra_config: format!(
            "{}[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            net.config(),
            tls.cert.display(),
            tls.key.display()
        ),
        ..Default::default()
    })
    .await?;
    unicri_e2e::fixtures::import_busybox(&d, IMAGE, &["sh"])?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "tls", logs.path()).await?;
    let id = run_container(&d, &pod, container_config("c", &["sleep", "1000"])).await?;
    let opts = Options {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let ca = client::Trust::Ca(std::fs::read(&tls.ca_cert)?);
    for transport in [Transport::Spdy, Transport::WebSocket] {
        let url = exec_url(&d, &id, &["echo", "over-tls"], opts).await?;
        ensure!(url.starts_with("https://127.0.0.1:"), "{url}");
        let (w, mut r) = tokio::io::duplex(4096);
        let code = client::remote_command(
            client::Endpoint {
                url: &url,
                trust: &ca,
                transport,
                opts,
            },
            None::<tokio::io::Empty>,
            w,
            tokio::io::sink(),
            None,
        )
        .await?;
        let mut out = String::new();
        r.read_to_string(&mut out).await?;
        ensure!(
            (code, out.as_str()) == (0, "over-tls\n"),
            "{transport:?}: {code} {out:?}"
        );
        // a client that does not trust the daemon's CA is refused by TLS
        let url = exec_url(&d, &id, &["true"], opts).await?;
        let refused = client::remote_command(
            client::Endpoint {
                url: &url,
                trust: &client::Trust::System,
                transport,
                opts,
            },
            None::<tokio::io::Empty>,
            tokio::io::sink(),
            tokio::io::sink(),
            None,
        )
        .await;
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("TLS")),
            "{refused:?}"
        );
    }
    remove_pod(&d, &pod.0).await?;
    d.finish().await
}
