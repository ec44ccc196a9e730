//! Network configuration: loading the first config file of a directory, validating it, and the
//! built-in loopback network.
//!
//! Like containerd's go-cni, the network is the first file (lexical order of file names) ending in
//! `.conflist`, `.conf` or `.json`; a broken first file is an error, not skipped, so a typo shows
//! up in `NetworkReady` instead of silently selecting another network. A single-plugin `.conf` /
//! `.json` is wrapped into a one-plugin list (libcni's `ConfListFromConf`); a `.conf` that holds a
//! `plugins` array is read as a list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::CniError;

/// CNI spec versions whose result format this crate understands (0.3.0 introduced the
/// `interfaces`/`ips` result that is still current).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// File name extensions that hold network configuration, as libcni accepts them.
pub const CONFIG_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// Name of the built-in loopback network (the name containerd uses).
pub const LOOPBACK_NETWORK: &str = "cni-loopback";

/// A parsed CNI version `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `1.0.0`, `0.4.0`, ...; `None` when it is not three dot-separated numbers.
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }
}

/// One plugin of a network configuration list.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConf {
    /// The plugin's `type`: the binary name looked up in the binary directories.
    pub plugin_type: String,
    /// Capabilities the plugin declares with `"capabilities": {"<name>": true}`.
    pub capabilities: BTreeSet<String>,
    /// The plugin's configuration object exactly as written (all keys kept).
    pub raw: Map<String, Value>,
}

/// A validated network configuration list.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfigList {
    /// Network name (`name`).
    pub name: String,
    /// The CNI version used to talk to the plugins.
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
    /// Plugins in execution order (ADD order).
    pub plugins: Vec<PluginConf>,
    /// The list as JSON (a wrapped `.conf` appears as the list it became); stored in the result
    /// cache so DEL replays exactly what ADD used.
    pub raw: Value,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

impl NetworkConfigList {
    /// The CNI version as numbers (validated at parse time).
    pub fn version(&self) -> Version {
        Version::parse(&self.cni_version).unwrap_or(Version(0, 0, 0))
    }

    /// Parses and validates a network configuration list (`.conflist` content).
    pub fn from_list_bytes(bytes: &[u8], origin: &str) -> Result<Self, CniError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(origin, e.to_string()))?;
        Self::from_list_value(value, origin)
    }

    /// Parses a single-plugin configuration (`.conf` content) and wraps it into a one-plugin list.
    /// Content that has a `plugins` array is read as a list.
    pub fn from_conf_bytes(bytes: &[u8], origin: &str) -> Result<Self, CniError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(origin, e.to_string()))?;
        let Value::Object(obj) = &value else {
            return Err(invalid(origin, "not a JSON object".into()));
        };
        if obj.contains_key("plugins") {
            return Self::from_list_value(value, origin);
        }
        match obj.get("type") {
            Some(Value::String(t)) if !t.is_empty() => {}
            _ => {
                return Err(invalid(
                    origin,
                    "network type not found (no \"type\")".into(),
                ));
            }
        }
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = obj.get(key) {
                list.insert(key.to_string(), v.clone());
            }
        }
        list.insert("plugins".to_string(), Value::Array(vec![value.clone()]));
        Self::from_list_value(Value::Object(list), origin)
    }

    /// Validates a list given as JSON.
    pub fn from_list_value(value: Value, origin: &str) -> Result<Self, CniError> {
        let Value::Object(obj) = &value else {
            return Err(invalid(origin, "not a JSON object".into()));
        };
        let name = match obj.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => return Err(invalid(origin, "missing \"name\"".into())),
        };
        if !valid_network_name(&name) {
            return Err(invalid(
                origin,
                format!("network name {name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        let cni_version = pick_version(obj, origin)?;
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // libcni also accepts the string form
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(_) => return Err(invalid(origin, "\"disableCheck\" must be a boolean".into())),
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            Some(Value::Array(_)) => return Err(invalid(origin, "\"plugins\" is empty".into())),
            _ => return Err(invalid(origin, "missing \"plugins\" array".into())),
        };
        let mut parsed = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let Value::Object(raw) = p else {
                return Err(invalid(origin, format!("plugin {i} is not an object")));
            };
            let plugin_type = match raw.get("type") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => return Err(invalid(origin, format!("plugin {i} has no \"type\""))),
            };
            if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                return Err(invalid(
                    origin,
                    format!("plugin {i} type {plugin_type:?} is not a file name"),
                ));
            }
            let capabilities = match raw.get("capabilities") {
                None | Some(Value::Null) => BTreeSet::new(),
                Some(Value::Object(c)) => c
                    .iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect(),
                Some(_) => {
                    return Err(invalid(
                        origin,
                        format!("plugin {i} \"capabilities\" is not an object"),
                    ));
                }
            };
            parsed.push(PluginConf {
                plugin_type,
                capabilities,
                raw: raw.clone(),
            });
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins: parsed,
            raw: value,
            source: None,
        })
    }

    /// Loads the network from the first configuration file of `dir` (see the module docs).
    pub fn load_dir(dir: &Path) -> Result<Self, CniError> {
        let Some(path) = first_config_file(dir)? else {
            return Err(CniError::NoConfig {
                dir: dir.to_path_buf(),
            });
        };
        Self::load_file(&path)
    }

    /// Loads one configuration file, choosing list or single-plugin parsing by its extension.
    pub fn load_file(path: &Path) -> Result<Self, CniError> {
        let bytes = std::fs::read(path).map_err(|source| CniError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let mut list = if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_list_bytes(&bytes, &origin)?
        } else {
            Self::from_conf_bytes(&bytes, &origin)?
        };
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// The built-in loopback network: one `loopback` plugin, run with interface `lo`.
    pub fn loopback() -> Self {
        let raw = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": LOOPBACK_NETWORK,
            "plugins": [{"type": "loopback"}],
        });
        let mut plugin = Map::new();
        plugin.insert("type".into(), Value::String("loopback".into()));
        NetworkConfigList {
            name: LOOPBACK_NETWORK.into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins: vec![PluginConf {
                plugin_type: "loopback".into(),
                capabilities: BTreeSet::new(),
                raw: plugin,
            }],
            raw,
            source: None,
        }
    }
}

/// The first configuration file of `dir` in lexical order of file names, `None` when there is
/// none or the directory does not exist.
pub fn first_config_file(dir: &Path) -> Result<Option<PathBuf>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CniError::ReadConfigDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CniError::ReadConfigDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        // follow symlinks (config management often links files in)
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files.into_iter().next())
}

/// The spec's network name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `cniVersions` (1.1: the highest supported entry wins) or else `cniVersion`.
fn pick_version(obj: &Map<String, Value>, origin: &str) -> Result<String, CniError> {
    if let Some(Value::Array(versions)) = obj.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .filter_map(|v| Version::parse(v).map(|p| (p, v)))
            .max();
        if let Some((_, v)) = best {
            return Ok(v.to_string());
        }
        if !obj.contains_key("cniVersion") {
            return Err(invalid(
                origin,
                format!("none of cniVersions is supported (supported: {SUPPORTED_VERSIONS:?})"),
            ));
        }
    }
    match obj.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(Value::String(v)) => Err(invalid(
            origin,
            format!("unsupported cniVersion {v:?} (supported: {SUPPORTED_VERSIONS:?})"),
        )),
        _ => Err(invalid(origin, "missing \"cniVersion\"".into())),
    }
}

fn invalid(origin: &str, reason: String) -> CniError {
    CniError::InvalidConfig {
        origin: origin.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    }"#;

    #[test]
    fn parses_a_list() {
        let l = NetworkConfigList::from_list_bytes(LIST.as_bytes(), "t").expect("valid");
        assert_eq!(l.name, "podnet");
        assert_eq!(l.cni_version, "1.0.0");
        assert_eq!(l.version(), Version(1, 0, 0));
        assert!(!l.disable_check);
        let types: Vec<_> = l.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap", "bandwidth"]);
        assert_eq!(
            l.plugins[1].capabilities,
            BTreeSet::from(["portMappings".to_string()])
        );
        assert_eq!(l.plugins[0].raw["bridge"], "cni0");
    }

    #[test]
    fn rejects_invalid_lists() {
        let cases = [
            (r#"[]"#, "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "missing \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","plugins":[{"type":"x"}]}"#,
                "must match",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                "missing \"cniVersion\"",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "unsupported cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                "missing \"plugins\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
                "plugin 0 has no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"type":""}]}"#,
                "plugin 1 has no",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#,
                "not a file name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a","capabilities":[]}]}"#,
                "capabilities",
            ),
            ("{", "EOF"),
        ];
        for (text, want) in cases {
            let err = NetworkConfigList::from_list_bytes(text.as_bytes(), "t")
                .expect_err(text)
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn cni_versions_picks_highest_supported() {
        let l = NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0","9.9.9"],"name":"n","plugins":[{"type":"a"}]}"#,
            "t",
        )
        .expect("valid");
        assert_eq!(l.cni_version, "1.1.0");
        let l = NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"0.4.0","cniVersions":["9.9.9"],"name":"n","plugins":[{"type":"a"}]}"#,
            "t",
        )
        .expect("falls back to cniVersion");
        assert_eq!(l.cni_version, "0.4.0");
    }

    #[test]
    fn wraps_a_single_conf() {
        let l = NetworkConfigList::from_conf_bytes(
            br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","capabilities":{"portMappings":true}}"#,
            "t",
        )
        .expect("valid");
        assert_eq!(l.name, "single");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert!(l.plugins[0].capabilities.contains("portMappings"));
        assert_eq!(l.raw["plugins"][0]["type"], "bridge");
        let err = NetworkConfigList::from_conf_bytes(br#"{"cniVersion":"0.4.0","name":"s"}"#, "t")
            .expect_err("no type");
        assert!(err.to_string().contains("network type not found"));
        // a list inside a .conf is accepted as a list
        let l = NetworkConfigList::from_conf_bytes(LIST.as_bytes(), "t").expect("list in .conf");
        assert_eq!(l.plugins.len(), 3);
    }

    #[test]
    fn loads_the_first_file_lexically() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            NetworkConfigList::load_dir(dir.path()),
            Err(CniError::NoConfig { .. })
        ));
        assert!(matches!(
            NetworkConfigList::load_dir(&dir.path().join("missing")),
            Err(CniError::NoConfig { .. })
        ));
        std::fs::write(dir.path().join("README"), "x").expect("write");
        std::fs::write(
            dir.path().join("20-b.conflist"),
            br#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("10-a.conf"),
            br#"{"cniVersion":"1.0.0","name":"a","type":"y"}"#,
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("05-dir.conf")).expect("mkdir");
        let l = NetworkConfigList::load_dir(dir.path()).expect("load");
        assert_eq!(l.name, "a");
        assert_eq!(
            l.source.as_deref(),
            Some(dir.path().join("10-a.conf").as_path())
        );
        // a broken first file is an error, not skipped
        std::fs::write(dir.path().join("00-broken.json"), b"{").expect("write");
        let err = NetworkConfigList::load_dir(dir.path()).expect_err("broken");
        assert!(err.to_string().contains("00-broken.json"), "{err}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(Version::parse("0.3.1"), Some(Version(0, 3, 1)));
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert!(Version(0, 4, 0) < Version(1, 0, 0));
        assert!(valid_network_name("cni-loopback"));
        assert!(!valid_network_name("a/b"));
        assert!(!valid_network_name(""));
    }
}
