//! Password policy and Argon2id hashing.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::Argon2Params;
use crate::error::{Error, Result};

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 256;

/// Check a new password against the policy. Messages say what is wrong, never echo the password.
pub fn check_policy(password: &str, username: &str) -> Result<()> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(Error::BadRequest(format!(
            "password must be at least {MIN_CHARS} characters"
        )));
    }
    if chars > MAX_CHARS {
        return Err(Error::BadRequest(format!(
            "password must be at most {MAX_CHARS} characters"
        )));
    }
    if password.to_lowercase().contains(&username.to_lowercase()) {
        return Err(Error::BadRequest(
            "password must not contain the username".into(),
        ));
    }
    let entropy = zxcvbn::zxcvbn(password, &[username, "carevault"]);
    if is_common_password(&entropy, password) {
        return Err(Error::BadRequest(
            "password is on a list of common passwords".into(),
        ));
    }
    if entropy.score() < zxcvbn::Score::Three {
        return Err(Error::BadRequest(
            "password is too easy to guess; use a longer passphrase of unrelated words".into(),
        ));
    }
    Ok(())
}

/// True when the whole password is one entry of zxcvbn's common-password list (possibly
/// reversed or in l33t speak). zxcvbn keeps its dictionary type in a private module, so the
/// dictionary is recognized by its name.
fn is_common_password(entropy: &zxcvbn::Entropy, password: &str) -> bool {
    let len = password.chars().count();
    entropy.sequence().iter().any(|m| {
        m.i == 0
            && m.j + 1 == len
            && matches!(&m.pattern, zxcvbn::matching::patterns::MatchPattern::Dictionary(d)
                if format!("{:?}", d.dictionary_name) == "Passwords")
    })
}

#[derive(Clone)]
pub struct PasswordHasherConfig {
    argon2: Argon2<'static>,
}

impl PasswordHasherConfig {
    pub fn new(p: Argon2Params) -> Result<Self> {
        let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
            .map_err(|e| Error::Internal(format!("argon2 parameters: {e}")))?;
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
    }

    pub fn hash(&self, password: &str) -> Result<String> {
        let salt: [u8; 16] = carevault_crypto::random_bytes()?;
        self.argon2
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("argon2: {e}")))
    }

    /// Verify against a stored PHC string. The parameters stored in the hash are used, so
    /// hashes made under older settings keep working.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(parsed) => self
                .argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(check_policy("short", "alice").is_err());
        assert!(check_policy(&"x".repeat(257), "alice").is_err());
        assert!(check_policy("alice-correct-horse-battery", "alice").is_err());
        assert!(check_policy("passwordpassword", "alice").is_err());
        assert!(check_policy("123456789012", "alice").is_err());
        assert!(check_policy("aaaaaaaaaaaaaaaa", "alice").is_err());
        assert!(check_policy("tangerine-obelisk-harmonica-71", "alice").is_ok());
        let msg = check_policy("Canary-Pw-1", "alice")
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("Canary"));
    }

    #[test]
    fn hash_and_verify() {
        let hasher = PasswordHasherConfig::new(Argon2Params {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        let phc = hasher.hash("tangerine-obelisk-harmonica-71").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(hasher.verify("tangerine-obelisk-harmonica-71", &phc));
        assert!(!hasher.verify("tangerine-obelisk-harmonica-72", &phc));
        assert!(!hasher.verify("x", "not a hash"));
    }
}
