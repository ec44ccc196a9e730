//! A real Debian `docker-registry` (distribution 2.8) on 127.0.0.1 for tests.
//!
//! Storage lives in a tempdir; stdout+stderr (access log in combined format plus the app log)
//! go to `<tmp>/registry.log`. Optional htpasswd basic auth or bearer-token auth (a tiny
//! in-process token server issuing RS256 JWTs with an `x5c` chain the registry trusts).

use std::io::Write;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oci::Pusher;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";
const TOKEN_SERVICE: &str = "unicri-test-registry";
const TOKEN_ISSUER: &str = "unicri-test-issuer";

/// How to start the registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// htpasswd basic auth (or, with `token_auth`, the credentials the token server accepts).
    pub basic_auth: Option<(String, String)>,
    /// Bearer-token auth through an in-process token server.
    pub token_auth: bool,
}

/// A running registry; dropping it kills the process and removes its storage.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    log_path: PathBuf,
    opts: RegistryOpts,
    token_server: Option<TokenServer>,
    dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> Result<u16> {
    let l = StdTcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Registry {
    /// Whether `/usr/bin/docker-registry` exists.
    pub fn available() -> bool {
        Path::new(REGISTRY_BIN).exists()
    }

    /// A registry without auth.
    pub async fn start_plain() -> Result<Registry> {
        Self::start(RegistryOpts::default()).await
    }

    pub async fn start(opts: RegistryOpts) -> Result<Registry> {
        if !Self::available() {
            bail!("{REGISTRY_BIN} not found (apt-get install -y docker-registry)");
        }
        let dir = tempfile::Builder::new()
            .prefix("unicri-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let mut auth = String::new();
        let mut token_server = None;
        if opts.token_auth {
            let ts = TokenServer::start(dir.path(), opts.basic_auth.clone()).await?;
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                ts.realm(),
                ts.cert_path.display()
            );
            token_server = Some(ts);
        } else if let Some((user, pass)) = &opts.basic_auth {
            let out = Command::new(HTPASSWD_BIN)
                .args(["-Bbn", user, pass])
                .output()
                .context("htpasswd (apt-get install -y apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout)?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: unicri-test\n    path: {}\n",
                path.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
http:\n  addr: 127.0.0.1:{port}\n  secret: unicri-e2e-secret\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn docker-registry")?;
        let mut reg = Registry {
            child,
            port,
            log_path,
            opts,
            token_server,
            dir,
        };
        reg.wait_ready().await?;
        Ok(reg)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("docker-registry exited ({st}):\n{}", self.log());
            }
            if let Ok(r) = client.get(format!("{}/v2/", self.url())).send().await {
                let s = r.status().as_u16();
                if s == 200 || s == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("docker-registry not ready after 15s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
    /// The credentials the registry (or its token server) accepts.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.opts.basic_auth.clone()
    }
    /// A pusher carrying this registry's credentials.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.url(), self.credentials())
    }
    /// The registry's tempdir (storage under `storage/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The full log (access log + app log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    /// Access-log lines (combined log format) for requests the registry answered.
    pub fn access_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET ")
                    || l.contains("\"HEAD ")
                    || l.contains("\"PUT ")
                    || l.contains("\"POST ")
                    || l.contains("\"PATCH ")
                    || l.contains("\"DELETE ")
            })
            .map(str::to_string)
            .collect()
    }
    /// Number of successful (2xx/3xx) `GET /v2/<name>/blobs/<digest>` requests so far.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.access_lines()
            .iter()
            .filter(|l| request_matches(l, "GET", &format!("/blobs/{digest}")))
            .filter(|l| status_of(l).is_some_and(|s| (200..400).contains(&s)))
            .count()
    }
    /// Number of successful `GET /v2/<name>/manifests/<reference>` requests so far.
    pub fn manifest_gets(&self, reference: &str) -> usize {
        self.access_lines()
            .iter()
            .filter(|l| request_matches(l, "GET", &format!("/manifests/{reference}")))
            .filter(|l| status_of(l).is_some_and(|s| (200..400).contains(&s)))
            .count()
    }
    /// Number of token requests the token server answered (bearer mode).
    pub fn token_requests(&self) -> usize {
        self.token_server.as_ref().map_or(0, |t| t.count())
    }
    /// A docker `config.json` with this registry's credentials (`{"auths":{host:{auth}}}`)
    /// for each of `hosts` (default: this registry's host).
    pub fn docker_config_json(&self, hosts: &[&str]) -> Option<String> {
        let (u, p) = self.credentials()?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        let own = self.host();
        let hosts: Vec<&str> = if hosts.is_empty() {
            vec![own.as_str()]
        } else {
            hosts.to_vec()
        };
        let mut auths = serde_json::Map::new();
        for h in hosts {
            auths.insert(h.to_string(), json!({"auth": auth}));
        }
        Some(json!({"auths": auths}).to_string())
    }
}

/// Whether a combined-log line is `"<method> /v2/...<suffix>[?query] HTTP/..."`.
fn request_matches(line: &str, method: &str, suffix: &str) -> bool {
    let Some(rest) = line.split_once(&format!("\"{method} /v2/")).map(|(_, r)| r) else {
        return false;
    };
    let path = rest.split([' ', '?']).next().unwrap_or("");
    path.ends_with(suffix)
}

/// Status code in a combined-log line: `"GET /x HTTP/1.1" 200 123 ...`.
fn status_of(line: &str) -> Option<u16> {
    let after = line
        .split("HTTP/1.1\" ")
        .nth(1)
        .or_else(|| line.split("HTTP/2.0\" ").nth(1))?;
    after.split_whitespace().next()?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Token server
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 token endpoint (`GET /token?service=..&scope=..`) issuing RS256 JWTs whose
/// `x5c` header carries a self-signed cert the registry has in its `rootcertbundle`.
#[derive(Debug)]
struct TokenServer {
    port: u16,
    cert_path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug)]
struct TokenState {
    key_path: PathBuf,
    cert_der_b64: String,
    creds: Option<(String, String)>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    async fn start(dir: &Path, creds: Option<(String, String)>) -> Result<TokenServer> {
        let key_path = dir.join("token.key");
        let cert_path = dir.join("token.crt");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg("/CN=unicri-test-token")
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .context("openssl req (apt-get install -y openssl)")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert_path)
            .output()?;
        if !der.status.success() {
            bail!("openssl x509: {}", String::from_utf8_lossy(&der.stderr));
        }
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state = Arc::new(TokenState {
            key_path,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(&der.stdout),
            creds,
            count: count.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = state.clone();
                tokio::spawn(async move {
                    let _ = serve_token(sock, st).await;
                });
            }
        });
        Ok(TokenServer {
            port,
            cert_path,
            task,
            count,
        })
    }
    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hexv = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hexv.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve_token(mut sock: tokio::net::TcpStream, st: Arc<TokenState>) -> Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if buf.len() > 64 * 1024 {
            bail!("request too large");
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let mut authz = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
        {
            authz = Some(v.trim().to_string());
        }
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scopes = Vec::new();
    let mut service = String::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "scope" => scopes.push(percent_decode(v)),
            "service" => service = percent_decode(v),
            _ => {}
        }
    }
    // Who is asking: anonymous gets a token with no access.
    let authenticated = match (&st.creds, &authz) {
        (None, _) => true,
        (Some((u, p)), Some(a)) => {
            a.strip_prefix("Basic ").map(str::trim)
                == Some(crate::oci::basic_auth_value(u, p).as_str())
        }
        (Some(_), None) => false,
    };
    if st.creds.is_some() && authz.is_some() && !authenticated {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        let resp = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        return Ok(());
    }
    let mut access = Vec::new();
    if authenticated {
        for scope in scopes.iter().flat_map(|s| s.split(' ')) {
            // repository:<name>:<actions>  (name may contain ':' only with a port, not here)
            let mut parts = scope.splitn(3, ':');
            let (Some(typ), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            access.push(json!({"type": typ, "name": name, "actions": actions}));
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [st.cert_der_b64]});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": st.creds.as_ref().filter(|_| authenticated).map(|c| c.0.clone()).unwrap_or_default(),
        "aud": if service.is_empty() { TOKEN_SERVICE.to_string() } else { service },
        "exp": now + 3600,
        "nbf": now - 60,
        "iat": now - 60,
        "jti": format!("{now}-{}", st.count.load(std::sync::atomic::Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(&claims)?)
    );
    let mut child = tokio::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&st.key_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(signing_input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("openssl dgst: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = format!("{signing_input}.{}", b64url(&out.stdout));
    st.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = json!({"token": token, "access_token": token, "expires_in": 3600}).to_string();
    let mut resp = Vec::new();
    write!(
        resp,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    sock.write_all(&resp).await?;
    sock.shutdown().await?;
    Ok(())
}
