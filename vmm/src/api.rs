//! The VMM's control channel: a unix socket speaking JSON lines, one request per line, one
//! answer per line. The daemon connects to it (again after its own restart: the socket lives as
//! long as the VM).
//!
//! Requests (`{"op": ...}`): `state`, `pause`, `resume`, `shutdown`, `metrics`,
//! `drive` (`{"op":"drive","id":"rootfs1","path":"/x.img" | null,"read_only":true}`: attach,
//! swap or eject the media of a block device while the VM runs), `drives`.
//! Answers: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::vm::Control;

/// Media operations on the VM's block devices, by id.
pub trait Drives: Send + Sync {
    /// Attaches (`Some`), swaps or ejects (`None`) the media of drive `id`.
    fn set_media(&self, id: &str, path: Option<&Path>, read_only: bool) -> Result<(), String>;
    /// Every drive: id, media path, read-only, capacity in bytes.
    fn list(&self) -> Vec<DriveInfo>;
}

/// One drive as `drives` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveInfo {
    /// Its id.
    pub id: String,
    /// The media file, if any.
    pub path: Option<PathBuf>,
    /// Read-only.
    pub read_only: bool,
    /// Capacity in bytes.
    pub capacity: u64,
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Running or paused, vCPUs, uptime.
    State,
    /// Park every vCPU.
    Pause,
    /// Let them run again.
    Resume,
    /// End the VM (`VmExit::Stopped`).
    Shutdown,
    /// Exit counters, uptime, the VMM's RSS.
    Metrics,
    /// Media of a block device.
    Drive {
        /// Drive id.
        id: String,
        /// New media; `None` ejects.
        path: Option<PathBuf>,
        /// Read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// Every drive.
    Drives,
}

/// Serves the control channel at `path` on a thread of its own (one connection at a time is
/// plenty: the daemon is the only client).
pub fn serve(
    path: &Path,
    ctl: Arc<Control>,
    drives: Option<Arc<dyn Drives>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = handle(conn, &ctl, drives.as_deref()) {
                    tracing::debug!(error = %e, "control connection ended");
                }
            }
        })
}

fn handle(conn: UnixStream, ctl: &Control, drives: Option<&dyn Drives>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(req, ctl, drives),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut bytes = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        out.write_all(&bytes)?;
    }
    Ok(())
}

/// The answer to one request.
pub fn answer(req: Request, ctl: &Control, drives: Option<&dyn Drives>) -> Value {
    match req {
        Request::State => json!({
            "ok": true,
            "state": if ctl.is_paused() { "paused" } else { "running" },
            "uptime_ms": ctl.uptime().as_millis() as u64,
        }),
        Request::Pause => {
            if ctl.pause() {
                json!({"ok": true, "state": "paused"})
            } else {
                json!({"ok": false, "error": "not every vCPU parked within 2 s"})
            }
        }
        Request::Resume => {
            ctl.resume();
            json!({"ok": true, "state": "running"})
        }
        Request::Shutdown => {
            ctl.shutdown();
            json!({"ok": true, "state": "stopping"})
        }
        Request::Metrics => json!({
            "ok": true,
            "uptime_ms": ctl.uptime().as_millis() as u64,
            "exits": {
                "io": ctl.exits.io.load(Ordering::Relaxed),
                "mmio": ctl.exits.mmio.load(Ordering::Relaxed),
                "intr": ctl.exits.intr.load(Ordering::Relaxed),
            },
            "rss_kib": rss_kib(),
        }),
        Request::Drive {
            id,
            path,
            read_only,
        } => match drives {
            Some(d) => match d.set_media(&id, path.as_deref(), read_only) {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            None => json!({"ok": false, "error": "this VM has no drives"}),
        },
        Request::Drives => json!({
            "ok": true,
            "drives": drives.map(|d| d.list()).unwrap_or_default(),
        }),
    }
}

/// The VMM process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ops_are_refused() {
        let r: Request =
            serde_json::from_str(r#"{"op":"drive","id":"d1","path":null}"#).expect("drive");
        assert_eq!(
            r,
            Request::Drive {
                id: "d1".into(),
                path: None,
                read_only: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot-the-host"}"#).is_err());
        let ctl = Control::default();
        let a = answer(
            Request::Drive {
                id: "x".into(),
                path: None,
                read_only: false,
            },
            &ctl,
            None,
        );
        assert_eq!(a["ok"], false);
        let m = answer(Request::Metrics, &ctl, None);
        assert!(m["rss_kib"].as_u64().unwrap_or(0) > 0, "{m}");
    }
}
