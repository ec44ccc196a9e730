//! The result cache: after a successful ADD, the result and the exact configuration and
//! arguments used are written to `<cache_dir>/<network>/<container_id>-<ifname>.json`, so DEL
//! and CHECK after a daemon restart (or a config change) replay what ADD did.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory).
//! A corrupt entry reads as absent (logged), as libcni treats it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::runtime::CapabilityArgs;

/// The `kind` tag of entries written by this version.
pub const CACHE_KIND: &str = "unicriCniCacheV1";

/// One cached attachment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// Network name.
    pub network_name: String,
    /// Container (sandbox) id.
    pub container_id: String,
    /// Interface name.
    pub if_name: String,
    /// The netns path ADD ran with.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The network configuration list ADD used (JSON).
    pub config: Value,
    /// `CNI_ARGS` pairs.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments.
    #[serde(default)]
    pub capability_args: CapabilityArgs,
    /// The final ADD result.
    pub result: Value,
}

/// The cache directory.
#[derive(Clone, Debug)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResultCache { dir: dir.into() }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for one attachment lives. The parts must have been validated (network
    /// name, container id and interface name rules keep them single path components).
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(network)
            .join(format!("{container_id}-{ifname}.json"))
    }

    /// Writes `entry` atomically.
    pub fn write(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(err)?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| err(e.into()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        tmp.write_all(&bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// Reads the entry for one attachment; `None` when absent or unreadable as an entry.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, CniError> {
        let path = self.path(network, container_id, ifname);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CniError::Cache { path, source }),
        };
        match serde_json::from_slice::<CacheEntry>(&bytes) {
            Ok(e) if e.kind == CACHE_KIND => Ok(Some(e)),
            Ok(e) => {
                tracing::warn!(path = %path.display(), kind = %e.kind, "ignoring cni cache entry of unknown kind");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring corrupt cni cache entry");
                Ok(None)
            }
        }
    }

    /// Removes the entry; absent is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        let mut caps = CapabilityArgs::default();
        caps.set("portMappings", serde_json::json!([{"hostPort": 1}]));
        CacheEntry {
            kind: CACHE_KIND.into(),
            network_name: "podnet".into(),
            container_id: "abc".into(),
            if_name: "eth0".into(),
            netns: Some("/run/x".into()),
            config: serde_json::json!({"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge"}]}),
            cni_args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: caps,
            result: serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}),
        }
    }

    #[test]
    fn round_trip_and_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ResultCache::new(dir.path().join("cache"));
        assert_eq!(cache.read("podnet", "abc", "eth0").expect("read"), None);
        cache
            .remove("podnet", "abc", "eth0")
            .expect("remove absent");
        let e = entry();
        cache.write(&e).expect("write");
        let path = dir.path().join("cache/podnet/abc-eth0.json");
        assert!(path.is_file());
        assert_eq!(
            cache.read("podnet", "abc", "eth0").expect("read"),
            Some(e.clone())
        );
        // overwrite is atomic and leaves no temp files behind
        let mut e2 = e.clone();
        e2.result = serde_json::json!({"cniVersion":"1.0.0"});
        cache.write(&e2).expect("rewrite");
        assert_eq!(cache.read("podnet", "abc", "eth0").expect("read"), Some(e2));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cache/podnet"))
            .expect("readdir")
            .collect();
        assert_eq!(files.len(), 1);
        cache.remove("podnet", "abc", "eth0").expect("remove");
        assert!(!path.exists());
        cache.remove("podnet", "abc", "eth0").expect("remove twice");
    }

    #[test]
    fn corrupt_entries_read_as_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ResultCache::new(dir.path());
        std::fs::create_dir_all(dir.path().join("n")).expect("mkdir");
        std::fs::write(dir.path().join("n/c-eth0.json"), b"{trunc").expect("write");
        assert_eq!(cache.read("n", "c", "eth0").expect("read"), None);
        let mut e = entry();
        e.kind = "other".into();
        e.network_name = "n".into();
        e.container_id = "c".into();
        cache.write(&e).expect("write");
        assert_eq!(cache.read("n", "c", "eth0").expect("read"), None);
    }
}
