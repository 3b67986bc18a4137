//! The de-identified view. A principal who sees de-identified data (a developer, see
//! [`Principal::sees_deidentified`](crate::identity::Principal::sees_deidentified)) gets every
//! version that leaves the records service through [`Records::released`]: its JSON
//! de-identified by the Safe Harbor transform of `carevault_fhir::deid`, its id (which the API
//! layer puts in URLs, `fullUrl`s and `Location`) replaced by the same keyed pseudonym the
//! transform gives it, and its last-update time reduced to its year. Every public read of the
//! service (read, vread, history, search, compartment search, `$everything`, and therefore a
//! batch's GET entries) returns through it, so no API path can forget it; the secret is the
//! environment's `deidentify` keyring secret, never logged.
//!
//! Searches that would be an oracle on identifying values are refused (see
//! `carevault_fhir::deid::search_refusal`), and the audit event of every such read carries
//! the detail `deidentified=safe-harbor`.

use carevault_crypto::{DataKey, envelope, hmac_sha256};
use carevault_fhir::ResourceId;
use carevault_fhir::deid::{
    DateHandling, DeidOptions, Deidentifier, search_refusal, year_start_us,
};
use carevault_fhir::search::Query;
use serde_json::Value;

use super::{Caller, Records, Version};
use crate::audit::AuditScope;
use crate::error::{Error, Result};

/// The audit detail of a de-identified read.
const AUDIT_KEY: &str = "deidentified";
const AUDIT_VALUE: &str = "safe-harbor";
/// Associated data of a sealed paging cursor.
const CURSOR_AAD: &[u8] = b"carevault-deid-cursor";
/// Domain separation of linked exports' secrets from the environment's de-identification secret.
const LINK_LABEL: &[u8] = b"carevault-export-link\0";

/// Marks an audit event as one whose answer was de-identified (once): a developer's read, or a
/// de-identified export.
pub(crate) fn mark_deidentified(audit: &AuditScope) {
    mark_deidentified_as(audit, AUDIT_VALUE);
}

/// [`mark_deidentified`], naming how (`safe-harbor`, `shifted-dates`).
pub(crate) fn mark_deidentified_as(audit: &AuditScope, method: &str) {
    let marked = audit.read(|r| r.detail.iter().any(|(k, _)| k == AUDIT_KEY));
    if !marked {
        audit.add_detail(AUDIT_KEY, method.to_owned());
    }
}

impl Records {
    /// Marks the audit event of a read by a principal who sees de-identified data (once).
    pub(super) fn note_deidentified(&self, caller: Caller<'_>) {
        if caller.principal.sees_deidentified() {
            mark_deidentified(caller.audit);
        }
    }

    /// Refuses a search by a principal who sees de-identified data when it would single a
    /// person out (403, naming the rule).
    pub(super) fn check_deidentified_search(
        &self,
        caller: Caller<'_>,
        query: &Query,
    ) -> Result<()> {
        if !caller.principal.sees_deidentified() {
            return Ok(());
        }
        self.note_deidentified(caller);
        match search_refusal(query) {
            Some(rule) => Err(Error::ForbiddenBecause(rule.to_owned())),
            None => Ok(()),
        }
    }

    /// `v` as it may leave the service for `caller` (unchanged for everyone else).
    pub(super) fn released(&self, caller: Caller<'_>, mut v: Version) -> Result<Version> {
        if !caller.principal.sees_deidentified() {
            return Ok(v);
        }
        self.note_deidentified(caller);
        let deid = self.deidentifier()?;
        if !v.deleted {
            let resource: Value = serde_json::from_slice(&v.json)
                .map_err(|_| Error::Integrity("stored resource is not JSON".into()))?;
            let out = deid
                .deidentify(&resource)
                .map_err(|e| Error::Internal(format!("de-identification: {e}")))?;
            v.json = serde_json::to_vec(&out)
                .map_err(|_| Error::Internal("de-identified resource does not serialize".into()))?;
        }
        v.id = ResourceId::parse(&deid.pseudonym(v.rtype.as_str(), v.id.as_str()))
            .map_err(|_| Error::Internal("pseudonym is not a valid id".into()))?;
        v.last_updated_us = year_start_us(v.last_updated_us);
        Ok(v)
    }

    /// [`Self::released`] for each of `versions`.
    pub(super) fn released_all(
        &self,
        caller: Caller<'_>,
        versions: Vec<Version>,
    ) -> Result<Vec<Version>> {
        versions
            .into_iter()
            .map(|v| self.released(caller, v))
            .collect()
    }

    /// A paging cursor as it may leave the service for `caller`: a search cursor holds the last
    /// entry's real id and sort keys, so a developer's is sealed (AES-256-GCM under a key derived
    /// from the de-identification secret) and opaque to them.
    pub(super) fn sealed_cursor(
        &self,
        caller: Caller<'_>,
        cursor: Option<String>,
    ) -> Result<Option<String>> {
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        if !caller.principal.sees_deidentified() {
            return Ok(Some(cursor));
        }
        let sealed = envelope::seal(
            &self.cursor_key()?.cipher(),
            0,
            CURSOR_AAD,
            cursor.as_bytes(),
        )
        .map_err(|_| Error::Internal("cannot seal a paging cursor".into()))?;
        Ok(Some(data_encoding::BASE64URL_NOPAD.encode(&sealed)))
    }

    /// The cursor `caller` sent, as [`Self::sealed_cursor`] made it (opened for a developer).
    pub(super) fn opened_cursor(
        &self,
        caller: Caller<'_>,
        cursor: Option<&str>,
    ) -> Result<Option<String>> {
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        if !caller.principal.sees_deidentified() {
            return Ok(Some(cursor.to_owned()));
        }
        let bad = || Error::BadRequest("the paging cursor is not valid".into());
        let sealed = data_encoding::BASE64URL_NOPAD
            .decode(cursor.as_bytes())
            .map_err(|_| bad())?;
        let plain =
            envelope::open(&self.cursor_key()?.cipher(), CURSOR_AAD, &sealed).map_err(|_| bad())?;
        String::from_utf8(plain).map(Some).map_err(|_| bad())
    }

    fn cursor_key(&self) -> Result<DataKey> {
        DataKey::from_bytes(&hmac_sha256(self.secret()?, b"carevault-deid-cursor-key"))
            .map_err(|_| Error::Internal("cursor key".into()))
    }

    /// The de-identification secret; without one, a developer's read fails (never unkeyed).
    fn secret(&self) -> Result<&[u8; 32]> {
        self.deid_secret
            .as_deref()
            .ok_or_else(|| Error::Internal("no de-identification secret".into()))
    }

    /// The transform under the environment's secret, ages counted to the current year.
    fn deidentifier(&self) -> Result<Deidentifier> {
        self.deidentifier_under(self.secret()?, DateHandling::YearOnly)
    }

    /// The transform under `secret` (an export's own), ages counted to the current year.
    pub fn deidentifier_under(
        &self,
        secret: &[u8; 32],
        dates: DateHandling,
    ) -> Result<Deidentifier> {
        let year = crate::clock::fhir_instant(self.clock.now_us())
            .get(..4)
            .and_then(|y| y.parse().ok())
            .ok_or_else(|| Error::Internal("clock year".into()))?;
        Deidentifier::new(secret, DeidOptions::safe_harbor(year).with_dates(dates))
            .map_err(|e| Error::Internal(format!("de-identification: {e}")))
    }

    /// The pseudonym secret of the linked exports of `principal` (an id) under `label`: derived
    /// from the environment's de-identification secret, so the same principal and label give the
    /// same pseudonyms in every export, and no other principal's label reaches them.
    pub fn export_link_secret(&self, principal: &str, label: &str) -> Result<[u8; 32]> {
        let mut message = LINK_LABEL.to_vec();
        message.extend_from_slice(&(principal.len() as u64).to_be_bytes());
        message.extend_from_slice(principal.as_bytes());
        message.extend_from_slice(label.as_bytes());
        Ok(hmac_sha256(self.secret()?, &message))
    }
}
