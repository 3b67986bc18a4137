//! [`check_depth`]: a cheap guard against deeply nested JSON, run before parsing.

use crate::FhirError;

/// Refuses JSON nested deeper than `max_depth` levels of arrays and objects.
///
/// Scans the raw bytes once, before any parsing into memory, without allocating. Brackets inside
/// strings are skipped, including strings containing escaped quotes (`\"`) and backslashes
/// (`\\`). `{}` has depth 1, `{"a":[1]}` depth 2, a bare scalar depth 0.
///
/// This is not a JSON validator: malformed input (unbalanced brackets, invalid UTF-8, ...) is
/// left for the parser to reject; the only guarantee is that input passing this check does not
/// nest containers deeper than `max_depth`.
///
/// # Errors
///
/// [`FhirError::TooDeep`] as soon as the depth exceeds `max_depth`.
///
/// # Example
///
/// ```
/// use carevault_fhir::{check_depth, FhirError};
///
/// assert!(check_depth(br#"{"a":[1,"]]]]"]}"#, 2).is_ok());
/// assert_eq!(check_depth(b"[[[]]]", 2), Err(FhirError::TooDeep { max: 2 }));
/// ```
pub fn check_depth(bytes: &[u8], max_depth: usize) -> Result<(), FhirError> {
    let mut depth: usize = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(FhirError::TooDeep { max: max_depth });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(std::iter::repeat_n(b'[', depth));
        v.extend(std::iter::repeat_n(b']', depth));
        v
    }

    #[test]
    fn depth_of_simple_documents() {
        assert!(check_depth(b"{}", 1).is_ok());
        assert_eq!(check_depth(b"{}", 0), Err(FhirError::TooDeep { max: 0 }));
        assert!(check_depth(br#"{"a":[1]}"#, 2).is_ok());
        assert_eq!(
            check_depth(br#"{"a":[1]}"#, 1),
            Err(FhirError::TooDeep { max: 1 })
        );
        assert!(check_depth(b"42", 0).is_ok());
        assert!(check_depth(b"\"x\"", 0).is_ok());
        assert!(check_depth(b"", 0).is_ok());
    }

    #[test]
    fn siblings_do_not_add_up() {
        assert!(check_depth(br#"[[1],[2],{"a":{}},[[]]]"#, 3).is_ok());
        assert!(check_depth(br#"[[1],[2],{"a":{}},[[]]]"#, 2).is_err());
    }

    #[test]
    fn exact_limit_and_limit_plus_one() {
        for max in [1, 2, 10, 64, 100] {
            assert!(check_depth(&nested(max), max).is_ok());
            assert_eq!(
                check_depth(&nested(max + 1), max),
                Err(FhirError::TooDeep { max })
            );
        }
    }

    #[test]
    fn brackets_inside_strings_are_ignored() {
        assert!(check_depth(br#"{"a":"[[[[{{{{"}"#, 1).is_ok());
        assert!(check_depth(br#"{"[[[[":"]]]]"}"#, 1).is_ok());
        // A closing bracket in a string must not hide real depth either.
        assert!(check_depth(br#"[[["]]]]]]"]]]"#, 2).is_err());
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        // The string is `a"[[[` : the escaped quote does not close it.
        assert!(check_depth(br#"{"k":"a\"[[["}"#, 1).is_ok());
        // Many escaped quotes in a row.
        assert!(check_depth(br#"["\"\"\"[[[\"\"{{"]"#, 1).is_ok());
    }

    #[test]
    fn escaped_backslash_before_quote_ends_string() {
        // The string is `a\` : `\\` is an escaped backslash, the next quote closes the string,
        // so the following brackets are real.
        assert!(check_depth(br#"["a\\",[[]]]"#, 3).is_ok());
        assert_eq!(
            check_depth(br#"["a\\",[[]]]"#, 2),
            Err(FhirError::TooDeep { max: 2 })
        );
        // `\\\"` is an escaped backslash then an escaped quote: still inside the string.
        assert!(check_depth(br#"["a\\\"[[[["]"#, 1).is_ok());
    }

    #[test]
    fn unicode_escapes_are_plain_characters() {
        assert!(check_depth(br#"["\u005b\u007b\u0022"]"#, 1).is_ok());
    }

    #[test]
    fn non_utf8_bytes_are_tolerated() {
        let mut doc = b"[\"".to_vec();
        doc.extend([0xff, 0xfe, 0x80, b'[', 0xc3]);
        doc.extend(b"\"]");
        assert!(check_depth(&doc, 1).is_ok());
        let mut deep = vec![0xff, b'[', 0x80, b'[', 0xfe];
        deep.extend(b"]]");
        assert!(check_depth(&deep, 1).is_err());
        assert!(check_depth(&deep, 2).is_ok());
    }

    #[test]
    fn unbalanced_input_does_not_underflow() {
        assert!(check_depth(b"]]]]}}}}[", 1).is_ok());
        assert!(check_depth(b"]]]][[", 1).is_err());
    }

    #[test]
    fn unterminated_string_hides_the_rest() {
        // Everything after an unterminated quote is string content; the parser rejects it.
        assert!(check_depth(b"[\"[[[[", 1).is_ok());
    }

    #[test]
    fn very_deep_input_is_refused_quickly() {
        let doc = nested(1_000_000);
        assert_eq!(check_depth(&doc, 64), Err(FhirError::TooDeep { max: 64 }));
    }
}
