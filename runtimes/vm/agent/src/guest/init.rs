//! PID 1 duties before serving: put a bind mount of the initramfs over it as `/` (so that the
//! keeper's containers can `pivot_root`), mount the API filesystems, set up cgroup v2, bring up
//! loopback and the control NIC.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use unicri_vm_agent::proto;

use super::error::{Error, Result};
use super::mounts::mount_once;
use super::netlink::{LinkChange, Netlink};

/// Present in the root once [`switch_root`] bound it.
const SWITCHED_MARKER: &str = "/.unicri-switched";
const NEW_ROOT: &str = "/.unicri-root";
/// Controllers enabled for containers when the kernel has them.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The pod cgroup in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The value of `key=` on a kernel command line.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// A MAC in canonical form (lowercase, colons), if it is one.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = Vec::with_capacity(6);
    for p in parts {
        if p.len() != 2 {
            return None;
        }
        out.push(format!("{:02x}", u8::from_str_radix(p, 16).ok()?));
    }
    Some(out.join(":"))
}

/// The controllers of [`CONTROLLERS`] that `available` (a `cgroup.controllers` text) lists.
pub fn controllers_to_enable(available: &str) -> Vec<&'static str> {
    let have: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS
        .into_iter()
        .filter(|c| have.contains(c))
        .collect()
}

/// Whether this process still runs from the initramfs (before [`switch_root`]).
pub fn needs_switch_root() -> bool {
    !Path::new(SWITCHED_MARKER).exists()
}

/// Make `/` a bind mount of the initramfs instead of the initramfs itself: `pivot_root` (which
/// libcontainer uses for every container) refuses a root that is the namespace's first mount
/// (rootfs), not one mounted on top of it. Nothing is copied and nothing re-executed: the
/// files stay where the kernel unpacked them, this process goes on.
pub fn switch_root() -> Result<()> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::internal(format!("{what}: {e}"));
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| fail("create the new root", &e))?;
    nix::mount::mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("bind the initramfs onto the new root", &e))?;
    std::env::set_current_dir(NEW_ROOT).map_err(|e| fail("enter the new root", &e))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail("move the new root to /", &e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot into the new root", &e))?;
    std::env::set_current_dir("/").map_err(|e| fail("enter /", &e))?;
    // the mount point, seen from the new root: an empty directory
    let _ = std::fs::remove_dir(NEW_ROOT);
    std::fs::write(SWITCHED_MARKER, b"").map_err(|e| fail("mark the new root", &e))
}

/// Mount the API filesystems, give PID 1 a console if the kernel found none, set up cgroups.
pub fn mount_basics() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_once("proc", "/proc", "proc", nodev, None)?;
    mount_once("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_once(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    fix_stdio();
    mount_once(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    if std::fs::symlink_metadata("/dev/ptmx").is_err() {
        std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
            .map_err(|e| Error::io("link /dev/ptmx to pts/ptmx", &e))?;
    }
    mount_once("shm", "/dev/shm", "tmpfs", nodev, Some("mode=1777"))?;
    mount_once(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_once(
        "tmp",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_once("cgroup2", CGROUP_ROOT, "cgroup2", nodev, None)?;
    setup_cgroups()
}

/// Without a `/dev/console` in the initramfs the kernel starts PID 1 with no stdio: open it
/// from devtmpfs then.
fn fix_stdio() {
    if nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = nix::unistd::dup2(console.as_raw_fd(), fd);
        }
    }
}

fn setup_cgroups() -> Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|e| Error::io("read cgroup.controllers", &e))?;
    let wanted = controllers_to_enable(&available);
    enable_controllers(root, &wanted);
    let pod = format!("{CGROUP_ROOT}{}", proto::paths::POD_CGROUP);
    std::fs::create_dir_all(&pod).map_err(|e| Error::io(format!("create cgroup {pod}"), &e))?;
    enable_controllers(Path::new(&pod), &wanted);
    Ok(())
}

fn enable_controllers(dir: &Path, controllers: &[&str]) {
    for c in controllers {
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            tracing::warn!(dir = %dir.display(), controller = c, error = %e, "cannot enable cgroup controller");
        }
    }
}

/// Bring up `lo` in the calling thread's network namespace.
pub fn loopback_up() -> Result<()> {
    let index = nix::net::if_::if_nametoindex("lo").map_err(|e| Error::sys("find lo", e))?;
    let mut nl = Netlink::open().map_err(|e| Error::io("open netlink", &e))?;
    nl.set_link(
        index,
        &LinkChange {
            up: true,
            ..LinkChange::default()
        },
    )
    .map_err(|e| Error::io("bring up lo", &e))
}

/// The ifindex and name of the NIC with `mac` in the root network namespace (from sysfs,
/// which was mounted there).
pub fn find_nic(mac: &str) -> Option<(u32, String)> {
    for entry in std::fs::read_dir("/sys/class/net").ok()?.flatten() {
        let dir = entry.path();
        let Ok(addr) = std::fs::read_to_string(dir.join("address")) else {
            continue;
        };
        if normalize_mac(&addr).as_deref() == Some(mac) {
            let index = std::fs::read_to_string(dir.join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            return Some((index, entry.file_name().to_string_lossy().into_owned()));
        }
    }
    None
}

/// Find the control NIC named by `unicri.ctl=` (waiting up to `wait` for it), give it the
/// guest's control address and bring it up.
pub fn control_nic(cmdline: &str, wait: Duration) -> Result<String> {
    let raw = cmdline_value(cmdline, proto::CMDLINE_CTL).ok_or_else(|| {
        Error::invalid(format!(
            "the kernel command line has no {}=<mac>",
            proto::CMDLINE_CTL
        ))
    })?;
    let mac = normalize_mac(&raw).ok_or_else(|| {
        Error::invalid(format!(
            "{}={raw:?} is not a MAC address",
            proto::CMDLINE_CTL
        ))
    })?;
    let start = Instant::now();
    let (index, name) = loop {
        if let Some(found) = find_nic(&mac) {
            break found;
        }
        if start.elapsed() > wait {
            return Err(Error::not_found(format!(
                "no NIC with MAC {mac} (control link) after {wait:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let ip: Ipv4Addr = proto::GUEST_CTL_IP
        .parse()
        .map_err(|e| Error::internal(format!("GUEST_CTL_IP: {e}")))?;
    let mut nl = Netlink::open().map_err(|e| Error::io("open netlink", &e))?;
    match nl.add_address(index, IpAddr::V4(ip), proto::CTL_PREFIX) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io(format!("add {ip} to {name}"), &e)),
    }
    // a gratuitous ARP when the link comes up: a host SYN waiting for ARP resolution of the
    // guest address goes out at once instead of at the host's next ARP retry (1 s)
    let notify = format!("/proc/sys/net/ipv4/conf/{name}/arp_notify");
    if let Err(e) = std::fs::write(&notify, "1") {
        tracing::debug!(error = %e, file = %notify, "cannot enable arp_notify");
    }
    nl.set_link(
        index,
        &LinkChange {
            up: true,
            ..LinkChange::default()
        },
    )
    .map_err(|e| Error::io(format!("bring up {name}"), &e))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let c = "mem=128M initrd=x unicri.ctl=02:00:00:00:00:02 con=null quiet\n";
        assert_eq!(
            cmdline_value(c, "unicri.ctl").as_deref(),
            Some("02:00:00:00:00:02")
        );
        assert_eq!(cmdline_value(c, "mem").as_deref(), Some("128M"));
        assert_eq!(cmdline_value(c, "quiet"), None);
        assert_eq!(cmdline_value(c, "unicri"), None);
        assert_eq!(
            normalize_mac("02:00:00:AA:bb:0C\n").as_deref(),
            Some("02:00:00:aa:bb:0c")
        );
        assert_eq!(normalize_mac("02:00:00:aa:bb"), None);
        assert_eq!(normalize_mac("02:00:00:aa:bb:zz"), None);
        assert_eq!(normalize_mac("2:0:0:aa:bb:cc"), None);
    }

    #[test]
    fn controllers() {
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n"),
            vec!["cpu", "memory", "pids"]
        );
        assert_eq!(controllers_to_enable("memory pids"), vec!["memory", "pids"]);
        assert!(controllers_to_enable("").is_empty());
    }
}
