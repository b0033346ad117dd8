//! The request body of agent POST and PUT: the raw `astromesh/v1` manifest, as YAML
//! (`application/yaml`, `application/x-yaml`, with or without parameters such as
//! `; charset=utf-8`) or JSON. Hostile documents are refused cheaply: bodies are capped at
//! 1 MiB before parsing, and both formats are parsed by one [`Bounded`] builder that
//! counts what it builds as it goes: past [`MAX_DEPTH`] levels of nesting, or past
//! [`MAX_MANIFEST_BYTES`] of JSON once YAML aliases are expanded, it stops at once with
//! 400, before building anything more. The count is exactly the length of the document's
//! compact JSON (what is stored): the digits of each number, each string's quotes and
//! escapes, the punctuation between items.

use std::cell::{Cell, RefCell};
use std::fmt;

use nexus_ports::agents::{MAX_DEPTH, MAX_MANIFEST_BYTES, too_deep, too_large};
use poem::{Request, RequestBody};
use poem_openapi::ApiRequest;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::{ApiError, AuthenticatedWriteErrors};

/// What a [`Bounded`] build has spent, and why it stopped when it did.
struct Meter {
    /// Bytes of compact JSON the document takes so far.
    used: Cell<usize>,
    /// The most it may take.
    bound: usize,
    /// Set when a limit stopped the build.
    refusal: RefCell<Option<String>>,
}

impl Meter {
    fn new() -> Self {
        Self::with_bound(MAX_MANIFEST_BYTES)
    }

    fn with_bound(bound: usize) -> Self {
        Self { used: Cell::new(0), bound, refusal: RefCell::new(None) }
    }

    fn refuse<E: de::Error>(&self, why: String) -> E {
        let error = E::custom(&why);
        self.refusal.borrow_mut().get_or_insert(why);
        error
    }

    /// Counts `bytes` of JSON about to be built.
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let used = self.used.get().saturating_add(bytes);
        self.used.set(used);
        if used > self.bound {
            return Err(self.refuse(too_large(used)));
        }
        Ok(())
    }
}

/// The length of `text` as a JSON string, quotes included, escaped as compact JSON is:
/// `"` and `\` and the short control escapes take two bytes, other control characters six
/// (`\u001f`), everything else its UTF-8 length.
fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// How many bytes an integer takes in JSON: its digits, and its sign.
fn json_integer_len(magnitude: u64, negative: bool) -> usize {
    let digits = magnitude.checked_ilog10().map_or(1, |log| log as usize + 1);
    digits + usize::from(negative)
}

/// Builds a JSON value from any self-describing format (JSON, or YAML with its aliases
/// replayed), charging the [`Meter`] for about the JSON each part takes before building it.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    meter: &'a Meter,
    /// The level of the value being built (the root mapping is level 1).
    level: usize,
}

impl Bounded<'_> {
    fn child<E: de::Error>(self) -> Result<Self, E> {
        if self.level >= MAX_DEPTH {
            return Err(self.meter.refuse(too_deep()));
        }
        Ok(Self { level: self.level + 1, ..self })
    }

    fn string<E: de::Error>(self, text: String) -> Result<Value, E> {
        self.meter.charge(json_string_len(&text))?;
        Ok(Value::String(text))
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.meter.charge(if value { 4 } else { 5 })?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.meter.charge(json_integer_len(value.unsigned_abs(), value < 0))?;
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.meter.charge(json_integer_len(value, false))?;
        Ok(Value::Number(value.into()))
    }

    /// Integers past 64 bits (YAML reads them as such) become floating-point numbers, as
    /// the same literal in JSON does.
    #[allow(clippy::cast_precision_loss, reason = "as JSON reads an integer past 64 bits")]
    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Value, E> {
        self.visit_f64(value as f64)
    }

    #[allow(clippy::cast_precision_loss, reason = "as JSON reads an integer past 64 bits")]
    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Value, E> {
        self.visit_f64(value as f64)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // Written as serde_json writes it (shortest round-trip form); not finite: null.
        let value = Number::from_f64(value).map_or(Value::Null, Value::Number);
        let length = match &value {
            Value::Number(number) => number.to_string().len(),
            _ => 4,
        };
        self.meter.charge(length)?;
        Ok(value)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.meter.charge(json_string_len(value))?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.string(value)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.meter.charge(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        // The brackets.
        self.meter.charge(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            // The comma before every item but the first.
            self.meter.charge(usize::from(!items.is_empty()))?;
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        // The braces.
        self.meter.charge(2)?;
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The key, its colon, and the comma before every entry but the first. A key
            // given twice is kept once (the last value): what it took is not taken back,
            // so the count may only exceed the JSON built, never fall short of it.
            self.meter.charge(json_string_len(&key) + 1 + usize::from(!fields.is_empty()))?;
            let value = map.next_value_seed(child)?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// Builds `deserializer`'s document within the limits: the refusal when a limit stopped
/// it, otherwise the parser's error as a syntax error of `format`.
fn bounded<'de, D: de::Deserializer<'de>>(deserializer: D, format: &str) -> Result<Value, String> {
    let meter = Meter::new();
    Bounded { meter: &meter, level: 0 }
        .deserialize(deserializer)
        .map_err(|err| meter.refusal.borrow_mut().take().unwrap_or_else(|| format!("the manifest is not valid {format}: {err}")))
}

/// A YAML text as a JSON document, within the limits.
fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let first = documents.next().ok_or("the manifest is empty")?;
    let document = bounded(first, "YAML")?;
    if documents.next().is_some() {
        return Err("the manifest must be one YAML document".to_owned());
    }
    Ok(document)
}

/// A JSON text as a document, within the limits.
fn parse_json(text: &str) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let document = bounded(&mut deserializer, "JSON")?;
    deserializer.end().map_err(|err| format!("the manifest is not valid JSON: {err}"))?;
    Ok(document)
}
/// Whether a `Content-Type` names this media type, ignoring parameters and case.
fn is_media_type(content_type: &str, accepted: &[&str]) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    accepted.iter().any(|a| essence.eq_ignore_ascii_case(a))
}

/// The JSON body: the named `AgentManifest` schema, added to the document by
/// [`schemas`] (poem-openapi cannot derive it: unknown fields are kept).
fn manifest_schema() -> MetaSchemaRef {
    MetaSchemaRef::Reference("AgentManifest".to_owned())
}

/// A YAML body: the YAML text of a manifest, declared with the same schema as the JSON
/// body (YAML is a serialisation of the same document), so that generators and fuzzers
/// produce manifests rather than arbitrary bytes.
fn yaml_manifest() -> MetaSchemaRef {
    manifest_schema()
}

/// The schemas of a manifest, as the validation in `nexus_ports::agents` enforces it:
/// `apiVersion` `astromesh/v1`, `kind` `Agent`, `metadata.name` a DNS-1123 label,
/// `metadata.version` semver, `spec.model` naming at least one model. Every other field
/// is allowed and kept.
pub(super) fn schemas() -> serde_json::Value {
    let text = serde_json::json!({"type": "string", "pattern": "\\S"});
    serde_json::json!({
        "AgentManifest": {
            "type": "object",
            "description": "An astromesh/v1 Agent manifest. Unknown fields are kept and passed to the node; `metadata.namespace` is replaced by the tenant's.",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": {},
            "properties": {
                "apiVersion": {"type": "string", "enum": ["astromesh/v1"]},
                "kind": {"type": "string", "enum": ["Agent"]},
                "metadata": {"$ref": "#/components/schemas/AgentMetadata"},
                "spec": {
                    "type": "object",
                    "description": "What the node runs: `model` is required, the rest (identity, orchestration, tools, chain...) passes through.",
                    "required": ["model"],
                    "additionalProperties": {},
                    "properties": {"model": {"$ref": "#/components/schemas/AgentModel"}}
                }
            }
        },
        "AgentMetadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", "description": "A DNS-1123 label, unique in the tenant."},
                "version": {
                    "type": "string",
                    "nullable": true,
                    "description": "A semantic version (quote it in YAML).",
                    "pattern": "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\\+([0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*))?$"
                },
                "namespace": {"description": "Ignored, whatever it holds: replaced by the tenant's namespace."}
            }
        },
        "AgentModel": {
            "type": "object",
            "description": "At least one model: `primary`/`fallback` (provider + model) or `default`/`roles` (candidates of source + model).",
            "anyOf": [{"required": ["primary"]}, {"required": ["fallback"]}, {"required": ["default"]}, {"required": ["roles"], "properties": {"roles": {"minProperties": 1}}}],
            "properties": {
                "primary": {"$ref": "#/components/schemas/ProviderModel"},
                "fallback": {"$ref": "#/components/schemas/ProviderModel"},
                "default": {"$ref": "#/components/schemas/RoleModel"},
                "roles": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/RoleModel"}}
            }
        },
        "ProviderModel": {"type": "object", "required": ["provider", "model"], "properties": {"provider": text, "model": text}},
        "RoleModel": {
            "type": "object",
            "required": ["candidates"],
            "properties": {"candidates": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/ModelCandidate"}}}
        },
        "ModelCandidate": {"type": "object", "required": ["source", "model"], "properties": {"source": text, "model": text}}
    })
}

async fn body_text(body: &mut RequestBody) -> poem::Result<String> {
    let bytes = body.take()?.into_bytes().await?;
    String::from_utf8(bytes.to_vec()).map_err(|_| unreadable("the manifest is not UTF-8 text"))
}

fn unreadable(message: impl Into<String>) -> poem::Error {
    ApiError::<AuthenticatedWriteErrors>::from(nexus_ports::Error::invalid(message)).into()
}

/// A manifest sent as YAML.
pub(crate) struct YamlManifest(pub Value);

impl Payload for YamlManifest {
    const CONTENT_TYPE: &'static str = "application/yaml";

    fn check_content_type(content_type: &str) -> bool {
        is_media_type(content_type, &["application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"])
    }

    fn schema_ref() -> MetaSchemaRef {
        yaml_manifest()
    }

    fn register(registry: &mut Registry) {
        JsonManifest::register(registry);
    }
}

impl ParsePayload for YamlManifest {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let text = body_text(body).await?;
        parse_yaml(&text).map(Self).map_err(unreadable)
    }
}

/// A manifest sent as JSON.
pub(crate) struct JsonManifest(pub Value);

impl Payload for JsonManifest {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        is_media_type(content_type, &["application/json"])
    }

    fn schema_ref() -> MetaSchemaRef {
        manifest_schema()
    }

    fn register(registry: &mut Registry) {
        // A placeholder under the name, replaced by [`schemas`] in the finished document.
        registry.schemas.entry("AgentManifest".to_owned()).or_insert_with(|| MetaSchema::new("object"));
    }
}

impl ParsePayload for JsonManifest {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let text = body_text(body).await?;
        parse_json(&text).map(Self).map_err(unreadable)
    }
}

/// An agent manifest in any of the accepted media types.
#[derive(ApiRequest)]
pub(crate) enum ManifestBody {
    /// YAML; `application/x-yaml` and parameters such as `; charset=utf-8` are accepted too.
    Yaml(YamlManifest),
    /// YAML, under its older media type.
    #[oai(content_type = "application/x-yaml")]
    XYaml(YamlManifest),
    /// JSON.
    Json(JsonManifest),
}

impl ManifestBody {
    /// The manifest as a JSON document.
    pub(crate) fn into_document(self) -> Value {
        match self {
            Self::Yaml(YamlManifest(document)) | Self::XYaml(YamlManifest(document)) | Self::Json(JsonManifest(document)) => document,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_past_64_bits_read_alike_in_yaml_and_json() {
        let yaml = parse_yaml("big: 73301872063879829296324548755456\nsmall: -170141183460469231731687303715884105728\n").expect("YAML");
        let json = parse_json(r#"{"big": 73301872063879829296324548755456, "small": -170141183460469231731687303715884105728}"#).expect("JSON");
        assert_eq!(yaml, json);
        assert!(yaml["big"].is_f64());
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert!(YamlManifest::check_content_type("application/yaml"));
        assert!(YamlManifest::check_content_type("Application/X-YAML; charset=utf-8"));
        assert!(!YamlManifest::check_content_type("application/json"));
        assert!(JsonManifest::check_content_type("application/json; charset=utf-8"));
        assert!(!JsonManifest::check_content_type("text/plain"));
    }

    /// The bytes a document is measured at, and the document built.
    fn measured(text: &str, format: &str) -> (usize, Value) {
        let meter = Meter::new();
        let value = if format == "JSON" {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            Bounded { meter: &meter, level: 0 }.deserialize(&mut deserializer).expect("within the bound")
        } else {
            Bounded { meter: &meter, level: 0 }.deserialize(serde_yaml::Deserializer::from_str(text)).expect("within the bound")
        };
        (meter.used.get(), value)
    }

    #[test]
    fn the_count_is_the_length_of_the_compact_json() {
        let documents = [
            (r#"{"a": [0, 7, 10, 99, 100, -1, -10, 18446744073709551615, -9223372036854775808]}"#, "JSON"),
            (r#"{"f": [0.5, 1.0, -2.25, 1e300, 1.5e-7, 123456.789], "t": true, "n": null, "e": {}, "l": []}"#, "JSON"),
            ("{\"s\": \"quote \\\" backslash \\\\ tab \\t nl \\n cr \\r ff \\f bs \\b nul \\u0000 us \\u001f del \u{7f} \u{e9}\u{1f600} /\"}", "JSON"),
            ("a: [1, 2, 3]\nb: {c: -4, d: 0.1}\n\"k\\\"ey\": \"\\x01\\t\"\nlist: &l [x, y]\nagain: *l\nempty: ~\nyes: false\n", "YAML"),
        ];
        for (text, format) in documents {
            let (used, value) = measured(text, format);
            assert_eq!(used, serde_json::to_string(&value).unwrap().len(), "{text}");
        }
    }

    #[test]
    fn a_document_one_byte_past_the_bound_is_refused_saying_what_was_measured() {
        let numbers = format!("[{}]", ["7"; 10].join(","));
        assert_eq!(numbers.len(), 21);
        let within = Meter::with_bound(21);
        assert!(Bounded { meter: &within, level: 0 }.deserialize(&mut serde_json::Deserializer::from_str(&numbers)).is_ok());
        let past = Meter::with_bound(20);
        assert!(Bounded { meter: &past, level: 0 }.deserialize(&mut serde_json::Deserializer::from_str(&numbers)).is_err());
        assert_eq!(past.refusal.take().as_deref(), Some("the manifest expands to more than 1048576 bytes of JSON (at least 21 measured)"));
    }
}
