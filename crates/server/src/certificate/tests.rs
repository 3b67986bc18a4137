use super::*;

const NOW: i64 = 1_796_000_000; // 2026-11-30

fn config(dir: &Path) -> Config {
    Config::for_data_dir(dir)
}

#[test]
fn a_generated_certificate_is_valid_for_397_days_from_now_and_marked_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let fp = generate_self_signed(&config, NOW).unwrap();
    let info = inspect(&config.tls_cert).unwrap();
    assert_eq!(info.fingerprint, fp);
    assert!(info.generated);
    assert_eq!(info.validity_days(), VALIDITY_DAYS);
    assert!(info.not_before_secs <= NOW && NOW < info.not_after_secs);
    assert!(!info.renewal_due(NOW));
}

#[test]
fn renewal_is_due_within_30_days_of_expiry_and_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let first = generate_self_signed(&config, NOW).unwrap();
    let key_before = std::fs::read(&config.tls_key).unwrap();
    let info = inspect(&config.tls_cert).unwrap();

    let not_yet = info.not_after_secs - (RENEW_BEFORE_DAYS + 1) * DAY_SECS;
    assert_eq!(renew_if_due(&config, not_yet).unwrap(), None);
    assert_eq!(inspect(&config.tls_cert).unwrap().fingerprint, first);

    let due = info.not_after_secs - RENEW_BEFORE_DAYS * DAY_SECS;
    let renewed = renew_if_due(&config, due).unwrap().expect("renewed");
    assert_ne!(renewed, first);
    let after = inspect(&config.tls_cert).unwrap();
    assert_eq!(after.fingerprint, renewed);
    assert!(after.not_after_secs > info.not_after_secs);
    assert!(after.generated);
    assert_eq!(std::fs::read(&config.tls_key).unwrap(), key_before);
    // No temporary file is left beside the certificate.
    let leftovers: Vec<_> = std::fs::read_dir(config.tls_cert.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_overlong_generated_certificate_from_an_older_version_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, GENERATED_COMMON_NAME);
    // rcgen's default validity: 1975 to 4096, what versions before the limit wrote.
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(config.tls_cert.parent().unwrap()).unwrap();
    std::fs::write(&config.tls_cert, cert.pem()).unwrap();
    std::fs::write(&config.tls_key, key.serialize_pem()).unwrap();

    let info = inspect(&config.tls_cert).unwrap();
    assert!(info.generated && info.renewal_due(NOW));
    assert!(renew_if_due(&config, NOW).unwrap().is_some());
    assert_eq!(
        inspect(&config.tls_cert).unwrap().validity_days(),
        VALIDITY_DAYS
    );
}

#[test]
fn an_operators_own_certificate_is_never_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ehr.example.org".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ehr.example.org");
    params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 400 * DAY_SECS).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + DAY_SECS).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::create_dir_all(config.tls_cert.parent().unwrap()).unwrap();
    std::fs::write(&config.tls_cert, cert.pem()).unwrap();
    std::fs::write(&config.tls_key, key.serialize_pem()).unwrap();

    let info = inspect(&config.tls_cert).unwrap();
    assert!(!info.generated);
    assert!(info.renewal_due(NOW));
    assert_eq!(renew_if_due(&config, NOW).unwrap(), None);
    assert_eq!(
        std::fs::read_to_string(&config.tls_cert).unwrap(),
        cert.pem()
    );
}

#[test]
fn a_file_without_a_certificate_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let err = inspect(&path).unwrap_err().to_string();
    assert!(err.contains("no PEM certificate"), "{err}");
    let missing = inspect(&dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("cannot read tls.cert_path"), "{missing}");
}
