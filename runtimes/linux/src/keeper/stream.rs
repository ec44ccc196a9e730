//! The keeper's streaming requests: an exec with live stdio (pipes or a terminal made in the
//! container) and an attach to a container's stdio. After the `Ok` line both directions carry
//! [`frame`]s. The daemon closing the connection kills an exec (the client went away) and only
//! detaches an attach.

use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::KeeperPaths;
use super::fdio::{self, ConsoleSocket, FdIo};
use super::proto::{ExecStreamRequest, Response, frame};
use super::server::{
    ExecSpawned, ExecStdio, Shared, error, not_found, reap, respond, spawn_process,
};

/// Output still held open by a background process is not waited for long after the exit.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

type Rd = BufReader<OwnedReadHalf>;

/// Writes frames queued from several tasks, in order.
fn frame_writer(mut wr: OwnedWriteHalf) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(32);
    let task = tokio::task::spawn_local(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    (tx, task)
}

fn pump(fd: Rc<FdIo>, kind: u8, out: mpsc::Sender<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match fd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(frame::encode(kind, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

async fn running(state: &Shared, id: &str) -> Result<(), Response> {
    match state.borrow().containers.get(id) {
        None => Err(not_found(id)),
        Some(e) if e.record.info.state != "running" => Err(error(
            "failed_precondition",
            format!("container {id} is not running"),
        )),
        Some(_) => Ok(()),
    }
}

/// Starts the process; with a terminal, also receives its master from the console socket.
/// `register` runs right after the spawn, before any await: the process may exit at once, and
/// the reaper (which runs at awaits) must find its waiter.
async fn start(
    req: &ExecStreamRequest,
    paths: &KeeperPaths,
    register: impl FnOnce(i32),
) -> Result<(ExecSpawned, Option<FdIo>), String> {
    if !req.tty {
        let spawned = spawn_process(
            &req.id,
            &req.argv,
            &ExecStdio::Pipes { stdin: req.stdin },
            paths,
        )?;
        register(spawned.pid);
        return Ok((spawned, None));
    }
    let dir = paths
        .socket
        .parent()
        .ok_or_else(|| "keeper socket has no directory".to_string())?;
    let console = ConsoleSocket::bind(dir)?;
    let spawned = spawn_process(
        &req.id,
        &req.argv,
        &ExecStdio::Tty {
            console: console.path().to_path_buf(),
        },
        paths,
    )?;
    register(spawned.pid);
    match console.receive().await {
        Ok(fd) => {
            let master = FdIo::new(fd).map_err(|e| format!("terminal master: {e}"))?;
            Ok((spawned, Some(master)))
        }
        Err(e) => {
            let _ = kill(Pid::from_raw(spawned.pid), Signal::SIGKILL);
            Err(format!("the exec's terminal: {e}"))
        }
    }
}

/// [`super::proto::Request::ExecStream`].
pub(super) async fn exec(
    req: ExecStreamRequest,
    state: &Shared,
    paths: &KeeperPaths,
    mut rd: Rd,
    mut wr: OwnedWriteHalf,
) -> std::io::Result<()> {
    if let Err(resp) = running(state, &req.id).await {
        return respond(&mut wr, &resp).await;
    }
    if req.argv.is_empty() {
        return respond(&mut wr, &error("invalid_argument", "exec needs a command")).await;
    }
    let (exit_tx, exit_rx) = oneshot::channel();
    let register = |pid: i32| {
        state.borrow_mut().execs.insert(pid, exit_tx);
    };
    let (spawned, master) = match start(&req, paths, register).await {
        Ok(x) => x,
        Err(message) => return respond(&mut wr, &error("internal", message)).await,
    };
    let pid = spawned.pid;
    // it may have exited (unreaped) before it was registered
    reap(state, paths);
    respond(&mut wr, &Response::Ok).await?;
    tracing::debug!(id = %req.id, pid, tty = req.tty, "exec stream started");

    let (frames, writer) = frame_writer(wr);
    let master = master.map(Rc::new);
    let mut pumps = Vec::new();
    let stdin: Option<Rc<FdIo>> = match &master {
        Some(m) => {
            pumps.push(pump(m.clone(), frame::STDOUT, frames.clone()));
            req.stdin.then(|| m.clone())
        }
        None => {
            for (fd, kind) in [
                (spawned.stdout, frame::STDOUT),
                (spawned.stderr, frame::STDERR),
            ] {
                if let Some(fd) = fd.and_then(|f| FdIo::new(f).ok()) {
                    pumps.push(pump(Rc::new(fd), kind, frames.clone()));
                }
            }
            spawned.stdin.and_then(|f| FdIo::new(f).ok()).map(Rc::new)
        }
    };
    let tty = master.clone();
    let input = tokio::task::spawn_local(async move {
        let mut stdin = stdin;
        loop {
            match frame::read(&mut rd).await {
                Ok(Some((frame::STDIN, data))) => {
                    if let Some(s) = &stdin
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Ok(Some((frame::STDIN_CLOSE, _))) => {
                    // a terminal has no "close": it gets what a user's ^D sends
                    if let (Some(s), Some(_)) = (&stdin, &tty) {
                        let _ = s.write_all(b"\x04").await;
                    }
                    stdin = None;
                }
                Ok(Some((frame::RESIZE, d))) if d.len() == 4 => {
                    if let Some(m) = &tty {
                        let (w, h) = (
                            u16::from_be_bytes([d[0], d[1]]),
                            u16::from_be_bytes([d[2], d[3]]),
                        );
                        let _ = fdio::set_winsize(m.raw(), w, h);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // the daemon (and so the client) is gone: so is the process
                    tracing::debug!(pid, "exec stream closed by the daemon: killing the process");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return;
                }
            }
        }
    });
    let code = exit_rx.await.unwrap_or(255);
    tracing::debug!(pid, code, "exec stream process exited");
    drop(master);
    let _ = tokio::time::timeout(OUTPUT_GRACE, futures_join(pumps)).await;
    let _ = frames
        .send(frame::encode(frame::EXIT, &code.to_be_bytes()))
        .await;
    drop(frames);
    let _ = writer.await;
    input.abort();
    Ok(())
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// [`super::proto::Request::Attach`].
pub(super) async fn attach(
    id: &str,
    want_stdin: bool,
    state: &Shared,
    mut rd: Rd,
    mut wr: OwnedWriteHalf,
) -> std::io::Result<()> {
    if let Err(resp) = running(state, id).await {
        return respond(&mut wr, &resp).await;
    }
    let Some(output) = state
        .borrow()
        .containers
        .get(id)
        .and_then(|e| e.output.clone())
    else {
        let msg = format!(
            "the output of container {id} is not held by this keeper (it was restarted since the \
             container started), so it cannot be attached"
        );
        return respond(&mut wr, &error("failed_precondition", msg)).await;
    };
    let mut sub = output.tx.subscribe();
    let ended = output.open.get() == 0;
    respond(&mut wr, &Response::Ok).await?;
    let (frames, writer) = frame_writer(wr);

    let (gone_tx, mut gone_rx) = oneshot::channel::<()>();
    let input_state = state.clone();
    let input_id = id.to_string();
    let input = tokio::task::spawn_local(async move {
        loop {
            match frame::read(&mut rd).await {
                Ok(Some((frame::STDIN, data))) if want_stdin => {
                    let stdin = input_state
                        .borrow()
                        .containers
                        .get(&input_id)
                        .and_then(|e| e.stdin.clone());
                    if let Some(s) = stdin {
                        let _ = s.write_all(&data).await;
                    }
                }
                Ok(Some((frame::STDIN_CLOSE, _))) if want_stdin => {
                    let (stdin, tty, once) = match input_state.borrow().containers.get(&input_id) {
                        Some(e) => (e.stdin.clone(), e.tty.is_some(), e.stdin_once),
                        None => (None, false, false),
                    };
                    // without stdin_once the container's stdin outlives the attach; with it,
                    // a terminal (which has no "close") gets what a user's ^D sends
                    if let (Some(s), true, true) = (&stdin, tty, once) {
                        let _ = s.write_all(b"\x04").await;
                    }
                    if once && let Some(e) = input_state.borrow_mut().containers.get_mut(&input_id)
                    {
                        tracing::debug!(id = %input_id, "attach closed stdin (stdin_once)");
                        e.stdin = None;
                    }
                }
                Ok(Some((frame::RESIZE, d))) if d.len() == 4 => {
                    let tty = input_state
                        .borrow()
                        .containers
                        .get(&input_id)
                        .and_then(|e| e.tty.clone());
                    if let Some(m) = tty {
                        let (w, h) = (
                            u16::from_be_bytes([d[0], d[1]]),
                            u16::from_be_bytes([d[2], d[3]]),
                        );
                        let _ = fdio::set_winsize(m.raw(), w, h);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let _ = gone_tx.send(());
                    return;
                }
            }
        }
    });
    if !ended {
        loop {
            tokio::select! {
                msg = sub.recv() => match msg {
                    Ok((frame::EXIT, _)) | Err(broadcast::error::RecvError::Closed) => break,
                    Ok((kind, data)) => {
                        if frames.send(frame::encode(kind, &data)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(%id, skipped = n, "attach too slow: output skipped");
                    }
                },
                _ = &mut gone_rx => {
                    input.abort();
                    return Ok(());
                }
            }
        }
    }
    // the output ended: the exit code follows shortly
    let exited = state
        .borrow()
        .containers
        .get(id)
        .map(|e| e.exited.subscribe());
    if let Some(mut rx) = exited {
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|x| *x)).await;
    }
    let code = state
        .borrow()
        .containers
        .get(id)
        .and_then(|e| e.record.info.exit.as_ref().map(|x| x.code))
        .unwrap_or(0);
    let _ = frames
        .send(frame::encode(frame::EXIT, &code.to_be_bytes()))
        .await;
    drop(frames);
    let _ = writer.await;
    input.abort();
    Ok(())
}
