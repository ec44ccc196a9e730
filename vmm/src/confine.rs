//! Confinement of the VMM process, in-process (the ideas of Firecracker's jailer and
//! seccompiler, without a separate jailer binary): cgroups, privilege drop, seccomp.
//!
//! # Order (what `unicri-vmm` does)
//!
//! 1. [`Confinement::join_cgroups`] — before the VM is built, so that guest memory touched while
//!    loading the kernel and KVM's own accounted allocations are charged to the VM's cgroups
//!    (the jailer too joins them before Firecracker starts). Creates the cgroup directories if
//!    missing and writes the pid to `cgroup.procs` (cgroup v1: one directory per controller,
//!    e.g. `/sys/fs/cgroup/memory/<vm>` and `/sys/fs/cgroup/cpu/<vm>`; v2: one directory). A new
//!    v1 `cpuset` cgroup inherits `cpuset.cpus`/`cpuset.mems` from its parent (an empty one
//!    refuses tasks).
//! 2. `Vm::new`: opens `/dev/kvm`, the kernel, the initrd, disks… as root.
//! 3. [`Confinement::drop_privileges`] — `setgroups([])`, `setgid`, `setuid` (real, effective
//!    and saved ids: root cannot be regained, capabilities are gone), then
//!    `PR_SET_NO_NEW_PRIVS` and `PR_SET_DUMPABLE 0` (the VMM's memory is the guest's: no core
//!    dumps of it, no ptrace by same-uid processes). Already open fds (`/dev/kvm`, the VM and
//!    vCPU fds, stdio, disks, sockets) keep working: access is checked at open.
//! 4. [`Confinement::apply_seccomp`] — the allowlist below, installed with
//!    `SECCOMP_FILTER_FLAG_TSYNC`, so every thread that already exists gets it, and every thread
//!    spawned later (vCPUs, device threads, the control channel) inherits it through `clone`.
//!    Nothing is needed from `Vm::run`: no hook.
//! 5. `Vm::run`.
//!
//! [`Confinement::apply_early`] is 1 + 3 for callers that build the VM first.
//!
//! # The seccomp allowlist (x86_64)
//!
//! Derived from `strace -f` of `unicri-vmm` booting the test guests (1 and 2 vCPUs, everything
//! after `Vm::new`), from Firecracker's `vmm`/`vcpu` filters
//! (`resources/seccomp/x86_64-unknown-linux-musl.json`), and from what the virtio devices and
//! the control channel need at run time (they start threads and open sockets/files then).
//!
//! * I/O on open fds: `read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2
//!   lseek fsync fdatasync fallocate close fstat newfstatat statx`; `openat` without `O_CREAT`
//!   (drive media swaps, `/proc/self/status` for metrics); `fcntl` with `F_GETFD F_SETFD F_GETFL
//!   F_SETFL F_DUPFD_CLOEXEC` only.
//! * `ioctl` by request only: `KVM_RUN`, `KVM_IRQ_LINE`, `FIONBIO` (non-blocking sockets).
//! * Polling and events: `epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 poll ppoll
//!   eventfd2`.
//! * Unix sockets (vsock backends, the control channel): `socket` and `socketpair` with
//!   `AF_UNIX` only, `connect accept4 recvfrom sendto recvmsg sendmsg shutdown`,
//!   `getsockopt`/`setsockopt` at `SOL_SOCKET`. No `bind`/`listen`: listeners are bound before.
//! * Memory: `brk munmap mremap`; `mmap`/`mprotect` without `PROT_EXEC` (no new code can be
//!   mapped); `madvise(MADV_DONTNEED)` (glibc frees thread stacks so).
//! * Threads: `clone` with `CLONE_THREAD` only (threads, never processes); `clone3` answers
//!   `ENOSYS` (its flags are in memory the filter cannot read; glibc then falls back to
//!   `clone`); `set_robust_list rseq gettid getpid sched_getaffinity sched_yield`,
//!   `prctl(PR_SET_NAME)`, `futex` with the `WAIT`/`WAKE` (+`_BITSET`, `_PRIVATE`,
//!   `_CLOCK_REALTIME`) operations only, `exit exit_group`.
//! * Signals: `rt_sigaction` and `tgkill` for `SIGRTMIN` (the vCPU kick) and `SIGABRT` (abort
//!   on a panic) only (`rt_sigaction` also for glibc's own signals 32 and 33, whose handlers it
//!   installs at the first `pthread_create`), `rt_sigprocmask rt_sigreturn sigaltstack
//!   restart_syscall`.
//! * Time and randomness: `clock_gettime clock_getres gettimeofday clock_nanosleep nanosleep
//!   getrandom`.
//! * Answered `EPERM` (harmless, not fatal): `unlink`, `unlinkat` (a vsock device removes its
//!   socket file when dropped, as the VMM exits; the file stays for the caller to remove).
//!
//! `clone3` and the `EPERM` ones are answered by small filters installed before the allowlist
//! (seccomp keeps the strictest answer of all filters: their `ERRNO` beats its `ALLOW`).
//!
//! Anything else (`execve`, `fork`, `mount`, `ptrace`, `socket(AF_INET)`, `open(O_CREAT)`,
//! `bind`, `setuid`, other ioctls…) kills the whole process (`SECCOMP_RET_KILL_PROCESS`:
//! the VMM dies with `SIGSYS`, the kernel's audit log names the syscall; `--no-seccomp` under
//! `strace -f` finds what is missing). `SIGSYS` does not dump core: the process is not dumpable.
//! A syscall of another ABI (i386 `int 0x80`, x32) is killed too.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What went wrong while confining the process.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// A cgroup could not be created, set up or joined.
    #[error("cgroup {dir}: {what}: {source}")]
    Cgroup {
        /// The cgroup directory.
        dir: PathBuf,
        /// The step.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The privilege drop failed (nothing after the failing step was done).
    #[error("drop privileges: {what}: {source}")]
    Privileges {
        /// The step.
        what: &'static str,
        /// The cause.
        source: nix::Error,
    },
    /// The confinement asked for cannot be honoured.
    #[error("confinement: {0}")]
    Config(String),
    /// The seccomp filter could not be compiled or installed.
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
}

/// How the VMM process is confined. [`Default`]: no cgroup, no privilege drop, seccomp on
/// (Firecracker-like: the filter is opt-out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// cgroup directories to join (created if missing): cgroup v1, one per controller
    /// hierarchy (`/sys/fs/cgroup/memory/<vm>`, `/sys/fs/cgroup/cpu/<vm>`, …); cgroup v2, one
    /// directory (a leaf: v2 refuses processes in a cgroup that has controllers enabled for its
    /// children).
    pub cgroups: Vec<PathBuf>,
    /// The user to run as after the VM is built; needs `gid` too.
    pub uid: Option<u32>,
    /// The group to run as (supplementary groups are cleared).
    pub gid: Option<u32>,
    /// Install the seccomp allowlist.
    pub seccomp: bool,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            cgroups: Vec::new(),
            uid: None,
            gid: None,
            seccomp: true,
        }
    }
}

impl Confinement {
    /// Joins the cgroups, then drops privileges: for callers that build the VM before both.
    /// `unicri-vmm` joins the cgroups before building the VM instead (see the module docs).
    pub fn apply_early(&self) -> Result<(), ConfineError> {
        self.join_cgroups()?;
        self.drop_privileges()
    }

    /// Moves the whole process (every thread) into each of [`Confinement::cgroups`].
    pub fn join_cgroups(&self) -> Result<(), ConfineError> {
        let pid = std::process::id();
        for dir in &self.cgroups {
            join_cgroup(dir, pid)?;
        }
        Ok(())
    }

    /// `setgroups([])`, `setgid`, `setuid`, then `PR_SET_NO_NEW_PRIVS` and
    /// `PR_SET_DUMPABLE 0` (also without a uid/gid). Open fds keep working.
    pub fn drop_privileges(&self) -> Result<(), ConfineError> {
        if self.uid.is_some() && self.gid.is_none() {
            return Err(ConfineError::Config(
                "a uid without a gid would keep the root group".into(),
            ));
        }
        let step = |what: &'static str| move |source| ConfineError::Privileges { what, source };
        if self.uid.is_some() || self.gid.is_some() {
            // needs CAP_SETGID: an unprivileged caller keeps its groups (and setgid/setuid
            // below succeed for its own ids only)
            if let Err(e) = nix::unistd::setgroups(&[])
                && Uid::effective().is_root()
            {
                return Err(step("setgroups([])")(e));
            }
        }
        if let Some(gid) = self.gid {
            nix::unistd::setgid(Gid::from_raw(gid)).map_err(step("setgid"))?;
        }
        if let Some(uid) = self.uid {
            nix::unistd::setuid(Uid::from_raw(uid)).map_err(step("setuid"))?;
            if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(ConfineError::Config(format!(
                    "setuid({uid}) succeeded but root could be regained"
                )));
            }
        }
        nix::sys::prctl::set_no_new_privs().map_err(step("PR_SET_NO_NEW_PRIVS"))?;
        nix::sys::prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
        Ok(())
    }

    /// Installs the VMM's seccomp filter on every thread of the process (TSYNC) when
    /// [`Confinement::seccomp`] is set; threads spawned later inherit it.
    pub fn apply_seccomp(&self) -> Result<(), ConfineError> {
        if self.seccomp {
            install_vmm_filter()?;
        }
        Ok(())
    }
}

/// Creates `dir` if missing (a new v1 cpuset cgroup inherits its parent's CPUs and memory
/// nodes) and moves process `pid`, every thread of it, into it.
pub fn join_cgroup(dir: &Path, pid: u32) -> Result<(), ConfineError> {
    let err = |what| {
        move |source| ConfineError::Cgroup {
            dir: dir.to_path_buf(),
            what,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(err("create"))?;
    inherit_cpuset(dir).map_err(err("inherit cpuset.cpus/cpuset.mems"))?;
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(err("write cgroup.procs"))
}

/// cgroup v1 cpuset: a new cgroup has empty `cpuset.cpus`/`cpuset.mems` and refuses tasks
/// (ENOSPC); fill them from the closest ancestor, top-down (what the jailer does). v2 (a
/// `cgroup.controllers` file) inherits by itself.
fn inherit_cpuset(dir: &Path) -> std::io::Result<()> {
    if !dir.join("cpuset.cpus").exists() || dir.join("cgroup.controllers").exists() {
        return Ok(());
    }
    let mut chain: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| d.join("cpuset.cpus").exists())
        .collect();
    chain.reverse();
    for pair in chain.windows(2) {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let child = pair[1].join(file);
            if std::fs::read_to_string(&child)?.trim().is_empty() {
                let parent = std::fs::read_to_string(pair[0].join(file))?;
                match std::fs::write(&child, parent.trim()) {
                    Ok(()) => {}
                    // an ancestor we may not write (not ours): joining will say what is wrong
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// ioctl request numbers the filter lets through.
mod ioctls {
    use kvm_bindings::{KVMIO, kvm_irq_level};

    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, ConfineError> {
    Ok(
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
            .map_err(seccompiler::Error::from)?,
    )
}

/// One rule per value: argument `arg` (32 bits) equal to any of `values`.
fn any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, ConfineError> {
    values
        .iter()
        .map(|&v| {
            Ok(SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?])
                .map_err(seccompiler::Error::from)?)
        })
        .collect()
}

/// One rule: `arg & mask == value`.
fn masked(arg: u8, mask: u64, value: u64) -> Result<Vec<SeccompRule>, ConfineError> {
    Ok(vec![
        SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), value)?])
            .map_err(seccompiler::Error::from)?,
    ])
}

fn arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| ConfineError::Seccomp(seccompiler::Error::Backend(e)))
}

/// Syscalls allowed whatever their arguments.
const ANY_ARGS: &[libc::c_long] = &[
    // I/O on open fds
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    // polling and events
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    // unix sockets (socket/socketpair themselves are AF_UNIX-only below)
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    // memory
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    // threads
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // signals
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // time, randomness
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// glibc's internal real-time signals (below the `SIGRTMIN` it reports).
const GLIBC_SIGCANCEL: u64 = 32;
const GLIBC_SIGSETXID: u64 = 33;

/// The allowlist: syscall → rules (empty: any arguments), default `KILL_PROCESS`.
fn allowlist() -> Result<SeccompFilter, ConfineError> {
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        ANY_ARGS.iter().map(|&nr| (nr, Vec::new())).collect();
    let sigrtmin = libc::SIGRTMIN() as u64;
    let sigabrt = libc::SIGABRT as u64;
    let futex_ops = [
        libc::FUTEX_WAIT,
        libc::FUTEX_WAKE,
        libc::FUTEX_WAIT_BITSET,
        libc::FUTEX_WAKE_BITSET,
    ]
    .into_iter()
    .flat_map(|op| {
        [
            op,
            op | libc::FUTEX_PRIVATE_FLAG,
            op | libc::FUTEX_CLOCK_REALTIME,
            op | libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME,
        ]
    })
    .map(|op| op as u64)
    .collect::<Vec<_>>();
    let conditional: Vec<(libc::c_long, Vec<SeccompRule>)> = vec![
        (
            libc::SYS_ioctl,
            any_of(
                1,
                &[ioctls::KVM_RUN(), ioctls::KVM_IRQ_LINE(), libc::FIONBIO],
            )?,
        ),
        // no new files
        (libc::SYS_openat, masked(2, libc::O_CREAT as u64, 0)?),
        (
            libc::SYS_fcntl,
            any_of(
                1,
                &[
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                ],
            )?,
        ),
        (libc::SYS_socket, any_of(0, &[libc::AF_UNIX as u64])?),
        (libc::SYS_socketpair, any_of(0, &[libc::AF_UNIX as u64])?),
        (libc::SYS_getsockopt, any_of(1, &[libc::SOL_SOCKET as u64])?),
        (libc::SYS_setsockopt, any_of(1, &[libc::SOL_SOCKET as u64])?),
        // no executable mappings
        (libc::SYS_mmap, masked(2, libc::PROT_EXEC as u64, 0)?),
        (libc::SYS_mprotect, masked(2, libc::PROT_EXEC as u64, 0)?),
        (libc::SYS_madvise, any_of(2, &[libc::MADV_DONTNEED as u64])?),
        // threads only, never a new process
        (
            libc::SYS_clone,
            masked(0, libc::CLONE_THREAD as u64, libc::CLONE_THREAD as u64)?,
        ),
        (libc::SYS_prctl, any_of(0, &[libc::PR_SET_NAME as u64])?),
        (libc::SYS_futex, any_of(1, &futex_ops)?),
        // glibc installs its SIGCANCEL (32) / SIGSETXID (33) handlers at the first
        // pthread_create, which is the first vCPU thread
        (
            libc::SYS_rt_sigaction,
            any_of(0, &[sigrtmin, sigabrt, GLIBC_SIGCANCEL, GLIBC_SIGSETXID])?,
        ),
        (libc::SYS_tgkill, any_of(2, &[sigrtmin, sigabrt])?),
    ];
    rules.extend(conditional);
    rules.extend(ERRNO_ANSWERS.iter().map(|&(nr, _)| (nr, Vec::new())));
    Ok(SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )
    .map_err(seccompiler::Error::from)?)
}

/// Syscalls the allowlist lets through only for a filter installed before it to answer with
/// an errno instead (seccomp runs every filter and keeps the strictest answer: `ERRNO` wins
/// over `ALLOW`, `KILL_PROCESS` over both).
const ERRNO_ANSWERS: &[(libc::c_long, i32)] = &[
    // its flags are in memory the filter cannot read: glibc falls back to clone, which can
    (libc::SYS_clone3, libc::ENOSYS),
    // files are not removed at run time (a device's drop removing its socket, as the VMM
    // exits): the call fails harmlessly instead of killing the VMM
    (libc::SYS_unlink, libc::EPERM),
    (libc::SYS_unlinkat, libc::EPERM),
];

/// The VMM's filters, in installation order: one per errno of [`ERRNO_ANSWERS`] (everything
/// else allowed: the allowlist decides), then the allowlist (`KILL_PROCESS` by default). The
/// allowlist goes last because installing a filter takes `prctl(PR_SET_NO_NEW_PRIVS)` and
/// `seccomp`, which it forbids.
pub fn vmm_filters() -> Result<Vec<BpfProgram>, ConfineError> {
    let mut errnos: Vec<i32> = ERRNO_ANSWERS.iter().map(|&(_, e)| e).collect();
    errnos.sort_unstable();
    errnos.dedup();
    let mut progs = Vec::with_capacity(errnos.len() + 1);
    for errno in errnos {
        let rules = ERRNO_ANSWERS
            .iter()
            .filter(|&&(_, e)| e == errno)
            .map(|&(nr, _)| (nr, Vec::new()))
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch()?,
        )
        .map_err(seccompiler::Error::from)?;
        progs.push(BpfProgram::try_from(filter).map_err(seccompiler::Error::from)?);
    }
    progs.push(BpfProgram::try_from(allowlist()?).map_err(seccompiler::Error::from)?);
    Ok(progs)
}

/// Installs [`vmm_filters`] on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`);
/// sets `PR_SET_NO_NEW_PRIVS` first, as seccomp requires.
pub fn install_vmm_filter() -> Result<(), ConfineError> {
    for prog in vmm_filters()? {
        seccompiler::apply_filter_all_threads(&prog)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(ioctls::KVM_RUN(), 0xae80);
        assert_eq!(ioctls::KVM_IRQ_LINE(), 0x4008_ae61);
    }

    #[test]
    fn the_filters_compile() {
        let f = vmm_filters().expect("filters");
        assert_eq!(f.len(), 3);
        assert!(f.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn a_uid_needs_a_gid() {
        let c = Confinement {
            uid: Some(65534),
            ..Confinement::default()
        };
        assert!(matches!(c.drop_privileges(), Err(ConfineError::Config(_))));
    }
}
