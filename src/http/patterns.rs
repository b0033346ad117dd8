//! The patterns request parameters and fields must match, each compiled once.
//!
//! poem-openapi's own `pattern` validator compiles its regular expression on every check,
//! which put a compilation on every agent request (`X-Tenant-ID`, `{name}`). Operations
//! name these instead (`validator(custom = "...")`); the check answers exactly as the
//! built-in one did (400, "verification failed. pattern(\"...\")"), and
//! [`declare`] writes each pattern back into the document where it applies, so clients and
//! generators see the same constraints as before.

use std::fmt;
use std::sync::LazyLock;

use poem_openapi::validation::Validator;
use regex::Regex;
use serde_json::Value;

/// A regular expression a value must match, compiled on first use.
pub(crate) struct Pattern {
    source: &'static str,
    regex: LazyLock<Regex>,
}

impl Pattern {
    /// The expression as written (and as the document declares it).
    pub(crate) fn source(&self) -> &'static str {
        self.source
    }
}

impl fmt::Display for Pattern {
    /// As poem-openapi's own validator says it, so refusals read as they always did.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern(\"{}\")", self.source)
    }
}

impl<T: AsRef<str>> Validator<T> for &Pattern {
    fn check(&self, value: &T) -> bool {
        self.regex.is_match(value.as_ref())
    }
}

macro_rules! patterns {
    ($($(#[$doc:meta])* $name:ident = $source:literal;)*) => {$(
        $(#[$doc])*
        pub(crate) static $name: Pattern = Pattern { source: $source, regex: LazyLock::new(|| Regex::new($source).expect("a valid pattern")) };
    )*};
}

patterns! {
    /// `X-Tenant-ID`: a tenant id, or empty (naming none).
    TENANT_HEADER = r"^(t_[0-9a-f]{32})?$";
    /// A tenant id in a path.
    TENANT_ID = r"^t_[0-9a-f]{32}$";
    /// An agent's name (a DNS label).
    AGENT_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
    /// The SHA-256 digest of an API key, in hex.
    KEY_HASH = r"^[0-9a-f]{64}$";
    /// A page cursor of an audit trail.
    CURSOR = r"^[0-9a-f]{80}$";
    /// A period of run metrics: seconds or minutes, hours up to a year, or days.
    PERIOD = r"^([1-9][0-9]{0,3}[sm]|([1-9][0-9]{0,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-7][0-9]|878[0-4])h|([1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$";
    /// `If-Match`: `*`, or a comma-separated list of entity tags, each maybe weak
    /// (`W/"..."`), of the characters RFC 9110 allows in a tag, with spaces and tabs around
    /// them (not `\s`: what counts as white space differs between regular-expression
    /// engines, and the document's readers must agree with the server). An empty value
    /// names nothing.
    IF_MATCH = r#"^[ \t]*(\*|(W/)?"[\x21\x23-\x7e]*"([ \t]*,[ \t]*(W/)?"[\x21\x23-\x7e]*")*)[ \t]*$"#;
    /// A run's session id.
    SESSION_ID = r"^[A-Za-z0-9._:-]{1,128}$";
    /// A name or label for people: not only white space, no control characters.
    LABEL = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
    /// A node profile: lower-case letters, digits and `-`.
    NODE_PROFILE = r"^[a-z0-9-]{1,63}$";
    /// An email address `local@domain`, the domain of DNS labels with at least one dot.
    EMAIL = r#"^\s*[^\s@()<>\[\]\\,;:"\x00-\x1f\x7f-\x9f.]+(\.[^\s@()<>\[\]\\,;:"\x00-\x1f\x7f-\x9f.]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\s*$"#;
}

/// The pattern of each operation parameter that has one, by the parameter's name.
const PARAMETERS: &[(&str, &Pattern)] = &[
    ("X-Tenant-ID", &TENANT_HEADER),
    ("tenantId", &TENANT_ID),
    ("name", &AGENT_NAME),
    ("keyHash", &KEY_HASH),
    ("cursor", &CURSOR),
    ("period", &PERIOD),
    ("If-Match", &IF_MATCH),
];

/// The pattern of each request field that has one: its schema, its property.
const FIELDS: &[(&str, &str, &Pattern)] = &[
    ("RegisterRequest", "email", &EMAIL),
    ("RegisterRequest", "displayName", &LABEL),
    ("CreateTenantRequest", "displayName", &LABEL),
    ("CreateTenantRequest", "nodeProfile", &NODE_PROFILE),
    ("CreateKeyRequest", "label", &LABEL),
    ("AgentRunRequest", "sessionId", &SESSION_ID),
];

/// Declares every pattern above in `document` where it applies: on every parameter of
/// that name, and on every field listed.
pub(crate) fn declare(document: &mut Value) {
    for operations in document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for operation in operations.as_object_mut().into_iter().flat_map(|operations| operations.values_mut()) {
            for parameter in operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                let named = parameter["name"].as_str().and_then(|name| PARAMETERS.iter().find(|(known, _)| *known == name));
                if let (Some((_, pattern)), Some(schema)) = (named, parameter.get_mut("schema")) {
                    schema["pattern"] = Value::from(pattern.source());
                }
            }
        }
    }
    for (schema, property, pattern) in FIELDS {
        if let Some(property) = document.pointer_mut(&format!("/components/schemas/{schema}/properties/{property}")) {
            property["pattern"] = Value::from(pattern.source());
        }
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::validation::Validator;

    use super::*;

    #[test]
    fn patterns_match_as_written_and_say_so() {
        assert!((&TENANT_HEADER).check(&""));
        assert!((&TENANT_HEADER).check(&"t_0123456789abcdef0123456789abcdef"));
        assert!(!(&TENANT_HEADER).check(&"t_0123456789ABCDEF0123456789abcdef"));
        assert!((&AGENT_NAME).check(&"agent-1"));
        assert!(!(&AGENT_NAME).check(&"-agent"));
        assert_eq!(TENANT_ID.to_string(), r#"pattern("^t_[0-9a-f]{32}$")"#);
    }

    #[test]
    fn if_match_is_a_star_or_entity_tags() {
        for accepted in ["*", " * ", r#""2-a""#, r#"W/"2-a""#, r#""2-a", W/"3-b" ,"4-c""#, r#""""#] {
            assert!((&IF_MATCH).check(&accepted), "{accepted}");
        }
        for refused in ["", " ", "\u{1c}*", "\n*", "2-a", r#""2-a"#, r#""a"b""#, "*, \"2-a\"", r#""2-a",,"#, "w/\"2-a\""] {
            assert!(!(&IF_MATCH).check(&refused), "{refused}");
        }
    }

    #[test]
    fn every_pattern_compiles() {
        for pattern in PARAMETERS.iter().map(|(_, p)| *p).chain(FIELDS.iter().map(|(_, _, p)| *p)) {
            assert!(Regex::new(pattern.source()).is_ok(), "{}", pattern.source());
            let _ = (&pattern).check(&"x");
        }
    }
}
