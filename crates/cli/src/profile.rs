//! Profiles: which server a command talks to, and the session it holds there. `carevault
//! login` (and `enroll`) remember the server URL and CA certificate under a profile name
//! (`--profile`, `CAREVAULT_PROFILE`; `default` unless given), so later commands need neither.
//!
//! ```text
//! ~/.config/carevault/                  (CAREVAULT_CLI_CONFIG_DIR, or XDG_CONFIG_HOME/carevault)
//!   profiles/NAME.json                  server URL and CA certificate path (mode 0600)
//!   session.json                        the default profile's session (mode 0600)
//!   session-NAME.json                   another profile's session
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::client::config_dir;

pub(crate) const DEFAULT_PROFILE: &str = "default";

static PROFILE: OnceLock<String> = OnceLock::new();

/// Choose the profile for this process (once, from `--profile`); checked to be a plain name.
pub(crate) fn select(name: Option<String>) -> Result<()> {
    let name = name.unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--profile must be 1-64 letters, digits, '-' or '_'");
    }
    let _ = PROFILE.set(name);
    Ok(())
}

pub(crate) fn name() -> &'static str {
    PROFILE.get().map_or(DEFAULT_PROFILE, String::as_str)
}

/// The `--profile` flag, for commands that name it in a hint.
fn flag() -> String {
    if name() == DEFAULT_PROFILE {
        String::new()
    } else {
        format!(" --profile {}", name())
    }
}

/// A server and the certificate to trust for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Target {
    pub(crate) server: String,
    pub(crate) ca_cert: Option<PathBuf>,
}

/// `--server` and `--ca-cert` (or `CAREVAULT_SERVER`, `CAREVAULT_CA_CERT`); what is not given
/// comes from the profile.
#[derive(Args, Clone, Default)]
pub(crate) struct TargetArgs {
    /// The server's base URL, e.g. https://127.0.0.1:8443 (default: the profile's, saved by
    /// `carevault login`).
    #[arg(long, env = "CAREVAULT_SERVER")]
    pub(crate) server: Option<String>,
    /// A PEM certificate to trust for this server, e.g. carevault-data/tls/cert.pem, the
    /// self-signed one made at init (default: the profile's; without any, the system's roots).
    #[arg(long, env = "CAREVAULT_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
}

impl TargetArgs {
    /// The flags, completed from the saved profile.
    pub(crate) fn resolve(&self) -> Result<Target> {
        let saved = load_profile()?;
        let server = match (&self.server, &saved) {
            (Some(server), _) => server.trim_end_matches('/').to_owned(),
            (None, Some(saved)) => saved.server.clone(),
            (None, None) => bail!(
                "which server? pass --server https://HOST:PORT (or set CAREVAULT_SERVER); \
                 `carevault login` remembers it for later commands"
            ),
        };
        let ca_cert = match (&self.ca_cert, &saved) {
            (Some(path), _) => Some(absolute(path)),
            // The saved certificate belongs to the saved server only.
            (None, Some(saved)) if saved.server == server => saved.ca_cert.clone(),
            (None, _) => None,
        };
        Ok(Target { server, ca_cert })
    }
}

/// `path`, absolute (the profile is used from other directories later).
fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn profile_path() -> Result<PathBuf> {
    Ok(config_dir()?
        .join("profiles")
        .join(format!("{}.json", name())))
}

fn load_profile() -> Result<Option<Target>> {
    let path = profile_path()?;
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is damaged; delete it and log in again", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Remember `target` as this profile's server.
pub(crate) fn save_profile(target: &Target) -> Result<PathBuf> {
    let path = profile_path()?;
    write_private(&path, &serde_json::to_vec_pretty(target)?)?;
    Ok(path)
}

/// A session: the server it is on and its bearer token.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedSession {
    pub(crate) server: String,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) access_token: String,
}

fn session_path() -> Result<PathBuf> {
    let file = if name() == DEFAULT_PROFILE {
        "session.json".to_owned()
    } else {
        format!("session-{}.json", name())
    };
    Ok(config_dir()?.join(file))
}

pub(crate) fn load_session() -> Result<SavedSession> {
    let path = session_path()?;
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let how = if load_profile()?.is_some() {
                format!("carevault login{}", flag())
            } else {
                format!(
                    "carevault login{} --server https://HOST:PORT --ca-cert carevault-data/tls/cert.pem",
                    flag()
                )
            };
            bail!("not logged in: run `{how}` first");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&text).context("the saved session is damaged; log in again")
}

pub(crate) fn save_session(session: &SavedSession) -> Result<PathBuf> {
    let path = session_path()?;
    write_private(&path, &serde_json::to_vec_pretty(session)?)?;
    Ok(path)
}

pub(crate) fn forget_session() -> Result<()> {
    let path = session_path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Write `bytes` to `path` (mode 0600, its directories 0700), replacing it whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .context("a file in the configuration directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let root = config_dir()?;
    if dir != root {
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The hint for commands run without a session on a terminal.
pub(crate) fn login_hint() -> String {
    format!("carevault login{}", flag())
}
