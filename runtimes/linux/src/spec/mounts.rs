//! The mounts of a container: the runtime defaults, the pod's files and `/dev/shm`, then the
//! spec's bind mounts (containerd 1.7's order and replacement rules).

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use unicri_sandbox::container::{MountSpec, Propagation};
use unicri_sandbox::pod::NamespaceMode;

use crate::error::LinuxError;
use crate::mountinfo::{self, MountEntry};

use super::SpecInputs;

/// The node's `/dev/shm`, bound into containers of host-IPC pods.
pub const HOST_SHM: &str = "/dev/shm";

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn bind(dest: &str, source: &Path, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some("bind".to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options));
    m
}

/// The runtime's default mounts. `/sys` and `/sys/fs/cgroup` are read-only unless privileged.
/// `/dev/shm` is not among them: it always comes from the pod (or the node).
pub fn default_mounts(privileged: bool) -> Vec<Mount> {
    let ro: &[&str] = if privileged { &[] } else { &["ro"] };
    let with = |base: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(ro.iter()).copied().collect()
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &with(&["nosuid", "noexec", "nodev"]),
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &with(&["nosuid", "noexec", "nodev", "relatime"]),
        ),
    ]
}

/// `path` made lexically clean (`.`/`..`/duplicate slashes resolved; stays absolute).
pub fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The mounts from the pod: `hostname`, `hosts`, `resolv.conf` (read-only with a read-only
/// rootfs, as containerd does) and `/dev/shm` (the pod's tmpfs, the node's for host IPC).
fn pod_mounts(inputs: &SpecInputs<'_>) -> Vec<Mount> {
    let st = inputs.pod_state;
    let rw = if inputs.container.security.readonly_rootfs {
        "ro"
    } else {
        "rw"
    };
    let opts = |mode: &str| {
        vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            mode.to_string(),
        ]
    };
    let mut out = vec![];
    for (dest, file) in [
        ("/etc/hostname", &st.hostname_file),
        ("/etc/hosts", &st.hosts_file),
        ("/etc/resolv.conf", &st.resolv_conf),
    ] {
        if let Some(f) = file {
            out.push(bind(dest, f, opts(rw)));
        }
    }
    match &st.shm {
        Some(shm) => out.push(bind("/dev/shm", shm, opts("rw"))),
        None if inputs.pod.namespaces.ipc == NamespaceMode::Node => {
            out.push(bind("/dev/shm", Path::new(HOST_SHM), opts("rw")));
        }
        None => out.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    out
}

/// The host mount holding `path` (the deepest mount point that is an ancestor; the last one
/// mounted wins).
fn mount_of<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .fold(None, |best: Option<&MountEntry>, e| match best {
            Some(b) if b.mount_point.components().count() > e.mount_point.components().count() => {
                Some(b)
            }
            _ => Some(e),
        })
}

/// Checks that the host mount of `path` can propagate as asked (containerd's `ensureShared` /
/// `ensureSharedOrSlave`).
fn check_propagation(
    entries: &[MountEntry],
    path: &Path,
    propagation: Propagation,
) -> Result<(), LinuxError> {
    let (name, needed, ok): (&'static str, &'static str, fn(&str) -> bool) = match propagation {
        Propagation::Private => return Ok(()),
        Propagation::HostToContainer => ("rslave", "shared or slave", |o| {
            o.starts_with("shared:") || o.starts_with("master:")
        }),
        Propagation::Bidirectional => ("rshared", "shared", |o| o.starts_with("shared:")),
    };
    let Some(m) = mount_of(entries, path) else {
        return Err(LinuxError::MountPropagation {
            path: path.to_path_buf(),
            propagation: name,
            mount_point: PathBuf::from("?"),
            needed,
        });
    };
    if m.optional.iter().any(|o| ok(o)) {
        Ok(())
    } else {
        Err(LinuxError::MountPropagation {
            path: path.to_path_buf(),
            propagation: name,
            mount_point: m.mount_point.clone(),
            needed,
        })
    }
}

/// One bind mount of the spec, validated. Returns the mount and the cleaned destination.
fn user_mount(
    m: &MountSpec,
    mountinfo: &mut Option<Vec<MountEntry>>,
) -> Result<(PathBuf, Mount), LinuxError> {
    if !m.image.is_empty() {
        return Err(LinuxError::SpecUnsupported {
            what: "image volume mounts",
            reason: format!("mount of image {:?} at {:?}", m.image, m.container_path),
        });
    }
    if !m.container_path.starts_with('/') {
        return Err(LinuxError::InvalidArgument {
            what: "mount container path",
            value: m.container_path.clone(),
            reason: "must be absolute".into(),
        });
    }
    if m.host_path.is_empty() {
        return Err(LinuxError::InvalidArgument {
            what: "mount host path",
            value: m.host_path.clone(),
            reason: format!("empty for the mount at {}", m.container_path),
        });
    }
    let host = Path::new(&m.host_path);
    // like containerd, a missing host path is made as a directory (kubelet's hostPath volumes
    // of type "" rely on it), and what symlinks point at is bound
    if !host.exists() && host.symlink_metadata().is_err() {
        std::fs::create_dir_all(host).map_err(|source| LinuxError::SpecIo {
            op: "create missing mount host path",
            path: host.to_path_buf(),
            source,
        })?;
    }
    let source = match std::fs::canonicalize(host) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LinuxError::SpecNotFound {
                what: "mount host path",
                path: host.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(LinuxError::SpecIo {
                op: "resolve mount host path",
                path: host.to_path_buf(),
                source,
            });
        }
    };
    let propagation = match m.propagation {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => "rslave",
        Propagation::Bidirectional => "rshared",
    };
    if m.propagation != Propagation::Private {
        if mountinfo.is_none() {
            *mountinfo = Some(mountinfo::read().map_err(|source| LinuxError::SpecIo {
                op: "read",
                path: PathBuf::from("/proc/self/mountinfo"),
                source,
            })?);
        }
        check_propagation(mountinfo.as_deref().unwrap_or(&[]), &source, m.propagation)?;
    }
    let dest = clean(&m.container_path);
    let options = vec![
        "rbind".to_string(),
        propagation.to_string(),
        if m.readonly { "ro" } else { "rw" }.to_string(),
    ];
    let mount = bind(&dest.to_string_lossy(), &source, options);
    Ok((dest, mount))
}

/// All mounts of the container, in order, and the rootfs propagation (`rslave` when a mount is
/// host-to-container, `rshared` when one is bidirectional, else unset).
///
/// A spec mount replaces a default or pod mount with the same destination; a spec mount at
/// `/dev` also replaces the defaults below `/dev`. Pod and spec mounts come after the defaults,
/// sorted by depth (stable), so a parent is mounted before what is mounted inside it.
pub fn build(inputs: &SpecInputs<'_>) -> Result<(Vec<Mount>, Option<String>), LinuxError> {
    let privileged = inputs.container.security.privileged;
    let mut mountinfo = None;
    let mut user = vec![];
    for m in &inputs.container.mounts {
        user.push(user_mount(m, &mut mountinfo)?);
    }
    let replaced = |dest: &Path, default: bool| {
        user.iter().any(|(d, _)| {
            d == dest || (default && d == Path::new("/dev") && dest.starts_with("/dev"))
        })
    };
    let mut out: Vec<Mount> = default_mounts(privileged)
        .into_iter()
        .filter(|m| !replaced(m.destination(), true))
        .collect();
    // pod mounts and spec mounts together, sorted by depth: a spec mount at /dev still gets the
    // pod's /dev/shm on top
    let mut extra: Vec<(PathBuf, Mount)> = pod_mounts(inputs)
        .into_iter()
        .filter(|m| !replaced(m.destination(), false))
        .map(|m| (m.destination().clone(), m))
        .collect();
    extra.append(&mut user);
    extra.sort_by_key(|(dest, _)| dest.components().count());
    // rootfsPropagation takes the OCI names (`shared`, `slave`); libcontainer 0.7 refuses the
    // recursive spellings runc also accepts
    let mut propagation = None;
    for m in &inputs.container.mounts {
        match m.propagation {
            Propagation::Bidirectional => propagation = Some("shared".to_string()),
            Propagation::HostToContainer if propagation.is_none() => {
                propagation = Some("slave".to_string())
            }
            _ => {}
        }
    }
    out.extend(extra.into_iter().map(|(_, m)| m));
    Ok((out, propagation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean("/a//b/./c/../d/"), PathBuf::from("/a/b/d"));
        assert_eq!(clean("/../x"), PathBuf::from("/x"));
    }

    #[test]
    fn propagation_check_reads_optional_fields() {
        let entries = mountinfo::parse(
            "1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             2 1 8:1 /p /mnt/private rw - ext4 /dev/sda1 rw\n\
             3 1 8:1 /s /mnt/slave rw master:7 - ext4 /dev/sda1 rw\n",
        );
        let p = |s: &str| PathBuf::from(s);
        assert!(check_propagation(&entries, &p("/var/x"), Propagation::Bidirectional).is_ok());
        assert!(
            check_propagation(&entries, &p("/mnt/slave/a"), Propagation::HostToContainer).is_ok()
        );
        let err = check_propagation(&entries, &p("/mnt/slave/a"), Propagation::Bidirectional)
            .expect_err("slave is not shared");
        assert!(matches!(err, LinuxError::MountPropagation { .. }), "{err}");
        assert!(
            check_propagation(&entries, &p("/mnt/private/a"), Propagation::HostToContainer)
                .is_err()
        );
        assert!(check_propagation(&entries, &p("/mnt/private/a"), Propagation::Private).is_ok());
    }
}
