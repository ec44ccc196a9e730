//! What kind of KVM this host has.

/// The flavour of `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmFlavor {
    /// Hardware virtualization (VMX or SVM).
    Hardware,
    /// PVM (`kvm_pvm`): pagetable-based virtualization for nested clouds. Only a guest kernel
    /// built with `CONFIG_PVM_GUEST` runs at speed; small non-Linux guests run as they are.
    Pvm,
    /// Something else (no VMX/SVM flag, no PVM module).
    Unknown,
}

impl KvmFlavor {
    /// Reads `/sys/module` and `/proc/cpuinfo`.
    pub fn detect() -> KvmFlavor {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            return KvmFlavor::Pvm;
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw {
            KvmFlavor::Hardware
        } else {
            KvmFlavor::Unknown
        }
    }

    /// A line for logs and `unicri vmm --probe`.
    pub fn describe(self) -> &'static str {
        match self {
            KvmFlavor::Hardware => "hardware KVM (VMX/SVM)",
            KvmFlavor::Pvm => {
                "PVM (kvm_pvm): Linux guests need a CONFIG_PVM_GUEST kernel (config `kernel`); \
                 a stock kernel is emulated and dies"
            }
            KvmFlavor::Unknown => "KVM without VMX/SVM or PVM",
        }
    }
}
