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

    let calls: Vec<(&str, Value, &str)> = vec![
        ("get_console_output", json!({}), "missing argument: instance"),
        ("get_console_output", json!({"instance": 42}), "argument instance"),
        ("get_console_output", json!({"instance": instance("../../containers/json", "2.8")}), "uuid"),
        ("get_console_output", json!({"instance": instance(&victim, "3.0")}), "3.0"),
        ("get_console_output", json!({"instance": instance(&victim, "2.8"), "tail_length": "ten"}), ""),
        ("get_diagnostics", json!({"instance": {"nova_object.name": "Flavor"}}), "argument instance"),
        ("get_instance_diagnostics", json!({"instance": instance("6f1b2c1e-0000-4000-8000-000000000001", "2.8")}), ""),
        ("snapshot_instance", json!({"instance": instance(&victim, "2.8"), "image_id": 7}), "image_id"),
        ("detach_interface", json!({"instance": instance(&victim, "2.8"), "port_id": ["x"]}), "port_id"),
        ("frobnicate_instance", json!({"instance": instance(&victim, "2.8")}), ""),
    ];
    for (method, a, expect) in &calls {
        match client.call(&ctx, &target, method, args(a.clone()), timeout).await {
            Err(CallError::Remote(e)) => {
                let text = format!("{}: {}", e.class, e.message);
                assert!(text.contains(expect), "{method} {a}: {text}");
            }
            // A console with a bad tail length still answers (Nova ignores it).
            Ok(v) if *method == "get_console_output" => assert!(v.is_string(), "{v}"),
            other => panic!("{method} {a}: expected a remote error, got {other:?}"),
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
