//! The user a container runs as: `/etc/passwd` and `/etc/group` parsed from the container's
//! rootfs (never the node's, never through libc's NSS), with containerd's rules for which of
//! `run_as_user` / `run_as_username` / `run_as_group` / the image's `User` wins.
//!
//! Files are looked up with [`resolve_in_root`], so symlinks in the image cannot point the lookup
//! at the node's files.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use unicri_sandbox::container::SecuritySpec;

use crate::error::LinuxError;

/// Most symlinks followed while resolving one path in a rootfs (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;

/// One line of `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// User names listed as members.
    pub members: Vec<String>,
}

/// The resolved identity of a container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids: the primary gid first (containerd ≥ 1.7 does so), then the groups
    /// of `/etc/group` listing the user, then `supplemental_groups`; no duplicates.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, `/` when the user has no entry.
    pub home: String,
}

/// Parses `/etc/passwd` text; malformed lines (and `+`/`-` NIS lines) are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `path` (taken as absolute inside `root`) to a path on the node that stays inside
/// `root`: symlinks are followed as if `root` were `/` (absolute targets restart at `root`, `..`
/// never climbs above it). Components that do not exist are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut queue: VecDeque<OsString> = components(path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(queue);
                queue = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Normal and `..` components of `path` (root and `.` dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Reads `<rootfs>/<file>`; `None` when it does not exist.
fn read_rootfs_file(rootfs: &Path, file: &str) -> Result<Option<String>, LinuxError> {
    let path = resolve_in_root(rootfs, Path::new(file)).map_err(|source| LinuxError::SpecIo {
        op: "resolve",
        path: rootfs.join(file.trim_start_matches('/')),
        source,
    })?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LinuxError::SpecIo {
            op: "read",
            path,
            source,
        }),
    }
}

/// Reads and parses `<rootfs>/etc/passwd`; `None` when the image has none.
pub fn read_passwd(rootfs: &Path) -> Result<Option<Vec<PasswdEntry>>, LinuxError> {
    Ok(read_rootfs_file(rootfs, "/etc/passwd")?.map(|t| parse_passwd(&t)))
}

/// Reads and parses `<rootfs>/etc/group`; `None` when the image has none.
pub fn read_group(rootfs: &Path) -> Result<Option<Vec<GroupEntry>>, LinuxError> {
    Ok(read_rootfs_file(rootfs, "/etc/group")?.map(|t| parse_group(&t)))
}

/// A user or group as written: a number or a name.
fn numeric(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Resolves the process identity of a container (containerd 1.7's rules):
///
/// * the user is `run_as_username`, else `run_as_user`, else the image's `User` (`uid`, `name`,
///   `uid:gid`, `name:group`, `uid:group`, `name:gid`); nothing at all is root;
/// * `run_as_group` without `run_as_user`/`run_as_username` is refused (CRI says so);
/// * the gid is `run_as_group`, else the group part of the image's `User`, else the passwd
///   entry's primary gid, else 0;
/// * names are looked up in the rootfs' `/etc/passwd` / `/etc/group`; an unknown name (or a
///   missing file) is an [`LinuxError::InvalidArgument`] naming it; numeric ids need no entry.
pub fn resolve(
    rootfs: &Path,
    security: &SecuritySpec,
    image_user: &str,
) -> Result<ResolvedUser, LinuxError> {
    let (user, group): (String, Option<String>) = if !security.run_as_username.is_empty() {
        (
            security.run_as_username.clone(),
            security.run_as_group.map(|g| g.to_string()),
        )
    } else if let Some(uid) = security.run_as_user {
        (
            uid.to_string(),
            security.run_as_group.map(|g| g.to_string()),
        )
    } else if let Some(gid) = security.run_as_group {
        return Err(LinuxError::InvalidArgument {
            what: "run_as_group",
            value: gid.to_string(),
            reason: "set without run_as_user or run_as_username".into(),
        });
    } else {
        match image_user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (image_user.to_string(), None),
        }
    };
    let user = if user.is_empty() {
        "0".to_string()
    } else {
        user
    };
    let group = group.filter(|g| !g.is_empty());

    // files are read lazily: numeric ids work in images without /etc/passwd
    let passwd = read_passwd(rootfs)?;
    let entry = match numeric(&user) {
        Some(uid) => passwd
            .as_ref()
            .and_then(|p| p.iter().find(|e| e.uid == uid).cloned()),
        None => {
            let found = passwd
                .as_ref()
                .and_then(|p| p.iter().find(|e| e.name == user).cloned());
            match found {
                Some(e) => Some(e),
                None => {
                    return Err(LinuxError::InvalidArgument {
                        what: "user",
                        value: user,
                        reason: if passwd.is_none() {
                            "the image has no /etc/passwd to look the name up in".into()
                        } else {
                            "no such user in the image's /etc/passwd".into()
                        },
                    });
                }
            }
        }
    };
    let uid = match numeric(&user) {
        Some(uid) => uid,
        None => entry.as_ref().map_or(0, |e| e.uid),
    };

    let needs_groups = group.as_deref().is_some_and(|g| numeric(g).is_none()) || entry.is_some();
    let groups = if needs_groups {
        read_group(rootfs)?
    } else {
        None
    };
    let gid = match group {
        Some(g) => match numeric(&g) {
            Some(gid) => gid,
            None => match groups
                .as_ref()
                .and_then(|gs| gs.iter().find(|e| e.name == g))
            {
                Some(e) => e.gid,
                None => {
                    return Err(LinuxError::InvalidArgument {
                        what: "group",
                        value: g,
                        reason: if groups.is_none() {
                            "the image has no /etc/group to look the name up in".into()
                        } else {
                            "no such group in the image's /etc/group".into()
                        },
                    });
                }
            },
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };

    let mut additional = vec![gid];
    if let (Some(e), Some(groups)) = (&entry, &groups) {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.name != e.name && g.members.contains(&e.name))
                .map(|g| g.gid),
        );
    }
    additional.extend(security.supplemental_groups.iter().copied());
    let mut additional_gids = Vec::with_capacity(additional.len());
    for g in additional {
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }

    let home = entry
        .as_ref()
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        www:x:33:33:www:/var/www:/bin/false\n\
        alice:x:1000:1000::/home/alice:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        www:x:33:alice\n\
        alice:x:1000:alice\n\
        audio:x:29:alice,bob\n\
        video:x:44:bob\n";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).expect("passwd");
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).expect("group");
        }
        dir
    }

    #[test]
    fn parses_passwd_and_group_skipping_junk() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(p[3].name, "alice");
        assert_eq!(p[3].home, "/home/alice");
        let g = parse_group(GROUP);
        assert_eq!(g[4].members, vec!["alice", "bob"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn image_user_by_name_gets_passwd_ids_groups_and_home() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(root.path(), &SecuritySpec::default(), "alice").expect("resolve");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        // primary first, own-name group skipped as supplementary, then member groups
        assert_eq!(u.additional_gids, vec![1000, 33, 29]);
        assert_eq!(u.home, "/home/alice");
    }

    #[test]
    fn numeric_and_mixed_forms() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let sec = SecuritySpec::default();
        let u = resolve(root.path(), &sec, "33").expect("uid");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (33, 33, "/var/www"));
        let u = resolve(root.path(), &sec, "1000:44").expect("uid:gid");
        assert_eq!((u.uid, u.gid), (1000, 44));
        let u = resolve(root.path(), &sec, "alice:video").expect("name:group");
        assert_eq!((u.uid, u.gid), (1000, 44));
        assert_eq!(u.additional_gids, vec![44, 33, 29]);
        let u = resolve(root.path(), &sec, "4242").expect("unknown uid");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = resolve(root.path(), &sec, "").expect("root");
        assert_eq!((u.uid, u.gid, u.additional_gids.clone()), (0, 0, vec![0]));
    }

    #[test]
    fn security_context_wins_over_image_user() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let sec = SecuritySpec {
            run_as_user: Some(1),
            run_as_group: Some(44),
            supplemental_groups: vec![5000, 44],
            ..SecuritySpec::default()
        };
        let u = resolve(root.path(), &sec, "alice").expect("resolve");
        assert_eq!((u.uid, u.gid), (1, 44));
        assert_eq!(u.additional_gids, vec![44, 5000]);
        let sec = SecuritySpec {
            run_as_user: Some(1),
            run_as_username: "www".into(),
            ..SecuritySpec::default()
        };
        let u = resolve(root.path(), &sec, "").expect("username wins");
        assert_eq!((u.uid, u.gid), (33, 33));
    }

    #[test]
    fn group_without_user_and_unknown_names_are_refused() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let sec = SecuritySpec {
            run_as_group: Some(1),
            ..SecuritySpec::default()
        };
        assert!(matches!(
            resolve(root.path(), &sec, "alice"),
            Err(LinuxError::InvalidArgument {
                what: "run_as_group",
                ..
            })
        ));
        let err = resolve(root.path(), &SecuritySpec::default(), "nobody").expect_err("unknown");
        assert!(err.to_string().contains("nobody"), "{err}");
        let err = resolve(root.path(), &SecuritySpec::default(), "alice:staff").expect_err("group");
        assert!(err.to_string().contains("staff"), "{err}");
    }

    #[test]
    fn rootfs_without_files_allows_numbers_only() {
        let root = rootfs(None, None);
        let u = resolve(root.path(), &SecuritySpec::default(), "1000:1000").expect("numeric");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![1000])
        );
        let err = resolve(root.path(), &SecuritySpec::default(), "alice").expect_err("name");
        assert!(err.to_string().contains("alice"), "{err}");
    }

    #[test]
    fn symlinked_passwd_stays_inside_the_rootfs() {
        let root = rootfs(None, None);
        let real = root.path().join("real");
        std::fs::create_dir_all(&real).expect("real");
        std::fs::write(real.join("passwd"), "bob:x:7:8::/b:/bin/sh\n").expect("write");
        // an absolute link resolves against the rootfs, not the node
        std::os::unix::fs::symlink("/real/passwd", root.path().join("etc/passwd")).expect("link");
        let u = resolve(root.path(), &SecuritySpec::default(), "bob").expect("bob");
        assert_eq!((u.uid, u.gid), (7, 8));
        // `..` cannot climb out
        let p = resolve_in_root(root.path(), Path::new("/../../etc/passwd")).expect("resolve");
        assert!(p.starts_with(root.path()), "{}", p.display());
    }
}
