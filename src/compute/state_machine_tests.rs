//! The compute state machine on fakes ([`crate::testing`]): each operation's
//! success and failure paths (a driver error, a conductor error, a
//! concurrent request, an unknown instance), checked on what Nova records:
//! the instance's states, its faults and its action events.

use serde_json::{Value, json};

use crate::compute::build::BuildRequest;
use crate::objects::{PowerState, TaskState, VmState};
use crate::testing::Harness;
use crate::testing::fake_nova::ActionEvent;

use PowerState::{NoState, Paused, Running, Shutdown};

fn event(uuid: &str, name: &str, failure: Option<&str>) -> ActionEvent {
    ActionEvent { uuid: uuid.into(), event: name.into(), finished: true, failure: failure.map(str::to_string) }
}

/// The one event of the test, finished; its failure message if any.
fn only_event(h: &Harness, uuid: &str, name: &str) -> Option<String> {
    let events: Vec<ActionEvent> = h.nova.events().into_iter().filter(|e| e.uuid == uuid).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events.into_iter().next().unwrap();
    assert_eq!((e.event.as_str(), e.finished), (name, true), "{e:?}");
    e.failure
}

fn faults_of(h: &Harness, uuid: &str) -> Vec<String> {
    h.nova.faults().into_iter().filter(|f| f.uuid == uuid).map(|f| f.message).collect()
}

const ONE_PORT: &str = r#"[{"id": "port-1", "address": "fa:16:3e:00:00:01", "type": "bridge", "active": true,
    "network": {"id": "net-1", "bridge": "brq-net-1", "subnets": [
      {"cidr": "10.0.0.0/24", "version": 4, "dns": [{"address": "10.0.0.2"}],
       "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4}]}]}}]"#;

/// Delivers Neutron's `event` for `u` once something waits for it, with
/// `task` (the operation) still running until then.
async fn deliver_when_awaited<T>(h: &Harness, u: &str, event: &str, task: &tokio::task::JoinHandle<T>) {
    let completed = crate::compute::events::EventStatus::Completed;
    while !h.manager.vif_events.deliver(u, event, completed.clone()) {
        assert!(!task.is_finished(), "the operation ended without waiting for {event}: {:?}", h.states(u));
        tokio::task::yield_now().await;
    }
}

fn give_port(h: &Harness, uuid: &str) {
    let cache = json!({"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova",
        "nova_object.version": "1.5", "nova_object.data": {"instance_uuid": uuid, "network_info": ONE_PORT}});
    h.nova.set_field(uuid, "info_cache", cache);
}

// ---------------------------------------------------------------------------
// Success paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stop_and_start_move_the_instance_and_record_their_events() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::PoweringOff), Running);
    h.manager.stop_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Stopped), None, Shutdown));
    assert_eq!(h.driver.container(&u).unwrap().state, Shutdown);

    h.request(&u, TaskState::PoweringOn);
    give_port(&h, &u);
    h.manager.start_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    // The driver plugged the cached port into the started container.
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
    assert_eq!(h.nova.events(), [event(&u, "compute_stop_instance", None), event(&u, "compute_start_instance", None)]);
    assert!(faults_of(&h, &u).is_empty());
}

#[tokio::test]
async fn pause_unpause_suspend_resume_soft_delete_restore() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Running);
    let m = &h.manager;
    h.request(&u, TaskState::Pausing);
    m.pause_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Paused), None, Paused));
    h.request(&u, TaskState::Unpausing);
    m.pause_instance(&h.ctx, h.rpc_instance(&u), false).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));

    h.request(&u, TaskState::Suspending);
    m.suspend_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Suspended), None, PowerState::Suspended));
    assert_eq!(h.driver.container(&u).unwrap().state, Paused, "suspend freezes the container");
    assert_eq!(h.rpc_instance(&u).system_metadata().get("old_vm_state").map(String::as_str), Some("active"));
    h.request(&u, TaskState::Resuming);
    m.resume_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert!(!h.rpc_instance(&u).system_metadata().contains_key("old_vm_state"));

    h.request(&u, TaskState::SoftDeleting);
    m.soft_delete_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::SoftDeleted), None, Shutdown));
    h.request(&u, TaskState::Restoring);
    m.restore_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert!(h.nova.events().iter().all(|e| e.finished && e.failure.is_none()), "{:?}", h.nova.events());
    assert_eq!(h.nova.events().len(), 6);
}

#[tokio::test]
async fn a_reboot_restarts_and_plugs_the_ports_into_the_new_namespace() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::RebootingHard), Running);
    give_port(&h, &u);
    h.manager.reboot_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
    assert_eq!(only_event(&h, &u, "compute_reboot_instance"), None);
}

/// `[workarounds] wait_for_vif_plugged_event_during_hard_reboot = normal`:
/// the container stays down until Neutron reports the port unplugged, and
/// the reboot ends only once it reports it plugged again.
#[tokio::test]
async fn a_hard_reboot_waits_for_the_port_to_go_and_come_back() {
    let h = Harness::with_options("[workarounds]\nwait_for_vif_plugged_event_during_hard_reboot = normal");
    let u = h.instance(VmState::Active, Some(TaskState::RebootingHard), Running);
    give_port(&h, &u);
    // Neutron has it up (the cache's `active` is the status at binding).
    h.neutron.add_port_of("port-1", &u, crate::testing::PROJECT);
    let reboot = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
        async move { m.reboot_instance(&ctx, i, true).await }
    });
    deliver_when_awaited(&h, &u, "network-vif-unplugged-port-1", &reboot).await;
    // Killed, and not started again before Neutron saw the port go.
    assert!(h.driver.calls().iter().any(|c| c.starts_with("power_off")), "{:?}", h.driver.calls());
    deliver_when_awaited(&h, &u, "network-vif-plugged-port-1", &reboot).await;
    assert!(h.driver.calls().iter().any(|c| c.starts_with("power_on")), "{:?}", h.driver.calls());
    reboot.await.unwrap().unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
}

/// Under the workaround a port that never comes back fails the reboot when
/// `vif_plugging_is_fatal` (the instance is not left running unfiltered
/// without a word).
#[tokio::test(start_paused = true)]
async fn a_hard_reboot_whose_port_never_comes_back_fails_when_fatal() {
    let h = Harness::with_options(
        "vif_plugging_timeout = 30\nvif_plugging_is_fatal = true\n\
         [workarounds]\nwait_for_vif_plugged_event_during_hard_reboot = normal,direct",
    );
    let u = h.instance(VmState::Active, Some(TaskState::RebootingHard), Running);
    give_port(&h, &u);
    h.neutron.add_port_of("port-1", &u, crate::testing::PROJECT);
    assert!(h.manager.reboot_instance(&h.ctx, h.rpc_instance(&u), true).await.is_err());
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    let faults = faults_of(&h, &u);
    assert!(faults.len() == 1 && faults[0].contains("vif_plugging_timeout"), "{faults:?}");
}

#[test]
fn the_hard_reboot_workaround_takes_only_novas_vnic_types() {
    let text = "[DEFAULT]\ntransport_url = rabbit://fake/\n\
                [workarounds]\nwait_for_vif_plugged_event_during_hard_reboot = normal, bogus\n";
    let err = crate::config::Settings::from_layered(&crate::config::Layered::from_text(text).unwrap()).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[tokio::test]
async fn a_build_without_ports_ends_active_with_a_running_container() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    let req = BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"}),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(h.driver.container(&u).unwrap().state, Running);
    assert_eq!(only_event(&h, &u, "compute__do_build_and_run_instance"), None);
}

/// A build whose Docker engine fails here, with the scheduler's retry
/// information and `alternates`.
fn build_with_retry(h: &Harness, alternates: Value) -> (String, BuildRequest) {
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    let req = BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"}),
        filter_properties: json!({"retry": {"num_attempts": 1, "hosts": [[crate::testing::HOST, crate::testing::HOST]]}}),
        request_spec: json!({"nova_object.name": "RequestSpec"}),
        host_list: alternates,
        ..Default::default()
    };
    (u, req)
}

#[tokio::test]
async fn a_build_the_engine_fails_here_goes_back_to_the_conductor_with_the_alternates() {
    let h = Harness::new();
    let alternates = json!([{"nova_object.name": "Selection", "nova_object.data": {"service_host": "other"}}]);
    let (u, req) = build_with_retry(&h, alternates.clone());
    h.driver.fail("create");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    let casts = h.nova.take_casts();
    assert_eq!(casts.len(), 1, "{casts:?}");
    assert_eq!(casts[0].method, "build_instances");
    assert_eq!(casts[0].args["instances"][0]["nova_object.data"]["uuid"], json!(u));
    assert_eq!(casts[0].args["host_lists"], json!([alternates]));
    let reason = casts[0].args["filter_properties"]["retry"]["exc_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("injected failure"), "{reason}");
    // Given back to the scheduler: no host, scheduling, nothing held here.
    assert_eq!(h.states(&u), (Some(VmState::Building), Some(TaskState::Scheduling), NoState));
    assert_eq!(h.nova.field(&u, "host"), Some(Value::Null));
    assert!(h.placement.allocations(&u).is_empty());
    assert!(h.driver.container(&u).is_none());
    assert!(faults_of(&h, &u).is_empty(), "the conductor records the fault if no alternate is left");
}

#[tokio::test]
async fn the_late_group_policy_check_reschedules_a_build_that_would_break_it() {
    let hint = |req: &mut BuildRequest, group: &str| {
        req.request_spec = json!({"nova_object.name": "RequestSpec", "nova_object.data": {
            "scheduler_hints": {"group": [group]}}});
    };
    // Anti-affinity: another member already runs here.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    h.driver.fail("create"); // never reached
    let other = h.instance(VmState::Active, None, Running);
    h.nova.add_group(json!({"uuid": "g-anti", "name": "anti", "policy": "anti-affinity", "members": [u, other]}));
    hint(&mut req, "anti");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    let casts = h.nova.take_casts();
    assert_eq!(casts.len(), 1, "{casts:?}");
    assert_eq!(casts[0].method, "build_instances");
    let reason = casts[0].args["filter_properties"]["retry"]["exc_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Anti-affinity instance group policy was violated"), "{reason}");
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("create")), "checked before any container");

    // ... but max_server_per_host = 2 lets it in.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    let other = h.instance(VmState::Active, None, Running);
    h.nova.add_group(json!({"uuid": "g-two", "name": "two", "policy": "anti-affinity", "members": [u, other],
        "rules": {"max_server_per_host": 2}}));
    hint(&mut req, "g-two");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Active));

    // Affinity: the other member is on another host.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    let other = h.instance(VmState::Active, None, Running);
    h.nova.set_field(&other, "host", json!("elsewhere"));
    h.nova.add_group(json!({"uuid": "g-aff", "name": "aff", "policy": "affinity", "members": [u, other]}));
    hint(&mut req, "aff");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.nova.take_casts().len(), 1, "rescheduled");

    // Affinity with the other member here: built.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    let other = h.instance(VmState::Active, None, Running);
    h.nova.add_group(json!({"uuid": "g-here", "name": "here", "policy": "affinity", "members": [u, other]}));
    hint(&mut req, "here");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Active));
}

#[tokio::test]
async fn a_build_without_retry_or_refused_for_its_request_is_not_rescheduled() {
    // No retry information (a forced host): ERROR here, as before.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    req.filter_properties = json!({});
    h.driver.fail("create");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert!(h.nova.take_casts().is_empty());
    assert_eq!(h.states(&u).0, Some(VmState::Error));

    // A request no host can honour (a volume): ERROR, never rescheduled.
    let h = Harness::new();
    let (u, mut req) = build_with_retry(&h, json!([]));
    req.block_device_mapping = Some(json!({"nova_object.data": {"objects": [
        {"nova_object.data": {"source_type": "volume", "destination_type": "volume", "boot_index": 1}}]}}));
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert!(h.nova.take_casts().is_empty());
    assert_eq!(h.states(&u).0, Some(VmState::Error));
}

#[tokio::test]
async fn terminate_removes_the_container_and_the_instance() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Deleting), Running);
    h.manager.terminate_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert!(h.driver.container(&u).is_none());
    assert_eq!(h.nova.field(&u, "vm_state"), None, "the row is destroyed");
    assert_eq!(only_event(&h, &u, "compute_terminate_instance"), None);
}

// ---------------------------------------------------------------------------
// Driver errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_driver_error_records_a_fault_and_reverts_the_task_state() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::PoweringOff), Running);
    h.driver.fail("power_off");
    let err = h.manager.stop_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "vm_state kept, task state reverted");
    assert_eq!(faults_of(&h, &u), ["Docker power_off failed: injected failure"]);
    let failure = only_event(&h, &u, "compute_stop_instance").expect("the event records the failure");
    assert!(failure.contains("injected failure"), "{failure}");
}

#[tokio::test]
async fn a_failed_reboot_leaves_the_instance_in_error_with_its_power_state() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Rebooting), Shutdown);
    h.driver.fail("reboot");
    assert!(h.manager.reboot_instance(&h.ctx, h.rpc_instance(&u), false).await.is_err());
    assert_eq!(h.states(&u), (Some(VmState::Error), None, Shutdown));
    assert_eq!(faults_of(&h, &u).len(), 1);
    assert!(only_event(&h, &u, "compute_reboot_instance").is_some());
}

#[tokio::test]
async fn a_reboot_failing_while_the_guest_still_runs_carries_on_with_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Rebooting), Running);
    h.driver.fail("reboot");
    h.manager.reboot_instance(&h.ctx, h.rpc_instance(&u), false).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(faults_of(&h, &u).len(), 1, "Nova records the failed reboot");
    assert_eq!(only_event(&h, &u, "compute_reboot_instance"), None);
}

#[tokio::test]
async fn a_build_whose_container_cannot_start_ends_in_error_with_nothing_left() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    h.driver.fail("start_created");
    let req = BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"}),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert_eq!(h.states(&u).1, None);
    assert_eq!(h.nova.field(&u, "host"), Some(Value::Null), "the host is given up");
    assert!(h.driver.container(&u).is_none());
    assert_eq!(faults_of(&h, &u), ["Docker start_created failed: injected failure"]);
    assert!(only_event(&h, &u, "compute__do_build_and_run_instance").is_some());
}

#[tokio::test]
async fn a_build_failing_after_its_container_started_removes_the_container() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    // The claim, block_device_mapping and spawning saves pass; ACTIVE's does not.
    h.nova.fail_after("Instance.save", 3);
    let req = BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"}),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert!(h.driver.calls().contains(&format!("start_created {u}")));
    assert!(h.driver.container(&u).is_none(), "no container outlives a failed build");
    assert_eq!(faults_of(&h, &u).len(), 1);
    assert_eq!(h.states(&u).1, Some(TaskState::Spawning), "the conductor saved nothing more");
}

#[tokio::test]
async fn a_build_of_an_image_docker_cannot_run_fails_before_any_container() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "bare", "disk_format": "qcow2"}),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("create")), "{:?}", h.driver.calls());
    assert_eq!(faults_of(&h, &u).len(), 1);
}

fn docker_image() -> Value {
    json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"})
}

#[tokio::test]
async fn a_build_with_a_volume_fails_with_a_fault_before_any_container() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    let bdm = |data: Value| json!({"nova_object.name": "BlockDeviceMapping", "nova_object.data": data});
    let list = json!({"nova_object.name": "BlockDeviceMappingList", "nova_object.data": {"objects": [
        bdm(json!({"source_type": "image", "destination_type": "local", "boot_index": 0})),
        bdm(json!({"source_type": "volume", "destination_type": "volume", "volume_id": "v-1", "boot_index": -1})),
    ]}});
    let req = BuildRequest { image: docker_image(), block_device_mapping: Some(list), ..Default::default() };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("create")), "{:?}", h.driver.calls());
    let faults = faults_of(&h, &u);
    assert_eq!(faults.len(), 1);
    assert!(faults[0].contains("block device mapping 2") && faults[0].contains("volumes"), "{faults:?}");
}

#[tokio::test]
async fn injected_files_and_the_key_pair_reach_the_container_before_it_starts() {
    let h = Harness::with_options("[docker]\ninject_key = true");
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.nova.set_field(&u, "key_data", json!("ssh-ed25519 AAAAC3Nza key@test"));
    h.driver.add_cached_image("img-1");
    let req = BuildRequest {
        image: docker_image(),
        injected_files: Some(json!([["/etc/motd", "aGVsbG8="]])),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    let files = h.driver.container(&u).unwrap().files;
    let got: Vec<(&str, u32, Option<&[u8]>)> =
        files.iter().map(|f| (f.path.as_str(), f.mode, f.contents.as_deref())).collect();
    assert_eq!(
        got,
        [
            ("root/.ssh", 0o700, None),
            ("root/.ssh/authorized_keys", 0o600, Some(&b"ssh-ed25519 AAAAC3Nza key@test\n"[..])),
            ("etc/motd", 0o644, Some(&b"hello"[..])),
        ]
    );
    // Without inject_key (the default), no key goes in.
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.nova.set_field(&u, "key_data", json!("ssh-ed25519 AAAAC3Nza key@test"));
    h.driver.add_cached_image("img-1");
    let req = BuildRequest { image: docker_image(), ..Default::default() };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert!(h.driver.container(&u).unwrap().files.is_empty());
}

#[tokio::test]
async fn an_injected_file_that_cannot_be_written_fails_the_build_with_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.driver.add_cached_image("img-1");
    let req = BuildRequest {
        image: docker_image(),
        injected_files: Some(json!([["/etc/../../host", "aGVsbG8="]])),
        ..Default::default()
    };
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("create")), "{:?}", h.driver.calls());
    assert_eq!(faults_of(&h, &u), ["injected file 1: its path has a . or .. component"]);
}

#[tokio::test]
async fn a_build_that_needs_a_config_drive_gets_one_and_only_then() {
    let cases: [(&str, Value, Value); 4] = [
        ("", json!("True"), docker_image()),
        ("", json!(true), docker_image()),
        ("force_config_drive = true", json!(""), docker_image()),
        (
            "",
            json!(""),
            json!({"id": "img-1", "status": "active", "container_format": "docker",
                               "disk_format": "raw", "properties": {"img_config_drive": "mandatory"}}),
        ),
    ];
    for (options, config_drive, image) in cases {
        let h = Harness::with_options(options);
        let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
        h.nova.set_field(&u, "config_drive", config_drive.clone());
        h.nova.set_field(&u, "user_data", json!("I2Nsb3VkLWNvbmZpZwo="));
        h.driver.add_cached_image("img-1");
        let req = BuildRequest {
            image,
            admin_password: Some("pw".into()),
            injected_files: Some(json!([["/etc/motd", "aGVsbG8="]])),
            ..Default::default()
        };
        h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
        assert_eq!(h.states(&u).0, Some(VmState::Active), "{options} {config_drive}");
        let drive = h.driver.container(&u).unwrap().config_drive.expect("a config drive");
        let file = |p: &str| drive.iter().find(|(q, _)| q == p).map(|(_, b)| b.clone());
        let md: Value = serde_json::from_slice(&file("openstack/latest/meta_data.json").unwrap()).unwrap();
        assert_eq!(md["uuid"], u.as_str());
        assert_eq!(md["admin_pass"], "pw");
        assert_eq!(md["files"], json!([{"path": "/etc/motd", "content_path": "/content/0000"}]));
        assert_eq!(file("openstack/content/0000").unwrap(), b"hello");
        assert_eq!(file("openstack/latest/user_data").unwrap(), b"#cloud-config\n");
        assert_eq!(file("openstack/latest/network_data.json").unwrap(), b"{}");
        assert_eq!(file("openstack/latest/vendor_data2.json").unwrap(), br#"{"static":{}}"#);
    }
    // None asked for: none given.
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.nova.set_field(&u, "config_drive", json!(""));
    h.driver.add_cached_image("img-1");
    h.manager
        .build_and_run_instance(
            &h.ctx,
            h.rpc_instance(&u),
            BuildRequest { image: docker_image(), ..Default::default() },
        )
        .await;
    assert_eq!(h.states(&u).0, Some(VmState::Active));
    assert!(h.driver.container(&u).unwrap().config_drive.is_none());
}

#[tokio::test]
async fn user_data_larger_than_nova_allows_fails_the_build_with_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.nova.set_field(&u, "config_drive", json!("True"));
    h.nova.set_field(&u, "user_data", json!("A".repeat(65536 + 4)));
    h.driver.add_cached_image("img-1");
    h.manager
        .build_and_run_instance(
            &h.ctx,
            h.rpc_instance(&u),
            BuildRequest { image: docker_image(), ..Default::default() },
        )
        .await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(h.driver.container(&u).is_none());
    assert_eq!(faults_of(&h, &u), ["config drive: user_data is larger than 65535 bytes of base64"]);
}

#[tokio::test]
async fn a_failed_terminate_leaves_the_instance_in_error_and_deleting() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Deleting), Running);
    h.driver.fail("destroy");
    assert!(h.manager.terminate_instance(&h.ctx, h.rpc_instance(&u)).await.is_err());
    assert_eq!(h.states(&u), (Some(VmState::Error), Some(TaskState::Deleting), Running));
    assert_eq!(faults_of(&h, &u).len(), 1);
}

// ---------------------------------------------------------------------------
// Conductor errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_conductor_that_does_not_answer_fails_the_operation_with_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Pausing), Running);
    h.nova.fail("Instance.save");
    let err = h.manager.pause_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap_err();
    assert!(err.to_string().contains("MessagingTimeout"), "{err}");
    // Nothing could be saved: Nova still has the request's state.
    assert_eq!(h.states(&u), (Some(VmState::Active), Some(TaskState::Pausing), Running));
    assert_eq!(faults_of(&h, &u).len(), 1);
    assert!(only_event(&h, &u, "compute_pause_instance").is_some());
}

#[tokio::test]
async fn an_operation_runs_even_when_its_action_event_cannot_be_recorded() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Pausing), Running);
    h.nova.fail("InstanceActionEvent.event_start");
    h.manager.pause_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Paused), None, Paused));
}

// ---------------------------------------------------------------------------
// Concurrent requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_delete_waits_for_the_operation_in_progress_which_then_ends_quietly() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Pausing), Running);
    let gate = h.driver.hold("pause");
    let pause = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
        async move { m.pause_instance(&ctx, i, true).await }
    });
    gate.entered().await;
    assert!(h.manager.is_busy(&u), "power sync stays away while an operation runs");
    // The API accepts a delete in any task state.
    h.request(&u, TaskState::Deleting);
    let delete = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
        async move { m.terminate_instance(&ctx, i).await }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("destroy")), "the delete waits for the instance's lock");
    gate.release();
    pause.await.unwrap().expect("superseded by the delete: ends quietly");
    delete.await.unwrap().unwrap();
    assert!(h.driver.container(&u).is_none());
    assert_eq!(h.nova.field(&u, "vm_state"), None);
    assert!(faults_of(&h, &u).is_empty(), "a superseded operation records no fault");
    assert!(h.nova.events().iter().all(|e| e.finished && e.failure.is_none()), "{:?}", h.nova.events());
    assert!(!h.manager.is_busy(&u));
}

#[tokio::test]
async fn an_operation_whose_task_state_changed_meanwhile_stops_without_touching_the_instance() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::PoweringOff), Running);
    let rpc = h.rpc_instance(&u);
    // Another request took the instance over after the API cast the stop.
    h.request(&u, TaskState::RebootingHard);
    h.manager.stop_instance(&h.ctx, rpc, true).await.unwrap();
    assert_eq!(h.states(&u).0, Some(VmState::Active));
    assert_eq!(h.states(&u).1, Some(TaskState::RebootingHard), "no revert over the other request");
    assert!(faults_of(&h, &u).is_empty());
    assert_eq!(only_event(&h, &u, "compute_stop_instance"), None);
}

// ---------------------------------------------------------------------------
// Unknown instances
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_instance_deleted_meanwhile_ends_the_operation_quietly() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::PoweringOff), Running);
    let rpc = h.rpc_instance(&u);
    h.nova.remove_instance(&u);
    h.manager.stop_instance(&h.ctx, rpc, true).await.unwrap();
    assert!(h.nova.faults().is_empty());
    assert_eq!(only_event(&h, &u, "compute_stop_instance"), None);
}

#[tokio::test]
async fn an_instance_without_a_container_is_stopped_and_has_no_console() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::PoweringOff), NoState);
    h.manager.stop_instance(&h.ctx, h.rpc_instance(&u), true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Stopped), None, NoState));
    let err = h.manager.get_console_output(&h.rpc_instance(&u), None).await.unwrap_err();
    assert_eq!(err.to_remote().class, "InstanceNotFound");
}

#[tokio::test]
async fn unpausing_a_missing_container_fails_with_instance_not_found() {
    let h = Harness::new();
    let u = h.instance(VmState::Paused, Some(TaskState::Unpausing), NoState);
    let err = h.manager.pause_instance(&h.ctx, h.rpc_instance(&u), false).await.unwrap_err();
    assert_eq!(err.to_remote().class, "InstanceNotFound");
    assert_eq!(h.states(&u), (Some(VmState::Paused), None, NoState));
    assert_eq!(faults_of(&h, &u).len(), 1);
}

// ---------------------------------------------------------------------------
// What this host cannot do, and recovery
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unsupported_cast_reverts_the_task_state_with_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Rescuing), Running);
    let err = h.manager.unsupported_cast(&h.ctx, "rescue_instance", Some(h.rpc_instance(&u)), None).await;
    assert_eq!(err.class, "NotImplementedError");
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(faults_of(&h, &u).len(), 1);
    assert!(only_event(&h, &u, "compute_rescue_instance").is_some());
}

fn migration(uuid: &str, instance: &str) -> Value {
    json!({"nova_object.name": "Migration", "nova_object.namespace": "nova", "nova_object.version": "1.7",
           "nova_object.data": {"uuid": uuid, "instance_uuid": instance, "status": "pre-migrating",
                                "migration_type": "resize", "source_compute": "src", "dest_compute": crate::testing::HOST}})
}

#[tokio::test]
async fn a_refused_prep_resize_gives_the_source_allocation_back_to_the_instance() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
    let mig = uuid::Uuid::new_v4().to_string();
    // What the scheduler did before the cast: the source allocation moved to
    // the migration, the instance given one on this (destination) host.
    h.placement.allocate(&mig, "source-rp", &[("MEMORY_MB", 64)]);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 128)]);
    let args = json!({"instance": h.rpc_instance(&u).to_primitive(), "migration": migration(&mig, &u)});
    let args = args.as_object().unwrap();
    let claim = crate::compute::endpoint::claim_of("prep_resize", args);
    let err = h.manager.unsupported_cast(&h.ctx, "prep_resize", Some(h.rpc_instance(&u)), claim).await;
    assert_eq!(err.class, "NotImplementedError");
    assert!(h.placement.allocations(&mig).is_empty(), "the migration keeps nothing");
    let back = h.placement.allocations(&u);
    assert_eq!(back.keys().collect::<Vec<_>>(), ["source-rp"], "{back:?}");
    assert_eq!(back["source-rp"]["MEMORY_MB"], 64);
    assert_eq!(h.nova.migration_field(&mig, "status"), Some(json!("error")));
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn a_refused_unshelve_frees_what_the_scheduler_claimed() {
    let h = Harness::new();
    let u = h.instance(VmState::ShelvedOffloaded, Some(TaskState::Unshelving), NoState);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    let claim = Some(crate::compute::operation::Claim::WholeInstance);
    let mut i = h.rpc_instance(&u);
    let op = crate::compute::operation::Operation::new("compute_unshelve_instance").holding(claim);
    let failed = crate::compute::errors::OpError::Invalid("no".into());
    let r = h.manager.run(&h.ctx, &mut i, op, async |_| Err::<(), _>(failed)).await;
    assert!(r.is_err());
    assert!(h.placement.allocations(&u).is_empty());
}

#[tokio::test]
async fn an_operation_that_succeeds_keeps_its_claim() {
    let h = Harness::new();
    let u = h.instance(VmState::ShelvedOffloaded, Some(TaskState::Unshelving), NoState);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    let mut i = h.rpc_instance(&u);
    let op = crate::compute::operation::Operation::new("compute_unshelve_instance")
        .holding(Some(crate::compute::operation::Claim::WholeInstance));
    h.manager.run(&h.ctx, &mut i, op, async |_| Ok(())).await.unwrap();
    assert_eq!(h.placement.allocations(&u).len(), 1);
}

#[tokio::test]
async fn detaching_a_port_the_instance_does_not_have_is_port_not_found() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Running);
    give_port(&h, &u);
    let err = h.manager.detach_interface(&h.ctx, h.rpc_instance(&u), "port-9", true).await.unwrap_err();
    assert_eq!(err.to_remote().class, "PortNotFound");
    assert_eq!(faults_of(&h, &u).len(), 1);
    // Neutron's own event for a port it deleted records no fault.
    assert!(h.manager.detach_interface(&h.ctx, h.rpc_instance(&u), "port-9", false).await.is_err());
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn start_up_recovery_finishes_interrupted_operations() {
    let h = Harness::new();
    let stopping = h.instance(VmState::Active, Some(TaskState::PoweringOff), Running);
    let building = h.instance(VmState::Building, Some(TaskState::Spawning), Running);
    let pausing = h.instance(VmState::Active, Some(TaskState::Pausing), Running);
    h.manager.init_host(&h.ctx).await.unwrap();
    assert_eq!(h.states(&stopping), (Some(VmState::Stopped), None, Shutdown));
    assert_eq!(h.states(&building).0, Some(VmState::Error));
    assert!(h.driver.container(&building).is_none());
    assert_eq!(h.states(&pausing), (Some(VmState::Paused), None, Paused));
}

/// Only an evacuation to this host that a restart cut short is failed at
/// start-up; another host's evacuation in flight (Nova's migration query
/// cannot filter on the destination) is left to that host, and one not
/// started here yet to its queued cast.
#[tokio::test]
async fn start_up_fails_only_the_evacuations_to_this_host() {
    let h = Harness::new();
    let evacuating = |dest: &str, status: &str| {
        let u = h.instance(VmState::Active, Some(TaskState::Rebuilding), NoState);
        h.nova.set_field(&u, "host", json!("dead"));
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 9, "instance_uuid": u, "source_compute": "dead",
            "source_node": "dead", "dest_compute": dest, "status": status,
            "migration_type": "evacuation"}));
        (u, m)
    };
    let (mine, my_migration) = evacuating(crate::testing::HOST, "pre-migrating");
    let (theirs, their_migration) = evacuating("other", "pre-migrating");
    // Not started here yet (its rebuild cast may wait in the queue).
    let (queued, queued_migration) = evacuating(crate::testing::HOST, "accepted");
    h.manager.init_host(&h.ctx).await.unwrap();
    assert_eq!(h.states(&mine).0, Some(VmState::Error));
    assert_eq!(h.nova.migration(&my_migration).status(), Some("failed"));
    assert_eq!(h.states(&theirs).0, Some(VmState::Active), "another host's evacuation is not this host's to fail");
    assert_eq!(h.states(&theirs).1, Some(TaskState::Rebuilding));
    assert_eq!(h.nova.migration(&their_migration).status(), Some("pre-migrating"));
    assert!(faults_of(&h, &theirs).is_empty());
    assert_eq!(h.states(&queued).1, Some(TaskState::Rebuilding), "a queued evacuation is left to its cast");
    assert_eq!(h.nova.migration(&queued_migration).status(), Some("accepted"));
}

#[tokio::test]
async fn power_sync_records_a_container_stopped_outside_nova() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Shutdown);
    h.manager.sync_instance(&h.ctx, &u).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Stopped), None, Shutdown));
    assert!(h.driver.calls().contains(&format!("cleanup_stopped {u}")));
    // Busy instances are left to their operation.
    let v = h.instance(VmState::Active, None, Shutdown);
    let _busy = h.manager.mark_busy(&v);
    h.manager.sync_instance(&h.ctx, &v).await.unwrap();
    assert_eq!(h.states(&v).0, Some(VmState::Active));
}

/// Nova's `_sync_instance_power_state` skips an instance with a task state:
/// a container stopped or gone during a resize's steps (stopped and
/// committed on the source, replaced on a same-host finish, removed by a
/// revert) is the operation's, not a power change to record.
#[tokio::test]
async fn power_sync_leaves_an_instance_in_a_resize_step_alone() {
    use crate::virt::Driver as _;
    let h = Harness::new();
    let tasks =
        [TaskState::ResizeMigrating, TaskState::ResizeMigrated, TaskState::ResizeFinish, TaskState::ResizeReverting];
    for (task, container) in tasks.into_iter().flat_map(|t| [(t, Some(Shutdown)), (t, None)]) {
        let u = h.instance(VmState::Active, Some(task), Running);
        match container {
            Some(state) => h.driver.add_container(&u, state),
            None => {
                h.driver.destroy(&u, std::time::Duration::ZERO, &Vec::new()).await.unwrap();
            }
        }
        h.manager.sync_instance(&h.ctx, &u).await.unwrap();
        assert_eq!(h.states(&u), (Some(VmState::Active), Some(task), Running), "{task:?} {container:?}");
        assert!(!h.driver.calls().contains(&format!("cleanup_stopped {u}")), "{task:?}");
    }
}

// ---------------------------------------------------------------------------
// Ports (an in-memory Neutron)
// ---------------------------------------------------------------------------

fn build_on_net(h: &Harness, u: &str) -> BuildRequest {
    h.driver.add_cached_image("img-1");
    let _ = u;
    BuildRequest {
        image: json!({"id": "img-1", "status": "active", "container_format": "docker", "disk_format": "raw"}),
        requested_networks: Some(json!({"nova_object.data": {"objects": [
            {"nova_object.data": {"network_id": crate::testing::fake_neutron::NETWORK}}]}})),
        ..Default::default()
    }
}

fn cached_ports(h: &Harness, u: &str) -> Vec<String> {
    h.manager.network_info_of(&h.rpc_instance(u)).into_iter().map(|v| v.id).collect()
}

#[tokio::test]
async fn a_build_with_a_port_binds_caches_and_plugs_it_and_the_guest_resolves_with_its_dns() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(cached_ports(&h, &u), ["port-1"]);
    let c = h.driver.container(&u).unwrap();
    assert_eq!(c.plugged, ["port-1"]);
    assert_eq!(c.dns, [crate::testing::fake_neutron::DNS], "the driver wrote the guest's files from network_info");
}

#[tokio::test]
async fn a_build_with_a_port_that_cannot_start_releases_the_port() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.driver.fail("start_created");
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert_eq!(h.neutron.deleted(), ["port-1"]);
    assert!(h.neutron.ports().is_empty());
    assert!(h.driver.container(&u).is_none());
}

#[tokio::test]
async fn a_build_whose_instance_went_meanwhile_makes_no_port() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    let rpc = h.rpc_instance(&u);
    // Deleted by the API after the cast: the claim is refused while
    // Neutron is asked what the port is made from.
    h.nova.remove_instance(&u);
    h.manager.build_and_run_instance(&h.ctx, rpc, req).await;
    assert!(h.neutron.bound().is_empty() && h.neutron.deleted().is_empty(), "{:?}", h.neutron.bound());
    assert!(h.driver.container(&u).is_none());
}

#[tokio::test]
async fn a_stale_build_never_touches_the_instances_own_port() {
    let h = Harness::new();
    // The instance builds (or runs) elsewhere with the user's port; a
    // second build of it reaches this host (a buggy or stale peer).
    let u = h.instance(VmState::Building, Some(TaskState::Spawning), NoState);
    let mut req = build_on_net(&h, &u);
    req.requested_networks = Some(json!({"nova_object.data": {"objects": [
        {"nova_object.data": {"port_id": "users-port"}}]}}));
    let project = h.rpc_instance(&u).project_id().map(str::to_string);
    h.neutron.add_port_of("users-port", &u, project.as_deref().unwrap_or_default());
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert!(h.neutron.bound().is_empty(), "{:?}", h.neutron.bound());
    assert_eq!(h.neutron.device_of("users-port").as_deref(), Some(u.as_str()), "still the instance's");
    assert!(h.neutron.deleted().is_empty());
    assert_eq!(h.states(&u).1, Some(TaskState::Spawning), "the other build's state is left alone");
    assert!(h.driver.container(&u).is_none());
}

#[tokio::test]
async fn a_build_whose_image_fails_makes_no_port() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let mut req = build_on_net(&h, &u);
    // An image this host does not have and Glance does not know.
    req.image = json!({"id": "img-missing", "status": "active", "container_format": "docker", "disk_format": "raw"});
    h.nova.set_field(&u, "image_ref", json!("img-missing"));
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(h.neutron.bound().is_empty() && h.neutron.deleted().is_empty(), "{:?}", h.neutron.bound());
    assert!(h.driver.container(&u).is_none());
}

#[tokio::test]
async fn a_build_waits_for_network_vif_plugged_of_a_port_not_active_yet() {
    let h = Harness::new();
    h.neutron.inactive_ports();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    let build = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
        async move { m.build_and_run_instance(&ctx, i, req).await }
    });
    // Neutron's event, once the build waits for it.
    deliver_when_awaited(&h, &u, "network-vif-plugged-port-1", &build).await;
    build.await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
}

#[tokio::test(start_paused = true)]
async fn a_build_whose_plug_event_never_comes_fails_when_vif_plugging_is_fatal() {
    let h = Harness::with_options("vif_plugging_timeout = 30\nvif_plugging_is_fatal = true");
    h.neutron.inactive_ports();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    let faults = faults_of(&h, &u);
    assert!(faults.len() == 1 && faults[0].contains("vif_plugging_timeout"), "{faults:?}");
    assert_eq!(h.neutron.deleted(), ["port-1"]);
    assert!(h.driver.container(&u).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_build_whose_plug_event_never_comes_goes_on_when_vif_plugging_is_not_fatal() {
    let h = Harness::with_options("vif_plugging_timeout = 30\nvif_plugging_is_fatal = false");
    h.neutron.inactive_ports();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
}

#[tokio::test]
async fn a_delete_releases_the_instances_ports_and_keeps_the_users_own() {
    let h = Harness::new();
    h.neutron.add_user_port("users-port");
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let mut req = build_on_net(&h, &u);
    req.requested_networks = Some(json!({"nova_object.data": {"objects": [
        {"nova_object.data": {"network_id": crate::testing::fake_neutron::NETWORK}},
        {"nova_object.data": {"port_id": "users-port"}}]}}));
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(cached_ports(&h, &u), ["port-1", "users-port"]);
    h.request(&u, TaskState::Deleting);
    h.manager.terminate_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.neutron.deleted(), ["port-1"]);
    assert_eq!(h.neutron.ports(), ["users-port"], "the user's port is only unbound");
}

#[tokio::test]
async fn a_delete_leaves_another_projects_port_pointed_at_the_instance() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    // Another tenant writes the victim's uuid into its own port's device_id.
    h.neutron.add_port_of("port-evil", &u, "project-2");
    h.request(&u, TaskState::Deleting);
    h.manager.terminate_instance(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.neutron.deleted(), ["port-1"], "the instance's own port is deleted");
    assert_eq!(h.neutron.ports(), ["port-evil"], "the other project's port is untouched");
}

#[tokio::test]
async fn a_network_refresh_never_takes_in_another_projects_port() {
    let h = Harness::new();
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    let req = build_on_net(&h, &u);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), req).await;
    h.neutron.add_port_of("port-evil", &u, "project-2");
    h.manager.refresh_network_info(&h.ctx, h.rpc_instance(&u)).await.unwrap();
    assert_eq!(cached_ports(&h, &u), ["port-1"]);
}

#[tokio::test]
async fn attach_and_detach_an_interface() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Running);
    let request = crate::network::NetworkRequest {
        network_id: Some(crate::testing::fake_neutron::NETWORK.into()),
        port_id: None,
        address: None,
        tag: None,
    };
    // The instance has a config drive: its network_data.json follows.
    let drive = |h: &Harness| {
        let files = h.driver.container(&u).unwrap().config_drive.unwrap();
        let nd = files.iter().find(|(p, _)| p == crate::virt::config_drive::NETWORK_DATA);
        String::from_utf8(nd.map(|(_, b)| b.clone()).unwrap_or_default()).unwrap()
    };
    h.driver.give_config_drive(&u);
    let vif = h.manager.attach_interface(&h.ctx, h.rpc_instance(&u), request.clone()).await.unwrap();
    assert_eq!(vif["id"], "port-1");
    assert_eq!(cached_ports(&h, &u), ["port-1"]);
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
    assert_eq!(drive(&h), "port-1");

    h.manager.detach_interface(&h.ctx, h.rpc_instance(&u), "port-1", true).await.unwrap();
    assert!(cached_ports(&h, &u).is_empty());
    assert!(h.driver.container(&u).unwrap().plugged.is_empty());
    assert_eq!(drive(&h), "");
    assert_eq!(h.neutron.deleted(), ["port-1"]);

    // A port the driver cannot plug is released again; the caller gets the error.
    h.driver.fail("attach_interface");
    assert!(h.manager.attach_interface(&h.ctx, h.rpc_instance(&u), request).await.is_err());
    assert_eq!(h.neutron.deleted(), ["port-1", "port-2"]);
    assert!(cached_ports(&h, &u).is_empty());
    assert!(faults_of(&h, &u).is_empty(), "a call's failure goes to its caller, not to a fault");
}

// ---------------------------------------------------------------------------
// Snapshots (an in-memory Glance)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_snapshot_uploads_the_canonical_archive_and_ends_idle() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ImageSnapshotPending), Running);
    h.glance.add_queued("snap-1", json!({}));
    h.manager.snapshot_instance(&h.ctx, h.rpc_instance(&u), "snap-1", None).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    let (image, data) = h.glance.image("snap-1").expect("the snapshot stays");
    assert_eq!((image.container_format.as_deref(), image.disk_format.as_deref()), (Some("docker"), Some("raw")));
    let data = data.expect("data uploaded");
    assert!(data.len() > 1024 && data.windows(13).any(|w| w == b"manifest.json"), "a docker-save archive");
    assert!(h.driver.calls().iter().any(|c| c.starts_with("remove_image")), "the committed image goes");
    assert_eq!(only_event(&h, &u, "compute_snapshot_instance"), None);
}

#[tokio::test]
async fn a_snapshot_that_cannot_commit_deletes_the_glance_image_and_reverts() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ImageSnapshotPending), Running);
    h.glance.add_queued("snap-1", json!({}));
    h.driver.fail("commit");
    assert!(h.manager.snapshot_instance(&h.ctx, h.rpc_instance(&u), "snap-1", None).await.is_err());
    assert!(h.glance.image("snap-1").is_none(), "Nova's delete_image_on_error");
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn a_snapshot_whose_upload_fails_deletes_the_half_made_image() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ImageSnapshotPending), Running);
    h.glance.add_queued("snap-1", json!({}));
    h.glance.fail("upload");
    let err = h.manager.snapshot_instance(&h.ctx, h.rpc_instance(&u), "snap-1", None).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(h.glance.image("snap-1").is_none());
    assert!(h.driver.calls().iter().any(|c| c.starts_with("remove_image")), "the committed image goes");
    assert_eq!(h.states(&u).1, None);
}

#[tokio::test]
async fn a_backup_rotates_out_the_oldest_backups_of_its_type() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ImageBackup), Running);
    let props = json!({"image_type": "backup", "backup_type": "daily", "instance_uuid": u,
                       "owner": crate::testing::PROJECT});
    for id in ["b-1", "b-2", "b-3"] {
        h.glance.add_queued(id, props.clone());
    }
    let rotation = crate::compute::snapshot::Rotation { backup_type: "daily".into(), keep: 2 };
    h.manager.snapshot_instance(&h.ctx, h.rpc_instance(&u), "b-3", Some(rotation)).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert!(h.glance.image("b-1").is_none(), "the oldest goes");
    assert!(h.glance.image("b-2").is_some() && h.glance.image("b-3").is_some());
    assert_eq!(only_event(&h, &u, "compute_backup_instance"), None);
}

// ---------------------------------------------------------------------------
// Images a build downloads (the in-memory Glance)
// ---------------------------------------------------------------------------

/// A build of Glance image `id` with Nova's image dict (Glance's record).
fn build_of(h: &Harness, id: &str) -> BuildRequest {
    let (image, _) = h.glance.image(id).expect("the image");
    BuildRequest {
        image: json!({"id": id, "status": image.status, "container_format": image.container_format,
            "disk_format": image.disk_format, "size": image.size, "os_hash_algo": image.os_hash_algo,
            "os_hash_value": image.os_hash_value}),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_build_downloads_a_missing_image_once_and_later_builds_reuse_it() {
    let h = Harness::new();
    h.glance.add_active("img-1", "docker", crate::testing::fake_driver::docker_save_archive());
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), build_of(&h, "img-1")).await;
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "{:?}", faults_of(&h, &u));
    let v = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&v), build_of(&h, "img-1")).await;
    assert_eq!(h.states(&v).0, Some(VmState::Active));
    let loads = h.driver.calls().iter().filter(|c| c.starts_with("load_image")).count();
    assert_eq!(loads, 1, "the second build finds the image bound to its Glance id");
}

#[tokio::test]
async fn a_build_whose_image_download_breaks_off_fails_with_nothing_loaded() {
    let h = Harness::new();
    h.glance.add_active("img-1", "docker", crate::testing::fake_driver::docker_save_archive());
    h.glance.cut_downloads_after(1000);
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), build_of(&h, "img-1")).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(h.driver.container(&u).is_none());
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("create")));
    let faults = faults_of(&h, &u);
    assert!(faults.len() == 1 && faults[0].contains("interrupted"), "{faults:?}");
}

#[tokio::test]
async fn a_build_of_an_archive_that_is_not_an_image_is_refused() {
    let h = Harness::new();
    h.glance.add_active("img-1", "docker", b"not a tar archive at all".repeat(40));
    let u = h.instance(VmState::Building, Some(TaskState::Scheduling), NoState);
    h.manager.build_and_run_instance(&h.ctx, h.rpc_instance(&u), build_of(&h, "img-1")).await;
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert!(h.driver.container(&u).is_none());
    assert!(h.driver.calls().iter().any(|c| c.starts_with("load_image")), "the hash passed; the archive did not");
    assert_eq!(faults_of(&h, &u).len(), 1, "{:?}", faults_of(&h, &u));
}

// ---------------------------------------------------------------------------
// Host-driven changes: root disks, orphans, Neutron's events, diagnostics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_instance_over_its_root_disk_is_stopped_with_a_fault_saying_why() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Running);
    let within = h.instance(VmState::Active, None, Running);
    h.driver.set_root_disk_usage(vec![
        crate::virt::RootDiskUsage { uuid: u.clone(), used_bytes: 3 << 30, limit_gb: 1 },
        crate::virt::RootDiskUsage { uuid: within.clone(), used_bytes: 1 << 20, limit_gb: 1 },
    ]);
    h.manager.enforce_root_disks().await;
    assert_eq!(h.states(&u), (Some(VmState::Stopped), None, Shutdown));
    let faults = faults_of(&h, &u);
    assert!(faults.len() == 1 && faults[0].contains("root disk"), "{faults:?}");
    assert_eq!(only_event(&h, &u, "compute_stop_instance"), None);
    assert_eq!(h.states(&within), (Some(VmState::Active), None, Running));
}

#[tokio::test]
async fn the_full_sync_reaps_containers_of_deleted_instances_and_leaves_others_alone() {
    let h = Harness::new();
    let mine = h.instance(VmState::Active, None, Running);
    let orphan = uuid::Uuid::new_v4().to_string();
    h.driver.add_container(&orphan, Running);
    let elsewhere = h.instance(VmState::Active, None, Running);
    h.nova.set_field(&elsewhere, "host", json!("other-host"));
    h.manager.sync_all(&h.ctx).await;
    assert!(h.driver.container(&orphan).is_none(), "running_deleted_instance_action = reap");
    assert!(h.driver.container(&mine).is_some());
    assert!(h.driver.container(&elsewhere).is_some(), "an instance Nova places elsewhere is not ours to remove");
    assert!(h.driver.calls().contains(&"cleanup_host -".to_string()));
}

#[tokio::test]
async fn neutron_deleting_a_port_unplugs_it_without_a_fault() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, None, Running);
    give_port(&h, &u);
    h.manager.ensure_plugged(&h.rpc_instance(&u)).await.unwrap();
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
    let args = json!({
        "events": [{"nova_object.data": {"instance_uuid": u, "name": "network-vif-deleted", "tag": "port-1",
            "status": "completed"}}],
        "instances": [h.rpc_instance(&u).to_primitive()],
    });
    h.manager.handle_external_events(&h.ctx, args.as_object().unwrap()).await;
    assert!(h.driver.container(&u).unwrap().plugged.is_empty());
    assert!(cached_ports(&h, &u).is_empty());
    assert!(faults_of(&h, &u).is_empty());
    assert!(h.neutron.deleted().is_empty(), "Neutron deleted it already");
}

#[tokio::test]
async fn diagnostics_of_an_instance_not_running_are_an_invalid_state() {
    let h = Harness::new();
    let u = h.instance(VmState::Stopped, None, Shutdown);
    let err = h.manager.get_diagnostics(&h.rpc_instance(&u)).await.unwrap_err();
    assert_eq!(err.to_remote().class, "InstanceInvalidState");
    let running = h.instance(VmState::Active, None, Running);
    let d = h.manager.get_instance_diagnostics(&h.rpc_instance(&running)).await.unwrap();
    assert_eq!(d["nova_object.data"]["state"], "running");
}

// ---------------------------------------------------------------------------
// Resize and cold migration (same host: every step runs on this harness)
// ---------------------------------------------------------------------------

mod resize {
    use super::*;
    use crate::compute::resize::ResizeRequest;
    use crate::objects::{Flavor, Instance, Migration, NovaObject};
    use crate::testing::fake_driver::FakeContainer;
    use crate::testing::{HOST, PROJECT};

    fn flavor(id: i64, memory_mb: i64, extra_specs: Value) -> Flavor {
        let v = json!({"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": "1.2",
            "nova_object.data": {"id": id, "flavorid": format!("f{id}"), "name": format!("f{id}"),
                "memory_mb": memory_mb, "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0, "extra_specs": extra_specs}});
        Flavor { obj: NovaObject::expect(&v, "Flavor").unwrap() }
    }

    fn request(flavor: Flavor) -> ResizeRequest {
        ResizeRequest {
            flavor,
            image: json!({}),
            request_spec: Value::Null,
            filter_properties: json!({}),
            host_list: json!([]),
            clean_shutdown: true,
        }
    }

    /// An active instance of flavor 1 (64 MiB) on this host, the API's
    /// resize_prep task set, and the conductor's migration to flavor `to`.
    fn resizing(h: &Harness, to: i64) -> (String, String) {
        let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        h.nova.set_field(&u, "flavor", flavor(1, 64, json!({})).obj.to_primitive());
        h.nova.set_field(&u, "instance_type_id", json!(1));
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 7, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "status": "pre-migrating", "old_instance_type_id": 1,
            "new_instance_type_id": to, "migration_type": if to == 1 { "migration" } else { "resize" }}));
        (u, m)
    }

    /// Delivers the casts the manager sent to itself until none is left.
    async fn deliver(h: &Harness) -> Vec<String> {
        let mut methods = Vec::new();
        loop {
            let casts = h.nova.take_casts();
            if casts.is_empty() {
                return methods;
            }
            for c in casts {
                assert_eq!(c.host, HOST, "{c:?}");
                let i = Instance::from_primitive(&c.args["instance"]).unwrap();
                let m = Migration::from_primitive(&c.args["migration"]).unwrap();
                let r = match c.method.as_str() {
                    "resize_instance" => h.manager.resize_instance(&h.ctx, i, m, json!({}), Value::Null, true).await,
                    "finish_resize" => h.manager.finish_resize(&h.ctx, i, m, c.args.get("disk_info").cloned()).await,
                    "finish_revert_resize" => h.manager.finish_revert_resize(&h.ctx, i, m).await,
                    other => panic!("unexpected cast {other}"),
                };
                methods.push(c.method.clone());
                let _ = r;
            }
        }
    }

    async fn resize_to(h: &Harness, u: &str, m: &str, to: Flavor) {
        h.manager.prep_resize(&h.ctx, h.rpc_instance(u), h.nova.migration(m), request(to)).await.unwrap();
        assert_eq!(deliver(h).await, ["resize_instance", "finish_resize"]);
    }

    #[tokio::test]
    async fn a_same_host_resize_recreates_the_container_with_the_new_flavor_then_confirms() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.neutron.add_port_of("port-1", &u, PROJECT);
        give_port(&h, &u);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;

        assert_eq!(h.states(&u), (Some(VmState::Resized), None, Running));
        let c = h.driver.container(&u).unwrap();
        assert_eq!(c.memory_bytes, 128 << 20, "the new flavor's limit");
        assert_eq!(c.image, format!("sha256:{}", "c".repeat(64)), "created from the committed filesystem");
        assert_eq!(c.plugged, ["port-1"]);
        assert_eq!(h.neutron.binding_host("port-1").as_deref(), Some(HOST));
        assert_eq!(h.nova.migration(&m).status(), Some("finished"));
        let i = h.rpc_instance(&u);
        assert_eq!(i.memory_mb(), 128);
        assert_eq!(i.flavor_named("old_flavor").unwrap().memory_mb(), Some(64));
        assert_eq!(i.system_metadata().get("old_vm_state").map(String::as_str), Some("active"));
        let calls = h.driver.calls();
        let pos = |p: &str| calls.iter().position(|c| c.starts_with(p)).unwrap_or_else(|| panic!("{p}: {calls:?}"));
        assert!(pos("power_off") < pos("commit") && pos("commit") < pos("destroy") && pos("destroy") < pos("create"));

        h.nova.set_migration_field(&m, "status", json!("confirming"));
        h.manager.confirm_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await.unwrap();
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.nova.migration(&m).status(), Some("confirmed"));
        let i = h.rpc_instance(&u);
        assert_eq!(i.obj.get("old_flavor"), Some(&Value::Null));
        assert!(!i.system_metadata().contains_key("old_vm_state"));
        assert_eq!(h.driver.container(&u).unwrap().memory_bytes, 128 << 20, "confirm keeps the resized container");
        assert!(faults_of(&h, &u).is_empty(), "{:?}", faults_of(&h, &u));
        let names: Vec<String> = h.nova.events().into_iter().filter(|e| e.uuid == u).map(|e| e.event).collect();
        assert_eq!(
            names,
            ["compute_prep_resize", "compute_resize_instance", "compute_finish_resize", "compute_confirm_resize"]
        );
    }

    /// One queued cast of the manager to itself, delivered.
    async fn deliver_one(h: &Harness, c: &crate::testing::fake_nova::Cast) {
        let i = Instance::from_primitive(&c.args["instance"]).unwrap();
        let m = Migration::from_primitive(&c.args["migration"]).unwrap();
        let r = match c.method.as_str() {
            "resize_instance" => h.manager.resize_instance(&h.ctx, i, m, json!({}), Value::Null, true).await,
            "finish_resize" => h.manager.finish_resize(&h.ctx, i, m, c.args.get("disk_info").cloned()).await,
            "finish_revert_resize" => h.manager.finish_revert_resize(&h.ctx, i, m).await,
            other => panic!("unexpected cast {other}"),
        };
        r.unwrap();
    }

    /// A restart of the host between two steps of a same-host resize (the
    /// next step's cast still queued) leaves the instance's task state to
    /// that step, as Nova's `_init_instance` does: the resize, and then its
    /// revert, still finish.
    #[tokio::test]
    async fn a_restart_between_two_steps_of_a_resize_leaves_the_instance_to_the_next_step() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await
            .unwrap();
        let casts = h.nova.take_casts();
        assert_eq!(casts.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["resize_instance"]);
        deliver_one(&h, &casts[0]).await;
        let finish = h.nova.take_casts();
        assert_eq!(finish.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["finish_resize"]);
        h.manager.init_host(&h.ctx).await.unwrap();
        assert_eq!(h.states(&u).1, Some(TaskState::ResizeMigrated), "left to finish_resize");
        deliver_one(&h, &finish[0]).await;
        assert_eq!(h.states(&u), (Some(VmState::Resized), None, Running), "{:?}", faults_of(&h, &u));
        assert_eq!(h.driver.container(&u).unwrap().memory_bytes, 128 << 20);

        h.request(&u, TaskState::ResizeReverting);
        h.nova.set_migration_field(&m, "status", json!("reverting"));
        h.manager.revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), Value::Null).await.unwrap();
        let revert = h.nova.take_casts();
        assert_eq!(revert.iter().map(|c| c.method.as_str()).collect::<Vec<_>>(), ["finish_revert_resize"]);
        h.manager.init_host(&h.ctx).await.unwrap();
        assert_eq!(h.states(&u).1, Some(TaskState::ResizeReverting), "left to finish_revert_resize");
        deliver_one(&h, &revert[0]).await;
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "{:?}", faults_of(&h, &u));
        assert_eq!(h.driver.container(&u).unwrap().memory_bytes, 64 << 20);
        assert!(faults_of(&h, &u).is_empty(), "{:?}", faults_of(&h, &u));
    }

    #[tokio::test]
    async fn a_reverted_same_host_resize_gets_the_old_flavor_and_filesystem_back() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;

        h.request(&u, TaskState::ResizeReverting);
        h.nova.set_migration_field(&m, "status", json!("reverting"));
        h.manager.revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), Value::Null).await.unwrap();
        assert_eq!(h.nova.migration(&m).status(), Some("reverted"));
        assert_eq!(deliver(&h).await, ["finish_revert_resize"]);

        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        let c = h.driver.container(&u).unwrap();
        assert_eq!(c.memory_bytes, 64 << 20, "the old flavor's limit again");
        assert_eq!(c.image, format!("sha256:{}", "c".repeat(64)), "from the filesystem committed before the resize");
        let i = h.rpc_instance(&u);
        assert_eq!((i.memory_mb(), i.host()), (64, Some(HOST)));
        assert!(i.flavor_named("new_flavor").is_none() && i.flavor_named("old_flavor").is_none());
        assert!(faults_of(&h, &u).is_empty(), "{:?}", faults_of(&h, &u));
    }

    #[tokio::test]
    async fn a_stopped_instance_is_resized_stopped_and_reverted_stopped() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.nova.set_field(&u, "vm_state", json!("stopped"));
        h.driver.add_container(&u, Shutdown);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.states(&u), (Some(VmState::Resized), None, Shutdown));
        assert_eq!(h.driver.container(&u).unwrap().state, Shutdown);
        h.request(&u, TaskState::ResizeReverting);
        h.manager.revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), Value::Null).await.unwrap();
        deliver(&h).await;
        assert_eq!(h.states(&u), (Some(VmState::Stopped), None, Shutdown));
    }

    #[tokio::test]
    async fn migrating_to_the_same_host_is_refused_and_leaves_the_instance_as_it_was() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 1);
        let r = h
            .manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(1, 64, json!({}))))
            .await;
        assert!(r.is_err());
        assert!(h.nova.take_casts().is_empty(), "nothing moves");
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert!(faults_of(&h, &u)[0].contains("Unable to migrate"), "{:?}", faults_of(&h, &u));
        assert_eq!(h.driver.container(&u).unwrap().state, Running);
    }

    #[tokio::test]
    async fn a_refused_resize_goes_to_the_next_alternate_host_when_the_scheduler_gave_some() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 1);
        let mut req = request(flavor(1, 64, json!({})));
        req.filter_properties = json!({"retry": {"num_attempts": 1, "hosts": [[HOST, HOST]]}});
        req.host_list = json!([{"nova_object.name": "Selection", "nova_object.data": {"service_host": "other"}}]);
        h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), req).await.unwrap();
        let casts = h.nova.take_casts();
        assert_eq!(casts.len(), 1, "{casts:?}");
        let c = &casts[0];
        assert_eq!((c.host.as_str(), c.method.as_str()), ("conductor", "migrate_server"));
        assert_eq!(c.args["host_list"][0]["nova_object.data"]["service_host"], "other");
        let retry = &c.args["scheduler_hint"]["filter_properties"]["retry"];
        assert!(retry["exc"][0].as_str().unwrap().contains("Unable to migrate"), "{retry}");
        assert_eq!((c.args["live"].clone(), c.args["rebuild"].clone()), (json!(false), json!(false)));
        // The conductor goes on: the task stays resize_prep; the fault says why.
        assert_eq!(h.states(&u), (Some(VmState::Active), Some(TaskState::ResizePrep), Running));
        assert_eq!(faults_of(&h, &u).len(), 1);
        // Without alternates the same refusal ends the resize here.
        let (u, m) = resizing(&h, 1);
        let mut req = request(flavor(1, 64, json!({})));
        req.filter_properties = json!({"retry": {"num_attempts": 1}});
        assert!(h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), req).await.is_err());
        assert!(h.nova.take_casts().is_empty());
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    }

    #[tokio::test]
    async fn a_flavor_this_host_cannot_honour_is_refused_before_anything_moves() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        let bad = flavor(2, 128, json!({"docker:cpu_limit": "turbo"}));
        let r = h.manager.prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(bad)).await;
        assert!(r.is_err());
        assert!(h.nova.take_casts().is_empty());
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert!(faults_of(&h, &u)[0].contains("docker:cpu_limit"), "{:?}", faults_of(&h, &u));
    }

    #[tokio::test]
    async fn a_failed_commit_starts_the_instance_again_where_it_was() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.driver.fail("commit");
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await
            .unwrap();
        assert_eq!(deliver(&h).await, ["resize_instance"]);
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.driver.container(&u).unwrap().state, Running);
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert_eq!(h.rpc_instance(&u).host(), Some(HOST));
        assert_eq!(faults_of(&h, &u).len(), 1);
    }

    #[tokio::test]
    async fn a_failed_finish_leaves_the_instance_in_error_with_its_old_flavor() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.driver.fail("create");
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await
            .unwrap();
        assert_eq!(deliver(&h).await, ["resize_instance", "finish_resize"]);
        let (vm, task, _) = h.states(&u);
        assert_eq!((vm, task), (Some(VmState::Error), None));
        assert_eq!(h.rpc_instance(&u).memory_mb(), 64);
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert_eq!(faults_of(&h, &u).len(), 1);
    }

    /// An instance `u` resized (`resize_migrated`) from host "other" to this
    /// one; its migration.
    fn arriving(h: &Harness) -> (String, String) {
        let u = h.instance(VmState::Active, Some(TaskState::ResizeMigrated), NoState);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 8, "instance_uuid": u, "source_compute": "other",
            "source_node": "other", "dest_compute": HOST, "dest_node": HOST, "status": "post-migrating",
            "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
        (u, m)
    }

    fn disk_info(glance: &str) -> Option<Value> {
        Some(json!(json!({"docker_image": "sha256:x", "glance_image": glance}).to_string()))
    }

    #[tokio::test]
    async fn only_the_ports_neutron_gives_as_the_instances_are_bound_never_those_the_cache_names() {
        let h = Harness::new();
        // The cache names another instance's port: refused, nothing bound.
        let (u, m) = resizing(&h, 2);
        h.neutron.add_port_of("port-1", &uuid::Uuid::new_v4().to_string(), PROJECT);
        give_port(&h, &u);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.neutron.binding_host("port-1"), None, "the other instance's port stays where it was");
        assert_eq!(h.states(&u).0, Some(VmState::Error));
        assert!(faults_of(&h, &u)[0].contains("not a port of this instance"), "{:?}", faults_of(&h, &u));

        // Another project's port pointed at the instance is left alone; the
        // instance's own port is bound.
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.neutron.add_port_of("port-1", &u, PROJECT);
        h.neutron.add_port_of("port-evil", &u, "project-2");
        give_port(&h, &u);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.states(&u).0, Some(VmState::Resized));
        assert_eq!(h.neutron.binding_host("port-1").as_deref(), Some(HOST));
        assert_eq!(h.neutron.binding_host("port-evil"), None);
        assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"]);
    }

    #[tokio::test]
    async fn finish_resize_neither_loads_nor_deletes_a_glance_image_that_is_not_the_moves() {
        let h = Harness::new();
        let (u, m) = arriving(&h);
        // Another tenant's image, and one forged with the move's properties
        // in another project.
        h.glance.add_queued("victim", json!({"owner": "project-2"}));
        h.glance.add_queued("forged", json!({"owner": "project-2", "nova_docker_migration": m, "instance_uuid": u}));
        for id in ["victim", "forged"] {
            let r = h.manager.finish_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), disk_info(id)).await;
            assert!(r.is_err());
            assert!(h.glance.image(id).is_some(), "{id} is not deleted");
            h.request(&u, TaskState::ResizeMigrated);
        }
        assert!(h.driver.container(&u).is_none());
        assert!(faults_of(&h, &u)[0].contains("is not the image of migration"), "{:?}", faults_of(&h, &u));
    }

    #[tokio::test]
    async fn a_migration_of_another_instance_or_host_is_refused_untouched() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        let other = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        let r = h
            .manager
            .prep_resize(&h.ctx, h.rpc_instance(&other), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await;
        assert_eq!(r.unwrap_err().to_remote().class, "ValueError");
        assert!(h.nova.take_casts().is_empty());
        assert_eq!(h.nova.migration(&m).status(), Some("pre-migrating"));
        assert_eq!(h.states(&other), (Some(VmState::Active), Some(TaskState::ResizePrep), Running));
        // A migration of another type (here an evacuation) is not this flow.
        h.nova.set_migration_field(&m, "migration_type", json!("evacuation"));
        let r = h
            .manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await;
        assert_eq!(r.unwrap_err().to_remote().class, "ValueError");
        assert!(h.nova.take_casts().is_empty());
        h.nova.set_migration_field(&m, "migration_type", json!("resize"));
        // finish_resize of a migration whose destination is another host.
        h.nova.set_migration_field(&m, "dest_compute", json!("other"));
        let r = h.manager.finish_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), disk_info("g")).await;
        assert_eq!(r.unwrap_err().to_remote().class, "ValueError");
        // confirm_resize of a migration whose source is another host.
        h.nova.set_migration_field(&m, "source_compute", json!("other"));
        h.nova.set_migration_field(&m, "status", json!("confirming"));
        let r = h.manager.confirm_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await;
        assert_eq!(r.unwrap_err().to_remote().class, "ValueError");
        assert_eq!(h.nova.migration(&m).status(), Some("confirming"));
        assert_eq!(h.states(&u), (Some(VmState::Active), Some(TaskState::ResizePrep), Running));
        assert_eq!(h.driver.container(&u).unwrap().state, Running);
    }

    #[tokio::test]
    async fn a_confirm_arriving_after_a_revert_leaves_the_running_instance_alone() {
        let h = Harness::new();
        // Reverted: back on this host (the source), active and running.
        let u = h.instance(VmState::Active, None, Running);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 9, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "confirming",
            "old_instance_type_id": 1, "new_instance_type_id": 2, "migration_type": "resize"}));
        h.manager.confirm_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await.unwrap();
        assert_eq!(h.driver.container(&u).unwrap().state, Running, "the container the instance runs in stays");
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.nova.migration(&m).status(), Some("confirming"));
    }

    #[tokio::test]
    async fn a_smaller_root_disk_is_refused_before_the_guest_stops_and_the_instance_stays_on_its_flavor() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        let mut old = flavor(1, 64, json!({}));
        old.obj.set("root_gb", 2);
        h.nova.set_field(&u, "flavor", old.obj.to_primitive());
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await
            .unwrap();
        assert_eq!(deliver(&h).await, ["resize_instance"]);
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert!(!h.driver.calls().iter().any(|c| c.starts_with("power_off") || c.starts_with("commit")));
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        let i = h.rpc_instance(&u);
        assert_eq!((i.memory_mb(), i.root_gb(), i.host()), (64, 2, Some(HOST)));
        assert!(faults_of(&h, &u)[0].contains("Unable to resize disk down"), "{:?}", faults_of(&h, &u));
        // The same root disk (or a larger one) is fine.
        let (u, m) = resizing(&h, 2);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.states(&u).0, Some(VmState::Resized));
    }

    #[tokio::test]
    async fn a_move_cannot_carry_more_than_the_new_root_disk_even_across_moves() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        // 600 MiB written on a 1 GiB root disk: moves.
        h.driver.set_written(&u, 600 << 20);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.states(&u).0, Some(VmState::Resized));
        h.nova.set_migration_field(&m, "status", json!("confirming"));
        h.manager.confirm_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await.unwrap();
        // 600 MiB more in the new writable layer: the next move would carry
        // 1200 MiB for a 1 GiB root disk, refused before the guest stops.
        h.driver.set_written(&u, 600 << 20);
        h.request(&u, TaskState::ResizePrep);
        let m2 = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m2, "id": 11, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "status": "pre-migrating", "old_instance_type_id": 2,
            "new_instance_type_id": 1, "migration_type": "resize"}));
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m2), request(flavor(1, 64, json!({}))))
            .await
            .unwrap();
        assert_eq!(deliver(&h).await, ["resize_instance"]);
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.nova.migration(&m2).status(), Some("error"));
        assert_eq!(h.rpc_instance(&u).memory_mb(), 128, "still on its flavor");
        let faults = faults_of(&h, &u);
        assert!(faults.last().unwrap().contains("exceed the new flavor's root disk"), "{faults:?}");
    }

    #[tokio::test]
    async fn a_same_host_finish_that_fails_keeps_a_container_of_the_old_flavor_with_the_files() {
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        h.driver.fail_once("create");
        h.manager
            .prep_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), request(flavor(2, 128, json!({}))))
            .await
            .unwrap();
        assert_eq!(deliver(&h).await, ["resize_instance", "finish_resize"]);
        assert_eq!(h.states(&u).0, Some(VmState::Error));
        let c = h.driver.container(&u).expect("a container again");
        assert_eq!(c.memory_bytes, 64 << 20, "the old flavor's");
        assert_eq!(c.image, format!("sha256:{}", "c".repeat(64)), "from the committed filesystem");
        assert_eq!(c.state, Running);
    }

    #[tokio::test]
    async fn a_same_host_moves_filesystem_stays_out_of_the_glance_image_cache() {
        use crate::virt::Driver;
        let h = Harness::new();
        let (u, m) = resizing(&h, 2);
        resize_to(&h, &u, &m, flavor(2, 128, json!({}))).await;
        assert_eq!(h.states(&u).0, Some(VmState::Resized));
        // A Glance image created with the migration's uuid as its id is not
        // served the instance's filesystem from the cache.
        assert!(h.manager.images.cached(&m).await.unwrap().is_none());
        assert_eq!(h.driver.images_in_repository(&format!("nova-docker-move/{m}")).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_server_deleted_while_its_filesystem_uploads_leaves_no_migration_image() {
        let h = Harness::new();
        let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 12, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "pre-migrating",
            "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
        let gate = h.driver.hold("commit");
        let resize = tokio::spawn({
            let (mgr, ctx, i, m) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u), h.nova.migration(&m));
            async move { mgr.resize_instance(&ctx, i, m, json!({}), Value::Null, true).await }
        });
        gate.entered().await;
        // The API accepts a delete in any task state.
        h.request(&u, TaskState::Deleting);
        gate.release();
        let _ = resize.await.unwrap();
        assert_eq!(h.glance.created().len(), 1, "the filesystem was uploaded");
        assert!(h.glance.images().is_empty(), "and its Glance image deleted: {:?}", h.glance.images());
        assert!(h.nova.take_casts().is_empty());
    }

    #[tokio::test]
    async fn a_finish_resize_cast_that_fails_gives_the_instance_back_to_the_source_running() {
        let h = Harness::new();
        let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 13, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "pre-migrating",
            "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
        h.nova.fail("cast.finish_resize");
        let r =
            h.manager.resize_instance(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), json!({}), Value::Null, true);
        assert!(r.await.is_err());
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.rpc_instance(&u).host(), Some(HOST), "still this host's");
        assert_eq!(h.driver.container(&u).unwrap().state, Running);
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert!(h.glance.images().is_empty(), "the uploaded image is deleted: {:?}", h.glance.images());
    }

    /// Plays a move between hosts on this one manager: as the source (this
    /// host to "other") it runs `resize_instance`, then, with the migration
    /// turned around and the source's stopped container taken away, it is
    /// the destination. Returns the instance, migration, the source's
    /// container and the `finish_resize` cast's disk_info.
    async fn handed_to_here_from_a_source(h: &Harness) -> (String, String, FakeContainer, Option<Value>) {
        let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        h.nova.set_field(&u, "flavor", flavor(1, 64, json!({})).obj.to_primitive());
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 14, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "pre-migrating",
            "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
        // The conductor's claims: the source's on the migration, the
        // destination's on the instance.
        h.placement.allocate(&m, "source-rp", &[("MEMORY_MB", 64)]);
        h.placement.allocate(&u, "dest-rp", &[("MEMORY_MB", 64)]);
        h.manager
            .resize_instance(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), json!({}), Value::Null, true)
            .await
            .unwrap();
        let casts = h.nova.take_casts();
        assert_eq!((casts.len(), casts[0].method.as_str()), (1, "finish_resize"), "{casts:?}");
        let source_container = h.driver.take_container(&u).unwrap();
        assert_eq!(source_container.state, Shutdown);
        swap_ends(h, &m);
        (u, m, source_container, casts[0].args.get("disk_info").cloned())
    }

    fn swap_ends(h: &Harness, m: &str) {
        let mig = h.nova.migration(m);
        let (src, dst) = (mig.source_compute().unwrap().to_string(), mig.dest_compute().unwrap().to_string());
        for (field, value) in
            [("source_compute", &dst), ("source_node", &dst), ("dest_compute", &src), ("dest_node", &src)]
        {
            h.nova.set_migration_field(m, field, json!(value));
        }
    }

    fn move_image(h: &Harness) -> Option<String> {
        h.glance.images().into_iter().find(|id| h.glance.image(id).is_some_and(|(g, _)| g.owner.is_some()))
    }

    #[tokio::test]
    async fn a_failed_finish_between_hosts_hands_the_instance_back_to_the_source_which_starts_it() {
        let h = Harness::new();
        let (u, m, source_container, disk_info) = handed_to_here_from_a_source(&h).await;
        assert!(move_image(&h).is_some());
        h.nova.set_field(&u, "host", json!(HOST));
        h.driver.fail_once("start");
        let r = h.manager.finish_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), disk_info).await;
        assert!(r.is_err());
        // The destination: nothing left, the source told to take it back.
        let casts = h.nova.take_casts();
        assert_eq!(casts.len(), 1, "{casts:?}");
        assert_eq!((casts[0].method.as_str(), casts[0].host.as_str()), ("finish_revert_resize", "other"));
        assert!(h.driver.container(&u).is_none(), "the container made here is removed");
        let (vm, task, _) = h.states(&u);
        assert_ne!(vm, Some(VmState::Error));
        assert_eq!(task, Some(TaskState::ResizeReverting));
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert_eq!(h.placement.allocations(&m).len(), 1, "the source allocation is kept for the source");
        assert_eq!(move_image(&h), None, "the move's image goes: the source has the filesystem");
        assert_eq!(faults_of(&h, &u).len(), 1);

        // The source (this manager again, with its container) finishes.
        swap_ends(&h, &m);
        h.driver.put_container(&u, source_container);
        let i = Instance::from_primitive(&casts[0].args["instance"]).unwrap();
        h.manager.finish_revert_resize(&h.ctx, i, h.nova.migration(&m)).await.unwrap();
        assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
        assert_eq!(h.rpc_instance(&u).host(), Some(HOST));
        assert_eq!(h.driver.container(&u).unwrap().state, Running);
        assert!(h.placement.allocations(&m).is_empty());
        assert_eq!(h.placement.allocations(&u).keys().collect::<Vec<_>>(), ["source-rp"]);
    }

    #[tokio::test]
    async fn a_failed_finish_whose_source_cannot_be_told_ends_in_error_and_keeps_the_move_image() {
        let h = Harness::new();
        let (u, m, _, disk_info) = handed_to_here_from_a_source(&h).await;
        h.nova.set_field(&u, "host", json!(HOST));
        h.driver.fail("start");
        h.nova.fail("cast.finish_revert_resize");
        let r = h.manager.finish_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), disk_info).await;
        assert!(r.is_err());
        assert_eq!(h.states(&u).0, Some(VmState::Error));
        assert_eq!(h.nova.migration(&m).status(), Some("error"));
        assert!(h.placement.allocations(&m).is_empty(), "Nova's path: the source allocation dropped");
        assert!(move_image(&h).is_some(), "the filesystem that did not land stays in Glance");
    }

    #[tokio::test]
    async fn resizes_left_unconfirmed_past_the_window_are_confirmed_on_the_source() {
        let h = Harness::with_options("resize_confirm_window = 3600");
        let window = h.manager.settings.resize_confirm_window.unwrap();
        let now = chrono::Utc::now();
        let landed = |vm: VmState, updated: chrono::DateTime<chrono::Utc>| {
            let (u, m) = arriving(&h);
            h.nova.set_field(&u, "vm_state", json!(vm.as_str()));
            h.nova.set_field(&u, "task_state", Value::Null);
            h.nova.set_migration_field(&m, "status", json!("finished"));
            h.nova.set_migration_field(&m, "updated_at", json!(updated.to_rfc3339()));
            (u, m)
        };
        let (due, due_m) = landed(VmState::Resized, now - chrono::Duration::hours(2));
        let (recent, recent_m) = landed(VmState::Resized, now - chrono::Duration::minutes(5));
        let (broken, broken_m) = landed(VmState::Error, now - chrono::Duration::hours(2));
        // The source is down: nothing is confirmed, nothing changes.
        h.nova.add_service(
            "other",
            json!({"host": "other", "updated_at": (now - chrono::Duration::hours(1)).to_rfc3339()}),
        );
        h.manager.poll_unconfirmed_resizes(&h.ctx, window).await;
        assert!(h.nova.take_casts().is_empty());
        assert_eq!(h.nova.migration(&due_m).status(), Some("finished"));
        assert_eq!(h.nova.migration(&broken_m).status(), Some("error"), "Nova: an instance in ERROR errors it");

        // The source is up: the old one is confirmed there, as nova-api would.
        h.nova.add_service("other", json!({"host": "other", "updated_at": now.to_rfc3339()}));
        h.manager.poll_unconfirmed_resizes(&h.ctx, window).await;
        let casts = h.nova.take_casts();
        assert_eq!(casts.len(), 1, "{casts:?}");
        assert_eq!((casts[0].method.as_str(), casts[0].host.as_str()), ("confirm_resize", "other"));
        assert_eq!(casts[0].args["instance"]["nova_object.data"]["uuid"], json!(due));
        assert_eq!(h.nova.migration(&due_m).status(), Some("confirming"));
        assert_eq!(h.nova.migration(&recent_m).status(), Some("finished"), "inside the window");
        assert_eq!(h.states(&recent).0, Some(VmState::Resized));
        let _ = broken;
    }

    #[tokio::test]
    async fn a_migration_image_belongs_to_the_instances_project_and_is_hidden() {
        let h = Harness::new();
        let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 10, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "pre-migrating",
            "old_instance_type_id": 1, "new_instance_type_id": 1, "migration_type": "migration"}));
        h.manager
            .resize_instance(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), json!({}), Value::Null, true)
            .await
            .unwrap();
        let casts = h.nova.take_casts();
        assert_eq!(casts.len(), 1, "{casts:?}");
        let disk: Value = serde_json::from_str(casts[0].args["disk_info"].as_str().unwrap()).unwrap();
        let (image, _) = h.glance.image(disk["glance_image"].as_str().unwrap()).unwrap();
        assert_eq!(image.owner.as_deref(), Some(PROJECT), "not the requester's (admin) project");
        assert_eq!(h.glance.created()[0]["os_hidden"], json!(true));
    }
}

#[tokio::test]
async fn a_resize_interrupted_on_the_source_is_rolled_back_at_start_up() {
    let h = Harness::new();
    let running = h.instance(VmState::Active, Some(TaskState::ResizeMigrating), Shutdown);
    h.nova.set_field(&running, "system_metadata", json!({"old_vm_state": "active"}));
    let stopped = h.instance(VmState::Stopped, Some(TaskState::ResizeMigrating), Shutdown);
    h.nova.set_field(&stopped, "system_metadata", json!({"old_vm_state": "stopped"}));
    let m = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": m, "instance_uuid": running, "status": "migrating",
        "source_compute": crate::testing::HOST, "dest_compute": "other"}));
    h.glance.add_queued("half-uploaded", json!({"nova_docker_migration": m, "os_hidden": true}));
    h.glance.add_queued("older-unhidden", json!({"nova_docker_migration": m}));
    h.glance.add_queued("unrelated", json!({"nova_docker_migration": "another"}));
    h.manager.init_host(&h.ctx).await.unwrap();
    assert_eq!(h.states(&running), (Some(VmState::Active), None, Running));
    assert_eq!(h.states(&stopped), (Some(VmState::Stopped), None, Shutdown));
    assert_eq!(h.nova.migration(&m).status(), Some("error"));
    assert!(h.glance.image("half-uploaded").is_none(), "the move's Glance image goes");
    assert!(h.glance.image("older-unhidden").is_none());
    assert!(h.glance.image("unrelated").is_some());
}

// ---------------------------------------------------------------------------
// Rebuild
// ---------------------------------------------------------------------------

/// An instance the API is rebuilding with Glance image `img-2` (it already
/// shows the new image; `img-1` was the old one).
fn rebuilding(h: &Harness, vm: VmState, power: PowerState) -> (String, crate::compute::rebuild::RebuildRequest) {
    h.glance.add_active("img-2", "docker", crate::testing::fake_driver::docker_save_archive());
    let u = h.instance(vm, Some(TaskState::Rebuilding), power);
    give_port(h, &u);
    if power == Running {
        h.driver.change_plugged(&u, &["port-1"]);
    }
    h.nova.set_field(&u, "image_ref", json!("img-2"));
    h.nova.set_field(&u, "system_metadata", json!({"image_base_image_ref": "img-2"}));
    let req = crate::compute::rebuild::RebuildRequest {
        image_ref: Some("img-2".into()),
        orig_image_ref: Some("img-1".into()),
        orig_sys_metadata: json!({"image_base_image_ref": "img-1"}).as_object().cloned(),
        ..Default::default()
    };
    (u, req)
}

#[tokio::test]
async fn a_rebuild_replaces_the_container_keeps_its_ports_and_ends_active() {
    let h = Harness::new();
    let (u, req) = rebuilding(&h, VmState::Active, Running);
    h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "{:?}", faults_of(&h, &u));
    let c = h.driver.container(&u).expect("a container");
    assert_eq!(c.plugged, ["port-1"], "the same port, plugged into the new container");
    assert!(h.driver.set_aside_container(&u).is_none(), "the old container is gone");
    let calls = h.driver.calls();
    let pos = |op: &str| calls.iter().position(|c| c.starts_with(op)).unwrap_or_else(|| panic!("{op}: {calls:?}"));
    assert!(pos("set_aside") < pos("create") && pos("start_created") < pos("discard_set_aside"), "{calls:?}");
    assert_eq!(h.nova.field(&u, "image_ref"), Some(json!("img-2")));
    assert_eq!(only_event(&h, &u, "compute_rebuild_instance"), None);
}

#[tokio::test]
async fn a_rebuild_whose_container_cannot_start_puts_the_old_one_back_with_its_image() {
    let h = Harness::new();
    let (u, req) = rebuilding(&h, VmState::Active, Running);
    h.driver.fail("start_created");
    assert!(h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.is_err());
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "usable, as it was");
    let c = h.driver.container(&u).expect("the old container is back");
    assert_eq!((c.state, c.plugged.as_slice()), (Running, ["port-1".to_string()].as_slice()));
    assert_eq!(h.nova.field(&u, "image_ref"), Some(json!("img-1")), "Nova shows the image the container runs");
    assert_eq!(h.nova.field(&u, "system_metadata"), Some(json!({"image_base_image_ref": "img-1"})));
    assert_eq!(faults_of(&h, &u).len(), 1);
    assert!(only_event(&h, &u, "compute_rebuild_instance").is_some());
}

#[tokio::test]
async fn a_rebuild_that_cannot_put_the_old_container_back_ends_in_error() {
    let h = Harness::new();
    let (u, req) = rebuilding(&h, VmState::Active, Running);
    h.driver.fail("start_created");
    h.driver.fail("restore_set_aside");
    assert!(h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.is_err());
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert_eq!(h.states(&u).1, None);
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn a_rebuild_of_a_stopped_instance_leaves_it_stopped_on_the_new_image() {
    let h = Harness::new();
    let (u, req) = rebuilding(&h, VmState::Stopped, Shutdown);
    h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Stopped), None, Shutdown));
    assert!(h.driver.container(&u).is_some_and(|c| c.state == Shutdown));
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("start_created")));
}

#[tokio::test]
async fn a_rebuild_with_injected_files_is_refused_before_anything_changes() {
    let h = Harness::new();
    let (u, mut req) = rebuilding(&h, VmState::Active, Running);
    req.injected_files = vec![json!(["/etc/motd", "aGk="])];
    let err = h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap_err();
    assert!(err.to_string().contains("injected files"), "{err}");
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("set_aside")));
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert_eq!(h.nova.field(&u, "image_ref"), Some(json!("img-1")));
}

#[tokio::test]
async fn a_failed_evacuation_gives_back_this_hosts_share_of_the_allocation() {
    let h = Harness::new();
    let (u, mut req) = rebuilding(&h, VmState::Active, NoState);
    req.evacuate = true;
    req.image_ref = None;
    h.manager.records.set(std::sync::Arc::new(crate::testing::host_records("this-rp"))).ok();
    h.placement.allocate(&u, "dead-host-rp", &[("MEMORY_MB", 64)]);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    h.driver.fail("start_created");
    assert!(h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.is_err());
    let left = h.placement.allocations(&u);
    assert_eq!(left.keys().collect::<Vec<_>>(), ["dead-host-rp"], "{left:?}");
    assert!(h.driver.container(&u).is_none(), "nothing left here");
    assert_eq!(h.states(&u).0, Some(VmState::Error));
}

#[tokio::test]
async fn cache_images_loads_what_the_host_lacks_and_says_what_it_did() {
    let h = Harness::new();
    h.glance.add_active("img-1", "docker", crate::testing::fake_driver::docker_save_archive());
    let ids = ["img-1".to_string(), "missing".to_string()];
    let r = h.manager.cache_images(&h.ctx, &ids).await;
    assert_eq!(Value::Object(r), json!({"img-1": "cached", "missing": "error"}));
    let r = h.manager.cache_images(&h.ctx, &ids[..1]).await;
    assert_eq!(Value::Object(r), json!({"img-1": "existing"}));
    assert_eq!(h.driver.calls().iter().filter(|c| c.starts_with("load_image")).count(), 1);
}

// ---------------------------------------------------------------------------
// Shelve, offload, unshelve
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shelve_snapshots_offloads_and_unshelve_brings_it_back_from_that_image() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Shelving), Running);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    h.glance.add_queued("shelved-1", json!({"image_type": "snapshot", "instance_uuid": u}));
    h.manager.shelve_instance(&h.ctx, h.rpc_instance(&u), "shelved-1", true).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::ShelvedOffloaded), None, Shutdown), "{:?}", faults_of(&h, &u));
    assert!(h.driver.container(&u).is_none(), "offloaded: no container");
    assert!(h.placement.allocations(&u).is_empty(), "offloaded: no allocation");
    assert_eq!(h.nova.field(&u, "host"), Some(Value::Null));
    let sys = h.nova.field(&u, "system_metadata").unwrap();
    assert_eq!(
        (sys["shelved_image_id"].as_str(), sys["shelved_host"].as_str()),
        (Some("shelved-1"), Some(crate::testing::HOST))
    );
    let data = h.glance.image("shelved-1").and_then(|(_, d)| d).expect("the filesystem is in Glance");
    // (Glance hashes what it stored; the fake is told.)
    h.glance.add_active("shelved-1", "docker", data);

    // The scheduler claims this host again, then casts the unshelve.
    h.request(&u, TaskState::Unshelving);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    h.manager.unshelve_instance(&h.ctx, h.rpc_instance(&u), None).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "{:?}", faults_of(&h, &u));
    assert_eq!(h.nova.field(&u, "host"), Some(json!(crate::testing::HOST)));
    assert!(h.glance.image("shelved-1").is_none(), "the shelved image is deleted");
    let sys = h.nova.field(&u, "system_metadata").unwrap();
    assert!(sys.get("shelved_image_id").is_none(), "{sys}");
    assert_eq!(h.placement.allocations(&u).len(), 1, "the claim stays");
}

#[tokio::test]
async fn an_unshelve_that_fails_leaves_nothing_here_and_frees_the_claim() {
    let h = Harness::new();
    let u = h.instance(VmState::ShelvedOffloaded, Some(TaskState::Unshelving), NoState);
    h.glance.add_active("shelved-1", "docker", crate::testing::fake_driver::docker_save_archive());
    h.nova.set_field(&u, "system_metadata", json!({"shelved_image_id": "shelved-1"}));
    h.nova.set_field(&u, "host", Value::Null);
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    h.driver.fail("start_created");
    assert!(h.manager.unshelve_instance(&h.ctx, h.rpc_instance(&u), None).await.is_err());
    assert_eq!(h.states(&u), (Some(VmState::ShelvedOffloaded), None, NoState));
    assert_eq!(h.nova.field(&u, "host"), Some(Value::Null));
    assert!(h.placement.allocations(&u).is_empty());
    assert!(h.driver.container(&u).is_none());
    assert!(h.glance.image("shelved-1").is_some(), "the shelved image stays for another try");
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn a_shelve_whose_upload_fails_starts_the_instance_again() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::Shelving), Running);
    h.glance.add_queued("shelved-1", json!({}));
    h.glance.fail("upload");
    assert!(h.manager.shelve_instance(&h.ctx, h.rpc_instance(&u), "shelved-1", true).await.is_err());
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert!(h.driver.container(&u).is_some_and(|c| c.state == Running));
    assert!(h.glance.image("shelved-1").is_none());
}

// ---------------------------------------------------------------------------
// Evacuation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_evacuation_lands_here_with_its_ports_and_ends_the_migration_done() {
    let h = Harness::new();
    let (u, mut req) = rebuilding(&h, VmState::Active, NoState);
    h.nova.set_field(&u, "host", json!("dead-host"));
    h.nova.set_field(&u, "image_ref", json!("img-2"));
    h.neutron.add_user_port("port-1");
    let mig = uuid::Uuid::new_v4().to_string();
    req.evacuate = true;
    req.image_ref = None;
    let mut evacuation = migration(&mig, &u);
    evacuation["nova_object.data"]["migration_type"] = json!("evacuation");
    req.migration = Some(crate::objects::Migration::from_primitive(&evacuation).unwrap());
    h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap();
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running), "{:?}", faults_of(&h, &u));
    assert_eq!(h.nova.field(&u, "host"), Some(json!(crate::testing::HOST)));
    assert_eq!(h.driver.container(&u).unwrap().plugged, ["port-1"], "its port, plugged here");
    assert_eq!(h.nova.migration_field(&mig, "status"), Some(json!("done")));
}

#[tokio::test]
async fn an_evacuation_to_a_host_that_has_the_instance_is_refused() {
    let h = Harness::new();
    let (u, mut req) = rebuilding(&h, VmState::Active, Running);
    req.evacuate = true;
    let err = h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(h.driver.container(&u).is_some_and(|c| c.state == Running), "the instance here is untouched");
}

#[tokio::test]
async fn a_host_back_from_the_dead_removes_what_was_evacuated_and_never_starts_it() {
    let h = Harness::new();
    h.manager.records.set(std::sync::Arc::new(crate::testing::host_records("this-rp"))).ok();
    // The instance now lives elsewhere; its old container is still here.
    let u = h.instance(VmState::Active, None, Shutdown);
    h.nova.set_field(&u, "host", json!("other-host"));
    h.placement.allocate(&u, "this-rp", &[("MEMORY_MB", 64)]);
    h.placement.allocate(&u, "other-rp", &[("MEMORY_MB", 64)]);
    let mig = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": mig, "instance_uuid": u, "status": "done", "migration_type": "evacuation",
                                "source_compute": crate::testing::HOST, "dest_compute": "other-host"}));
    h.manager.init_host(&h.ctx).await.unwrap();
    assert!(h.driver.container(&u).is_none(), "the evacuated instance's container is gone");
    assert!(!h.driver.calls().iter().any(|c| c.starts_with("power_on")), "{:?}", h.driver.calls());
    assert_eq!(h.placement.allocations(&u).keys().collect::<Vec<_>>(), ["other-rp"]);
    assert_eq!(h.nova.migration_field(&mig, "status"), Some(json!("completed")));
}

#[tokio::test]
async fn a_rebuild_cut_short_by_a_restart_ends_in_error_with_one_container() {
    let h = Harness::new();
    let (u, req) = rebuilding(&h, VmState::Active, Running);
    // The service dies after setting the old container aside, before the new one.
    let gate = h.driver.hold("create");
    let m = h.manager.clone();
    let ctx = h.ctx.clone();
    let i = h.rpc_instance(&u);
    let task = tokio::spawn(async move { m.rebuild_instance(&ctx, i, req).await });
    gate.entered().await;
    task.abort();
    assert!(h.driver.container(&u).is_none() && h.driver.set_aside_container(&u).is_some());
    h.manager.init_host(&h.ctx).await.unwrap();
    assert_eq!(h.states(&u).0, Some(VmState::Error));
    assert_eq!(h.states(&u).1, None);
    assert!(h.driver.container(&u).is_some(), "the old container is back");
    assert!(h.driver.set_aside_container(&u).is_none());
    assert_eq!(faults_of(&h, &u).len(), 1);
}

#[tokio::test]
async fn a_failed_move_of_an_instance_deleted_meanwhile_frees_the_migration_without_recreating_the_instance() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ResizePrep), Running);
    let mig = uuid::Uuid::new_v4().to_string();
    h.placement.allocate(&mig, "source-rp", &[("MEMORY_MB", 64)]);
    let m = crate::objects::Migration::from_primitive(&migration(&mig, &u)).unwrap();
    let mut i = h.rpc_instance(&u);
    h.nova.remove_instance(&u);
    let op = crate::compute::operation::Operation::new("compute_prep_resize")
        .holding(Some(crate::compute::operation::Claim::MovedToMigration(m)));
    let r = h
        .manager
        .run(&h.ctx, &mut i, op, async |i| h.manager.save(&h.ctx, i, crate::conductor::Expected::Any).await)
        .await;
    assert!(r.is_err_and(|e| e.is_superseded()));
    assert!(h.placement.allocations(&mig).is_empty());
    assert!(h.placement.allocations(&u).is_empty(), "no allocation for a deleted instance");
}

// ---------------------------------------------------------------------------
// Serial console tokens end with the console, whatever ends it
// ---------------------------------------------------------------------------

mod console_tokens {
    use super::*;
    use crate::testing::HOST;

    /// Consoles on; the address is never bound by these tests.
    const CONSOLES: &str = "[serial_console]\nenabled = true\nproxyclient_address = 10.0.0.9\n";

    fn cleaned(h: &Harness, u: &str) -> bool {
        h.nova.console_cleanups().iter().any(|c| c == u)
    }

    #[tokio::test]
    async fn confirming_a_resize_away_cleans_the_tokens_issued_on_the_source() {
        let h = Harness::with_options(CONSOLES);
        let u = h.instance(VmState::Resized, None, Running);
        h.nova.set_field(&u, "host", json!("other"));
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 21, "instance_uuid": u, "source_compute": HOST,
            "source_node": HOST, "dest_compute": "other", "dest_node": "other", "status": "confirming",
            "old_instance_type_id": 1, "new_instance_type_id": 2, "migration_type": "resize"}));
        h.manager.confirm_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await.unwrap();
        assert!(h.driver.container(&u).is_none(), "the source's container went");
        assert!(cleaned(&h, &u), "no console was open in this process, the tokens go all the same");
    }

    #[tokio::test]
    async fn reverting_a_resize_cleans_the_tokens_issued_on_the_destination() {
        let h = Harness::with_options(CONSOLES);
        let u = h.instance(VmState::Resized, Some(TaskState::ResizeReverting), Running);
        let m = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": m, "id": 22, "instance_uuid": u, "source_compute": "other",
            "source_node": "other", "dest_compute": HOST, "dest_node": HOST, "status": "reverting",
            "old_instance_type_id": 1, "new_instance_type_id": 2, "migration_type": "resize"}));
        h.manager.revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), Value::Null).await.unwrap();
        assert!(h.driver.container(&u).is_none(), "the destination's container went");
        assert!(cleaned(&h, &u));
    }

    #[tokio::test]
    async fn shelve_offload_cleans_the_tokens_and_consoles_off_clean_nothing() {
        for (options, expected) in [(CONSOLES, true), ("", false)] {
            let h = Harness::with_options(options);
            let u = h.instance(VmState::Active, Some(TaskState::Shelving), Running);
            h.glance.add_queued("shelved-1", json!({"image_type": "snapshot", "instance_uuid": u}));
            h.manager.shelve_instance(&h.ctx, h.rpc_instance(&u), "shelved-1", true).await.unwrap();
            assert_eq!(h.states(&u).0, Some(VmState::ShelvedOffloaded));
            assert_eq!(cleaned(&h, &u), expected, "consoles on: {expected}");
        }
    }

    #[tokio::test]
    async fn removing_what_was_evacuated_cleans_the_tokens_issued_here() {
        let h = Harness::with_options(CONSOLES);
        let u = h.instance(VmState::Active, None, Shutdown);
        h.nova.set_field(&u, "host", json!("other-host"));
        let mig = uuid::Uuid::new_v4().to_string();
        h.nova.add_migration(json!({"uuid": mig, "instance_uuid": u, "status": "done", "migration_type": "evacuation",
                                    "source_compute": HOST, "dest_compute": "other-host"}));
        h.manager.init_host(&h.ctx).await.unwrap();
        assert!(h.driver.container(&u).is_none());
        assert!(cleaned(&h, &u));
    }

    #[tokio::test]
    async fn reaping_a_deleted_instances_container_cleans_its_tokens() {
        let h = Harness::with_options(CONSOLES);
        let orphan = uuid::Uuid::new_v4().to_string();
        h.driver.add_container(&orphan, Running);
        h.manager.sync_all(&h.ctx).await;
        assert!(h.driver.container(&orphan).is_none());
        assert!(cleaned(&h, &orphan));
    }

    #[tokio::test]
    async fn no_console_is_handed_out_while_the_instance_is_busy_or_leaving() {
        let h = Harness::with_options(CONSOLES);
        let class = async |h: &Harness, u: &str| {
            h.manager.get_serial_console(&h.ctx, "serial", &h.rpc_instance(u)).await.unwrap_err().to_remote().class
        };
        for task in [TaskState::Deleting, TaskState::Shelving, TaskState::ShelvingOffloading] {
            let u = h.instance(VmState::Active, Some(task), Running);
            assert_eq!(class(&h, &u).await, "InstanceNotReady", "{task:?}");
        }
        let u = h.instance(VmState::Active, None, Running);
        {
            let _busy = h.manager.mark_busy(&u);
            assert_eq!(class(&h, &u).await, "InstanceNotReady", "busy");
        }
        // Idle, it goes on (the fake's containers have no terminal).
        assert_eq!(class(&h, &u).await, "ConsoleTypeUnavailable");
    }

    #[tokio::test]
    async fn a_console_opened_while_the_container_goes_is_closed_with_it() {
        let options = "[serial_console]\nenabled = true\n[docker]\nserial_console_single_host = true\n";
        for op in ["delete", "shelve"] {
            let h = Harness::with_options(options);
            let task = if op == "delete" { TaskState::Deleting } else { TaskState::Shelving };
            let u = h.instance(VmState::Active, Some(task), Running);
            h.glance.add_queued("shelved-1", json!({"image_type": "snapshot", "instance_uuid": u}));
            let gate = h.driver.hold("destroy");
            let run = tokio::spawn({
                let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
                async move {
                    match op {
                        "delete" => m.terminate_instance(&ctx, i).await,
                        _ => m.shelve_instance(&ctx, i, "shelved-1", true).await,
                    }
                }
            });
            gate.entered().await;
            // A get_serial_console that got past its checks before the close.
            h.manager.consoles.open(&u, h.driver.clone()).unwrap();
            gate.release();
            run.await.unwrap().unwrap();
            assert_eq!(h.manager.consoles.port_of(&u), None, "{op}: the console outlived the container");
        }
    }
}

/// An evacuation's `migration` argument naming another instance's
/// migration is never claimed as this host's (its `dest_compute` rewritten,
/// its status changed), as `prep_resize` and the other move steps never do
/// (`check_migration`).
#[tokio::test]
async fn an_evacuation_never_claims_another_instances_migration() {
    let h = Harness::new();
    let (u, mut req) = rebuilding(&h, VmState::Active, NoState);
    h.nova.set_field(&u, "host", json!("dead-host"));
    h.nova.set_field(&u, "image_ref", json!("img-2"));
    let other = h.instance(VmState::Active, None, Running);
    let mig = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": mig, "instance_uuid": other, "status": "accepted",
        "migration_type": "evacuation", "source_compute": "host-x", "dest_compute": "host-y"}));
    req.evacuate = true;
    req.image_ref = None;
    req.migration = Some(h.nova.migration(&mig));
    let r = h.manager.rebuild_instance(&h.ctx, h.rpc_instance(&u), req).await;
    assert_eq!(
        (h.nova.migration_field(&mig, "dest_compute"), h.nova.migration_field(&mig, "status")),
        (Some(json!("host-y")), Some(json!("accepted"))),
        "another instance's migration was taken over by this evacuation (result {r:?})"
    );
}

/// A backup's rotation never deletes by properties alone. Listed with
/// credentials that see every project (an admin's backup, or `[glance]
/// auth_type` = password / admin_token), an image another project planted
/// with the same properties would take a kept slot, and the instance's own
/// backup that should stay would be deleted.
#[tokio::test]
async fn a_rotation_counts_only_the_instance_projects_backups() {
    let h = Harness::new();
    let u = h.instance(VmState::Active, Some(TaskState::ImageBackup), Running);
    let own = json!({"image_type": "backup", "backup_type": "daily", "instance_uuid": u,
                     "owner": crate::testing::PROJECT});
    let planted = json!({"image_type": "backup", "backup_type": "daily", "instance_uuid": u,
                         "owner": "attacker-project"});
    h.glance.add_queued("b-1", own.clone());
    h.glance.add_queued("b-2", own.clone());
    h.glance.add_queued("b-2x", planted);
    h.glance.add_queued("b-3", own);
    let rotation = crate::compute::snapshot::Rotation { backup_type: "daily".into(), keep: 2 };
    h.manager.snapshot_instance(&h.ctx, h.rpc_instance(&u), "b-3", Some(rotation)).await.unwrap();
    assert!(h.glance.image("b-2").is_some(), "the instance's second newest backup was rotated out by a planted image");
}

/// A revert_resize for a migration that is over (here: reverted long ago)
/// leaves the container the instance runs in now on this host alone, as
/// `confirm_resize`'s guard does for a stale confirm; so does a stale
/// finish_revert_resize on the source.
#[tokio::test]
async fn a_stale_revert_leaves_the_running_instance_alone() {
    let h = Harness::new();
    // Active and running here (moved here by a later, confirmed move).
    let u = h.instance(VmState::Active, None, Running);
    let m = uuid::Uuid::new_v4().to_string();
    h.nova.add_migration(json!({"uuid": m, "id": 9, "instance_uuid": u, "source_compute": "other",
        "source_node": "other", "dest_compute": crate::testing::HOST, "dest_node": crate::testing::HOST,
        "status": "reverted", "old_instance_type_id": 1, "new_instance_type_id": 2, "migration_type": "resize"}));
    let r = h.manager.revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m), Value::Null).await;
    assert!(
        h.driver.container(&u).is_some_and(|c| c.state == Running),
        "the container the instance runs in was removed by a stale revert ({r:?})"
    );
    // The source's step, with this host as the source.
    h.nova.set_migration_field(&m, "source_compute", json!(crate::testing::HOST));
    h.nova.set_migration_field(&m, "dest_compute", json!("other"));
    let before = h.driver.calls().len();
    let r = h.manager.finish_revert_resize(&h.ctx, h.rpc_instance(&u), h.nova.migration(&m)).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(h.driver.calls()[before..], [] as [String; 0], "a stale finish_revert_resize touched the container");
    assert!(h.driver.container(&u).is_some_and(|c| c.state == Running), "a stale finish_revert_resize");
    assert_eq!(h.states(&u), (Some(VmState::Active), None, Running));
    assert!(faults_of(&h, &u).is_empty());
}

/// Rebuild and unshelve load images as builds do, shelve commits and
/// uploads as snapshots do: each waits for a slot of the same limit
/// (`max_concurrent_builds`, `max_concurrent_snapshots`), so choosing
/// another operation gets a tenant no more loads or uploads at once.
#[tokio::test]
async fn moves_wait_for_the_build_and_snapshot_slots() {
    let h = Harness::with_options("max_concurrent_builds = 1\nmax_concurrent_snapshots = 1");
    let (u, req) = rebuilding(&h, VmState::Active, Running);
    let held = h.manager.build_slots.as_ref().expect("a build limit").acquire().await.unwrap();
    let rebuild = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&u));
        async move { m.rebuild_instance(&ctx, i, req).await }
    });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!rebuild.is_finished(), "the rebuild ran beside a build holding the only slot");
    assert_eq!(h.nova.field(&u, "image_ref"), Some(json!("img-2")), "nothing done yet");
    assert!(h.driver.calls().iter().all(|c| !c.contains("set_aside")), "{:?}", h.driver.calls());
    drop(held);
    rebuild.await.unwrap().unwrap();
    assert_eq!(h.states(&u).0, Some(VmState::Active));

    let s = h.instance(VmState::Active, Some(TaskState::Shelving), Running);
    h.glance.add_queued("shelved-1", json!({"image_type": "snapshot", "instance_uuid": s}));
    let held = h.manager.snapshot_slots.as_ref().expect("a snapshot limit").acquire().await.unwrap();
    let shelve = tokio::spawn({
        let (m, ctx, i) = (h.manager.clone(), h.ctx.clone(), h.rpc_instance(&s));
        async move { m.shelve_instance(&ctx, i, "shelved-1", true).await }
    });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!shelve.is_finished(), "the shelve ran beside a snapshot holding the only slot");
    assert_eq!(h.states(&s).1, Some(TaskState::Shelving), "nothing done yet");
    drop(held);
    shelve.await.unwrap().unwrap();
    assert_eq!(h.states(&s).0, Some(VmState::ShelvedOffloaded));
}

/// The count of timed full power-state sync passes in the global registry.
fn power_sync_passes() -> f64 {
    crate::metrics::global()
        .render()
        .lines()
        .find(|l| {
            l.starts_with("nova_docker_operation_duration_seconds_count{")
                && l.contains("operation=\"power_sync\"")
                && l.contains("phase=\"pass\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_full_sync_pass_is_timed_for_the_bench() {
    let h = Harness::new();
    h.instance(VmState::Active, None, Running);
    let before = power_sync_passes();
    h.manager.sync_all(&h.ctx).await;
    // Other tests run passes at the same time: at least this one counted.
    assert!(power_sync_passes() >= before + 1.0, "{before}");
}
