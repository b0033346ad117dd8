//! Generates the client from the committed OpenAPI document with progenitor.
//!
//! progenitor takes one request media type per operation; the agent routes accept the
//! manifest as YAML or JSON, so the client is generated with the JSON form (the typed
//! `AgentManifest`). Everything else is the document as committed.

use std::path::Path;

fn main() {
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/nexus.json");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = std::fs::read_to_string(&spec_path).expect("openapi/nexus.json is readable");
    let mut document: serde_json::Value = serde_json::from_str(&text).expect("openapi/nexus.json is JSON");
    for operations in document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for operation in operations.as_object_mut().into_iter().flat_map(|operations| operations.values_mut()) {
            if let Some(content) = operation.pointer_mut("/requestBody/content").and_then(serde_json::Value::as_object_mut)
                && content.len() > 1
            {
                content.retain(|media_type, _| media_type == "application/json");
            }
        }
    }
    let spec: openapiv3::OpenAPI = serde_json::from_value(document).expect("the document is OpenAPI 3.0");
    let settings = {
        let mut settings = progenitor::GenerationSettings::default();
        settings.with_interface(progenitor::InterfaceStyle::Builder).with_tag(progenitor::TagStyle::Separate);
        settings
    };
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator.generate_tokens(&spec).expect("progenitor generates a client from the document");
    let file = syn::parse2(tokens).expect("the generated client parses");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client.rs");
    std::fs::write(out, prettyplease::unparse(&file)).expect("the generated client is written");
}
