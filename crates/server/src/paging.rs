//! Paging cursors: where the next page starts, opaque to clients (base64url of a small JSON
//! value). Search, compartment search, history and the audit trail all page this way, each with
//! its own position type; `carevault-http` puts the cursor in the `next` link.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The cursor for `position`.
pub fn encode<T: Serialize>(position: &T) -> String {
    // Serializing plain data (numbers, strings, vectors of them) cannot fail.
    let json = serde_json::to_vec(position).unwrap_or_default();
    data_encoding::BASE64URL_NOPAD.encode(&json)
}

/// The position a cursor holds; any other text (edited, truncated, or from another kind of
/// page) is a client error.
pub fn decode<T: DeserializeOwned>(cursor: &str) -> Result<T> {
    let bad = || Error::BadRequest("the paging cursor is not valid".into());
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(cursor.as_bytes())
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_position_and_nothing_else() {
        let position = (1_733_400_000_000_000_i64, "node-a".to_owned(), 42_u64);
        let cursor = encode(&position);
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a cursor needs no escaping in a URL: {cursor}"
        );
        assert_eq!(decode::<(i64, String, u64)>(&cursor).unwrap(), position);
        for bad in [
            "",
            "garbage!",
            &cursor[..cursor.len() - 2],
            &encode(&"text"),
        ] {
            assert!(
                matches!(decode::<(i64, String, u64)>(bad), Err(Error::BadRequest(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
