//! `unicri-vmm`: the small VMM binary (no tokio, no CRI): one VM per process. `unicri vmm`
//! runs the same code; this binary keeps a VM's process small (issue 5: VMM overhead ≤ 3 MiB).
//!
//! usage: unicri-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--mem-mib N] [--vcpus N]
//!                   [--drive id=ID[,path=IMG][,ro]]... [--net tap=NAME[,mac=MAC][,mtu=N]]...
//!                   [--vsock cid=N,uds=PATH] [--api-sock PATH]
//!                   [--cgroup DIR]... [--uid N --gid N] [--seccomp | --no-seccomp]
//!        unicri-vmm --probe
//!
//! Devices: `--drive` adds a virtio-blk drive (no `path`: an empty slot whose media the
//! control channel attaches later), `--net` a virtio-net on a tap (made or attached by name),
//! `--vsock` a virtio-vsock whose host side is the unix socket `uds` (Firecracker's scheme).
//! `--api-sock` serves the control channel ([`unicri_vmm::api`]).
//!
//! Confinement ([`unicri_vmm::confine`]): the process joins every `--cgroup` directory
//! (created if missing) before the VM is built, drops to `--uid`/`--gid` once it is built (the
//! open `/dev/kvm`, VM and vCPU fds keep working), then installs the seccomp allowlist on every
//! thread — on by default, like Firecracker; `--no-seccomp` turns it off (debugging under
//! `strace -f`) — and only then runs the vCPUs. A syscall outside the allowlist kills the VMM
//! with SIGSYS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use unicri_vmm::virtio::VirtioDevice;
use unicri_vmm::virtio::net::{Net, Tap};
use unicri_vmm::vm::DriveConfig;

/// `key=value,key,...` into pairs (a bare key has an empty value).
fn opts(spec: &str) -> Vec<(String, String)> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

fn drive(spec: &str) -> Option<DriveConfig> {
    let mut d = DriveConfig::default();
    for (k, v) in opts(spec) {
        match k.as_str() {
            "id" => d.id = v,
            "path" => d.path = Some(PathBuf::from(v)),
            "ro" => d.read_only = true,
            _ => return None,
        }
    }
    (!d.id.is_empty()).then_some(d)
}

/// A net device from `tap=NAME[,mac=aa:bb:..][,mtu=N]` (the tap is opened now, before
/// confinement: its ioctls are not in the seccomp allowlist).
fn net(spec: &str, index: usize) -> Result<Arc<Mutex<dyn VirtioDevice>>, String> {
    let (mut tap, mut mac, mut mtu) = (String::new(), None, None);
    for (k, v) in opts(spec) {
        match k.as_str() {
            "tap" => tap = v,
            "mac" => {
                let b: Vec<u8> = v
                    .split(':')
                    .filter_map(|x| u8::from_str_radix(x, 16).ok())
                    .collect();
                mac = Some(<[u8; 6]>::try_from(b).map_err(|_| format!("bad mac {v:?}"))?);
            }
            "mtu" => mtu = Some(v.parse().map_err(|_| format!("bad mtu {v:?}"))?),
            _ => return Err(format!("unknown --net option {k:?}")),
        }
    }
    if tap.is_empty() {
        return Err("--net needs tap=NAME".into());
    }
    let tap = Tap::open(&tap).map_err(|e| format!("open tap {tap}: {e}"))?;
    // locally administered, unicast; the index keeps several NICs apart
    let mac = mac.unwrap_or([0x06, 0x00, 0xac, 0x10, 0x00, index as u8 + 2]);
    Ok(Arc::new(Mutex::new(Net::new(tap, mac, mtu))))
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: unicri-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--mem-mib N] [--vcpus N]\n                  [--drive id=ID[,path=IMG][,ro]]... [--net tap=NAME[,mac=MAC][,mtu=N]]...\n                  [--vsock cid=N,uds=PATH] [--api-sock PATH]\n                  [--cgroup DIR]... [--uid N --gid N] [--seccomp | --no-seccomp]\n       unicri-vmm --probe"
    );
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let mut cfg = unicri_vmm::VmConfig {
        cmdline: "console=ttyS0 reboot=k panic=-1".into(),
        ..unicri_vmm::VmConfig::default()
    };
    let mut confine = unicri_vmm::confine::Confinement::default();
    let mut nets: Vec<String> = Vec::new();
    let mut api_sock: Option<PathBuf> = None;
    let mut vsock: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next();
        match a.as_str() {
            "--probe" => {
                println!("{}", unicri_vmm::host::KvmFlavor::detect().describe());
                return ExitCode::SUCCESS;
            }
            "--kernel" => match value() {
                Some(v) => cfg.kernel = PathBuf::from(v),
                None => return usage(),
            },
            "--initrd" => match value() {
                Some(v) => cfg.initrd = Some(PathBuf::from(v)),
                None => return usage(),
            },
            "--cmdline" => match value() {
                Some(v) => cfg.cmdline = v,
                None => return usage(),
            },
            "--mem-mib" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => cfg.mem_mib = v,
                None => return usage(),
            },
            "--vcpus" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => cfg.vcpus = v,
                None => return usage(),
            },
            "--drive" => match value().as_deref().and_then(drive) {
                Some(d) => cfg.drives.push(d),
                None => return usage(),
            },
            "--net" => match value() {
                Some(v) => nets.push(v),
                None => return usage(),
            },
            "--vsock" => match value() {
                Some(v) => vsock = Some(v),
                None => return usage(),
            },
            "--api-sock" => match value() {
                Some(v) => api_sock = Some(PathBuf::from(v)),
                None => return usage(),
            },
            "--cgroup" => match value() {
                Some(v) => confine.cgroups.push(PathBuf::from(v)),
                None => return usage(),
            },
            "--uid" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => confine.uid = Some(v),
                None => return usage(),
            },
            "--gid" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => confine.gid = Some(v),
                None => return usage(),
            },
            "--seccomp" => confine.seccomp = true,
            "--no-seccomp" => confine.seccomp = false,
            _ => return usage(),
        }
    }
    if confine.uid.is_some() != confine.gid.is_some() {
        eprintln!("unicri-vmm: --uid and --gid go together");
        return usage();
    }
    if cfg.kernel.as_os_str().is_empty() {
        return usage();
    }
    // cgroups first: the VM's memory and KVM's allocations are charged to them
    if let Err(e) = confine.join_cgroups() {
        eprintln!("unicri-vmm: {e}");
        return ExitCode::FAILURE;
    }
    let mut devices = Vec::new();
    for (i, spec) in nets.iter().enumerate() {
        match net(spec, i) {
            Ok(d) => devices.push(d),
            Err(e) => {
                eprintln!("unicri-vmm: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(spec) = &vsock {
        let (mut cid, mut uds) = (0u64, None);
        for (k, v) in opts(spec) {
            match k.as_str() {
                "cid" => cid = v.parse().unwrap_or(0),
                "uds" => uds = Some(PathBuf::from(v)),
                _ => return usage(),
            }
        }
        let Some(uds) = uds else { return usage() };
        match unicri_vmm::virtio::vsock::Vsock::new(cid, uds) {
            Ok(v) => devices.push(Arc::new(Mutex::new(v))),
            Err(e) => {
                eprintln!("unicri-vmm: vsock: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let vm = match unicri_vmm::Vm::with_devices(&cfg, Box::new(std::io::stdout()), devices) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("unicri-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &api_sock {
        let drives: Arc<dyn unicri_vmm::api::Drives> = vm.drives();
        if let Err(e) = unicri_vmm::api::serve(path, vm.control(), Some(drives)) {
            eprintln!("unicri-vmm: control socket {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = confine
        .drop_privileges()
        .and_then(|()| confine.apply_seccomp())
    {
        eprintln!("unicri-vmm: {e}");
        return ExitCode::FAILURE;
    }
    let end = vm.run();
    if let unicri_vmm::VmExit::Error(e) = &end {
        eprintln!("unicri-vmm: {e}");
    }
    ExitCode::from(end.code() as u8)
}
