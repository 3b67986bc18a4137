//! The CLI as an API client: HTTPS to a CareVault server, trusting the server's certificate
//! file (the self-signed one from init) or the system's roots, with the session a profile holds
//! (see `profile`) or an API key; and errors that say what to do when the server cannot be
//! reached.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use ureq::tls::{RootCerts, TlsConfig};

use crate::profile::{self, Target, TargetArgs};

pub struct Client {
    agent: ureq::Agent,
    server: String,
    ca_cert: Option<PathBuf>,
    token: Option<String>,
    /// The token is a saved session's (which ends), not an API key.
    session: bool,
}

/// A saved session the server no longer accepts (expired, revoked or logged out elsewhere).
#[derive(Debug, thiserror::Error)]
#[error(
    "your session has ended (sessions expire after a while without use, and at the latest after \
     their lifetime); log in again: `{0}`"
)]
pub struct SessionEnded(pub String);

impl Client {
    pub fn new(server: &str, ca_cert: Option<&Path>) -> Result<Self> {
        let server = server.trim_end_matches('/').to_owned();
        if !server.starts_with("https://")
            && !server.starts_with("http://127.")
            && !server.starts_with("http://localhost")
        {
            bail!("--server must be an https:// URL (plain http only to a loopback address)");
        }
        let roots = match ca_cert {
            Some(path) => {
                let pem = fs::read(path)
                    .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    if let ureq::tls::PemItem::Certificate(c) =
                        item.context("CA certificate is not valid PEM")?
                    {
                        certs.push(c);
                    }
                }
                if certs.is_empty() {
                    bail!("{} holds no certificate", path.display());
                }
                RootCerts::Specific(Arc::new(certs))
            }
            None => RootCerts::WebPki,
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .max_idle_connections_per_host(64)
            .build()
            .new_agent();
        Ok(Self {
            agent,
            server,
            ca_cert: ca_cert.map(Path::to_path_buf),
            token: None,
            session: false,
        })
    }

    /// A client of `target`, unauthenticated.
    pub fn for_target(target: &Target) -> Result<Self> {
        Self::new(&target.server, target.ca_cert.as_deref())
    }

    /// The certificate this client trusts for its server, if not the system's roots.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// Check that the server answers over TLS with a certificate we trust, before asking the
    /// person for anything.
    pub fn check_reachable(&self) -> Result<()> {
        self.agent
            .get(&format!("{}/healthz", self.server))
            .call()
            .map(drop)
            .map_err(|e| self.unreachable(&e))
    }

    /// Why the server could not be reached, and what to do about it.
    fn unreachable(&self, e: &ureq::Error) -> anyhow::Error {
        let server = &self.server;
        // rustls's errors are matched by their text: the CLI does not link rustls itself.
        let text = e.to_string();
        let hint = if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
            "the server's certificate is not trusted: pass --ca-cert carevault-data/tls/cert.pem \
             (the server's own, made at init) or set CAREVAULT_CA_CERT"
                .to_owned()
        } else if text.contains("NotValidForName") {
            format!(
                "the server's certificate is not made out to the host name in {server}; use the \
                 name it was issued for (the self-signed one: 127.0.0.1 or localhost)"
            )
        } else if text.contains("Expired") {
            "the server's certificate has expired".to_owned()
        } else if matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
            || matches!(e, ureq::Error::ConnectionFailed)
        {
            format!(
                "nothing answers at {server}: is `carevault serve` running, and is the address \
                 right (--server, CAREVAULT_SERVER)?"
            )
        } else if matches!(e, ureq::Error::HostNotFound) {
            format!("the host name in {server} is not known; check --server")
        } else if matches!(e, ureq::Error::Timeout(_)) {
            format!("{server} did not answer in time")
        } else if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
            format!("{server} does not speak TLS; if it serves plain HTTP on loopback, use http://")
        } else {
            format!("cannot reach {server}: {e}")
        };
        anyhow::anyhow!(hint)
    }

    /// A client that authenticates with an API key (`cvk_...`) instead of a saved session.
    pub fn with_api_key(server: &str, ca_cert: Option<&Path>, key_file: &Path) -> Result<Self> {
        let key = fs::read_to_string(key_file)
            .with_context(|| format!("cannot read the API key file {}", key_file.display()))?;
        // The file may be the key alone or what `carevault key create` printed.
        let Some(key) = key.split_whitespace().find(|w| w.starts_with("cvk_")) else {
            bail!("{} does not hold a CareVault API key", key_file.display());
        };
        let mut client = Self::new(server, ca_cert)?;
        client.token = Some(key.to_owned());
        Ok(client)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// POST a body as it is; returns the status and the response text.
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Result<(u16, String)> {
        let url = format!("{}{}", self.server, path);
        let mut req = self.agent.post(&url).header("Content-Type", content_type);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let response = req.send(body).map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Ok((status, text))
    }

    /// The full URL of `path_or_url`: a path on this server, or an absolute URL that must be on
    /// this server (the token is never sent anywhere else).
    fn url_on_server(&self, path_or_url: &str) -> Result<String> {
        if path_or_url.starts_with('/') {
            return Ok(format!("{}{}", self.server, path_or_url));
        }
        let on_server = path_or_url
            .strip_prefix(&self.server)
            .is_some_and(|rest| rest.starts_with('/'));
        if !on_server {
            bail!("the server pointed at a URL on another server; refusing to send it the token");
        }
        Ok(path_or_url.to_owned())
    }

    /// GET with extra headers (a path or a URL on this server); the status, the headers the
    /// caller names (lowercase, in order) and the body as text.
    pub fn get_with_headers(
        &self,
        path_or_url: &str,
        headers: &[(&str, &str)],
        wanted: &[&str],
    ) -> Result<(u16, Vec<Option<String>>, String)> {
        let mut req = self.agent.get(&self.url_on_server(path_or_url)?);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = req.call().map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let found = wanted
            .iter()
            .map(|h| {
                response
                    .headers()
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .collect();
        let text = response
            .into_body()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Ok((status, found, text))
    }

    /// GET a URL on this server into a new file (mode 0600), streaming; the status (the file is
    /// removed unless it is 200).
    pub fn download(&self, url: &str, to: &Path) -> Result<u16> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut req = self.agent.get(&self.url_on_server(url)?);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let response = req.call().map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok(status);
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .with_context(|| format!("cannot create {}", to.display()))?;
        let copied = std::io::copy(&mut response.into_body().into_reader(), &mut file)
            .and_then(|_| file.sync_all());
        if let Err(e) = copied {
            let _ = fs::remove_file(to);
            bail!("the download of {} failed: {e}", to.display());
        }
        Ok(status)
    }

    /// DELETE a URL on this server; the status.
    pub fn delete_url(&self, url: &str) -> Result<u16> {
        let mut req = self.agent.delete(&self.url_on_server(url)?);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let response = req.call().map_err(|e| self.unreachable(&e))?;
        Ok(response.status().as_u16())
    }

    /// A client with the selected profile's saved session.
    pub fn from_session() -> Result<Self> {
        let saved = profile::load_session()?;
        let mut client = Self::new(&saved.server, saved.ca_cert.as_deref())?;
        client.token = Some(saved.access_token);
        client.session = true;
        Ok(client)
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Send a JSON request; returns the status and the parsed body (Null when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{}", self.server, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match (method, body) {
            ("GET", _) => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            ("DELETE", _) => {
                let mut req = self.agent.delete(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            (_, body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(serde_json::to_vec(&body.cloned().unwrap_or(Value::Null))?.as_slice())
            }
        }
        .map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap_or_default();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// Like `call`, but a non-2xx status becomes an error with the server's diagnostics.
    pub fn expect(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, value) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        if status == 401 && self.session {
            return Err(SessionEnded(profile::login_hint()).into());
        }
        let diagnostics = value["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("no details")
            .to_owned();
        bail!("the server answered {status}: {diagnostics}")
    }
}

/// A string field of a server's answer; empty if it is missing or not a string.
pub(crate) fn str_field<'a>(answer: &'a Value, key: &str) -> &'a str {
    answer[key].as_str().unwrap_or_default()
}

/// The strings in an array field of a server's answer (roles, scopes); anything else is skipped.
pub(crate) fn str_items<'a>(answer: &'a Value, key: &str) -> Vec<&'a str> {
    answer[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// How an API command reaches the server: the saved session (`carevault login`), or an API key.
#[derive(Args)]
pub(crate) struct ConnectArgs {
    /// Authenticate with the API key in this file (what `carevault key create` printed, or the
    /// key alone) instead of the saved session.
    #[arg(long, env = "CAREVAULT_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

impl ConnectArgs {
    pub(crate) fn client(&self) -> Result<Client> {
        match &self.api_key_file {
            Some(key) => {
                let target = self.target.resolve()?;
                Client::with_api_key(&target.server, target.ca_cert.as_deref(), key)
            }
            None => Client::from_session(),
        }
    }
}

pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAREVAULT_CLI_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("carevault"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set CAREVAULT_CLI_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".config").join("carevault"))
}
