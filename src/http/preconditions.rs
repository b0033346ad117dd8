//! Entity tags and the conditional headers that use them (RFC 9110 §8.8.3, §13.1): an
//! agent's `ETag` names its current version; `If-Match` makes a change conditional on it
//! (412 when it does not hold), `If-None-Match` turns a read of an unchanged agent into a
//! 304 without a body.

use crate::app::Condition;

/// The tags of a header value: `*`, or a comma-separated list of quoted tags, each maybe
/// weak (`W/"..."`). `None` for `*`.
fn tags(value: &str) -> Option<Vec<(bool, String)>> {
    if value.trim() == "*" {
        return None;
    }
    Some(
        value
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(|tag| {
                let (weak, tag) = tag.strip_prefix("W/").map_or((false, tag), |rest| (true, rest));
                (weak, tag.trim_matches('"').to_owned())
            })
            .collect(),
    )
}

/// `If-Match` as a condition on the change. Weak tags never match (strong comparison).
pub(crate) fn if_match(value: Option<&str>) -> Option<Condition> {
    let value = value?;
    Some(match tags(value) {
        None => Condition::Any,
        Some(tags) => Condition::Tags(tags.into_iter().filter(|(weak, _)| !weak).map(|(_, tag)| tag).collect()),
    })
}

/// Whether `If-None-Match` names `current` (a tag without its quotes), weakly compared:
/// then a read answers 304.
pub(crate) fn none_match(value: Option<&str>, current: &str) -> bool {
    value.is_some_and(|value| tags(value).is_none_or(|tags| tags.iter().any(|(_, tag)| tag == current)))
}

/// The `ETag` header value of a tag.
pub(crate) fn quoted(tag: &str) -> String {
    format!("\"{tag}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_reads_star_and_lists_and_ignores_weak_tags() {
        assert_eq!(if_match(None), None);
        assert_eq!(if_match(Some("*")), Some(Condition::Any));
        assert_eq!(if_match(Some(r#""2-a", W/"3-b" ,"4-c""#)), Some(Condition::Tags(vec!["2-a".into(), "4-c".into()])));
        assert_eq!(if_match(Some("")), Some(Condition::Tags(vec![])), "an empty If-Match matches nothing");
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(none_match(Some("*"), "2-a"));
        assert!(none_match(Some(r#"W/"2-a""#), "2-a"));
        assert!(none_match(Some(r#""1-a", "2-a""#), "2-a"));
        assert!(!none_match(Some(r#""1-a""#), "2-a"));
        assert!(!none_match(None, "2-a"));
        assert_eq!(quoted("2-a"), "\"2-a\"");
    }
}
