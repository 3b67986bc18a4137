//! FHIRPath Patch (R4 `fhirpatch.html`): a `Parameters` resource whose `operation` parameters
//! add, insert, delete, replace and move elements addressed by FHIRPath expressions.
//!
//! The paths are the small FHIRPath subset clients write for patches (see [`path`]); the values
//! are a `value[x]` taken as is, or a complex value assembled from nested `part`s with the
//! element types of the R4 schema (see [`model`]). Like [`crate::patch`], this module refuses
//! with errors that name the operation's position and what failed, never a value or path from
//! the request; bounds the number of operations; and bounds the patched resource's size.
//!
//! Operations are applied in order to the document given; on an error it may be partly patched,
//! so callers patch a copy and drop it (the `patch` interaction is atomic).

mod path;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use self::path::{Loc, Path, Seg, get, get_mut};
use crate::model::{Model, RESOURCE_LIST};

/// The most operations one FHIRPath Patch may hold.
pub const MAX_OPERATIONS: usize = 1000;
/// How deeply `part`s may nest in one value.
const MAX_PART_DEPTH: usize = 16;

/// Why a FHIRPath Patch was refused. Messages name the operation's position only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FhirPatchError {
    /// The body is not a `Parameters` resource with a `parameter` list.
    #[error(
        "the body is not a FHIRPath Patch (a Parameters resource whose parameters are operations); a JSON Patch array needs Content-Type application/json-patch+json"
    )]
    Malformed,
    /// The patch has no operations.
    #[error("the FHIRPath Patch has no operations")]
    Empty,
    /// More operations than [`MAX_OPERATIONS`].
    #[error("the FHIRPath Patch has more than {limit} operations")]
    TooMany { limit: usize },
    /// Operation `index` (from 0) is not a well-formed operation.
    #[error("FHIRPath Patch operation {index} is malformed: {reason}")]
    Invalid { index: usize, reason: &'static str },
    /// Operation `index` (from 0) could not be applied; nothing was changed.
    #[error("FHIRPath Patch operation {index} failed: {reason}")]
    Failed { index: usize, reason: &'static str },
    /// The patched resource would be larger than the limit.
    #[error("the patched resource would be larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// A parsed FHIRPath Patch.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirPatch {
    operations: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operation {
    Add {
        path: Path,
        name: String,
        value: NewValue,
    },
    Insert {
        path: Path,
        index: usize,
        value: NewValue,
    },
    Delete {
        path: Path,
    },
    Replace {
        path: Path,
        value: NewValue,
    },
    Move {
        path: Path,
        source: usize,
        destination: usize,
    },
}

/// A value an operation writes.
#[derive(Debug, Clone, PartialEq)]
enum NewValue {
    /// A `value[x]` (with the type suffix of its name, `Boolean` for `valueBoolean`) or a
    /// `resource`, used as is.
    Json {
        value: Value,
        suffix: Option<String>,
    },
    /// A complex value: one `(name, value)` per nested part.
    Parts(Vec<(String, NewValue)>),
}

impl FhirPatch {
    /// Parse a FHIRPath Patch from a `Parameters` resource.
    pub fn parse(body: &Value) -> Result<Self, FhirPatchError> {
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirPatchError::Malformed);
        }
        let parameters = match body.get("parameter") {
            None => return Err(FhirPatchError::Empty),
            Some(Value::Array(p)) => p,
            Some(_) => return Err(FhirPatchError::Malformed),
        };
        if parameters.is_empty() {
            return Err(FhirPatchError::Empty);
        }
        if parameters.len() > MAX_OPERATIONS {
            return Err(FhirPatchError::TooMany {
                limit: MAX_OPERATIONS,
            });
        }
        let operations = parameters
            .iter()
            .enumerate()
            .map(|(index, p)| {
                parse_operation(p).map_err(|reason| FhirPatchError::Invalid { index, reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { operations })
    }

    /// Apply the operations to `doc` in order. `max_bytes` bounds the patched resource's
    /// serialized size.
    pub fn apply(&self, doc: &mut Value, max_bytes: usize) -> Result<(), FhirPatchError> {
        let model = Model::r4();
        for (index, op) in self.operations.iter().enumerate() {
            apply_one(doc, op, model).map_err(|reason| FhirPatchError::Failed { index, reason })?;
        }
        // Values come from the request, which the body limit bounds, and no operation copies
        // what the document holds: one check at the end suffices.
        if serde_json::to_vec(doc).map_or(usize::MAX, |v| v.len()) > max_bytes {
            return Err(FhirPatchError::TooLarge { limit: max_bytes });
        }
        Ok(())
    }
}

/// The parts of one `operation` parameter.
#[derive(Default)]
struct Parts<'a> {
    kind: Option<&'a str>,
    path: Option<&'a str>,
    name: Option<&'a str>,
    value: Option<NewValue>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

fn parse_operation(parameter: &Value) -> Result<Operation, &'static str> {
    if parameter.get("name").and_then(Value::as_str) != Some("operation") {
        return Err("it is not a parameter named operation");
    }
    let Some(parts) = parameter.get("part").and_then(Value::as_array) else {
        return Err("it has no parts");
    };
    let mut p = Parts::default();
    for part in parts {
        let Some(name) = part.get("name").and_then(Value::as_str) else {
            return Err("a part has no name");
        };
        let twice = match name {
            "type" => p
                .kind
                .replace(string_value(part, &["valueCode", "valueString"])?),
            "path" => p.path.replace(string_value(part, &["valueString"])?),
            "name" => p.name.replace(string_value(part, &["valueString"])?),
            "value" => p.value.replace(parse_value(part, 0)?).map(|_| ""),
            "index" => p.index.replace(integer_value(part)?).map(|_| ""),
            "source" => p.source.replace(integer_value(part)?).map(|_| ""),
            "destination" => p.destination.replace(integer_value(part)?).map(|_| ""),
            _ => {
                return Err(
                    "a part is not one of type, path, name, value, index, source, destination",
                );
            }
        };
        if twice.is_some() {
            return Err("a part is given twice");
        }
    }
    let path = Path::parse(p.path.ok_or("it has no path")?)
        .ok_or("its path is not a supported FHIRPath expression")?;
    let value = || p.value.clone().ok_or("it has no value");
    Ok(match p.kind.ok_or("it has no type")? {
        "add" => Operation::Add {
            path,
            name: p.name.ok_or("it has no name")?.to_owned(),
            value: value()?,
        },
        "insert" => Operation::Insert {
            path,
            index: p.index.ok_or("it has no index")?,
            value: value()?,
        },
        "delete" => Operation::Delete { path },
        "replace" => Operation::Replace {
            path,
            value: value()?,
        },
        "move" => Operation::Move {
            path,
            source: p.source.ok_or("it has no source")?,
            destination: p.destination.ok_or("it has no destination")?,
        },
        _ => return Err("its type is not add, insert, delete, replace or move"),
    })
}

fn string_value<'a>(part: &'a Value, members: &[&str]) -> Result<&'a str, &'static str> {
    members
        .iter()
        .find_map(|m| part.get(*m).and_then(Value::as_str))
        .ok_or("a part's value is missing or of the wrong type")
}

fn integer_value(part: &Value) -> Result<usize, &'static str> {
    part.get("valueInteger")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("an index, source or destination is not a non-negative integer")
}

/// The value of a `value` part (or of a nested part): its one `value[x]`, its `resource`, or
/// its nested parts.
fn parse_value(part: &Value, depth: usize) -> Result<NewValue, &'static str> {
    if depth > MAX_PART_DEPTH {
        return Err("its value's parts nest too deeply");
    }
    let Some(object) = part.as_object() else {
        return Err("a part is not an object");
    };
    let mut values = object.iter().filter(|(k, _)| is_value_x(k));
    if let Some((key, value)) = values.next() {
        if values.next().is_some() || object.contains_key("part") {
            return Err("a value part holds more than one value");
        }
        return Ok(NewValue::Json {
            value: value.clone(),
            suffix: key.strip_prefix("value").map(str::to_owned),
        });
    }
    if let Some(resource) = object.get("resource") {
        return Ok(NewValue::Json {
            value: resource.clone(),
            suffix: None,
        });
    }
    let Some(parts) = object.get("part").and_then(Value::as_array) else {
        return Err("a value part holds no value");
    };
    parts
        .iter()
        .map(|p| {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a part has no name")?;
            Ok((name.to_owned(), parse_value(p, depth + 1)?))
        })
        .collect::<Result<_, _>>()
        .map(NewValue::Parts)
}

/// `valueString`, `valueCodeableConcept`, ...: `value` then an upper-case letter.
fn is_value_x(key: &str) -> bool {
    key.strip_prefix("value")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

fn apply_one(doc: &mut Value, op: &Operation, model: &Model) -> Result<(), &'static str> {
    match op {
        Operation::Add { path, name, value } => {
            let target = only(path.select(doc)?)?;
            let datatype = datatype_at(doc, &target, model);
            let suffix = match value {
                NewValue::Json { suffix, .. } => suffix.as_deref(),
                NewValue::Parts(_) => None,
            };
            let key = model.json_name(datatype.as_deref(), name, suffix);
            let element = model.element(datatype.as_deref(), &key);
            let value = build(value, element.and_then(|e| e.datatype.as_deref()), model)?;
            let Some(object) = get_mut(doc, &target).and_then(Value::as_object_mut) else {
                return Err("its path selects an element that cannot hold others");
            };
            match (object.get_mut(&key), element.map(|e| e.repeats)) {
                (Some(Value::Array(items)), _) => items.push(value),
                (None, Some(true)) => {
                    object.insert(key, Value::Array(vec![value]));
                }
                (None, _) => {
                    object.insert(key, value);
                }
                (Some(_), _) => return Err("the element it adds already has a value"),
            }
        }
        Operation::Insert { path, index, value } => {
            let (parent, name) = list_of(doc, path)?;
            let datatype = datatype_at(doc, &parent, model);
            let element = model.element(datatype.as_deref(), name);
            let value = build(value, element.and_then(|e| e.datatype.as_deref()), model)?;
            let object = object_at(doc, &parent)?;
            match object.get_mut(name) {
                Some(Value::Array(items)) if *index <= items.len() => items.insert(*index, value),
                None if *index == 0 => {
                    object.insert(name.to_owned(), Value::Array(vec![value]));
                }
                Some(Value::Array(_)) | None => return Err("its index is outside the list"),
                Some(_) => return Err("its path does not select a list"),
            }
        }
        Operation::Delete { path } => {
            let selected = path.select(doc)?;
            if selected.len() > 1 {
                return Err("its path selects more than one element");
            }
            if let Some(target) = selected.into_iter().next() {
                remove(doc, &target)?;
            }
        }
        Operation::Replace { path, value } => {
            let target = only(path.select(doc)?)?;
            if target.is_empty() {
                return Err("it would replace the resource itself");
            }
            let datatype = datatype_at(doc, &target, model);
            let value = build(value, datatype.as_deref(), model)?;
            let slot = get_mut(doc, &target).ok_or("its path selects nothing")?;
            *slot = value;
        }
        Operation::Move {
            path,
            source,
            destination,
        } => {
            let (parent, name) = list_of(doc, path)?;
            let Some(Value::Array(items)) = object_at(doc, &parent)?.get_mut(name) else {
                return Err("its path does not select a list");
            };
            if *source >= items.len() || *destination >= items.len() {
                return Err("its source or destination is outside the list");
            }
            let item = items.remove(*source);
            items.insert(*destination, item);
        }
    }
    Ok(())
}

/// The one location selected, or why there is not exactly one.
fn only(mut selected: Vec<Loc>) -> Result<Loc, &'static str> {
    match selected.len() {
        0 => Err("its path selects nothing"),
        1 => selected.pop().ok_or("its path selects nothing"),
        _ => Err("its path selects more than one element"),
    }
}

/// For `insert` and `move`: the one element holding the list the path names, and its name.
fn list_of<'p>(doc: &Value, path: &'p Path) -> Result<(Loc, &'p str), &'static str> {
    let (parent, name) = path
        .split_list()
        .ok_or("its path does not end with the name of a list")?;
    Ok((only(parent.select(doc)?)?, name))
}

fn object_at<'a>(
    doc: &'a mut Value,
    loc: &[Seg],
) -> Result<&'a mut Map<String, Value>, &'static str> {
    get_mut(doc, loc)
        .and_then(Value::as_object_mut)
        .ok_or("its path selects an element that cannot hold others")
}

/// Remove the element at `loc`; a list or an element left empty is removed too (FHIR has
/// neither empty arrays nor empty elements).
fn remove(doc: &mut Value, loc: &[Seg]) -> Result<(), &'static str> {
    let Some((last, parent)) = loc.split_last() else {
        return Err("it would delete the resource itself");
    };
    match (last, get_mut(doc, parent)) {
        (Seg::Key(k), Some(Value::Object(object))) => {
            object.remove(k);
            if object.is_empty() && !parent.is_empty() {
                return remove(doc, parent);
            }
        }
        (Seg::Index(i), Some(Value::Array(items))) if *i < items.len() => {
            items.remove(*i);
            if items.is_empty() {
                return remove(doc, parent);
            }
        }
        _ => return Err("its path selects nothing"),
    }
    Ok(())
}

/// The datatype of the element at `loc`, following the schema from the resource type (and
/// through embedded resources by their own `resourceType`).
fn datatype_at(doc: &Value, loc: &[Seg], model: &Model) -> Option<String> {
    let mut datatype = doc.get("resourceType")?.as_str()?.to_owned();
    for (n, seg) in loc.iter().enumerate() {
        let Seg::Key(key) = seg else { continue };
        datatype = model.element(Some(&datatype), key)?.datatype.clone()?;
        if datatype == RESOURCE_LIST {
            // The embedded resource itself is the item (or the member) after this key.
            let at = match loc.get(n + 1) {
                Some(Seg::Index(_)) => n + 2,
                _ => n + 1,
            };
            datatype = get(doc, loc.get(..at)?)?
                .get("resourceType")?
                .as_str()?
                .to_owned();
        }
    }
    Some(datatype)
}

/// The JSON of a value to write into an element of `datatype` (when known): parts become an
/// object whose repeating elements are arrays.
fn build(value: &NewValue, datatype: Option<&str>, model: &Model) -> Result<Value, &'static str> {
    let parts = match value {
        NewValue::Json { value, .. } => return Ok(value.clone()),
        NewValue::Parts(parts) => parts,
    };
    let mut object = Map::new();
    for (name, part) in parts {
        let suffix = match part {
            NewValue::Json { suffix, .. } => suffix.as_deref(),
            NewValue::Parts(_) => None,
        };
        let key = model.json_name(datatype, name, suffix);
        let element = model.element(datatype, &key);
        let built = build(part, element.and_then(|e| e.datatype.as_deref()), model)?;
        let repeats = element.map(|e| e.repeats);
        match (object.get_mut(&key), repeats) {
            (Some(Value::Array(items)), Some(true) | None) => items.push(built),
            (None, Some(true)) => {
                object.insert(key, Value::Array(vec![built]));
            }
            (None, _) => {
                object.insert(key, built);
            }
            // Unknown to the schema and given twice: a list.
            (Some(existing), None) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, built]);
            }
            (Some(_), Some(false)) => return Err("its value gives a single element twice"),
            (Some(_), Some(true)) => return Err("its value gives a list element twice"),
        }
    }
    Ok(Value::Object(object))
}
