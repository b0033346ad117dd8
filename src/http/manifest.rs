//! The request body of agent POST and PUT: the raw `astromesh/v1` manifest, as YAML
//! (`application/yaml`, `application/x-yaml`, with or without parameters such as
//! `; charset=utf-8`) or JSON. Hostile YAML is refused cheaply: bodies are capped at
//! 1 MiB before parsing, and the YAML parser refuses alias expansion beyond its
//! repetition limit and nesting beyond 128 levels (so are JSON's).

use poem::{Request, RequestBody};
use poem_openapi::ApiRequest;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use serde_json::Value;

use super::error::{ApiError, AuthenticatedWriteErrors};

/// Whether a `Content-Type` names this media type, ignoring parameters and case.
fn is_media_type(content_type: &str, accepted: &[&str]) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    accepted.iter().any(|a| essence.eq_ignore_ascii_case(a))
}

fn any_object() -> MetaSchemaRef {
    let mut schema = MetaSchema::new("object");
    schema.description = Some("An astromesh/v1 Agent manifest: apiVersion, kind, metadata (name, version), spec (model...). Unknown fields are kept.");
    MetaSchemaRef::Inline(Box::new(schema))
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
        any_object()
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
        any_object()
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
