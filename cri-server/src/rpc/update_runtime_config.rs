//! `UpdateRuntimeConfig`: kubelet sends the node's pod CIDR here. Pod networking (and with it the
//! CIDR's use) arrives with the linux pods issue; until then the CIDR is validated and accepted.

use unicri_proto::v1;

use crate::error::CriError;

pub(crate) async fn update_runtime_config(
    req: v1::UpdateRuntimeConfigRequest,
) -> Result<v1::UpdateRuntimeConfigResponse, CriError> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    for part in cidr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = part.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
        });
        if !ok {
            return Err(CriError::invalid(format!(
                "pod cidr {part:?} is not an address/prefix"
            )));
        }
    }
    if !cidr.is_empty() {
        tracing::info!(pod_cidr = %cidr, "pod cidr received");
    }
    Ok(v1::UpdateRuntimeConfigResponse {})
}
