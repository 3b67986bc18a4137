//! US ZIP codes under Safe Harbor (45 CFR 164.514(b)(2)(i)(B)): the first three digits are
//! kept, or `000` where the three-digit area held 20,000 people or fewer (the HHS list, vendored
//! in `vendor/deid/`).

/// The vendored list: one three-digit prefix a line, `#` comments.
const RESTRICTED: &str = include_str!("../../../../vendor/deid/restricted-zip3.txt");

/// The Safe Harbor form of a US ZIP code (`12345` or `12345-6789`); None for anything else
/// (which the caller removes).
pub(super) fn generalize(postal_code: &str) -> Option<String> {
    let digits = postal_code.as_bytes();
    let well_formed = match digits.len() {
        5 => digits.iter().all(u8::is_ascii_digit),
        10 => {
            digits[..5].iter().all(u8::is_ascii_digit)
                && digits[5] == b'-'
                && digits[6..].iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if !well_formed {
        return None;
    }
    let prefix = postal_code.get(..3)?;
    if is_restricted(prefix) {
        Some("000".to_owned())
    } else {
        Some(prefix.to_owned())
    }
}

fn is_restricted(prefix: &str) -> bool {
    RESTRICTED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|l| l == prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_list_has_the_seventeen_prefixes_of_the_guidance() {
        let prefixes: Vec<&str> = RESTRICTED
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(prefixes.len(), 17);
        assert!(
            prefixes
                .iter()
                .all(|p| p.len() == 3 && p.bytes().all(|b| b.is_ascii_digit()))
        );
    }

    #[test]
    fn zip_codes_keep_three_digits_or_become_000() {
        assert_eq!(generalize("02139").as_deref(), Some("021"));
        assert_eq!(generalize("02139-4307").as_deref(), Some("021"));
        for restricted in ["03601", "05901", "69201", "89301-1234", "82101"] {
            assert_eq!(
                generalize(restricted).as_deref(),
                Some("000"),
                "{restricted}"
            );
        }
        for other in ["", "0213", "021390", "SW1A 1AA", "02139 4307", "K1A 0B1"] {
            assert_eq!(generalize(other), None, "{other}");
        }
    }
}
