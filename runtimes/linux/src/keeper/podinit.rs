//! The minimal init of a pod that shares one PID namespace between its containers
//! (`shareProcessNamespace`): the only per-pod process the `linux` backend has (ADR 0005).
//!
//! The keeper forks twice: the first child unshares a new PID namespace and forks the init (PID 1
//! there), reports its pid through a pipe and exits; the init is re-parented to the keeper (a
//! child subreaper). The init execs nothing: it is a copy-on-write copy of the keeper that closes
//! every inherited descriptor and reaps orphans until it is killed, so it costs a few pages.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe2, read, write};

/// Forks the pod init; returns its pid (in the keeper's PID namespace).
///
/// Must be called from the single-threaded keeper: it forks.
pub fn spawn() -> std::io::Result<i32> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the keeper runs one thread (a current-thread tokio runtime, no blocking pool), so no
    // other thread can hold a lock the child would need; the child only makes raw syscalls
    // (unshare, fork, write, waitpid, sigwait, close) and leaves through `_exit`.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < buf.len() {
                match read(rd.as_raw_fd(), &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // reap the intermediate child
            while let Err(Errno::EINTR) = waitpid(child, None) {}
            if got < buf.len() {
                return Err(std::io::Error::other(
                    "pod init: the intermediate process reported no pid",
                ));
            }
            Ok(i32::from_le_bytes(buf))
        }
        ForkResult::Child => {
            drop(rd);
            let code = match intermediate(wr) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: `_exit` ends the forked child without running the parent's atexit
            // handlers or flushing its buffers, which belong to the keeper.
            unsafe { nix::libc::_exit(code) }
        }
    }
}

fn intermediate(wr: OwnedFd) -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWPID)?;
    // SAFETY: this process is a single-threaded fork of the keeper (see `spawn`); the child
    // below runs `init_loop`, which only makes raw syscalls and never returns.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            write(wr.as_fd(), &child.as_raw().to_le_bytes())?;
            Ok(())
        }
        ForkResult::Child => {
            drop(wr);
            init_loop()
        }
    }
}

/// PID 1 of the pod's PID namespace: closes inherited descriptors and reaps until killed.
fn init_loop() -> ! {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|fd: &i32| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    let _ = nix::sys::prctl::set_name(c"unicri-pod-init");
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = set.wait();
    }
}
