//! Fake plugins for unit tests: shell scripts that record their invocations.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory with fake plugin binaries and a log of their calls.
pub(crate) struct FakePlugins {
    pub dir: tempfile::TempDir,
}

impl FakePlugins {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir bin");
        std::fs::create_dir(dir.path().join("stdin")).expect("mkdir stdin");
        FakePlugins { dir }
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Adds plugin `name`: it logs `<CMD> <name> <CONTAINERID> <NETNS> <IFNAME> <ARGS> <PATH>`,
    /// saves its stdin to `stdin/<CMD>-<name>.json`, then runs `body` (shell; may print a
    /// result or fail).
    pub fn add(&self, name: &str, body: &str) {
        let script = format!(
            "#!/bin/sh\nin=$(cat)\nprintf '%s\\n' \"$CNI_COMMAND {name} $CNI_CONTAINERID netns=$CNI_NETNS $CNI_IFNAME $CNI_ARGS $CNI_PATH\" >> {log}\nprintf '%s' \"$in\" > {stdin}/$CNI_COMMAND-{name}.json\n{body}\nexit 0\n",
            log = self.log().display(),
            stdin = self.dir.path().join("stdin").display(),
        );
        write_exec(&self.bin().join(name), &script);
    }

    /// A plugin that answers ADD with a result naming itself and an address on `eth0`.
    pub fn add_ok(&self, name: &str, ip: &str) {
        self.add(
            name,
            &format!(
                r#"if [ "$CNI_COMMAND" = ADD ]; then printf '%s' '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"/ns"}}],"ips":[{{"address":"{ip}/24","interface":0}}],"dns":{{"domain":"{name}"}}}}'; fi"#
            ),
        );
    }

    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn stdin(&self, command: &str, name: &str) -> serde_json::Value {
        let p = self.dir.path().join(format!("stdin/{command}-{name}.json"));
        serde_json::from_slice(&std::fs::read(&p).expect("stdin file")).expect("stdin json")
    }
}

pub(crate) fn write_exec(path: &Path, text: &str) {
    // write to a temp name and rename so no writable fd of the final path ever exists (avoids
    // ETXTBSY when another thread forks while we write)
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}
