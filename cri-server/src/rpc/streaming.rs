//! `Exec`, `Attach` and `PortForward`: check the request, register it with the streaming server
//! and answer with its one-time URL. The session itself runs when the client connects to it
//! (see the `unicri-streaming` crate and `crate::streaming`).

use unicri_proto::v1;
use unicri_sandbox::ErrorKind;
use unicri_streaming::{Options, Pending};

use crate::error::CriError;
use crate::server::Cri;

fn register(cri: &Cri, pending: Pending) -> Result<String, CriError> {
    cri.streaming
        .register(pending)
        .map_err(|e| CriError::new(ErrorKind::Unavailable, e.to_string()))
}

fn options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<Options, CriError> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::invalid(
            "one of stdin, stdout and stderr must be requested",
        ));
    }
    if tty && stderr {
        return Err(CriError::invalid(
            "tty and stderr cannot both be requested (a terminal has one output stream)",
        ));
    }
    Ok(Options {
        stdin,
        stdout,
        stderr,
        tty,
    })
}

pub(crate) async fn exec(cri: &Cri, req: v1::ExecRequest) -> Result<v1::ExecResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(CriError::invalid("container id is empty"));
    }
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(CriError::invalid("exec needs a command"));
    }
    let opts = options(req.stdin, req.stdout, req.stderr, req.tty)?;
    let (container_id, _) = cri.containers.running(&req.container_id).await?;
    let url = register(
        cri,
        Pending::Exec {
            container_id,
            cmd: req.cmd,
            opts,
        },
    )?;
    Ok(v1::ExecResponse { url })
}

pub(crate) async fn attach(
    cri: &Cri,
    req: v1::AttachRequest,
) -> Result<v1::AttachResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(CriError::invalid("container id is empty"));
    }
    let opts = options(req.stdin, req.stdout, req.stderr, req.tty)?;
    let (container_id, has_stdin) = cri.containers.running(&req.container_id).await?;
    if req.stdin && !has_stdin {
        return Err(CriError::invalid(format!(
            "container {container_id} was not created with stdin, so attach cannot write to it"
        )));
    }
    let url = register(cri, Pending::Attach { container_id, opts })?;
    Ok(v1::AttachResponse { url })
}

pub(crate) async fn port_forward(
    cri: &Cri,
    req: v1::PortForwardRequest,
) -> Result<v1::PortForwardResponse, CriError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(CriError::invalid("pod sandbox id is empty"));
    }
    let mut ports = Vec::new();
    for p in &req.port {
        let port = u16::try_from(*p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| CriError::invalid(format!("port {p} is not a valid TCP port")))?;
        ports.push(port);
    }
    let pod = cri
        .pods
        .resolve(&req.pod_sandbox_id)
        .await?
        .ok_or_else(|| {
            CriError::not_found(format!("pod sandbox {} not found", req.pod_sandbox_id))
        })?;
    if pod.row.state != crate::pods::READY {
        return Err(CriError::new(
            ErrorKind::FailedPrecondition,
            format!("pod sandbox {} is not ready", pod.row.id),
        ));
    }
    let url = register(
        cri,
        Pending::PortForward {
            pod_id: pod.row.id,
            ports,
        },
    )?;
    Ok(v1::PortForwardResponse { url })
}
