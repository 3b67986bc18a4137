//! String parameters: normalization (case, accents, whitespace) and the values of names and
//! other text.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::{member, selected};
use super::params::{Kind, ParamDef};

/// Longest normalized string prefix, in characters, stored as an index key.
pub const MAX_STRING_PREFIX: usize = 12;

/// Normalizes a string for matching: accents of Latin letters removed (Latin-1 and Latin
/// Extended-A letters mapped to their base letters, `ß` to `ss`, `æ` to `ae`, ...; combining
/// marks dropped), lowercased, whitespace runs collapsed to one space, trimmed.
#[must_use]
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        for lower in c.to_lowercase() {
            if is_combining(lower) {
                continue;
            }
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            match fold_latin(lower) {
                Some(base) => out.push_str(base),
                None => out.push(lower),
            }
        }
    }
    out
}

fn is_combining(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Base letters of U+00C0..=U+00FF; `&` = "ae", `!` = "th", `$` = "ss", `*` = keep.
const LATIN_1: &[u8; 64] = b"aaaaaa&ceeeeiiiidnooooo*ouuuuy!$aaaaaa&ceeeeiiiidnooooo*ouuuuy!y";
/// Base letters of U+0100..=U+017F; `#` = "ij", `%` = "oe".
const LATIN_EXTENDED_A: &[u8; 128] = b"aaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiii##jjkkkllllllllllnnnnnnnnnoooooo%%rrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzzs";

fn fold_latin(c: char) -> Option<&'static str> {
    let code = u32::from(c);
    let byte = match code {
        0xC0..=0xFF => LATIN_1.get(usize::try_from(code - 0xC0).ok()?)?,
        0x100..=0x17F => LATIN_EXTENDED_A.get(usize::try_from(code - 0x100).ok()?)?,
        _ => return None,
    };
    Some(match byte {
        b'&' => "ae",
        b'!' => "th",
        b'$' => "ss",
        b'#' => "ij",
        b'%' => "oe",
        b'a' => "a",
        b'c' => "c",
        b'd' => "d",
        b'e' => "e",
        b'g' => "g",
        b'h' => "h",
        b'i' => "i",
        b'j' => "j",
        b'k' => "k",
        b'l' => "l",
        b'n' => "n",
        b'o' => "o",
        b'r' => "r",
        b's' => "s",
        b't' => "t",
        b'u' => "u",
        b'w' => "w",
        b'y' => "y",
        b'z' => "z",
        _ => return None,
    })
}

/// The string members of a HumanName or an Address that a parameter over the whole datatype
/// searches (none for other kinds).
pub(super) fn parts_of(kind: &Kind) -> &'static [&'static str] {
    match kind {
        Kind::HumanName => &["family", "given", "prefix", "suffix", "text"],
        Kind::Address => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => &[],
    }
}

/// The string values of a string parameter, as written.
pub(super) fn strings<'a>(def: &ParamDef, resource: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in &def.paths {
        for value in selected(resource, &path.segs) {
            let parts = match path.kind {
                Kind::HumanName | Kind::Address => parts_of(&path.kind),
                Kind::Str => {
                    out.extend(value.as_str());
                    continue;
                }
                _ => continue,
            };
            for part in parts {
                out.extend(member(value, part).into_iter().filter_map(Value::as_str));
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The index keys of a string parameter: `p:` + every prefix of a normalized value up to
/// [`MAX_STRING_PREFIX`] characters, and `f:` + the whole value when it is longer.
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for value in strings(def, resource) {
        let norm = normalize_string(value);
        let mut prefix = String::new();
        for (count, c) in norm.chars().enumerate() {
            if count >= MAX_STRING_PREFIX {
                keys.insert(format!("f:{norm}"));
                break;
            }
            prefix.push(c);
            keys.insert(format!("p:{prefix}"));
        }
    }
}

/// The candidate key of a normalized string value (`exact`: with `:exact`; see
/// [`candidate_keys`](super::candidate_keys)).
pub(super) fn candidate_keys(norm: &str, exact: bool) -> Vec<String> {
    let length = norm.chars().count();
    vec![if exact && length > MAX_STRING_PREFIX {
        format!("f:{norm}")
    } else {
        let prefix: String = norm.chars().take(MAX_STRING_PREFIX).collect();
        format!("p:{prefix}")
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize_string("  Müller  "), "muller");
        assert_eq!(normalize_string("MÜLLER"), "muller");
        assert_eq!(normalize_string("Mu\u{0308}ller"), "muller");
        assert_eq!(normalize_string("José\t  María\n"), "jose maria");
        assert_eq!(normalize_string("Łódź Straße"), "lodz strasse");
        assert_eq!(
            normalize_string("Ærøskøbing Œuvre ĲSSEL"),
            "aeroskobing oeuvre ijssel"
        );
        assert_eq!(normalize_string("Þór Ðiđ ſ Ÿ İ"), "thor did s y i");
        assert_eq!(normalize_string("Smith-Jones"), "smith-jones");
        assert_eq!(normalize_string("× ÷"), "× ÷");
        assert_eq!(normalize_string("ΣΟΦΊΑ"), "σοφία");
        assert_eq!(normalize_string(" \u{0301} "), "");
        // Every Latin-1 and Latin Extended-A letter folds to ASCII.
        for code in (0xC0..=0x17F_u32).filter(|c| *c != 0xD7 && *c != 0xF7) {
            let c = char::from_u32(code).expect("char");
            let folded = normalize_string(&c.to_string());
            assert!(
                folded.bytes().all(|b| b.is_ascii_lowercase()),
                "{c} -> {folded}"
            );
        }
    }
}
