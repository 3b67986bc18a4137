//! What a bulk export asks for: the kick-off request's parameters (HL7 Bulk Data Access IG v2),
//! parsed once and checked before anything starts.

use carevault_fhir::search::Query;
use carevault_fhir::{ResourceId, ResourceType};
use serde::{Deserialize, Serialize};

use crate::clock::parse_instant;
use crate::error::{Error, Result};

/// The NDJSON output format and the aliases the IG asks servers to accept for it.
pub const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// The value of `_deidentify` that asks for a HIPAA Safe Harbor de-identified export.
pub const DEIDENTIFY_SAFE_HARBOR: &str = "safe-harbor";
/// The value of `_deidentify` that asks for Safe Harbor with each patient's dates shifted by an
/// offset of their own instead of cut to the year (Expert Determination, not Safe Harbor).
pub const DEIDENTIFY_SHIFTED_DATES: &str = "shifted-dates";
/// The longest `_deidentifyLink` label.
const LINK_MAX: usize = 64;

/// Which resources an export draws from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Level {
    /// `GET [base]/$export`: every resource the caller may read.
    System,
    /// `GET [base]/Patient/$export`: the resources of every patient compartment.
    Patient,
    /// `GET [base]/Group/{id}/$export`: the resources of the group's member patients.
    Group { id: String },
}

impl Level {
    pub fn group(id: &ResourceId) -> Self {
        Self::Group {
            id: id.as_str().to_owned(),
        }
    }
}

/// A kick-off request's parameters.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub level: Level,
    /// `_type`: only these types (None: every type the caller may read).
    pub types: Option<Vec<ResourceType>>,
    /// `_since`: only resources last updated at or after this time (microseconds).
    pub since_us: Option<i64>,
    /// `_typeFilter`: a search (as its query string) each resource of that type must match.
    pub type_filters: Vec<(ResourceType, String)>,
    /// `_deidentify=safe-harbor` (or `shifted-dates`): every resource is de-identified
    /// (`carevault_fhir::deid`) before it is written, under a pseudonym secret of the export's
    /// own (or of its link).
    pub deidentify: bool,
    /// `_deidentify=shifted-dates`: dates moved by a per-patient offset, not cut to the year.
    pub shift_dates: bool,
    /// `_deidentifyLink=label`: pseudonyms under a secret of the caller's and this label's, the
    /// same in every export of theirs that names it (so those exports can be joined).
    pub link: Option<String>,
    /// The kick-off request as the client wrote it (path and query), for the manifest.
    pub request: String,
}

impl ExportOptions {
    /// Parse the kick-off parameters. Unknown parameters, formats, types and values answer 400
    /// (with a message that never echoes the value).
    pub fn parse(level: Level, pairs: &[(String, String)], request: String) -> Result<Self> {
        let mut options = Self {
            level,
            types: None,
            since_us: None,
            type_filters: Vec::new(),
            deidentify: false,
            shift_dates: false,
            link: None,
            request,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_outputFormat" => {
                    if !OUTPUT_FORMATS.contains(&value.as_str()) {
                        return Err(Error::BadRequest(
                            "_outputFormat must be application/fhir+ndjson".into(),
                        ));
                    }
                }
                "_type" => {
                    let types = value
                        .split(',')
                        .map(|t| ResourceType::parse(t.trim()))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|_| {
                            Error::BadRequest("_type names an unknown resource type".into())
                        })?;
                    let all = options.types.get_or_insert_with(Vec::new);
                    for t in types {
                        if !all.contains(&t) {
                            all.push(t);
                        }
                    }
                }
                "_since" => {
                    options.since_us = Some(parse_instant(value).ok_or_else(|| {
                        Error::BadRequest("_since must be a FHIR instant".into())
                    })?);
                }
                "_typeFilter" => {
                    let (rtype, query) = parse_type_filter(value)?;
                    if options.type_filters.iter().any(|(t, _)| *t == rtype) {
                        return Err(Error::BadRequest(
                            "one _typeFilter per resource type is supported".into(),
                        ));
                    }
                    options.type_filters.push((rtype, query));
                }
                "_deidentify" => {
                    options.shift_dates = match value.as_str() {
                        DEIDENTIFY_SAFE_HARBOR => false,
                        DEIDENTIFY_SHIFTED_DATES => true,
                        _ => {
                            return Err(Error::BadRequest(
                                "_deidentify must be safe-harbor or shifted-dates".into(),
                            ));
                        }
                    };
                    options.deidentify = true;
                }
                "_deidentifyLink" => {
                    let label_ok = !value.is_empty()
                        && value.len() <= LINK_MAX
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                    if !label_ok {
                        return Err(Error::BadRequest(
                            "_deidentifyLink must be 1-64 letters, digits, '.', '_' or '-'".into(),
                        ));
                    }
                    options.link = Some(value.clone());
                }
                _ => {
                    return Err(Error::BadRequest(
                        "$export takes _outputFormat, _type, _since, _typeFilter, _deidentify \
                         and _deidentifyLink only"
                            .into(),
                    ));
                }
            }
        }
        if let Some(types) = &options.types
            && options.type_filters.iter().any(|(t, _)| !types.contains(t))
        {
            return Err(Error::BadRequest(
                "a _typeFilter must name one of the types in _type".into(),
            ));
        }
        Ok(options)
    }

    /// The search a type's resources must match: its `_typeFilter`, or none.
    pub fn query_for(&self, rtype: ResourceType) -> Result<Query> {
        let pairs = self
            .type_filters
            .iter()
            .find(|(t, _)| *t == rtype)
            .map(|(_, q)| filter_pairs(q))
            .transpose()?
            .unwrap_or_default();
        carevault_fhir::search::parse_query(rtype, &pairs, false)
            .map_err(|e| Error::BadRequest(format!("_typeFilter: {e}")))
    }
}

/// A POST kick-off's `Parameters` body (the IG v2 permits a POST kick-off "that supplies
/// parameters using the FHIR Parameters Resource") as the name and value pairs a GET's query
/// would carry, for [`ExportOptions::parse`]. Only primitive values are taken (`valueString`,
/// `valueCode`, `valueInstant`): the parameters CareVault supports are all strings or instants,
/// and anything else (the IG's `patient` reference, a `part`, a `resource`) answers 400.
pub fn parameter_pairs(body: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let shape = || {
        Error::BadRequest(
            "a POST $export takes a Parameters resource whose entries have a name and a \
             valueString, valueCode or valueInstant"
                .into(),
        )
    };
    let Some(object) = body.as_object() else {
        return Err(shape());
    };
    if object.get("resourceType").and_then(|t| t.as_str()) != Some("Parameters") {
        return Err(shape());
    }
    if object
        .keys()
        .any(|k| !matches!(k.as_str(), "resourceType" | "id" | "meta" | "parameter"))
    {
        return Err(shape());
    }
    let entries = match object.get("parameter") {
        None => return Ok(Vec::new()),
        Some(serde_json::Value::Array(entries)) => entries,
        Some(_) => return Err(shape()),
    };
    entries
        .iter()
        .map(|entry| {
            let entry = entry.as_object().ok_or_else(shape)?;
            let name = entry
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(shape)?;
            let mut values = entry.iter().filter(|(k, _)| k.as_str() != "name");
            let value = match (values.next(), values.next()) {
                (Some((kind, serde_json::Value::String(v))), None)
                    if matches!(kind.as_str(), "valueString" | "valueCode" | "valueInstant") =>
                {
                    v
                }
                _ => return Err(shape()),
            };
            Ok((name.to_owned(), value.clone()))
        })
        .collect()
}

/// `Observation?code=...`: the type and the query string, checked to parse as a search of it.
fn parse_type_filter(value: &str) -> Result<(ResourceType, String)> {
    let bad = || Error::BadRequest("_typeFilter must be [type]?[search parameters]".into());
    let (rtype, query) = value.split_once('?').ok_or_else(bad)?;
    let rtype = ResourceType::parse(rtype).map_err(|_| bad())?;
    let pairs = filter_pairs(query)?;
    if pairs
        .iter()
        .any(|(k, _)| k.starts_with('_') && k != "_id" && k != "_lastUpdated")
    {
        return Err(Error::BadRequest(
            "_typeFilter takes search parameters, not result parameters".into(),
        ));
    }
    let parsed = carevault_fhir::search::parse_query(rtype, &pairs, false)
        .map_err(|e| Error::BadRequest(format!("_typeFilter: {e}")))?;
    if !parsed.chains.is_empty() || !parsed.has.is_empty() {
        return Err(Error::BadRequest(
            "_typeFilter does not support chained parameters or _has".into(),
        ));
    }
    Ok((rtype, query.to_owned()))
}

fn filter_pairs(query: &str) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query)
        .map_err(|_| Error::BadRequest("_typeFilter is not a query string".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(list: &[(&str, &str)]) -> Result<ExportOptions> {
        ExportOptions::parse(Level::System, &pairs(list), "/fhir/$export".into())
    }

    #[test]
    fn the_ig_parameters_parse() {
        let o = parse(&[
            ("_outputFormat", "ndjson"),
            ("_type", "Patient,Observation"),
            ("_type", "Patient"),
            ("_since", "2024-01-02T03:04:05Z"),
            ("_typeFilter", "Observation?status=final"),
        ])
        .unwrap();
        assert_eq!(
            o.types.unwrap(),
            [
                ResourceType::PATIENT,
                ResourceType::parse("Observation").unwrap()
            ]
        );
        assert_eq!(o.since_us, Some(1_704_164_645_000_000));
        assert_eq!(o.type_filters.len(), 1);
        assert!(!o.deidentify);
        for format in OUTPUT_FORMATS {
            assert!(parse(&[("_outputFormat", format)]).is_ok());
        }
        assert!(parse(&[("_deidentify", "safe-harbor")]).unwrap().deidentify);
        let shifted = parse(&[
            ("_deidentify", "shifted-dates"),
            ("_deidentifyLink", "study-7.a_b"),
        ])
        .unwrap();
        assert!(shifted.deidentify && shifted.shift_dates);
        assert_eq!(shifted.link.as_deref(), Some("study-7.a_b"));
        assert!(
            !parse(&[("_deidentify", "safe-harbor")])
                .unwrap()
                .shift_dates
        );
    }

    #[test]
    fn bad_parameters_answer_400_without_echoing_them() {
        for bad in [
            &[("_outputFormat", "text/csv")][..],
            &[("_type", "Secret-Canary")],
            &[("_since", "yesterday")],
            &[("_typeFilter", "Observation")],
            &[("_typeFilter", "Nope?x=1")],
            &[("_typeFilter", "Observation?no-such-param=Secret-Canary")],
            &[("_typeFilter", "Observation?_sort=date")],
            &[("_deidentify", "expert")],
            &[("_deidentifyLink", "")],
            &[("_deidentifyLink", "Secret-Canary/../x")],
            &[("_deidentifyLink", &"Secret-Canary".repeat(6))],
            &[("_elements", "id")],
            &[
                ("_type", "Patient"),
                ("_typeFilter", "Observation?status=final"),
            ],
            &[
                ("_typeFilter", "Observation?status=final"),
                ("_typeFilter", "Observation?status=amended"),
            ],
        ] {
            match parse(bad) {
                Err(Error::BadRequest(msg)) => assert!(!msg.contains("Secret-Canary"), "{msg}"),
                other => panic!("{bad:?}: {:?}", other.map(|o| o.types)),
            }
        }
    }

    #[test]
    fn a_parameters_body_becomes_the_pairs_of_a_query() {
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient,Observation"},
            {"name": "_since", "valueInstant": "2024-01-02T03:04:05Z"},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "_deidentify", "valueCode": "safe-harbor"},
        ]});
        let got = parameter_pairs(&body).unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("_type", "Patient,Observation"),
                ("_since", "2024-01-02T03:04:05Z"),
                ("_outputFormat", "application/fhir+ndjson"),
                ("_deidentify", "safe-harbor"),
            ])
        );
        let o = ExportOptions::parse(Level::System, &got, "/fhir/$export".into()).unwrap();
        assert_eq!(o.types.unwrap().len(), 2);
        assert!(o.deidentify);
        let empty = serde_json::json!({"resourceType": "Parameters"});
        assert!(parameter_pairs(&empty).unwrap().is_empty());
    }

    #[test]
    fn a_parameters_body_of_another_shape_answers_400_without_echoing_it() {
        for bad in [
            serde_json::json!({"resourceType": "Patient", "name": [{"family": "Secret-Canary"}]}),
            serde_json::json!(["Secret-Canary"]),
            serde_json::json!({"resourceType": "Parameters", "parameter": {"name": "_type"}}),
            serde_json::json!({"resourceType": "Parameters", "extra": "Secret-Canary"}),
            serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "_type"}]}),
            serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "patient", "valueReference": {"reference": "Patient/Secret-Canary"}}]}),
            serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient", "valueCode": "Patient"}]}),
            serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"valueString": "Secret-Canary"}]}),
            serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueInteger": 1}]}),
        ] {
            match parameter_pairs(&bad) {
                Err(Error::BadRequest(msg)) => assert!(!msg.contains("Secret-Canary"), "{msg}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_type_filter_becomes_the_query_of_its_type_only() {
        let o = parse(&[("_typeFilter", "Observation?status=final&code=1234-5")]).unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        assert_eq!(o.query_for(obs).unwrap().clauses.len(), 2);
        assert!(
            o.query_for(ResourceType::PATIENT)
                .unwrap()
                .clauses
                .is_empty()
        );
    }
}
