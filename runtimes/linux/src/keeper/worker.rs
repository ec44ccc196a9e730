//! Short-lived workers: the keeper forks one per container create, so libcontainer's blocking
//! create (namespaces, cgroups, rootfs, the init handshake) of many containers runs in parallel
//! while the keeper keeps serving. The container's init is created with `CLONE_PARENT` from the
//! worker's intermediate process, so it is the worker's child; when the worker exits it is
//! re-parented to the keeper, a child subreaper — the keeper stays the parent of every container.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, Pid, fork, pipe2, write};

/// Forks a worker that runs `work` and writes its result to a pipe: `P<pid>` or `E<message>`.
/// Returns the worker's pid and the pipe's read end. `work` runs in the child only.
///
/// Must be called from the single-threaded keeper: it forks.
pub fn fork_worker<F>(work: F) -> std::io::Result<(Pid, OwnedFd)>
where
    F: FnOnce() -> Result<i32, String>,
{
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the keeper runs one thread (a current-thread tokio runtime, no blocking pool), so
    // no lock can be held by another thread at the fork; the child runs `work` (libcontainer,
    // which itself forks from this then single-threaded process), writes one line to the pipe
    // and leaves through `_exit` without touching the parent's runtime.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(wr);
            Ok((child, rd))
        }
        ForkResult::Child => {
            drop(rd);
            let line = match work() {
                Ok(pid) => format!("P{pid}\n"),
                Err(message) => format!("E{}\n", message.replace('\n', " ")),
            };
            let mut bytes = line.as_bytes();
            while !bytes.is_empty() {
                match write(wr.as_fd(), bytes) {
                    Ok(n) => bytes = &bytes[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            // SAFETY: `_exit` ends the forked worker without running the keeper's atexit
            // handlers or destructors (its runtime, its sockets), which belong to the keeper.
            unsafe { nix::libc::_exit(0) }
        }
    }
}

/// Parses a worker's line.
pub fn parse_result(line: &str) -> Result<i32, String> {
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix('P') {
        pid.parse()
            .map_err(|e| format!("create worker sent a bad pid {pid:?}: {e}"))
    } else if let Some(msg) = line.strip_prefix('E') {
        Err(msg.to_string())
    } else {
        Err("create worker died without a result".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_parse() {
        assert_eq!(parse_result("P42\n"), Ok(42));
        assert_eq!(parse_result("Eno such file"), Err("no such file".into()));
        assert!(parse_result("").is_err());
        assert!(parse_result("Px").is_err());
    }
}
