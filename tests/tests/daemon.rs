//! The daemon contract, end to end: socket, config, locking, signals, the CRI calls that need no
//! registry, and clear statuses for bad input.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use unicri_e2e::daemon::{Daemon, DaemonOpts, spec, unicri_bin};
use unicri_proto::v1;

/// Runs `unicri daemon ARGS` expecting it to exit by itself (a refused start); returns its output.
fn daemon_refuses(args: &[&str]) -> Result<Output> {
    let mut child = Command::new(unicri_bin())
        .arg("daemon")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn unicri")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            ensure!(
                !out.status.success(),
                "daemon {args:?} should have refused to start"
            );
            return Ok(out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("daemon {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn version_status_runtime_config_and_socket_mode() -> Result<()> {
    let d = Daemon::start(DaemonOpts::default()).await?;

    let mode = std::fs::metadata(&d.socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o660, "socket mode is {mode:o}, want 660");

    let mut rt = d.runtime();
    let v = rt
        .version(v1::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(
        v.runtime_name == "unicri",
        "runtime_name {:?}",
        v.runtime_name
    );
    ensure!(
        v.runtime_api_version == "v1",
        "api {:?}",
        v.runtime_api_version
    );
    ensure!(!v.runtime_version.is_empty());

    let rc = rt
        .runtime_config(v1::RuntimeConfigRequest {})
        .await?
        .into_inner();
    let driver = rc.linux.map(|l| l.cgroup_driver);
    ensure!(
        driver == Some(v1::CgroupDriver::Cgroupfs as i32),
        "cgroup driver {driver:?}"
    );

    let st = rt
        .status(v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let conds = st.status.map(|s| s.conditions).unwrap_or_default();
    let cond = |t: &str| conds.iter().find(|c| c.r#type == t).cloned();
    let runtime = cond("RuntimeReady").context("no RuntimeReady condition")?;
    let network = cond("NetworkReady").context("no NetworkReady condition")?;
    // Containers run (cgroups are there); no CNI config exists here: NetworkReady says why.
    ensure!(runtime.status && runtime.reason.is_empty(), "{runtime:?}");
    ensure!(!network.status && !network.reason.is_empty(), "{network:?}");
    let config: serde_json::Value = serde_json::from_str(
        st.info
            .get("config")
            .context("verbose status has no config")?,
    )?;
    ensure!(
        config["root"].as_str() == Some(d.root.to_str().unwrap_or_default()),
        "verbose config root {:?} != {}",
        config["root"],
        d.root.display()
    );
    ensure!(st.runtime_handlers.iter().any(|h| h.name == "linux"));

    d.finish().await
}

#[tokio::test]
async fn unimplemented_calls_and_bad_input_get_clear_statuses() -> Result<()> {
    let d = Daemon::start(DaemonOpts::default()).await?;
    let mut rt = d.runtime();
    // a call that is not implemented: Unimplemented, with a message saying why
    let err = rt
        .checkpoint_container(v1::CheckpointContainerRequest::default())
        .await
        .expect_err("CheckpointContainer is not implemented");
    ensure!(err.code() == tonic::Code::Unimplemented, "{err:?}");
    ensure!(
        err.message().contains("not implemented"),
        "{}",
        err.message()
    );
    // streaming calls check their request before handing out a URL
    let err = rt
        .exec(v1::ExecRequest::default())
        .await
        .expect_err("an exec needs a container and a command");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = rt
        .update_container_resources(v1::UpdateContainerResourcesRequest::default())
        .await
        .expect_err("an update needs a container");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    // bad input: InvalidArgument / NotFound, and nothing is made
    let err = rt
        .create_container(v1::CreateContainerRequest::default())
        .await
        .expect_err("a container needs a config");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = rt
        .run_pod_sandbox(v1::RunPodSandboxRequest::default())
        .await
        .expect_err("a pod needs a config");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = rt
        .container_status(v1::ContainerStatusRequest {
            container_id: "a".repeat(64),
            verbose: false,
        })
        .await
        .expect_err("unknown container");
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");
    let listed = rt
        .list_containers(v1::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    ensure!(listed.is_empty(), "{listed:?}");

    let mut img = d.image();
    for bad in ["", "Bad//Ref", "busybox:bad tag", "busybox@sha256:1234"] {
        let err = img
            .pull_image(v1::PullImageRequest {
                image: Some(spec(bad)),
                ..Default::default()
            })
            .await
            .expect_err("bad reference must fail");
        ensure!(
            err.code() == tonic::Code::InvalidArgument,
            "pull {bad:?}: {err:?}"
        );
    }
    // Absent images: status is empty, removal is idempotent.
    let st = img
        .image_status(v1::ImageStatusRequest {
            image: Some(spec("busybox:none")),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(st.image.is_none());
    img.remove_image(v1::RemoveImageRequest {
        image: Some(spec("busybox:none")),
    })
    .await?;
    // A bare 64-hex id (what kubelet's image GC and critest send) that matches nothing.
    let zero_id = "0".repeat(64);
    for _ in 0..2 {
        img.remove_image(v1::RemoveImageRequest {
            image: Some(spec(&zero_id)),
        })
        .await?;
    }
    let st = img
        .image_status(v1::ImageStatusRequest {
            image: Some(spec(&zero_id)),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(st.image.is_none());
    let listed = img
        .list_images(v1::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    ensure!(listed.is_empty(), "{listed:?}");
    // Nothing half-made: no blob, snapshot or ingest file after the failures.
    for sub in ["blobs/sha256", "snapshots", "ingest"] {
        let p = d.images_dir().join(sub);
        if p.exists() {
            let n = std::fs::read_dir(&p)?.count();
            ensure!(n == 0, "{} has {n} entries after failed pulls", p.display());
        }
    }
    d.finish().await
}

#[tokio::test]
async fn live_socket_and_locked_root_are_refused_stale_socket_replaced() -> Result<()> {
    let mut d = Daemon::start(DaemonOpts::default()).await?;
    let other = tempfile::tempdir()?;
    let p = |s: &str| other.path().join(s).display().to_string();
    let sock = d.socket.display().to_string();
    let root = d.root.display().to_string();

    // Same socket, other root: the live socket must not be stolen.
    let out = daemon_refuses(&[
        "--root",
        &p("root"),
        "--state",
        &p("state"),
        "--address",
        &sock,
    ])?;
    ensure!(stderr(&out).contains("in use"), "stderr: {}", stderr(&out));
    // Same root, other socket: the root lock refuses a second daemon.
    let out = daemon_refuses(&[
        "--root",
        &root,
        "--state",
        &p("state2"),
        "--address",
        &p("s2.sock"),
    ])?;
    ensure!(
        stderr(&out).contains("another unicri daemon"),
        "stderr: {}",
        stderr(&out)
    );
    ensure!(
        !Path::new(&p("s2.sock")).exists(),
        "refused daemon left its socket"
    );
    // The first daemon still serves.
    d.runtime().version(v1::VersionRequest::default()).await?;

    // kill -9 leaves a stale socket file; the next start replaces it.
    d.kill9();
    ensure!(d.socket.exists(), "expected a stale socket after kill -9");
    d.restart().await?;
    d.runtime().version(v1::VersionRequest::default()).await?;
    d.finish().await
}

#[tokio::test]
async fn config_errors_name_the_key_and_json_logs_are_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |s: &str| dir.path().join(s).display().to_string();
    std::fs::write(p("bad.toml"), "[registry]\nbogus_key = 1\n")?;
    let out = daemon_refuses(&[
        "--config",
        &p("bad.toml"),
        "--root",
        &p("r"),
        "--address",
        &p("s.sock"),
    ])?;
    ensure!(
        stderr(&out).contains("bogus_key"),
        "stderr: {}",
        stderr(&out)
    );
    ensure!(!Path::new(&p("s.sock")).exists());

    let out = daemon_refuses(&[
        "--config",
        &p("missing.toml"),
        "--root",
        &p("r"),
        "--address",
        &p("s.sock"),
    ])?;
    ensure!(
        stderr(&out).contains("missing.toml"),
        "stderr: {}",
        stderr(&out)
    );

    // JSON logs: every line the daemon writes parses as JSON with a level and a message.
    std::fs::write(p("ok.toml"), "")?;
    let mut child = Command::new(unicri_bin())
        .args([
            "daemon",
            "--config",
            &p("ok.toml"),
            "--root",
            &p("r"),
            "--state",
            &p("st"),
        ])
        .args(["--address", &p("j.sock"), "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&p("j.sock")).exists() {
        ensure!(Instant::now() < deadline, "json daemon did not start");
        ensure!(child.try_wait()?.is_none(), "json daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "SIGTERM must exit 0, got {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() >= 2, "too few log lines: {text}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("not json: {l}"))?;
        ensure!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "line {l}"
        );
    }
    ensure!(text.contains("SIGTERM"), "shutdown not logged: {text}");
    ensure!(
        !Path::new(&p("j.sock")).exists(),
        "socket left after SIGTERM"
    );
    Ok(())
}

#[tokio::test]
async fn expired_client_deadline_is_deadline_exceeded() -> Result<()> {
    // A "registry" that accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = hole.local_addr()?;
    let d = Daemon::start(DaemonOpts::default().hosts_toml(
        "blackhole.test",
        &format!("[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    ))
    .await?;
    let mut req = tonic::Request::new(v1::PullImageRequest {
        image: Some(spec("blackhole.test/x:1")),
        ..Default::default()
    });
    // Only sets the grpc-timeout header: the status below is the server's answer.
    req.set_timeout(Duration::from_millis(300));
    let err = d
        .image()
        .pull_image(req)
        .await
        .expect_err("pull cannot finish");
    ensure!(err.code() == tonic::Code::DeadlineExceeded, "{err:?}");
    // The daemon is still healthy afterwards.
    d.runtime().version(v1::VersionRequest::default()).await?;
    drop(hole);
    d.finish().await
}
