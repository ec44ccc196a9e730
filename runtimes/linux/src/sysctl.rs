//! Pod sysctls: which are allowed (kubelet's namespaced set), where they live in `/proc/sys`, and
//! writing them from a thread that is inside the pod's namespace.
//!
//! Allowed, as kubelet's `sysctl` namespace table: `kernel.sem`, `kernel.shm*`, `kernel.msg*`,
//! `fs.mqueue.*` (IPC namespace) and `net.*` (network namespace). Everything else would change the
//! node, so it is refused before anything is created. Names come dotted (`net.ipv4.ip_forward`) or
//! slashed (`net/ipv4/conf/eth0.100/forwarding`); like kubelet, a name whose first separator is `/`
//! has its `.` and `/` swapped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use unicri_sandbox::pod::{NamespaceMode, PodSpec};

use crate::error::LinuxError;
use crate::ns;

/// The namespace a sysctl belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlClass {
    /// IPC namespace (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`).
    Ipc,
    /// Network namespace (`net.*`).
    Net,
}

/// A validated sysctl: canonical dotted name, `/proc/sys` path, value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// The name as given in the spec.
    pub name: String,
    /// Dotted form (kubelet's normalized name).
    pub canonical: String,
    /// Its file under `/proc/sys`.
    pub path: PathBuf,
    /// Value to write.
    pub value: String,
    /// Its namespace.
    pub class: SysctlClass,
}

/// Kubelet's `NormalizeName`: when the first separator is `/`, swap `.` and `/`.
pub fn canonical_name(name: &str) -> String {
    let first = name.find(['.', '/']);
    if first.is_some_and(|i| name.as_bytes()[i] == b'/') {
        name.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    } else {
        name.to_string()
    }
}

/// Classifies a sysctl by name, refusing non-namespaced and unknown ones.
pub fn classify(name: &str) -> Result<SysctlClass, LinuxError> {
    let canonical = canonical_name(name);
    let class = if canonical == "kernel.sem"
        || canonical.starts_with("kernel.shm")
        || canonical.starts_with("kernel.msg")
        || canonical.starts_with("fs.mqueue.")
    {
        SysctlClass::Ipc
    } else if canonical.starts_with("net.") {
        SysctlClass::Net
    } else {
        return Err(invalid(
            name,
            "not a namespaced sysctl (allowed: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)",
        ));
    };
    Ok(class)
}

/// The `/proc/sys` file of a sysctl; refuses names that would leave `/proc/sys`.
pub fn proc_path(name: &str) -> Result<PathBuf, LinuxError> {
    let canonical = canonical_name(name);
    let mut path = PathBuf::from("/proc/sys");
    for component in canonical.split('.') {
        let component = component.replace('/', ".");
        if component.is_empty() || component == "." || component == ".." || component.contains('\0')
        {
            return Err(invalid(name, "malformed name"));
        }
        path.push(component);
    }
    Ok(path)
}

/// Validates every sysctl of `spec` against its namespace modes and splits them by namespace:
/// `(ipc, net)`. `net.*` with host network and IPC sysctls with host IPC are refused (they would
/// change the node).
pub fn validate(spec: &PodSpec) -> Result<(Vec<Sysctl>, Vec<Sysctl>), LinuxError> {
    let (mut ipc, mut net) = (vec![], vec![]);
    for (name, value) in &spec.sysctls {
        let class = classify(name)?;
        if value.contains('\0') || value.contains('\n') {
            return Err(LinuxError::InvalidArgument {
                what: "sysctl value",
                value: format!("{name}={value}"),
                reason: "contains a NUL or newline".into(),
            });
        }
        let sysctl = Sysctl {
            name: name.clone(),
            canonical: canonical_name(name),
            path: proc_path(name)?,
            value: value.clone(),
            class,
        };
        match class {
            SysctlClass::Ipc if spec.namespaces.ipc == NamespaceMode::Node => {
                return Err(invalid(name, "IPC sysctl with host IPC namespace"));
            }
            SysctlClass::Net if spec.namespaces.network == NamespaceMode::Node => {
                return Err(invalid(name, "net sysctl with host network namespace"));
            }
            SysctlClass::Ipc => ipc.push(sysctl),
            SysctlClass::Net => net.push(sysctl),
        }
    }
    Ok((ipc, net))
}

/// Writes sysctls from the calling thread (which must already be in the right namespace).
pub(crate) fn write_all(sysctls: &[Sysctl]) -> Result<(), LinuxError> {
    for s in sysctls {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&s.path)
            .and_then(|mut f| f.write_all(s.value.as_bytes()))
            .map_err(|source| LinuxError::SetSysctl {
                name: s.name.clone(),
                value: s.value.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Applies the `net.*` sysctls of `spec` inside the network namespace pinned at `netns_pin` (made
/// by `network-cni`'s `NetNs::create`), from a thread that `setns`'s into it and exits. Validates
/// all of `spec`'s sysctls first; does nothing (no thread) when there are no `net.*` ones.
pub fn apply_net_sysctls(netns_pin: &Path, spec: &PodSpec) -> Result<(), LinuxError> {
    let (_, net) = validate(spec)?;
    if net.is_empty() {
        return Ok(());
    }
    ns::run_in(netns_pin, ns::NsKind::Net, || write_all(&net))?
}

/// Reads a sysctl (trimmed) from the calling thread's namespaces; for checks and tests.
pub fn read(name: &str) -> Result<String, LinuxError> {
    let path = proc_path(name)?;
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| LinuxError::PodFile {
            op: "read sysctl",
            path,
            source,
        })
}

/// Map form of [`validate`]'s refusal, for callers that only want to check names.
pub fn check_names(sysctls: &BTreeMap<String, String>) -> Result<(), LinuxError> {
    sysctls.keys().try_for_each(|n| classify(n).map(|_| ()))
}

fn invalid(name: &str, reason: &str) -> LinuxError {
    LinuxError::InvalidArgument {
        what: "sysctl",
        value: name.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_kubelet() {
        for ipc in [
            "kernel.shmmax",
            "kernel.shmall",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "fs/mqueue/queues_max",
        ] {
            assert_eq!(classify(ipc).expect(ipc), SysctlClass::Ipc, "{ipc}");
        }
        for net in [
            "net.ipv4.ip_forward",
            "net/ipv4/conf/eth0.100/forwarding",
            "net.core.somaxconn",
        ] {
            assert_eq!(classify(net).expect(net), SysctlClass::Net, "{net}");
        }
        for bad in [
            "kernel.hostname",
            "kernel.pid_max",
            "vm.overcommit_memory",
            "fs.mqueue",
            "kernel.semaphore",
            "kernel.sem_next_id",
            "netfoo.x",
            "",
            "user.max_ipc_namespaces",
        ] {
            let err = classify(bad).expect_err(bad);
            assert!(err.to_string().contains("not a namespaced sysctl"), "{err}");
        }
    }

    #[test]
    fn names_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("net.ipv4.ip_forward").expect("path"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/forwarding").expect("path"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            canonical_name("net/ipv4/conf/eth0.100/forwarding"),
            "net.ipv4.conf.eth0/100.forwarding"
        );
        assert_eq!(
            proc_path("net.ipv4.conf.eth0/100.forwarding").expect("path"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "net..x",
            "net.ipv4.",
            "net/../../etc/passwd",
            "net/ipv4/../../../x",
        ] {
            // either refused as malformed or kept inside /proc/sys without `..`
            match proc_path(bad) {
                Err(e) => assert!(e.to_string().contains("malformed"), "{e}"),
                Ok(p) => {
                    assert!(p.starts_with("/proc/sys"), "{bad} → {}", p.display());
                    assert!(
                        !p.components().any(|c| c.as_os_str() == ".."),
                        "{bad} → {}",
                        p.display()
                    );
                }
            }
        }
    }

    #[test]
    fn validate_honours_host_namespaces() {
        let mut spec = PodSpec::default();
        spec.sysctls.insert("kernel.shmmni".into(), "8192".into());
        spec.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
        let (ipc, net) = validate(&spec).expect("valid");
        assert_eq!((ipc.len(), net.len()), (1, 1));

        let mut host_net = spec.clone();
        host_net.namespaces.network = NamespaceMode::Node;
        let e = validate(&host_net).expect_err("host net");
        assert!(e.to_string().contains("host network"), "{e}");

        let mut host_ipc = spec.clone();
        host_ipc.namespaces.ipc = NamespaceMode::Node;
        let e = validate(&host_ipc).expect_err("host ipc");
        assert!(e.to_string().contains("host IPC"), "{e}");

        let mut bad_value = PodSpec::default();
        bad_value.sysctls.insert("kernel.sem".into(), "1\n2".into());
        assert!(validate(&bad_value).is_err());

        let mut unknown = PodSpec::default();
        unknown.sysctls.insert("kernel.panic".into(), "1".into());
        assert!(check_names(&unknown.sysctls).is_err());
    }
}
