//! The user-mode-Linux engine: the kernel's command line and its management console.
//!
//! Command line (`arch/um`): `mem=<M>M initrd=<cpio>`, one `vec<N>:transport=tap,ifname=<tap>,
//! mac=<mac>` per NIC (vector driver, `vector_kern.c`: it opens the existing persistent tap by
//! name with `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`), `unicri.ctl=<mac>` for the agent,
//! `umid=<id> uml_dir=<dir>` (the instance directory `<dir>/<id>/` holds the `mconsole` socket
//! and a `pid` file), `con=null con0=null,fd:1` (the console to stdout, i.e. the console log),
//! `ssl=null`, `lpj=<n>` (no delay-loop calibration at boot: it costs 40–110 ms of a UML
//! boot, and a UML guest only uses the value for `udelay`), `quiet`.
//!
//! The mconsole (`mconsole_user.c`, `mconsole_kern.c`) is a `SOCK_DGRAM` unix socket: a
//! request is `{u32 magic 0xcafebabe, u32 version 2, u32 len, char data[512]}`, each reply
//! `{u32 err, u32 more, u32 len, char data[512]}` (`len` counts the NUL) sent back to the
//! client's own bound address, several while `more` is set. Images are hot-added with
//! `config ubd<N>rcd=<path>` (`ubd_kern.c`: `r` read-only, `c` shared — no host lock, many VMs
//! share one image file —, `d` no COW header probing) and removed with `remove ubd<N>`.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use unicri_vm_agent::proto;

use crate::engine::VmConfig;
use crate::error::VmError;

/// ubd units a UML kernel has (`MAX_DEV`); unit 0 is left free, images use 1..15.
pub const MAX_UBD: usize = 16;

/// `loops_per_jiffy` preset on the command line (`lpj=`), so that the kernel skips its delay
/// loop calibration (init/calibrate.c; UML runs it too, 4–11 jiffies at HZ=100). The value is
/// what this calibration measures on a ~2 GHz host core (UML's calibrations spread 12–33 M
/// with host load anyway); it only scales `udelay`/`ndelay` in the guest.
pub const LPJ: u64 = 20_000_000;

const MAGIC: u32 = 0xcafe_babe;
const VERSION: u32 = 2;
const MAX_DATA: usize = 512;

/// The UML instance id of a pod: short (it is part of socket paths).
pub fn umid(pod_id: &str) -> String {
    let id: String = pod_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("u{id}")
}

/// The mconsole socket of instance `umid` under `uml_dir`.
pub fn mconsole_path(uml_dir: &Path, umid: &str) -> PathBuf {
    uml_dir.join(umid).join("mconsole")
}

/// The guest block device of ubd unit `n` (`/dev/ubda` + n).
pub fn device(n: usize) -> String {
    format!("/dev/ubd{}", (b'a' + n as u8) as char)
}

/// The kernel's argv (program first).
pub fn argv(cfg: &VmConfig, umid: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![cfg.kernel.clone().into()];
    let mut push = |s: String| a.push(s.into());
    push(format!("mem={}M", cfg.mem_mib));
    push(format!("initrd={}", cfg.initramfs.display()));
    for (n, (tap, mac)) in cfg.nic.iter().chain(std::iter::once(&cfg.ctl)).enumerate() {
        push(format!("vec{n}:transport=tap,ifname={tap},mac={mac}"));
    }
    push(format!("{}={}", proto::CMDLINE_CTL, cfg.ctl.1));
    push(format!("umid={umid}"));
    push(format!("uml_dir={}", cfg.dir.display()));
    push("con=null".into());
    push("con0=null,fd:1".into());
    push("ssl=null".into());
    push(format!("lpj={LPJ}"));
    push("quiet".into());
    for extra in &cfg.cmdline_extra {
        push(extra.clone());
    }
    a
}

/// Sends one mconsole command and returns the (joined) answer text; an answer with `err` set
/// is [`VmError::Mconsole`].
pub fn mconsole(socket: &Path, command: &str, timeout: Duration) -> Result<String, VmError> {
    let fail = |message: String| VmError::Mconsole {
        command: command.to_string(),
        socket: socket.to_path_buf(),
        message,
    };
    if command.len() >= MAX_DATA {
        return Err(fail(format!("command longer than {} bytes", MAX_DATA - 1)));
    }
    // the reply goes to our bound address: a path next to the console socket (an abstract
    // address would live in our netns, the kernel runs in the pod's)
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = socket.parent().unwrap_or(Path::new("/tmp"));
    let me = dir.join(format!(
        "c{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&me);
    let sock = UnixDatagram::bind(&me).map_err(|e| fail(format!("bind {}: {e}", me.display())))?;
    let result = (|| {
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| fail(format!("set timeout: {e}")))?;
        let mut req = Vec::with_capacity(12 + MAX_DATA);
        req.extend_from_slice(&MAGIC.to_ne_bytes());
        req.extend_from_slice(&VERSION.to_ne_bytes());
        req.extend_from_slice(&(command.len() as u32).to_ne_bytes());
        req.extend_from_slice(command.as_bytes());
        req.resize(12 + MAX_DATA, 0);
        sock.send_to(&req, socket)
            .map_err(|e| fail(format!("send: {e}")))?;
        let mut answer = String::new();
        loop {
            let mut buf = [0u8; 12 + MAX_DATA];
            let n = sock
                .recv(&mut buf)
                .map_err(|e| fail(format!("receive: {e}")))?;
            if n < 12 {
                return Err(fail(format!("short reply of {n} bytes")));
            }
            let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            let (err, more, len) = (word(0), word(4), word(8) as usize);
            let data = &buf[12..n.min(12 + len)];
            let text = data.split(|b| *b == 0).next().unwrap_or(&[]);
            answer.push_str(&String::from_utf8_lossy(text));
            if err != 0 {
                return Err(fail(if answer.is_empty() {
                    format!("error {err}")
                } else {
                    answer
                }));
            }
            if more == 0 {
                return Ok(answer);
            }
        }
    })();
    let _ = std::fs::remove_file(&me);
    result
}

/// Hot-adds `path` as read-only shared ubd unit `n`; returns the guest device.
pub fn attach(socket: &Path, n: usize, path: &Path) -> Result<String, VmError> {
    let p = path.to_string_lossy();
    if !path.is_absolute() || p.contains([',', ':', ' ']) {
        return Err(VmError::InvalidArgument {
            what: "image path",
            value: p.into_owned(),
            reason: "must be absolute and free of ',', ':' and spaces (ubd syntax)".into(),
        });
    }
    mconsole(
        socket,
        &format!("config ubd{n}rcd={p}"),
        Duration::from_secs(5),
    )?;
    Ok(device(n))
}

/// Removes ubd unit `n` (refused while the guest has it open).
pub fn detach(socket: &Path, n: usize) -> Result<(), VmError> {
    mconsole(socket, &format!("remove ubd{n}"), Duration::from_secs(5)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_both_nics_and_the_console() {
        let cfg = VmConfig {
            pod_id: "0123456789abcdef".into(),
            dir: PathBuf::from("/run/p"),
            kernel: PathBuf::from("/k/linux"),
            initramfs: PathBuf::from("/c/i.cpio"),
            mem_mib: 128,
            nic: Some(("tap0_vm".into(), "aa:bb:cc:dd:ee:ff".into())),
            ctl: ("ctl0".into(), "0e:01:02:03:04:05".into()),
            ..VmConfig::default()
        };
        let id = umid(&cfg.pod_id);
        assert_eq!(id, "u0123456789ab");
        let a: Vec<String> = argv(&cfg, &id)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "/k/linux",
                "mem=128M",
                "initrd=/c/i.cpio",
                "vec0:transport=tap,ifname=tap0_vm,mac=aa:bb:cc:dd:ee:ff",
                "vec1:transport=tap,ifname=ctl0,mac=0e:01:02:03:04:05",
                "unicri.ctl=0e:01:02:03:04:05",
                "umid=u0123456789ab",
                "uml_dir=/run/p",
                "con=null",
                "con0=null,fd:1",
                "ssl=null",
                "lpj=20000000",
                "quiet",
            ]
        );
        assert_eq!(device(1), "/dev/ubdb");
    }

    #[test]
    fn mconsole_round_trip_against_a_fake_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mconsole");
        let server = UnixDatagram::bind(&path).expect("bind");
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 12 + MAX_DATA];
            let (n, from) = server.recv_from(&mut buf).expect("recv");
            assert_eq!(n, 12 + MAX_DATA);
            let len = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            let cmd = String::from_utf8_lossy(&buf[12..12 + len]).into_owned();
            let reply = |err: u32, more: u32, text: &str| {
                let mut r = Vec::new();
                r.extend_from_slice(&err.to_ne_bytes());
                r.extend_from_slice(&more.to_ne_bytes());
                r.extend_from_slice(&(text.len() as u32 + 1).to_ne_bytes());
                r.extend_from_slice(text.as_bytes());
                r.push(0);
                r
            };
            let to = from.as_pathname().expect("client has a path").to_path_buf();
            server.send_to(&reply(0, 1, "part1 "), &to).expect("send");
            server.send_to(&reply(0, 0, &cmd), &to).expect("send");
        });
        let answer = mconsole(&path, "version", Duration::from_secs(2)).expect("mconsole");
        assert_eq!(answer, "part1 version");
        t.join().expect("server");
        // the client's socket file is gone
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("mconsole")]);
    }
}
