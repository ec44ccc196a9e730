//! The workspace's dependency rules (ARCHITECTURE.md, "Dependency direction"), checked against
//! `cargo metadata` so a forbidden edge fails CI.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Workspace crates each crate may depend on (normal and build dependencies).
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut m = BTreeMap::new();
    m.insert("unicri-proto", BTreeSet::new());
    m.insert("unicri-sandbox", BTreeSet::new());
    m.insert("unicri-mounts", BTreeSet::new());
    m.insert("unicri-streaming", BTreeSet::new());
    m.insert("unicri-vmm", BTreeSet::new());
    m.insert("unicri-storage", BTreeSet::from(["unicri-sandbox"]));
    m.insert("unicri-image", BTreeSet::from(["unicri-sandbox"]));
    m.insert(
        "unicri-network-cni",
        BTreeSet::from(["unicri-sandbox", "unicri-mounts"]),
    );
    m.insert(
        "unicri-runtime-linux",
        BTreeSet::from(["unicri-sandbox", "unicri-mounts"]),
    );
    // the wasm keeper speaks the linux keeper's protocol and reuses its client and log writer
    m.insert(
        "unicri-runtime-wasm",
        BTreeSet::from(["unicri-sandbox", "unicri-runtime-linux"]),
    );
    // the guest agent runs the linux keeper inside a vm pod's guest
    m.insert(
        "unicri-vm-agent",
        BTreeSet::from(["unicri-sandbox", "unicri-runtime-linux"]),
    );
    // the vm backend's host side: the keeper protocol and client, the agent protocol
    m.insert(
        "unicri-runtime-vm",
        BTreeSet::from([
            "unicri-sandbox",
            "unicri-mounts",
            "unicri-runtime-linux",
            "unicri-vm-agent",
        ]),
    );
    m.insert(
        "unicri-cri-server",
        BTreeSet::from([
            "unicri-proto",
            "unicri-sandbox",
            "unicri-storage",
            "unicri-image",
            "unicri-network-cni",
            "unicri-runtime-linux",
            "unicri-runtime-wasm",
            "unicri-runtime-vm",
            "unicri-vm-agent",
            "unicri-vmm",
            "unicri-mounts",
            "unicri-streaming",
        ]),
    );
    m
}

#[test]
fn workspace_dependencies_point_the_allowed_way() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    let rules = allowed();
    let mut violations = vec![];
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            let dev = d["kind"].as_str() == Some("dev");
            if !members.contains(dep) || dev {
                continue;
            }
            if dep == "unicri-cri-server" {
                violations.push(format!("{name} depends on unicri-cri-server; nothing may"));
            }
            if let Some(ok) = rules.get(name)
                && !ok.contains(dep)
            {
                violations.push(format!("{name} must not depend on {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency rule violations:\n{}",
        violations.join("\n")
    );
    for crate_name in rules.keys() {
        assert!(
            members.contains(*crate_name),
            "workspace lost crate {crate_name}"
        );
    }
}
