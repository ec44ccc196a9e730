//! What one WebAssembly container runs with, as the daemon hands it to the keeper: a
//! [`WasmSpec`] in the bundle directory (`wasm.json`), made by [`build`] from the backend-neutral
//! container description and the image config.
//!
//! The rules follow the `linux` backend where WASI has the same notion: argv from entrypoint/cmd
//! (containerd's rules), environment (image then container), working directory. The container's
//! root filesystem is its overlay rootfs, preopened as `/`; a directory mount is preopened at its
//! container path (so WASI libc resolves `/config/x` through it); a file mount is bind-mounted
//! onto its path inside the rootfs by the daemon (WASI preopens are directories only).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use unicri_sandbox::container::{ContainerSpec, ImageConfig};

use crate::error::WasmError;

/// The name of the spec file in a container's bundle directory.
pub const SPEC_FILE: &str = "wasm.json";

/// Everything the keeper needs to run one WebAssembly container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WasmSpec {
    /// The module or component file on the host (inside the container's rootfs).
    pub module: PathBuf,
    /// argv; `args[0]` is the module's path as the container sees it.
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Initial working directory inside the container.
    pub cwd: String,
    /// Preopened directories; the first is the rootfs at `/`.
    pub preopens: Vec<Preopen>,
    /// Linear memory limit (all memories of the instance together), bytes; 0: none.
    pub memory_limit: u64,
    /// CFS-style CPU quota in µs per `cpu_period_us`; 0: none.
    pub cpu_quota_us: i64,
    /// CFS-style CPU period in µs (default 100 ms).
    pub cpu_period_us: i64,
    /// The pod's network namespace (pinned); `None`: the node's.
    pub netns: Option<PathBuf>,
}

/// One preopened directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Read-only.
    pub readonly: bool,
}

/// A file mount the daemon bind-mounts into the rootfs before the container starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMount {
    /// The file on the host.
    pub host: PathBuf,
    /// Where it goes, inside the rootfs directory (host path).
    pub target: PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// What [`build`] makes.
#[derive(Clone, Debug)]
pub struct Built {
    /// The spec for the keeper.
    pub spec: WasmSpec,
    /// File mounts for the daemon to bind into the rootfs.
    pub file_mounts: Vec<FileMount>,
    /// Whether the file is a component (else a core module).
    pub kind: ModuleKind,
}

/// The two kinds of WebAssembly binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// A core module (WASI preview 1 command: `_start`).
    Module,
    /// A component (WASI 0.2 command world: `wasi:cli/run`).
    Component,
}

/// The kind of WebAssembly binary `head` (its first 8 bytes) starts, or why it is none.
pub fn detect(head: &[u8]) -> Result<ModuleKind, String> {
    match head {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Ok(ModuleKind::Module),
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(ModuleKind::Component),
        [0, b'a', b's', b'm', ..] => Err("a WebAssembly header of an unknown version".into()),
        [0x7f, b'E', b'L', b'F', ..] => Err("an ELF executable".into()),
        [b'#', b'!', ..] => Err("a script (#!)".into()),
        [] => Err("an empty file".into()),
        other => Err(format!(
            "bytes {}",
            other
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )),
    }
}

/// Inputs of [`build`].
#[derive(Clone, Copy, Debug)]
pub struct SpecInputs<'a> {
    /// The container.
    pub container: &'a ContainerSpec,
    /// Its image's config.
    pub image: &'a ImageConfig,
    /// The pod's hostname (the `HOSTNAME` variable).
    pub hostname: &'a str,
    /// The container's rootfs directory (mounted overlay).
    pub rootfs: &'a Path,
    /// The pod's network namespace.
    pub netns: Option<&'a Path>,
}

/// Builds the spec, checking that the entrypoint is a WebAssembly module in the image and that
/// every mount can be given to a WebAssembly container.
pub fn build(inputs: &SpecInputs<'_>) -> Result<Built, WasmError> {
    let c = inputs.container;
    let args = unicri_runtime_linux::spec::process_args(c, inputs.image)
        .map_err(|e| WasmError::InvalidArgument(e.to_string()))?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !inputs.image.working_dir.is_empty() {
        inputs.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    let not_wasm = |why: String| {
        WasmError::InvalidArgument(format!(
            "image {:?} cannot run on the wasm runtime handler: {why}; a wasm pod runs only \
             WebAssembly images (an OCI image whose entrypoint is a .wasm module, or a wasm OCI \
             artifact)",
            c.image_ref
        ))
    };
    let env: Vec<(String, String)> =
        unicri_runtime_linux::spec::environment(c, inputs.image, inputs.hostname, "")
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect();
    // a bare name is looked up in the container's PATH, as exec would
    let found = if args[0].contains('/') {
        None
    } else {
        env.iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
            .split(':')
            .filter(|d| d.starts_with('/'))
            .find_map(|d| resolve_in_root(inputs.rootfs, "/", &format!("{d}/{}", args[0])).ok())
    };
    let module = match found {
        Some(m) => m,
        None => resolve_in_root(inputs.rootfs, &cwd, &args[0])
            .map_err(|why| not_wasm(format!("its entrypoint {:?} {why}", args[0])))?,
    };
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(&module)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(|e| not_wasm(format!("its entrypoint {:?} cannot be read: {e}", args[0])))?;
    let kind = detect(&head).map_err(|what| {
        not_wasm(format!(
            "its entrypoint {:?} is not a WebAssembly module but {what}",
            args[0]
        ))
    })?;

    if !c.devices.is_empty() {
        return Err(WasmError::InvalidArgument(
            "devices cannot be given to a WebAssembly container".into(),
        ));
    }
    let mut preopens = vec![Preopen {
        host: inputs.rootfs.to_path_buf(),
        guest: "/".into(),
        readonly: c.security.readonly_rootfs,
    }];
    let mut file_mounts = Vec::new();
    for m in &c.mounts {
        if !m.image.is_empty() {
            return Err(WasmError::InvalidArgument(format!(
                "mount {:?}: image volumes are not supported by the wasm runtime handler",
                m.container_path
            )));
        }
        let guest = clean_abs(&m.container_path).ok_or_else(|| {
            WasmError::InvalidArgument(format!(
                "mount container path {:?} must be absolute and must not be /",
                m.container_path
            ))
        })?;
        let meta = std::fs::metadata(&m.host_path).map_err(|e| {
            WasmError::InvalidArgument(format!(
                "mount {:?}: host path {:?}: {e}",
                m.container_path, m.host_path
            ))
        })?;
        if meta.is_dir() {
            preopens.push(Preopen {
                host: PathBuf::from(&m.host_path),
                guest,
                readonly: m.readonly,
            });
        } else if meta.is_file() {
            file_mounts.push(FileMount {
                host: PathBuf::from(&m.host_path),
                target: inputs.rootfs.join(guest.trim_start_matches('/')),
                readonly: m.readonly,
            });
        } else {
            return Err(WasmError::InvalidArgument(format!(
                "mount {:?}: host path {:?} is neither a directory nor a regular file; a \
                 WebAssembly container can be given only those",
                m.container_path, m.host_path
            )));
        }
    }
    let r = &c.resources;
    Ok(Built {
        spec: WasmSpec {
            module,
            args,
            env,
            cwd,
            preopens,
            memory_limit: u64::try_from(r.memory_limit_in_bytes).unwrap_or(0),
            cpu_quota_us: r.cpu_quota.max(0),
            cpu_period_us: if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            },
            netns: inputs.netns.map(Path::to_path_buf),
        },
        file_mounts,
        kind,
    })
}

/// `/a/./b/` → `/a/b`; `None` for relative paths, `..` components and `/` itself.
fn clean_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            name => {
                out.push('/');
                out.push_str(name);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Resolves `path` (absolute, or relative to `cwd`) inside `root` the way the container would see
/// it: symlinks are followed with `root` as `/`, never leaving it. The result is a regular file.
pub fn resolve_in_root(root: &Path, cwd: &str, path: &str) -> Result<PathBuf, String> {
    let full = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(cwd).join(path)
    };
    let mut todo: Vec<String> = components(&full);
    todo.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        match name.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let host = root.join(cur.join("/")).join(&name);
        let meta = std::fs::symlink_metadata(&host).map_err(|_| "does not exist".to_string())?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err("has too many levels of symbolic links".into());
            }
            let target = std::fs::read_link(&host).map_err(|e| format!("unreadable link: {e}"))?;
            if target.is_absolute() {
                cur.clear();
            }
            let mut more = components(&target);
            more.reverse();
            todo.extend(more);
        } else {
            cur.push(name);
        }
    }
    let resolved = root.join(cur.join("/"));
    let meta = std::fs::metadata(&resolved).map_err(|_| "does not exist".to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    Ok(resolved)
}

fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::container::MountSpec;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("opt")).expect("mkdir");
        std::fs::write(d.path().join("opt/app.wasm"), MODULE).expect("write");
        std::os::unix::fs::symlink("/opt/app.wasm", d.path().join("app.wasm")).expect("link");
        std::os::unix::fs::symlink("../../../../etc/passwd", d.path().join("escape"))
            .expect("link");
        std::fs::write(d.path().join("sh"), b"\x7fELF\x02\x01\x01\0").expect("write");
        d
    }

    #[test]
    fn detects_modules_components_and_others() {
        assert_eq!(detect(MODULE), Ok(ModuleKind::Module));
        assert_eq!(detect(b"\0asm\x0d\0\x01\0"), Ok(ModuleKind::Component));
        assert!(detect(b"\x7fELF\x02\x01").unwrap_err().contains("ELF"));
        assert!(detect(b"#!/bin/sh").unwrap_err().contains("script"));
        assert!(detect(b"").unwrap_err().contains("empty"));
    }

    #[test]
    fn resolves_symlinks_inside_the_root_only() {
        let d = rootfs();
        let r = d.path();
        assert_eq!(
            resolve_in_root(r, "/", "/app.wasm").expect("resolves"),
            r.join("opt/app.wasm")
        );
        assert_eq!(
            resolve_in_root(r, "/opt", "app.wasm").expect("relative"),
            r.join("opt/app.wasm")
        );
        // a relative link climbing above / stays at the root: /etc/passwd of the rootfs
        assert_eq!(
            resolve_in_root(r, "/", "/escape").unwrap_err(),
            "does not exist"
        );
        assert_eq!(
            resolve_in_root(r, "/", "/opt").unwrap_err(),
            "is not a regular file"
        );
    }

    #[test]
    fn builds_args_env_preopens_and_refuses_non_wasm() {
        let d = rootfs();
        let cfgdir = tempfile::tempdir().expect("tempdir");
        let file = cfgdir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").expect("write");
        let mut c = ContainerSpec {
            image_ref: "example/app:1".into(),
            args: vec!["x".into()],
            env: vec![("A".into(), "1".into())],
            ..ContainerSpec::default()
        };
        c.resources.memory_limit_in_bytes = 4 << 20;
        c.mounts.push(MountSpec {
            container_path: "/config/".into(),
            host_path: cfgdir.path().display().to_string(),
            readonly: true,
            ..MountSpec::default()
        });
        c.mounts.push(MountSpec {
            container_path: "/etc/hosts".into(),
            host_path: file.display().to_string(),
            ..MountSpec::default()
        });
        let image = ImageConfig {
            entrypoint: vec!["/app.wasm".into()],
            cmd: vec!["ignored".into()],
            env: vec!["B=2".into()],
            ..ImageConfig::default()
        };
        let inputs = SpecInputs {
            container: &c,
            image: &image,
            hostname: "pod-a",
            rootfs: d.path(),
            netns: None,
        };
        let built = build(&inputs).expect("build");
        assert_eq!(built.kind, ModuleKind::Module);
        assert_eq!(built.spec.args, vec!["/app.wasm", "x"]);
        assert_eq!(built.spec.module, d.path().join("opt/app.wasm"));
        assert!(built.spec.env.contains(&("A".into(), "1".into())));
        assert!(built.spec.env.contains(&("B".into(), "2".into())));
        assert!(
            built
                .spec
                .env
                .contains(&("HOSTNAME".into(), "pod-a".into()))
        );
        assert_eq!(built.spec.memory_limit, 4 << 20);
        assert_eq!(built.spec.preopens[0].guest, "/");
        assert_eq!(built.spec.preopens[1].guest, "/config");
        assert!(built.spec.preopens[1].readonly);
        assert_eq!(built.file_mounts[0].target, d.path().join("etc/hosts"));

        let mut c = c.clone();
        c.command = vec!["/sh".into()];
        let inputs = SpecInputs {
            container: &c,
            ..inputs
        };
        let e = build(&inputs).expect_err("ELF refused").to_string();
        assert!(
            e.contains("not a WebAssembly module but an ELF executable"),
            "{e}"
        );
        assert!(e.contains("example/app:1"), "{e}");
    }
}
