//! `PrepareContainer` / `RemoveContainer`: image mounts (one per device, shared), a bundle
//! with a tmpfs writable layer and an overlay rootfs, files, `config.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use unicri_vm_agent::proto::{PrepareContainer, Response, paths};

use super::error::{Error, Result};
use super::{files, init, mounts};

/// Where image devices are mounted.
pub const IMAGES_DIR: &str = "/run/unicri/images";
/// Where guest log files go.
pub const LOGS_DIR: &str = "/run/unicri/logs";
/// How long `PrepareContainer` waits for its image device.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Which container uses which image mount.
#[derive(Debug, Default)]
pub struct Table {
    /// Image mount dir → containers using it.
    images: BTreeMap<String, BTreeSet<String>>,
    /// Container → its image mount dir.
    containers: BTreeMap<String, String>,
}

/// A container id is used in paths: refuse anything that could leave its directory.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id == "."
        || id == ".."
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid(format!(
            "container id {id:?} is not valid ([A-Za-z0-9._-], 1 to 128)"
        )));
    }
    Ok(())
}

/// Check a request; answers the image device's file name.
pub fn validate(req: &PrepareContainer) -> Result<String> {
    validate_id(&req.id)?;
    let dev = Path::new(&req.image_device);
    let name = dev
        .strip_prefix("/dev")
        .ok()
        .filter(|rest| rest.components().count() >= 1)
        .and_then(|_| dev.file_name())
        .and_then(|n| n.to_str())
        .filter(|_| files::validate_path(&req.image_device).is_ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "image device {:?} is not a device path under /dev",
                req.image_device
            ))
        })?;
    if req.image_fstype.is_empty()
        || !req
            .image_fstype
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::invalid(format!(
            "image filesystem type {:?} is not valid",
            req.image_fstype
        )));
    }
    serde_json::from_str::<serde_json::Value>(&req.config_json)
        .map_err(|e| Error::invalid(format!("config_json is not JSON: {e}")))?;
    files::validate(&req.files)?;
    Ok(name.to_string())
}

/// Wait until `device` exists (devtmpfs makes the node when the disk is plugged).
pub async fn wait_for_device(device: &str, wait: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if Path::new(device).exists() {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(Error::not_found(format!(
                "image device {device} did not appear within {wait:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Prepare the bundle (blocking; the device exists).
pub fn prepare(table: &mut Table, req: &PrepareContainer) -> Result<Response> {
    let dev_name = validate(req)?;
    let image_dir = format!("{IMAGES_DIR}/{dev_name}");
    mounts::mount_once(
        &req.image_device,
        &image_dir,
        &req.image_fstype,
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;
    table
        .images
        .entry(image_dir.clone())
        .or_default()
        .insert(req.id.clone());
    table.containers.insert(req.id.clone(), image_dir.clone());

    let bundle = paths::bundle(&req.id);
    let rootfs = paths::rootfs(&req.id);
    let upper = format!("{bundle}/upper");
    let work = format!("{bundle}/work");
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {d}"), &e))?;
    }
    mounts::mount_once(
        "overlay",
        &rootfs,
        "overlay",
        MsFlags::empty(),
        Some(&format!(
            "lowerdir={image_dir},upperdir={upper},workdir={work}"
        )),
    )?;
    files::write_entries(Path::new("/"), &req.files)?;
    files::write_atomic(
        &Path::new(&bundle).join("config.json"),
        req.config_json.as_bytes(),
        0o600,
    )
    .map_err(|e| Error::io(format!("write {bundle}/config.json"), &e))?;
    std::fs::create_dir_all(LOGS_DIR).map_err(|e| Error::io(format!("create {LOGS_DIR}"), &e))?;
    Ok(Response::Prepared {
        bundle,
        log_path: paths::log(&req.id),
        cgroup_dir: cgroup_dir(&req.id),
    })
}

/// The container's cgroup directory in the guest.
pub fn cgroup_dir(id: &str) -> String {
    format!("{}{}", init::CGROUP_ROOT, paths::cgroup(id))
}

/// Remove a container's bundle, rootfs, log file; unmount its image if unused (idempotent).
pub fn remove(table: &mut Table, id: &str) -> Result<()> {
    validate_id(id)?;
    let bundle = paths::bundle(id);
    mounts::unmount_all_under(&bundle)?;
    if !mounts::under(&mounts::current(), &bundle).is_empty() {
        return Err(Error::precondition(format!(
            "{bundle} still has mounts; not removing it"
        )));
    }
    match std::fs::remove_dir_all(&bundle) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {bundle}"), &e)),
    }
    let log = paths::log(id);
    match std::fs::remove_file(&log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {log}"), &e)),
    }
    // libcontainer removes the cgroup on delete; an empty leftover goes too
    let _ = std::fs::remove_dir(cgroup_dir(id));
    if let Some(image_dir) = table.containers.remove(id) {
        let unused = table.images.get_mut(&image_dir).is_none_or(|users| {
            users.remove(id);
            users.is_empty()
        });
        if unused {
            table.images.remove(&image_dir);
            mounts::unmount(Path::new(&image_dir))?;
            let _ = std::fs::remove_dir(&image_dir);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PrepareContainer {
        PrepareContainer {
            id: "abc123".into(),
            image_device: "/dev/ubdb".into(),
            image_fstype: "erofs".into(),
            config_json: "{\"ociVersion\":\"1.0.2\"}".into(),
            files: vec![],
        }
    }

    #[test]
    fn validates_requests() {
        assert_eq!(validate(&req()).unwrap(), "ubdb");
        let mut r = req();
        r.image_device = "/dev/disk/by-id/x".into();
        assert_eq!(validate(&r).unwrap(), "x");
        for dev in ["/etc/passwd", "/dev", "/dev/../etc/x", "ubdb", ""] {
            let mut r = req();
            r.image_device = dev.into();
            assert!(validate(&r).is_err(), "{dev}");
        }
        let mut r = req();
        r.image_fstype = "erofs,foo".into();
        assert!(validate(&r).is_err());
        let mut r = req();
        r.config_json = "{".into();
        assert!(validate(&r).unwrap_err().message.contains("config_json"));
        for id in ["", "..", "a/b", "a b"] {
            let mut r = req();
            r.id = id.into();
            assert_eq!(validate(&r).unwrap_err().kind.as_str(), "invalid_argument");
        }
        assert_eq!(cgroup_dir("x"), "/sys/fs/cgroup/pod/x");
    }

    #[tokio::test]
    async fn device_wait_times_out() {
        let e = wait_for_device("/dev/nonexistent-unicri", Duration::from_millis(60))
            .await
            .unwrap_err();
        assert_eq!(e.kind.as_str(), "not_found");
        wait_for_device("/dev/null", Duration::from_millis(60))
            .await
            .unwrap();
    }
}
