//! A CNI network for end-to-end tests: a bridge + host-local + portmap conflist in a temp dir,
//! with a bridge name and /24 unique to the test process; the bridge is deleted on drop.

use anyhow::Result;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const PLUGINS: &str = "/usr/lib/cni";

/// The network.
pub struct Net {
    /// Holds `net.d/` and the IPAM data dir.
    pub dir: tempfile::TempDir,
    /// Bridge device name.
    pub bridge: String,
    /// First three octets of the /24.
    pub subnet: String,
}

impl Net {
    /// Writes the conflist (each call in a process gets its own bridge and /24).
    pub fn new() -> Result<Net> {
        let dir = tempfile::tempdir()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = (std::process::id() + k * 53) % 200 + 20;
        let bridge = format!("ucri{n}");
        let subnet = format!("10.251.{n}");
        std::fs::create_dir_all(dir.path().join("net.d"))?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "unicri-e2e",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet}.0/24")}]],
                          "dataDir": dir.path().join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(dir.path().join("net.d/10-e2e.conflist"), conf.to_string())?;
        Ok(Net {
            dir,
            bridge,
            subnet,
        })
    }

    /// The daemon config lines that point at this net.
    pub fn config(&self) -> String {
        format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{PLUGINS}\"]\n",
            self.dir.path().join("net.d").display()
        )
    }

    /// Interfaces attached to the bridge.
    pub fn veths_on_bridge(&self) -> usize {
        let p = format!("/sys/class/net/{}/brif", self.bridge);
        std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
