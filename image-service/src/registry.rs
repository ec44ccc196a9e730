//! OCI distribution v2 client: endpoint fall-through, token/basic auth, bounded manifest reads
//! and streaming blob fetches. Credentials never reach a log line.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use reqwest::{StatusCode, Url, header};

use crate::auth::{Challenge, CredentialStore, Credentials, parse_www_authenticate};
use crate::error::ImageError;
use crate::hosts::{Endpoint, RegistryHosts};
use crate::manifest::ACCEPT;
use crate::reference::Reference;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A fetched manifest.
#[derive(Debug)]
pub struct FetchedManifest {
    /// Body (bounded by the limit).
    pub data: Bytes,
    /// Content-Type header.
    pub content_type: Option<String>,
    /// Docker-Content-Digest header.
    pub content_digest: Option<String>,
}

type ClientKey = (bool, Vec<PathBuf>);

/// The registry client (shared by all pulls).
pub struct RegistryClient {
    hosts: RegistryHosts,
    creds: CredentialStore,
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    /// `Authorization` values per (endpoint host, `scope|credentials fingerprint`).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Endpoints (api roots) that fell back to plain http.
    plain_http: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn connect_err(url: &Url, e: &reqwest::Error) -> ImageError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    ImageError::Connect {
        url: redact(url),
        reason,
    }
}

/// Whether `e` is a TLS certificate verification failure (the server does speak TLS, its
/// certificate is just not trusted). Such a failure is reported, never a reason for the
/// localhost plain-http fallback (containerd falls back only when the server is not speaking
/// TLS). native-tls uses OpenSSL here, whose reason string is "certificate verify failed".
fn is_cert_verify_error(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if s.to_string().contains("certificate verify failed") {
            return true;
        }
        src = s.source();
    }
    false
}

/// A hash of the credentials (never logged), keying the token cache.
fn fingerprint(c: Option<&Credentials>) -> String {
    use sha2::{Digest as _, Sha256};
    let Some(c) = c else { return String::new() };
    let mut h = Sha256::new();
    for part in [
        &c.username,
        &c.password,
        &c.auth,
        &c.identity_token,
        &c.registry_token,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// A URL without query (tokens can hide there) for messages.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    u.to_string()
}

impl RegistryClient {
    /// A client over loaded host config and credentials.
    pub fn new(hosts: RegistryHosts, creds: CredentialStore) -> Self {
        RegistryClient {
            hosts,
            creds,
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            plain_http: Mutex::new(HashSet::new()),
        }
    }

    /// The loaded host configuration.
    pub fn hosts(&self) -> &RegistryHosts {
        &self.hosts
    }

    /// The credentials file store.
    pub fn credential_store(&self) -> &CredentialStore {
        &self.creds
    }

    fn client(&self, ep: &Endpoint) -> Result<reqwest::Client, ImageError> {
        let key = (ep.skip_verify, ep.ca.clone());
        if let Some(c) = lock(&self.clients).get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("unicri/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .danger_accept_invalid_certs(ep.skip_verify);
        for ca in &ep.ca {
            let pem = std::fs::read(ca).map_err(|e| ImageError::LoadConfig {
                path: ca.clone(),
                reason: format!("read ca: {e}"),
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| ImageError::LoadConfig {
                    path: ca.clone(),
                    reason: format!("parse ca: {e}"),
                })?;
            b = b.add_root_certificate(cert);
        }
        let c = b.build().map_err(|e| ImageError::Connect {
            url: ep.api_root.clone(),
            reason: e.to_string(),
        })?;
        lock(&self.clients).insert(key, c.clone());
        Ok(c)
    }

    fn creds_for(
        &self,
        ep: &Endpoint,
        registry: &str,
        given: Option<&Credentials>,
    ) -> Option<Credentials> {
        if let Some(c) = given
            && !c.is_empty()
        {
            return Some(c.clone());
        }
        self.creds
            .get(&ep.host)
            .or_else(|| self.creds.get(registry))
            .cloned()
    }

    fn url(
        &self,
        ep: &Endpoint,
        registry: &str,
        repo: &str,
        suffix: &str,
    ) -> Result<Url, ImageError> {
        let mut root = ep.api_root.clone();
        if lock(&self.plain_http).contains(&ep.api_root)
            && let Some(rest) = root.strip_prefix("https://")
        {
            root = format!("http://{rest}");
        }
        let mut u =
            Url::parse(&format!("{root}/{repo}/{suffix}")).map_err(|e| ImageError::Connect {
                url: root.clone(),
                reason: format!("invalid url: {e}"),
            })?;
        if ep.is_mirror {
            u.query_pairs_mut().append_pair("ns", registry);
        }
        Ok(u)
    }

    #[allow(clippy::too_many_arguments)]
    /// Sends a GET, handling the auth dance and the localhost plain-http fallback.
    async fn get(
        &self,
        ep: &Endpoint,
        registry: &str,
        repo: &str,
        suffix: &str,
        accept: Option<&str>,
        creds: Option<&Credentials>,
        small: bool,
    ) -> Result<(Url, reqwest::Response), ImageError> {
        let client = self.client(ep)?;
        let creds = self.creds_for(ep, registry, creds);
        let default_scope = format!("repository:{repo}:pull");
        // Tokens are cached per credentials: one caller's token never serves another's pull.
        let fp = fingerprint(creds.as_ref());
        let mut url = self.url(ep, registry, repo, suffix)?;
        let mut authz: Option<String> = lock(&self.tokens)
            .get(&(ep.host.clone(), format!("{default_scope}|{fp}")))
            .cloned();
        if authz.is_none()
            && let Some(c) = &creds
            && !c.registry_token.is_empty()
        {
            authz = Some(format!("Bearer {}", c.registry_token));
        }
        let mut authed_once = false;
        loop {
            // The endpoint's headers, Accept and Authorization on a GET of `url`.
            let build = |url: &reqwest::Url, timeout: bool| {
                let mut req = client.get(url.clone());
                if timeout {
                    req = req.timeout(SMALL_REQUEST_TIMEOUT);
                }
                for (k, v) in &ep.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(a) = accept {
                    req = req.header(header::ACCEPT, a);
                }
                if let Some(a) = &authz {
                    req = req.header(header::AUTHORIZATION, a.as_str());
                }
                req
            };
            let req = build(&url, small);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    if ep.http_fallback
                        && url.scheme() == "https"
                        && (e.is_connect() || e.is_request())
                        && !is_cert_verify_error(&e)
                    {
                        tracing::info!(endpoint = %ep.api_root, "https failed for localhost registry, falling back to plain http");
                        lock(&self.plain_http).insert(ep.api_root.clone());
                        let _ = url.set_scheme("http");
                        // one retry over http (a second failure is reported)
                        match build(&url, false).send().await {
                            Ok(r) => r,
                            Err(e) => return Err(connect_err(&url, &e)),
                        }
                    } else {
                        return Err(connect_err(&url, &e));
                    }
                }
            };
            if resp.status() != StatusCode::UNAUTHORIZED || authed_once {
                if resp.status() == StatusCode::UNAUTHORIZED {
                    return Err(ImageError::Authenticate {
                        url: redact(&url),
                        reason: "registry rejected the credentials (401 after authentication)"
                            .into(),
                    });
                }
                return Ok((url, resp));
            }
            authed_once = true;
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_www_authenticate);
            let Some(challenge) = challenge else {
                return Err(ImageError::Authenticate {
                    url: redact(&url),
                    reason: "401 without a supported WWW-Authenticate challenge".into(),
                });
            };
            let (value, scope) = match challenge {
                Challenge::Basic => {
                    let Some((u, p)) = creds.as_ref().and_then(Credentials::basic) else {
                        return Err(ImageError::Authenticate {
                            url: redact(&url),
                            reason: "registry requires basic auth and no credentials were given"
                                .into(),
                        });
                    };
                    (
                        format!("Basic {}", B64.encode(format!("{u}:{p}"))),
                        default_scope.clone(),
                    )
                }
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => {
                    let scope = scope.unwrap_or_else(|| default_scope.clone());
                    let tok = self
                        .fetch_token(&client, &realm, service.as_deref(), &scope, creds.as_ref())
                        .await?;
                    (format!("Bearer {tok}"), scope)
                }
            };
            tracing::debug!(endpoint = %ep.host, scope = %scope, "authenticated to registry");
            lock(&self.tokens).insert((ep.host.clone(), format!("{scope}|{fp}")), value.clone());
            if scope != default_scope {
                lock(&self.tokens).insert(
                    (ep.host.clone(), format!("{default_scope}|{fp}")),
                    value.clone(),
                );
            }
            authz = Some(value);
        }
    }

    async fn fetch_token(
        &self,
        client: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, ImageError> {
        let mut url = Url::parse(realm).map_err(|e| ImageError::Authenticate {
            url: realm.to_string(),
            reason: format!("invalid realm: {e}"),
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(ImageError::Authenticate {
                url: realm.into(),
                reason: "realm must be http(s)".into(),
            });
        }
        let refresh = creds
            .map(|c| c.identity_token.as_str())
            .filter(|t| !t.is_empty());
        let resp = if let Some(rt) = refresh {
            // OAuth2 refresh-token grant; body built with the url crate's form encoder.
            let mut form =
                Url::parse("http://form.invalid/").map_err(|e| ImageError::Authenticate {
                    url: realm.into(),
                    reason: e.to_string(),
                })?;
            {
                let mut q = form.query_pairs_mut();
                q.append_pair("grant_type", "refresh_token");
                q.append_pair("refresh_token", rt);
                q.append_pair("client_id", "unicri");
                q.append_pair("scope", scope);
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
            }
            let body = form.query().unwrap_or("").to_string();
            client
                .post(url.clone())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .timeout(SMALL_REQUEST_TIMEOUT)
                .send()
                .await
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                q.append_pair("scope", scope);
            }
            let mut req = client.get(url.clone()).timeout(SMALL_REQUEST_TIMEOUT);
            if let Some((u, p)) = creds.and_then(Credentials::basic) {
                req = req.basic_auth(u, Some(p));
            }
            req.send().await
        };
        let resp = resp.map_err(|e| connect_err(&url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ImageError::Authenticate {
                url: redact(&url),
                reason: format!("token endpoint returned http status {}", status.as_u16()),
            });
        }
        let body = read_bounded(resp, 1 << 20, &url, "token response").await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ImageError::Authenticate {
                url: redact(&url),
                reason: format!("parse token response: {e}"),
            })?;
        let tok = v
            .get("token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .or_else(|| v.get("access_token").and_then(|t| t.as_str()))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ImageError::Authenticate {
                url: redact(&url),
                reason: "token response has no token".into(),
            })?;
        Ok(tok.to_string())
    }

    fn endpoints_for(&self, r: &Reference, resolve: bool) -> Vec<Endpoint> {
        self.hosts
            .endpoints(&r.registry)
            .into_iter()
            .filter(|e| {
                if resolve {
                    e.capabilities.resolve
                } else {
                    e.capabilities.pull
                }
            })
            .collect()
    }

    /// Fetches a manifest by tag or digest, trying endpoints in order.
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        object: &str,
        creds: Option<&Credentials>,
        limit: u64,
    ) -> Result<FetchedManifest, ImageError> {
        let by_tag = !object.starts_with("sha256:");
        let eps = self.endpoints_for(r, by_tag);
        let mut last: Option<ImageError> = None;
        for ep in &eps {
            match self.fetch_manifest_at(ep, r, object, creds, limit).await {
                Ok(m) => return Ok(m),
                Err(e) if e.is_fallthrough() => {
                    tracing::info!(endpoint = %ep.api_root, reference = %r, error = %e, "manifest fetch failed, trying next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(ImageError::RegistryStatus { status: 404, .. }) | None => ImageError::Resolve {
                reference: r.to_string(),
            },
            Some(e) => e,
        })
    }

    async fn fetch_manifest_at(
        &self,
        ep: &Endpoint,
        r: &Reference,
        object: &str,
        creds: Option<&Credentials>,
        limit: u64,
    ) -> Result<FetchedManifest, ImageError> {
        let (url, resp) = self
            .get(
                ep,
                &r.registry,
                &r.repository,
                &format!("manifests/{object}"),
                Some(ACCEPT),
                creds,
                true,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ImageError::RegistryStatus {
                url: redact(&url),
                status: status.as_u16(),
            });
        }
        let hv = |h: header::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = hv(header::CONTENT_TYPE);
        let content_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string());
        let data = read_bounded(resp, limit, &url, &format!("manifest {object}")).await?;
        Ok(FetchedManifest {
            data,
            content_type,
            content_digest,
        })
    }

    /// Opens a blob stream, trying endpoints in order. Returns (content length, stream).
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &str,
        creds: Option<&Credentials>,
    ) -> Result<
        (
            Option<u64>,
            impl Stream<Item = Result<Bytes, ImageError>> + use<>,
        ),
        ImageError,
    > {
        let eps = self.endpoints_for(r, false);
        let mut last: Option<ImageError> = None;
        for ep in &eps {
            let res = self
                .get(
                    ep,
                    &r.registry,
                    &r.repository,
                    &format!("blobs/{digest}"),
                    None,
                    creds,
                    false,
                )
                .await;
            match res {
                Ok((url, resp)) if resp.status().is_success() => {
                    let len = resp.content_length();
                    let shown = redact(&url);
                    let s = resp.bytes_stream().map(move |c| {
                        c.map_err(|e| ImageError::Connect {
                            url: shown.clone(),
                            reason: e.to_string(),
                        })
                    });
                    return Ok((len, s));
                }
                Ok((url, resp)) => {
                    let e = ImageError::RegistryStatus {
                        url: redact(&url),
                        status: resp.status().as_u16(),
                    };
                    if !e.is_fallthrough() {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(e) if e.is_fallthrough() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ImageError::Resolve {
            reference: format!("{}@{digest}", r.name()),
        }))
    }
}

/// Reads a response body, refusing more than `limit` bytes (checked before and while reading).
async fn read_bounded(
    resp: reqwest::Response,
    limit: u64,
    url: &Url,
    what: &str,
) -> Result<Bytes, ImageError> {
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let mut buf = BytesMut::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| connect_err(url, &e))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
