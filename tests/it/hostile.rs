//! Hostile RPC input sent through the real broker to a running compute host
//! that has a real instance: every bad call gets a clear error reply, bad
//! casts are dropped, and the instance and the service carry on.

use std::time::Duration;

use nova_docker::rpc::{CallError, RequestContext, RpcClient, Target};
use serde_json::{Map, Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};

const T: Duration = Duration::from_secs(120);

fn instance(uuid: &str, version: &str) -> Value {
    json!({"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": version,
           "nova_object.data": {"uuid": uuid}})
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test]
async fn hostile_calls_get_errors_and_the_instance_carries_on() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("hostile");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let victim = cloud.create_server("victim", &image, &name, "42").await;
    cloud.wait_status(&victim, "ACTIVE", T).await;

    let transport = common::transport(cloud.var("ND_TRANSPORT_URL"));
    common::connected(&transport).await;
    let client = RpcClient::start(transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let ctx = RequestContext::admin();
    let target = Target::new("compute", "6.0").server(&name);
    let timeout = Some(Duration::from_secs(30));

    // What each call must answer: a RemoteError whose text holds the given
    // words, or (only where Nova answers) the victim's own console.
    enum Want {
        Error(&'static str),
        VictimConsole,
    }
    use Want::*;
    let missing = "6f1b2c1e-0000-4000-8000-000000000001";
    let calls: Vec<(&str, Value, Want)> = vec![
        ("get_console_output", json!({}), Error("missing argument: instance")),
        ("get_console_output", json!({"instance": 42}), Error("argument instance")),
        ("get_console_output", json!({"instance": instance("../../containers/json", "2.8")}), Error("uuid")),
        ("get_console_output", json!({"instance": instance(missing, "2.8")}), Error("InstanceNotFound")),
        ("get_console_output", json!({"instance": instance(&victim, "3.0")}), Error("3.0")),
        // A bad tail length is ignored, as Nova does: the whole console.
        ("get_console_output", json!({"instance": instance(&victim, "2.8"), "tail_length": "ten"}), VictimConsole),
        ("get_console_output", json!({"instance": instance(&victim, "2.8"), "tail_length": u64::MAX}), VictimConsole),
        ("get_console_output", json!({"instance": instance(&victim, "2.8"), "tail_length": -1}), VictimConsole),
        ("get_diagnostics", json!({"instance": {"nova_object.name": "Flavor"}}), Error("argument instance")),
        // Nova's manager: no guest is power state NOSTATE, not running.
        ("get_instance_diagnostics", json!({"instance": instance(missing, "2.8")}), Error("InstanceInvalidState")),
        ("snapshot_instance", json!({"instance": instance(&victim, "2.8"), "image_id": 7}), Error("image_id")),
        ("detach_interface", json!({"instance": instance(&victim, "2.8"), "port_id": ["x"]}), Error("port_id")),
        ("frobnicate_instance", json!({"instance": instance(&victim, "2.8")}), Error("frobnicate_instance")),
    ];
    // The image prints this line at start; the server is named "victim".
    let console = "nova-docker test instance victim up";
    for (method, a, want) in &calls {
        match (client.call(&ctx, &target, method, args(a.clone()), timeout).await, want) {
            (Err(CallError::Remote(e)), Error(expect)) => {
                let text = format!("{}: {}", e.class, e.message);
                assert!(text.contains(expect), "{method} {a}: {text}");
            }
            (Ok(v), VictimConsole) => assert!(v.as_str().is_some_and(|t| t.contains(console)), "{method} {a}: {v}"),
            (other, Error(expect)) => panic!("{method} {a}: expected a remote error with {expect:?}, got {other:?}"),
            (other, VictimConsole) => panic!("{method} {a}: expected the victim's console, got {other:?}"),
        }
    }
    // A call at a major version this host does not serve.
    let future = Target::new("compute", "7.0").server(&name);
    let e = client.call(&ctx, &future, "get_host_uptime", Map::new(), timeout).await.unwrap_err();
    assert_eq!(e.remote().map(|r| r.class.as_str()), Some("UnsupportedVersion"), "{e}");

    // Casts with garbage are dropped; nothing replies, nothing changes.
    for (method, a) in [
        ("build_and_run_instance", json!({"instance": "not an object"})),
        ("terminate_instance", json!({"instance": instance(&victim, "9.9")})),
        ("stop_instance", json!({"instance": instance("'; rm -rf / #", "2.8")})),
        ("reboot_instance", json!({})),
    ] {
        client.cast(&ctx, &target, method, args(a)).await.unwrap();
    }

    // Still serving, and the instance is as it was.
    let uptime = client.call(&ctx, &target, "get_host_uptime", Map::new(), timeout).await.unwrap();
    assert!(uptime.as_str().unwrap_or_default().contains("load average"), "{uptime}");
    let s = cloud.server(&victim).await.unwrap();
    assert_eq!((s["status"].as_str(), s["OS-EXT-STS:power_state"].as_i64()), (Some("ACTIVE"), Some(1)), "{s}");
    let running = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &format!("nova-{victim}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
    // A real operation through Nova still works.
    let (status, v) = cloud.action(&victim, json!({"reboot": {"type": "SOFT"}})).await;
    assert_eq!(status, 202, "{v}");
    cloud.wait_status(&victim, "ACTIVE", T).await;
    cloud.delete_server(&victim, T).await;
    host.stop().await;
    let log = host.log_text();
    assert!(!log.contains("panicked"), "a task panicked");
    // Each dropped cast left a line saying why.
    for why in ["version \"9.9\"", "rm -rf", "build_and_run_instance", "reboot_instance"] {
        assert!(log.lines().any(|l| l.contains(why) && l.contains("WARN")), "no warning about {why}:\n{log}");
    }
}

/// The service's peak resident memory (`VmHWM`), in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Bodies of about 1 MiB for `compute.<host>`: garbage, a cast of a method
/// nobody serves, a call whose reply queue does not exist, and a cast whose
/// argument parses into many small strings. Ids are 32 `0`s, to be made
/// unique in place with [`stamp`].
fn flood_bodies() -> Vec<Vec<u8>> {
    use nova_docker::rpc::envelope;
    let pad = "x".repeat(1 << 20);
    let id = "0".repeat(32);
    let msg = |v: Value| envelope::seal(v.as_object().unwrap());
    let strings: Vec<String> = (0..(1 << 20) / 64).map(|_| "y".repeat(60)).collect();
    vec![
        pad.as_bytes().to_vec(),
        msg(json!({"method": "frobnicate_instance", "version": "6.0", "args": {"pad": pad}, "_unique_id": id})),
        msg(json!({"method": "get_host_uptime", "version": "6.0", "args": {"pad": pad}, "_msg_id": id,
                   "_reply_q": format!("reply_{id}"), "_timeout": 60, "_unique_id": id})),
        msg(json!({"method": "get_host_uptime", "version": "6.0", "args": {"pad": strings}, "_unique_id": id})),
    ]
}

/// Where `body` holds its 32-`0` ids.
fn id_offsets(body: &[u8]) -> Vec<usize> {
    let text = String::from_utf8_lossy(body);
    let zeros = "0".repeat(32);
    text.match_indices(&zeros).map(|(at, _)| at).collect()
}

/// `body` with the ids at `offsets` made the hex of `n`.
fn stamp(body: &[u8], offsets: &[usize], n: usize) -> Vec<u8> {
    let id = format!("{n:032x}");
    let mut out = body.to_vec();
    for &at in offsets {
        out[at..at + 32].copy_from_slice(id.as_bytes());
    }
    out
}

/// A peer floods `compute.<host>` with thousands of ~1 MiB messages (garbage,
/// casts, calls to missing reply queues, arrays that parse into many small
/// strings): the service keeps consuming at its own pace, its peak memory
/// stays bounded, and it answers a real call afterwards.
#[tokio::test]
async fn flood_of_large_messages_cannot_grow_memory_without_bound() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("flood");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let pid = host.pid().unwrap();
    let transport = common::transport(cloud.var("ND_TRANSPORT_URL"));
    common::connected(&transport).await;
    let before = vm_hwm(pid);
    let bodies: Vec<(Vec<u8>, Vec<usize>)> = flood_bodies()
        .into_iter()
        .map(|b| {
            let offsets = id_offsets(&b);
            (b, offsets)
        })
        .collect();
    let props = nova_docker::rpc::PublishProps { expiration_ms: None, mandatory: true };
    let count = 2000;
    for n in 0..count {
        let (body, offsets) = &bodies[n % bodies.len()];
        let body = stamp(body, offsets, n + 1);
        let outcome = transport
            .publish("nova", &format!("compute.{name}"), &body, props.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(outcome, nova_docker::rpc::PublishOutcome::Confirmed, "message {n}");
    }
    // Queued behind the flood: answered once the flood was consumed.
    let client = RpcClient::start(transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let target = Target::new("compute", "6.0").server(&name);
    let uptime = client
        .call(&RequestContext::admin(), &target, "get_host_uptime", Map::new(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert!(uptime.as_str().unwrap_or_default().contains("load average"), "{uptime}");
    let peak = vm_hwm(pid);
    common::figure(format!(
        "VmHWM before the flood {} MiB, after {} MiB ({count} messages of 1 MiB)",
        before >> 20,
        peak >> 20
    ));
    assert!(peak < 384 << 20, "peak RSS {} MiB after {count} messages of 1 MiB", peak >> 20);
    host.stop().await;
    assert!(!host.log_text().contains("panicked"), "a task panicked");
}

/// A peer sends calls whose reply queue does not exist, to a host with one
/// RPC worker that would wait ten minutes for each reply queue to appear
/// (`kombu_missing_consumer_retry_timeout`): the worker is free again as soon
/// as each call is handled, and a real call behind them is answered.
#[tokio::test]
async fn calls_with_missing_reply_queues_do_not_hold_the_workers() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("noreply");
    let extra = "[DEFAULT]\nexecutor_thread_pool_size = 1\n\
                 [oslo_messaging_rabbit]\nkombu_missing_consumer_retry_timeout = 600\n";
    let mut host = ComputeHost::start(&cloud, &name, extra).await;
    let transport = common::transport(cloud.var("ND_TRANSPORT_URL"));
    common::connected(&transport).await;
    let props = nova_docker::rpc::PublishProps { expiration_ms: None, mandatory: true };
    for n in 0..4 {
        let body = nova_docker::rpc::envelope::seal(
            json!({"method": "get_host_uptime", "version": "6.0", "args": {}, "_msg_id": format!("{n:032x}"),
                   "_reply_q": format!("reply_nobody_listens_{n}"), "_unique_id": nova_docker::rpc::envelope::new_id()})
            .as_object()
            .unwrap(),
        );
        let outcome = transport.publish("nova", &format!("compute.{name}"), &body, props.clone(), T).await.unwrap();
        assert_eq!(outcome, nova_docker::rpc::PublishOutcome::Confirmed);
    }
    let client = RpcClient::start(transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let target = Target::new("compute", "6.0").server(&name);
    // Far below the ten minutes one orphaned call would hold the worker.
    let uptime = client
        .call(&RequestContext::admin(), &target, "get_host_uptime", Map::new(), Some(Duration::from_secs(120)))
        .await
        .unwrap_or_else(|e| panic!("the real call was not answered: {e}"));
    assert!(uptime.as_str().unwrap_or_default().contains("load average"), "{uptime}");
    host.stop().await;
    let log = host.log_text();
    assert!(!log.contains("panicked"), "a task panicked");
    assert!(log.contains("reply_nobody_listens_"), "no word of the missing reply queues:\n{log}");
}

/// Envelope fields a peer sets, sent raw to a running host: a call-monitor
/// `_timeout` no `Duration` can hold, a negative one, ids and a method name
/// longer than any AMQP name. Each call gets its answer or a failure naming
/// the field, and nothing panics.
#[tokio::test]
async fn envelope_numbers_and_names_from_a_peer_are_clamped_or_refused() {
    use nova_docker::rpc::envelope;
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("envelope");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let transport = common::transport(cloud.var("ND_TRANSPORT_URL"));
    common::connected(&transport).await;
    let reply_q = common::unique("reply_nd_envelope");
    transport.declare(vec![common::topology().reply_queue(&reply_q)]).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    transport.consume(&reply_q, tx, usize::MAX).await;
    let long = "m".repeat(300);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"method": "get_host_uptime", "_timeout": 1e300}), "load average"),
        (json!({"method": "get_host_uptime", "_timeout": u64::MAX}), "load average"),
        (json!({"method": "get_host_uptime", "_timeout": -5}), "_timeout"),
        (json!({"method": "get_host_uptime", "_unique_id": long}), "\"_unique_id\" is longer than 255"),
        (json!({"method": long}), "\"method\" is longer than 255"),
    ];
    let props = nova_docker::rpc::PublishProps { expiration_ms: None, mandatory: true };
    for (n, (fields, _)) in cases.iter().enumerate() {
        let mut m = args(json!({"version": "6.0", "args": {}, "_msg_id": format!("{n:032x}"), "_reply_q": reply_q}));
        m.extend(args(fields.clone()));
        let outcome =
            transport.publish("nova", &format!("compute.{name}"), &envelope::seal(&m), props.clone(), T).await;
        assert_eq!(outcome.unwrap(), nova_docker::rpc::PublishOutcome::Confirmed);
    }
    let mut answers = std::collections::HashMap::new();
    while answers.len() < cases.len() {
        let incoming = tokio::time::timeout(T, rx.recv()).await.expect("a reply to every call").unwrap();
        let reply = envelope::parse_reply(envelope::open(&incoming.body, usize::MAX).unwrap()).unwrap();
        if reply.ending {
            answers.insert(reply.msg_id.clone(), reply);
        }
    }
    for (n, (fields, expect)) in cases.iter().enumerate() {
        let reply = &answers[&format!("{n:032x}")];
        let text = match &reply.failure {
            Some(f) => format!("{}: {}", f.class, f.message),
            None => reply.result.to_string(),
        };
        assert!(text.contains(expect), "{fields}: {text}");
    }
    transport.delete_queue(&reply_q).await;
    host.stop().await;
    assert!(!host.log_text().contains("panicked"), "a task panicked");
}

/// A tenant's image asks for a shutdown grace period (`os_shutdown_timeout`,
/// copied by Nova into the instance's system metadata) larger than any clock
/// holds: the stop is bounded by the host's cap instead of panicking, and the
/// server stops.
#[tokio::test]
async fn an_image_shutdown_timeout_past_any_clock_does_not_break_stop() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("graceful");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud
        .docker_image_in_glance(
            &host.conf,
            "nd-busybox:latest",
            "nd-busybox-endless-shutdown",
            &["os_shutdown_timeout=18446744073709551615"],
        )
        .await;
    let server = cloud.create_server("graceful", &image, &name, "42").await;
    cloud.wait_status(&server, "ACTIVE", T).await;
    let (status, v) = cloud.action(&server, json!({"os-stop": null})).await;
    assert_eq!(status, 202, "{v}");
    cloud.wait_status(&server, "SHUTOFF", T).await;
    cloud.delete_server(&server, T).await;
    host.stop().await;
    assert!(!host.log_text().contains("panicked"), "a task panicked");
}
