//! Shared fixtures of the crate's integration tests: root check, the UML kernel, a pod netns
//! with a CNI-like `eth0` (a veth whose peer sits in a second netns).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The UML kernel: `$UNICRI_UML_KERNEL`, else the newest `/var/cache/unicri/uml-kernel/*/linux`.
pub fn uml_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UNICRI_UML_KERNEL") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let root = Path::new("/var/cache/unicri/uml-kernel");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join("linux"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Two named netns: `pod` (pin `/run/netns/<pod>`) with `eth0` = 10.<n>.0.2/24, default route
/// via 10.<n>.0.1, and `peer` holding the other veth end with 10.<n>.0.1/24.
pub struct PodNetns {
    pub pod: String,
    pub peer: String,
    pub pin: PathBuf,
    pub mac: String,
}

impl PodNetns {
    pub fn new(tag: &str, octet: u8) -> PodNetns {
        let pod = format!("uvt-{tag}-{}", std::process::id());
        let peer = format!("{pod}-p");
        for n in [&pod, &peer] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
        }
        let mut f = Self {
            pin: PathBuf::from(format!("/run/netns/{pod}")),
            pod: pod.clone(),
            peer: peer.clone(),
            mac: String::new(),
        };
        let addr = format!("10.{octet}.0.2/24");
        let gw = format!("10.{octet}.0.1");
        let gwa = format!("10.{octet}.0.1/24");
        sh(&[
            "ip", "-n", &pod, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
            "veth-p", "netns", &peer,
        ]);
        sh(&["ip", "-n", &pod, "addr", "add", &addr, "dev", "eth0"]);
        sh(&["ip", "-n", &pod, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &pod, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &pod, "route", "add", "default", "via", &gw]);
        sh(&["ip", "-n", &peer, "addr", "add", &gwa, "dev", "veth-p"]);
        sh(&["ip", "-n", &peer, "link", "set", "veth-p", "up"]);
        let j = sh(&["ip", "-n", &pod, "-j", "link", "show", "eth0"]);
        let v: serde_json::Value = serde_json::from_str(&j).expect("ip json");
        f.mac = v[0]["address"].as_str().unwrap_or_default().to_string();
        f
    }

    pub fn links(&self) -> Vec<String> {
        let j = sh(&["ip", "-n", &self.pod, "-j", "link", "show"]);
        let v: Vec<serde_json::Value> = serde_json::from_str(&j).expect("ip json");
        v.iter()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        for n in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}
