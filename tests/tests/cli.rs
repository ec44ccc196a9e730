//! The container CLI end to end: `unicri run`, `ps`, `exec` (ExecSync, and `-i` sessions),
//! `port-forward`, `stats`, `events`, `logs` (with `-f` across a log
//! rotation), `stop` and `rm`, run as the real binary against a real daemon with a busybox
//! image and Debian's CNI plugins. A leak check runs at the end of each test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use unicri_e2e::cni::Net;
use unicri_e2e::daemon::{Daemon, unicri_bin};
use unicri_e2e::fixtures::{container_status, daemon_with_busybox, skip_without_cni_and_busybox};
use unicri_proto::v1;

const IMAGE: &str = "docker.io/e2e/busybox:cli";

/// Runs the CLI; (exit code, stdout, stderr).
fn cli(d: &Daemon, args: &[&str]) -> Result<(i32, String, String)> {
    let out = d.cli(args)?;
    let code = out
        .status
        .code()
        .with_context(|| format!("unicri {args:?} killed by a signal"))?;
    Ok((
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs the CLI and requires success; its stdout.
fn cli_ok(d: &Daemon, args: &[&str]) -> Result<String> {
    let (code, out, err) = cli(d, args)?;
    ensure!(
        code == 0,
        "unicri {args:?} exited {code}\nstdout: {out}\nstderr: {err}"
    );
    Ok(out)
}

async fn pods(d: &Daemon) -> Result<Vec<v1::PodSandbox>> {
    Ok(d.runtime()
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items)
}

async fn containers(d: &Daemon) -> Result<Vec<v1::Container>> {
    Ok(d.runtime()
        .list_containers(v1::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers)
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Waits for a child process to exit (SIGKILL and fail after `limit`); its output.
fn wait_child(mut child: std::process::Child, limit: Duration) -> Result<std::process::Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "unicri did not exit within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_output_exits_with_the_code_and_cleans_up() -> Result<()> {
    if skip_without_cni_and_busybox("run_streams_output_exits_with_the_code_and_cleans_up") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh", "-c", "echo default command"]).await?;
    let logs = tempfile::tempdir()?;
    let log_root = logs.path().display().to_string();

    // --rm: output on the right streams, the exit code, and nothing left behind
    let (code, out, err) = cli(
        &d,
        &[
            "run",
            "--rm",
            "--log-dir",
            &log_root,
            IMAGE,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    )?;
    ensure!(code == 3, "exit {code}\nstdout: {out}\nstderr: {err}");
    ensure!(out == "out\n", "stdout {out:?}");
    ensure!(err == "err\n", "stderr {err:?}");
    ensure!(pods(&d).await?.is_empty(), "--rm left a pod");
    ensure!(containers(&d).await?.is_empty(), "--rm left a container");
    ensure!(
        entries(logs.path())?.is_empty(),
        "--rm left log dirs {:?}",
        entries(logs.path())?
    );

    // without --rm: a named pod in "default", env from -e, a line without its newline, and the
    // image's default command when none is given
    let (code, out, err) = cli(
        &d,
        &[
            "run",
            "--name",
            "kept",
            "--log-dir",
            &log_root,
            "-e",
            "A=b c",
            "--env",
            "B=2",
            IMAGE,
            "sh",
            "-c",
            "echo \"$A $B $FROM_IMAGE\"; hostname; printf no-newline",
        ],
    )?;
    ensure!(code == 0, "exit {code}\nstdout: {out}\nstderr: {err}");
    ensure!(out == "b c 2 yes\nkept\nno-newline\n", "stdout {out:?}");
    let listed = pods(&d).await?;
    ensure!(listed.len() == 1, "{listed:?}");
    let md = listed[0].metadata.clone().unwrap_or_default();
    ensure!(md.name == "kept" && md.namespace == "default", "{md:?}");
    ensure!(
        logs.path().join("kept/kept/0.log").exists(),
        "no log file under the --log-dir"
    );
    let c = containers(&d).await?;
    ensure!(
        c.len() == 1 && c[0].state == v1::ContainerState::ContainerExited as i32,
        "{c:?}"
    );
    let (code, out, err) = cli(
        &d,
        &[
            "run",
            "--rm",
            "--log-dir",
            &log_root,
            "--name",
            "dflt",
            IMAGE,
        ],
    )?;
    ensure!(
        code == 0 && out == "default command\n",
        "exit {code}\nstdout: {out:?}\nstderr: {err}"
    );
    // a random name when none is given
    let (code, _, err) = cli(
        &d,
        &["run", "--log-dir", &log_root, IMAGE, "sh", "-c", "exit 0"],
    )?;
    ensure!(code == 0, "{err}");
    let mut names: Vec<String> = pods(&d)
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.map(|m| m.name))
        .collect();
    names.sort();
    ensure!(
        names.len() == 2
            && names[0] == "kept"
            && names[1].len() == "run-".len() + 6
            && names[1].starts_with("run-")
            && names[1][4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{names:?}"
    );
    cli_ok(&d, &["rmp", "--all"])?;

    // Ctrl-C: the container is stopped (its TERM trap runs), the output is followed to the end
    // and the exit code is the container's
    let child = Command::new(unicri_bin())
        .arg("--address")
        .arg(&d.socket)
        .args([
            "run",
            "--rm",
            "--name",
            "intr",
            "--log-dir",
            &log_root,
            IMAGE,
            "sh",
            "-c",
            "trap 'echo bye; exit 5' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    let log = logs.path().join("intr/intr/0.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        if Instant::now() > deadline {
            let _ = wait_child(child, Duration::ZERO);
            bail!("the container did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(pid, Signal::SIGINT)?;
    let out = wait_child(child, Duration::from_secs(20))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(5) && stdout == "ready\nbye\n",
        "{:?}\nstdout: {stdout:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(pods(&d).await?.is_empty(), "--rm left a pod after Ctrl-C");
    ensure!(
        entries(logs.path())?.iter().all(|e| e != "intr"),
        "log dir left after Ctrl-C"
    );

    // errors: exit 1 with a message
    let (code, _, err) = cli(
        &d,
        &[
            "run",
            "--rm",
            "--log-dir",
            &log_root,
            // nothing listens there: the pull fails at once
            "127.0.0.1:1/e2e/absent:v1",
        ],
    )?;
    ensure!(code == 1 && err.starts_with("unicri: "), "{code} {err}");
    ensure!(pods(&d).await?.is_empty());
    ensure!(
        entries(logs.path())?
            .iter()
            .all(|e| e == "kept" || e.starts_with("run-"))
    );
    d.finish().await
}

struct Pod {
    id: String,
    config: v1::PodSandboxConfig,
}

async fn run_pod(d: &Daemon, name: &str, log_dir: &Path) -> Result<Pod> {
    let config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        ..Default::default()
    };
    let id = d
        .runtime()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok(Pod { id, config })
}

async fn start_container(d: &Daemon, pod: &Pod, name: &str, script: &str) -> Result<String> {
    let mut rt = d.runtime();
    let id = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(v1::ContainerConfig {
                metadata: Some(v1::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(v1::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: format!("{name}/0.log"),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
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

/// Waits until the container's log file holds `text`.
async fn wait_log(path: &Path, text: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        ensure!(
            Instant::now() < deadline,
            "{text:?} never appeared in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_exec_logs_stop_and_rm_on_cri_containers() -> Result<()> {
    if skip_without_cni_and_busybox("ps_exec_logs_stop_and_rm_on_cri_containers") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh", "-c", "echo default command"]).await?;
    let logs = tempfile::tempdir()?;
    let pod = run_pod(&d, "clipod", logs.path()).await?;
    let app = start_container(
        &d,
        &pod,
        "app",
        // the sleeps keep the order of the two streams' lines in the file
        "echo hello; sleep 0.2; echo oops >&2; sleep 0.2; echo second; sleep 1000",
    )
    .await?;
    let done = start_container(&d, &pod, "done", "echo finished; exit 0").await?;
    wait_log(&logs.path().join("app/0.log"), "second").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while container_status(&d, &done).await?.state != v1::ContainerState::ContainerExited as i32 {
        ensure!(Instant::now() < deadline, "container done did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (app12, done12, pod12) = (&app[..12], &done[..12], &pod.id[..12]);

    // ps: running only; -a adds the exited one; -q gives full ids; --pod filters
    let ps = cli_ok(&d, &["ps"])?;
    let lines: Vec<&str> = ps.lines().collect();
    ensure!(lines.len() == 2, "ps:\n{ps}");
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    ensure!(
        header
            == [
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID"
            ],
        "ps header {:?}",
        lines[0]
    );
    let cols: Vec<&str> = lines[1]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    ensure!(
        cols.len() == 7
            && cols[0] == &app[..13]
            && cols[1] == IMAGE
            && cols[2].ends_with(" ago")
            && cols[3] == "Running"
            && cols[4] == "app"
            && cols[5] == "0"
            && cols[6] == &pod.id[..13],
        "ps row {cols:?}"
    );
    let all = cli_ok(&d, &["ps", "-a"])?;
    ensure!(all.lines().count() == 3, "ps -a:\n{all}");
    ensure!(
        all.lines()
            .any(|l| l.starts_with(&done[..13]) && l.contains("Exited")),
        "ps -a:\n{all}"
    );
    let mut quiet: Vec<String> = cli_ok(&d, &["ps", "-a", "-q"])?
        .lines()
        .map(String::from)
        .collect();
    quiet.sort();
    let mut want = vec![app.clone(), done.clone()];
    want.sort();
    ensure!(quiet == want, "ps -a -q {quiet:?}");
    ensure!(
        cli_ok(&d, &["ps", "-a", "-q", "--pod", pod12])?
            .lines()
            .count()
            == 2
    );
    ensure!(
        cli_ok(&d, &["ps", "-a", "-q", "--pod", &"f".repeat(64)])?.is_empty(),
        "--pod of an unknown pod lists nothing"
    );

    // exec: output on both streams, the exit code, id prefixes
    let (code, out, err) = cli(
        &d,
        &[
            "exec",
            app12,
            "sh",
            "-c",
            "echo in-$(hostname); echo to-err >&2; exit 4",
        ],
    )?;
    ensure!(
        code == 4 && out == "in-clipod\n" && err == "to-err\n",
        "exec: {code} {out:?} {err:?}"
    );
    ensure!(cli_ok(&d, &["exec", "--timeout", "5", &app, "echo", "-n", "x"])? == "x");
    let (code, _, err) = cli(&d, &["exec", "--timeout", "1", app12, "sleep", "30"])?;
    ensure!(
        code == 1 && err.starts_with("unicri: ") && err.contains("timed out"),
        "{code} {err}"
    );
    let (code, _, err) = cli(&d, &["exec", done12, "true"])?;
    ensure!(
        code == 1 && err.starts_with("unicri: "),
        "exec in exited: {code} {err}"
    );

    // logs: both streams, --tail, -f of an exited container returns
    let (code, out, err) = cli(&d, &["logs", app12])?;
    ensure!(
        code == 0 && out == "hello\nsecond\n" && err == "oops\n",
        "logs: {code} {out:?} {err:?}"
    );
    let (_, out, err) = cli(&d, &["logs", "--tail", "1", app12])?;
    ensure!(
        out == "second\n" && err.is_empty(),
        "--tail 1: {out:?} {err:?}"
    );
    let (_, out, err) = cli(&d, &["logs", "--tail", "2", app12])?;
    ensure!(
        out == "second\n" && err == "oops\n",
        "--tail 2: {out:?} {err:?}"
    );
    ensure!(cli_ok(&d, &["logs", "-f", done12])? == "finished\n");

    // logs -f follows a running container across a rotation until it exits
    let ticker = start_container(
        &d,
        &pod,
        "ticker",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
    )
    .await?;
    let ticker_log = logs.path().join("ticker/0.log");
    wait_log(&ticker_log, "tick 3").await?;
    let follower = Command::new(unicri_bin())
        .arg("--address")
        .arg(&d.socket)
        .args(["logs", "-f", &ticker[..8]])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::rename(&ticker_log, logs.path().join("ticker/0.log.1"))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.runtime()
        .reopen_container_log(v1::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopped = cli_ok(&d, &["stop", "--timeout", "0", &ticker[..10]])?;
    ensure!(
        stopped == format!("{}\n", &ticker[..10]),
        "stop: {stopped:?}"
    );
    let out = wait_child(follower, Duration::from_secs(20))?;
    ensure!(out.status.success(), "logs -f: {:?}", out);
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: Vec<&str> = text.lines().collect();
    ensure!(ticks.len() > 20, "too few lines: {text}");
    for (i, l) in ticks.iter().enumerate() {
        ensure!(
            *l == format!("tick {i}"),
            "line {i} is {l:?} (lost or repeated across the rotation):\n{text}"
        );
    }
    let new_file = std::fs::read_to_string(&ticker_log)?;
    ensure!(
        new_file.lines().count() > 3,
        "the rotation did not happen mid-way: {new_file}"
    );

    // stop: the container exits; an unknown id is an error
    let stopped = cli_ok(&d, &["stop", "-t", "1", app12])?;
    ensure!(stopped == format!("{app12}\n"), "{stopped:?}");
    let st = container_status(&d, &app).await?;
    ensure!(
        st.state == v1::ContainerState::ContainerExited as i32 && st.exit_code == 137,
        "{st:?}"
    );
    let (code, _, err) = cli(&d, &["stop", &"e".repeat(64)])?;
    ensure!(code == 1 && err.contains("not found"), "{code} {err}");

    // rm: a running container needs -f; removed ones are gone
    let busy = start_container(&d, &pod, "busy", "sleep 1000").await?;
    let (code, _, err) = cli(&d, &["rm", &busy])?;
    ensure!(
        code == 1 && err.contains("running"),
        "rm running: {code} {err}"
    );
    ensure!(
        container_status(&d, &busy).await?.state == v1::ContainerState::ContainerRunning as i32
    );
    cli_ok(&d, &["rm", "-f", &busy[..12]])?;
    cli_ok(&d, &["rm", app12, done12, &ticker])?;
    ensure!(containers(&d).await?.is_empty(), "rm left containers");
    let (code, _, err) = cli(&d, &["rm", app12])?;
    ensure!(
        code == 1 && err.starts_with("unicri: "),
        "rm again: {code} {err}"
    );
    let (code, _, err) = cli(&d, &["logs", app12])?;
    ensure!(
        code == 1 && err.starts_with("unicri: "),
        "logs of removed: {code} {err}"
    );

    cli_ok(&d, &["rmp", &pod.id])?;
    d.finish().await
}

/// Runs the CLI with `input` on stdin; (exit code, stdout, stderr).
fn cli_with_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = Command::new(unicri_bin())
        .arg("--address")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().context("killed by a signal")?,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_i_port_forward_stats_and_events_from_the_cli() -> Result<()> {
    if skip_without_cni_and_busybox("exec_i_port_forward_stats_and_events_from_the_cli") {
        return Ok(());
    }
    let net = Net::new()?;
    let d = daemon_with_busybox(&net, IMAGE, &["sh"]).await?;
    let logs = tempfile::tempdir()?;

    // events: a JSON line per event, as they happen
    let events = Command::new(unicri_bin())
        .arg("--address")
        .arg(&d.socket)
        .arg("events")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pod = run_pod(&d, "clistream", logs.path()).await?;
    let web = start_container(
        &d,
        &pod,
        "web",
        "mkdir -p /tmp/w && echo cli-page > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
    )
    .await?;

    // exec -i: piped stdin through a streaming session, both transports, exit code kept
    for transport in ["spdy", "websocket"] {
        let (code, out, err) = cli_with_stdin(
            &d,
            &[
                "exec",
                "-i",
                "--transport",
                transport,
                &web[..12],
                "sh",
                "-c",
                "cat; exit 6",
            ],
            b"from-stdin",
        )?;
        ensure!(
            (code, out.as_str()) == (6, "from-stdin"),
            "{transport}: {code} {out:?} {err}"
        );
    }
    // -t without a terminal is refused clearly
    let (code, _, err) = cli(&d, &["exec", "-t", &web[..12], "true"])?;
    ensure!(code != 0 && err.contains("terminal"), "{code} {err}");

    // port-forward: a local port to the pod's httpd until interrupted
    let port = unicri_e2e::registry::free_port()?;
    let mut pf = Command::new(unicri_bin())
        .arg("--address")
        .arg(&d.socket)
        .args(["port-forward", &pod.id[..12], &format!("{port}:8080")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut page = String::new();
    for attempt in 0..50 {
        page.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let _ = s.read_to_string(&mut page);
            if page.contains("cli-page") {
                break;
            }
        }
        ensure!(attempt < 49, "port-forward never served the page: {page:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill(Pid::from_raw(pf.id() as i32), Signal::SIGINT)?;
    let status = pf.wait()?;
    ensure!(status.success(), "port-forward after SIGINT: {status:?}");

    // stats: a row for the running container
    let stats = cli_ok(&d, &["stats"])?;
    ensure!(
        stats
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("CONTAINER")),
        "{stats}"
    );
    ensure!(
        stats
            .lines()
            .any(|l| l.starts_with(&web[..13]) && l.contains("web")),
        "{stats}"
    );

    let mut rt = d.runtime();
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(events.id() as i32), Signal::SIGINT)?;
    let out = events.wait_with_output()?;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let of = |id: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|e| e["id"] == id)
            .map(|e| e["type"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let life = [
        "CONTAINER_CREATED_EVENT",
        "CONTAINER_STARTED_EVENT",
        "CONTAINER_STOPPED_EVENT",
        "CONTAINER_DELETED_EVENT",
    ];
    ensure!(of(&pod.id) == life, "pod events {:?}", of(&pod.id));
    ensure!(of(&web) == life, "container events {:?}", of(&web));
    d.finish().await
}
