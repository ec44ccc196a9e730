//! A small `/proc/self/mountinfo` reader (what is mounted where, with which options).

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The root of the mount within its file system (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: Vec<String>,
    /// Optional fields (`shared:N`, `master:N`, ...).
    pub optional: Vec<String>,
    /// File-system type.
    pub fs_type: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options (`rw,size=65536k,mode=1777`, cgroup controllers, ...).
    pub super_options: Vec<String>,
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    Some(MountEntry {
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        mount_options: split(fields[5]),
        optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
        fs_type: fields[sep + 1].to_string(),
        source: unescape(fields[sep + 2]),
        super_options: fields.get(sep + 3).map(|s| split(s)).unwrap_or_default(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` (deepest last, in mount order).
pub fn mounts_under(entries: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|e| e.mount_point.starts_with(dir))
        .map(|e| e.mount_point.clone())
        .collect()
}

/// The last (topmost) entry mounted exactly at `path`.
pub fn mounted_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_optional_fields_and_escapes() {
        let text = "25 24 0:23 / /dev/shm rw,nosuid,nodev shared:4 master:1 - tmpfs tmpfs rw,size=65536k,mode=1777\n\
                    31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                    40 24 0:30 / /tmp/a\\040b rw - tmpfs shm rw\n\
                    garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/dev/shm"));
        assert_eq!(m[0].optional, ["shared:4", "master:1"]);
        assert_eq!(m[0].fs_type, "tmpfs");
        assert!(m[0].super_options.contains(&"mode=1777".to_string()));
        assert_eq!(m[1].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(m[2].mount_point, Path::new("/tmp/a b"));
        assert_eq!(
            mounts_under(&m, Path::new("/tmp")),
            [PathBuf::from("/tmp/a b")]
        );
        assert!(mounted_at(&m, Path::new("/dev/shm")).is_some());
    }
}
