//! `ImageFsInfo`: real bytes and inodes used by the image store.

use std::time::{SystemTime, UNIX_EPOCH};

use unicri_proto::v1;

use crate::error::CriError;
use crate::server::Cri;

pub(crate) async fn image_fs_info(
    cri: &Cri,
    _req: v1::ImageFsInfoRequest,
) -> Result<v1::ImageFsInfoResponse, CriError> {
    let usage = cri.images.service().fs_usage().await?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(1);
    Ok(v1::ImageFsInfoResponse {
        image_filesystems: vec![v1::FilesystemUsage {
            timestamp,
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(v1::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(v1::UInt64Value {
                value: usage.inodes_used,
            }),
        }],
        container_filesystems: vec![],
    })
}
