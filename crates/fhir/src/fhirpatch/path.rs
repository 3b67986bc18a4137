//! The FHIRPath subset that FHIRPath Patch paths are written in, as clients send them:
//! `Patient.name`, `Patient.name[0].given`, `Patient.telecom.where(system='phone')`,
//! `Patient.identifier.where(system='x' and value='y').first()`. A path is parsed once, then
//! evaluated to the JSON locations it selects.
//!
//! Only that subset is accepted: a leading type name (or none), member names, `[n]`,
//! `where(m = literal and ...)` with string, boolean and integer literals, and `first()`. A
//! choice element may be named without its type (`Observation.value` selects `valueQuantity`).

use serde_json::Value;

/// The longest path accepted, in bytes.
const MAX_PATH_LEN: usize = 2048;
/// The most steps (members, indexes, functions) in one path.
const MAX_STEPS: usize = 64;
/// The most comparisons in one `where(...)`.
const MAX_CONDITIONS: usize = 8;

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Path {
    /// The leading resource type, when the path starts with one.
    resource_type: Option<String>,
    pub(super) steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Member(String),
    Index(usize),
    Where(Vec<(String, Literal)>),
    First,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    String(String),
    Boolean(bool),
    Integer(i64),
}

/// One step of a JSON location: a member of an object or an item of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Where a selected element is in the document, from its root.
pub(super) type Loc = Vec<Seg>;

impl Path {
    /// Parse `text`; None when it is not in the supported subset.
    pub(super) fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_PATH_LEN {
            return None;
        }
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
        };
        p.spaces();
        let first = p.identifier()?;
        let (resource_type, mut steps) = if first.starts_with(|c: char| c.is_ascii_uppercase()) {
            (Some(first), Vec::new())
        } else {
            (None, vec![Step::Member(first)])
        };
        loop {
            p.spaces();
            match p.peek() {
                None => break,
                Some(b'[') => {
                    p.at += 1;
                    steps.push(Step::Index(p.index()?));
                    p.expect(b']')?;
                }
                Some(b'.') => {
                    p.at += 1;
                    let name = p.identifier()?;
                    if p.peek() == Some(b'(') {
                        p.at += 1;
                        steps.push(p.function(&name)?);
                    } else {
                        steps.push(Step::Member(name));
                    }
                }
                Some(_) => return None,
            }
            if steps.len() > MAX_STEPS {
                return None;
            }
        }
        Some(Self {
            resource_type,
            steps,
        })
    }

    /// This path without its last step when that is a member name: the element holding a list,
    /// and the list's name (as `insert` and `move` address a list).
    pub(super) fn split_list(&self) -> Option<(Self, &str)> {
        let (last, init) = self.steps.split_last()?;
        let Step::Member(name) = last else {
            return None;
        };
        let parent = Self {
            resource_type: self.resource_type.clone(),
            steps: init.to_vec(),
        };
        Some((parent, name))
    }

    /// The locations this path selects in `doc`, in document order.
    pub(super) fn select(&self, doc: &Value) -> Result<Vec<Loc>, &'static str> {
        if let Some(t) = &self.resource_type
            && doc.get("resourceType").and_then(Value::as_str) != Some(t.as_str())
        {
            return Err("its path does not start with the resource's type");
        }
        let mut selected: Vec<Loc> = vec![Vec::new()];
        for step in &self.steps {
            selected = match step {
                Step::Member(name) => selected
                    .iter()
                    .flat_map(|loc| members(doc, loc, name))
                    .collect(),
                Step::Index(n) => selected.into_iter().nth(*n).into_iter().collect(),
                Step::First => selected.into_iter().take(1).collect(),
                Step::Where(conditions) => selected
                    .into_iter()
                    .filter(|loc| {
                        get(doc, loc).is_some_and(|v| {
                            conditions
                                .iter()
                                .all(|(m, lit)| v.get(m).is_some_and(|x| lit.matches(x)))
                        })
                    })
                    .collect(),
            };
        }
        Ok(selected)
    }
}

impl Literal {
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (Literal::String(s), Value::String(v)) => s == v,
            (Literal::Boolean(b), Value::Bool(v)) => b == v,
            (Literal::Integer(i), Value::Number(n)) => n.as_i64() == Some(*i),
            _ => false,
        }
    }
}

/// The value at `loc`.
pub(super) fn get<'a>(doc: &'a Value, loc: &[Seg]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(i),
    })
}

/// The value at `loc`, to change.
pub(super) fn get_mut<'a>(doc: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k),
        Seg::Index(i) => v.get_mut(i),
    })
}

/// The locations of the member `name` of the object at `loc`: one per item when it is an array.
/// A choice element named without its type (`value`) selects the one present (`valueQuantity`).
fn members(doc: &Value, loc: &Loc, name: &str) -> Vec<Loc> {
    let Some(object) = get(doc, loc).and_then(Value::as_object) else {
        return Vec::new();
    };
    let key = if object.contains_key(name) {
        Some(name)
    } else {
        object.keys().map(String::as_str).find(|k| {
            k.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
    };
    let Some((key, value)) = key.and_then(|k| object.get_key_value(k)) else {
        return Vec::new();
    };
    let mut base = loc.clone();
    base.push(Seg::Key(key.clone()));
    match value {
        Value::Array(items) => (0..items.len())
            .map(|i| {
                let mut item = base.clone();
                item.push(Seg::Index(i));
                item
            })
            .collect(),
        _ => vec![base],
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn spaces(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.spaces();
        (self.peek() == Some(c)).then(|| self.at += 1)
    }

    fn identifier(&mut self) -> Option<String> {
        self.spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.at += 1;
        }
        let id = std::str::from_utf8(self.s.get(start..self.at)?).ok()?;
        id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            .then(|| id.to_owned())
    }

    fn index(&mut self) -> Option<usize> {
        self.spaces();
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        // A number too large for usize is not an index of anything.
        std::str::from_utf8(self.s.get(start..self.at)?)
            .ok()?
            .parse()
            .ok()
    }

    /// `where(...)` or `first()`, after the opening parenthesis.
    fn function(&mut self, name: &str) -> Option<Step> {
        match name {
            "first" => {
                self.expect(b')')?;
                Some(Step::First)
            }
            "where" => {
                let mut conditions = Vec::new();
                loop {
                    let member = self.identifier()?;
                    self.expect(b'=')?;
                    conditions.push((member, self.literal()?));
                    if conditions.len() > MAX_CONDITIONS {
                        return None;
                    }
                    self.spaces();
                    if self.peek() == Some(b')') {
                        self.at += 1;
                        return Some(Step::Where(conditions));
                    }
                    if self.identifier()? != "and" {
                        return None;
                    }
                }
            }
            _ => None,
        }
    }

    fn literal(&mut self) -> Option<Literal> {
        self.spaces();
        match self.peek()? {
            b'\'' => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek()? {
                        b'\'' => {
                            self.at += 1;
                            return String::from_utf8(out).ok().map(Literal::String);
                        }
                        b'\\' => {
                            let escaped = *self.s.get(self.at + 1)?;
                            out.push(match escaped {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                other => other,
                            });
                            self.at += 2;
                        }
                        c => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = self.at;
                self.at += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.at += 1;
                }
                let n = std::str::from_utf8(self.s.get(start..self.at)?).ok()?;
                n.parse().ok().map(Literal::Integer)
            }
            _ => match self.identifier()?.as_str() {
                "true" => Some(Literal::Boolean(true)),
                "false" => Some(Literal::Boolean(false)),
                _ => None,
            },
        }
    }
}
