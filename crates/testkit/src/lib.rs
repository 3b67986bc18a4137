//! Starts a real CareVault server (the `carevault` binary) in a temp dir for tests and
//! benchmarks, and speaks HTTPS to it, trusting exactly the server's self-signed certificate.
//!
//! It also carries its own TOTP implementation (RFC 4226/6238 over RustCrypto's HMAC-SHA-1),
//! separate from the server's, checked against the RFC 6238 test vectors, so tests compute codes
//! the way an authenticator app would.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use ureq::tls::{RootCerts, TlsConfig};

pub mod totp {
    //! An independent RFC 6238 TOTP (HMAC-SHA-1, 6 digits, 30 s).
    use hmac::{Hmac, KeyInit, Mac};
    use sha1::Sha1;

    pub fn hotp(secret: &[u8], counter: u64) -> String {
        let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(&counter.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[19] & 0x0f);
        let binary = (u32::from(digest[offset]) & 0x7f) << 24
            | u32::from(digest[offset + 1]) << 16
            | u32::from(digest[offset + 2]) << 8
            | u32::from(digest[offset + 3]);
        format!("{:06}", binary % 1_000_000)
    }

    pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
        hotp(secret, unix_secs / 30)
    }

    pub fn decode_base32(s: &str) -> Vec<u8> {
        data_encoding::BASE32_NOPAD
            .decode(s.trim_end_matches('=').as_bytes())
            .unwrap_or_default()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc6238_sha1_vectors() {
            let secret = b"12345678901234567890";
            // RFC 6238 appendix B gives 8 digits; the last 6 are the 6-digit codes.
            for (t, code8) in [
                (59, "94287082"),
                (1_111_111_109, "07081804"),
                (1_111_111_111, "14050471"),
                (1_234_567_890, "89005924"),
                (2_000_000_000, "69279037"),
                (20_000_000_000, "65353130"),
            ] {
                assert_eq!(code_at(secret, t), code8[2..], "t={t}");
            }
        }

        #[test]
        fn rfc4226_hotp_vectors() {
            let expected = ["755224", "287082", "359152", "969429", "338314"];
            for (i, want) in expected.iter().enumerate() {
                assert_eq!(hotp(b"12345678901234567890", i as u64), *want);
            }
        }
    }
}

// A client of the real server reads the wall clock, as a phone's authenticator does.
#[allow(clippy::disallowed_methods)]
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An authenticator for one account: hands out codes for steps never used before, waiting for
/// the next 30-second step when the ±1-step window is used up (the server refuses replays).
pub struct Authenticator {
    pub secret: Vec<u8>,
    last_step: Option<u64>,
}

impl Authenticator {
    pub fn new(secret_b32: &str) -> Self {
        Self {
            secret: totp::decode_base32(secret_b32),
            last_step: None,
        }
    }

    pub fn fresh_code(&mut self) -> String {
        loop {
            let now = now_secs();
            // Avoid the edge of a step: the server might already be in the next one.
            if now % 30 >= 28 {
                std::thread::sleep(Duration::from_millis(2500));
                continue;
            }
            let current = now / 30;
            let step = match self.last_step {
                Some(last) => (last + 1).max(current.saturating_sub(1)),
                None => current.saturating_sub(1),
            };
            if step > current + 1 {
                std::thread::sleep(Duration::from_secs(30 - now % 30));
                continue;
            }
            self.last_step = Some(step);
            return totp::hotp(&self.secret, step);
        }
    }
}

/// A response, fully read.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first OperationOutcome issue's diagnostics, if this is one.
    pub fn diagnostics(&self) -> String {
        self.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// An HTTPS client for one server, optionally with a bearer token.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str, ca_pem: &Path) -> Self {
        let pem = std::fs::read(ca_pem).unwrap_or_default();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let agent = ureq::Agent::config_builder()
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(certs)))
                    .build(),
            )
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    pub fn rebased(&self, base: &str) -> Self {
        let mut api = self.clone();
        api.base = base.trim_end_matches('/').to_owned();
        api
    }

    pub fn with_token(&self, token: &str) -> Self {
        let mut api = self.clone();
        api.token = Some(token.to_owned());
        api
    }

    /// Send any request. `headers` are added as given (a test may send hostile ones).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let url = format!("{}{}", self.base, path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            builder = builder.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let result = match body {
            Some(b) => match builder.body(b.to_vec()) {
                Ok(req) => self.agent.run(req),
                Err(e) => panic!("bad test request: {e}"),
            },
            None => match builder.body(()) {
                Ok(req) => self.agent.run(req),
                Err(e) => panic!("bad test request: {e}"),
            },
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} failed at the transport level: {e}"),
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut body = Vec::new();
        let _ = response.into_body().into_reader().read_to_end(&mut body);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, &[], None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    pub fn post_fhir(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/fhir+json")],
            Some(&bytes),
        )
    }

    pub fn put_fhir(&self, path: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut headers = vec![("Content-Type", "application/fhir+json")];
        headers.extend_from_slice(extra);
        self.request("PUT", path, &headers, Some(&bytes))
    }
}

/// A strong password for test accounts (passes the policy).
pub const TEST_PASSWORD: &str = "lantern-quarry-velvet-omnibus-42";

/// An enrolled account: its API handle (logged in), authenticator and recovery codes.
pub struct Account {
    pub username: String,
    pub api: Api,
    pub auth: Authenticator,
    pub recovery_codes: Vec<String>,
}

/// Which database the test servers use: `CAREVAULT_TEST_BACKEND=postgres` runs them on
/// PostgreSQL (a fresh database per test server, on the server named by
/// `CAREVAULT_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/test`);
/// anything else, or nothing, on SQLite. The same tests run on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What a finished command printed: standard output, then standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn backend() -> Backend {
    match std::env::var("CAREVAULT_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        _ => Backend::Sqlite,
    }
}

/// The PostgreSQL server tests make their databases on (trust authentication).
pub fn postgres_admin_url() -> String {
    std::env::var("CAREVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own for one test (and the nodes it starts): created fresh, dropped when
/// the last holder goes away.
pub struct TestDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        Self::create_on(&postgres_admin_url())
    }

    /// On the server of `admin_url` (a URL with a database to connect to for CREATE DATABASE).
    pub fn create_on(admin_url: &str) -> Self {
        let name = format!("cv_test_{}", random_hex(8));
        psql(admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
        Self {
            admin_url: admin_url.to_owned(),
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// A copy of `other` (which nobody may be connected to), on the same server.
    pub fn create_from(other: &TestDatabase) -> Self {
        let name = format!("cv_test_{}", random_hex(8));
        psql(
            &other.admin_url,
            &format!("CREATE DATABASE {name} TEMPLATE {}", other.name),
        );
        let server = other.url.rsplit_once('/').map_or("", |(s, _)| s);
        Self {
            admin_url: other.admin_url.clone(),
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// Everything in the database, as `pg_dump` writes it.
    pub fn dump(&self) -> Vec<u8> {
        let dump = Command::new("pg_dump")
            .args(["--no-owner", "-d"])
            .arg(&self.url)
            .output()
            .unwrap_or_else(|e| panic!("pg_dump (postgresql-client) is needed: {e}"));
        assert!(dump.status.success(), "pg_dump failed");
        dump.stdout
    }

    /// Run SQL in this database; the output of `psql -At` (rows `|`-separated).
    pub fn sql(&self, query: &str) -> String {
        psql(&self.url, query)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(&self.admin_url)
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Run SQL with `psql` (the PostgreSQL client); panics with psql's error on failure.
pub fn psql(url: &str, query: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(url)
        .arg("-c")
        .arg(query)
        .output()
        .unwrap_or_else(|e| panic!("psql (postgresql-client) is needed: {e}"));
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    // Only makes names unique per run; no server time is involved.
    #[allow(clippy::disallowed_methods)]
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut out: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    out.push_str(&format!("{:x}{nanos:x}", std::process::id()));
    out
}

/// The key provider test servers use: `file` (default) or `pkcs11` (a fresh SoftHSM2 token per
/// server), from `CAREVAULT_TEST_KEY_PROVIDER`.
pub fn key_provider() -> String {
    std::env::var("CAREVAULT_TEST_KEY_PROVIDER").unwrap_or_else(|_| "file".to_owned())
}

/// The SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Make a fresh SoftHSM2 token under `dir` (its own `SOFTHSM2_CONF`, token directory, and a
/// PIN generated at run time, in a 0600 file) and return the environment that points the
/// server at it.
pub fn softhsm_token(dir: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let hsm = dir.join("softhsm");
    let tokens = hsm.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap_or_else(|e| panic!("token dir: {e}"));
    let conf = hsm.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap_or_else(|e| panic!("softhsm2.conf: {e}"));
    // Only makes the token's PINs unique per run; no server time is involved.
    #[allow(clippy::disallowed_methods)]
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pin = format!("{:x}{:x}", nanos, std::process::id());
    let so_pin = format!("{:x}", nanos.rotate_left(17));
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "carevault-test",
            "--pin",
            &pin,
            "--so-pin",
            &so_pin,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util is needed (apt-get install softhsm2): {e}"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_file = hsm.join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap_or_else(|e| panic!("pin file: {e}"));
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("pin file: {e}"));
    vec![
        ("SOFTHSM2_CONF".into(), conf.display().to_string()),
        ("CAREVAULT_KEY_PROVIDER".into(), "pkcs11".into()),
        ("CAREVAULT_KEY_PKCS11_MODULE".into(), SOFTHSM_MODULE.into()),
        (
            "CAREVAULT_KEY_PKCS11_TOKEN_LABEL".into(),
            "carevault-test".into(),
        ),
        (
            "CAREVAULT_KEY_PKCS11_PIN_FILE".into(),
            pin_file.display().to_string(),
        ),
    ]
}

/// A running `carevault serve` in its own temp data dir.
pub struct TestServer {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub admin_token: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// The PostgreSQL database this server (and the nodes started beside it) use.
    pub database: Option<Arc<TestDatabase>>,
    env: Vec<(String, String)>,
    bin: PathBuf,
}

impl TestServer {
    /// Start with default settings.
    pub fn start(bin: &Path) -> Self {
        Self::start_with(bin, &[])
    }

    /// Start with extra `CAREVAULT_*` environment variables, on the backend of [`backend`].
    pub fn start_with(bin: &Path, env: &[(&str, &str)]) -> Self {
        let database = match backend() {
            Backend::Postgres => Some(Arc::new(TestDatabase::create())),
            Backend::Sqlite => None,
        };
        Self::start_on(bin, env, database)
    }

    /// Start a new environment on `database` (PostgreSQL), or on SQLite when None.
    pub fn start_on(bin: &Path, env: &[(&str, &str)], database: Option<Arc<TestDatabase>>) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let data_dir = tmp.path().join("data");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if key_provider() == "pkcs11" && !env.iter().any(|(k, _)| k == "CAREVAULT_KEY_PROVIDER") {
            env.extend(softhsm_token(tmp.path()));
        }
        Self::spawn(bin, &env, database, tmp, data_dir, true)
    }

    /// Start another node of this server's environment: a copy of its data directory's key
    /// material and certificate, the same PostgreSQL database, its own node id (and audit
    /// chain). Needs the PostgreSQL backend.
    pub fn start_node(&self, bin: &Path, node_id: &str) -> Self {
        let database = self
            .database
            .clone()
            .unwrap_or_else(|| panic!("several nodes need a PostgreSQL database"));
        self.start_node_on(bin, node_id, database)
    }

    /// Start a node of this server's environment (a copy of its data directory without the
    /// SQLite file) on `database`, e.g. after copying the environment there.
    pub fn start_node_on(&self, bin: &Path, node_id: &str, database: Arc<TestDatabase>) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let data_dir = tmp.path().join("data");
        copy_dir(
            &self.data_dir,
            &data_dir,
            &["carevault.db", "carevault.db-wal", "carevault.db-shm"],
        );
        let mut env: Vec<(String, String)> = self.env.clone();
        env.retain(|(k, _)| k != "CAREVAULT_NODE_ID");
        env.push(("CAREVAULT_NODE_ID".into(), node_id.into()));
        Self::spawn(bin, &env, Some(database), tmp, data_dir, false)
    }

    fn spawn(
        bin: &Path,
        env: &[(String, String)],
        database: Option<Arc<TestDatabase>>,
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        fresh: bool,
    ) -> Self {
        let (child, stdout, stderr) = launch(
            bin,
            "127.0.0.1:0",
            &data_dir,
            tmp.path(),
            env,
            database.as_deref(),
        );
        let mut server = Self {
            child,
            base: String::new(),
            data_dir,
            _tmp: tmp,
            admin_token: String::new(),
            stdout,
            stderr,
            database,
            env: env.to_vec(),
            bin: bin.to_path_buf(),
        };
        let (base, token) = server.wait_ready(fresh);
        server.base = base;
        server.admin_token = token.unwrap_or_default();
        server
    }

    /// Start the server again on the same data directory, database and address (after
    /// [`Self::stop`] or [`Self::kill`]), with the environment of the first start plus
    /// `extra_env`.
    pub fn restart(&mut self, extra_env: &[(&str, &str)]) {
        let mut env = self.env.clone();
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        // The same address: clients keep working, and what is keyed by the server's URL (an
        // import's journal) still matches.
        let listen = self.base.trim_start_matches("https://").to_owned();
        let (child, stdout, stderr) = launch(
            &self.bin,
            &listen,
            &self.data_dir,
            self._tmp.path(),
            &env,
            self.database.as_deref(),
        );
        self.child = child;
        self.stdout = stdout;
        self.stderr = stderr;
        let (base, _) = self.wait_ready(false);
        self.base = base;
    }

    /// The server's process id (to read its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the server process at once (SIGKILL): no graceful shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The extra environment this server runs with (its key provider's, for example); local
    /// CLI commands on its data directory need the same.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The temp directory of this server (holds `data/` and `cli/`).
    pub fn tmp_dir(&self) -> &Path {
        self._tmp.path()
    }

    /// Wait for "listening on" (and, on a fresh environment, the admin enrollment token).
    fn wait_ready(&mut self, fresh: bool) -> (String, Option<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .stdout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let listening = out
                .lines()
                .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned));
            let token = out.lines().find_map(|l| {
                l.strip_prefix("enrollment token for admin: ")
                    .map(str::to_owned)
            });
            if let Some(base) = listening
                && (token.is_some() || !fresh)
            {
                return (base, token);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let err = self
                    .stderr
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                panic!("server exited early ({status}):\n{out}\n{err}");
            }
            if Instant::now() > deadline {
                panic!("server did not start in time:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when this server's database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database.is_some()
    }

    /// Run SQL in this server's PostgreSQL database (see [`TestDatabase::sql`]).
    pub fn sql(&self, query: &str) -> String {
        match &self.database {
            Some(db) => db.sql(query),
            None => panic!("sql() needs the PostgreSQL backend"),
        }
    }

    /// The one integer a query returns, on whichever backend the server uses (the SQL must
    /// suit both: plain SELECTs over the shared schema do).
    pub fn query_i64(&self, query: &str) -> i64 {
        match &self.database {
            Some(db) => db
                .sql(query)
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{query}: not an integer: {e}")),
            None => {
                let c = rusqlite::Connection::open(self.db_path()).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                c.query_row(query, [], |r| r.get(0)).unwrap()
            }
        }
    }

    /// Run statements that change the database behind the server's back, on either backend.
    pub fn execute(&self, statements: &str) {
        match &self.database {
            Some(db) => {
                db.sql(statements);
            }
            None => {
                let c = rusqlite::Connection::open(self.db_path()).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                c.execute_batch(statements).unwrap();
            }
        }
    }

    /// Everything the environment keeps at rest: each file under the data directory and, on
    /// PostgreSQL, a full `pg_dump` of the database (named `pg_dump`).
    pub fn at_rest(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = files_under(&self.data_dir)
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(&f).unwrap_or_default();
                (f.display().to_string(), bytes)
            })
            .collect();
        if let Some(db) = &self.database {
            out.push(("pg_dump".into(), db.dump()));
        }
        out
    }

    /// A `carevault` command pointed at this server's data directory and database.
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_remove("CAREVAULT_TEST_BACKEND")
            .env_remove("CAREVAULT_DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(db) = &self.database {
            cmd.env("CAREVAULT_DATABASE_URL", &db.url);
        }
        cmd
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.data_dir.join("tls").join("cert.pem")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("carevault.db")
    }

    /// An unauthenticated client.
    pub fn api(&self) -> Api {
        Api::new(&self.base, &self.ca_pem())
    }

    /// Everything the server printed and logged so far.
    pub fn output(&self) -> String {
        let out = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let err = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!("{out}{err}")
    }

    pub fn logs(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Enroll with a token and log in; panics with the server's answer on failure.
    pub fn enroll_and_login(&self, username: &str, enrollment_token: &str) -> Account {
        let api = self.api();
        let start = api.post_json(
            "/auth/enroll/start",
            &json!({"enrollment_token": enrollment_token}),
        );
        assert_eq!(start.status, 200, "enroll/start: {}", start.text());
        let started = start.json();
        assert_eq!(started["username"], username);
        let mut auth = Authenticator::new(started["totp_secret"].as_str().unwrap_or_default());
        let finish = api.post_json(
            "/auth/enroll/finish",
            &json!({"enrollment_token": enrollment_token, "password": TEST_PASSWORD, "totp_code": auth.fresh_code()}),
        );
        assert_eq!(finish.status, 200, "enroll/finish: {}", finish.text());
        let recovery_codes = finish.json()["recovery_codes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let token = self.login(username, &mut auth);
        Account {
            username: username.to_owned(),
            api: api.with_token(&token),
            auth,
            recovery_codes,
        }
    }

    pub fn login(&self, username: &str, auth: &mut Authenticator) -> String {
        let reply = self.api().post_json(
            "/auth/login",
            &json!({"username": username, "password": TEST_PASSWORD, "totp_code": auth.fresh_code()}),
        );
        assert_eq!(reply.status, 200, "login {username}: {}", reply.text());
        reply.json()["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Enroll the bootstrap admin.
    pub fn admin(&self) -> Account {
        let token = self.admin_token.clone();
        self.enroll_and_login("admin", &token)
    }

    /// Create an account as `admin` and enroll it.
    pub fn user(
        &self,
        admin: &Account,
        username: &str,
        roles: &[&str],
        organization: Option<&str>,
    ) -> Account {
        let created = admin.api.post_json(
            "/admin/users",
            &json!({"username": username, "roles": roles, "organization": organization}),
        );
        assert_eq!(created.status, 201, "create user: {}", created.text());
        let token = created.json()["enrollment_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.enroll_and_login(username, &token)
    }

    /// POST a file with curl over HTTP/1.1, as `api` (its token, if any); the status and body.
    /// A server may answer before reading a large body (413, 401) and close the connection;
    /// curl reads that early answer where a client still writing would see a broken pipe.
    pub fn curl_post(&self, api: &Api, path: &str, file: &Path) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--http1.1",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(self.ca_pem())
        .args(["-H", "Content-Type: application/fhir+json"]);
        if let Some(token) = &api.token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        let out = cmd
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{}{path}", api.base))
            .output()
            .unwrap_or_else(|e| panic!("curl is needed for this test: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Stop the server (SIGTERM, then wait).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy `from` into `to` (created, mode 0700), recursively, leaving out files named in `skip`.
pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let _ = std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in entries.flatten() {
        let name = e.file_name();
        if skip.iter().any(|s| name.to_str() == Some(*s)) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if src.is_dir() {
            copy_dir(&src, &dst, skip);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|err| panic!("copy {}: {err}", src.display()));
        }
    }
}

type Output = (Child, Arc<Mutex<String>>, Arc<Mutex<String>>);

/// Spawn `carevault serve` on `data_dir` (and `database`, when PostgreSQL), collecting its output.
fn launch(
    bin: &Path,
    listen: &str,
    data_dir: &Path,
    tmp: &Path,
    env: &[(String, String)],
    database: Option<&TestDatabase>,
) -> Output {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .env_remove("CAREVAULT_DATABASE_URL")
        .env_remove("CAREVAULT_TEST_BACKEND")
        .env("CAREVAULT_CLI_CONFIG_DIR", tmp.join("cli"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(db) = database {
        cmd.env("CAREVAULT_DATABASE_URL", &db.url);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    for (pipe, sink) in [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            stdout.clone(),
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            stderr.clone(),
        ),
    ] {
        if let Some(pipe) = pipe {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
    }
    (child, stdout, stderr)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A PostgreSQL server of a test's own (`initdb` into a temp dir, `pg_ctl` on a free port), so
/// a test may stop and start it without disturbing the machine's shared server.
pub struct PgInstance {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    tls: bool,
}

/// A certificate and its private key, PEM, for [`PgInstance::start_tls`].
pub struct PgTls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

impl PgInstance {
    /// Plain TCP, trust authentication.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// TLS only: `ssl = on` with this certificate and key, and a `pg_hba.conf` that rejects
    /// every TCP connection without TLS (`hostnossl ... reject`). Over TLS, `postgres` is
    /// trusted (for the test's own `psql`); every other role needs its password (SCRAM), so
    /// a client's password really crosses the encrypted connection.
    pub fn start_tls(tls: &PgTls<'_>) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&PgTls<'_>>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| {
                panic!("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are needed")
            });
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
        if is_root() {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(out.success(), "chown to postgres failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let instance = Self {
            dir,
            bin,
            port,
            tls: tls.is_some(),
        };
        instance.run(&[
            "initdb",
            "-D",
            &instance.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        if let Some(tls) = tls {
            instance.configure_tls(tls);
        }
        instance.up();
        instance
    }

    fn configure_tls(&self, tls: &PgTls<'_>) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let data = PathBuf::from(self.data());
        let write = |name: &str, text: &str, mode: u32| {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            if is_root() {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(ok.success(), "chown {name} failed");
            }
        };
        write("server.crt", tls.cert_pem, 0o644);
        // PostgreSQL refuses a key that others can read.
        write("server.key", tls.key_pem, 0o600);
        write(
            "pg_hba.conf",
            "# TYPE    DATABASE USER     ADDRESS       METHOD\n\
             local     all      all                    trust\n\
             hostssl   all      postgres 127.0.0.1/32  trust\n\
             hostssl   all      all      127.0.0.1/32  scram-sha-256\n\
             hostnossl all      all      0.0.0.0/0     reject\n\
             host      all      all      ::/0          reject\n",
            0o600,
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap_or_else(|e| panic!("postgresql.conf: {e}"));
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             password_encryption = 'scram-sha-256'"
        )
        .unwrap();
    }

    fn data(&self) -> String {
        self.dir.path().join("pgdata").display().to_string()
    }

    fn run(&self, args: &[&str]) {
        let tool = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        let out = cmd
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start (again), waiting until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// Stop at once, like a crash (`-m immediate`): recovery replays the WAL on the next start.
    pub fn down(&self) {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    /// A URL of this server's `postgres` database (for CREATE DATABASE); over TLS when the
    /// server requires it.
    pub fn admin_url(&self) -> String {
        let tls = if self.tls { "?sslmode=require" } else { "" };
        format!("postgres://postgres@127.0.0.1:{}/postgres{tls}", self.port)
    }

    /// The server's log (connection refusals, TLS errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        let tool = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub mod examples {
    //! Minimal valid FHIR R4 resources of any type, built from the vendored JSON schema (every
    //! element the schema requires, with a plausible value), for tests that must cover every
    //! resource type of a definition rather than a hand-picked few.
    use std::sync::OnceLock;

    use serde_json::{Map, Value, json};

    fn schema() -> &'static Value {
        static SCHEMA: OnceLock<Value> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            serde_json::from_str(include_str!("../../../vendor/fhir/r4/fhir.schema.json"))
                .expect("the vendored schema parses")
        })
    }

    fn definition(name: &str) -> &'static Value {
        &schema()["definitions"][name]
    }

    /// The definition a property refers to (through `$ref`, or its array's `items`), and whether
    /// it is an array.
    fn target(property: &Value) -> (Option<&str>, bool) {
        match property.get("items") {
            Some(items) => (reference_name(items), true),
            None => (reference_name(property), false),
        }
    }

    fn reference_name(v: &Value) -> Option<&str> {
        v.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
    }

    fn primitive(name: &str) -> Value {
        match name {
            "boolean" => json!(true),
            "integer" | "positiveInt" | "unsignedInt" | "decimal" => json!(1),
            "date" => json!("2024-01-01"),
            "dateTime" | "instant" => json!("2024-01-01T00:00:00Z"),
            "time" => json!("00:00:00"),
            "base64Binary" => json!("eA=="),
            "uuid" => json!("urn:uuid:6f1c3c8e-2b1a-4e55-9a0e-3c2f1d0b7a11"),
            "oid" => json!("urn:oid:1.2.3"),
            _ => json!("x"),
        }
    }

    fn value(property: &Value) -> Value {
        if let Some(first) = property.get("enum").and_then(|e| e.get(0)) {
            return first.clone();
        }
        let (name, array) = target(property);
        let one = match name {
            Some(name) => element(name),
            None => json!("x"),
        };
        if array { json!([one]) } else { one }
    }

    /// A minimal instance of the definition `name` (a complex type or a backbone element).
    fn element(name: &str) -> Value {
        let def = definition(name);
        let Some(properties) = def.get("properties").and_then(Value::as_object) else {
            return primitive(name);
        };
        let mut out = Map::new();
        for required in def["required"].as_array().into_iter().flatten() {
            let Some(key) = required.as_str() else {
                continue;
            };
            if key != "resourceType" {
                out.insert(key.to_owned(), value(&properties[key]));
            }
        }
        // An empty element is not valid FHIR; a text or display says the least.
        if out.is_empty() {
            for key in ["text", "display", "description", "name"] {
                if properties.contains_key(key)
                    && target(&properties[key]) == (Some("string"), false)
                {
                    out.insert(key.to_owned(), json!("x"));
                    break;
                }
            }
        }
        Value::Object(out)
    }

    /// A minimal valid resource of type `rtype`.
    pub fn minimal(rtype: &str) -> Value {
        let mut resource = element(rtype);
        resource["resourceType"] = json!(rtype);
        resource
    }

    /// A minimal valid resource of type `rtype` whose element at `steps` (member names from the
    /// root, arrays taken at their first item) is a Reference to `reference`.
    pub fn with_reference(rtype: &str, steps: &[String], reference: &str) -> Value {
        let mut resource = minimal(rtype);
        let mut at = &mut resource;
        let mut def = rtype.to_owned();
        for (i, step) in steps.iter().enumerate() {
            let property = &definition(&def)["properties"][step.as_str()];
            let (name, array) = target(property);
            let name = name.unwrap_or_else(|| panic!("{rtype}: no element {step} in {def}"));
            let last = i + 1 == steps.len();
            let item = if last {
                json!({ "reference": reference })
            } else {
                element(name)
            };
            let slot = &mut at[step.as_str()];
            if array {
                *slot = json!([item]);
                at = &mut slot[0];
            } else {
                *slot = item;
                at = slot;
            }
            def = name.to_owned();
        }
        resource
    }
}
