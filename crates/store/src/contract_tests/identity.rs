//! The contract's identity rows: principals, credentials and their one-time values, enrollments,
//! sessions, API keys, compartment organizations and break-glass grants (see
//! [`super`] for how each test runs on both backends).

use super::data_key;
use crate::{
    ApiKeyRow, BreakGlassRow, CredentialRow, EnrollmentRow, PrincipalRow, SessionRow, Store,
    StoreError, WriteOp,
};

pub(crate) async fn totp_steps_and_recovery_codes_are_single_use(
    store: &dyn Store,
    _other: &dyn Store,
) {
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    let principal = PrincipalRow {
        id: "u1".into(),
        username: "alice".into(),
        roles: vec!["clinician".into()],
        organization: Some("org-a".into()),
        disabled: false,
        locked: false,
        failed_logins: 0,
        created_at: 1,
    };
    store
        .write(vec![WriteOp::InsertPrincipal(principal.clone())])
        .await
        .unwrap();
    assert!(matches!(
        store
            .write(vec![WriteOp::InsertPrincipal(principal.clone())])
            .await,
        Err(StoreError::AlreadyExists)
    ));
    store
        .write(vec![WriteOp::SetCredential(CredentialRow {
            principal_id: "u1".into(),
            password_hash: "$argon2id$...".into(),
            totp_secret_sealed: vec![1, 2, 3],
            totp_last_step: 0,
            recovery_code_hashes: vec!["h1".into(), "h2".into()],
        })])
        .await
        .unwrap();
    let advance = |step| WriteOp::AdvanceTotpStep {
        principal_id: "u1".into(),
        step,
    };
    store.write(vec![advance(10)]).await.unwrap();
    assert!(matches!(
        store.write(vec![advance(10)]).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.write(vec![advance(9)]).await,
        Err(StoreError::Conflict)
    ));
    store.write(vec![advance(11)]).await.unwrap();
    let consume = |h: &str| WriteOp::ConsumeRecoveryCode {
        principal_id: "u1".into(),
        code_hash: h.into(),
    };
    store.write(vec![consume("h1")]).await.unwrap();
    assert!(matches!(
        store.write(vec![consume("h1")]).await,
        Err(StoreError::Conflict)
    ));
    let cred = store.credential("u1").await.unwrap().unwrap();
    assert_eq!(cred.recovery_code_hashes, vec!["h2".to_string()]);
    assert_eq!(cred.totp_last_step, 11);
    assert!(!format!("{cred:?}").contains("argon2"));
}

pub(crate) async fn identity_rows_and_one_time_values(store: &dyn Store, other: &dyn Store) {
    store.write(vec![data_key("Patient/test")]).await.unwrap();
    let principal = PrincipalRow {
        id: "u1".into(),
        username: "alice".into(),
        roles: vec!["clinician".into(), "auditor".into()],
        organization: Some("org-a".into()),
        disabled: false,
        locked: false,
        failed_logins: 0,
        created_at: 1,
    };
    store
        .write(vec![WriteOp::InsertPrincipal(principal.clone())])
        .await
        .unwrap();
    assert!(matches!(
        store
            .write(vec![WriteOp::InsertPrincipal(principal.clone())])
            .await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        store.principal_by_username("alice").await.unwrap(),
        Some(principal)
    );
    for _ in 0..3 {
        store
            .write(vec![WriteOp::RecordLoginFailure {
                principal_id: "u1".into(),
                lock_after: 3,
            }])
            .await
            .unwrap();
    }
    let p = store.principal_by_id("u1").await.unwrap().unwrap();
    assert!(p.locked && p.failed_logins == 3);
    store
        .write(vec![WriteOp::SetCredential(CredentialRow {
            principal_id: "u1".into(),
            password_hash: "$argon2id$...".into(),
            totp_secret_sealed: vec![1, 2, 3],
            totp_last_step: 0,
            recovery_code_hashes: vec!["h1".into(), "h2".into()],
        })])
        .await
        .unwrap();
    let advance = |step| WriteOp::AdvanceTotpStep {
        principal_id: "u1".into(),
        step,
    };
    store.write(vec![advance(10)]).await.unwrap();
    assert!(matches!(
        store.write(vec![advance(10)]).await,
        Err(StoreError::Conflict)
    ));
    // Two nodes using one recovery code at once: exactly one succeeds.
    let consume = |h: &str| WriteOp::ConsumeRecoveryCode {
        principal_id: "u1".into(),
        code_hash: h.into(),
    };
    let (r1, r2) = tokio::join!(
        store.write(vec![consume("h1")]),
        other.write(vec![consume("h1")])
    );
    assert_eq!([r1.is_ok(), r2.is_ok()].iter().filter(|ok| **ok).count(), 1);
    let cred = store.credential("u1").await.unwrap().unwrap();
    assert_eq!(cred.recovery_code_hashes, vec!["h2".to_string()]);
    assert_eq!(cred.totp_last_step, 10);

    store
        .write(vec![WriteOp::InsertSession(SessionRow {
            token_hash: "t1".into(),
            principal_id: "u1".into(),
            created_at: 5,
            last_seen: 5,
            revoked: false,
        })])
        .await
        .unwrap();
    other
        .write(vec![WriteOp::TouchSession {
            token_hash: "t1".into(),
            last_seen: 4,
        }])
        .await
        .unwrap();
    assert_eq!(other.session("t1").await.unwrap().unwrap().last_seen, 5);
}

/// The second half of PostgreSQL's former `identity_rows_one_time_values_policies_and_the_index`
/// (`identity_rows_and_one_time_values` is the first): policies and their version, the index,
/// and two nodes inserting one data key.
pub(crate) async fn api_keys_keep_their_network_and_certificate_bindings(
    store: &dyn Store,
    other: &dyn Store,
) {
    let fp = ["AB"; 32].join(":");
    let bound = ApiKeyRow {
        name: "lab-feed".into(),
        key_hash: "h1".into(),
        owner_id: None,
        scopes: vec!["Observation.c".into(), "Patient.r".into()],
        allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        expires_at: 100,
        revoked: false,
        created_at: 1,
        client_cert_sha256: Some(fp),
    };
    let unbound = ApiKeyRow {
        name: "script".into(),
        key_hash: "h2".into(),
        allowed_cidrs: Vec::new(),
        client_cert_sha256: None,
        ..bound.clone()
    };
    store
        .write(vec![
            WriteOp::InsertApiKey(bound.clone()),
            WriteOp::InsertApiKey(unbound.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(
        other.api_key_by_hash("h1").await.unwrap(),
        Some(bound.clone())
    );
    assert_eq!(other.api_keys().await.unwrap(), [bound, unbound]);
}

/// The operations `statements.rs` writes once for both backends, each read back through the
/// other handle: principals updated, credentials deleted, enrollments, sessions and API keys
/// revoked, compartment organizations replaced, break-glass grants.
pub(crate) async fn account_session_key_and_grant_rows_follow_their_operations(
    store: &dyn Store,
    other: &dyn Store,
) {
    let principal = PrincipalRow {
        id: "u1".into(),
        username: "bob".into(),
        roles: vec!["clinician".into()],
        organization: None,
        disabled: false,
        locked: true,
        failed_logins: 4,
        created_at: 1,
    };
    let session = |token: &str| SessionRow {
        token_hash: token.into(),
        principal_id: "u1".into(),
        created_at: 5,
        last_seen: 5,
        revoked: false,
    };
    let enrollment = EnrollmentRow {
        token_hash: "e1".into(),
        principal_id: "u1".into(),
        expires_at: 99,
        pending_totp_sealed: None,
    };
    store
        .write(vec![
            WriteOp::InsertPrincipal(principal.clone()),
            WriteOp::SetCredential(CredentialRow {
                principal_id: "u1".into(),
                password_hash: "$argon2id$...".into(),
                totp_secret_sealed: vec![7],
                totp_last_step: 0,
                recovery_code_hashes: Vec::new(),
            }),
            WriteOp::InsertEnrollment(enrollment.clone()),
            WriteOp::InsertSession(session("s1")),
            WriteOp::InsertSession(session("s2")),
            WriteOp::InsertSession(session("s3")),
        ])
        .await
        .unwrap();
    assert_eq!(other.enrollment("e1").await.unwrap(), Some(enrollment));

    // Only the fields given change.
    store
        .write(vec![WriteOp::UpdatePrincipal {
            principal_id: "u1".into(),
            disabled: Some(true),
            locked: None,
            failed_logins: Some(0),
        }])
        .await
        .unwrap();
    let updated = other.principal_by_id("u1").await.unwrap().unwrap();
    assert_eq!(
        (updated.disabled, updated.locked, updated.failed_logins),
        (true, true, 0)
    );

    store
        .write(vec![WriteOp::SetEnrollmentPendingTotp {
            token_hash: "e1".into(),
            sealed: vec![1, 2],
        }])
        .await
        .unwrap();
    let pending = other.enrollment("e1").await.unwrap().unwrap();
    assert_eq!(pending.pending_totp_sealed, Some(vec![1, 2]));
    let unknown_enrollment = WriteOp::SetEnrollmentPendingTotp {
        token_hash: "e2".into(),
        sealed: vec![3],
    };
    assert!(matches!(
        store.write(vec![unknown_enrollment]).await,
        Err(StoreError::Conflict)
    ));

    store
        .write(vec![
            WriteOp::DeleteEnrollments {
                principal_id: "u1".into(),
            },
            WriteOp::DeleteCredential {
                principal_id: "u1".into(),
            },
            WriteOp::RevokeSession {
                token_hash: "s1".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(other.enrollment("e1").await.unwrap(), None);
    assert!(other.credential("u1").await.unwrap().is_none());
    let revoked =
        |token: &'static str| async move { other.session(token).await.unwrap().unwrap().revoked };
    assert!(revoked("s1").await && !revoked("s2").await && !revoked("s3").await);
    store
        .write(vec![WriteOp::RevokeSessions {
            principal_id: "u1".into(),
        }])
        .await
        .unwrap();
    assert!(revoked("s2").await && revoked("s3").await);

    api_keys_revoke_once(store, other).await;
    organizations_and_grants(store, other).await;
}

async fn api_keys_revoke_once(store: &dyn Store, other: &dyn Store) {
    let key = ApiKeyRow {
        name: "feed".into(),
        key_hash: "kh".into(),
        owner_id: Some("u1".into()),
        scopes: vec!["Patient.r".into()],
        allowed_cidrs: Vec::new(),
        expires_at: 100,
        revoked: false,
        created_at: 1,
        client_cert_sha256: None,
    };
    store.write(vec![WriteOp::InsertApiKey(key)]).await.unwrap();
    let revoke = || WriteOp::RevokeApiKey {
        name: "feed".into(),
    };
    store.write(vec![revoke()]).await.unwrap();
    assert!(other.api_key_by_hash("kh").await.unwrap().unwrap().revoked);
    let unknown = WriteOp::RevokeApiKey {
        name: "nobody".into(),
    };
    assert!(matches!(
        store.write(vec![unknown]).await,
        Err(StoreError::Conflict)
    ));
}

async fn organizations_and_grants(store: &dyn Store, other: &dyn Store) {
    let set = |organization: Option<&str>| WriteOp::SetCompartmentOrganization {
        compartment: "Patient/p1".into(),
        organization: organization.map(Into::into),
    };
    store.write(vec![set(Some("org-a"))]).await.unwrap();
    store.write(vec![set(Some("org-b"))]).await.unwrap();
    assert_eq!(
        other.compartment_organization("Patient/p1").await.unwrap(),
        Some(Some("org-b".into()))
    );
    store.write(vec![set(None)]).await.unwrap();
    assert_eq!(
        other.compartment_organization("Patient/p1").await.unwrap(),
        Some(None)
    );

    let grant = BreakGlassRow {
        principal_id: "u1".into(),
        until: 50,
        patient: Some("Patient/p1".into()),
        reason: "sealed-reason".into(),
        created_at: 10,
    };
    store
        .write(vec![WriteOp::InsertBreakGlass(grant.clone())])
        .await
        .unwrap();
    assert_eq!(other.break_glass_grants("u1", 20).await.unwrap(), [grant]);
    assert!(other.break_glass_grants("u1", 60).await.unwrap().is_empty());
}
