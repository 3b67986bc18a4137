//! A running `carevault serve` in its own temp data dir, and the file helpers it uses.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{Account, Api, TEST_PASSWORD};
use crate::database::{Backend, TestDatabase, backend};
use crate::hsm::{key_provider, softhsm_token};
use crate::totp::Authenticator;

/// What a finished command printed: standard output, then standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    /// The file-descriptor limit the server runs under (`ulimit -n`), when not inherited.
    fd_limit: Option<u64>,
}

impl TestServer {
    /// Start with default settings.
    pub fn start(bin: &Path) -> Self {
        Self::start_with(bin, &[])
    }

    /// Start with extra `CAREVAULT_*` environment variables, on the backend of [`backend`].
    pub fn start_with(bin: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_fresh(bin, env, Self::new_database(), None)
    }

    /// Start with extra environment variables under a file-descriptor limit (soft and hard,
    /// set with the shell's `ulimit -n` before the server starts).
    pub fn start_with_fd_limit(bin: &Path, env: &[(&str, &str)], fd_limit: u64) -> Self {
        Self::start_fresh(bin, env, Self::new_database(), Some(fd_limit))
    }

    /// Start a new environment on `database` (PostgreSQL), or on SQLite when None.
    pub fn start_on(bin: &Path, env: &[(&str, &str)], database: Option<Arc<TestDatabase>>) -> Self {
        Self::start_fresh(bin, env, database, None)
    }

    /// A database of its own on the backend of [`backend`] (None: SQLite).
    fn new_database() -> Option<Arc<TestDatabase>> {
        match backend() {
            Backend::Postgres => Some(Arc::new(TestDatabase::create())),
            Backend::Sqlite => None,
        }
    }

    fn start_fresh(
        bin: &Path,
        env: &[(&str, &str)],
        database: Option<Arc<TestDatabase>>,
        fd_limit: Option<u64>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let data_dir = tmp.path().join("data");
        let env = Self::environment(env, tmp.path());
        Self::spawn(bin, &env, database, tmp, data_dir, true, fd_limit)
    }

    /// `env`, plus the key provider's settings when the tests run on an HSM.
    fn environment(env: &[(&str, &str)], tmp: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if key_provider() == "pkcs11" && !env.iter().any(|(k, _)| k == "CAREVAULT_KEY_PROVIDER") {
            env.extend(softhsm_token(tmp));
        }
        env
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
        Self::spawn(bin, &env, Some(database), tmp, data_dir, false, None)
    }

    fn spawn(
        bin: &Path,
        env: &[(String, String)],
        database: Option<Arc<TestDatabase>>,
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        fresh: bool,
        fd_limit: Option<u64>,
    ) -> Self {
        let (child, stdout, stderr) = launch(
            Launch {
                bin,
                listen: "127.0.0.1:0",
                data_dir: &data_dir,
                tmp: tmp.path(),
                fd_limit,
            },
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
            fd_limit,
        };
        let (base, token) = server.wait_ready(fresh);
        server.base = base;
        server.admin_token = token.unwrap_or_default();
        server
    }

    /// Serve an existing data directory (a restored backup, say) that lives under `tmp`, with
    /// `env` (e.g. the original server's key provider settings) and `database`.
    pub fn start_existing(
        bin: &Path,
        env: &[(String, String)],
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        database: Option<Arc<TestDatabase>>,
    ) -> Self {
        Self::spawn(bin, env, database, tmp, data_dir, false, None)
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
            Launch {
                bin: &self.bin,
                listen: &listen,
                data_dir: &self.data_dir,
                tmp: self._tmp.path(),
                fd_limit: self.fd_limit,
            },
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

    /// The number of rows of every table, by name, on either backend. The tables are the ones
    /// the database lists (`sqlite_master`, or `information_schema` on PostgreSQL), so a table
    /// added later is counted without changing the caller.
    pub fn row_counts(&self) -> std::collections::BTreeMap<String, i64> {
        let count_all = |tables: &[String]| {
            tables
                .iter()
                .map(|t| format!("SELECT '{t}', COUNT(*) FROM \"{t}\""))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        };
        match &self.database {
            Some(db) => {
                let tables: Vec<String> = db
                    .sql(
                        "SELECT table_name FROM information_schema.tables
                         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                    )
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                db.sql(&count_all(&tables))
                    .lines()
                    .filter_map(|l| l.split_once('|'))
                    .map(|(t, n)| (t.to_owned(), n.trim().parse().unwrap_or(-1)))
                    .collect()
            }
            None => {
                let c = rusqlite::Connection::open(self.db_path()).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let tables: Vec<String> = c
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                // One statement: one snapshot of every table.
                c.prepare(&count_all(&tables))
                    .unwrap()
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
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

    /// Make `table` refuse every insert behind the server's back, as a full disk would (on
    /// PostgreSQL with SQLSTATE 53100, disk full), until [`Self::allow_inserts`].
    pub fn refuse_inserts(&self, table: &str) {
        if self.is_postgres() {
            self.execute(&format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = '53100'; END $$;
                 CREATE TRIGGER {table}_unwritable BEFORE INSERT ON {table}
                     FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
            ));
        } else {
            self.execute(&format!(
                "CREATE TRIGGER {table}_unwritable BEFORE INSERT ON {table}
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
            ));
        }
    }

    /// Undo [`Self::refuse_inserts`].
    pub fn allow_inserts(&self, table: &str) {
        if self.is_postgres() {
            self.execute(&format!(
                "DROP TRIGGER {table}_unwritable ON {table}; DROP FUNCTION refuse_{table}();"
            ));
        } else {
            self.execute(&format!("DROP TRIGGER {table}_unwritable;"));
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

    /// The first log line holding `needle`, waiting for it: the server's output is read by
    /// another thread, so a line logged before a response may arrive a moment after it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let mut line = None;
        crate::wait_for(needle, Duration::from_secs(10), || {
            line = self
                .logs()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned);
            line.is_some()
        });
        line.unwrap_or_default()
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

/// Where and how to start `carevault serve`.
struct Launch<'a> {
    bin: &'a Path,
    listen: &'a str,
    data_dir: &'a Path,
    tmp: &'a Path,
    /// Run under this file-descriptor limit (the shell's `ulimit -n`, then `exec`).
    fd_limit: Option<u64>,
}

/// Spawn `carevault serve` on `data_dir` (and `database`, when PostgreSQL), collecting its output.
fn launch(at: Launch<'_>, env: &[(String, String)], database: Option<&TestDatabase>) -> Output {
    let Launch {
        bin,
        listen,
        data_dir,
        tmp,
        fd_limit,
    } = at;
    let mut cmd = match fd_limit {
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(bin);
            sh
        }
        None => Command::new(bin),
    };
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
