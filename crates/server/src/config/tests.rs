use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_safe() {
    let c = Config::from_file(FileConfig::load(None, env(&[])).unwrap()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.data_dir, PathBuf::from("./carevault-data"));
    assert!(!c.plain_http);
    assert_eq!(c.body_limit_bytes, 4 * 1024 * 1024);
    assert_eq!(c.session_idle_secs, 900);
    assert_eq!(c.session_lifetime_secs, 8 * 3600);
    assert_eq!(c.argon2, OWASP_ARGON2);
    assert_eq!(c.http.header_timeout, Duration::from_secs(20));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.http.max_connections_per_ip, 256);
}

#[test]
fn environment_overrides_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\n[session]\nidle_timeout_secs = 60\n",
    )
    .unwrap();
    let file = FileConfig::load(
        Some(&path),
        env(&[
            ("CAREVAULT_LISTEN", "127.0.0.1:9001"),
            ("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "120"),
        ]),
    )
    .unwrap();
    let c = Config::from_file(file).unwrap();
    assert_eq!(c.listen.port(), 9001);
    assert_eq!(c.session_idle_secs, 120);
}

#[test]
fn errors_name_the_key() {
    let err = |pairs: &[(&str, &str)]| {
        FileConfig::load(None, env(pairs))
            .and_then(Config::from_file)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[("CAREVAULT_LISTEN", "nowhere")]).contains("`listen`"));
    assert!(err(&[("CAREVAULT_BODY_LIMIT_BYTES", "ten")]).contains("CAREVAULT_BODY_LIMIT_BYTES"));
    assert!(err(&[("CAREVAULT_LISTN", "x")]).contains("CAREVAULT_LISTN"));
    assert!(err(&[("CAREVAULT_KEY_LOCK_MEMORY", "yes")]).contains("key.lock_memory"));
    assert!(err(&[("CAREVAULT_HTTP_IDLE_TIMEOUT_SECS", "0")]).contains("http.idle_timeout_secs"));
    assert!(
        err(&[("CAREVAULT_HTTP_MAX_CONNECTIONS_PER_IP", "0")])
            .contains("http.max_connections_per_ip")
    );
    let required = Config::from_file(
        FileConfig::load(None, env(&[("CAREVAULT_KEY_LOCK_MEMORY", "required")])).unwrap(),
    )
    .unwrap();
    assert_eq!(required.key_lock_memory, crate::memory::LockMode::Required);
    assert!(
        err(&[("CAREVAULT_SESSION_IDLE_TIMEOUT_SECS", "1")]).contains("session.idle_timeout_secs")
    );
    let plain = err(&[
        ("CAREVAULT_LISTEN", "0.0.0.0:80"),
        ("CAREVAULT_ALLOW_PLAIN_HTTP", "true"),
    ]);
    assert!(
        plain.contains("allow_plain_http") && plain.contains("loopback"),
        "{plain}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "lisen = \"x\"\n").unwrap();
    let e = FileConfig::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lisen"), "{e}");
    std::fs::write(&path, "[tls]\npassword = \"hunter2\"\n").unwrap();
    let e = FileConfig::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
}

#[test]
fn a_postgres_url_selects_postgres_and_its_password_never_comes_from_the_file() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    // Built at run time: no credential-looking literal in the source.
    let with_pw = format!("postgres://cv:{}@db.internal/cv", "pw-in-file");
    std::fs::write(&path, format!("[database]\nurl = \"{with_pw}\"\n")).unwrap();
    let e = FileConfig::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("database.url") && e.contains("password"), "{e}");
    assert!(!e.contains("pw-in-file"), "{e}");
    // tokio-postgres also takes `password=` from the query: refused in the file as well.
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"postgres://cv@db.internal/cv?sslmode=require&password={}\"\n",
            "pw-in-query"
        ),
    )
    .unwrap();
    let e = FileConfig::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("database.url") && !e.contains("pw-in-query"),
        "{e}"
    );

    // The whole URL may come from the environment, password included.
    let c = Config::from_file(
        FileConfig::load(None, env(&[("CAREVAULT_DATABASE_URL", &with_pw)])).unwrap(),
    )
    .unwrap();
    let Database::Postgres(pg) = &c.database else {
        panic!("expected PostgreSQL")
    };
    assert_eq!(pg.pool_size, 16);
    assert!(c.database.is_shared());
    assert!(!format!("{c:?}").contains("pw-in-file"));

    // Or the file names a password file; CAREVAULT_DATABASE_PASSWORD is the alternative.
    let secret = dir.path().join("db-password");
    std::fs::write(&secret, "from-a-file\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"postgres://cv@db.internal/cv?sslmode=require\"\npassword_file = \"{}\"\npool_size = 4\n",
            secret.display()
        ),
    )
    .unwrap();
    let c = Config::from_file(FileConfig::load(Some(&path), env(&[])).unwrap()).unwrap();
    let Database::Postgres(pg) = &c.database else {
        panic!("expected PostgreSQL")
    };
    assert_eq!(pg.password.as_ref().unwrap().expose_secret(), "from-a-file");
    assert_eq!(pg.options().pool_size, 4);
    assert!(!format!("{c:?}").contains("from-a-file"));
    let c = Config::from_file(
        FileConfig::load(
            None,
            env(&[
                ("CAREVAULT_DATABASE_URL", "postgres://cv@db.internal/cv"),
                ("CAREVAULT_DATABASE_PASSWORD", "from-the-env"),
            ]),
        )
        .unwrap(),
    )
    .unwrap();
    let Database::Postgres(pg) = &c.database else {
        panic!("expected PostgreSQL")
    };
    assert_eq!(pg.options().password.as_deref(), Some("from-the-env"));

    let err = |pairs: &[(&str, &str)]| {
        FileConfig::load(None, env(pairs))
            .and_then(Config::from_file)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[("CAREVAULT_DATABASE_URL", "mysql://db/cv")]).contains("database.url"));
    assert!(
        err(&[(
            "CAREVAULT_DATABASE_URL",
            "postgres://db/cv?sslmode=verify-full"
        )])
        .contains("sslrootcert")
    );
    assert!(
        err(&[(
            "CAREVAULT_DATABASE_URL",
            "postgres://db/cv?sslmode=sometimes"
        )])
        .contains("sslmode")
    );
    assert!(
        err(&[("CAREVAULT_DATABASE_PASSWORD_FILE", "/nonexistent")])
            .contains("database.password_file")
    );
    let c = Config::from_file(FileConfig::load(None, env(&[])).unwrap()).unwrap();
    assert!(matches!(c.database, Database::Sqlite));
}

/// The rows of the key table in `docs/configuration.md`: (key, environment variable).
fn documented_keys() -> Vec<(String, String)> {
    let doc = include_str!("../../../../docs/configuration.md");
    let (_, rest) = doc
        .split_once("<!-- keys:start")
        .expect("docs/configuration.md marks its key table with <!-- keys:start");
    let (table, _) = rest
        .split_once("<!-- keys:end")
        .expect("docs/configuration.md ends its key table with <!-- keys:end");
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let unquote = |cell: &str| cell.trim_matches('`').to_owned();
            (unquote(cells[1]), unquote(cells[2]))
        })
        .collect()
}

#[test]
fn the_configuration_table_lists_every_key() {
    let documented = documented_keys();
    for key in key_names() {
        let rows = documented.iter().filter(|(k, _)| k == key).count();
        assert_eq!(
            rows, 1,
            "`{key}` needs exactly one row in the table of docs/configuration.md"
        );
    }
    for (key, var) in &documented {
        assert!(
            key_names().any(|k| k == key),
            "docs/configuration.md documents `{key}`, which is not in config::KEYS"
        );
        assert_eq!(
            var,
            &env_var_name(key),
            "docs/configuration.md names the wrong environment variable for `{key}`"
        );
    }
    assert_eq!(documented.len(), key_names().count());
}

#[test]
fn plain_http_on_loopback_is_allowed_when_asked() {
    let file = FileConfig::load(
        None,
        env(&[
            ("CAREVAULT_LISTEN", "127.0.0.1:8080"),
            ("CAREVAULT_ALLOW_PLAIN_HTTP", "1"),
        ]),
    )
    .unwrap();
    assert!(Config::from_file(file).unwrap().plain_http);
}

#[test]
fn public_urls_hosts_limits_and_signing_lag_are_refused_outside_their_rules() {
    let err = |pairs: &[(&str, &str)]| {
        FileConfig::load(None, env(pairs))
            .and_then(Config::from_file)
            .unwrap_err()
    };
    for (pairs, key) in [
        (
            &[("CAREVAULT_LISTEN", "0.0.0.0:8443")][..],
            "public_base_url",
        ),
        (
            &[("CAREVAULT_PUBLIC_BASE_URL", "http://fhir.example.org")][..],
            "public_base_url",
        ),
        (
            &[("CAREVAULT_PUBLIC_BASE_URL", "https://fhir.example.org/?a=b")][..],
            "public_base_url",
        ),
        (
            &[("CAREVAULT_PUBLIC_BASE_URL", "https://user@fhir.example.org")][..],
            "public_base_url",
        ),
        (
            &[("CAREVAULT_PUBLIC_BASE_URL", "fhir.example.org")][..],
            "public_base_url",
        ),
        (
            &[("CAREVAULT_ALLOWED_HOSTS", "ok.example, bad.example/path")][..],
            "allowed_hosts",
        ),
        (
            &[("CAREVAULT_ALLOWED_HOSTS", "user@host")][..],
            "allowed_hosts",
        ),
        (
            &[("CAREVAULT_SEARCH_MAX_CLAUSES", "0")][..],
            "search.max_clauses",
        ),
        (
            &[("CAREVAULT_SEARCH_MAX_CLAUSES", "401")][..],
            "search.max_clauses",
        ),
        (
            &[("CAREVAULT_SEARCH_MAX_INCLUDES", "101")][..],
            "search.max_includes",
        ),
        (
            &[("CAREVAULT_AUDIT_MAX_UNSIGNED_SECS", "10")][..],
            "audit.max_unsigned_secs",
        ),
    ] {
        let e = err(pairs);
        assert_eq!(e.key, key, "{pairs:?}: {e}");
    }

    let ok = |pairs: &[(&str, &str)]| {
        Config::from_file(FileConfig::load(None, env(pairs)).unwrap()).unwrap()
    };
    // Every interface with a public URL; plain http only for a loopback development server.
    let public = ok(&[
        ("CAREVAULT_LISTEN", "0.0.0.0:8443"),
        (
            "CAREVAULT_PUBLIC_BASE_URL",
            "https://fhir.example.org:8443/",
        ),
        ("CAREVAULT_ALLOWED_HOSTS", " LB.example , 10.0.0.5:8443 "),
    ]);
    let url = public.public_base_url.unwrap();
    assert_eq!(url.origin(), "https://fhir.example.org:8443");
    assert_eq!(url.authority(), "fhir.example.org:8443");
    assert_eq!(public.allowed_hosts, ["lb.example", "10.0.0.5:8443"]);
    let plain = ok(&[
        ("CAREVAULT_ALLOW_PLAIN_HTTP", "true"),
        ("CAREVAULT_PUBLIC_BASE_URL", "http://localhost:8080"),
    ]);
    assert_eq!(plain.public_base_url.unwrap().default_port(), 80);
    assert_eq!(ok(&[]).audit_max_unsigned, Some(Duration::from_secs(120)));
    assert_eq!(
        ok(&[("CAREVAULT_AUDIT_MAX_UNSIGNED_SECS", "0")]).audit_max_unsigned,
        None
    );
    assert_eq!(ok(&[]).search_limits.max_clauses, 50);
}

#[test]
fn cors_origins_are_exact_origins_and_never_a_wildcard() {
    let c = Config::from_file(FileConfig {
        cors: super::file::CorsSection {
            allowed_origins: Some("https://App.Example.org, http://localhost:3000".into()),
        },
        ..FileConfig::default()
    })
    .unwrap();
    assert_eq!(
        c.cors_allowed_origins,
        ["https://app.example.org", "http://localhost:3000"]
    );
    assert!(
        Config::from_file(FileConfig::default())
            .unwrap()
            .cors_allowed_origins
            .is_empty()
    );
    for bad in [
        "*",
        "null",
        "https://*.example.org",
        "https://app.example.org/",
        "https://app.example.org/path",
        "app.example.org",
        "ftp://app.example.org",
        "https://user@app.example.org",
    ] {
        let err = Config::from_file(FileConfig {
            cors: super::file::CorsSection {
                allowed_origins: Some(bad.into()),
            },
            ..FileConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("cors.allowed_origins"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_clients_variables_are_not_configuration_keys() {
    // `carevault serve` in a shell where the client's variables are set still starts.
    let file = FileConfig::load(
        None,
        env(&[
            ("CAREVAULT_API_KEY_FILE", "/tmp/key"),
            ("CAREVAULT_SERVER", "https://127.0.0.1:8443"),
            ("CAREVAULT_CA_CERT", "/tmp/cert.pem"),
            ("CAREVAULT_PROFILE", "work"),
        ]),
    );
    assert!(file.is_ok(), "{file:?}");
}

#[test]
fn backup_keys_are_checked_naming_the_key() {
    let load =
        |pairs: &[(&str, &str)]| Config::from_file(FileConfig::load(None, env(pairs)).unwrap());
    let base = [
        ("CAREVAULT_BACKUP_SCHEDULE", "6h"),
        ("CAREVAULT_BACKUP_DIR", "/var/backups/carevault"),
        (
            "CAREVAULT_BACKUP_RECIPIENTS",
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
        ),
    ];
    let c = load(&base).unwrap();
    let b = c.backup.unwrap();
    assert_eq!(b.every, Duration::from_secs(6 * 3600));
    assert_eq!(b.keep, Keep::parse(DEFAULT_KEEP).unwrap());
    assert!(load(&[]).unwrap().backup.is_none());
    for (change, key) in [
        (("CAREVAULT_BACKUP_SCHEDULE", "6 hours"), "backup.schedule"),
        (("CAREVAULT_BACKUP_SCHEDULE", "10s"), "backup.schedule"),
        (("CAREVAULT_BACKUP_DIR", ""), "backup.dir"),
        (("CAREVAULT_BACKUP_KEEP", "28 days"), "backup.keep"),
        (
            ("CAREVAULT_BACKUP_RECIPIENTS", "ssh-ed25519 AAAA"),
            "backup.recipients",
        ),
        (("CAREVAULT_BACKUP_RECIPIENTS", ""), "backup.recipients"),
        (
            ("CAREVAULT_BACKUP_PASSPHRASE_FILE", "/etc/pass"),
            "backup.passphrase_file",
        ),
    ] {
        let mut pairs: Vec<(&str, &str)> = base
            .iter()
            .filter(|(k, _)| *k != change.0)
            .copied()
            .collect();
        pairs.push(change);
        let e = load(&pairs).unwrap_err();
        assert_eq!(e.key, key, "{change:?}: {e}");
    }
    // Without a schedule, the other keys are a mistake, not silently ignored.
    let e = load(&[("CAREVAULT_BACKUP_KEEP", "3 last")]).unwrap_err();
    assert_eq!(e.key, "backup.keep");
}

#[test]
fn an_s3_secret_in_the_file_is_refused_without_echoing_it() {
    for text in [
        "[backup]\ns3_secret_access_key = \"CANARY-S3-SECRET\"\n",
        "[backup]\naws_access_key_id = \"CANARY-S3-SECRET\"\n",
    ] {
        let table: toml::Table = text.parse().unwrap();
        let e = super::file::s3_secret_in_file(&table).unwrap();
        assert!(e.key.starts_with("backup."), "{e}");
        assert!(!e.to_string().contains("CANARY"), "{e}");
    }
    let table: toml::Table = "[backup]\ns3_bucket = \"b\"\n".parse().unwrap();
    assert!(super::file::s3_secret_in_file(&table).is_none());
}
