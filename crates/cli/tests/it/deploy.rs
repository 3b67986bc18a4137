//! The deployment files in `deploy/` as an operator would use them: the systemd unit rated by
//! `systemd-analyze security --offline=true` (exposure 2.0 or lower) and the example
//! configuration accepted by `carevault config check`.

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
