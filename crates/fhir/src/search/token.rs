//! Token parameters: codes, Codings, CodeableConcepts, Identifiers and contact points.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::{member, selected, str_of};
use super::params::{Boolean, Kind, ParamDef, Seg};
use super::query::{Sv, Sys};
use super::string::normalize_string;
use super::syntax::{split_unescaped, unescape};

pub(super) fn parse_token(def: &ParamDef, raw: &str) -> Result<Sv, &'static str> {
    let parts = split_unescaped(raw, '|');
    let (system, code) = match parts.as_slice() {
        [code] => (Sys::Any, unescape(code)),
        [system, code] => {
            let system = unescape(system);
            let code = unescape(code);
            match (system.is_empty(), code.is_empty()) {
                (true, true) => return Err("empty value"),
                (true, false) => (Sys::Absent, code),
                (false, _) => (Sys::Is(system), code),
            }
        }
        _ => return Err("malformed token"),
    };
    let code = match def.contact_kind() {
        Some(kind) if !code.is_empty() => {
            let code = normalize_contact(kind, &code);
            if code.is_empty() {
                return Err("empty value");
            }
            code
        }
        _ => code,
    };
    if code.is_empty() && !matches!(system, Sys::Is(_)) {
        return Err("empty value");
    }
    Ok(Sv::Token { system, code })
}

/// `type-system|type-code|value` (R4 `:of-type`; all three required).
pub(super) fn parse_of_type(raw: &str) -> Result<Sv, &'static str> {
    match split_unescaped(raw, '|').as_slice() {
        [type_system, type_code, value] => {
            let (type_system, type_code, value) =
                (unescape(type_system), unescape(type_code), unescape(value));
            if type_system.is_empty() || type_code.is_empty() || value.is_empty() {
                return Err("expected type-system|type-code|value");
            }
            Ok(Sv::OfType {
                type_system,
                type_code,
                value,
            })
        }
        _ => Err("expected type-system|type-code|value"),
    }
}

/// Whether some Identifier of the parameter has a type coded `type_system|type_code` and the
/// value `value`.
pub(super) fn of_type_matches(
    def: &ParamDef,
    resource: &Value,
    (type_system, type_code, value): (&str, &str, &str),
) -> bool {
    def.paths
        .iter()
        .filter(|p| p.kind == Kind::Identifier)
        .flat_map(|p| selected(resource, &p.segs))
        .any(|identifier| {
            str_of(identifier, "value") == Some(value)
                && identifier.get("type").is_some_and(|t| {
                    member(t, "coding").into_iter().any(|c| {
                        str_of(c, "system") == Some(type_system)
                            && str_of(c, "code") == Some(type_code)
                    })
                })
        })
}

#[derive(Debug)]
pub(super) struct Tok {
    pub(super) system: Option<String>,
    pub(super) code: Option<String>,
    /// A primitive or contact point: its system is implicit, only the code counts.
    pub(super) implicit: bool,
}

fn push_coded(system: Option<&str>, code: Option<&str>, out: &mut Vec<Tok>) {
    if system.is_some() || code.is_some() {
        out.push(Tok {
            system: system.map(str::to_owned),
            code: code.map(str::to_owned),
            implicit: false,
        });
    }
}

pub(super) fn tokens(def: &ParamDef, resource: &Value) -> Vec<Tok> {
    let mut out = Vec::new();
    for path in &def.paths {
        for value in selected(resource, &path.segs) {
            match path.kind {
                Kind::Code => {
                    let code = match value {
                        Value::String(s) if !s.is_empty() => Some(s.clone()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    };
                    if let Some(code) = code {
                        out.push(Tok {
                            system: None,
                            code: Some(code),
                            implicit: true,
                        });
                    }
                }
                Kind::Coding => {
                    push_coded(str_of(value, "system"), str_of(value, "code"), &mut out)
                }
                Kind::Concept => {
                    for coding in member(value, "coding") {
                        push_coded(str_of(coding, "system"), str_of(coding, "code"), &mut out);
                    }
                }
                Kind::Identifier => {
                    push_coded(str_of(value, "system"), str_of(value, "value"), &mut out);
                }
                Kind::Email | Kind::Phone | Kind::Contact => {
                    let system = str_of(value, "system");
                    let wanted = match path.kind {
                        Kind::Email => system == Some("email"),
                        Kind::Phone => system == Some("phone"),
                        _ => true,
                    };
                    // A `telecom` parameter over every system compares values as written.
                    let code = str_of(value, "value")
                        .map(|v| normalize_contact(&path.kind, v))
                        .filter(|v| !v.is_empty());
                    if let (true, Some(code)) = (wanted, code) {
                        out.push(Tok {
                            system: None,
                            code: Some(code),
                            implicit: true,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Kind::Boolean(boolean) = &path.kind
            && let Some(b) = evaluate(boolean, resource)
        {
            out.push(Tok {
                system: None,
                code: Some(b.to_string()),
                implicit: true,
            });
        }
    }
    out
}

/// A compiled boolean FHIRPath; `None` where FHIRPath's answer is empty.
fn evaluate(boolean: &Boolean, resource: &Value) -> Option<bool> {
    let values = |paths: &Vec<Vec<Seg>>| -> Vec<&Value> {
        paths
            .iter()
            .flat_map(|segs| selected(resource, segs))
            .collect()
    };
    match boolean {
        Boolean::Exists(paths) => Some(!values(paths).is_empty()),
        Boolean::NotEqual(paths, literal) => {
            let found = values(paths);
            (!found.is_empty()).then(|| found.iter().all(|v| *v != literal))
        }
        Boolean::And(a, b) => match (evaluate(a, resource), evaluate(b, resource)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
    }
}

/// E-mail addresses compare ASCII-case-insensitively; phone numbers without spaces and `-.()`.
fn normalize_contact(kind: &Kind, value: &str) -> String {
    match kind {
        Kind::Email => value.trim().to_ascii_lowercase(),
        Kind::Phone => value
            .chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')'))
            .collect(),
        _ => value.to_owned(),
    }
}

/// Texts of coded values, normalized (for `:text`).
pub(super) fn token_texts(def: &ParamDef, resource: &Value) -> Vec<String> {
    let mut texts = Vec::new();
    let mut push = |s: Option<&str>| {
        if let Some(s) = s {
            let norm = normalize_string(s);
            if !norm.is_empty() {
                texts.push(norm);
            }
        }
    };
    for path in &def.paths {
        for value in selected(resource, &path.segs) {
            match path.kind {
                Kind::Concept => {
                    push(str_of(value, "text"));
                    for coding in member(value, "coding") {
                        push(str_of(coding, "display"));
                    }
                }
                Kind::Coding => push(str_of(value, "display")),
                Kind::Identifier => {
                    if let Some(kind) = value.get("type") {
                        push(str_of(kind, "text"));
                        for coding in member(kind, "coding") {
                            push(str_of(coding, "display"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    texts
}

pub(super) fn token_matches(tok: &Tok, system: &Sys, code: &str) -> bool {
    let code_matches = !code.is_empty() && tok.code.as_deref() == Some(code);
    if tok.implicit {
        return code_matches;
    }
    match system {
        Sys::Any => code_matches,
        Sys::Absent => tok.system.is_none() && code_matches,
        Sys::Is(system) => {
            tok.system.as_deref() == Some(system.as_str()) && (code.is_empty() || code_matches)
        }
    }
}

/// The index keys of a token parameter: `c:CODE`, plus `s:SYSTEM` for a Coding or Identifier
/// with a system. No key joins the two: `system|code` is looked up under `c:CODE` and the
/// system checked after decryption, as every candidate is (a code shared by two systems costs a
/// few extra candidates; a third row per Coding cost every write).
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for tok in tokens(def, resource) {
        if let Some(code) = &tok.code {
            keys.insert(format!("c:{code}"));
        }
        if tok.implicit {
            continue;
        }
        if let Some(system) = &tok.system {
            keys.insert(format!("s:{system}"));
        }
    }
}

/// The candidate keys of a token value (see [`candidate_keys`](super::candidate_keys)).
pub(super) fn candidate_keys(system: &Sys, code: &str) -> Vec<String> {
    match system {
        Sys::Is(system) if code.is_empty() => vec![format!("s:{system}")],
        Sys::Any | Sys::Absent | Sys::Is(_) => vec![format!("c:{code}")],
    }
}
