//! Image references with Docker-style normalisation (the rules of `distribution/reference`'s
//! `ParseNormalizedNamed`): `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;

use crate::error::ImageError;

/// The default registry for names without a domain.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The default tag for references with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` digest; wins over the tag for pulling.
    pub digest: Option<String>,
}

fn invalid(reference: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_valid_digest(s: &str) -> bool {
    match s.strip_prefix("sha256:") {
        Some(hex) => is_hex64(hex),
        None => false,
    }
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // separator run
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Domain: `host[:port]` where host is DNS-ish labels or a bracketed IPv6 address.
fn valid_domain(d: &str) -> bool {
    if d.is_empty() {
        return false;
    }
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let ip = &rest[..end];
        if ip.is_empty()
            || !ip
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (None, Some(p)),
            None if after.is_empty() => (None, None),
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(h) = host {
        if h.is_empty() {
            return false;
        }
        for label in h.split('.') {
            let lb = label.as_bytes();
            if lb.is_empty()
                || !lb[0].is_ascii_alphanumeric()
                || !lb[lb.len() - 1].is_ascii_alphanumeric()
                || !lb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                return false;
            }
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        if s.is_empty() {
            return Err(invalid(s, "empty reference"));
        }
        if s.trim() != s || s.chars().any(char::is_whitespace) {
            return Err(invalid(s, "contains whitespace"));
        }
        if is_hex64(s) || (s.starts_with("sha256:") && is_hex64(&s[7..])) {
            return Err(invalid(s, "an image id or digest alone is not a reference"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_valid_digest(d) {
                    return Err(invalid(
                        s,
                        "digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(invalid(
                s,
                "tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
            ));
        }
        if name.is_empty() {
            return Err(invalid(s, "empty repository name"));
        }
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.to_lowercase() != first =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
        }
        if !valid_domain(&registry) {
            return Err(invalid(s, format!("invalid registry host {registry:?}")));
        }
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                s,
                "repository must be lowercase path components of [a-z0-9] separated by '.', '_', '__' or '-'",
            ));
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid(s, "repository name longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some(DEFAULT_TAG.to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the reference carries a digest (which wins over the tag for pulling).
    pub fn is_digest(&self) -> bool {
        self.digest.is_some()
    }

    /// The reference to ask the registry for: the digest if any, else the tag.
    pub fn object(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// `name:tag` when a tag is present.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicri_sandbox::{Classify, ErrorKind};

    const D: &str = "sha256:ca5534a51dd04bbcebe9b23ba05f389466cf0c190f1f8f182d7eea92a9671d00";

    fn norm(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn docker_normalisation_table() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("docker/docker", "docker.io/docker/docker:latest"),
            ("library/debian", "docker.io/library/debian:latest"),
            ("debian", "docker.io/library/debian:latest"),
            ("docker.io/docker/docker", "docker.io/docker/docker:latest"),
            (
                "docker.io/library/debian",
                "docker.io/library/debian:latest",
            ),
            ("docker.io/debian", "docker.io/library/debian:latest"),
            (
                "index.docker.io/docker/docker",
                "docker.io/docker/docker:latest",
            ),
            (
                "index.docker.io/library/debian",
                "docker.io/library/debian:latest",
            ),
            ("index.docker.io/debian", "docker.io/library/debian:latest"),
            (
                "127.0.0.1:5000/docker/docker",
                "127.0.0.1:5000/docker/docker:latest",
            ),
            (
                "127.0.0.1:5000/library/debian",
                "127.0.0.1:5000/library/debian:latest",
            ),
            ("127.0.0.1:5000/debian", "127.0.0.1:5000/debian:latest"),
            ("192.168.0.1/debian", "192.168.0.1/debian:latest"),
            ("192.168.0.1:8080/debian:v1", "192.168.0.1:8080/debian:v1"),
            ("localhost/foo", "localhost/foo:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost:5000/a/b/c:1.0", "localhost:5000/a/b/c:1.0"),
            ("a.b/x", "a.b/x:latest"),
            ("quay.io/coreos/etcd:v3.5.0", "quay.io/coreos/etcd:v3.5.0"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("[::1]:5000/foo", "[::1]:5000/foo:latest"),
            ("[::1]/foo:bar", "[::1]/foo:bar"),
            (
                "foo_bar/qux__y.baz-x",
                "docker.io/foo_bar/qux__y.baz-x:latest",
            ),
            ("a---b/c", "docker.io/a---b/c:latest"),
            (
                "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
                "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
            ),
            (
                "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
                "docker.io/library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a:latest",
            ),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("busybox:_x", "docker.io/library/busybox:_x"),
            ("Foo.io/bar", "Foo.io/bar:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "input {input}");
        }
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("busybox@{D}")).expect("parse");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert!(r.is_digest());
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));

        let r = Reference::parse(&format!("localhost:5000/x:v1@{D}")).expect("parse");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("localhost:5000/x:v1@{D}"));
        assert_eq!(r.name(), "localhost:5000/x");
        assert_eq!(r.tagged().as_deref(), Some("localhost:5000/x:v1"));

        let r = Reference::parse("busybox").expect("parse");
        assert!(!r.is_digest());
        assert_eq!(r.object(), "latest");
    }

    #[test]
    fn rejects() {
        let long_tag = format!("busybox:{}", "a".repeat(129));
        let long_name = format!("x/{}", "a".repeat(260));
        let bad = [
            "",
            " busybox",
            "busy box",
            "https://github.com/docker/docker",
            "docker/Docker",
            "Busybox",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "sha256:1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "busybox:",
            "busybox:-tag",
            "busybox:t@g",
            "busybox:ta/g",
            long_tag.as_str(),
            long_name.as_str(),
            "busybox@sha256:abc",
            "busybox@sha512:1a3f",
            "busybox@sha256:1A3F5E7D9C1B3A5F7E9D1C3B5A7F9E1D3C5B7A9F1E3D5D7C9B1A3F5E7D9C1B3A",
            "busybox@",
            "@sha256:1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            ":tag",
            "a/",
            "/a",
            "a//b",
            "a_/b",
            "a/b.",
            "localhost:port/x",
            "[zz]:5000/x",
            "foo..bar/x",
        ];
        for b in bad {
            match Reference::parse(b) {
                Ok(r) => panic!("{b:?} parsed as {r}"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{b}");
                    assert!(matches!(e, ImageError::InvalidReference { .. }));
                }
            }
        }
    }

    #[test]
    fn tag_length_boundary() {
        let ok = format!("busybox:{}", "a".repeat(128));
        assert!(Reference::parse(&ok).is_ok());
    }
}
