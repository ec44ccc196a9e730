//! Registry endpoint configuration in containerd's `hosts.toml` format
//! (`<hosts_dir>/<host[:port]>/hosts.toml`, falling back to `<hosts_dir>/_default/hosts.toml`).
//!
//! ```toml
//! server = "https://registry-1.docker.io"
//! [host."http://127.0.0.1:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = true
//!   ca = ["/etc/certs/ca.pem"]
//!   header = { x-custom = "v" }
//!   override_path = false
//! ```
//! Mirrors (`[host.*]` tables) are tried in file order, then the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde_json::json;

use crate::error::ImageError;

/// What an endpoint may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch content by digest (blobs, manifests by digest).
    pub pull: bool,
    /// Resolve a tag to a digest.
    pub resolve: bool,
    /// Push (parsed, unused).
    pub push: bool,
}

impl Capabilities {
    const ALL_PULL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: false,
    };
}

/// One endpoint to try for a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// API root, e.g. `https://registry-1.docker.io/v2` (no trailing slash).
    pub api_root: String,
    /// The endpoint's `host[:port]` (for credentials and the token cache).
    pub host: String,
    /// Whether this is a mirror (requests carry `?ns=<registry>`).
    pub is_mirror: bool,
    /// Allowed operations.
    pub capabilities: Capabilities,
    /// Skip TLS verification.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// On a TLS/connect failure over https (other than an untrusted certificate), retry the
    /// same endpoint over plain http (containerd's rule for localhost registries without
    /// configuration).
    pub http_fallback: bool,
}

#[derive(Clone, Debug)]
struct HostEntry {
    url: String,
    capabilities: Capabilities,
    skip_verify: bool,
    ca: Vec<PathBuf>,
    headers: Vec<(String, String)>,
    override_path: bool,
}

#[derive(Clone, Debug)]
struct HostsFile {
    path: PathBuf,
    /// The server entry (the `server` key plus the top-level options), if `server` was set.
    server: Option<HostEntry>,
    /// Top-level options applied to the default server when `server` is absent.
    top: HostEntry,
    mirrors: Vec<HostEntry>,
}

/// All loaded `hosts.toml` files.
#[derive(Clone, Debug, Default)]
pub struct RegistryHosts {
    by_host: BTreeMap<String, HostsFile>,
    default: Option<HostsFile>,
}

fn bad(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::LoadConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn string_list(path: &Path, key: &str, v: &toml::Value) -> Result<Vec<String>, ImageError> {
    match v {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    bad(
                        path,
                        format!("{key}: expected a string or a list of strings"),
                    )
                })
            })
            .collect(),
        _ => Err(bad(
            path,
            format!("{key}: expected a string or a list of strings"),
        )),
    }
}

fn parse_entry(path: &Path, url: String, t: &toml::Table) -> Result<HostEntry, ImageError> {
    let mut e = HostEntry {
        url,
        capabilities: Capabilities::ALL_PULL,
        skip_verify: false,
        ca: Vec::new(),
        headers: Vec::new(),
        override_path: false,
    };
    for (k, v) in t {
        match k.as_str() {
            "capabilities" => {
                let caps = string_list(path, k, v)?;
                let mut c = Capabilities {
                    pull: false,
                    resolve: false,
                    push: false,
                };
                for cap in caps {
                    match cap.as_str() {
                        "pull" => c.pull = true,
                        "resolve" => c.resolve = true,
                        "push" => c.push = true,
                        other => {
                            return Err(bad(
                                path,
                                format!("capabilities: unknown capability {other:?}"),
                            ));
                        }
                    }
                }
                e.capabilities = c;
            }
            "skip_verify" => {
                e.skip_verify = v
                    .as_bool()
                    .ok_or_else(|| bad(path, "skip_verify: expected a boolean"))?;
            }
            "override_path" => {
                e.override_path = v
                    .as_bool()
                    .ok_or_else(|| bad(path, "override_path: expected a boolean"))?;
            }
            "ca" => {
                let base = path.parent().unwrap_or(Path::new("/"));
                e.ca = string_list(path, k, v)?
                    .into_iter()
                    .map(|p| base.join(p))
                    .collect();
            }
            "header" => {
                let ht = v
                    .as_table()
                    .ok_or_else(|| bad(path, "header: expected a table"))?;
                for (hk, hv) in ht {
                    for val in string_list(path, "header", hv)? {
                        e.headers.push((hk.clone(), val));
                    }
                }
            }
            // Accepted and ignored (containerd options without an equivalent here).
            "server" | "host" | "client" | "dial_timeout" => {}
            other => return Err(bad(path, format!("unknown key {other:?}"))),
        }
    }
    Ok(e)
}

fn parse_file(path: &Path, text: &str) -> Result<HostsFile, ImageError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(path, e.message().to_string()))?;
    let top = parse_entry(path, String::new(), &table)?;
    let server = match table.get("server") {
        None => None,
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(path, "server: expected a string"))?;
            let mut e = top.clone();
            e.url = s.to_string();
            check_url(path, &e)?;
            Some(e)
        }
    };
    let mut mirrors = Vec::new();
    if let Some(h) = table.get("host") {
        let ht = h
            .as_table()
            .ok_or_else(|| bad(path, "host: expected tables [host.\"<url>\"]"))?;
        for (url, v) in ht {
            let t = v
                .as_table()
                .ok_or_else(|| bad(path, format!("host {url:?}: expected a table")))?;
            let e = parse_entry(path, url.clone(), t)?;
            check_url(path, &e)?;
            mirrors.push(e);
        }
    }
    Ok(HostsFile {
        path: path.to_path_buf(),
        server,
        top,
        mirrors,
    })
}

fn check_url(path: &Path, e: &HostEntry) -> Result<(), ImageError> {
    api_root(&e.url, e.override_path)
        .map(|_| ())
        .map_err(|r| bad(path, r))
}

/// Normalises a host URL (`http://h:5000`, `h:5000`, `https://h/path`) to an API root.
fn api_root(url: &str, override_path: bool) -> Result<(String, String), String> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let u = Url::parse(&with_scheme).map_err(|e| format!("invalid host url {url:?}: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!(
            "invalid host url {url:?}: scheme must be http or https"
        ));
    }
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(format!("invalid host url {url:?}: no host")),
    };
    let mut p = u.path().trim_end_matches('/').to_string();
    if !override_path && !p.ends_with("/v2") {
        p.push_str("/v2");
    }
    Ok((format!("{}://{}{}", u.scheme(), host, p), host))
}

/// The default server for a registry host.
fn default_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("https://{registry}")
    }
}

fn is_localhost(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host == "127.0.0.1" || host == "::1"
}

impl RegistryHosts {
    /// Loads every `<dir>/<host>/hosts.toml` (and `_default`). A missing dir is empty config.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let mut out = RegistryHosts::default();
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(bad(dir, format!("read dir: {e}"))),
        };
        for ent in rd {
            let ent = ent.map_err(|e| bad(dir, format!("read dir: {e}")))?;
            let file = ent.path().join("hosts.toml");
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.kind() == std::io::ErrorKind::NotADirectory =>
                {
                    continue;
                }
                Err(e) => return Err(bad(&file, format!("read: {e}"))),
            };
            let parsed = parse_file(&file, &text)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name == "_default" {
                out.default = Some(parsed);
            } else {
                out.by_host.insert(name, parsed);
            }
        }
        Ok(out)
    }

    /// Parses one hosts.toml text as the config for `host` (tests).
    #[cfg(test)]
    fn from_text(host: &str, text: &str) -> Result<Self, ImageError> {
        let mut out = RegistryHosts::default();
        let f = parse_file(Path::new("/test/hosts.toml"), text)?;
        if host == "_default" {
            out.default = Some(f);
        } else {
            out.by_host.insert(host.to_string(), f);
        }
        Ok(out)
    }

    /// The ordered endpoints for `registry` (`host[:port]` as in the reference).
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let file = self.by_host.get(registry).or(self.default.as_ref());
        let mut out = Vec::new();
        let mk = |e: &HostEntry, is_mirror: bool| -> Option<Endpoint> {
            let (root, host) = api_root(&e.url, e.override_path).ok()?;
            Some(Endpoint {
                api_root: root,
                host,
                is_mirror,
                capabilities: e.capabilities,
                skip_verify: e.skip_verify,
                ca: e.ca.clone(),
                headers: e.headers.clone(),
                http_fallback: false,
            })
        };
        match file {
            None => {
                if let Ok((root, host)) = api_root(&default_server(registry), false) {
                    out.push(Endpoint {
                        api_root: root,
                        host,
                        is_mirror: false,
                        capabilities: Capabilities::ALL_PULL,
                        skip_verify: false,
                        ca: Vec::new(),
                        headers: Vec::new(),
                        http_fallback: is_localhost(registry),
                    });
                }
            }
            Some(f) => {
                for m in &f.mirrors {
                    if let Some(mut ep) = mk(m, true) {
                        // A "mirror" that is the registry itself is not a mirror.
                        ep.is_mirror = ep.host != registry;
                        out.push(ep);
                    }
                }
                let server = match &f.server {
                    Some(s) => mk(s, false),
                    None => {
                        let mut e = f.top.clone();
                        e.url = default_server(registry);
                        e.override_path = false;
                        mk(&e, false).map(|mut ep| {
                            ep.http_fallback = is_localhost(registry);
                            ep
                        })
                    }
                };
                if let Some(mut s) = server {
                    s.is_mirror = false;
                    out.push(s);
                }
            }
        }
        out
    }

    /// A JSON summary (no header values: they may carry secrets).
    pub fn summary(&self) -> serde_json::Value {
        let file_json = |f: &HostsFile| {
            let entry = |e: &HostEntry| {
                json!({
                    "url": e.url,
                    "capabilities": {
                        "pull": e.capabilities.pull,
                        "resolve": e.capabilities.resolve,
                    },
                    "skip_verify": e.skip_verify,
                    "ca": e.ca,
                    "header_names": e.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                    "override_path": e.override_path,
                })
            };
            json!({
                "path": f.path,
                "server": f.server.as_ref().map(entry),
                "hosts": f.mirrors.iter().map(entry).collect::<Vec<_>>(),
            })
        };
        let mut hosts = serde_json::Map::new();
        for (k, f) in &self.by_host {
            hosts.insert(k.clone(), file_json(f));
        }
        json!({
            "hosts": hosts,
            "default": self.default.as_ref().map(file_json),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::{Classify, ErrorKind};

    #[test]
    fn no_config_defaults() {
        let h = RegistryHosts::default();
        let e = h.endpoints("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].api_root, "https://registry-1.docker.io/v2");
        assert!(!e[0].http_fallback);
        assert!(!e[0].is_mirror);
        let e = h.endpoints("quay.io");
        assert_eq!(e[0].api_root, "https://quay.io/v2");
        for l in [
            "localhost:5000",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
        ] {
            let e = h.endpoints(l);
            assert!(e[0].http_fallback, "{l}");
            assert_eq!(e[0].api_root, format!("https://{l}/v2"));
        }
        assert!(!h.endpoints("example.com:5000")[0].http_fallback);
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.b.example/custom/path"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/etc/ca1.pem", "rel.pem"]
  override_path = true
  [host."https://mirror.b.example/custom/path".header]
    x-custom = "one"
    x-multi = ["a", "b"]

[host."https://a.example"]
  ca = "/etc/ca2.pem"
"#;
        let h = RegistryHosts::from_text("docker.io", text).expect("parse");
        let e = h.endpoints("docker.io");
        let roots: Vec<_> = e.iter().map(|e| e.api_root.as_str()).collect();
        assert_eq!(
            roots,
            [
                "http://127.0.0.1:5000/v2",
                "https://mirror.b.example/custom/path",
                "https://a.example/v2",
                "https://registry-1.docker.io/v2"
            ]
        );
        assert!(e[0].is_mirror && e[1].is_mirror && e[2].is_mirror && !e[3].is_mirror);
        assert_eq!(e[0].host, "127.0.0.1:5000");
        assert_eq!(
            e[1].capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert!(e[1].skip_verify);
        assert_eq!(
            e[1].ca,
            [
                PathBuf::from("/etc/ca1.pem"),
                PathBuf::from("/test/rel.pem")
            ]
        );
        assert_eq!(
            e[1].headers,
            [
                ("x-custom".into(), "one".into()),
                ("x-multi".into(), "a".into()),
                ("x-multi".into(), "b".into())
            ]
        );
        assert_eq!(e[2].ca, [PathBuf::from("/etc/ca2.pem")]);
        assert!(e[3].capabilities.resolve && e[3].capabilities.pull);
        // Other registries without their own file get the plain default.
        assert_eq!(h.endpoints("quay.io")[0].api_root, "https://quay.io/v2");
    }

    #[test]
    fn server_without_v2_and_top_level_options() {
        let h = RegistryHosts::from_text(
            "localhost:5000",
            "server = \"http://localhost:5000\"\nskip_verify = true\n",
        )
        .expect("parse");
        let e = h.endpoints("localhost:5000");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].api_root, "http://localhost:5000/v2");
        assert!(e[0].skip_verify);
        assert!(!e[0].http_fallback);
        // no server key: default server, top-level options apply to it
        let h = RegistryHosts::from_text(
            "r.example",
            "skip_verify = true\n[host.\"m.example:8443\"]\n",
        )
        .expect("p");
        let e = h.endpoints("r.example");
        assert_eq!(e[0].api_root, "https://m.example:8443/v2");
        assert_eq!(e[1].api_root, "https://r.example/v2");
        assert!(e[1].skip_verify);
    }

    #[test]
    fn default_dir_applies_to_all() {
        let h = RegistryHosts::from_text("_default", "[host.\"http://127.0.0.1:1234\"]\n")
            .expect("parse");
        let e = h.endpoints("quay.io");
        assert_eq!(e[0].api_root, "http://127.0.0.1:1234/v2");
        assert!(e[0].is_mirror);
        assert_eq!(e[1].api_root, "https://quay.io/v2");
    }

    #[test]
    fn bad_files_name_the_file() {
        for text in [
            "server = 5",
            "[host.\"http://x\"]\ncapabilities = [\"fly\"]",
            "[host.\"http://x\"]\nskip_verify = \"yes\"",
            "this is not toml",
            "[host.\"ftp://x\"]",
            "bogus_key = 1",
        ] {
            let err = RegistryHosts::from_text("x", text).expect_err(text);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains("/test/hosts.toml"), "{err}");
        }
    }

    #[test]
    fn load_from_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("localhost:5000")).expect("mkdir");
        std::fs::write(
            d.path().join("localhost:5000/hosts.toml"),
            "server = \"http://localhost:5000\"\n",
        )
        .expect("write");
        std::fs::create_dir_all(d.path().join("_default")).expect("mkdir");
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"https://m.example\"]\n",
        )
        .expect("write");
        std::fs::write(d.path().join("stray-file"), "x").expect("write");
        let h = RegistryHosts::load(d.path()).expect("load");
        assert_eq!(
            h.endpoints("localhost:5000")[0].api_root,
            "http://localhost:5000/v2"
        );
        assert_eq!(h.endpoints("docker.io")[0].api_root, "https://m.example/v2");
        let s = h.summary();
        assert!(s["hosts"]["localhost:5000"].is_object());
        assert!(RegistryHosts::load(&d.path().join("missing")).is_ok());
        std::fs::write(d.path().join("_default/hosts.toml"), "server = [").expect("write");
        let err = RegistryHosts::load(d.path()).expect_err("bad");
        assert!(err.to_string().contains("_default/hosts.toml"));
    }
}
