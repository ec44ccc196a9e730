//! The guest keeper (the `linux` keeper in [`paths::KEEPER_DIR`]), run as `/proc/self/exe
//! keeper` and restarted when it dies, and PID 1's reaper (every orphan of the guest is
//! reparented to the agent).

use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use unicri_vm_agent::proto::paths;

/// `keeper` mode: the `linux` keeper, single-threaded, no idle exit.
pub fn run_keeper() -> ExitCode {
    super::init_tracing();
    let cfg = unicri_runtime_linux::keeper::server::KeeperConfig {
        dir: paths::KEEPER_DIR.into(),
        idle_exit: None,
    };
    match unicri_runtime_linux::keeper::server::run(cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            tracing::warn!("another keeper owns {}; exiting", paths::KEEPER_DIR);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "keeper failed");
            ExitCode::FAILURE
        }
    }
}

/// Start the reaper and the keeper's supervisor threads.
pub fn start() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Pid, String)>();
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reap(tx))?;
    std::thread::Builder::new()
        .name("keeper-supervisor".into())
        .spawn(move || supervise(rx))?;
    Ok(())
}

/// Reap every child and orphan; tell the supervisor about each.
fn reap(tx: mpsc::Sender<(Pid, String)>) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) => {
                let _ = tx.send((pid, format!("exit code {code}")));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                let _ = tx.send((pid, format!("signal {sig}")));
            }
            Ok(_) => {}
            Err(nix::Error::ECHILD) => std::thread::sleep(Duration::from_millis(100)),
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waitpid");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Keep one keeper running: start it, wait for the reaper to report its end, start it again
/// (backing off while it keeps failing fast).
fn supervise(rx: mpsc::Receiver<(Pid, String)>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Err(e) = std::fs::create_dir_all(paths::KEEPER_DIR) {
            tracing::error!(error = %e, dir = paths::KEEPER_DIR, "cannot create the keeper directory");
        }
        let started = Instant::now();
        let child = Command::new("/proc/self/exe")
            .arg("keeper")
            .stdin(Stdio::null())
            .spawn();
        let pid = match child {
            // the child is reaped by the reaper thread, never through `Child`
            Ok(c) => Pid::from_raw(c.id() as i32),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the keeper");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(pid = pid.as_raw(), "keeper started");
        let why = loop {
            match rx.recv() {
                Ok((p, why)) if p == pid => break why,
                Ok(_) => {}
                Err(_) => return,
            }
        };
        tracing::warn!(pid = pid.as_raw(), status = %why, "keeper ended; restarting it");
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
