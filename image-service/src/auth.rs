//! Registry authentication: `WWW-Authenticate` challenges, docker `config.json` credentials and
//! the shape of the credentials a pull carries. Never log anything from here but host names.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::ImageError;

/// Registry credentials, mirroring CRI's `AuthConfig` (`server_address` is ignored).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for basic auth / token requests.
    pub username: String,
    /// Password for basic auth / token requests.
    pub password: String,
    /// `base64(user:pass)`; used when username is empty.
    pub auth: String,
    /// OAuth2 refresh token: exchanged at the token realm with `grant_type=refresh_token`.
    pub identity_token: String,
    /// A bearer token sent as-is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "auth",
                &if self.auth.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "identity_token",
                &if self.identity_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "registry_token",
                &if self.registry_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl Credentials {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    /// `(user, pass)` for basic auth, from username/password or the `auth` field.
    pub fn basic(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let raw = B64.decode(self.auth.trim()).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        None
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=...,service=...,scope=...`
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm=...`
    Basic,
}

/// Parses the first supported challenge (Bearer preferred) from a header value.
pub fn parse_www_authenticate(h: &str) -> Option<Challenge> {
    let mut challenges: Vec<(String, HashMap<String, String>)> = Vec::new();
    let b = h.as_bytes();
    let mut i = 0;
    // tokenizer over: scheme SP param=value|"quoted", ...
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b' ' && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        if start == i {
            break;
        }
        let word = &h[start..i];
        // skip spaces
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !challenges.is_empty() {
            // parameter
            j += 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let mut val = String::new();
            if j < b.len() && b[j] == b'"' {
                j += 1;
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    let ch_len = utf8_len(b[j]);
                    val.push_str(&h[j..(j + ch_len).min(b.len())]);
                    j += ch_len;
                }
                j += 1; // closing quote
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && b[j] != b' ' {
                    j += 1;
                }
                val.push_str(&h[vs..j]);
            }
            if let Some(last) = challenges.last_mut() {
                last.1.insert(word.to_ascii_lowercase(), val);
            }
            i = j;
        } else {
            challenges.push((word.to_ascii_lowercase(), HashMap::new()));
            i = j;
        }
    }
    let bearer = challenges.iter().find(|(s, _)| s == "bearer");
    if let Some((_, p)) = bearer {
        let realm = p.get("realm")?.clone();
        return Some(Challenge::Bearer {
            realm,
            service: p.get("service").cloned(),
            scope: p.get("scope").cloned(),
        });
    }
    if challenges.iter().any(|(s, _)| s == "basic") {
        return Some(Challenge::Basic);
    }
    None
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Credentials loaded from a docker `config.json`, keyed by normalised `host[:port]`.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    by_host: HashMap<String, Credentials>,
}

/// Normalises a docker config key (`https://index.docker.io/v1/`, `host:5000`) to `host[:port]`.
pub fn normalize_host_key(k: &str) -> String {
    let k = k.trim();
    let k = k.split_once("://").map_or(k, |(_, r)| r);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => k.to_string(),
    }
}

impl CredentialStore {
    /// Loads a docker `config.json`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ImageError::LoadConfig {
                    path: path.to_path_buf(),
                    reason: format!("read: {e}"),
                });
            }
        };
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, ImageError> {
        let bad = |r: String| ImageError::LoadConfig {
            path: path.to_path_buf(),
            reason: r,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("parse json: {e}")))?;
        let mut by_host = HashMap::new();
        let Some(auths) = v.get("auths") else {
            return Ok(Self { by_host });
        };
        let auths = auths
            .as_object()
            .ok_or_else(|| bad("auths: expected an object".into()))?;
        for (k, a) in auths {
            let a = a
                .as_object()
                .ok_or_else(|| bad(format!("auths.{k}: expected an object")))?;
            let s = |key: &str| -> Result<String, ImageError> {
                match a.get(key) {
                    None | Some(serde_json::Value::Null) => Ok(String::new()),
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(bad(format!("auths.{k}.{key}: expected a string"))),
                }
            };
            let c = Credentials {
                username: s("username")?,
                password: s("password")?,
                auth: s("auth")?,
                identity_token: s("identitytoken")?,
                registry_token: s("registrytoken")?,
            };
            if !c.auth.is_empty() && c.username.is_empty() && c.basic().is_none() {
                return Err(bad(format!(
                    "auths.{k}.auth: expected base64 of user:password"
                )));
            }
            by_host.insert(normalize_host_key(k), c);
        }
        Ok(Self { by_host })
    }

    /// Credentials for `host[:port]`.
    pub fn get(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&normalize_host_key(host))
    }

    /// Host names with credentials (for the status summary; no secrets).
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<_> = self.by_host.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::{Classify, ErrorKind};

    #[test]
    fn bearer_challenges() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        // spaces, case, unquoted values, no scope, escaped quote
        let c =
            parse_www_authenticate(r#"bearer  realm = "http://127.0.0.1:1/t\"x" , service=reg"#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t\"x".into(),
                service: Some("reg".into()),
                scope: None
            })
        );
        // multiple scopes in one value (comma inside quotes)
        let c = parse_www_authenticate(r#"Bearer realm="r",scope="repository:a:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "r".into(),
                service: None,
                scope: Some("repository:a:pull,push".into())
            })
        );
    }

    #[test]
    fn basic_and_multiple_challenges() {
        assert_eq!(
            parse_www_authenticate(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_www_authenticate("Basic"), Some(Challenge::Basic));
        let c = parse_www_authenticate(r#"Basic realm="x", Bearer realm="https://t",service="s""#);
        assert!(matches!(c, Some(Challenge::Bearer { .. })));
        assert_eq!(parse_www_authenticate("Bearer service=\"x\""), None); // no realm
        assert_eq!(parse_www_authenticate("Negotiate abc"), None);
        assert_eq!(parse_www_authenticate(""), None);
    }

    #[test]
    fn credentials_basic_and_debug() {
        let c = Credentials {
            auth: B64.encode("u:p:w"),
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("u".into(), "p:w".into())));
        let c = Credentials {
            username: "a".into(),
            password: "secret".into(),
            ..Default::default()
        };
        assert_eq!(c.basic(), Some(("a".into(), "secret".into())));
        assert!(!format!("{c:?}").contains("secret"));
        assert!(Credentials::default().is_empty());
        assert_eq!(
            Credentials {
                auth: "!!".into(),
                ..Default::default()
            }
            .basic(),
            None
        );
    }

    #[test]
    fn docker_config_json() {
        let text = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "localhost:5000":{{"username":"u","password":"p"}},
                "http://r.example/v2":{{"identitytoken":"tok"}}
            }}, "credsStore":"desktop"}}"#,
            B64.encode("hub:pw")
        );
        let s = CredentialStore::parse(Path::new("/c.json"), &text).expect("parse");
        assert_eq!(
            s.get("docker.io").and_then(Credentials::basic),
            Some(("hub".into(), "pw".into()))
        );
        assert_eq!(
            s.get("registry-1.docker.io").and_then(Credentials::basic),
            Some(("hub".into(), "pw".into()))
        );
        assert_eq!(
            s.get("localhost:5000").map(|c| c.username.as_str()),
            Some("u")
        );
        assert_eq!(
            s.get("r.example").map(|c| c.identity_token.as_str()),
            Some("tok")
        );
        assert!(s.get("other").is_none());
        assert_eq!(s.hosts(), ["docker.io", "localhost:5000", "r.example"]);
        for bad in [
            "{",
            r#"{"auths":[]}"#,
            r#"{"auths":{"h":{"auth":"!!!"}}}"#,
            r#"{"auths":{"h":{"username":1}}}"#,
        ] {
            let e = CredentialStore::parse(Path::new("/c.json"), bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains("/c.json"));
        }
    }
}
