//! Crypto-shredding a patient: two admins, one destroyed data key.
//!
//! A second admin approves first (`approve`): the server issues a short-lived, one-time approval
//! token (`cva_...`), stored only as its SHA-256 hash with the compartment and the approver. The
//! shredding admin passes it (`shred`); it is refused when it is unknown, expired, already used,
//! issued for another patient, or issued by the same admin who shreds. Then the keyring records
//! the shred in its own directory (so restoring an older database cannot undo it), forgets the
//! key, and the store deletes the wrapped key, every version sealed under it and their search
//! index rows, in one transaction with the audit event.

use carevault_store::{ShredApprovalRow, Store, WriteOp};

use crate::audit::AuditScope;
use crate::clock::SharedClock;
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::keyring::{Keyring, NewDataKeys};
use data_encoding::BASE64;

/// How long an approval token stays valid.
pub const APPROVAL_TTL_SECS: i64 = 15 * 60;
pub const APPROVAL_PREFIX: &str = "cva_";
const MIN_REASON_CHARS: usize = 10;
const MAX_REASON_CHARS: usize = 2000;

/// A fresh approval, shown once to the approving admin.
pub struct Approval {
    pub token: String,
    pub expires_at: i64,
}

/// `Patient/<id>` from a path id, parsed (the id is never echoed in errors).
pub fn patient_compartment(id: &str) -> Result<Compartment> {
    let id = crate::compartment::parse_patient(id)
        .ok_or_else(|| Error::BadRequest("not a valid Patient id".into()))?;
    Ok(Compartment::patient(&id))
}

/// What a shred works with.
pub struct Services<'a> {
    pub store: &'a dyn Store,
    pub keyring: &'a Keyring,
    pub clock: &'a SharedClock,
}

pub async fn approve(
    Services {
        store,
        keyring,
        clock,
    }: Services<'_>,
    audit: &AuditScope,
    approver: &Principal,
    compartment: &Compartment,
) -> Result<Approval> {
    audit.add_patient(compartment);
    if !keyring.compartment_has_key(compartment).await? {
        return Err(Error::NotFound);
    }
    let token = carevault_crypto::random_token(APPROVAL_PREFIX)?;
    let expires_at = clock.now_secs() + APPROVAL_TTL_SECS;
    audit
        .commit_with(
            store,
            vec![WriteOp::InsertShredApproval(ShredApprovalRow {
                token_hash: carevault_crypto::sha256_hex(token.as_bytes()),
                compartment: compartment.to_string(),
                approver_id: approver.id.clone(),
                expires_at,
                used: false,
            })],
            201,
        )
        .await?;
    Ok(Approval { token, expires_at })
}

pub async fn shred(
    Services {
        store,
        keyring,
        clock,
    }: Services<'_>,
    audit: &AuditScope,
    requester: &Principal,
    compartment: &Compartment,
    reason: &str,
    approval_token: &str,
) -> Result<()> {
    audit.add_patient(compartment);
    let reason = reason.trim();
    let chars = reason.chars().count();
    if !(MIN_REASON_CHARS..=MAX_REASON_CHARS).contains(&chars) {
        return Err(Error::BadRequest(format!(
            "a reason of {MIN_REASON_CHARS} to {MAX_REASON_CHARS} characters is required"
        )));
    }
    if !keyring.compartment_has_key(compartment).await? {
        return Err(Error::NotFound);
    }
    let token_hash = carevault_crypto::sha256_hex(approval_token.trim().as_bytes());
    let approval = store.shred_approval(&token_hash).await?;
    let invalid = || {
        Error::BadRequest(
            "the approval token is not valid for this shred (unknown, expired, already used, or issued for another patient)"
                .into(),
        )
    };
    let Some(approval) = approval else {
        return Err(invalid());
    };
    if approval.used
        || approval.compartment != compartment.as_str()
        || approval.expires_at <= clock.now_secs()
    {
        return Err(invalid());
    }
    if approval.approver_id == requester.id {
        return Err(Error::BadRequest(
            "a shred needs the approval of a second admin; you cannot approve your own".into(),
        ));
    }
    // Consume the approval first: of two concurrent shreds with one token, one proceeds.
    store
        .write(vec![WriteOp::ConsumeShredApproval { token_hash }])
        .await
        .map_err(|_| invalid())?;
    audit.add_detail("approved_by", approval.approver_id.clone());
    // Free text may name the patient, so the trail never holds it in clear: it keeps the keyed
    // digest (to find the shred given the reason) and the reason sealed under the environment's
    // data key (readable with the keyring, bound to this compartment).
    audit.add_digest("reason_digest", reason);
    // The environment's data key, if this makes it, commits with the shred or not at all.
    let new_keys = NewDataKeys::default();
    let (_, sealed) = keyring
        .seal_in(
            &new_keys,
            &Compartment::environment(),
            &reason_aad(keyring, compartment),
            reason.as_bytes(),
        )
        .await?;
    audit.add_detail("reason_sealed", BASE64.encode(&sealed));
    let shred = keyring
        .shred(compartment, &requester.id, &approval.approver_id)
        .await?;
    let written = audit
        .commit_with(store, new_keys.before(vec![shred]), 200)
        .await;
    keyring.settle(&new_keys, &written);
    Ok(written?)
}

fn reason_aad(keyring: &Keyring, compartment: &Compartment) -> Vec<u8> {
    format!(
        "carevault-shred-reason\0{}\0{compartment}",
        keyring.env_id()
    )
    .into_bytes()
}

/// Open a shred reason sealed in an audit event (`reason_sealed`, base64).
pub async fn open_reason(
    keyring: &Keyring,
    compartment: &Compartment,
    sealed_b64: &str,
) -> Result<String> {
    let sealed = BASE64
        .decode(sealed_b64.trim().as_bytes())
        .map_err(|_| Error::BadRequest("not a sealed reason".into()))?;
    let plain = keyring
        .open(&reason_aad(keyring, compartment), &sealed)
        .await?;
    String::from_utf8(plain).map_err(|_| Error::Integrity("sealed reason is not text".into()))
}
