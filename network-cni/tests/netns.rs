//! Pinned network namespaces against the real kernel (root only; skipped loudly otherwise).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use unicri_network_cni::CniError;
use unicri_network_cni::netns::{self, NetNs, is_pinned, run_in};

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: network namespace tests need root");
        return true;
    }
    false
}

/// Removes pins and the pin dir's self mount even when the test fails.
struct PinDir {
    dir: tempfile::TempDir,
    pins: Vec<PathBuf>,
}

impl PinDir {
    fn new() -> Self {
        PinDir {
            dir: tempfile::tempdir().expect("tempdir"),
            pins: vec![],
        }
    }
    fn pin(&mut self, name: &str) -> PathBuf {
        let p = self.dir.path().join("netns").join(name);
        self.pins.push(p.clone());
        p
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for p in &self.pins {
            let _ = NetNs::remove(p);
        }
        let _ = netns::release_pin_dir(&self.dir.path().join("netns"));
    }
}

fn mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
}

fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("ns")
        .ino()
}

#[test]
fn create_run_in_and_remove() {
    if skip() {
        return;
    }
    let mut d = PinDir::new();
    let pin = d.pin("a");
    let ns = NetNs::create(&pin).expect("create");
    assert_eq!(ns.path(), pin);
    assert!(is_pinned(&pin));
    assert!(mounted(&pin), "pin is a mount");
    let pin_dir = std::fs::canonicalize(d.dir.path().join("netns")).expect("canon");
    assert!(mounted(&pin_dir), "pin dir is a self bind mount");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir_line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(pin_dir.to_string_lossy().as_ref()))
        .expect("dir line");
    assert!(
        dir_line.contains("shared:"),
        "pin dir propagation is shared: {dir_line}"
    );

    // a second create on the same pin is refused; a different pin is a different namespace
    assert!(matches!(
        NetNs::create(&pin),
        Err(CniError::NetNsExists { .. })
    ));
    let pin_b = d.pin("b");
    NetNs::create(&pin_b).expect("create b");

    let host = netns_inode();
    let (in_a, devs, lo_listen) = run_in(&pin, || {
        let devs = std::fs::read_to_string("/proc/thread-self/net/dev").expect("dev");
        // a fresh namespace has only lo, and it is down
        let lo = TcpListener::bind("127.0.0.1:0").and_then(|l| TcpStream::connect(l.local_addr()?));
        (netns_inode(), devs, lo.is_ok())
    })
    .expect("run_in a");
    let in_b = run_in(&pin_b, netns_inode).expect("run_in b");
    assert_ne!(in_a, host);
    assert_ne!(in_a, in_b);
    assert_eq!(netns_inode(), host, "the caller's thread never moved");
    let names: Vec<_> = devs
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"]);
    assert!(
        !lo_listen,
        "lo of a new netns is down until the loopback plugin runs"
    );

    // the same namespace is entered again (pinned, not recreated)
    assert_eq!(run_in(&pin, netns_inode).expect("again"), in_a);

    // panics inside run_in reach the caller
    let caught = std::panic::catch_unwind(|| run_in(&pin, || panic!("inside")));
    assert!(caught.is_err());

    NetNs::remove(&pin).expect("remove");
    assert!(!pin.exists());
    assert!(!mounted(&pin));
    NetNs::remove(&pin).expect("remove twice");
    match NetNs::open(&pin) {
        Err(e) => assert_eq!(
            unicri_sandbox::Classify::kind(&e),
            unicri_sandbox::ErrorKind::NotFound
        ),
        Ok(_) => panic!("opened a removed netns"),
    }
    // a plain file is not a netns
    std::fs::write(&pin, b"").expect("write");
    assert!(matches!(NetNs::open(&pin), Err(CniError::NotNetNs { .. })));
    // ...and a leftover plain file (crash between create and mount) is reused by create
    NetNs::create(&pin).expect("create over leftover file");
    drop(ns);
    NetNs::remove(&pin).expect("remove");
    NetNs::remove(&pin_b).expect("remove b");
    assert!(!mounted(&pin_b));
}

#[test]
fn create_from_many_threads() {
    if skip() {
        return;
    }
    let mut d = PinDir::new();
    let pins: Vec<_> = (0..8).map(|i| d.pin(&format!("p{i}"))).collect();
    std::thread::scope(|s| {
        for p in &pins {
            s.spawn(move || NetNs::create(p).expect("create"));
        }
    });
    let mut inodes: Vec<u64> = pins
        .iter()
        .map(|p| run_in(p, netns_inode).expect("run_in"))
        .collect();
    inodes.sort();
    inodes.dedup();
    assert_eq!(inodes.len(), pins.len());
    for p in &pins {
        NetNs::remove(p).expect("remove");
        assert!(!mounted(p));
    }
}
