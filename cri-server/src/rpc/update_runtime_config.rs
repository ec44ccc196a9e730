//! `UpdateRuntimeConfig`: kubelet sends the node's pod CIDR here. The CIDR is validated; with a
//! `[cni] conf_template` it is rendered into the CNI config that pods use from then on.

use std::path::Path;

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

/// The file the rendered template is written to (sorts before other conflists).
pub(crate) const RENDERED: &str = "00-unicri-podcidr.conflist";

/// `template` with `{{.PodCIDR}}` and `{{.PodCIDRRanges}}` filled in.
pub(crate) fn render(template: &str, ranges: &[&str]) -> String {
    template
        .replace("{{.PodCIDRRanges}}", &ranges.join(","))
        .replace("{{.PodCIDR}}", ranges.first().copied().unwrap_or(""))
}

fn write_rendered(template: &Path, conf_dir: &Path, ranges: &[&str]) -> Result<(), CriError> {
    let internal = |what: &str, e: std::io::Error| {
        CriError::new(unicri_sandbox::ErrorKind::Internal, format!("{what}: {e}"))
    };
    let text = std::fs::read_to_string(template)
        .map_err(|e| internal(&format!("read CNI template {}", template.display()), e))?;
    let rendered = render(&text, ranges);
    serde_json::from_str::<serde_json::Value>(&rendered).map_err(|e| {
        CriError::invalid(format!(
            "CNI template {} does not render to JSON with pod CIDR {ranges:?}: {e}",
            template.display()
        ))
    })?;
    std::fs::create_dir_all(conf_dir)
        .map_err(|e| internal(&format!("create {}", conf_dir.display()), e))?;
    let tmp = conf_dir.join(format!(".{RENDERED}.tmp"));
    std::fs::write(&tmp, rendered).map_err(|e| internal(&format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, conf_dir.join(RENDERED))
        .map_err(|e| internal("publish the rendered CNI config", e))
}

pub(crate) async fn update_runtime_config(
    cri: &Cri,
    req: v1::UpdateRuntimeConfigRequest,
) -> Result<v1::UpdateRuntimeConfigResponse, CriError> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    let ranges: Vec<&str> = cidr
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    for part in &ranges {
        let ok = part.split_once('/').is_some_and(|(ip, len)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        });
        if !ok {
            return Err(CriError::invalid(format!(
                "pod cidr {part:?} is not an address/prefix"
            )));
        }
    }
    if ranges.is_empty() {
        return Ok(v1::UpdateRuntimeConfigResponse {});
    }
    tracing::info!(pod_cidr = %cidr, "pod cidr received");
    if let Some(template) = &cri.config.cni.conf_template {
        write_rendered(template, &cri.config.cni.conf_dir, &ranges)?;
        tracing::info!(template = %template.display(), "CNI config rendered with the pod cidr");
    }
    Ok(v1::UpdateRuntimeConfigResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_placeholders_are_filled() {
        let t = r#"{"ranges": [[{"subnet": "{{.PodCIDR}}"}]], "all": "{{.PodCIDRRanges}}"}"#;
        assert_eq!(
            render(t, &["10.1.0.0/24", "fd00::/64"]),
            r#"{"ranges": [[{"subnet": "10.1.0.0/24"}]], "all": "10.1.0.0/24,fd00::/64"}"#
        );
    }

    #[test]
    fn rendered_file_is_written_whole_and_must_be_json() {
        let dir = tempfile::tempdir().expect("tmp");
        let template = dir.path().join("t.conflist");
        std::fs::write(&template, r#"{"subnet": "{{.PodCIDR}}"}"#).expect("write");
        let conf = dir.path().join("net.d");
        write_rendered(&template, &conf, &["10.9.0.0/16"]).expect("render");
        let text = std::fs::read_to_string(conf.join(RENDERED)).expect("read");
        assert_eq!(text, r#"{"subnet": "10.9.0.0/16"}"#);
        std::fs::write(&template, r#"{"subnet": {{.PodCIDR}}}"#).expect("write");
        assert!(write_rendered(&template, &conf, &["10.9.0.0/16"]).is_err());
        assert_eq!(
            std::fs::read_to_string(conf.join(RENDERED)).expect("read"),
            text,
            "a bad render leaves the last good config"
        );
    }
}
