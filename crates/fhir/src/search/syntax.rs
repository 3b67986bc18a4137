//! The syntax shared by every parameter type: modifiers, comparison prefixes and escapes.

use super::params::{ParamDef, ParamType};
use crate::ResourceType;

/// Modifiers, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Modifier {
    None,
    Missing,
    Not,
    Text,
    Exact,
    Contains,
    Above,
    Below,
    /// `identifier:of-type=type-system|type-code|value`
    OfType,
    /// `subject:identifier=system|value`: the reference's `identifier`.
    Identifier,
    Type(ResourceType),
}

pub(super) fn parse_modifier(def: &ParamDef, modifier: Option<&str>) -> Option<Modifier> {
    let Some(modifier) = modifier else {
        return Some(Modifier::None);
    };
    if modifier == "missing" {
        return Some(Modifier::Missing);
    }
    match (def.ptype, modifier) {
        (ParamType::Token, "not") => Some(Modifier::Not),
        (ParamType::Token, "text") if def.has_coded_tokens() => Some(Modifier::Text),
        (ParamType::String, "exact") => Some(Modifier::Exact),
        (ParamType::String, "contains") => Some(Modifier::Contains),
        (ParamType::Token, "of-type") if def.has_identifiers() => Some(Modifier::OfType),
        (ParamType::Reference, "identifier") => Some(Modifier::Identifier),
        (ParamType::Uri, "above") => Some(Modifier::Above),
        (ParamType::Uri, "below") => Some(Modifier::Below),
        (ParamType::Reference, name) => ResourceType::parse(name)
            .ok()
            .filter(|rt| def.targets_type(*rt))
            .map(Modifier::Type),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

pub(super) fn split_prefix(raw: &str) -> Result<(Prefix, &str), &'static str> {
    let bytes = raw.as_bytes();
    let has_prefix = bytes.len() >= 2 && bytes.iter().take(2).all(u8::is_ascii_lowercase);
    if !has_prefix {
        return Ok((Prefix::Eq, raw));
    }
    let (head, rest) = raw.split_at(2);
    let prefix = match head {
        "eq" => Prefix::Eq,
        "ne" => Prefix::Ne,
        "gt" => Prefix::Gt,
        "lt" => Prefix::Lt,
        "ge" => Prefix::Ge,
        "le" => Prefix::Le,
        "sa" => Prefix::Sa,
        "eb" => Prefix::Eb,
        "ap" => Prefix::Ap,
        _ => return Err("unknown prefix"),
    };
    Ok((prefix, rest))
}

/// Splits at `sep` where it is not escaped with a backslash (escapes are kept).
pub(super) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// Resolves the search escapes `\,`, `\|`, `\$` and `\\`; other backslashes stay.
pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let escaped = if c == '\\' {
            chars.next_if(|next| matches!(next, ',' | '|' | '$' | '\\'))
        } else {
            None
        };
        out.push(escaped.unwrap_or(c));
    }
    out
}
