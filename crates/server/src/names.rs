//! Names an operator or a caller gives and the core keeps: a policy's, an API key's, a node's,
//! an organization's. Each is checked once where it enters (the API, the CLI, the
//! configuration) and travels typed from there, so a function that takes a [`PolicyName`]
//! cannot be handed an API key's name or a string nobody checked.
//!
//! A rejected name's message states the rule and never repeats the value.

use std::fmt;

/// Why a name was refused: which kind of name, and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameError {
    what: &'static str,
    rule: &'static str,
}

impl NameError {
    /// The rule alone (`must be ...`), for messages that name the field themselves.
    #[must_use]
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.rule)
    }
}

impl std::error::Error for NameError {}

impl From<NameError> for crate::Error {
    fn from(e: NameError) -> Self {
        crate::Error::BadRequest(e.to_string())
    }
}

/// `a-z 0-9 - _ .`
fn lowercase_word(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)
}

/// `A-Z a-z 0-9 - _ .`
fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.".contains(&b)
}

macro_rules! name_type {
    (
        $(#[$doc:meta])*
        $name:ident: $what:literal, $min:literal..=$max:literal of $chars:path, $rule:literal
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A ", $what, ": ", $rule, ".")]
            pub fn parse(text: &str) -> Result<Self, NameError> {
                if ($min..=$max).contains(&text.len()) && text.bytes().all($chars) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(NameError {
                        what: $what,
                        rule: $rule,
                    })
                }
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            #[must_use]
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                Self::parse(text)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

name_type!(
    /// A custom Cedar policy's name (`carevault policy put NAME`).
    PolicyName: "policy name", 1..=64 of lowercase_word,
    "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"
);

name_type!(
    /// An API key's name, unique among keys (`carevault key create NAME`).
    ApiKeyName: "key name", 2..=64 of lowercase_word,
    "must be 2-64 characters of a-z, 0-9, '-', '_' or '.'"
);

name_type!(
    /// A FHIR Organization's id, as a user's organization and a compartment's owner.
    OrganizationId: "organization", 1..=64 of word,
    "must be 1-64 characters of letters, digits, '.', '_' or '-' (a FHIR Organization id)"
);

name_type!(
    /// This node's name among the nodes on one database: it keys the node's audit hash chain.
    NodeId: "node id", 1..=64 of word,
    "must be 1-64 characters of letters, digits, '-', '_' or '.'"
);

impl OrganizationId {
    /// An organization read back from the database. Only a valid id is ever written, so one
    /// that does not parse was edited in: it counts as none (fewer rights, never another
    /// organization's), and a warning says so without the value.
    #[must_use]
    pub fn stored(text: Option<&str>) -> Option<Self> {
        let text = text?;
        let parsed = Self::parse(text).ok();
        if parsed.is_none() {
            tracing::warn!(
                event = "stored_organization_invalid",
                "a stored organization is not a valid id; it counts as none"
            );
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_own_rule() {
        assert!(PolicyName::parse("a").is_ok());
        assert!(ApiKeyName::parse("a").is_err(), "keys need two characters");
        assert!(ApiKeyName::parse("lab-feed.v2").is_ok());
        for lower_only in [
            PolicyName::parse("Org").is_err(),
            ApiKeyName::parse("Ab").is_err(),
        ] {
            assert!(lower_only);
        }
        for good in ["o", "Org-A", "clinic.north_2", &"o".repeat(64)] {
            assert!(OrganizationId::parse(good).is_ok(), "{good}");
            assert!(NodeId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "org a", "org/a", "ü", &"o".repeat(65)] {
            assert!(OrganizationId::parse(bad).is_err(), "{bad}");
            assert!(NodeId::parse(bad).is_err(), "{bad}");
            assert!(PolicyName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stored_organization_that_does_not_parse_counts_as_none() {
        assert_eq!(OrganizationId::stored(None), None);
        assert_eq!(
            OrganizationId::stored(Some("org-a"))
                .as_ref()
                .map(OrganizationId::as_str),
            Some("org-a")
        );
        assert_eq!(OrganizationId::stored(Some("org a/edited")), None);
    }

    #[test]
    fn a_refusal_states_the_rule_and_never_the_value() {
        let canary = "CANARY Secret/Name";
        let e = PolicyName::parse(canary).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy name must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"
        );
        assert_eq!(
            e.rule(),
            "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'"
        );
        let e = crate::Error::from(OrganizationId::parse(canary).unwrap_err());
        assert!(!format!("{e:?}").contains("CANARY"));
        assert_eq!(
            ApiKeyName::parse("feed").unwrap().to_string(),
            "feed",
            "a name shows as itself"
        );
    }
}
