//! The KVM engine: `unicri-vmm`'s command line and its control channel (`vmm/src/api.rs`:
//! JSON lines on a unix socket).
//!
//! `unicri-vmm` opens (or makes) its taps by name with `TUNSETIFF` in its own network
//! namespace, so it is started inside the pod's netns ([`crate::engine::start`] does that for
//! both engines) and finds [`crate::net::setup`]'s taps there. Images arrive after boot: the
//! command line declares `image_slots` empty virtio-blk drives `img0…`, and
//! [`attach`] gives one its media with the `drive` request; virtio-blk disks are named in probe
//! order and the VM has no other disk, so slot `i` is `/dev/vd<a+i>` in the guest.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use unicri_vm_agent::proto;

use crate::engine::VmConfig;
use crate::error::VmError;

/// The control socket of the VM in `dir`.
pub fn api_socket_path(dir: &Path) -> PathBuf {
    dir.join("vmm.sock")
}

/// The drive id of image slot `i`.
pub fn slot_id(i: usize) -> String {
    format!("img{i}")
}

/// The guest device of image slot `i` (`/dev/vda`…).
pub fn device(i: usize) -> String {
    format!("/dev/vd{}", (b'a' + i as u8) as char)
}

/// `unicri-vmm`'s argv (program first).
pub fn argv(cfg: &VmConfig, api_sock: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![cfg.vmm_binary.clone().into()];
    let mut pair = |k: &str, v: OsString| {
        a.push(k.into());
        a.push(v);
    };
    pair("--kernel", cfg.kernel.clone().into());
    pair("--initrd", cfg.initramfs.clone().into());
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 {}={}",
        proto::CMDLINE_CTL,
        cfg.ctl.1
    );
    for extra in &cfg.cmdline_extra {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    pair("--cmdline", cmdline.into());
    pair("--mem-mib", cfg.mem_mib.to_string().into());
    pair("--vcpus", cfg.vcpus.max(1).to_string().into());
    for (tap, mac) in cfg.nic.iter().chain(std::iter::once(&cfg.ctl)) {
        pair("--net", format!("tap={tap},mac={mac}").into());
    }
    for i in 0..cfg.image_slots {
        pair("--drive", format!("id={}", slot_id(i)).into());
    }
    pair("--api-sock", api_sock.as_os_str().to_owned());
    for procs in &cfg.cgroup_procs {
        if let Some(dir) = procs.parent() {
            pair("--cgroup", dir.as_os_str().to_owned());
        }
    }
    a
}

/// One request on the control channel; returns the answer object (`ok` true) or
/// [`VmError::VmmApi`].
pub fn api(socket: &Path, req: &serde_json::Value) -> Result<serde_json::Value, VmError> {
    let op = req
        .get("op")
        .and_then(|o| o.as_str())
        .unwrap_or("?")
        .to_string();
    let fail = |message: String| VmError::VmmApi {
        op: op.clone(),
        socket: socket.to_path_buf(),
        message,
    };
    let mut s = UnixStream::connect(socket).map_err(|e| fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail(format!("set timeout: {e}")))?;
    let mut line = serde_json::to_vec(req).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| fail(format!("send: {e}")))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| fail(format!("receive: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| fail(format!("bad answer {answer:?}: {e}")))?;
    if v.get("ok").and_then(|o| o.as_bool()) == Some(true) {
        Ok(v)
    } else {
        Err(fail(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("refused")
                .to_string(),
        ))
    }
}

/// Gives image slot `i` the media `path`, read-only; returns the guest device.
pub fn attach(socket: &Path, i: usize, path: &Path) -> Result<String, VmError> {
    api(
        socket,
        &serde_json::json!({"op": "drive", "id": slot_id(i), "path": path, "read_only": true}),
    )?;
    Ok(device(i))
}

/// Ejects the media of image slot `i`.
pub fn detach(socket: &Path, i: usize) -> Result<(), VmError> {
    api(
        socket,
        &serde_json::json!({"op": "drive", "id": slot_id(i), "path": null, "read_only": true}),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    #[test]
    fn vmm_command_line() {
        let cfg = VmConfig {
            engine: Engine::Kvm,
            pod_id: "p".into(),
            dir: PathBuf::from("/run/p"),
            kernel: PathBuf::from("/k/vmlinux"),
            initramfs: PathBuf::from("/c/i.cpio"),
            mem_mib: 256,
            vcpus: 2,
            nic: Some(("tap0_vm".into(), "aa:bb:cc:dd:ee:ff".into())),
            ctl: ("ctl0".into(), "0e:01:02:03:04:05".into()),
            cmdline_extra: vec!["loglevel=3".into()],
            vmm_binary: PathBuf::from("/usr/bin/unicri-vmm"),
            image_slots: 2,
            cgroup_procs: vec![PathBuf::from("/sys/fs/cgroup/pods/p/cgroup.procs")],
            ..VmConfig::default()
        };
        let a: Vec<String> = argv(&cfg, &api_socket_path(&cfg.dir))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "/usr/bin/unicri-vmm",
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/c/i.cpio",
                "--cmdline",
                "console=ttyS0 reboot=k panic=-1 unicri.ctl=0e:01:02:03:04:05 loglevel=3",
                "--mem-mib",
                "256",
                "--vcpus",
                "2",
                "--net",
                "tap=tap0_vm,mac=aa:bb:cc:dd:ee:ff",
                "--net",
                "tap=ctl0,mac=0e:01:02:03:04:05",
                "--drive",
                "id=img0",
                "--drive",
                "id=img1",
                "--api-sock",
                "/run/p/vmm.sock",
                "--cgroup",
                "/sys/fs/cgroup/pods/p",
            ]
        );
        assert_eq!(device(1), "/dev/vdb");
    }

    #[test]
    fn drive_requests_against_a_fake_vmm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("vmm.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (c, _) = l.accept().expect("accept");
                let mut out = c.try_clone().expect("clone");
                let mut line = String::new();
                BufReader::new(c).read_line(&mut line).expect("read");
                let v: serde_json::Value = serde_json::from_str(&line).expect("json");
                let answer = if v["path"].is_null() {
                    r#"{"ok":false,"error":"busy"}"#
                } else {
                    r#"{"ok":true}"#
                };
                out.write_all(format!("{answer}\n").as_bytes())
                    .expect("write");
                seen.push(v);
            }
            seen
        });
        assert_eq!(
            attach(&sock, 0, Path::new("/i/x.erofs")).expect("attach"),
            "/dev/vda"
        );
        let e = detach(&sock, 0).expect_err("refused");
        assert!(e.to_string().contains("busy"), "{e}");
        let seen = t.join().expect("server");
        assert_eq!(
            seen[0],
            serde_json::json!({"op":"drive","id":"img0","path":"/i/x.erofs","read_only":true})
        );
    }
}
