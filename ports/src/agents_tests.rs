//! Manifest validation.

use serde_json::json;

use super::*;

fn support_bot() -> Value {
    json!({
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": "support-bot", "version": "1.0.0", "namespace": "theirs"},
        "spec": {"identity": {"display_name": "Support Bot"}, "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}}, "orchestration": {"pattern": "react"}, "x-custom": [1, 2]}
    })
}

fn problems(document: Value) -> Vec<(String, String)> {
    match AgentManifest::parse(document) {
        Err(Error::InvalidFields(problems)) => problems.into_iter().map(|p| (p.field, p.message)).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

#[test]
fn agent_names_are_dns_labels() {
    for good in ["a", "support-bot", "x1", &"a".repeat(63)] {
        assert!(AgentName::parse(good).is_ok(), "{good}");
    }
    for bad in ["", "-a", "a-", "Support", "a_b", "a.b", &"a".repeat(64)] {
        assert!(AgentName::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_valid_manifest_keeps_every_field() {
    let manifest = AgentManifest::parse(support_bot()).unwrap();
    assert_eq!(manifest.name().as_str(), "support-bot");
    assert_eq!(manifest.version(), Some("1.0.0"));
    assert_eq!(manifest.document().unwrap()["spec"]["x-custom"], json!([1, 2]));
    assert_eq!(manifest.checksum().len(), 64);
    let scoped = manifest.clone().in_namespace("tenant-1");
    assert_eq!(scoped.document().unwrap()["metadata"]["namespace"], "tenant-1");
    assert_ne!(scoped.checksum(), manifest.checksum());
}

#[test]
fn the_role_schema_names_models_too() {
    let mut doc = support_bot();
    doc["spec"]["model"] = json!({"default": {"candidates": [{"source": "ollama", "model": "llama3.1:8b"}]}, "roles": {"planner": {"candidates": [{"source": "litellm", "model": "x"}]}}});
    assert!(AgentManifest::parse(doc.clone()).is_ok());
    doc["spec"]["model"] = json!({"roles": {"worker": {"candidates": [{"source": "ollama", "model": "m"}]}}});
    assert!(AgentManifest::parse(doc).is_ok());
}

#[test]
fn every_problem_is_listed_with_its_field() {
    let found = problems(json!({"apiVersion": "v2", "metadata": {"name": "Bad_Name", "version": "one"}, "spec": {"model": {}}}));
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["apiVersion", "kind", "metadata.name", "metadata.version", "spec.model"], "{found:?}");

    let found = problems(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "ok"}, "spec": {"model": {
        "primary": {"provider": "ollama"},
        "fallback": "gpt",
        "default": {"candidates": []},
        "roles": {"planner": {"candidates": [{"model": "x"}, 3]}}
    }}}));
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.model.primary.model",
            "spec.model.fallback",
            "spec.model.default.candidates",
            "spec.model.roles.planner.candidates[0].source",
            "spec.model.roles.planner.candidates[1]"
        ],
        "{found:?}"
    );
}

#[test]
fn the_shape_is_checked_before_anything_else() {
    assert_eq!(problems(json!([1, 2])), vec![(String::new(), "the manifest must be a mapping".to_owned())]);
    assert_eq!(
        problems(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": "x", "spec": {"model": {"primary": {"provider": "p", "model": "m"}}}})),
        vec![("metadata".to_owned(), "must be a mapping".to_owned())]
    );
    let unquoted_version = {
        let mut doc = support_bot();
        doc["metadata"]["version"] = json!(1.0);
        doc
    };
    assert_eq!(problems(unquoted_version)[0].0, "metadata.version");
    let summary = Error::InvalidFields(vec![FieldError::new("a", "x"), FieldError::new("b", "y")]).to_string();
    assert_eq!(summary, "invalid manifest: a: x (and 1 more)");
}

#[test]
fn phases_read_back_from_their_names() {
    for phase in AgentPhase::ALL {
        assert_eq!(AgentPhase::from_name(phase.as_str()), Some(phase));
    }
    assert_eq!(AgentPhase::Running.as_str(), "Running");
    assert_eq!(AgentPhase::from_name("running"), None, "names are exact");
    for phase in crate::tenancy::TenantPhase::ALL {
        assert_eq!(crate::tenancy::TenantPhase::from_name(phase.as_str()), Some(phase));
    }
    assert_eq!(crate::tenancy::TenantPhase::from_name("Deleted"), None);
}
