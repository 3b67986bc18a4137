//! The blind search index: one row per (parameter, token) of a current resource.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, map_err};
use crate::{IndexClause, StoreError, WriteOp};

pub(super) fn apply_index_op(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    let replacement = op.index_replacement()?;
    let (rtype, id) = (replacement.rtype, replacement.id);
    if let Some(version) = replacement.only_if_current {
        let current: Option<i64> = conn
            .prepare_cached(
                "SELECT version FROM resource_current WHERE rtype = ?1 AND id = ?2 AND deleted = 0",
            )
            .and_then(|mut s| s.query_row(params![rtype, id], |r| r.get(0)).optional())
            .map_err(map_err)?;
        if current != Some(i64::from(version)) {
            return Ok(());
        }
    }
    replace_search_index(conn, rtype, id, replacement.tokens)
}

/// Replace a resource's blind-index rows, touching only the ones that change: an update keeps
/// most of its keys (code, subject, category), and every row deleted or inserted is a leaf page
/// to read, dirty, log and checkpoint. No tokens: the resource leaves the index.
pub(super) fn replace_search_index(
    conn: &Connection,
    rtype: &str,
    id: &str,
    tokens: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    let listed: Option<String> = conn
        .prepare_cached("SELECT keys FROM search_keys WHERE rtype = ?1 AND id = ?2")
        .and_then(|mut s| s.query_row(params![rtype, id], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let existing = match &listed {
        Some(text) => IndexKeys::parse(text)?,
        None => IndexKeys::default(),
    };
    if tokens
        .iter()
        .any(|(p, _)| p.is_empty() || p.contains([' ', '\n']))
    {
        // The key list separates fields by spaces and rows by newlines (see [`IndexKeys`]).
        return Err(StoreError::Backend(
            "a blind-index parameter name must be a non-empty word".into(),
        ));
    }
    let wanted: HashSet<(&str, &[u8])> = tokens
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_slice()))
        .collect();
    let mut kept = IndexKeys::default();
    for (param, token, ord) in existing.0 {
        if wanted.contains(&(param.as_str(), token.as_slice())) {
            kept.0.push((param, token, ord));
            continue;
        }
        conn.prepare_cached(
            "DELETE FROM search_index
             WHERE rtype = ?1 AND param = ?2 AND token = ?3 AND ord = ?4 AND id = ?5",
        )
        .and_then(|mut s| s.execute(params![rtype, param, token, ord, id]))
        .map_err(map_err)?;
    }
    if wanted.len() > kept.0.len() {
        // Write order (see the migration that added `ord`): the resource version just put has
        // the highest sequence number.
        let ord: i64 = conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM resource_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(map_err)?;
        let already: HashSet<(&str, &[u8])> = kept
            .0
            .iter()
            .map(|(p, t, _)| (p.as_str(), t.as_slice()))
            .collect();
        let mut added = Vec::new();
        for (param, token) in wanted.difference(&already) {
            conn.prepare_cached(
                "INSERT INTO search_index (rtype, param, token, ord, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![rtype, param, token, ord, id]))
            .map_err(map_err)?;
            added.push(((*param).to_owned(), token.to_vec(), ord));
        }
        kept.0.extend(added);
    }
    let text = kept.to_text();
    if listed.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    if kept.0.is_empty() {
        conn.prepare_cached("DELETE FROM search_keys WHERE rtype = ?1 AND id = ?2")
            .and_then(|mut s| s.execute(params![rtype, id]))
            .map_err(map_err)?;
    } else {
        conn.prepare_cached(
            "INSERT INTO search_keys (rtype, id, keys) VALUES (?1, ?2, ?3)
             ON CONFLICT (rtype, id) DO UPDATE SET keys = excluded.keys",
        )
        .and_then(|mut s| s.execute(params![rtype, id, text]))
        .map_err(map_err)?;
    }
    Ok(())
}

/// The primary keys of one resource's blind-index rows, `(param, token, ord)`, as
/// `search_keys.keys` stores them: one line per row, `param HEX(token) ord`. Text, because the
/// migration that introduced it builds it in SQL from the existing rows; parameter names are
/// identifiers without spaces or newlines.
#[derive(Default)]
pub(super) struct IndexKeys(pub(super) Vec<(String, Vec<u8>, i64)>);

impl IndexKeys {
    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Backend("a search_keys row is malformed".into());
        let mut rows = Vec::new();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let mut fields = line.split(' ');
            let (Some(param), Some(hex), Some(ord), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(corrupt());
            };
            let token = decode_hex(hex).ok_or_else(corrupt)?;
            let ord = ord.parse().map_err(|_| corrupt())?;
            rows.push((param.to_owned(), token, ord));
        }
        Ok(Self(rows))
    }

    pub(super) fn to_text(&self) -> String {
        let mut text = String::new();
        for (param, token, ord) in &self.0 {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(param);
            text.push(' ');
            for byte in token {
                text.push_str(&format!("{byte:02X}"));
            }
            text.push(' ');
            text.push_str(&ord.to_string());
        }
        text
    }
}

pub(super) fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| char::from(b).to_digit(16);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u8::try_from(digit(*hi)? << 4 | digit(*lo)?).ok(),
            _ => None,
        })
        .collect()
}

impl SqliteStore {
    pub(super) async fn search_index(
        &self,
        rtype: &str,
        clauses: Vec<IndexClause>,
    ) -> Result<Vec<String>, StoreError> {
        let rtype = rtype.to_owned();
        self.read(move |c| {
            // One sub-select per clause, intersected; tokens bound as parameters.
            let mut sql = String::new();
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            for (i, clause) in clauses.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" INTERSECT ");
                }
                sql.push_str(
                    "SELECT id FROM search_index WHERE rtype = ? AND param = ? AND token IN (",
                );
                args.push(Box::new(rtype.clone()));
                args.push(Box::new(clause.param.clone()));
                for (j, token) in clause.tokens.iter().enumerate() {
                    if j > 0 {
                        sql.push(',');
                    }
                    sql.push('?');
                    args.push(Box::new(token.clone()));
                }
                sql.push(')');
            }
            if clauses.is_empty() || clauses.iter().any(|c| c.tokens.is_empty()) {
                return Ok(Vec::new());
            }
            let mut stmt = c.prepare(&sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let rows = stmt.query_map(params.as_slice(), |r| r.get::<_, String>(0))?;
            rows.collect()
        })
        .await
    }
}
