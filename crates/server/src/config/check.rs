//! `carevault config check`: every problem of a configuration at once, each named by its key,
//! where it was set (a line of the file, or an environment variable) and what is expected;
//! then whether the files it names exist with safe modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::file::{
    apply_env, from_table, get_path, password_in_url, read_table, remove_path, take_mistyped,
};
use super::{Config, ConfigError, KeyProviderConfig};

/// One problem, as `config check` prints it.
#[derive(Debug)]
pub struct Problem {
    /// `section.key`, an environment variable, or `--config`.
    pub key: String,
    /// "line 3 of c.toml" or "CAREVAULT_LISTEN"; empty when the key has no one place.
    pub place: String,
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.place.is_empty() {
            write!(f, "`{}`: {}", self.key, self.problem)
        } else {
            write!(f, "`{}` ({}): {}", self.key, self.place, self.problem)
        }
    }
}

/// What `check` found: the problems, and the configuration as it validates with the offending
/// keys left at their defaults (None when not even that validates).
#[derive(Debug)]
pub struct Checked {
    pub problems: Vec<Problem>,
    pub config: Option<Config>,
}

/// Check the file at `path` (if any) and `env` together, as `serve` would load them, reporting
/// every problem rather than the first.
pub fn check(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Checked {
    let (mut table, text) = match read_table(path) {
        Ok(read) => read,
        Err(e) => {
            return Checked {
                problems: vec![Problem {
                    key: e.key,
                    place: String::new(),
                    problem: e.problem,
                }],
                config: None,
            };
        }
    };
    let file_name = path.map(|p| p.display().to_string()).unwrap_or_default();
    let mut found: Vec<ConfigError> = Vec::new();
    if let Some(problem) = password_in_url(&table) {
        remove_path(&mut table, &problem.key);
        found.push(problem);
    }
    found.extend(take_mistyped(&mut table));
    let env = apply_env(&mut table, env);
    found.extend(env.problems);
    // Where a key was set: the environment wins over the file.
    let set_in_env = |key: &str| env.keys.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    let line = |key: &str| match set_in_env(key) {
        Some(_) => None,
        None => line_of(&text, key),
    };
    let place = |key: &str| match (set_in_env(key), line(key)) {
        (Some(var), _) => var.clone(),
        (None, Some(line)) => format!("line {line} of {file_name}"),
        (None, None) => String::new(),
    };
    // Validate, setting each offending key back to its default, until the rest validates.
    let mut config = None;
    for _ in 0..=super::file::KEYS.len() {
        let mut file = match from_table(&table) {
            Ok(file) => file,
            Err(e) => {
                found.push(e);
                break;
            }
        };
        file.database_password = env.database_password.clone();
        match Config::from_file(file) {
            Ok(valid) => {
                config = Some(valid);
                break;
            }
            Err(e) => {
                let removed = remove_path(&mut table, &e.key);
                found.push(e);
                if !removed {
                    break;
                }
            }
        }
    }
    if let Some(config) = &config {
        found.extend(path_problems(config, &table));
    }
    // In the order of the file, then what the environment set.
    found.sort_by_key(|e| line(&e.key).unwrap_or(usize::MAX));
    let problems = found
        .into_iter()
        .map(|e| Problem {
            place: if e.key.starts_with("CAREVAULT_") {
                String::new()
            } else {
                place(&e.key)
            },
            key: e.key,
            problem: e.problem,
        })
        .collect();
    Checked { problems, config }
}

/// The 1-based line of the file where `key` (`section.key`) is set, if it is set there.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        let full = if section.is_empty() {
            name.to_owned()
        } else {
            format!("{section}.{name}")
        };
        if full == key {
            return Some(i + 1);
        }
    }
    None
}

/// The files the configuration names: they must exist, secrets and private keys unreadable to
/// other users, directories private.
fn path_problems(config: &Config, table: &toml::Table) -> Vec<ConfigError> {
    let mut found = Vec::new();
    let configured = |key: &str| get_path(table, key).and_then(toml::Value::as_str);
    // The data directory is made at the first start; when it exists, it must be private.
    if let Ok(meta) = std::fs::metadata(&config.data_dir) {
        if !meta.is_dir() {
            found.push(ConfigError::new(
                "data_dir",
                format!("{} is not a directory", config.data_dir.display()),
            ));
        } else {
            for dir in [config.data_dir.clone(), config.keys_dir()] {
                if let Some(problem) = mode_problem(&dir, 0o700) {
                    found.push(ConfigError::new("data_dir", problem));
                }
            }
        }
    }
    for key in ["tls.cert_path", "tls.key_path", "tls.client_ca"] {
        if let Some(path) = configured(key)
            && !config.plain_http
            && let Some(problem) = missing(Path::new(path))
        {
            found.push(ConfigError::new(key, problem));
        }
    }
    if !config.plain_http
        && config.tls_key.exists()
        && let Some(problem) = mode_problem(&config.tls_key, 0o600)
    {
        found.push(ConfigError::new("tls.key_path", problem));
    }
    let mut secrets: Vec<(&str, &Path)> = Vec::new();
    if let Some(path) = &config.key_passphrase_file {
        secrets.push(("key.passphrase_file", path));
    }
    if let Some(webhook) = &config.detection.webhook {
        secrets.push(("detection.webhook_secret_file", &webhook.secret_file));
    }
    if let KeyProviderConfig::Pkcs11 {
        module, pin_file, ..
    } = &config.key_provider
    {
        secrets.push(("key.pkcs11_pin_file", pin_file));
        if let Some(problem) = missing(module) {
            found.push(ConfigError::new("key.pkcs11_module", problem));
        }
    }
    if let Some(path) = configured("database.password_file") {
        secrets.push(("database.password_file", Path::new(path)));
    }
    if let Some(path) = config
        .backup
        .as_ref()
        .and_then(|b| b.passphrase_file.as_deref())
    {
        secrets.push(("backup.passphrase_file", path));
    }
    for target in config.backup.iter().flat_map(|b| &b.offsite) {
        if let crate::config::OffsiteTarget::S3(s3) = target
            && let Some(path) = &s3.credentials_file
        {
            secrets.push(("backup.s3_credentials_file", path));
        }
    }
    for (key, path) in secrets {
        if let Some(problem) = missing(path).or_else(|| mode_problem(path, 0o600)) {
            found.push(ConfigError::new(key, problem));
        }
    }
    found
}

fn missing(path: &Path) -> Option<String> {
    (!path.exists()).then(|| format!("{} does not exist", path.display()))
}

/// A problem when `path` is open to group or others (`want`: the mode to set).
fn mode_problem(path: &Path, want: u32) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is mode {mode:04o}, open to other users; expected {want:04o} (chmod {want:o} {})",
            path.display(),
            path.display()
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn checked(toml: &str, vars: &[(&str, &str)]) -> (Vec<String>, Option<Config>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let checked = check(Some(&path), env(vars));
        let lines = checked
            .problems
            .iter()
            .map(|p| p.to_string().replace(&path.display().to_string(), "c.toml"))
            .collect();
        (lines, checked.config)
    }

    #[test]
    fn every_problem_is_reported_with_key_line_and_what_is_expected() {
        let (problems, config) = checked(
            "listen = \"nowhere\"\n\
             body_limit_bytes = \"lots\"\n\
             \n\
             [session]\n\
             idle_timeout_secs = -5\n\
             colour = \"blue\"\n\
             [log]\n\
             level = \"loud\"\n",
            &[("CAREVAULT_MAX_JSON_DEPTH", "deep")],
        );
        let expected = [
            "`listen` (line 1 of c.toml): expected an address like 127.0.0.1:8443",
            "`body_limit_bytes` (line 2 of c.toml): expected a whole number, 0 or more (u64), found a string",
            "`session.idle_timeout_secs` (line 5 of c.toml): expected a whole number, 0 or more (u64), found a negative number",
            "`session.colour` (line 6 of c.toml): unknown key; the keys of [session] are idle_timeout_secs, absolute_lifetime_secs",
            "`log.level` (line 8 of c.toml): expected one of error, warn, info, debug, trace",
            "`CAREVAULT_MAX_JSON_DEPTH`: expected a whole number",
        ];
        assert_eq!(problems, expected, "{problems:#?}");
        // The rest validates, with the offending keys at their defaults.
        assert_eq!(config.unwrap().listen.to_string(), "127.0.0.1:8443");
    }

    #[test]
    fn a_problem_set_by_the_environment_names_the_variable() {
        let (problems, _) = checked(
            "[session]\nidle_timeout_secs = 600\n",
            &[("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "1")],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "`session.idle_timeout_secs` (CAREVAULT_SESSION_IDLE_TIMEOUT_SECS): must be"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn files_must_exist_and_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "secret words").unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let toml = format!(
            "data_dir = {:?}\n[tls]\ncert_path = \"/nonexistent/cert.pem\"\n[key]\npassphrase_file = {:?}\n",
            data.display().to_string(),
            pass.display().to_string()
        );
        let (problems, _) = checked(&toml, &[]);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("`data_dir` (line 1 of c.toml):"));
        assert!(problems[0].contains("is mode 0755") && problems[0].contains("chmod 700"));
        assert!(problems[1].contains("`tls.cert_path` (line 3 of c.toml)"));
        assert!(problems[1].ends_with("/nonexistent/cert.pem does not exist"));
        assert!(problems[2].contains("`key.passphrase_file` (line 5 of c.toml)"));
        assert!(problems[2].contains("mode 0644") && problems[2].contains("expected 0600"));
        // Fixed, nothing is left to report.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fixed = toml.replace("[tls]\ncert_path = \"/nonexistent/cert.pem\"\n", "");
        let (problems, config) = checked(&fixed, &[]);
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(config.is_some());
    }

    #[test]
    fn invalid_toml_names_its_line() {
        let (problems, config) = checked("listen = \"127.0.0.1:1\"\n[tls\n", &[]);
        assert!(config.is_none());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("`--config`: not valid TOML at line 2"),
            "{problems:?}"
        );
    }
}
