//! The deployment files in `deploy/` as an operator would use them: the systemd unit rated by
//! `systemd-analyze security --offline=true` (exposure 2.0 or lower) and the example
//! configuration accepted by `carevault config check`; the container image's Dockerfile (its
//! health check, `carevault healthz`, run against a real server); the Compose example's
//! CareVault settings accepted by `carevault config check`, every secret a file. Building and
//! running the image needs a container engine: `.ci/container` does it where one runs.

use std::path::PathBuf;
use std::process::Command;

use carevault_testkit::output_text;

use crate::bin;

fn deploy_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

#[test]
fn the_systemd_unit_is_rated_ok_by_systemd_analyze() {
    let unit = deploy_file("systemd/carevault.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze (Debian package systemd) did not run: {e}"));
    let text = output_text(&out);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for carevault.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(exposure <= 2.0, "exposure {exposure}: {text}");
    // The settings the checklist names, so that a lower score reached some other way does not
    // hide one of them going missing.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_IPC_LOCK",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "User=carevault",
        "LimitCORE=0",
    ] {
        assert!(unit_text.lines().any(|l| l == line), "missing {line}");
    }
}

#[test]
fn the_units_command_line_and_example_configuration_pass_config_check() {
    let unit = std::fs::read_to_string(deploy_file("systemd/carevault.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(
        args,
        ["serve", "--config", "/etc/carevault/carevault.toml"],
        "the unit's command line changed: update this test and docs/deploy.md"
    );

    // The example as shipped, with the unit's credential and a data directory of the test's own
    // (the environment wins over the file, as under systemd).
    let dir = tempfile::tempdir().unwrap();
    let passphrase = dir.path().join("kek-passphrase");
    std::fs::write(&passphrase, "correct horse battery staple and more\n").unwrap();
    let mut perms = std::fs::metadata(&passphrase).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o400);
    std::fs::set_permissions(&passphrase, perms).unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(deploy_file("systemd/carevault.toml"))
        .env("CAREVAULT_KEY_PASSPHRASE_FILE", &passphrase)
        .env("CAREVAULT_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn healthz_answers_for_a_running_server_and_fails_for_a_stopped_one() {
    let mut srv = crate::server();
    let listen = srv.base.trim_start_matches("https://").to_owned();
    let healthz = |srv: &carevault_testkit::TestServer| {
        srv.command(bin())
            .args(["healthz", "--data-dir"])
            .arg(&srv.data_dir)
            .args(["--listen", &listen])
            .output()
            .unwrap()
    };
    let up = healthz(&srv);
    assert!(up.status.success(), "{}", output_text(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains(&format!("https://{listen}/healthz answers")),
        "{}",
        output_text(&up)
    );
    srv.stop();
    let down = healthz(&srv);
    assert!(!down.status.success(), "{}", output_text(&down));
    let text = output_text(&down);
    assert!(
        text.contains("error:") && !text.contains("panicked"),
        "{text}"
    );
}

#[test]
fn the_container_image_is_non_root_from_scratch_with_a_healthz_health_check() {
    let dockerfile = std::fs::read_to_string(deploy_file("container/Dockerfile")).unwrap();
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let stages: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a collecting stage and the final one");
    assert_eq!(
        *stages[1], "FROM scratch",
        "the final stage has nothing but what is copied"
    );
    for line in [
        "USER 10001:10001",
        "VOLUME [\"/var/lib/carevault\"]",
        "    CMD [\"/usr/local/bin/carevault\", \"healthz\"]",
        "ENTRYPOINT [\"/usr/local/bin/carevault\"]",
    ] {
        assert!(dockerfile.lines().any(|l| l == line), "missing {line}");
    }
    // The health check runs `carevault healthz` with the image's environment: the data
    // directory (the certificate it trusts) and the listener it probes.
    let env: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("ENV "))
        .take(2)
        .collect();
    assert!(
        env[0].contains("CAREVAULT_DATA_DIR=/var/lib/carevault"),
        "{env:?}"
    );
    assert!(env[1].contains("CAREVAULT_LISTEN=0.0.0.0:8443"), "{env:?}");
    let collect = std::fs::read_to_string(deploy_file("container/collect.sh")).unwrap();
    // The data directory: the service user's, mode 0700 (the server refuses one others can reach).
    assert!(collect.lines().any(|l| l == "chmod 700 /data-dir"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l == "COPY --from=collect --chown=10001:10001 /data-dir /var/lib/carevault")
    );
    assert!(collect.contains("carevault:x:10001:10001:"));
}

/// `KEY: value` lines of `compose.yaml` whose key starts with `prefix` (the file keeps each
/// setting on one line, so no YAML parser is needed to read them).
fn compose_settings<'a>(compose: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    compose
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k, v.trim().trim_matches('"')))
        .collect()
}

#[test]
fn the_compose_example_passes_config_check_and_keeps_every_secret_in_a_file() {
    let compose = std::fs::read_to_string(deploy_file("compose/compose.yaml")).unwrap();
    let settings = compose_settings(&compose, "CAREVAULT_");
    let nodes: Vec<&str> = settings
        .iter()
        .filter(|(k, _)| *k == "CAREVAULT_NODE_ID")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
    // No secret in the file: passwords, passphrases and PINs come from files under /run/secrets.
    for (key, value) in compose_settings(&compose, "").iter().chain(&settings) {
        let secretive = ["PASSWORD", "PASSPHRASE", "PIN", "SECRET"]
            .iter()
            .any(|word| key.contains(word));
        if secretive {
            assert!(key.ends_with("_FILE"), "{key} is not a file setting");
            assert!(value.starts_with("/run/secrets/"), "{key}: {value}");
        }
    }
    let url = settings
        .iter()
        .find(|(k, _)| *k == "CAREVAULT_DATABASE_URL")
        .unwrap()
        .1;
    assert!(url.contains("sslmode=verify-full"), "{url}");
    assert!(
        !url.contains(":@") && url.split('@').next().unwrap().matches(':').count() == 1,
        "no password in {url}"
    );

    // The settings as `carevault config check` reads them, with the image's environment
    // (deploy/container/Dockerfile) and the secret files (and the database's CA) replaced by
    // files of the test's own with the modes the server demands.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["config", "check"])
        .env("CAREVAULT_DATA_DIR", dir.path().join("data"))
        .env("CAREVAULT_LISTEN", "0.0.0.0:8443");
    for (key, value) in &settings {
        for name in value.split("/run/secrets/").skip(1) {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let path = secrets.join(name);
            std::fs::write(&path, "a secret of the test's own, long enough\n").unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        let local = format!("{}/", secrets.display());
        cmd.env(key, value.replace("/run/secrets/", &local));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}
