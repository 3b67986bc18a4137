//! The CLI as an API client: HTTPS to a CareVault server, trusting the server's certificate
//! file (the self-signed one from init) or the system's roots, and a session file (mode 0600)
//! under the user's config directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ureq::tls::{RootCerts, TlsConfig};

pub struct Client {
    agent: ureq::Agent,
    server: String,
    token: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct SavedSession {
    pub server: String,
    pub ca_cert: Option<PathBuf>,
    pub access_token: String,
}

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
            token: None,
        })
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
        let response = req
            .send(body)
            .with_context(|| format!("cannot reach {}", self.server))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Ok((status, text))
    }

    pub fn from_session() -> Result<Self> {
        let path = session_path()?;
        let text =
            fs::read(&path).context("not logged in: run `carevault login --server URL` first")?;
        let saved: SavedSession =
            serde_json::from_slice(&text).context("the saved session is damaged; log in again")?;
        let mut client = Self::new(&saved.server, saved.ca_cert.as_deref())?;
        client.token = Some(saved.access_token);
        Ok(client)
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
        .with_context(|| format!("cannot reach {}", self.server))?;
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
    /// Authenticate with the API key in this file instead of the saved session.
    #[arg(long, env = "CAREVAULT_API_KEY_FILE", requires = "server")]
    api_key_file: Option<PathBuf>,
    /// The server, with --api-key-file (e.g. https://127.0.0.1:8443).
    #[arg(long)]
    server: Option<String>,
    /// The server's certificate (or its CA), with --api-key-file.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

impl ConnectArgs {
    pub(crate) fn client(&self) -> Result<Client> {
        match (&self.api_key_file, &self.server) {
            (Some(key), Some(server)) => Client::with_api_key(server, self.ca_cert.as_deref(), key),
            _ => Client::from_session(),
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

fn session_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("session.json"))
}

pub fn save_session(session: &SavedSession) -> Result<PathBuf> {
    let dir = config_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let path = session_path()?;
    let tmp = dir.join("session.json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(session)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn forget_session() -> Result<()> {
    let path = session_path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}
