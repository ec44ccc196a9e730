//! `Status`: RuntimeReady and NetworkReady, told truthfully, plus the configuration when verbose.

use std::collections::HashMap;

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn status(
    cri: &Cri,
    req: v1::StatusRequest,
) -> Result<v1::StatusResponse, CriError> {
    // Containers need cgroups (the keeper is started on demand by the first container).
    let runtime = match unicri_runtime_linux::cgroups::CgroupManager::detect() {
        Ok(_) => v1::RuntimeCondition {
            r#type: "RuntimeReady".to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(e) => v1::RuntimeCondition {
            r#type: "RuntimeReady".to_string(),
            status: false,
            reason: "CgroupsUnavailable".to_string(),
            message: e.to_string(),
        },
    };
    let network = match cri.pods.network_status() {
        Ok(()) => v1::RuntimeCondition {
            r#type: "NetworkReady".to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(why) => v1::RuntimeCondition {
            r#type: "NetworkReady".to_string(),
            status: false,
            reason: why.reason,
            message: why.message,
        },
    };
    let mut info = HashMap::new();
    if req.verbose {
        let config = serde_json::to_string(&*cri.config).map_err(|e| {
            CriError::new(
                unicri_sandbox::ErrorKind::Internal,
                format!("encode config: {e}"),
            )
        })?;
        info.insert("config".to_string(), config);
        info.insert(
            "registryHosts".to_string(),
            cri.images.service().hosts_summary().to_string(),
        );
        info.insert("version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        let handlers: serde_json::Map<String, serde_json::Value> = std::iter::once(String::new())
            .chain(cri.config.runtimes.keys().cloned())
            .map(|h| {
                let backend = cri
                    .config
                    .backend_for(&h)
                    .map(|b| format!("{b:?}").to_lowercase());
                (h, serde_json::json!(backend))
            })
            .collect();
        info.insert(
            "handlerBackends".to_string(),
            serde_json::Value::Object(handlers).to_string(),
        );
    }
    let runtime_handlers = cri
        .config
        .runtimes
        .keys()
        .map(|name| v1::RuntimeHandler {
            name: name.clone(),
            features: Some(v1::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        })
        .collect();
    Ok(v1::StatusResponse {
        status: Some(v1::RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers,
        features: Some(v1::RuntimeFeatures {
            supplemental_groups_policy: false,
            user_namespaces_host_network: false,
        }),
    })
}
