//! Recovery codes: the one-time second factors handed out at enrollment.

use crate::error::Result;

/// Recovery codes: 80 random bits as four groups of four base32 characters.
pub(super) fn new_recovery_code() -> Result<String> {
    let bytes: [u8; 10] = carevault_crypto::random_bytes()?;
    let b32 = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}",
        &b32[0..4],
        &b32[4..8],
        &b32[8..12],
        &b32[12..16]
    ))
}

/// Accept recovery codes with or without dashes, in either case.
pub(super) fn normalize_recovery_code(code: &str) -> String {
    let compact: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if compact.len() != 16
        || !compact
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        return String::new();
    }
    format!(
        "{}-{}-{}-{}",
        &compact[0..4],
        &compact[4..8],
        &compact[8..12],
        &compact[12..16]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_normalize() {
        let code = new_recovery_code().unwrap();
        assert_eq!(code.len(), 19);
        assert_eq!(normalize_recovery_code(&code), code);
        assert_eq!(
            normalize_recovery_code(&code.to_uppercase().replace('-', "")),
            code
        );
        assert_eq!(normalize_recovery_code("123456"), "");
    }
}
