//! [`Text`]: a request string that is a JSON string. poem-openapi's `String` also takes
//! numbers and booleans (`7` becomes `"7"`); a client sending the wrong type should hear
//! so with a 400, not have it silently converted.

use std::borrow::Cow;
use std::ops::Deref;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A string field of a request body; documented as `type: string`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_json_strings_are_text() {
        assert_eq!(Text::parse_from_json(Some(json!("a"))).unwrap(), Text("a".into()));
        for other in [json!(7), json!(true), json!(null), json!(["a"]), json!({"a": 1})] {
            assert!(Text::parse_from_json(Some(other.clone())).is_err(), "{other}");
        }
        assert!(Text::parse_from_json(None).is_err());
        assert!(<Option<Text>>::parse_from_json(None).unwrap().is_none());
    }
}
