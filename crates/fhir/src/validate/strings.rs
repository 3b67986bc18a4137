//! FHIR R4's rules for every string, which the JSON schema's patterns do not enforce: a length
//! limit, and no control characters but tab, line feed and carriage return.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Issues, is_plain_name};

pub(crate) const MSG_STRING_TOO_LONG: &str = "too long for a FHIR string";
pub(crate) const MSG_CONTROL_CHARACTER: &str = "contains a control character";

/// The longest string FHIR R4 allows: "Strings SHALL NOT exceed 1MB (1024*1024 characters)".
pub const MAX_STRING_CHARS: usize = 1024 * 1024;

/// Checks every string in `value` (at `location`) against R4's rules for strings: at most
/// [`MAX_STRING_CHARS`] characters, and no character below U+0020 but tab, line feed and
/// carriage return (which the schema's patterns let through). Issues name the element, never
/// the value. Elements named `data` are exempt from the length rule: they are base64Binary
/// (Attachment, Binary, Signature), bounded by the request body limit, not by the string rule.
pub(super) fn check_strings(value: &Value, location: &mut String, issues: &mut Issues) {
    if issues.is_full() {
        return;
    }
    match value {
        Value::String(s) => {
            // Bytes >= characters: count the characters only when the bytes exceed the limit.
            if s.len() > MAX_STRING_CHARS
                && s.chars().count() > MAX_STRING_CHARS
                && !location.ends_with(".data")
            {
                issues.push(
                    location.clone(),
                    format!("{MSG_STRING_TOO_LONG}: at most {MAX_STRING_CHARS} characters"),
                );
            }
            // In UTF-8, bytes below 0x20 are only ever those control characters themselves.
            if s.bytes()
                .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
            {
                issues.push(
                    location.clone(),
                    format!("{MSG_CONTROL_CHARACTER}: only tab, line feed and carriage return are allowed"),
                );
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = location.len();
                // Writing to a String cannot fail.
                let _ = write!(location, "[{index}]");
                check_strings(item, location, issues);
                location.truncate(len);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let len = location.len();
                // An unknown name that may be data is left out (the schema refuses it anyway).
                if is_plain_name(name) {
                    location.push('.');
                    location.push_str(name);
                }
                check_strings(member, location, issues);
                location.truncate(len);
            }
        }
        _ => {}
    }
}
