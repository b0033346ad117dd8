//! Which chains may go to a shared node: the node's compile rules, as a table.

use nexus_ports::agents::{AgentManifest, AgentStatus};
use nexus_ports::node_names::NodeSharing;
use nexus_ports::tenancy::TenantId;
use serde_json::{Value, json};

use super::*;

fn names() -> NodeNames {
    NodeNames::new(TenantId::from_uuid(uuid::Uuid::from_u128(7)), NodeSharing::Shared)
}

/// An agent `name` with `chain` (none when null), in `phase`, acknowledged when Running.
fn agent(name: &str, chain: Value, phase: AgentPhase) -> AgentObject {
    let mut spec = json!({"model": {"primary": {"provider": "ollama", "model": "m"}}});
    if !chain.is_null() {
        spec["chain"] = chain;
    }
    let manifest = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": spec})).unwrap();
    AgentObject {
        tenant_id: TenantId::from_uuid(uuid::Uuid::from_u128(7)),
        manifest,
        generation: 1,
        observed_generation: 1,
        status: AgentStatus { phase, node_ack: phase == AgentPhase::Running, last_synced_at: None, message: None },
        deleting: false,
    }
}

fn to(targets: &[&str]) -> Value {
    json!({"on_complete": targets.iter().map(|t| json!({"agent": t})).collect::<Vec<_>>()})
}

fn check(object: &AgentObject, others: &[AgentObject]) -> NodeCheck {
    let mut tenant: Vec<&AgentObject> = others.iter().collect();
    tenant.push(object);
    node_check(object, &tenant, &names())
}

fn blocked(result: NodeCheck, containing: &str) {
    match result {
        NodeCheck::Blocked(reason) => assert!(reason.contains(containing), "{reason:?} should say {containing:?}"),
        other => panic!("expected blocked ({containing}), got {other:?}"),
    }
}

#[test]
fn chains_the_node_cannot_parse_never_go_to_it() {
    for (chain, says) in [
        (json!("x"), "must be a mapping"),
        (json!({"mode": "weird", "on_complete": [{"agent": "b"}]}), "mode"),
        (json!({"max_depth": 0, "on_complete": [{"agent": "b"}]}), "max_depth"),
        (json!({"max_depth": true, "on_complete": [{"agent": "b"}]}), "max_depth"),
        (json!({"mode": "sequential"}), "on_complete"),
        (json!({"on_complete": "b"}), "on_complete"),
        (json!({"on_complete": ["b"]}), "on_complete[0] must be a mapping"),
        (json!({"on_complete": [{"when": "x"}]}), "on_complete[0].agent"),
        (json!({"on_complete": [{"agent": "b", "input": 5}]}), "input"),
        (json!({"on_complete": [{"agent": "b", "when": ["x"]}]}), "when"),
        (json!({"on_complete": [{"agent": "b", "retry": {"foo": 1}}]}), "retry has an unknown key foo"),
        (json!({"on_complete": [{"agent": "b", "retry": [1]}]}), "retry must be a mapping"),
        (json!({"on_complete": [{"agent": "b", "default": true}, {"agent": "b", "default": true}]}), "more than one default"),
        (json!({"on_complete": [{"agent": "b", "default": true, "when": "x"}]}), "default and have a when"),
    ] {
        blocked(check(&agent("a", chain.clone(), AgentPhase::Pending), &[agent("b", Value::Null, AgentPhase::Running)]), says);
    }
    for harmless in [json!({}), json!(false), json!(null), json!({"on_complete": [{"agent": "b", "retry": {}, "when": 0, "input": ""}]})] {
        assert_eq!(check(&agent("a", harmless.clone(), AgentPhase::Pending), &[agent("b", Value::Null, AgentPhase::Running)]), NodeCheck::Clear, "{harmless}");
    }
}

#[test]
fn a_chain_waits_for_its_targets_on_the_node() {
    let a = agent("a", to(&["b"]), AgentPhase::Pending);
    blocked(check(&a, &[]), "hands over to b, which this tenant has not deployed");
    blocked(check(&a, &[agent("b", Value::Null, AgentPhase::Deploying)]), "has not deployed");
    blocked(check(&a, &[AgentObject { deleting: true, ..agent("b", Value::Null, AgentPhase::Running) }]), "has not deployed");
    assert_eq!(check(&a, &[agent("b", Value::Null, AgentPhase::Running)]), NodeCheck::Clear);
    assert_eq!(check(&agent("plain", Value::Null, AgentPhase::Pending), &[]), NodeCheck::Clear);
}

#[test]
fn cycles_and_paths_over_max_depth_never_reach_the_node() {
    let b_to_a = agent("b", to(&["a"]), AgentPhase::Running);
    blocked(check(&agent("a", to(&["b"]), AgentPhase::Pending), std::slice::from_ref(&b_to_a)), "loops back");
    blocked(check(&agent("a", to(&["a"]), AgentPhase::Pending), &[]), "loops back");
    let shallow = json!({"max_depth": 1, "on_complete": [{"agent": "b"}]});
    blocked(
        check(&agent("a", shallow.clone(), AgentPhase::Pending), &[agent("b", to(&["c"]), AgentPhase::Running), agent("c", Value::Null, AgentPhase::Running)]),
        "max_depth",
    );
    assert_eq!(
        check(&agent("a", shallow, AgentPhase::Pending), &[agent("b", Value::Null, AgentPhase::Running)]),
        NodeCheck::Clear,
        "a target without a chain ends the path"
    );
    // Another agent's chain through the new one: updating c to hand back to a closes a loop.
    let others = [agent("a", to(&["c"]), AgentPhase::Running)];
    blocked(check(&agent("c", to(&["a"]), AgentPhase::Running), &others), "loops back");
}

#[test]
fn another_agents_broken_chain_is_not_this_ones_problem() {
    let broken = agent("x", to(&["gone"]), AgentPhase::Running);
    assert_eq!(check(&agent("a", Value::Null, AgentPhase::Pending), std::slice::from_ref(&broken)), NodeCheck::Clear);
    blocked(check(&broken, &[]), "hands over to gone");
}

#[test]
fn a_parallel_chain_must_not_look_at_a_sibling() {
    let sibling = format!("{{{{ steps.{}.output }}}}", names().node_reference("c"));
    let chain = json!({"mode": "parallel", "on_complete": [{"agent": "b", "when": sibling}, {"agent": "c"}]});
    let targets = [agent("b", Value::Null, AgentPhase::Running), agent("c", Value::Null, AgentPhase::Running)];
    blocked(check(&agent("a", chain, AgentPhase::Pending), &targets), "sibling");
    let fine = json!({"mode": "parallel", "on_complete": [{"agent": "b", "when": "{{ output.ok }}"}, {"agent": "c"}]});
    assert_eq!(check(&agent("a", fine, AgentPhase::Pending), &targets), NodeCheck::Clear);
}

#[test]
fn an_agent_leaves_the_node_after_those_handing_over_to_it() {
    let b = AgentObject { deleting: true, ..agent("b", Value::Null, AgentPhase::Running) };
    for phase in [AgentPhase::Running, AgentPhase::Deploying, AgentPhase::Failed] {
        assert_eq!(check(&b, &[agent("a", to(&["b"]), phase)]), NodeCheck::Needed, "{phase:?}");
    }
    assert_eq!(check(&b, &[agent("a", to(&["b"]), AgentPhase::Pending)]), NodeCheck::Clear, "held off the node");
    assert_eq!(check(&b, &[agent("a", Value::Null, AgentPhase::Running)]), NodeCheck::Clear);
    let a = agent("a", to(&["b"]), AgentPhase::Running);
    blocked(check(&a, std::slice::from_ref(&b)), "has not deployed");
    assert!(may_be_on_node(&a), "so it is taken off first");
}

#[test]
fn chains_that_expand_without_bound_are_refused() {
    // Each agent hands over to the next two: 2^n paths.
    let agents: Vec<AgentObject> = (0..30)
        .map(|i| {
            let chain = if i < 29 {
                json!({"max_depth": 100, "on_complete": [{"agent": format!("n{}", i + 1)}, {"agent": format!("n{}", (i + 2).min(29))}]})
            } else {
                Value::Null
            };
            agent(&format!("n{i}"), chain, AgentPhase::Running)
        })
        .collect();
    let fresh = AgentObject { status: AgentStatus::pending(), ..agents[0].clone() };
    blocked(check(&fresh, &agents[1..]), "expands to more than");
}
