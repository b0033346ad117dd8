//! The request body of agent POST and PUT: the raw `astromesh/v1` manifest, as YAML
//! (`application/yaml`, `application/x-yaml`, with or without parameters such as
//! `; charset=utf-8`) or JSON. Hostile YAML is refused cheaply: bodies are capped at
//! 1 MiB before parsing, and the YAML parser refuses alias expansion beyond its
//! repetition limit and nesting beyond 128 levels (so are JSON's).

use poem::{Request, RequestBody};
use poem_openapi::ApiRequest;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use serde_json::Value;

use super::error::{ApiError, AuthenticatedWriteErrors};

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

/// A YAML body: raw text, so that generated clients send the file as it is.
fn yaml_text() -> MetaSchemaRef {
    let mut schema = MetaSchema::new_with_format("string", "binary");
    schema.description = Some("An astromesh/v1 Agent manifest as YAML text, as described by the AgentManifest schema.");
    MetaSchemaRef::Inline(Box::new(schema))
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
        yaml_text()
    }
}

impl ParsePayload for YamlManifest {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let text = body_text(body).await?;
        serde_yaml::from_str(&text).map(Self).map_err(|err| unreadable(format!("the manifest is not valid YAML: {err}")))
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
        serde_json::from_str(&text).map(Self).map_err(|err| unreadable(format!("the manifest is not valid JSON: {err}")))
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
    fn media_types_ignore_parameters_and_case() {
        assert!(YamlManifest::check_content_type("application/yaml"));
        assert!(YamlManifest::check_content_type("Application/X-YAML; charset=utf-8"));
        assert!(!YamlManifest::check_content_type("application/json"));
        assert!(JsonManifest::check_content_type("application/json; charset=utf-8"));
        assert!(!JsonManifest::check_content_type("text/plain"));
    }
}
