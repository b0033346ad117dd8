//! Node-side names and the rewriting of references, without a node.

use serde_json::json;

use super::*;

fn tenant(n: u128) -> TenantId {
    TenantId::from_uuid(uuid::Uuid::from_u128(n))
}

fn name(raw: &str) -> AgentName {
    AgentName::parse(raw).unwrap()
}

fn manifest(agent: &str) -> AgentManifest {
    AgentManifest::parse(json!({
        "apiVersion": "astromesh/v1", "kind": "Agent",
        "metadata": {"name": agent, "namespace": "tenant-x"},
        "spec": {
            "model": {"primary": {"provider": "ollama", "model": "m"}},
            "tools": [
                {"name": "ask_helper", "type": "agent", "agent": "helper"},
                {"name": "helper", "type": "builtin"},
                {"name": "odd", "type": "agent", "agent": "Not A Label!"},
                {"name": "numeric", "type": "agent", "agent": 7}
            ],
            "chain": {"mode": "sequential", "on_complete": [{"agent": "composer", "when": "{{ output.answer }}"}]}
        }
    }))
    .unwrap()
}

#[test]
fn shared_node_names_are_labels_unique_per_tenant_and_deterministic() {
    let longest = name(&"a".repeat(63));
    for agent in [name("bot"), name("a"), name("0-9"), longest.clone()] {
        let node = NodeNames::new(tenant(1), NodeSharing::Shared).node_name(&agent);
        assert!(node.as_str().len() <= 63, "{node}");
        assert_eq!(AgentName::parse(node.as_str()).unwrap(), node, "a DNS-1123 label");
        assert_eq!(NodeNames::new(tenant(1), NodeSharing::Shared).node_name(&agent), node, "deterministic");
        assert_ne!(NodeNames::new(tenant(2), NodeSharing::Shared).node_name(&agent), node, "another tenant's differs");
        assert_ne!(node, agent);
    }
    let bot = NodeNames::new(tenant(1), NodeSharing::Shared).node_name(&name("bot"));
    assert!(bot.as_str().starts_with("bot-") && bot.as_str().len() == 4 + 32, "{bot}");
    assert_eq!(NodeNames::new(tenant(1), NodeSharing::Shared).node_name(&longest).as_str().len(), 63);
    assert_eq!(NodeNames::new(tenant(1), NodeSharing::PerTenant).node_name(&name("bot")), name("bot"), "a node of its own keeps the name");
}

#[test]
fn a_tenant_cannot_name_its_agent_after_another_tenants_node_name() {
    let theirs = NodeNames::new(tenant(1), NodeSharing::Shared).node_name(&name("bot"));
    let mine = NodeNames::new(tenant(2), NodeSharing::Shared);
    assert_ne!(mine.node_name(&theirs), theirs, "their node-side name, used as my agent's name, is mine to map");
    let pointing = AgentManifest::parse(json!({
        "apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "spy"},
        "spec": {"model": {"default": {"candidates": [{"source": "s", "model": "m"}]}}, "tools": [{"name": "t", "type": "agent", "agent": theirs.as_str()}]}
    }))
    .unwrap();
    assert_ne!(mine.to_node(&pointing).unwrap()["spec"]["tools"][0]["agent"], theirs.as_str(), "a reference to it does not reach them");
}

#[test]
fn pushed_manifests_name_the_tenants_node_side_agents() {
    let names = NodeNames::new(tenant(1), NodeSharing::Shared);
    let pushed = names.to_node(&manifest("bot")).unwrap();
    let node = |raw: &str| names.node_reference(raw);
    assert_eq!(pushed["metadata"]["name"], names.node_name(&name("bot")).as_str());
    assert_eq!(pushed["metadata"]["namespace"], "tenant-x");
    assert_eq!(pushed["spec"]["tools"][0], json!({"name": "ask_helper", "type": "agent", "agent": node("helper")}), "the tool's own name stays");
    assert_eq!(pushed["spec"]["tools"][0]["agent"], names.node_name(&name("helper")).as_str(), "the same name the helper is pushed under");
    assert_eq!(pushed["spec"]["tools"][1], json!({"name": "helper", "type": "builtin"}), "other tools are left alone");
    let odd = pushed["spec"]["tools"][2]["agent"].as_str().unwrap();
    assert!(AgentName::parse(odd).is_ok() && odd != "Not A Label!", "a reference that is no agent name still stays inside the tenant: {odd}");
    assert_eq!(pushed["spec"]["tools"][3]["agent"], 7, "a non-string names no agent");
    assert_eq!(pushed["spec"]["chain"]["on_complete"][0], json!({"agent": node("composer"), "when": "{{ output.answer }}"}));
    assert_eq!(pushed["spec"]["model"], manifest("bot").document().unwrap()["spec"]["model"]);

    let own = NodeNames::new(tenant(1), NodeSharing::PerTenant);
    let mut stamped = manifest("bot").document().unwrap();
    stamped["metadata"]["version"] = own.node_version(&manifest("bot")).unwrap().into();
    assert_eq!(own.to_node(&manifest("bot")).unwrap(), stamped, "a node of its own gets the manifest as it is, stamped");
}

#[test]
fn answers_come_back_in_the_tenants_names() {
    let names = NodeNames::new(tenant(1), NodeSharing::Shared);
    let manifest = manifest("bot");
    let node_view = json!({
        "name": names.node_name(&name("bot")).as_str(),
        "status": "deployed",
        "manifest": names.to_node(&manifest).unwrap(),
        "traces": [{"agent": names.node_name(&name("bot")).as_str(), "spans": [{"attributes": {"agent": names.node_name(&name("bot")).as_str()}}]}]
    });
    let restored = names.restore(&manifest, node_view);
    assert_eq!(restored["name"], "bot");
    assert_eq!(restored["manifest"], manifest.document().unwrap(), "the node's copy reads as the tenant's manifest");
    assert_eq!(restored["traces"][0]["agent"], "bot");
    assert_eq!(restored["traces"][0]["spans"][0]["attributes"]["agent"], "bot");
    assert_eq!(restored["status"], "deployed");
    assert_eq!(references(manifest.links()), ["helper", "Not A Label!", "composer"]);
}

#[test]
fn pushed_documents_carry_a_stamp_that_tells_changed_from_unchanged() {
    for sharing in [NodeSharing::Shared, NodeSharing::PerTenant] {
        let names = NodeNames::new(tenant(1), sharing);
        let versioned = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot", "version": "1.2.0"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}})).unwrap();
        let stamped = names.node_version(&versioned).unwrap();
        assert!(stamped.starts_with("1.2.0+nexus.") && stamped.len() == "1.2.0+nexus.".len() + 16, "{stamped}");
        assert_eq!(names.to_node(&versioned).unwrap()["metadata"]["version"], stamped.as_str(), "what is pushed is what the node will list");
        assert_eq!(names.node_version(&versioned).unwrap(), stamped, "deterministic");
        assert_eq!(unstamped(&stamped), Some("1.2.0"));
        let changed = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot", "version": "1.2.0"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "prompts": {"system": "hi"}}})).unwrap();
        assert_ne!(names.node_version(&changed).unwrap(), stamped, "same version, other content: another stamp");
        let built = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot", "version": "1.2.0+build.7"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}})).unwrap();
        let stamped_build = names.node_version(&built).unwrap();
        assert!(stamped_build.starts_with("1.2.0+build.7.nexus."), "{stamped_build}");
        assert_eq!(unstamped(&stamped_build), Some("1.2.0+build.7"));
        let bare = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}})).unwrap();
        assert_eq!(unstamped(&names.node_version(&bare).unwrap()), Some("0.1.0"), "the node's own default version, stamped");
    }
    let entry = |version: Option<&str>| NodeAgent { name: "bot".into(), version: version.map(str::to_owned), status: "deployed".into() };
    assert!(entry(Some("1.0.0+nexus.0123456789abcdef")).is_stamped());
    for other in [
        None,
        Some("1.0.0"),
        Some("1.0.0+nexus.0123"),
        Some("1.0.0+nexus.0123456789ABCDEF"),
        Some("1.0.0.nexus.0123456789abcdef"),
        Some("nexus.0123456789abcdef"),
    ] {
        assert!(!entry(other).is_stamped(), "{other:?}");
    }
    assert!(entry(None).is_deployed() && !NodeAgent { status: "draft".into(), ..entry(None) }.is_deployed());
}

#[test]
fn restoring_takes_the_stamp_off_what_the_node_answers() {
    for sharing in [NodeSharing::Shared, NodeSharing::PerTenant] {
        let names = NodeNames::new(tenant(1), sharing);
        let agent = manifest("bot");
        let pushed = names.to_node(&agent).unwrap();
        let view = json!({"name": pushed["metadata"]["name"], "version": pushed["metadata"]["version"], "manifest": pushed});
        let restored = names.restore(&agent, view);
        assert_eq!(restored["version"], "0.1.0", "the node's listed default version");
        assert_eq!(restored["manifest"], agent.document().unwrap(), "no version where the manifest has none");
        assert_eq!(restored["name"], "bot");
    }
}
