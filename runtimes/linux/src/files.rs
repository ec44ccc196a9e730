//! The pod's files: `hostname`, `hosts`, `resolv.conf`, each written atomically (temp file in the
//! same directory, fsync, rename), mode 0644. Containers bind-mount them later.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use unicri_sandbox::pod::DnsSpec;

use crate::error::LinuxError;

/// The node's resolver configuration, copied when a pod has no DNS settings (like containerd).
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The node's hosts file, copied for host-network pods (like containerd).
pub const HOST_HOSTS: &str = "/etc/hosts";

/// The `hosts` header of a pod with its own network (the pod IP line is added after CNI ADD).
pub const HOSTS_HEADER: &str = "# Kubernetes-managed hosts file (unicri).\n\
127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
fe00::0\tip6-mcastprefix\n\
fe00::1\tip6-allnodes\n\
fe00::2\tip6-allrouters\n";

/// Renders resolv.conf from a non-empty [`DnsSpec`]: `search`, `nameserver` lines, `options`.
/// Refuses entries that would inject lines or are not addresses (servers).
pub fn render_resolv_conf(dns: &DnsSpec) -> Result<String, LinuxError> {
    let token = |what: &'static str, v: &str| -> Result<(), LinuxError> {
        if v.is_empty()
            || v.chars()
                .any(|c| c.is_whitespace() || c == '\0' || c == '#' || c == ';')
        {
            return Err(LinuxError::InvalidArgument {
                what,
                value: v.to_string(),
                reason: "empty or contains whitespace or comment characters".into(),
            });
        }
        Ok(())
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        dns.searches
            .iter()
            .try_for_each(|s| token("dns search", s))?;
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        token("dns server", server)?;
        // a zone suffix (fe80::1%eth0) is allowed after the address
        let addr = server.split('%').next().unwrap_or_default();
        if addr.parse::<IpAddr>().is_err() {
            return Err(LinuxError::InvalidArgument {
                what: "dns server",
                value: server.clone(),
                reason: "not an IP address".into(),
            });
        }
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        dns.options
            .iter()
            .try_for_each(|o| token("dns option", o))?;
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// `hosts` with a line for the pod IP appended (idempotent: an existing line for `ip` is replaced).
pub fn hosts_with_pod_ip(current: &str, ip: IpAddr, hostname: &str) -> String {
    let ip_text = ip.to_string();
    let mut out: String = current
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(ip_text.as_str()))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{ip_text}\t{hostname}\n"));
    out
}

/// Adds (or replaces) the pod IP line of the pod's `hosts` file.
pub fn add_pod_ip(hosts_file: &Path, ip: IpAddr, hostname: &str) -> Result<(), LinuxError> {
    let current = std::fs::read_to_string(hosts_file).map_err(|source| LinuxError::PodFile {
        op: "read",
        path: hosts_file.to_path_buf(),
        source,
    })?;
    write_atomic(
        hosts_file,
        hosts_with_pod_ip(&current, ip, hostname).as_bytes(),
    )
}

/// Validates a hostname for `sethostname` and the hostname file (1–64 bytes, no whitespace,
/// NUL or `/`).
pub fn check_hostname(name: &str) -> Result<(), LinuxError> {
    if name.is_empty()
        || name.len() > 64
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '\0' || c == '/')
    {
        return Err(LinuxError::InvalidArgument {
            what: "hostname",
            value: name.to_string(),
            reason: "must be 1 to 64 bytes without whitespace, NUL or '/'".into(),
        });
    }
    Ok(())
}

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LinuxError> {
    let err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| LinuxError::PodFile {
            op,
            path: p,
            source,
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(data).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(err("rename into place", path))
}

/// Copies the node file `from` to `to` atomically.
pub(crate) fn copy_atomic(from: &Path, to: &Path) -> Result<(), LinuxError> {
    let data = std::fs::read(from).map_err(|source| LinuxError::PodFile {
        op: "read",
        path: from.to_path_buf(),
        source,
    })?;
    write_atomic(to, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_resolv_conf_in_containerd_order() {
        let dns = DnsSpec {
            servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        assert_eq!(
            render_resolv_conf(&dns).expect("render"),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n"
        );
        let only_servers = DnsSpec {
            servers: vec!["1.1.1.1".into()],
            ..DnsSpec::default()
        };
        assert_eq!(
            render_resolv_conf(&only_servers).expect("render"),
            "nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn refuses_line_injection_and_bad_servers() {
        for dns in [
            DnsSpec {
                servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
                ..DnsSpec::default()
            },
            DnsSpec {
                servers: vec!["dns.example".into()],
                ..DnsSpec::default()
            },
            DnsSpec {
                searches: vec!["a b".into()],
                ..DnsSpec::default()
            },
            DnsSpec {
                options: vec!["".into()],
                ..DnsSpec::default()
            },
        ] {
            assert!(render_resolv_conf(&dns).is_err(), "{dns:?}");
        }
    }

    #[test]
    fn pod_ip_line_is_appended_once() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let once = hosts_with_pod_ip(HOSTS_HEADER, ip, "web-0");
        assert!(once.starts_with(HOSTS_HEADER));
        assert!(once.ends_with("10.1.2.3\tweb-0\n"));
        let twice = hosts_with_pod_ip(&once, ip, "web-0");
        assert_eq!(once, twice);
    }

    #[test]
    fn hostname_rules() {
        assert!(check_hostname("web-0").is_ok());
        assert!(check_hostname(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", &"a".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("hostname");
        write_atomic(&p, b"one\n").expect("write");
        write_atomic(&p, b"two\n").expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "two\n");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
