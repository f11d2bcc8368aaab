//! Hostile input against the parsers that see bytes from outside the
//! process: the oslo.messaging envelope, the request and its context, Nova
//! object primitives, network_info, requested networks, Glance image
//! documents, remote-error strings and the container spec built from tenant
//! metadata and image properties. Property tests: whatever comes in, the
//! parsers return a value or an error and never panic, and what they accept
//! keeps their invariants.

use std::path::PathBuf;
use std::time::Duration;

use nova_docker::config::{CpuLimit, DockerSettings};
use nova_docker::image::GlanceImage;
use nova_docker::net::parse_network_info;
use nova_docker::network::requested_networks;
use nova_docker::objects::{Instance, NovaObject};
use nova_docker::rpc::RemoteError;
use nova_docker::rpc::envelope::{self, Request};
use nova_docker::virt::{capabilities, spec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const LIMIT: usize = 4 * 1024 * 1024;

fn key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("method".to_string()),
        Just("args".to_string()),
        Just("version".to_string()),
        Just("namespace".to_string()),
        Just("_msg_id".to_string()),
        Just("_reply_q".to_string()),
        Just("_unique_id".to_string()),
        Just("_timeout".to_string()),
        Just("_context_roles".to_string()),
        Just("_context_is_admin".to_string()),
        Just("_context_timestamp".to_string()),
        Just("_context_service_catalog".to_string()),
        Just("instance".to_string()),
        Just("nova_object.name".to_string()),
        Just("nova_object.namespace".to_string()),
        Just("nova_object.version".to_string()),
        Just("nova_object.data".to_string()),
        Just("nova_object.changes".to_string()),
        Just("uuid".to_string()),
        Just("flavor".to_string()),
        Just("extra_specs".to_string()),
        Just("metadata".to_string()),
        Just("docker:capabilities".to_string()),
        Just("docker:pids_limit".to_string()),
        Just("os_command_line".to_string()),
        Just("os_pids_limit".to_string()),
        Just("objects".to_string()),
        Just("network".to_string()),
        Just("subnets".to_string()),
        Just("ips".to_string()),
        Just("address".to_string()),
        "\\PC{0,12}",
    ]
}

/// Arbitrary JSON, biased towards the keys and shapes the parsers look for,
/// so that generated messages get past the first checks.
fn json_value() -> impl Strategy<Value = Value> {
    let key = key();
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        prop_oneof![
            Just("Instance".to_string()),
            Just("nova".to_string()),
            Just("2.8".to_string()),
            Just("6.0".to_string()),
            Just("6f1b2c1e-0000-4000-8000-000000000001".to_string()),
            Just("2026-11-25T12:00:00.000000".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("CAP_SYS_ADMIN".to_string()),
            Just("NET_RAW, cap_all".to_string()),
            "\\PC{0,40}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object_of(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => Map::from_iter([("args".to_string(), other)]),
    }
}

fn docker_settings() -> DockerSettings {
    DockerSettings {
        socket_path: PathBuf::from("/var/run/docker.sock"),
        api_timeout: Duration::from_secs(120),
        pids_limit: 4096,
        cpu_limit: CpuLimit::Shares,
        cpuset_cpus: None,
        capabilities: vec!["CHOWN".into(), "KILL".into()],
        seccomp_profile: None,
        userns_mode: None,
        read_only_rootfs: false,
        inject_key: false,
        metadata_route: nova_docker::net::MetadataRoute::Router,
        snapshot_pause: true,
        keep_snapshot_images: false,
        max_image_manifest_bytes: 1 << 20,
        max_image_unpacked_bytes: 1 << 30,
        instances_path: std::path::PathBuf::from("/tmp/nd-instances"),
        root_disk_limit: nova_docker::config::RootDiskLimit::Auto,
        root_disk_measure_interval: Duration::from_secs(60),
        root_disk_over_limit_action: nova_docker::config::OverLimitAction::Stop,
        zero_disk_flavor_root_gb: 0,
        console_log_max_bytes: 2 << 20,
        interactive_console: false,
    }
}

/// Everything a compute host derives from one request's arguments.
fn digest_arguments(args: &Map<String, Value>) {
    if let Some(i) = args.get("instance") {
        if let Ok(instance) = Instance::from_primitive(i) {
            assert!(nova_docker::objects::instance::is_canonical_uuid(instance.uuid()));
            let _ = (instance.flavor(), instance.metadata(), instance.system_metadata(), instance.memory_mb());
            // The host's usage sums what the conductor says of its instances.
            let u = nova_docker::compute::host::Usage::of(&[instance.clone(), instance.clone()]);
            assert!(u.vcpus >= 0 && u.memory_mb >= 0 && u.disk_gb >= 0);
            let props = args.get("image").and_then(Value::as_object).cloned().unwrap_or_default();
            if let Ok(s) = spec::build(&instance, "h", "sha256:x", &props, &docker_settings(), None) {
                // Whatever the flavor, metadata and image say: only the
                // host's own set and the tenant-safe list.
                let configured = docker_settings().capabilities;
                assert!(
                    s.cap_add.iter().all(|c| configured.contains(c) || capabilities::TENANT_SAFE.contains(&c.as_str())),
                    "{:?}",
                    s.cap_add
                );
                assert!(s.security_opt.iter().any(|o| o == "no-new-privileges:true"));
                assert!(s.memory_bytes > 0 && s.cpu_shares > 0 && s.cpu_shares <= spec::MAX_CPU_SHARES);
                assert!(s.nano_cpus.is_none_or(|n| n > 0));
            }
        }
        let _ = NovaObject::from_primitive(i).map(|o| o.to_primitive());
    }
    let _ = requested_networks(args.get("requested_networks"));
    // What a build puts in the guest: parsed or refused, never a panic, and
    // only plain relative paths within the bounds come out.
    let _ = nova_docker::compute::guest_data::check_block_devices(args.get("block_device_mapping"));
    if let Ok(files) = nova_docker::compute::guest_data::injected_files(args.get("injected_files")) {
        assert!(files.len() <= nova_docker::compute::guest_data::MAX_INJECTED_FILES);
        let total: usize = files.iter().map(|f| f.contents.as_ref().map_or(0, Vec::len)).sum();
        assert!(total <= nova_docker::compute::guest_data::MAX_INJECTED_BYTES);
        for f in &files {
            assert!(!f.path.starts_with('/') && !f.path.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
        }
    }
    if let Some(image) = args.get("image") {
        let _ = GlanceImage::from_json(image);
    }
    if let Some(Value::String(ni)) = args.get("network_info") {
        digest_network_info(ni);
    }
}

fn digest_network_info(text: &str) {
    if let Ok(vifs) = parse_network_info(text) {
        for vif in vifs.iter() {
            let _ = (vif.fixed_ips(), vif.mac(), vif.devname_or_default(), vif.is_hybrid_plug(), vif.ovs_iface_id());
            // What the binding check lets through names only what Nova
            // derives from the port: the tap device, br-int or brq<net>.
            if nova_docker::net::binding::check(vif, &nova_docker::net::PlugOptions::default()).is_ok() {
                assert!(vif.devname_or_default().chars().count() <= 14);
                assert!(nova_docker::objects::instance::is_canonical_uuid(&vif.id), "{}", vif.id);
                assert_eq!(vif.devname_or_default(), nova_docker::net::model::prefixed_name("tap", &vif.id));
                match vif.vif_type.as_deref() {
                    Some("ovs") => assert!(vif.bridge_name().is_none_or(|b| b == "br-int")),
                    Some("bridge") => assert!(vif.bridge_name().is_some_and(|b| b.starts_with("brq"))),
                    _ => {}
                }
            }
        }
    }
}

/// One body through the whole intake path.
fn intake(body: &[u8]) {
    let Ok(message) = envelope::open(body, LIMIT) else { return };
    let _ = Request::reply_to_of(&message);
    if let Ok(request) = Request::from_message(message) {
        assert!(!request.method.is_empty());
        // What the server keeps or computes from the envelope is bounded.
        assert!(request.method.len() <= envelope::MAX_NAME_BYTES);
        assert!(request.unique_id.as_ref().is_none_or(|u| u.len() <= envelope::MAX_NAME_BYTES));
        if let Some(r) = &request.reply_to {
            assert!(r.msg_id.len() <= envelope::MAX_NAME_BYTES && r.reply_q.len() <= envelope::MAX_NAME_BYTES);
        }
        if let Some(t) = request.call_monitor_timeout {
            assert!(Duration::try_from_secs_f64(t / 2.0).is_ok(), "_timeout {t}");
        }
        digest_arguments(&request.args);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        intake(&body);
    }

    #[test]
    fn arbitrary_json_bodies(v in json_value()) {
        intake(v.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_messages_in_a_valid_envelope(v in json_value(), method in "\\PC{0,20}") {
        let mut m = object_of(v);
        m.entry("method").or_insert(Value::from(method));
        intake(&envelope::seal(&m));
    }

    #[test]
    fn arbitrary_arguments_to_every_parser(args in json_value(), ni in json_value()) {
        let mut args = object_of(args);
        args.insert("network_info".into(), Value::from(ni.to_string()));
        digest_arguments(&args);
    }

    #[test]
    fn mangled_real_instances(path in prop::collection::vec(key(), 1..5), replacement in json_value()) {
        // A real instance from a captured build, with one field replaced.
        let mut instance = real_build_args()["instance"].clone();
        let mut at = &mut instance["nova_object.data"];
        for p in &path[..path.len() - 1] {
            if !at.is_object() { break; }
            at = &mut at[p.as_str()];
        }
        if at.is_object() {
            at[path[path.len() - 1].as_str()] = replacement;
        }
        let mut args = real_build_args().as_object().cloned().unwrap();
        args.insert("instance".into(), instance);
        digest_arguments(&args);
    }

    #[test]
    fn flavor_and_image_never_grant_what_is_forbidden_nor_overflow_sizes(
        caps in prop::collection::vec(
            prop_oneof![
                Just("SYS_ADMIN"), Just("cap_sys_admin"), Just(" All "), Just("NET_RAW"), Just("sys_module"),
                Just("CAP_NET_ADMIN"), Just("SYS_ADMIN\u{0}"), Just("NET_RAW;SYS_ADMIN"), Just("")
            ],
            0..4,
        ),
        separator in prop_oneof![Just(","), Just(", "), Just(" "), Just(",,")],
        pids in prop_oneof![Just("-1"), Just("0"), Just("99999999999999999999"), Just("12"), Just("x")],
        props in json_value(),
        memory_mb in prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0), Just(-1), Just(64), any::<i64>()],
        vcpus in prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0), Just(1), Just(1 << 40), any::<i64>()],
        cpu_limit in prop_oneof![Just("quota"), Just("shares")],
    ) {
        let mut instance = real_build_args()["instance"].clone();
        let flavor = &mut instance["nova_object.data"]["flavor"]["nova_object.data"];
        flavor["extra_specs"] = json!({"docker:capabilities": caps.join(separator), "docker:pids_limit": pids,
                                       "docker:cpu_limit": cpu_limit});
        flavor["memory_mb"] = json!(memory_mb);
        flavor["vcpus"] = json!(vcpus);
        let mut args = Map::new();
        args.insert("instance".into(), instance);
        args.insert("image".into(), props);
        digest_arguments(&args);
    }

    #[test]
    fn envelope_numbers_and_ids_never_panic_the_server(
        timeout in prop_oneof![any::<f64>(), Just(f64::MAX), Just(1e300), Just(-0.0), Just(2.0)],
        big_int in any::<u64>(),
        id_len in prop_oneof![Just(0usize), Just(32), Just(255), Just(256), Just(70_000)],
        field in prop_oneof![Just("_unique_id"), Just("_msg_id"), Just("_reply_q"), Just("method")],
    ) {
        let mut m = Map::new();
        m.insert("method".into(), json!("get_host_uptime"));
        m.insert("_msg_id".into(), json!("0123"));
        m.insert("_reply_q".into(), json!("reply_x"));
        if let Some(n) = serde_json::Number::from_f64(timeout) {
            m.insert("_timeout".into(), Value::Number(n));
        }
        m.insert(field.into(), json!("i".repeat(id_len.max(1))));
        intake(&envelope::seal(&m));
        m.insert("_timeout".into(), json!(big_int));
        intake(&envelope::seal(&m));
    }

    #[test]
    fn cached_vifs_with_arbitrary_names_never_pass_the_binding_check_unless_nova_derived_them(
        id in prop_oneof![Just("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".to_string()), "\\PC{0,40}"],
        devname in prop_oneof![Just(None), Just(Some("tap0f1e2d3c-4b".to_string())), "\\PC{0,16}".prop_map(Some)],
        vif_type in prop_oneof![Just("ovs"), Just("bridge"), Just("tap"), Just("vhostuser")],
        bridge in prop_oneof![Just(None), Just(Some("br-int".to_string())), Just(Some("brq5a4b3c2d-1e".to_string())),
                              Just(Some("docker0".to_string())), "\\PC{0,16}".prop_map(Some)],
        network in prop_oneof![Just("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d".to_string()), "\\PC{0,40}"],
        iface in prop_oneof![Just(None), Just(Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".to_string())), "\\PC{0,40}".prop_map(Some)],
    ) {
        let vif = json!([{"id": id, "address": "fa:16:3e:01:02:03", "type": vif_type, "devname": devname,
                          "ovs_interfaceid": iface, "network": {"id": network, "bridge": bridge}}]);
        digest_network_info(&vif.to_string());
    }

    #[test]
    fn arbitrary_failure_strings(s in "\\PC{0,200}", v in json_value()) {
        let _ = RemoteError::from_failure_string(&s);
        let _ = RemoteError::from_failure_string(&v.to_string());
    }

    #[test]
    fn arbitrary_replies(v in json_value()) {
        let _ = envelope::parse_reply(object_of(v));
    }

    #[test]
    fn arbitrary_command_lines(s in "\\PC{0,80}") {
        if let Ok(argv) = spec::split_command_line(&s) {
            assert!(argv.iter().all(|a| !a.contains('\0')));
        }
    }
}

fn real_build_args() -> Value {
    let outer: Value =
        serde_json::from_str(include_str!("fixtures/build_and_run_instance.newest.cast.body.json")).unwrap();
    let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
    inner["args"].clone()
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    for depth in [200, 10_000, 1_000_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        for nested in [&arrays, &objects] {
            let body = format!("{{\"method\": \"x\", \"args\": {{\"instance\": {nested}}}}}");
            assert!(envelope::open(body.as_bytes(), usize::MAX).is_err(), "depth {depth} accepted");
            // The same nesting hidden inside the envelope's inner string.
            let sealed = json!({"oslo.version": "2.0", "oslo.message": body}).to_string();
            assert!(envelope::open(sealed.as_bytes(), usize::MAX).is_err(), "inner depth {depth} accepted");
            assert!(parse_network_info(nested).is_err());
        }
    }
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let big = format!("{{\"method\": \"x\", \"args\": {{\"pad\": \"{}\"}}}}", "x".repeat(LIMIT));
    assert!(matches!(envelope::open(big.as_bytes(), LIMIT), Err(envelope::EnvelopeError::TooLarge(..))));
}

#[test]
fn invalid_utf8_is_an_error_not_a_replacement() {
    let mut body = br#"{"method": "stop_instance", "args": {"x": "#.to_vec();
    body.extend_from_slice(&[b'"', 0xff, 0xfe, b'"', b'}', b'}']);
    assert!(matches!(envelope::open(&body, LIMIT), Err(envelope::EnvelopeError::NotJson(_))));
    // A lone surrogate escaped in the inner string is not valid either.
    let sealed = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"\\ud800\"}"}"#;
    assert!(envelope::open(sealed, LIMIT).is_err());
}

#[test]
fn unknown_object_versions_are_refused_clearly() {
    let mut args = real_build_args();
    args["instance"]["nova_object.version"] = json!("3.0");
    let err = Instance::from_primitive(&args["instance"]).unwrap_err().to_string();
    assert!(err.contains("3.0") && err.contains("2.x"), "{err}");
    args["instance"]["nova_object.version"] = json!("2.42");
    assert!(Instance::from_primitive(&args["instance"]).is_ok(), "newer minor versions are read");
}
