//! The key provider of test servers, and fresh SoftHSM2 tokens for `pkcs11`.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

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
