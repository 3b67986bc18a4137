//! The blind index: search without plaintext in the database.
//!
//! For each resource, `carevault_fhir::search::index_keys` yields normalized index keys (token
//! codes, reference targets, string prefixes, calendar buckets, units). The database stores only
//! `HMAC-SHA-256(K(type, param), key)` truncated to [`TOKEN_LEN`] bytes, where `K(type, param)` is
//! derived from the keyring's search secret. A query's values become the same tokens; candidates
//! are decrypted and checked exactly, so truncation collisions never reach a result.
//!
//! What someone holding the database learns: which resources share an index key (equality) and
//! how often a key occurs (frequency) within one (type, parameter) - never the key itself.

use std::collections::HashMap;
use std::sync::RwLock;

use carevault_fhir::ResourceType;
use carevault_fhir::search::{Clause, ParamDef, candidate_keys, index_keys};
use carevault_store::IndexClause;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::keyring::Keyring;

/// Bytes kept of each HMAC: enough to make collisions rare (they are filtered anyway), short
/// enough to keep the index small.
pub const TOKEN_LEN: usize = 8;

type DerivedKey = Zeroizing<[u8; 32]>;

pub struct SearchIndex {
    secret: Zeroizing<[u8; 32]>,
    /// (type, param) -> derived key.
    keys: RwLock<HashMap<(ResourceType, String), DerivedKey>>,
}

impl SearchIndex {
    pub async fn open(keyring: &Keyring) -> Result<Self> {
        Ok(Self {
            secret: keyring.secret("search-index").await?,
            keys: RwLock::new(HashMap::new()),
        })
    }

    fn key(&self, rtype: ResourceType, param: &str) -> Zeroizing<[u8; 32]> {
        if let Some(k) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(rtype, param.to_owned()))
        {
            return k.clone();
        }
        let derived = Zeroizing::new(carevault_crypto::hmac_sha256(
            self.secret.as_ref(),
            format!("carevault-search-key\0{}\0{param}", rtype.as_str()).as_bytes(),
        ));
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((rtype, param.to_owned()), derived.clone());
        derived
    }

    fn token(&self, rtype: ResourceType, param: &str, key: &str) -> Vec<u8> {
        let k = self.key(rtype, param);
        carevault_crypto::hmac_sha256(k.as_ref(), key.as_bytes())[..TOKEN_LEN].to_vec()
    }

    /// The index entries of a resource version.
    pub fn entries(
        &self,
        rtype: ResourceType,
        resource: &serde_json::Value,
    ) -> Vec<(String, Vec<u8>)> {
        index_keys(rtype, resource)
            .into_iter()
            .map(|(param, key)| (param.to_owned(), self.token(rtype, param, &key)))
            .collect()
    }

    /// The index lookup for one clause (any of its values), or None if some value cannot be
    /// answered from the index (then the clause is checked on decrypted candidates only).
    pub fn lookup(&self, rtype: ResourceType, clause: &Clause) -> Option<IndexClause> {
        let mut keys = Vec::new();
        for value in &clause.values {
            keys.extend(candidate_keys(clause, value)?);
        }
        Some(self.rows_of(rtype, clause.param, &keys))
    }

    /// The lookup of the resources of `rtype` whose reference parameter `param` names
    /// `reference` (`Type/id`), as `_revinclude` asks.
    pub fn referring(&self, rtype: ResourceType, param: &ParamDef, reference: &str) -> IndexClause {
        // The index key of a reference (see carevault_fhir::search's key scheme).
        self.rows_of(rtype, param, &[format!("r:{reference}")])
    }

    /// The rows holding `keys` of `param`: those of the parameter they are stored under (its
    /// own, or its host's: `patient` is answered from `subject`'s rows, see
    /// `ParamDef::stored_as`). Every lookup goes through here, so none can miss the mapping.
    fn rows_of(&self, rtype: ResourceType, param: &ParamDef, keys: &[String]) -> IndexClause {
        let mut tokens: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| self.token(rtype, param.stored_as, key))
            .collect();
        tokens.sort();
        tokens.dedup();
        IndexClause {
            param: param.stored_as.to_owned(),
            tokens,
        }
    }
}
