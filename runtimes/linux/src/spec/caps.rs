//! Capability sets of a container (containerd 1.7's rules).

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use unicri_sandbox::container::SecuritySpec;

use crate::error::LinuxError;

/// Every capability oci-spec knows, with its kernel number and name (without `CAP_`).
pub const ALL: &[(u8, &str, Capability)] = &[
    (0, "CHOWN", Capability::Chown),
    (1, "DAC_OVERRIDE", Capability::DacOverride),
    (2, "DAC_READ_SEARCH", Capability::DacReadSearch),
    (3, "FOWNER", Capability::Fowner),
    (4, "FSETID", Capability::Fsetid),
    (5, "KILL", Capability::Kill),
    (6, "SETGID", Capability::Setgid),
    (7, "SETUID", Capability::Setuid),
    (8, "SETPCAP", Capability::Setpcap),
    (9, "LINUX_IMMUTABLE", Capability::LinuxImmutable),
    (10, "NET_BIND_SERVICE", Capability::NetBindService),
    (11, "NET_BROADCAST", Capability::NetBroadcast),
    (12, "NET_ADMIN", Capability::NetAdmin),
    (13, "NET_RAW", Capability::NetRaw),
    (14, "IPC_LOCK", Capability::IpcLock),
    (15, "IPC_OWNER", Capability::IpcOwner),
    (16, "SYS_MODULE", Capability::SysModule),
    (17, "SYS_RAWIO", Capability::SysRawio),
    (18, "SYS_CHROOT", Capability::SysChroot),
    (19, "SYS_PTRACE", Capability::SysPtrace),
    (20, "SYS_PACCT", Capability::SysPacct),
    (21, "SYS_ADMIN", Capability::SysAdmin),
    (22, "SYS_BOOT", Capability::SysBoot),
    (23, "SYS_NICE", Capability::SysNice),
    (24, "SYS_RESOURCE", Capability::SysResource),
    (25, "SYS_TIME", Capability::SysTime),
    (26, "SYS_TTY_CONFIG", Capability::SysTtyConfig),
    (27, "MKNOD", Capability::Mknod),
    (28, "LEASE", Capability::Lease),
    (29, "AUDIT_WRITE", Capability::AuditWrite),
    (30, "AUDIT_CONTROL", Capability::AuditControl),
    (31, "SETFCAP", Capability::Setfcap),
    (32, "MAC_OVERRIDE", Capability::MacOverride),
    (33, "MAC_ADMIN", Capability::MacAdmin),
    (34, "SYSLOG", Capability::Syslog),
    (35, "WAKE_ALARM", Capability::WakeAlarm),
    (36, "BLOCK_SUSPEND", Capability::BlockSuspend),
    (37, "AUDIT_READ", Capability::AuditRead),
    (38, "PERFMON", Capability::Perfmon),
    (39, "BPF", Capability::Bpf),
    (40, "CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// containerd's (and Docker's) default capabilities.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Parses a capability name: case-insensitive, `CAP_` prefix optional. `ALL` is not a
/// capability here (callers handle it).
pub fn parse_capability(name: &str) -> Result<Capability, LinuxError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALL.iter()
        .find(|(_, n, _)| *n == bare)
        .map(|(_, _, c)| *c)
        .ok_or_else(|| LinuxError::InvalidArgument {
            what: "capability",
            value: name.to_string(),
            reason: "unknown capability".into(),
        })
}

/// The highest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn host_last_cap() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// All capabilities up to `last_cap` (all oci-spec knows when `None`).
pub fn all_capabilities(last_cap: Option<u8>) -> Capabilities {
    ALL.iter()
        .filter(|(n, _, _)| last_cap.is_none_or(|last| *n <= last))
        .map(|(_, _, c)| *c)
        .collect()
}

/// The bounding set of this process (`CapBnd` in `/proc/self/status`): a container can never
/// get a capability outside it (on some hosts even root lacks some, e.g. `CAP_SYS_RESOURCE`).
pub fn host_bounding() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Removes from every set the capabilities whose bit is not in `mask`.
pub fn restrict(caps: &mut LinuxCapabilities, mask: u64) {
    let keep = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.as_ref().map(|s| {
            s.iter()
                .copied()
                .filter(|c| {
                    ALL.iter()
                        .find(|(_, _, x)| x == c)
                        .is_some_and(|(n, _, _)| mask & (1u64 << n) != 0)
                })
                .collect()
        })
    };
    let (b, e, p, i, a) = (
        keep(caps.bounding()),
        keep(caps.effective()),
        keep(caps.permitted()),
        keep(caps.inheritable()),
        keep(caps.ambient()),
    );
    caps.set_bounding(b);
    caps.set_effective(e);
    caps.set_permitted(p);
    caps.set_inheritable(i);
    caps.set_ambient(a);
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The process capabilities of a container. Privileged: every capability the kernel knows in
/// bounding/effective/permitted. Otherwise the defaults, then `ALL` in add (everything), `ALL`
/// in drop (nothing), the individual adds, the individual drops — containerd's order, so a
/// capability both added and dropped by name ends up dropped. Ambient capabilities are added to
/// every set (the kernel keeps an ambient capability only when it is permitted and inheritable).
/// Inheritable is otherwise empty (containerd ≥ 1.6.18).
pub fn compute(
    security: &SecuritySpec,
    all: &Capabilities,
) -> Result<LinuxCapabilities, LinuxError> {
    let mut caps: Capabilities = if security.privileged {
        all.clone()
    } else {
        let mut caps: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
        if security.capabilities_add.iter().any(|c| is_all(c)) {
            caps = all.clone();
        }
        if security.capabilities_drop.iter().any(|c| is_all(c)) {
            caps.clear();
        }
        for c in security.capabilities_add.iter().filter(|c| !is_all(c)) {
            caps.insert(parse_capability(c)?);
        }
        for c in security.capabilities_drop.iter().filter(|c| !is_all(c)) {
            caps.remove(&parse_capability(c)?);
        }
        caps
    };
    let mut ambient = Capabilities::new();
    for c in &security.capabilities_add_ambient {
        if is_all(c) {
            ambient.extend(all.iter().copied());
        } else {
            ambient.insert(parse_capability(c)?);
        }
    }
    caps.extend(ambient.iter().copied());
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(caps.clone()));
    out.set_effective(Some(caps.clone()));
    out.set_permitted(Some(caps));
    out.set_inheritable(Some(ambient.clone()));
    out.set_ambient(Some(ambient));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(add: &[&str], drop: &[&str]) -> SecuritySpec {
        SecuritySpec {
            capabilities_add: add.iter().map(|s| s.to_string()).collect(),
            capabilities_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..SecuritySpec::default()
        }
    }

    fn bounding(s: &SecuritySpec) -> Capabilities {
        compute(s, &all_capabilities(None))
            .expect("compute")
            .bounding()
            .clone()
            .expect("bounding")
    }

    #[test]
    fn names_parse_with_or_without_prefix_in_any_case() {
        assert_eq!(
            parse_capability("sys_admin").expect("a"),
            Capability::SysAdmin
        );
        assert_eq!(
            parse_capability("CAP_NET_ADMIN").expect("b"),
            Capability::NetAdmin
        );
        assert_eq!(parse_capability("cap_chown").expect("c"), Capability::Chown);
        assert!(matches!(
            parse_capability("FLY"),
            Err(LinuxError::InvalidArgument { .. })
        ));
        assert_eq!(all_capabilities(Some(37)).len(), 38);
        assert_eq!(all_capabilities(None).len(), ALL.len());
    }

    #[test]
    fn defaults_add_and_drop() {
        let caps = bounding(&SecuritySpec::default());
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(caps.contains(&Capability::NetRaw) && !caps.contains(&Capability::SysAdmin));

        let caps = bounding(&sec(&["SYS_ADMIN", "net_admin"], &["NET_RAW"]));
        assert!(caps.contains(&Capability::SysAdmin) && caps.contains(&Capability::NetAdmin));
        assert!(!caps.contains(&Capability::NetRaw));

        let full = compute(&sec(&[], &[]), &all_capabilities(None)).expect("full");
        assert_eq!(full.effective(), full.bounding());
        assert_eq!(full.permitted(), full.bounding());
        assert_eq!(full.inheritable().as_ref().map(|i| i.len()), Some(0));
    }

    #[test]
    fn all_in_add_and_drop() {
        assert_eq!(bounding(&sec(&["ALL"], &[])).len(), ALL.len());
        let caps = bounding(&sec(&["all"], &["CHOWN"]));
        assert_eq!(caps.len(), ALL.len() - 1);
        assert!(!caps.contains(&Capability::Chown));
        assert!(bounding(&sec(&[], &["ALL"])).is_empty());
        let caps = bounding(&sec(&["NET_BIND_SERVICE"], &["ALL"]));
        assert_eq!(
            caps.into_iter().collect::<Vec<_>>(),
            vec![Capability::NetBindService]
        );
        assert!(compute(&sec(&["BOGUS"], &[]), &all_capabilities(None)).is_err());
        assert!(compute(&sec(&[], &["BOGUS"]), &all_capabilities(None)).is_err());
    }

    #[test]
    fn ambient_and_privileged() {
        let s = SecuritySpec {
            capabilities_drop: vec!["ALL".into()],
            capabilities_add_ambient: vec!["NET_BIND_SERVICE".into()],
            ..SecuritySpec::default()
        };
        let c = compute(&s, &all_capabilities(None)).expect("ambient");
        let one: Capabilities = [Capability::NetBindService].into_iter().collect();
        assert_eq!(c.ambient().as_ref(), Some(&one));
        assert_eq!(c.inheritable().as_ref(), Some(&one));
        assert_eq!(c.permitted().as_ref(), Some(&one));

        let s = SecuritySpec {
            privileged: true,
            capabilities_drop: vec!["ALL".into()],
            ..SecuritySpec::default()
        };
        let mut r = compute(&sec(&["ALL"], &[]), &all_capabilities(None)).expect("all");
        // CAP_SYS_RESOURCE (24) missing from the mask: it goes from every set
        restrict(&mut r, !(1u64 << 24));
        assert!(
            !r.bounding()
                .clone()
                .unwrap_or_default()
                .contains(&Capability::SysResource)
        );
        assert!(
            r.bounding()
                .clone()
                .unwrap_or_default()
                .contains(&Capability::SysAdmin)
        );
        assert!(
            !r.effective()
                .clone()
                .unwrap_or_default()
                .contains(&Capability::SysResource)
        );
        let all = all_capabilities(Some(40));
        let c = compute(&s, &all).expect("privileged");
        assert_eq!(c.bounding().as_ref(), Some(&all));
        assert_eq!(c.effective().as_ref(), Some(&all));
        assert_eq!(c.ambient().as_ref().map(|a| a.len()), Some(0));
    }
}
