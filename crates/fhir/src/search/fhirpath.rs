//! The FHIRPath of R4's search parameter definitions: a parser for the subset that
//! `search-parameters.json` uses.
//!
//! What the 1,378 definitions use, and all this accepts: member paths from a type name
//! (`Observation.code`), unions (`|`), parentheses, `ofType(Type)`, an index (`[0]`),
//! `where(resolve() is Type)`, `where(member = 'literal')`, and one boolean expression
//! (`Patient.deceased.exists() and Patient.deceased != false`). Anything else is an error naming
//! what was not understood; a test walks every expression in the file.
//!
//! The tree is typed and compiled against the FHIR JSON schema elsewhere
//! ([`super::definitions`]): this module knows syntax only.

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Expr {
    /// `a | b | ...`: the values of every branch.
    Union(Vec<Chain>),
    /// `a.exists() and a != false`-style booleans: `And` of two boolean terms.
    And(Box<Expr>, Box<Expr>),
    /// `chain.exists()`.
    Exists(Chain),
    /// `chain != literal`.
    NotEqual(Chain, Literal),
}

/// A path: where it starts, then its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Chain {
    pub(super) head: Head,
    pub(super) steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// A type name (`Observation`, `Resource`): the resource itself, when it is of that type.
    Type(String),
    /// A parenthesized union.
    Group(Vec<Chain>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// `.name`
    Member(String),
    /// `.ofType(Type)`
    OfType(String),
    /// `[n]`
    Index(usize),
    /// `.where(resolve() is Type)`: references to that type.
    ResolvesTo(String),
    /// `.where(member = 'literal')`
    MemberEquals(String, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Literal {
    Bool(bool),
    String(String),
}

/// Parse `text`. The error says what was not understood (the expression comes from the
/// embedded definitions, never from a request).
pub(super) fn parse(text: &str) -> Result<Expr, String> {
    let mut p = Parser {
        tokens: tokenize(text)?,
        at: 0,
    };
    let expr = p.expr()?;
    match p.peek() {
        None => Ok(expr),
        Some(t) => Err(format!("unexpected {t:?} in {text}")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Int(usize),
    Punct(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Ident(text[i..end].to_owned()));
        } else if c.is_ascii_digit() {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    end = j + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            let n = text[i..end]
                .parse()
                .map_err(|_| format!("bad number in {text}"))?;
            out.push(Token::Int(n));
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, ch)) => s.push(ch),
                    None => return Err(format!("unterminated string in {text}")),
                }
            }
            out.push(Token::Str(s));
        } else {
            chars.next();
            let punct = match c {
                '.' => ".",
                '|' => "|",
                '(' => "(",
                ')' => ")",
                '[' => "[",
                ']' => "]",
                '=' => "=",
                '!' if chars.next_if(|&(_, d)| d == '=').is_some() => "!=",
                _ => return Err(format!("unexpected {c:?} in {text}")),
            };
            out.push(Token::Punct(punct));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(p)) if *p == punct) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> Result<(), String> {
        if self.eat(punct) {
            Ok(())
        } else {
            Err(format!("expected {punct:?}, found {:?}", self.peek()))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(name)) => Ok(name),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    /// `boolean (and boolean)*` or `chain (| chain)*`.
    fn expr(&mut self) -> Result<Expr, String> {
        let (first, boolean) = self.chain_or_boolean()?;
        if let Some(boolean) = boolean {
            let mut expr = boolean;
            while matches!(self.peek(), Some(Token::Ident(w)) if w == "and") {
                self.at += 1;
                let (_, Some(rhs)) = self.chain_or_boolean()? else {
                    return Err("`and` needs a boolean on its right".into());
                };
                expr = Expr::And(Box::new(expr), Box::new(rhs));
            }
            return Ok(expr);
        }
        let mut chains = vec![first];
        while self.eat("|") {
            let (chain, boolean) = self.chain_or_boolean()?;
            if boolean.is_some() {
                return Err("a boolean in a union".into());
            }
            chains.push(chain);
        }
        Ok(Expr::Union(chains))
    }

    /// A chain, and the boolean it forms when followed by `.exists()` or `!= literal`.
    fn chain_or_boolean(&mut self) -> Result<(Chain, Option<Expr>), String> {
        let head = if self.eat("(") {
            let Expr::Union(chains) = self.expr()? else {
                return Err("a boolean in parentheses".into());
            };
            self.expect(")")?;
            Head::Group(chains)
        } else {
            Head::Type(self.ident()?)
        };
        let mut chain = Chain {
            head,
            steps: Vec::new(),
        };
        loop {
            if self.eat("[") {
                let Some(Token::Int(n)) = self.next() else {
                    return Err("an index that is not a number".into());
                };
                self.expect("]")?;
                chain.steps.push(Step::Index(n));
            } else if self.eat(".") {
                let name = self.ident()?;
                if !self.eat("(") {
                    chain.steps.push(Step::Member(name));
                    continue;
                }
                match name.as_str() {
                    "ofType" => {
                        chain.steps.push(Step::OfType(self.ident()?));
                        self.expect(")")?;
                    }
                    "where" => {
                        let step = self.where_argument()?;
                        chain.steps.push(step);
                        self.expect(")")?;
                    }
                    "exists" => {
                        self.expect(")")?;
                        return Ok((chain.clone(), Some(Expr::Exists(chain))));
                    }
                    other => return Err(format!("the function {other}() is not supported")),
                }
            } else if self.eat("!=") {
                let literal = match self.next() {
                    Some(Token::Ident(w)) if w == "true" => Literal::Bool(true),
                    Some(Token::Ident(w)) if w == "false" => Literal::Bool(false),
                    Some(Token::Str(s)) => Literal::String(s),
                    other => return Err(format!("expected a literal, found {other:?}")),
                };
                return Ok((chain.clone(), Some(Expr::NotEqual(chain, literal))));
            } else {
                return Ok((chain, None));
            }
        }
    }

    /// `resolve() is Type` or `member = 'literal'`.
    fn where_argument(&mut self) -> Result<Step, String> {
        let name = self.ident()?;
        if name == "resolve" {
            self.expect("(")?;
            self.expect(")")?;
            if self.ident()? != "is" {
                return Err("only `resolve() is Type` is supported in where()".into());
            }
            return Ok(Step::ResolvesTo(self.ident()?));
        }
        self.expect("=")?;
        match self.next() {
            Some(Token::Str(literal)) => Ok(Step::MemberEquals(name, literal)),
            other => Err(format!("expected a string literal, found {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Step {
        Step::Member(name.to_owned())
    }

    fn chain(head: &str, steps: Vec<Step>) -> Chain {
        Chain {
            head: Head::Type(head.to_owned()),
            steps,
        }
    }

    #[test]
    fn paths_unions_and_filters_parse() {
        assert_eq!(
            parse("Observation.subject.where(resolve() is Patient) | Condition.code").unwrap(),
            Expr::Union(vec![
                chain(
                    "Observation",
                    vec![member("subject"), Step::ResolvesTo("Patient".into())]
                ),
                chain("Condition", vec![member("code")]),
            ])
        );
        assert_eq!(
            parse("(Observation.value.ofType(CodeableConcept)).text").unwrap(),
            Expr::Union(vec![Chain {
                head: Head::Group(vec![chain(
                    "Observation",
                    vec![member("value"), Step::OfType("CodeableConcept".into())]
                )]),
                steps: vec![member("text")],
            }])
        );
        assert_eq!(
            parse("Patient.telecom.where(system='email') | Bundle.entry[0].resource").unwrap(),
            Expr::Union(vec![
                chain(
                    "Patient",
                    vec![
                        member("telecom"),
                        Step::MemberEquals("system".into(), "email".into())
                    ]
                ),
                chain(
                    "Bundle",
                    vec![member("entry"), Step::Index(0), member("resource")]
                ),
            ])
        );
    }

    #[test]
    fn the_one_boolean_parses() {
        let deceased = chain("Patient", vec![member("deceased")]);
        assert_eq!(
            parse("Patient.deceased.exists() and Patient.deceased != false").unwrap(),
            Expr::And(
                Box::new(Expr::Exists(deceased.clone())),
                Box::new(Expr::NotEqual(deceased, Literal::Bool(false)))
            )
        );
    }

    #[test]
    fn what_is_not_understood_is_an_error() {
        for text in [
            "Patient.name.first()",
            "Patient.name.where(given.exists())",
            "Patient.name +",
            "(Patient.name",
            "Patient.name[x]",
            "Patient.name | Patient.deceased.exists()",
            "%resource.id",
            "'unterminated",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
