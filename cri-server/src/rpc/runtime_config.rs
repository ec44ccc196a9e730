//! `RuntimeConfig`: the cgroup driver kubelet must use. unicri manages cgroups through cgroupfs
//! (no systemd dependency), on v1 and v2 alike.

use unicri_proto::v1;

pub(crate) fn runtime_config(_req: v1::RuntimeConfigRequest) -> v1::RuntimeConfigResponse {
    v1::RuntimeConfigResponse {
        linux: Some(v1::LinuxRuntimeConfiguration {
            cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
        }),
    }
}
