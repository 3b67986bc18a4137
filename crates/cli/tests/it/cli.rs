//! The CLI: configuration errors, `init`, `admin recover`, and the client commands against a
//! running server.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};

use carevault_testkit::{Authenticator, TEST_PASSWORD, output_text};

use crate::{bin, server};

fn carevault(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .env_remove("CAREVAULT_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let data = data.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["serve", "--data-dir", data, "--listen", "nowhere"],
            &[],
            "`listen`",
        ),
        (
            &["serve", "--data-dir", data],
            &[("CAREVAULT_BODY_LIMIT_BYTES", "lots")],
            "CAREVAULT_BODY_LIMIT_BYTES",
        ),
        (
            &["serve", "--data-dir", data, "--listen", "0.0.0.0:8080"],
            &[("CAREVAULT_ALLOW_PLAIN_HTTP", "true")],
            "allow_plain_http",
        ),
        (
            &["serve", "--data-dir", data],
            &[("CAREVAULT_SESION_IDLE", "5")],
            "CAREVAULT_SESION_IDLE",
        ),
    ];
    for (args, env, key) in cases {
        let out = carevault(args, env, "");
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            output_text(&out).contains(key),
            "{args:?}: {}",
            output_text(&out)
        );
    }
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "[tls]\ncert = \"/x\"\n").unwrap();
    let out = carevault(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[],
        "",
    );
    assert!(!out.status.success());
    assert!(output_text(&out).contains("cert"), "{}", output_text(&out));
    assert!(
        !std::path::Path::new(data).exists(),
        "a refused start creates nothing"
    );
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:9999\"\n[session]\nidle_timeout_secs = 600\n",
    )
    .unwrap();
    let out = carevault(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[],
        "",
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("127.0.0.1:9999"));
}

#[test]
fn init_creates_a_private_environment_and_recover_issues_a_new_token() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("env");
    let d = data.to_str().unwrap();
    // On the PostgreSQL pass, the environment's database is a fresh PostgreSQL database.
    let database = (carevault_testkit::backend() == carevault_testkit::Backend::Postgres)
        .then(carevault_testkit::TestDatabase::create);
    let db_env: Vec<(&str, &str)> = database
        .iter()
        .map(|db| ("CAREVAULT_DATABASE_URL", db.url.as_str()))
        .collect();
    let out = carevault(&["init", "--data-dir", d], &db_env, "");
    assert!(out.status.success(), "{}", output_text(&out));
    let printed = output_text(&out);
    assert!(printed.contains("enrollment token for admin: cve_"));
    assert!(printed.contains("TLS certificate SHA-256 fingerprint: "));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("keys")), 0o700);
    assert_eq!(mode(&data.join("keys/kek-v1.key")), 0o600);
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600);
    // The token is stored only as a hash.
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("enrollment token for admin: "))
        .unwrap();
    let db = match &database {
        Some(db) => db.dump(),
        None => std::fs::read(data.join("carevault.db")).unwrap(),
    };
    assert!(!db.is_empty());
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    // A second init refuses.
    let again = carevault(&["init", "--data-dir", d], &db_env, "");
    assert!(!again.status.success());
    let rec = carevault(&["admin", "recover", "--data-dir", d], &db_env, "");
    assert!(rec.status.success(), "{}", output_text(&rec));
    let new_token = output_text(&rec)
        .lines()
        .find_map(|l| {
            l.strip_prefix("enrollment token for admin: ")
                .map(str::to_owned)
        })
        .unwrap();
    assert_ne!(new_token, token);
    // A world-readable key directory is refused at start.
    std::fs::set_permissions(data.join("keys"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = carevault(
        &["serve", "--data-dir", d, "--listen", "127.0.0.1:0"],
        &db_env,
        "",
    );
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("0700"),
        "{}",
        output_text(&refused)
    );
}

#[test]
fn cli_enrolls_logs_in_and_manages_users() {
    let srv = server();
    let cfg = tempfile::tempdir().unwrap();
    let env = [("CAREVAULT_CLI_CONFIG_DIR", cfg.path().to_str().unwrap())];
    let ca = srv.ca_pem();
    let ca = ca.to_str().unwrap();

    // `enroll` reads the password, prints the secret, then reads the code from stdin (not a
    // terminal here): answer it like a person with an authenticator app would.
    let mut child = Command::new(bin())
        .args([
            "enroll",
            "--server",
            &srv.base,
            "--ca-cert",
            ca,
            "--token",
            &srv.admin_token,
        ])
        .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{TEST_PASSWORD}").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let secret = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "enroll ended early: {printed}"
        );
        printed.push_str(&line);
        if let Some(s) = line.trim_end().strip_prefix("secret: ") {
            break s.to_owned();
        }
    };
    assert!(
        printed.contains("otpauth://totp/CareVault:admin?"),
        "{printed}"
    );
    let mut auth = Authenticator::new(&secret.replace(' ', ""));
    writeln!(stdin, "{}", auth.fresh_code()).unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{printed}{rest}");
    assert_eq!(
        rest.lines()
            .filter(|l| l.starts_with("  ") && l.len() == 21)
            .count(),
        10,
        "{rest}"
    );

    let login = carevault(
        &[
            "login",
            "--server",
            &srv.base,
            "--ca-cert",
            ca,
            "--username",
            "admin",
        ],
        &env,
        &format!("{TEST_PASSWORD}\n{}\n", auth.fresh_code()),
    );
    assert!(login.status.success(), "{}", output_text(&login));
    use std::os::unix::fs::PermissionsExt;
    let session = cfg.path().join("session.json");
    assert_eq!(
        std::fs::metadata(&session).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let add = carevault(
        &[
            "user",
            "add",
            "dr.cli",
            "--role",
            "clinician",
            "--organization",
            "org-a",
        ],
        &env,
        "",
    );
    assert!(add.status.success(), "{}", output_text(&add));
    assert!(output_text(&add).contains("enrollment token for dr.cli: cve_"));
    assert!(
        output_text(&add).contains(&format!(
            "dr.cli enrolls with: carevault enroll --server {} --ca-cert ",
            srv.base
        )),
        "{}",
        output_text(&add)
    );
    let list = carevault(&["user", "list"], &env, "");
    assert!(
        output_text(&list).contains("dr.cli") && output_text(&list).contains("clinician"),
        "{}",
        output_text(&list)
    );
    let disable = carevault(&["user", "disable", "dr.cli"], &env, "");
    assert!(disable.status.success(), "{}", output_text(&disable));
    assert!(output_text(&carevault(&["user", "list"], &env, "")).contains("disabled"));
    let missing = carevault(&["user", "disable", "nobody"], &env, "");
    assert!(!missing.status.success());
    assert!(
        output_text(&missing).contains("404"),
        "{}",
        output_text(&missing)
    );
    let logout = carevault(&["logout"], &env, "");
    assert!(logout.status.success(), "{}", output_text(&logout));
    assert!(!session.exists());
    let after = carevault(&["user", "list"], &env, "");
    assert!(!after.status.success());
    assert!(output_text(&after).contains("not logged in"));
}
