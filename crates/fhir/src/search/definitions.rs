//! The search parameters of every R4 resource type, read from the official SearchParameter
//! definitions (`search-parameters.json`, vendored) and typed by the FHIR JSON schema.
//!
//! Each definition's FHIRPath `expression` is parsed ([`super::fhirpath`]) and compiled, for each
//! of its base types, into element paths from the resource root: a member that is a choice
//! (`Observation.value`) becomes one path per variant present in the schema (`valueQuantity`,
//! `valueString`, ...), `ofType(T)` keeps the variants of type `T`, and each path ends in the
//! FHIR datatype of its values, which decides how they are indexed and matched ([`Kind`]).
//!
//! A parameter is left out, whole, when one of its paths cannot be searched as its type says
//! (an `Attachment` in a reference parameter, ...): leaving
//! out one path would silently miss the resources whose value sits there. Those without an
//! expression (`_text`, `_content`, `_query`) are left out too.
//! A composite's components are compiled from its base elements (see `compile_composite`).
//! [`skipped`] lists every one with the reason; a test pins the list.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use super::fhirpath::{self, Chain, Expr, Head, Literal, Step};
use super::params::{Kind, ParamDef, ParamType, Path, Seg};
use super::string;
use crate::ResourceType;
use crate::compartment::SEARCH_PARAMETERS_JSON;
use crate::model::Model;

/// The parameters of every type, and those left out.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) by_type: HashMap<ResourceType, Vec<ParamDef>>,
    pub(super) skipped: Vec<Skipped>,
}

/// A parameter left out of a type, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub rtype: ResourceType,
    pub code: String,
    pub reason: String,
}

/// The loaded registry (loaded on first use; the files are embedded in the binary).
pub(super) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(load)
}

/// The R4 parameter `code` of `rtype` if it was left out.
pub(super) fn left_out(rtype: ResourceType, code: &str) -> Option<&'static Skipped> {
    registry()
        .skipped
        .iter()
        .find(|s| s.rtype == rtype && s.code == code)
}

/// The embedded R4 SearchParameter definitions, as published (for a digest of what the index
/// was built with).
#[must_use]
pub fn definitions_json() -> &'static [u8] {
    SEARCH_PARAMETERS_JSON.as_bytes()
}

/// Every R4 search parameter left out, with the reason (see the module documentation).
#[must_use]
pub fn skipped() -> &'static [Skipped] {
    &registry().skipped
}

#[derive(Deserialize)]
struct Bundle {
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    resource: Definition,
}

#[derive(Deserialize)]
struct Definition {
    code: String,
    url: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    ptype: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDefinition>,
}

/// One component of a composite: the definition of its type, and where it is in the base.
#[derive(Deserialize)]
struct ComponentDefinition {
    definition: String,
    expression: String,
}

fn load() -> Registry {
    let mut registry = Registry::default();
    let types = Model::r4();
    let Ok(bundle) = serde_json::from_str::<Bundle>(SEARCH_PARAMETERS_JSON) else {
        // The file is embedded and a test loads it: this cannot happen in a built binary.
        return registry;
    };
    let every_type: Vec<ResourceType> = ResourceType::all().collect();
    let by_url: HashMap<&str, &Definition> = bundle
        .entry
        .iter()
        .map(|e| (e.resource.url.as_str(), &e.resource))
        .collect();
    for Entry { resource: def } in &bundle.entry {
        let bases: Vec<ResourceType> = if def.base.iter().any(|b| b == "Resource") {
            every_type.clone()
        } else if def.base.iter().any(|b| b == "DomainResource") {
            every_type
                .iter()
                .copied()
                .filter(|t| !matches!(t.as_str(), "Bundle" | "Binary" | "Parameters"))
                .collect()
        } else {
            def.base
                .iter()
                .filter_map(|b| ResourceType::parse(b).ok())
                .collect()
        };
        for rtype in bases {
            let compiled = if def.ptype == "composite" {
                compile_composite(types, def, rtype, &by_url)
            } else {
                compile(types, def, rtype)
            };
            match compiled {
                Ok(param) => registry.by_type.entry(rtype).or_default().push(param),
                Err(reason) => registry.skipped.push(Skipped {
                    rtype,
                    code: def.code.clone(),
                    reason,
                }),
            }
        }
    }
    for defs in registry.by_type.values_mut() {
        assign_hosts(defs);
    }
    registry
}

/// A parameter every path of which is also a path of another of the type (`code` of
/// `combo-code`, `value-quantity` of `combo-value-quantity`, `patient` of `subject`) is answered
/// from the other's index rows, and writes none of its own: its keys are among the other's, so
/// its candidates are found there (a few more of them; the exact check after decryption drops
/// those), and a resource writes far fewer rows. Common parameters (`_id`, `_tag`, ...) keep
/// their own. A host is a parameter no other covers (of two that cover each other, the first
/// by name), so a host is never itself a guest.
fn assign_hosts(defs: &mut [ParamDef]) {
    let above = |a: &ParamDef, b: &ParamDef| covers(a, b) && (!covers(b, a) || a.name < b.name);
    let hosts: Vec<usize> = (0..defs.len())
        .filter(|&i| !(0..defs.len()).any(|j| j != i && above(&defs[j], &defs[i])))
        .collect();
    for guest in 0..defs.len() {
        if hosts.contains(&guest) {
            continue;
        }
        let host = hosts
            .iter()
            .copied()
            .filter(|&h| covers(&defs[h], &defs[guest]))
            .min_by_key(|&h| defs[h].name);
        if let Some(host) = host {
            defs[guest].stored_as = defs[host].name;
        }
    }
}

/// Whether every index key of `guest` is, for any resource, an index key of `host`.
fn covers(host: &ParamDef, guest: &ParamDef) -> bool {
    if host.ptype == ParamType::Composite {
        return false;
    }
    if guest.ptype == ParamType::Composite {
        return first_component_from_root(guest).is_some_and(|keyed| covers(host, &keyed));
    }
    host.ptype == guest.ptype
        && !host.name.starts_with('_')
        && !guest.name.starts_with('_')
        && guest.targets.iter().all(|t| host.targets.contains(t))
        && guest
            .paths
            .iter()
            .all(|g| host.paths.iter().any(|h| path_covers(h, g)))
}

/// A composite's first component with its paths from the resource root: what its index keys
/// are drawn from (see `composite::index_keys`).
fn first_component_from_root(def: &ParamDef) -> Option<ParamDef> {
    let first = def.components.first()?;
    let paths = def
        .paths
        .iter()
        .flat_map(|base| {
            first.paths.iter().map(|path| Path {
                segs: base.segs.iter().chain(&path.segs).cloned().collect(),
                kind: path.kind.clone(),
            })
        })
        .collect();
    Some(ParamDef {
        name: def.name,
        stored_as: def.name,
        ptype: first.ptype,
        paths,
        targets: first.targets.clone(),
        expression: String::new(),
        url: String::new(),
        components: Vec::new(),
    })
}

/// The same path; or (for references) the host's path without the guest's last
/// `where(resolve() is T)`; or (for strings) one searched member of the host's HumanName or
/// Address (`Patient.name.family` of `Patient.name`).
fn path_covers(host: &Path, guest: &Path) -> bool {
    let last_step_of_host = |last_step: &dyn Fn(&Seg) -> bool| {
        guest
            .segs
            .split_last()
            .is_some_and(|(last, rest)| last_step(last) && rest == host.segs.as_slice())
    };
    if host.kind != guest.kind {
        return guest.kind == Kind::Str
            && last_step_of_host(
                &|last| matches!(last, Seg::Member(part) if string::parts_of(&host.kind).contains(&part.as_str())),
            );
    }
    host.segs == guest.segs
        || (guest.kind == Kind::Reference
            && last_step_of_host(&|last| matches!(last, Seg::RefersTo(_))))
}

fn param_type(name: &str) -> Result<ParamType, String> {
    Ok(match name {
        "token" => ParamType::Token,
        "reference" => ParamType::Reference,
        "string" => ParamType::String,
        "date" => ParamType::Date,
        "quantity" => ParamType::Quantity,
        "number" => ParamType::Number,
        "uri" => ParamType::Uri,
        "special" => ParamType::Special,
        other => return Err(format!("{other} parameters are not supported")),
    })
}

/// Parameters whose R4 meaning needs more than their expression, and why.
const NOT_SEARCHED: &[(&str, &str)] = &[(
    "phonetic",
    "a phonetic match needs an algorithm R4 leaves to each server; use name",
)];

/// One parameter of one base type.
fn compile(types: &Model, def: &Definition, rtype: ResourceType) -> Result<ParamDef, String> {
    if let Some((_, why)) = NOT_SEARCHED.iter().find(|(code, _)| *code == def.code) {
        return Err((*why).to_owned());
    }
    let ptype = param_type(&def.ptype)?;
    let expression = def
        .expression
        .as_deref()
        .ok_or_else(|| "no expression".to_owned())?;
    let expr = fhirpath::parse(expression)?;
    let paths = match &expr {
        Expr::Union(chains) => {
            let mut paths = Vec::new();
            for (segs, ty) in compile_chains(types, chains, rtype)? {
                if never_matches(ptype, &ty) {
                    continue;
                }
                paths.push(Path {
                    kind: kind_of(ptype, &ty, &segs)?,
                    segs: without_contact_filter(segs, &ty),
                });
            }
            paths
        }
        boolean => vec![Path {
            segs: Vec::new(),
            kind: Kind::Boolean(compile_boolean(types, boolean, rtype)?),
        }],
    };
    if paths.is_empty() {
        return Err("no element of this type".into());
    }
    let targets = def
        .target
        .iter()
        .filter_map(|t| ResourceType::parse(t).ok())
        .collect();
    let name: &'static str = Box::leak(def.code.clone().into_boxed_str());
    Ok(ParamDef {
        name,
        stored_as: name,
        ptype,
        paths,
        targets,
        expression: expression.to_owned(),
        url: def.url.clone(),
        components: Vec::new(),
    })
}

/// A composite parameter of one base type: its base elements (the definition's expression),
/// and each component, whose paths start at the base element ([`component_paths`]).
fn compile_composite(
    types: &Model,
    def: &Definition,
    rtype: ResourceType,
    by_url: &HashMap<&str, &Definition>,
) -> Result<ParamDef, String> {
    let expression = def
        .expression
        .as_deref()
        .ok_or_else(|| "no expression".to_owned())?;
    let Expr::Union(bases) = fhirpath::parse(expression)? else {
        return Err("a boolean composite".into());
    };
    let mut base_paths: Vec<(Chain, Vec<Seg>)> = Vec::new();
    for base in bases {
        let compiled = compile_chain(types, &base, rtype)?;
        match compiled.as_slice() {
            [] => {}
            [(segs, _)] => base_paths.push((base, segs.clone())),
            _ => return Err("a composite over a choice of elements".into()),
        }
    }
    if base_paths.is_empty() || def.component.len() < 2 {
        return Err("no element of this type".into());
    }
    let name: &'static str = Box::leak(def.code.clone().into_boxed_str());
    let mut components = Vec::new();
    for component in &def.component {
        let of = by_url
            .get(component.definition.as_str())
            .ok_or_else(|| "a component without a definition".to_owned())?;
        let ptype = param_type(&of.ptype)?;
        if component.expression.starts_with("%resource") {
            return Err(
                "a component read from the whole resource, outside the base element".into(),
            );
        }
        let paths = component_paths(types, rtype, ptype, &base_paths, &component.expression)?;
        if paths.is_empty() {
            return Err("a component with no element of its type".into());
        }
        components.push(ParamDef {
            name,
            stored_as: name,
            ptype,
            paths,
            targets: of
                .target
                .iter()
                .filter_map(|t| ResourceType::parse(t).ok())
                .collect(),
            expression: component.expression.clone(),
            url: component.definition.clone(),
            components: Vec::new(),
        });
    }
    Ok(ParamDef {
        name,
        stored_as: name,
        ptype: ParamType::Composite,
        paths: base_paths
            .into_iter()
            .map(|(_, segs)| Path {
                segs,
                kind: Kind::Element,
            })
            .collect(),
        targets: Vec::new(),
        expression: expression.to_owned(),
        url: def.url.clone(),
        components,
    })
}

/// A component's paths from its base elements: its expression appended to each base chain,
/// compiled from the resource root, and the base's own segments cut off again.
fn component_paths(
    types: &Model,
    rtype: ResourceType,
    ptype: ParamType,
    base_paths: &[(Chain, Vec<Seg>)],
    expression: &str,
) -> Result<Vec<Path>, String> {
    let Expr::Union(chains) = fhirpath::parse(expression)? else {
        return Err("a boolean component".into());
    };
    let mut paths: Vec<Path> = Vec::new();
    for (base, base_segs) in base_paths {
        for chain in &chains {
            let Head::Type(first) = &chain.head else {
                return Err("a component in parentheses".into());
            };
            let mut steps = base.steps.clone();
            steps.push(Step::Member(first.clone()));
            steps.extend(chain.steps.iter().cloned());
            let whole = Chain {
                head: base.head.clone(),
                steps,
            };
            let variants = compile_chain(types, &whole, rtype)?;
            let choice = variants.len() > 1;
            for (segs, ty) in variants {
                if never_matches(ptype, &ty) {
                    continue;
                }
                let relative = segs
                    .strip_prefix(base_segs.as_slice())
                    .ok_or_else(|| "a component outside its base element".to_owned())?
                    .to_vec();
                let kind = match kind_of(ptype, &ty, &relative) {
                    Ok(kind) => kind,
                    // R4 writes a component over a whole choice (`Group.characteristic`'s
                    // `value`) where the component's own definition takes only the variants
                    // of its type (`Group-value`: CodeableConcept or boolean).
                    Err(_) if choice => continue,
                    Err(e) => return Err(e),
                };
                let path = Path {
                    kind,
                    segs: without_contact_filter(relative, &ty),
                };
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    Ok(paths)
}

/// Variants R4 lists in a parameter that no value of the parameter's type can match: a series
/// of measurements (`SampledData`) in a quantity has no single value; an age (`Age`, or a
/// `Range` of ages) in a date (`Procedure.performed[x]`) is relative to a birth date the
/// resource does not hold. They are left out of the parameter, which keeps its other paths.
fn never_matches(ptype: ParamType, ty: &str) -> bool {
    matches!(
        (ptype, ty),
        (ParamType::Quantity, "SampledData") | (ParamType::Date, "Age" | "Range")
    )
}

type Partial = (Vec<Seg>, String);

fn compile_chains(
    types: &Model,
    chains: &[Chain],
    rtype: ResourceType,
) -> Result<Vec<Partial>, String> {
    let mut out = Vec::new();
    for chain in chains {
        out.extend(compile_chain(types, chain, rtype)?);
    }
    Ok(out)
}

fn compile_chain(
    types: &Model,
    chain: &Chain,
    rtype: ResourceType,
) -> Result<Vec<Partial>, String> {
    let mut partials = match &chain.head {
        Head::Type(name)
            if name == rtype.as_str() || name == "Resource" || name == "DomainResource" =>
        {
            vec![(Vec::new(), rtype.as_str().to_owned())]
        }
        // A branch for another base type of the same definition.
        Head::Type(name) if ResourceType::parse(name).is_ok() => return Ok(Vec::new()),
        // A member of the resource itself (`name | alias`: FHIRPath's implicit context).
        Head::Type(name) => types
            .members(rtype.as_str(), name)
            .into_iter()
            .map(|(member, t)| (vec![Seg::Member(member)], t))
            .collect(),
        Head::Group(chains) => compile_chains(types, chains, rtype)?,
    };
    for step in &chain.steps {
        let mut next = Vec::new();
        for (segs, ty) in partials {
            match step {
                Step::Member(name) => {
                    let members = types.members(&ty, name);
                    if members.is_empty() {
                        return Err(format!("{ty} has no element {name}"));
                    }
                    for (member, t) in members {
                        let mut segs = segs.clone();
                        segs.push(Seg::Member(member));
                        next.push((segs, t));
                    }
                }
                Step::OfType(t) => {
                    if &ty == t || names_system_type_of(t, &ty) {
                        next.push((segs, ty));
                    }
                }
                Step::Index(n) => {
                    let mut segs = segs;
                    segs.push(Seg::Index(*n));
                    next.push((segs, ty));
                }
                Step::ResolvesTo(target) => {
                    if ty != "Reference" {
                        return Err(format!("resolve() on {ty}"));
                    }
                    let target = ResourceType::parse(target)
                        .map_err(|_| format!("resolve() is {target}: not a type"))?;
                    let mut segs = segs;
                    segs.push(Seg::RefersTo(target));
                    next.push((segs, ty));
                }
                Step::MemberEquals(member, literal) => {
                    let mut segs = segs;
                    segs.push(Seg::Where(member.clone(), literal.clone()));
                    next.push((segs, ty));
                }
            }
        }
        partials = next;
    }
    Ok(partials)
}

/// Whether `name` is the FHIRPath system type (`DateTime`, `String`) of the FHIR primitive
/// `ty` (`dateTime`, `string`): R4 writes `value.ofType(DateTime)` in `code-value-date`.
fn names_system_type_of(name: &str, ty: &str) -> bool {
    let mut chars = ty.chars();
    chars.next().is_some_and(|first| {
        first.is_ascii_lowercase()
            && name.len() == ty.len()
            && name.starts_with(first.to_ascii_uppercase())
            && name.get(1..) == Some(chars.as_str())
    })
}

/// `Patient.deceased.exists() and Patient.deceased != false`: the element paths it reads.
fn compile_boolean(
    types: &Model,
    expr: &Expr,
    rtype: ResourceType,
) -> Result<super::params::Boolean, String> {
    use super::params::Boolean;
    Ok(match expr {
        Expr::And(a, b) => Boolean::And(
            Box::new(compile_boolean(types, a, rtype)?),
            Box::new(compile_boolean(types, b, rtype)?),
        ),
        Expr::Exists(chain) => Boolean::Exists(segs_only(compile_chain(types, chain, rtype)?)),
        Expr::NotEqual(chain, Literal::Bool(b)) => Boolean::NotEqual(
            segs_only(compile_chain(types, chain, rtype)?),
            Value::Bool(*b),
        ),
        Expr::NotEqual(chain, Literal::String(s)) => Boolean::NotEqual(
            segs_only(compile_chain(types, chain, rtype)?),
            Value::String(s.clone()),
        ),
        Expr::Union(_) => return Err("a union inside a boolean".into()),
    })
}

fn segs_only(partials: Vec<Partial>) -> Vec<Vec<Seg>> {
    partials.into_iter().map(|(segs, _)| segs).collect()
}

/// How values of FHIR type `ty` at `segs` are searched as a `ptype` parameter.
fn kind_of(ptype: ParamType, ty: &str, segs: &[Seg]) -> Result<Kind, String> {
    let primitive_code = matches!(
        ty,
        "code" | "id" | "string" | "boolean" | "uri" | "url" | "canonical" | "oid" | "uuid"
    );
    let kind = match (ptype, ty) {
        (ParamType::Token, _) if primitive_code => Kind::Code,
        (ParamType::Token, "Coding") => Kind::Coding,
        (ParamType::Token, "CodeableConcept") => Kind::Concept,
        (ParamType::Token, "Identifier") => Kind::Identifier,
        (ParamType::Token, "ContactPoint") => match segs.last() {
            Some(Seg::Where(m, v)) if m == "system" && v == "email" => Kind::Email,
            Some(Seg::Where(m, v)) if m == "system" && v == "phone" => Kind::Phone,
            _ => Kind::Contact,
        },
        (ParamType::Reference, "Reference") => Kind::Reference,
        (ParamType::Reference, "canonical" | "uri") => Kind::Canonical,
        (ParamType::String, "string" | "markdown" | "code" | "id" | "uri") => Kind::Str,
        (ParamType::String, "HumanName") => Kind::HumanName,
        (ParamType::String, "Address") => Kind::Address,
        // A `string` variant of a date (`Immunization.occurrenceString`) is searchable where it
        // holds a date; free text never matches.
        (ParamType::Date, "date" | "dateTime" | "instant" | "string") => Kind::Date,
        (ParamType::Date, "Period") => Kind::Period,
        (ParamType::Date, "Timing") => Kind::Timing,
        (
            ParamType::Quantity,
            "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "Money",
        ) => Kind::Quantity,
        (ParamType::Number, "decimal" | "integer" | "positiveInt" | "unsignedInt") => Kind::Number,
        (ParamType::Quantity | ParamType::Number, "Range") => Kind::Range,
        (ParamType::Uri, "uri" | "url" | "canonical" | "oid" | "uuid") => Kind::Uri,
        // R4's one special parameter with an expression: `Location.position`.
        (ParamType::Special, _) if matches!(segs.last(), Some(Seg::Member(m)) if m == "position") => {
            Kind::Position
        }
        (ptype, ty) => return Err(format!("a {ty} element in a {ptype:?} parameter")),
    };
    Ok(kind)
}

/// The `where(system = 'email')` of a ContactPoint path is what [`Kind::Email`] (or `Phone`)
/// checks itself: it is dropped from the path.
fn without_contact_filter(mut segs: Vec<Seg>, ty: &str) -> Vec<Seg> {
    if ty == "ContactPoint" && matches!(segs.last(), Some(Seg::Where(m, _)) if m == "system") {
        segs.pop();
    }
    segs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::search::params::{param, params};

    /// Every definition in the file: each parameter of each base type is either compiled or left
    /// out for one of the documented reasons, and what is left out is exactly this list.
    #[test]
    fn every_expression_in_the_file_compiles_or_is_left_out_for_a_stated_reason() {
        let registry = registry();
        let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
        for s in &registry.skipped {
            let reason = if s.reason.ends_with("parameters are not supported") {
                s.reason.clone()
            } else if s.reason == "no expression" {
                "no expression".to_owned()
            } else {
                format!("{}.{}: {}", s.rtype, s.code, s.reason)
            };
            *by_reason.entry(reason).or_default() += 1;
        }
        let unexpected: Vec<_> = by_reason
            .keys()
            .filter(|r| !r.ends_with("parameters are not supported") && *r != "no expression")
            .filter(|r| !LEFT_OUT_BECAUSE.iter().any(|e| r.ends_with(e)))
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:#?}");
        let compiled: usize = registry.by_type.values().map(Vec::len).sum();
        assert!(compiled > 2_300, "{compiled}");
        assert!(registry.by_type.len() >= 145, "{}", registry.by_type.len());
    }

    /// Why a parameter may be left out because of one of its paths (docs/api.md lists them):
    /// references by canonical URL or uri, quantities that may be Ranges, references to
    /// resources inside the Bundle or to an Attachment.
    const LEFT_OUT_BECAUSE: &[&str] = &[
        "a ResourceList element in a Reference parameter",
        "a Attachment element in a Reference parameter",
        "a phonetic match needs an algorithm R4 leaves to each server; use name",
        // R4's `relationship` swaps its components' definitions (a reference at
        // `relatesTo.code`, a token at `relatesTo.target`).
        "DocumentReference.relationship: a code element in a Reference parameter",
        "a component read from the whole resource, outside the base element",
    ];

    #[test]
    fn the_twelve_types_searched_before_keep_their_parameters_with_the_same_paths() {
        let patient = param(ResourceType::PATIENT, "name").expect("Patient.name");
        assert_eq!(patient.paths.len(), 1);
        assert_eq!(patient.paths[0].segs, [Seg::Member("name".into())]);
        assert_eq!(patient.paths[0].kind, Kind::HumanName);
        let email = param(ResourceType::PATIENT, "email").expect("Patient.email");
        assert_eq!(email.paths[0].segs, [Seg::Member("telecom".into())]);
        assert_eq!(email.paths[0].kind, Kind::Email);
        let date = param(ResourceType::OBSERVATION, "date").expect("Observation.date");
        let mut members: Vec<_> = date.paths.iter().map(|p| (&p.segs[0], &p.kind)).collect();
        members.sort_by_key(|(seg, _)| format!("{seg:?}"));
        assert_eq!(
            members,
            [
                (&Seg::Member("effectiveDateTime".into()), &Kind::Date),
                (&Seg::Member("effectiveInstant".into()), &Kind::Date),
                (&Seg::Member("effectivePeriod".into()), &Kind::Period),
                (&Seg::Member("effectiveTiming".into()), &Kind::Timing),
            ]
        );
        let patient_of = param(ResourceType::OBSERVATION, "patient").expect("patient");
        assert_eq!(
            patient_of.paths[0].segs,
            [
                Seg::Member("subject".into()),
                Seg::RefersTo(ResourceType::PATIENT)
            ]
        );
        assert_eq!(
            patient_of.targets().collect::<Vec<_>>(),
            [ResourceType::PATIENT]
        );
        let vq = param(ResourceType::OBSERVATION, "value-quantity").expect("value-quantity");
        assert_eq!(vq.paths[0].segs, [Seg::Member("valueQuantity".into())]);
        // Every parameter the hand-written table had, for the types it covered.
        for (t, names) in [
            (
                "Patient",
                &[
                    "identifier",
                    "name",
                    "family",
                    "given",
                    "birthdate",
                    "gender",
                    "email",
                    "phone",
                ][..],
            ),
            (
                "Observation",
                &[
                    "subject",
                    "patient",
                    "code",
                    "category",
                    "date",
                    "status",
                    "value-quantity",
                ],
            ),
            (
                "Condition",
                &[
                    "patient",
                    "subject",
                    "code",
                    "clinical-status",
                    "onset-date",
                ],
            ),
            (
                "Encounter",
                &["patient", "subject", "date", "status", "class"],
            ),
            (
                "MedicationRequest",
                &["patient", "subject", "status", "authoredon", "code"],
            ),
            ("Practitioner", &["identifier", "name"]),
            ("Organization", &["identifier", "name"]),
        ] {
            let rtype = ResourceType::parse(t).unwrap();
            for name in names {
                assert!(param(rtype, name).is_some(), "{t}.{name}");
            }
        }
    }

    #[test]
    fn common_parameters_exist_on_every_type_and_come_first() {
        for rtype in ResourceType::all() {
            let names: Vec<_> = params(rtype).iter().map(|d| d.name).collect();
            assert_eq!(&names[..2], ["_id", "_lastUpdated"], "{rtype}");
            for common in ["_tag", "_profile", "_security", "_source"] {
                assert!(names.contains(&common), "{rtype} {common}");
            }
            for (i, name) in names.iter().enumerate() {
                assert!(!names[..i].contains(name), "{rtype}.{name} twice");
            }
        }
        assert_eq!(
            param(ResourceType::PATIENT, "_profile").unwrap().ptype,
            ParamType::Uri
        );
        assert!(param(ResourceType::PATIENT, "Name").is_none());
        assert!(param(ResourceType::OBSERVATION, "birthdate").is_none());
    }

    #[test]
    fn choice_elements_become_one_path_per_variant_and_of_type_keeps_one() {
        let value_string = param(ResourceType::OBSERVATION, "value-string").unwrap();
        let segs: Vec<_> = value_string.paths.iter().map(|p| p.segs.clone()).collect();
        assert_eq!(
            segs,
            [
                vec![Seg::Member("valueString".into())],
                vec![
                    Seg::Member("valueCodeableConcept".into()),
                    Seg::Member("text".into())
                ],
            ]
        );
        let deceased = param(ResourceType::PATIENT, "deceased").unwrap();
        assert!(matches!(deceased.paths[0].kind, Kind::Boolean(_)));
        let members: Vec<_> = deceased.top_members();
        assert!(members.contains(&"deceasedBoolean") && members.contains(&"deceasedDateTime"));
    }
}
