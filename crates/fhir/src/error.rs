//! The crate's error type.

/// Errors returned by this crate.
///
/// No variant's message ever echoes client input: these errors may be logged and shown to a
/// client as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The string is not one of the 146 FHIR R4 resource type names.
    #[error("unknown FHIR R4 resource type")]
    UnknownResourceType,
    /// The string is not a valid FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
    #[error("invalid FHIR resource id")]
    InvalidId,
    /// The JSON document nests arrays and objects deeper than allowed.
    #[error("JSON document nested deeper than {max} levels")]
    TooDeep {
        /// The maximum depth that was allowed.
        max: usize,
    },
    /// The vendored FHIR schema could not be loaded or compiled. This is an internal error (a
    /// bug or a corrupt build), never the client's fault.
    #[error("the FHIR R4 schema could not be loaded: {0}")]
    Schema(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_fixed_text() {
        assert_eq!(
            FhirError::UnknownResourceType.to_string(),
            "unknown FHIR R4 resource type"
        );
        assert_eq!(FhirError::InvalidId.to_string(), "invalid FHIR resource id");
        assert_eq!(
            FhirError::TooDeep { max: 64 }.to_string(),
            "JSON document nested deeper than 64 levels"
        );
    }
}
