//! Building FHIR `OperationOutcome` resources (as JSON values).

use serde_json::{Map, Value, json};

use crate::Issue;
use crate::validate::{
    MSG_NOT_ALLOWED_VALUE, MSG_PATTERN, MSG_REQUIRED, MSG_STRING_TOO_LONG, MSG_UNKNOWN_ELEMENT,
    MSG_UNKNOWN_RESOURCE_TYPE, MSG_WRONG_RESOURCE_TYPE, MSG_WRONG_TYPE, MSG_WRONG_VALUE,
};

/// The severity of an `OperationOutcome` issue (`http://hl7.org/fhir/issue-severity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The issue caused the action to fail and no further checking could be performed.
    Fatal,
    /// The issue is sufficiently important to cause the action to fail.
    Error,
    /// The issue is not important enough to cause the action to fail.
    Warning,
    /// The issue has no relation to the degree of success of the action.
    Information,
}

impl Severity {
    /// The FHIR code: `fatal`, `error`, `warning` or `information`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// The codes of `http://hl7.org/fhir/valueset-issue-type` (R4).
const ISSUE_TYPES: [&str; 31] = [
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
];

/// The code used in place of a `code` that is not an IssueType code.
const FALLBACK_CODE: &str = "processing";

/// An `OperationOutcome` with a single issue.
///
/// `code` is an IssueType code from `http://hl7.org/fhir/valueset-issue-type` (`invalid`,
/// `structure`, `required`, `value`, `security`, `login`, `forbidden`, `not-found`, `deleted`,
/// `too-long`, `conflict`, `exception`, `transient`, `throttled`, `not-supported`,
/// `processing`, `informational`, ...); any other string is replaced by `processing` so that the
/// result is always a valid resource. `diagnostics` is sent to the client as is: never put
/// patient data or internal details in it. An empty `diagnostics` is left out (FHIR strings
/// cannot be empty).
#[must_use]
pub fn single(severity: Severity, code: &str, diagnostics: &str) -> Value {
    operation_outcome(vec![issue(severity, code, diagnostics, None)])
}

/// An `OperationOutcome` with one issue per validation [`Issue`]: severity `error`, code
/// `required`, `structure` or `value` where the kind of problem says so (`invalid` otherwise),
/// `diagnostics` = the message and `expression` = `[location]`.
///
/// An empty slice gives a single `information` issue, since an `OperationOutcome` needs at
/// least one.
#[must_use]
pub fn from_issues(issues: &[Issue]) -> Value {
    if issues.is_empty() {
        return single(Severity::Information, "informational", "no issues");
    }
    let issues = issues
        .iter()
        .map(|i| {
            issue(
                Severity::Error,
                code_for(&i.message),
                &i.message,
                Some(&i.location),
            )
        })
        .collect();
    operation_outcome(issues)
}

/// The IssueType code that best describes a validation issue message.
fn code_for(message: &str) -> &'static str {
    let starts = |prefix: &str| message.starts_with(prefix);
    if starts(MSG_REQUIRED) {
        "required"
    } else if starts(MSG_UNKNOWN_ELEMENT)
        || starts(MSG_WRONG_TYPE)
        || starts(MSG_UNKNOWN_RESOURCE_TYPE)
        || starts(MSG_WRONG_RESOURCE_TYPE)
    {
        "structure"
    } else if starts(MSG_PATTERN) || starts(MSG_NOT_ALLOWED_VALUE) || starts(MSG_WRONG_VALUE) {
        "value"
    } else if starts(MSG_STRING_TOO_LONG) {
        "too-long"
    } else {
        "invalid"
    }
}

fn issue(severity: Severity, code: &str, diagnostics: &str, expression: Option<&str>) -> Value {
    let code = ISSUE_TYPES
        .iter()
        .find(|known| **known == code)
        .copied()
        .unwrap_or(FALLBACK_CODE);
    let mut issue = Map::new();
    issue.insert("severity".into(), severity.as_str().into());
    issue.insert("code".into(), code.into());
    if !diagnostics.is_empty() {
        issue.insert("diagnostics".into(), diagnostics.into());
    }
    if let Some(expression) = expression.filter(|e| !e.is_empty()) {
        issue.insert("expression".into(), json!([expression]));
    }
    Value::Object(issue)
}

fn operation_outcome(issues: Vec<Value>) -> Value {
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::{ResourceType, Validator};

    fn validator() -> &'static Validator {
        static VALIDATOR: OnceLock<Validator> = OnceLock::new();
        VALIDATOR.get_or_init(|| Validator::new().expect("vendored schema loads"))
    }

    fn assert_valid_outcome(outcome: &Value) {
        assert_eq!(
            validator().validate(ResourceType::OPERATION_OUTCOME, outcome),
            Ok(())
        );
    }

    #[test]
    fn single_issue() {
        let outcome = single(Severity::Error, "not-found", "resource not found");
        assert_eq!(
            outcome,
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{ "severity": "error", "code": "not-found", "diagnostics": "resource not found" }]
            })
        );
        assert_valid_outcome(&outcome);
    }

    #[test]
    fn every_severity_and_code_is_valid() {
        for severity in [
            Severity::Fatal,
            Severity::Error,
            Severity::Warning,
            Severity::Information,
        ] {
            for code in ISSUE_TYPES {
                assert_valid_outcome(&single(severity, code, "x"));
            }
        }
    }

    #[test]
    fn unknown_code_and_empty_diagnostics_still_give_a_valid_resource() {
        let outcome = single(Severity::Warning, "no-such-code", "");
        assert_eq!(
            outcome["issue"][0],
            json!({ "severity": "warning", "code": "processing" })
        );
        assert_valid_outcome(&outcome);
    }

    #[test]
    fn from_validation_issues() {
        let issues = vec![
            Issue {
                location: "Patient".into(),
                message: "required element missing: x".into(),
            },
            Issue {
                location: "Patient.foo".into(),
                message: "unknown element".into(),
            },
            Issue {
                location: "Patient.birthDate".into(),
                message: "does not match the required pattern for date".into(),
            },
            Issue {
                location: "Patient.name[0]".into(),
                message: "wrong type: expected array".into(),
            },
            Issue {
                location: "Patient.x".into(),
                message: "something else".into(),
            },
        ];
        let outcome = from_issues(&issues);
        assert_valid_outcome(&outcome);
        let codes: Vec<&str> = outcome["issue"]
            .as_array()
            .expect("issues")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert_eq!(
            codes,
            ["required", "structure", "value", "structure", "invalid"]
        );
        assert_eq!(
            outcome["issue"][2],
            json!({
                "severity": "error",
                "code": "value",
                "diagnostics": "does not match the required pattern for date",
                "expression": ["Patient.birthDate"]
            })
        );
    }

    #[test]
    fn from_real_validation_issues() {
        let patient = json!({
            "resourceType": "Patient",
            "birthDate": "CANARY-7f3a-SMITH",
            "gender": 3,
            "CANARY-7f3a-SMITH": true,
            "extra": 1
        });
        let issues = validator()
            .validate(ResourceType::PATIENT, &patient)
            .expect_err("invalid patient");
        let outcome = from_issues(&issues);
        assert_valid_outcome(&outcome);
        assert_eq!(
            outcome["issue"].as_array().map(Vec::len),
            Some(issues.len())
        );
        assert!(!outcome.to_string().contains("CANARY"));
    }

    #[test]
    fn empty_issue_list_gives_information() {
        let outcome = from_issues(&[]);
        assert_eq!(outcome["issue"][0]["severity"], "information");
        assert_valid_outcome(&outcome);
    }
}
