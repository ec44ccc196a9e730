//! Seccomp profiles: the runtime default (Docker's/containerd's default profile) and `Localhost`
//! profiles read from the node, both turned into an OCI [`LinuxSeccomp`] for one container.
//!
//! Profiles are in Docker's format (a superset of the OCI `linux.seccomp` object): rules may carry
//! `includes`/`excludes` conditions on capabilities, architectures and kernel versions, and an
//! `archMap` picks the architectures from the node's. [`to_oci`] evaluates those conditions for
//! the container's bounding capability set and the node ([`Target`]), as moby and containerd do.
//!
//! libcontainer 0.7 reads `SCMP_CMP_MASKED_EQ` arguments the other way round from runc (it uses
//! `valueTwo` as the mask and `value` as the datum; runc, libseccomp-golang and Docker's profiles
//! use `value` as the mask); [`to_oci`] swaps the two for that operator so the filter means what
//! the profile says. Drop the swap together with a libcontainer that follows runc.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::{Deserialize, Deserializer};
use unicri_sandbox::container::SeccompProfile;

use crate::error::LinuxError;

/// `EPERM`, the errno of the default profile's default action.
const EPERM: u32 = 1;
/// `ENOSYS`, returned for `clone3` without `CAP_SYS_ADMIN` (so libcs fall back to `clone`).
const ENOSYS: u32 = 38;
/// libcontainer 0.7 takes `valueTwo` as the mask of `SCMP_CMP_MASKED_EQ` (see the module docs).
const LIBCONTAINER_SWAPS_MASKED_EQ: bool = true;

/// A seccomp profile in Docker's JSON format (OCI's `linux.seccomp` plus conditions).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for syscalls no rule matches.
    pub default_action: LinuxSeccompAction,
    /// errno for an `SCMP_ACT_ERRNO` default action.
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// Architectures, as `SCMP_ARCH_*` names (not together with `archMap`).
    #[serde(default, deserialize_with = "null_default")]
    pub architectures: Vec<String>,
    /// Native architecture → sub-architectures.
    #[serde(default, deserialize_with = "null_default")]
    pub arch_map: Vec<ArchMap>,
    /// Filter flags (`SECCOMP_FILTER_FLAG_*`).
    #[serde(default, deserialize_with = "null_default")]
    pub flags: Vec<String>,
    /// Unix socket of a seccomp agent (`SCMP_ACT_NOTIFY`).
    #[serde(default)]
    pub listener_path: Option<PathBuf>,
    /// Opaque data for the agent.
    #[serde(default)]
    pub listener_metadata: Option<String>,
    /// The rules.
    #[serde(default, deserialize_with = "null_default")]
    pub syscalls: Vec<SyscallRule>,
}

/// One `archMap` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// The native architecture (`SCMP_ARCH_X86_64`).
    pub architecture: String,
    /// Architectures the native one also runs (`SCMP_ARCH_X86`, `SCMP_ARCH_X32`).
    #[serde(default, deserialize_with = "null_default")]
    pub sub_architectures: Vec<String>,
}

/// One rule of a profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// Old single-name form.
    #[serde(default)]
    pub name: Option<String>,
    /// Syscall names.
    #[serde(default, deserialize_with = "null_default")]
    pub names: Vec<String>,
    /// What to do when the rule matches.
    pub action: LinuxSeccompAction,
    /// errno for `SCMP_ACT_ERRNO` / value for `SCMP_ACT_TRACE`.
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Argument conditions (all must hold).
    #[serde(default, deserialize_with = "null_default")]
    pub args: Vec<SyscallArg>,
    /// The rule applies only when all of these hold.
    #[serde(default, deserialize_with = "null_default")]
    pub includes: Condition,
    /// The rule does not apply when any of these holds.
    #[serde(default, deserialize_with = "null_default")]
    pub excludes: Condition,
}

/// An argument condition of a [`SyscallRule`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    /// Argument index (0-based).
    pub index: usize,
    /// Value (the mask for `SCMP_CMP_MASKED_EQ`).
    #[serde(default)]
    pub value: u64,
    /// Second value (the datum for `SCMP_CMP_MASKED_EQ`).
    #[serde(default)]
    pub value_two: u64,
    /// Comparison.
    pub op: LinuxSeccompOperator,
}

/// `includes` / `excludes` of a [`SyscallRule`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Capabilities (`CAP_SYS_ADMIN`).
    #[serde(default, deserialize_with = "null_default")]
    pub caps: Vec<String>,
    /// Architectures in Go's names (`amd64`, `arm64`, `x32`, ...).
    #[serde(default, deserialize_with = "null_default")]
    pub arches: Vec<String>,
    /// Minimum kernel version (`4.8`).
    #[serde(default)]
    pub min_kernel: Option<String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The node a filter is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The native architecture as a libseccomp name (`SCMP_ARCH_X86_64`).
    pub scmp_arch: String,
    /// The native architecture in Go's naming (`amd64`), used by `includes.arches`.
    pub go_arch: String,
    /// The running kernel's `(major, minor)`.
    pub kernel: (u32, u32),
}

impl Target {
    /// The node this process runs on.
    pub fn host() -> Target {
        let (scmp, go) = match std::env::consts::ARCH {
            "x86_64" => ("SCMP_ARCH_X86_64", "amd64"),
            "x86" => ("SCMP_ARCH_X86", "386"),
            "aarch64" => ("SCMP_ARCH_AARCH64", "arm64"),
            "arm" => ("SCMP_ARCH_ARM", "arm"),
            "s390x" => ("SCMP_ARCH_S390X", "s390x"),
            "powerpc64" if cfg!(target_endian = "little") => ("SCMP_ARCH_PPC64LE", "ppc64le"),
            "powerpc64" => ("SCMP_ARCH_PPC64", "ppc64"),
            "riscv64" => ("SCMP_ARCH_RISCV64", "riscv64"),
            "loongarch64" => ("SCMP_ARCH_LOONGARCH64", "loong64"),
            "mips64" if cfg!(target_endian = "little") => ("SCMP_ARCH_MIPSEL64", "mips64le"),
            "mips64" => ("SCMP_ARCH_MIPS64", "mips64"),
            other => ("SCMP_ARCH_NATIVE", other),
        };
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| parse_kernel_version(&u.release().to_string_lossy()))
            .unwrap_or((0, 0));
        Target {
            scmp_arch: scmp.into(),
            go_arch: go.into(),
            kernel,
        }
    }
}

/// `(major, minor)` of a kernel release such as `6.8.0-45-generic` or a `minKernel` like `4.8`.
pub fn parse_kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()
        .unwrap_or("0")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().unwrap_or(0)))
}

/// The seccomp filter for a container, or `None` (unconfined). `caps` is its bounding set.
pub fn for_container(
    profile: &SeccompProfile,
    caps: &Capabilities,
    target: &Target,
) -> Result<Option<LinuxSeccomp>, LinuxError> {
    match profile {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => to_oci(&default_profile(), caps, target).map(Some),
        SeccompProfile::Localhost(path) => {
            to_oci(&load_localhost(Path::new(path))?, caps, target).map(Some)
        }
    }
}

/// Reads a `Localhost` profile (Docker's or OCI's JSON) from the node. The path must be
/// absolute; a missing file is [`LinuxError::SpecNotFound`], bad JSON an
/// [`LinuxError::InvalidArgument`].
pub fn load_localhost(path: &Path) -> Result<Profile, LinuxError> {
    if !path.is_absolute() {
        return Err(LinuxError::InvalidArgument {
            what: "seccomp profile path",
            value: path.display().to_string(),
            reason: "must be absolute".into(),
        });
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LinuxError::SpecNotFound {
                what: "seccomp profile",
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(LinuxError::SpecIo {
                op: "read seccomp profile",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| LinuxError::InvalidArgument {
        what: "seccomp profile",
        value: path.display().to_string(),
        reason: format!("not a seccomp profile in Docker/OCI JSON: {e}"),
    })
}

fn invalid(value: impl Into<String>, reason: impl Into<String>) -> LinuxError {
    LinuxError::InvalidArgument {
        what: "seccomp profile",
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses an `SCMP_ARCH_*` name.
fn parse_arch(name: &str) -> Result<Arch, LinuxError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| invalid(name, "unknown architecture"))
}

/// Parses a `SECCOMP_FILTER_FLAG_*` name.
fn parse_flag(name: &str) -> Result<LinuxSeccompFilterFlag, LinuxError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| invalid(name, "unknown seccomp filter flag"))
}

/// Parses a capability name of a condition (`CAP_` prefix optional); unknown → `None`.
fn parse_cap(name: &str) -> Option<Capability> {
    crate::spec::caps::parse_capability(name).ok()
}

fn min_kernel(cond: &Condition) -> Result<Option<(u32, u32)>, LinuxError> {
    match &cond.min_kernel {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => parse_kernel_version(s)
            .map(Some)
            .ok_or_else(|| invalid(s.as_str(), "minKernel is not a kernel version")),
    }
}

/// Whether a rule applies to a container with bounding set `caps` on `target`.
fn applies(rule: &SyscallRule, caps: &Capabilities, target: &Target) -> Result<bool, LinuxError> {
    let inc = &rule.includes;
    if !inc.caps.is_empty()
        && !inc
            .caps
            .iter()
            .all(|c| parse_cap(c).is_some_and(|c| caps.contains(&c)))
    {
        return Ok(false);
    }
    if !inc.arches.is_empty() && !inc.arches.contains(&target.go_arch) {
        return Ok(false);
    }
    if let Some(min) = min_kernel(inc)?
        && target.kernel < min
    {
        return Ok(false);
    }
    let exc = &rule.excludes;
    if exc
        .caps
        .iter()
        .any(|c| parse_cap(c).is_some_and(|c| caps.contains(&c)))
    {
        return Ok(false);
    }
    if exc.arches.contains(&target.go_arch) {
        return Ok(false);
    }
    if let Some(min) = min_kernel(exc)?
        && target.kernel >= min
    {
        return Ok(false);
    }
    Ok(true)
}

/// Evaluates `profile` for a container whose bounding capability set is `caps` on `target`.
pub fn to_oci(
    profile: &Profile,
    caps: &Capabilities,
    target: &Target,
) -> Result<LinuxSeccomp, LinuxError> {
    if !profile.architectures.is_empty() && !profile.arch_map.is_empty() {
        return Err(invalid(
            "architectures",
            "both architectures and archMap are set",
        ));
    }
    let mut arch_names: Vec<&str> = profile.architectures.iter().map(String::as_str).collect();
    for m in &profile.arch_map {
        if m.architecture == target.scmp_arch {
            arch_names.push(&m.architecture);
            arch_names.extend(m.sub_architectures.iter().map(String::as_str));
        }
    }
    let mut arches = vec![];
    for name in arch_names {
        let a = parse_arch(name)?;
        if !arches.contains(&a) {
            arches.push(a);
        }
    }
    let flags = profile
        .flags
        .iter()
        .map(|f| parse_flag(f))
        .collect::<Result<Vec<_>, _>>()?;

    let mut syscalls = vec![];
    for rule in &profile.syscalls {
        let names = match (&rule.name, rule.names.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    rule.names.join(","),
                    "a rule sets both name and names",
                ));
            }
            (Some(n), true) => vec![n.clone()],
            (None, false) => rule.names.clone(),
            (None, true) => return Err(invalid("syscalls", "a rule names no syscall")),
        };
        if !applies(rule, caps, target)? {
            continue;
        }
        let mut sc = LinuxSyscall::default();
        sc.set_names(names.clone());
        sc.set_action(rule.action);
        sc.set_errno_ret(rule.errno_ret);
        if !rule.args.is_empty() {
            let mut args = Vec::with_capacity(rule.args.len());
            for a in &rule.args {
                let (value, value_two) = if a.op == LinuxSeccompOperator::ScmpCmpMaskedEq
                    && LIBCONTAINER_SWAPS_MASKED_EQ
                {
                    (a.value_two, Some(a.value))
                } else {
                    (a.value, (a.value_two != 0).then_some(a.value_two))
                };
                let mut builder = LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .value(value)
                    .op(a.op);
                if let Some(v2) = value_two {
                    builder = builder.value_two(v2);
                }
                args.push(
                    builder
                        .build()
                        .map_err(|e| invalid(names.join(","), e.to_string()))?,
                );
            }
            sc.set_args(Some(args));
        }
        syscalls.push(sc);
    }

    let mut out = LinuxSeccomp::default();
    out.set_default_action(profile.default_action);
    out.set_default_errno_ret(profile.default_errno_ret);
    out.set_architectures((!arches.is_empty()).then_some(arches));
    out.set_flags((!flags.is_empty()).then_some(flags));
    out.set_listener_path(profile.listener_path.clone());
    out.set_listener_metadata(profile.listener_metadata.clone());
    out.set_syscalls(Some(syscalls));
    Ok(out)
}

/// One rule of the built-in default profile.
struct DefaultRule {
    names: &'static [&'static str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    /// `(index, value, op)`.
    args: &'static [(usize, u64, LinuxSeccompOperator)],
    include_caps: &'static [&'static str],
    include_arches: &'static [&'static str],
    exclude_caps: &'static [&'static str],
    exclude_arches: &'static [&'static str],
    min_kernel: Option<&'static str>,
}

const ALLOW: LinuxSeccompAction = LinuxSeccompAction::ScmpActAllow;

const fn allow(names: &'static [&'static str]) -> DefaultRule {
    DefaultRule {
        names,
        action: ALLOW,
        errno: None,
        args: &[],
        include_caps: &[],
        include_arches: &[],
        exclude_caps: &[],
        exclude_arches: &[],
        min_kernel: None,
    }
}

const fn allow_with_cap(
    names: &'static [&'static str],
    cap: &'static [&'static str],
) -> DefaultRule {
    DefaultRule {
        include_caps: cap,
        ..allow(names)
    }
}

const fn allow_on(names: &'static [&'static str], arches: &'static [&'static str]) -> DefaultRule {
    DefaultRule {
        include_arches: arches,
        ..allow(names)
    }
}

const fn allow_args(
    names: &'static [&'static str],
    args: &'static [(usize, u64, LinuxSeccompOperator)],
) -> DefaultRule {
    DefaultRule {
        args,
        ..allow(names)
    }
}

/// Syscalls every container may make (the default profile's unconditional allow list).
#[rustfmt::skip]
pub const DEFAULT_ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64",
    "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
];

/// Namespace flags `clone` may not carry without `CAP_SYS_ADMIN`: CLONE_NEWNS | NEWCGROUP |
/// NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

use LinuxSeccompOperator::{ScmpCmpEq as EQ, ScmpCmpMaskedEq as MASKED_EQ, ScmpCmpNe as NE};

/// The default profile's rules (moby's `profiles/seccomp/default.json`, which containerd's
/// `contrib/seccomp` mirrors), conditions included.
const DEFAULT_RULES: &[DefaultRule] = &[
    allow(DEFAULT_ALLOWED),
    DefaultRule {
        min_kernel: Some("4.8"),
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    },
    // AF_VSOCK (40) sockets are not allowed
    allow_args(&["socket"], &[(0, 40, NE)]),
    // personality: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, query
    allow_args(&["personality"], &[(0, 0x0, EQ)]),
    allow_args(&["personality"], &[(0, 0x8, EQ)]),
    allow_args(&["personality"], &[(0, 0x20000, EQ)]),
    allow_args(&["personality"], &[(0, 0x20008, EQ)]),
    allow_args(&["personality"], &[(0, 0xffff_ffff, EQ)]),
    allow_on(&["sync_file_range2", "swapcontext"], &["ppc64le"]),
    allow_on(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        &["arm", "arm64"],
    ),
    allow_on(&["arch_prctl"], &["amd64", "x32"]),
    allow_on(&["modify_ldt"], &["amd64", "x32", "x86"]),
    allow_on(
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        &["s390", "s390x"],
    ),
    allow_on(&["riscv_flush_icache"], &["riscv64"]),
    allow_with_cap(&["open_by_handle_at"], &["CAP_DAC_READ_SEARCH"]),
    allow_with_cap(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        &["CAP_SYS_ADMIN"],
    ),
    // without CAP_SYS_ADMIN, clone may not create namespaces (s390 swaps the first two args)
    DefaultRule {
        args: &[(0, CLONE_NS_FLAGS, MASKED_EQ)],
        exclude_caps: &["CAP_SYS_ADMIN"],
        exclude_arches: &["s390", "s390x"],
        ..allow(&["clone"])
    },
    DefaultRule {
        args: &[(1, CLONE_NS_FLAGS, MASKED_EQ)],
        include_arches: &["s390", "s390x"],
        exclude_caps: &["CAP_SYS_ADMIN"],
        ..allow(&["clone"])
    },
    // clone3's flags are in memory, so it cannot be filtered: ENOSYS makes libcs use clone
    DefaultRule {
        action: LinuxSeccompAction::ScmpActErrno,
        errno: Some(ENOSYS),
        exclude_caps: &["CAP_SYS_ADMIN"],
        ..allow(&["clone3"])
    },
    allow_with_cap(&["reboot"], &["CAP_SYS_BOOT"]),
    allow_with_cap(&["chroot"], &["CAP_SYS_CHROOT"]),
    allow_with_cap(
        &["delete_module", "init_module", "finit_module"],
        &["CAP_SYS_MODULE"],
    ),
    allow_with_cap(&["acct"], &["CAP_SYS_PACCT"]),
    allow_with_cap(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        &["CAP_SYS_PTRACE"],
    ),
    allow_with_cap(&["iopl", "ioperm"], &["CAP_SYS_RAWIO"]),
    allow_with_cap(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        &["CAP_SYS_TIME"],
    ),
    allow_with_cap(&["vhangup"], &["CAP_SYS_TTY_CONFIG"]),
    allow_with_cap(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        &["CAP_SYS_NICE"],
    ),
    allow_with_cap(&["syslog"], &["CAP_SYSLOG"]),
    allow_with_cap(&["bpf"], &["CAP_BPF"]),
    allow_with_cap(&["perf_event_open"], &["CAP_PERFMON"]),
];

/// `archMap` of the default profile: native architecture → the ones it also runs.
const DEFAULT_ARCH_MAP: &[(&str, &[&str])] = &[
    ("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    ("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
    (
        "SCMP_ARCH_MIPS64",
        &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
    ),
    (
        "SCMP_ARCH_MIPS64N32",
        &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
    ),
    (
        "SCMP_ARCH_MIPSEL64",
        &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
    ),
    (
        "SCMP_ARCH_MIPSEL64N32",
        &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
    ),
    ("SCMP_ARCH_S390X", &["SCMP_ARCH_S390"]),
    ("SCMP_ARCH_RISCV64", &[]),
];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The runtime default profile: default action `SCMP_ACT_ERRNO` (`EPERM`), the node's
/// architectures, moby's rules with their capability/architecture/kernel conditions.
pub fn default_profile() -> Profile {
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(EPERM),
        architectures: vec![],
        arch_map: DEFAULT_ARCH_MAP
            .iter()
            .map(|(a, subs)| ArchMap {
                architecture: a.to_string(),
                sub_architectures: strings(subs),
            })
            .collect(),
        flags: vec![],
        listener_path: None,
        listener_metadata: None,
        syscalls: DEFAULT_RULES
            .iter()
            .map(|r| SyscallRule {
                name: None,
                names: strings(r.names),
                action: r.action,
                errno_ret: r.errno,
                args: r
                    .args
                    .iter()
                    .map(|&(index, value, op)| SyscallArg {
                        index,
                        value,
                        value_two: 0,
                        op,
                    })
                    .collect(),
                includes: Condition {
                    caps: strings(r.include_caps),
                    arches: strings(r.include_arches),
                    min_kernel: r.min_kernel.map(str::to_string),
                },
                excludes: Condition {
                    caps: strings(r.exclude_caps),
                    arches: strings(r.exclude_arches),
                    min_kernel: None,
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Target {
        Target {
            scmp_arch: "SCMP_ARCH_X86_64".into(),
            go_arch: "amd64".into(),
            kernel: (6, 1),
        }
    }

    fn allowed(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls().iter().flatten().any(|sc| {
            sc.action() == LinuxSeccompAction::ScmpActAllow
                && sc.args().is_none()
                && sc.names().iter().any(|n| n == name)
        })
    }

    fn default_caps() -> Capabilities {
        crate::spec::caps::DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn default_profile_allows_the_basics_and_not_mount_without_sys_admin() {
        let s = to_oci(&default_profile(), &default_caps(), &amd64()).expect("default");
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(EPERM));
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for name in [
            "read",
            "write",
            "execve",
            "arch_prctl",
            "modify_ldt",
            "chroot",
        ] {
            assert!(allowed(&s, name), "{name} should be allowed");
        }
        for name in [
            "mount", "umount2", "unshare", "setns", "reboot", "kcmp", "bpf",
        ] {
            assert!(!allowed(&s, name), "{name} should not be allowed");
        }
        assert!(!allowed(&s, "cacheflush"), "arm-only syscall on amd64");
        // clone only without namespace flags; clone3 gets ENOSYS
        let clone = s
            .syscalls()
            .iter()
            .flatten()
            .find(|sc| sc.names() == &["clone".to_string()])
            .expect("clone rule");
        let arg = clone.args().as_ref().expect("args")[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        // swapped for libcontainer: mask in value_two, datum in value
        assert_eq!((arg.value(), arg.value_two()), (0, Some(CLONE_NS_FLAGS)));
        assert!(
            s.syscalls().iter().flatten().any(|sc| {
                sc.names() == &["clone3".to_string()] && sc.errno_ret() == Some(ENOSYS)
            })
        );
    }

    #[test]
    fn default_profile_follows_capabilities_and_kernel() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysPtrace);
        let s = to_oci(&default_profile(), &caps, &amd64()).expect("default");
        for name in [
            "mount", "unshare", "setns", "clone", "clone3", "ptrace", "kcmp",
        ] {
            assert!(allowed(&s, name), "{name} should be allowed with the caps");
        }
        assert!(
            !s.syscalls()
                .iter()
                .flatten()
                .any(|sc| sc.errno_ret() == Some(ENOSYS))
        );

        let old = Target {
            kernel: (4, 4),
            ..amd64()
        };
        let s = to_oci(&default_profile(), &default_caps(), &old).expect("old kernel");
        assert!(
            !allowed(&s, "ptrace"),
            "ptrace needs 4.8 without CAP_SYS_PTRACE"
        );
    }

    #[test]
    fn localhost_profile_in_docker_format_is_converted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("profile.json");
        std::fs::write(
            &path,
            r#"{
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "archMap": [
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": null}
                ],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                     "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                     "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                    {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW",
                     "includes": {"arches": ["arm64"]}, "comment": "ignored"}
                ]
            }"#,
        )
        .expect("write");
        let s = for_container(
            &SeccompProfile::Localhost(path.display().to_string()),
            &default_caps(),
            &amd64(),
        )
        .expect("convert")
        .expect("a filter");
        assert_eq!(s.default_errno_ret(), Some(1));
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let calls = s.syscalls().as_ref().expect("syscalls");
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].names(), &["read".to_string(), "write".to_string()]);
        assert_eq!(calls[1].names(), &["mkdir".to_string()]);
        assert_eq!(calls[1].errno_ret(), Some(13));
        let arg = calls[1].args().as_ref().expect("args")[0];
        assert_eq!((arg.index(), arg.value(), arg.value_two()), (1, 448, None));
    }

    #[test]
    fn oci_format_profile_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("oci.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .expect("write");
        let p = load_localhost(&path).expect("load");
        let s = to_oci(&p, &default_caps(), &amd64()).expect("convert");
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            s.flags().as_deref(),
            Some(&[LinuxSeccompFilterFlag::SeccompFilterFlagLog][..])
        );

        let missing = dir.path().join("nope.json");
        let err = load_localhost(&missing).expect_err("missing");
        assert!(matches!(err, LinuxError::SpecNotFound { .. }), "{err}");
        assert!(err.to_string().contains("nope.json"));
        assert!(matches!(
            load_localhost(Path::new("relative.json")),
            Err(LinuxError::InvalidArgument { .. })
        ));
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            load_localhost(&path),
            Err(LinuxError::InvalidArgument { .. })
        ));
        assert!(
            for_container(&SeccompProfile::Unconfined, &default_caps(), &amd64())
                .expect("unconfined")
                .is_none()
        );
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("5.15+"), Some((5, 15)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}
