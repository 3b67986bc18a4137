//! The newcomer's first hour: what a new operator meets before a first FHIR call (one server per
//! data directory, `config check`, enrolling and logging in from a terminal, the README's first
//! screen).

use std::io::{BufRead, BufReader, Read, Write};

use carevault_testkit::{Authenticator, TEST_PASSWORD, output_text};

use crate::pty::Terminal;
use crate::{bin, server};

#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let mut srv = server();
    let out = srv
        .command(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&srv.data_dir)
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "a second server started: {text}");
    assert!(
        text.contains("already running on the data directory")
            && text.contains(&srv.data_dir.display().to_string()),
        "{text}"
    );
    assert!(!text.contains("listening on"), "{text}");
    // The first server is unharmed.
    assert_eq!(srv.api().get("/healthz").status, 200);
    // Killed without any cleanup, the server leaves no lock behind: the kernel drops it.
    srv.kill();
    srv.restart(&[]);
    assert_eq!(srv.api().get("/healthz").status, 200);
}

#[test]
fn config_check_reports_every_problem_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("carevault.toml");
    std::fs::write(
        &config,
        "listen = 8443\n\
         [session]\n\
         idle_timeout_secs = \"ten\"\n\
         [tls]\n\
         cert_path = \"/nonexistent/cert.pem\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(&config)
        .env_remove("CAREVAULT_LISTEN")
        .env_remove("CAREVAULT_DATA_DIR")
        .env_remove("CAREVAULT_DATABASE_URL")
        .env("CAREVAULT_LOG_LEVEL", "loud")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    let file = config.display();
    for line in [
        format!("`listen` (line 1 of {file}): expected a string (in quotes), found a whole number"),
        format!(
            "`session.idle_timeout_secs` (line 3 of {file}): expected a whole number, 0 or more (u64), found a string"
        ),
        format!("`tls.cert_path` (line 5 of {file}): /nonexistent/cert.pem does not exist"),
        "`log.level` (CAREVAULT_LOG_LEVEL): expected one of error, warn, info, debug, trace"
            .to_owned(),
        "4 problems in the configuration".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn enroll_forgives_mistakes_and_login_explains_a_used_code() {
    let srv = server();
    let cfg = tempfile::tempdir().unwrap();
    let cfg_dir = cfg.path().to_str().unwrap();
    let env = [("CAREVAULT_CLI_CONFIG_DIR", cfg_dir)];
    let ca = srv.ca_pem();
    let mut term = Terminal::spawn(
        bin(),
        &[
            "enroll",
            "--server",
            &srv.base,
            "--ca-cert",
            ca.to_str().unwrap(),
            "--token",
            &srv.admin_token,
        ],
        &env,
    );
    // A weak password is refused and asked again, before any authenticator step.
    term.expect("choose a password");
    term.send_line("aaaaaaaaaaaa");
    let refused = term.expect("choose a password");
    assert!(refused.contains("choose another"), "{refused}");
    assert!(!refused.contains("secret:"), "{refused}");
    term.send_line(TEST_PASSWORD);
    term.expect("repeat the password: ");
    term.send_line("something else entirely 42");
    let differ = term.expect("choose a password");
    assert!(differ.contains("the passwords differ"), "{differ}");
    term.send_line(TEST_PASSWORD);
    term.expect("repeat the password: ");
    term.send_line(TEST_PASSWORD);
    // One line says what to do, then a QR code that fits 80x24, then the secret for typing.
    let shown = term.expect("code shown by the app now: ");
    let explained = shown
        .find("scan this QR code")
        .unwrap_or_else(|| panic!("{shown}"));
    let qr_lines: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄'))
        .collect();
    assert!(shown.find('▀').is_some_and(|at| at > explained), "{shown}");
    assert!(!qr_lines.is_empty() && qr_lines.len() <= 21, "{shown}");
    assert!(qr_lines.iter().all(|l| l.trim_end().chars().count() <= 80));
    let secret_line = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("{shown}"))
        .to_owned();
    assert!(
        secret_line.contains(' '),
        "grouped for typing: {secret_line}"
    );
    let mut auth = Authenticator::new(&secret_line.replace(' ', ""));
    // A wrong code is asked again, with the same secret (nothing new to scan).
    let code = auth.current_code();
    let wrong = format!("{}{}", &code[..5], (code.as_bytes()[5] - b'0' + 1) % 10);
    term.send_line(&wrong);
    let again = term.expect("code shown by the app now: ");
    assert!(again.contains("that code does not match"), "{again}");
    assert!(!again.contains("secret:"), "{again}");
    term.send_line(&code);
    let done = term.expect("next: carevault login --username admin");
    assert!(done.contains("enrolled. Recovery codes"), "{done}");
    assert!(term.wait().success(), "{}", term.text());

    // The profile remembers the server and certificate: `login` needs neither. The code the
    // enrollment used is refused as used, then the next one logs in.
    let mut term = Terminal::spawn(bin(), &["login", "--username", "admin"], &env);
    term.expect("password: ");
    term.send_line(TEST_PASSWORD);
    term.expect("authenticator code (or recovery code): ");
    term.send_line(&code);
    term.expect("this code was already used; wait for the next one");
    term.expect("authenticator code (or recovery code): ");
    term.send_line(&auth.fresh_code());
    term.expect("logged in as admin");
    assert!(term.wait().success(), "{}", term.text());
}

/// The commands of the README's first screen (between its `first-screen` markers), with
/// continued lines joined.
fn first_screen() -> Vec<String> {
    let readme = include_str!("../../../../README.md");
    let block = readme
        .split_once("<!-- first-screen:start")
        .and_then(|(_, rest)| rest.split_once("<!-- first-screen:end"))
        .map(|(block, _)| block)
        .expect("README.md marks its first screen");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
    {
        if line.starts_with("```") {
            break;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[test]
fn the_readmes_first_screen_works_on_a_fresh_directory() {
    let commands = first_screen();
    let word = |i: usize| {
        commands
            .get(i)
            .map(|c| c.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(word(0).as_deref(), Some("carevault serve"), "{commands:#?}");
    assert_eq!(word(1).as_deref(), Some("carevault enroll"));
    assert_eq!(word(2).as_deref(), Some("carevault login"));
    assert!(
        commands.len() <= 8,
        "the first screen stays short: {commands:#?}"
    );

    // 1. serve, on a fresh directory; it prints the enroll command the README shows.
    let srv = server();
    let ca = srv.ca_pem();
    let printed = srv.output();
    let enroll_line = printed
        .lines()
        .find_map(|l| l.strip_prefix("enroll with: "))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(enroll_line.ends_with(&format!("--token {}", srv.admin_token)));
    let readme_enroll = commands[1].split(" --token").next().unwrap();
    let default_url = "https://127.0.0.1:8443";
    let default_ca = "carevault-data/tls/cert.pem";
    assert_eq!(
        enroll_line.split(" --token").next().unwrap(),
        readme_enroll
            .replace(default_url, &srv.base)
            .replace(default_ca, ca.to_str().unwrap()),
    );
    // The README's relative paths, from a directory that holds the server's data directory.
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&srv.data_dir, cwd.path().join("carevault-data")).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.path().join("carevault")).unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: &str| {
        let script = script
            .replace(default_url, &srv.base)
            .replace("cve_...", &srv.admin_token);
        let mut child = std::process::Command::new("sh")
            .args(["-ec", &script])
            .current_dir(cwd.path())
            .env("PATH", &path)
            .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
            .env_remove("CAREVAULT_SERVER")
            .env_remove("CAREVAULT_CA_CERT")
            .env_remove("CAREVAULT_PROFILE")
            .env_remove("CAREVAULT_API_KEY_FILE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child.stdin.take().unwrap(), child)
    };

    // 2. enroll: the password, then (once the secret is shown) the code.
    let (mut stdin, mut child) = shell(&commands[1]);
    writeln!(stdin, "{TEST_PASSWORD}").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut shown = String::new();
    let secret = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "enroll ended: {shown}"
        );
        shown.push_str(&line);
        if let Some(s) = line.trim().strip_prefix("secret: ") {
            break s.replace(' ', "");
        }
    };
    let mut auth = Authenticator::new(&secret);
    writeln!(stdin, "{}", auth.fresh_code()).unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{shown}{rest}");

    // 3. login: the profile enroll saved brings the server and certificate.
    let (mut stdin, child) = shell(&commands[2]);
    writeln!(stdin, "{TEST_PASSWORD}\n{}", auth.fresh_code()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // 4.. the rest, as one shell session (TOKEN carries over).
    let (stdin, child) = shell(&commands[3..].join("\n"));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("OperationOutcome"), "{text}");
    // The read, indented by `_pretty=true`.
    assert!(text.contains("\"family\": \"Doe\""), "{text}");
}

#[test]
fn errors_say_what_to_do() {
    let srv = server();
    let cfg = tempfile::tempdir().unwrap();
    // An untrusted certificate is named as such before anything is asked for (stdin is empty:
    // a prompt would fail differently).
    let out = std::process::Command::new(bin())
        .args(["login", "--username", "admin", "--server", &srv.base])
        .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
        .env_remove("CAREVAULT_CA_CERT")
        .env_remove("CAREVAULT_SERVER")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(
        text.contains(
            "the server's certificate is not trusted: pass --ca-cert carevault-data/tls/cert.pem"
        ) && text.contains("CAREVAULT_CA_CERT"),
        "{text}"
    );
    // A clinician's Patient without managingOrganization: the refusal names the element and
    // the caller's own organization.
    let admin = srv.admin();
    let clinician = srv.user(&admin, "dr.first", &["clinician"], Some("org-a"));
    let mut patient = crate::patient("Doe", "Jane");
    patient
        .as_object_mut()
        .unwrap()
        .remove("managingOrganization");
    let refused = clinician.api.post_fhir("/fhir/Patient", &patient);
    assert_eq!(refused.status, 403);
    let said = refused.diagnostics();
    assert!(
        said.contains("managingOrganization") && said.contains("Organization/org-a"),
        "{said}"
    );
    let made = clinician
        .api
        .post_fhir("/fhir/Patient", &crate::patient("Doe", "Jane"));
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    // `_format=json` and `_pretty=true` are accepted.
    let read = clinician
        .api
        .get(&format!("/fhir/Patient/{id}?_format=json&_pretty=true"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert!(
        read.text().contains("\n  \"resourceType\": \"Patient\""),
        "{}",
        read.text()
    );
}

#[test]
fn the_cli_says_when_nothing_answers_and_when_a_session_has_ended() {
    let srv = server();
    let cfg = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("CAREVAULT_CLI_CONFIG_DIR", cfg.path())
            .env_remove("CAREVAULT_CA_CERT")
            .env_remove("CAREVAULT_SERVER")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // A port nothing listens on: said before any prompt.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let ca = srv.ca_pem();
    let nowhere = format!("https://127.0.0.1:{port}");
    let out = cli(&[
        "login",
        "--username",
        "admin",
        "--server",
        &nowhere,
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("nothing answers at {nowhere}")),
        "{text}"
    );

    // A saved session the server has ended (logged out elsewhere) is named as such, with the
    // command that logs in again, not as a wrong password.
    let mut admin = srv.admin();
    let token = srv.login(&admin.username, &mut admin.auth);
    let logout = srv
        .api()
        .with_token(&token)
        .request("POST", "/auth/logout", &[], None);
    assert!(logout.status < 300, "{}", logout.text());
    let session = serde_json::json!({"server": srv.base, "ca_cert": ca, "access_token": token});
    std::fs::write(cfg.path().join("session.json"), session.to_string()).unwrap();
    let out = cli(&["user", "list"]);
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("your session has ended") && text.contains("carevault login"),
        "{text}"
    );
    assert!(
        !text.contains(&token),
        "the token is never printed in an error"
    );
}
