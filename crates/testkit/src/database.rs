//! PostgreSQL for tests: the backend choice, a fresh database per test, and a private server.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which database the test servers use: `CAREVAULT_TEST_BACKEND=postgres` runs them on
/// PostgreSQL (a fresh database per test server, on the server named by
/// `CAREVAULT_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/test`);
/// anything else, or nothing, on SQLite. The same tests run on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
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

    /// `tool` from the server binaries; as root, run as the `postgres` user (PostgreSQL refuses
    /// to run as root).
    fn command(&self, tool: &str) -> Command {
        let tool = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        }
    }

    fn run(&self, args: &[&str]) {
        let out = self
            .command(args[0])
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
        let data = self.data();
        let _ = self
            .command("pg_ctl")
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
