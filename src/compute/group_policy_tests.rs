//! The late server-group check of moves, on fakes: a resize or cold
//! migration (`prep_resize`) and an evacuation (`rebuild_instance` with
//! `recreate`) that would break their group's affinity or anti-affinity on
//! this host are refused before anything is made, and give back what the
//! scheduler claimed, as Nova's `prep_resize` and `_do_rebuild_instance` do.

use serde_json::{Value, json};

use crate::compute::rebuild::RebuildRequest;
use crate::compute::resize::ResizeRequest;
use crate::objects::{Flavor, NovaObject, PowerState, TaskState, VmState};
use crate::testing::{HOST, Harness};

const VIOLATED: &str = "instance group policy was violated";

fn faults_of(h: &Harness, uuid: &str) -> Vec<String> {
    h.nova.faults().into_iter().filter(|f| f.uuid == uuid).map(|f| f.message).collect()
}

/// A RequestSpec whose scheduler hints name `group` (as a list, as Nova stores it).
fn spec(group: &str) -> Value {
    json!({"nova_object.name": "RequestSpec", "nova_object.data": {"scheduler_hints": {"group": [group]}}})
}

/// Another instance, on `host`, in group `name` (policy `policy`) with `u`.
fn grouped_with(h: &Harness, u: &str, name: &str, policy: &str, host: &str) -> String {
    let other = h.instance(VmState::Active, None, PowerState::NoState);
    h.nova.set_field(&other, "host", json!(host));
    h.nova.add_group(json!({"uuid": format!("g-{name}"), "name": name, "policy": policy, "members": [u, other]}));
    other
}

fn flavor() -> Flavor {
    let v = json!({"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": "1.2",
        "nova_object.data": {"id": 1, "flavorid": "f1", "name": "f1", "memory_mb": 64, "vcpus": 1, "root_gb": 1,
            "ephemeral_gb": 0, "extra_specs": {}}});
    Flavor { obj: NovaObject::expect(&v, "Flavor").unwrap() }
}

/// An instance on host `src` that the conductor is cold-migrating here:
/// the source allocation moved to the migration, this host's given to the
/// instance.
fn migrating_here(h: &Harness) -> (String, String) {
    let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), PowerState::NoState);
    h.nova.set_field(&u, "host", json!("src"));
    h.nova.set_field(&u, "node", json!("src"));
    h.nova.set_field(&u, "flavor", flavor().obj.to_primitive());
    h.nova.set_field(&u, "instance_type_id", json!(1));
    let m = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": m, "id": 7, "instance_uuid": u, "source_compute": "src",
        "source_node": "src", "dest_compute": HOST, "dest_node": HOST, "status": "pre-migrating",
        "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
    h.placement.allocate(&m, "src-rp", &[("MEMORY_MB", 64)]);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    (u, m)
}

fn resize_request(group: &str) -> ResizeRequest {
    ResizeRequest {
        flavor: flavor(),
        image: json!({}),
        request_spec: spec(group),
        filter_properties: json!({}),
        host_list: json!([]),
        clean_shutdown: true,
    }
}

/// What a refused `prep_resize` leaves: nothing cast, the migration in
/// error holding nothing, the source allocation back on the instance, the
/// instance as it was on its source, with the violation as its fault.
fn assert_prep_resize_refused(h: &Harness, u: &str, m: &str, policy: &str) {
    assert!(h.nova.take_casts().is_empty(), "nothing moves");
    assert_eq!(h.nova.migration(m).status(), Some("error"));
    assert!(h.placement.allocations(m).is_empty(), "the migration holds nothing");
    let held = h.placement.allocations(u);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["src-rp"], "{held:?}");
    assert_eq!(h.states(u), (Some(VmState::Active), None, PowerState::NoState));
    assert_eq!(h.rpc_instance(u).host(), Some("src"));
    let faults = faults_of(h, u);
    assert!(faults.len() == 1 && faults[0].contains(&format!("{policy} {VIOLATED}")), "{faults:?}");
}

#[tokio::test]
async fn a_cold_migration_onto_another_anti_affinity_member_is_refused_with_its_allocation_given_back() {
    let h = Harness::new();
    let (u, m) = migrating_here(&h);
    grouped_with(&h, &u, "anti", "anti-affinity", HOST);
    let err = h
        .manager
        .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), resize_request("anti"))
        .await
        .unwrap_err();
    assert_eq!(err.to_remote().class, "GroupAffinityViolation");
    assert_prep_resize_refused(&h, &u, &m, "Anti-affinity");
}

#[tokio::test]
async fn a_member_migrating_here_counts_against_anti_affinity_unless_the_rule_allows_two() {
    for (max, refused) in [(None, true), (Some(2), false)] {
        let h = Harness::new();
        let (u, m) = migrating_here(&h);
        // The other member still runs elsewhere, but is on its way here.
        let other = grouped_with(&h, &u, "anti", "anti-affinity", "third");
        if let Some(max) = max {
            h.nova.add_group(json!({"uuid": "g-anti", "name": "anti", "policy": "anti-affinity",
                "members": [u, other], "rules": {"max_server_per_host": max}}));
        }
        h.nova.add_migration(json!({"uuid": uuid::Uuid::new_v4().to_string(), "id": 8, "instance_uuid": other,
            "source_compute": "third", "dest_compute": HOST, "status": "migrating", "migration_type": "migration"}));
        let r = h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), resize_request("anti")).await;
        if refused {
            assert!(r.is_err());
            assert_prep_resize_refused(&h, &u, &m, "Anti-affinity");
        } else {
            r.unwrap();
            let casts = h.nova.take_casts();
            assert_eq!(
                casts.iter().map(|c| (c.host.as_str(), c.method.as_str())).collect::<Vec<_>>(),
                [("src", "resize_instance")]
            );
        }
    }
}

#[tokio::test]
async fn a_resize_away_from_its_affinity_group_is_refused_and_one_towards_it_goes_on() {
    let h = Harness::new();
    let (u, m) = migrating_here(&h);
    grouped_with(&h, &u, "aff", "affinity", "elsewhere");
    assert!(
        h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), resize_request("aff")).await.is_err()
    );
    assert_prep_resize_refused(&h, &u, &m, "Affinity");

    let h = Harness::new();
    let (u, m) = migrating_here(&h);
    grouped_with(&h, &u, "aff", "affinity", HOST);
    h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), resize_request("aff")).await.unwrap();
    assert_eq!(h.nova.take_casts()[0].method, "resize_instance");
    assert_eq!(h.nova.migration(&m).status(), Some("pre-migrating"));
}

#[tokio::test]
async fn a_migration_refused_by_the_group_check_is_rescheduled_to_an_alternate_host() {
    let h = Harness::new();
    let (u, m) = migrating_here(&h);
    grouped_with(&h, &u, "anti", "anti-affinity", HOST);
    let mut req = resize_request("anti");
    // Only in the legacy filter properties (Nova's fallback).
    req.request_spec = Value::Null;
    req.filter_properties =
        json!({"retry": {"num_attempts": 1, "hosts": [[HOST, HOST]]}, "scheduler_hints": {"group": "anti"}});
    req.host_list = json!([{"nova_object.name": "Selection", "nova_object.data": {"service_host": "other"}}]);
    h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), req).await.unwrap();
    let casts = h.nova.take_casts();
    assert_eq!(casts.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["migrate_server"]);
    let exc = casts[0].args["scheduler_hint"]["filter_properties"]["retry"]["exc"][0].as_str().unwrap_or_default();
    assert!(exc.contains(&format!("Anti-affinity {VIOLATED}")), "{exc}");
    assert_eq!(h.placement.allocations(&u).keys().collect::<Vec<_>>(), ["src-rp"], "this host's claim is given back");
    assert_eq!(h.states(&u).1, Some(TaskState::ResizePrep), "the conductor goes on with it");
}

/// An instance of dead host `dead` the API is evacuating here, with its
/// migration; the scheduler added this host's share to its allocation.
fn evacuating_here(h: &Harness, group: &str) -> (String, String, RebuildRequest) {
    h.glance.add_active("img-1", "docker", crate::testing::fake_driver::docker_save_archive());
    h.manager.records.set(std::sync::Arc::new(crate::testing::host_records("this-rp"))).ok();
    let u = h.instance(VmState::Active, Some(TaskState::Rebuilding), PowerState::NoState);
    h.nova.set_field(&u, "host", json!("dead"));
    h.nova.set_field(&u, "node", json!("dead"));
    let m = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": m, "id": 9, "instance_uuid": u, "source_compute": "dead",
        "source_node": "dead", "status": "accepted", "migration_type": "evacuation"}));
    h.placement.allocate(&u, "dead-rp", &[("MEMORY_MB", 64)]);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    let req = RebuildRequest {
        evacuate: true,
        migration: Some(h.nova.migration(&m)),
        request_spec: spec(group),
        ..Default::default()
    };
    (u, m, req)
}

/// What a refused evacuation leaves, as Nova's: the instance in ERROR with
/// the violation as its fault, still on the dead host, the migration
/// `failed`, this host's share of the allocation removed, and nothing made
/// here.
fn assert_evacuation_refused(h: &Harness, u: &str, m: &str, policy: &str) {
    assert_eq!(h.states(u).0, Some(VmState::Error));
    assert_eq!(h.states(u).1, None);
    assert_eq!(h.rpc_instance(u).host(), Some("dead"));
    assert_eq!(h.nova.migration(m).status(), Some("failed"));
    let held = h.placement.allocations(u);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["dead-rp"], "{held:?}");
    assert!(h.driver.container(u).is_none());
    let calls = h.driver.calls();
    assert!(!calls.iter().any(|c| c.starts_with("create") || c.starts_with("set_aside")), "{calls:?}");
    let faults = faults_of(h, u);
    assert!(faults.len() == 1 && faults[0].contains(&format!("{policy} {VIOLATED}")), "{faults:?}");
}

#[tokio::test]
async fn an_evacuation_onto_another_anti_affinity_member_fails_and_gives_this_hosts_share_back() {
    let h = Harness::new();
    let (u, m, req) = evacuating_here(&h, "anti");
    grouped_with(&h, &u, "anti", "anti-affinity", HOST);
    let err = h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap_err();
    assert_eq!(err.to_remote().class, "GroupAffinityViolation");
    assert_evacuation_refused(&h, &u, &m, "Anti-affinity");
}

#[tokio::test]
async fn an_evacuation_away_from_its_affinity_group_fails_and_one_towards_it_lands() {
    let h = Harness::new();
    let (u, m, req) = evacuating_here(&h, "aff");
    grouped_with(&h, &u, "aff", "affinity", "third");
    assert!(h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.is_err());
    assert_evacuation_refused(&h, &u, &m, "Affinity");

    let h = Harness::new();
    let (u, m, req) = evacuating_here(&h, "aff");
    grouped_with(&h, &u, "aff", "affinity", HOST);
    h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, PowerState::Running), "{:?}", faults_of(&h, &u));
    assert_eq!(h.rpc_instance(&u).host(), Some(HOST));
    assert_eq!(h.nova.migration(&m).status(), Some("done"));
}
