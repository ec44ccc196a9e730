//! `unicri-vmm`: the small VMM binary (no tokio, no CRI): one VM per process. `unicri vmm`
//! runs the same code; this binary keeps a VM's process small (issue 5: VMM overhead ≤ 3 MiB).
//!
//! usage: unicri-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--mem-mib N] [--vcpus N]
//!                   [--cgroup DIR]... [--uid N --gid N] [--seccomp | --no-seccomp]
//!        unicri-vmm --probe
//!
//! Confinement ([`unicri_vmm::confine`]): the process joins every `--cgroup` directory
//! (created if missing) before the VM is built, drops to `--uid`/`--gid` once it is built (the
//! open `/dev/kvm`, VM and vCPU fds keep working), then installs the seccomp allowlist on every
//! thread — on by default, like Firecracker; `--no-seccomp` turns it off (debugging under
//! `strace -f`) — and only then runs the vCPUs. A syscall outside the allowlist kills the VMM
//! with SIGSYS.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: unicri-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--mem-mib N] [--vcpus N]\n                  [--cgroup DIR]... [--uid N --gid N] [--seccomp | --no-seccomp]\n       unicri-vmm --probe"
    );
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let mut cfg = unicri_vmm::VmConfig {
        cmdline: "console=ttyS0 reboot=k panic=-1".into(),
        ..unicri_vmm::VmConfig::default()
    };
    let mut confine = unicri_vmm::confine::Confinement::default();
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
    let vm = match unicri_vmm::Vm::new(&cfg, Box::new(std::io::stdout())) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("unicri-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
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
