//! What an operator sees: `nova-docker check` naming what is wrong, the
//! health and metrics endpoint of a running host, and its logs carrying the
//! request id and the instance uuid.

use std::time::Duration;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::common::{check, line};

const T: Duration = Duration::from_secs(120);

/// A TCP port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn check_says_what_is_wrong() {
    let cloud = Cloud::get(Release::Newest);
    let good = ComputeHost::configure(&cloud, &host_name("check"), "");
    let (ok, report) = check(&good.conf).await;
    assert!(ok, "a working configuration passes:\n{report}");
    assert!(line(&report, "nova-conductor").contains("release 2026.2"), "{report}");

    // The broker is not running where the configuration says; Glance's URL is
    // wrong; instances_path is under a file.
    let (broker_port, glance_port) = (dead_port(), dead_port());
    assert!(line(&report, "instances_path").starts_with("[ OK ]"), "{report}");
    let text = std::fs::read_to_string(&good.conf).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("transport_url") {
                format!("transport_url = rabbit://guest:guest@127.0.0.1:{broker_port}/")
            } else if l.starts_with("instances_path") {
                format!("instances_path = {}/instances", good.conf.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bad = good.state.join("bad.conf");
    std::fs::write(&bad, format!("{text}\n[glance]\nendpoint_override = http://127.0.0.1:{glance_port}\n")).unwrap();
    let (ok, report) = check(&bad).await;
    assert!(!ok, "a broken configuration fails:\n{report}");
    let rabbit = line(&report, "rabbitmq");
    assert!(rabbit.starts_with("[FAIL]") && rabbit.contains("Connection refused"), "{rabbit}");
    assert!(rabbit.contains("Is RabbitMQ running there"), "{rabbit}");
    assert!(!rabbit.contains("guest:guest"), "the password is masked: {rabbit}");
    let glance = line(&report, "glance");
    assert!(glance.starts_with("[FAIL]") && glance.contains(&format!("127.0.0.1:{glance_port}")), "{glance}");
    assert!(glance.contains("Connection refused") && glance.contains("[glance] endpoint_override"), "{glance}");
    let instances = line(&report, "instances_path");
    assert!(instances.starts_with("[FAIL]") && instances.contains("is not writable"), "{instances}");
    assert!(line(&report, "placement").starts_with("[ OK ]"), "the rest is still checked:\n{report}");
    assert!(report.trim_end().ends_with("4 check(s) failed"), "{report}");
}

/// With Nova's usual `[glance]` (the user's token, no endpoint_override),
/// each boot finds Glance in the request's catalog: `check` says so rather
/// than failing for want of an endpoint.
#[tokio::test]
async fn check_explains_glance_from_the_catalog() {
    let cloud = Cloud::get(Release::Newest);
    let host = ComputeHost::configure(&cloud, &host_name("checkcat"), "");
    let text = std::fs::read_to_string(&host.conf).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with('[') {
            section = l.to_string();
        }
        if !(section == "[glance]" && l.starts_with("endpoint_override")) {
            out.push(l);
        }
    }
    let conf = host.state.join("catalog.conf");
    std::fs::write(&conf, format!("{}\n[glance]\nregion_name = RegionOne\n", out.join("\n"))).unwrap();
    let (ok, report) = check(&conf).await;
    let glance = line(&report, "glance");
    assert!(ok, "{report}");
    assert!(glance.starts_with("[ OK ]") && glance.contains("service catalog"), "{glance}");
    assert!(glance.contains("region RegionOne") && glance.contains("user's token"), "{glance}");
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(10)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of one Prometheus sample (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn health_metrics_and_logs_of_a_running_host() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("metrics");
    let port = dead_port();
    let extra = format!("[docker]\nmetrics_listen = 127.0.0.1:{port}\n");
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    // Ready once registered: the service record is up before the compute
    // node and its provider are written.
    crate::common::wait_for("/readyz to answer 200", Duration::from_secs(60), async || {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;

    let build = r#"nova_docker_rpc_requests_total{method="build_and_run_instance",outcome="ok"}"#;
    let active = r#"nova_docker_instances{vm_state="active"}"#;
    let (_, before) = get(&format!("{base}/metrics")).await;
    assert!(before.contains(&format!("nova_docker_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    assert_eq!(sample(&before, "nova_docker_broker_connected"), 1.0, "{before}");
    assert_eq!(sample(&before, "nova_docker_docker_connected"), 1.0, "{before}");
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0, "{before}");
    let head = reqwest::Client::new().head(format!("{base}/metrics")).timeout(Duration::from_secs(10)).send().await;
    assert_eq!(head.unwrap().status().as_u16(), 200);
    // An image no host has seen (a Glance id of its own), so the build
    // downloads it: every byte of it is counted, once.
    let archive = common::docker_save("nd-busybox:latest");
    let size = archive.len() as f64;
    let image = cloud.raw_glance_image(&common::unique("nd-metrics"), "docker", archive).await;
    let id = cloud.create_server("metrics", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let (_, after) = get(&format!("{base}/metrics")).await;
    assert_eq!(sample(&after, build), sample(&before, build) + 1.0, "{after}");
    // OpenMetrics: a counter's family is named without `_total` (a family
    // is listed once it has a series).
    assert!(after.contains("# TYPE nova_docker_rpc_requests counter"), "{after}");
    let glance_in = r#"nova_docker_glance_bytes_total{direction="download"}"#;
    assert_eq!(sample(&after, glance_in) - sample(&before, glance_in), size, "{after}");
    // The instance gauge counts it as soon as ACTIVE is saved.
    assert_eq!(sample(&after, active), sample(&before, active) + 1.0, "{after}");
    assert!(after.contains(r#"nova_docker_operation_duration_seconds_count{operation="build",phase="spawn"}"#));

    // The build's log lines name the request and the instance, as
    // oslo.log's context format does: `[None req-... user project ...]
    // [instance: uuid] message`.
    let log = host.log_text();
    let built = log.lines().find(|l| l.contains("instance built")).expect("an 'instance built' line");
    assert!(built.contains(" INFO nova_docker."), "{built}");
    // [global_request_id request_id user project domain system_scope user_domain project_domain]
    let context = built.split_once("] [instance:").and_then(|(head, _)| head.rsplit_once(" [")).map(|(_, c)| c);
    let context: Vec<&str> = context.expect("a context before the instance").split(' ').collect();
    assert_eq!(context.len(), 8, "{built}");
    assert!(context[1].starts_with("req-"), "{built}");
    assert_eq!(built.matches(&id).count(), 1, "the instance is named once: {built}");
    assert!(built.contains(&format!("] [instance: {id}] instance built")), "{built}");
    cloud.delete_server(&id, T).await;
    let (_, gone) = get(&format!("{base}/metrics")).await;
    assert_eq!(sample(&gone, active), sample(&before, active), "deleted, no longer counted:\n{gone}");
    host.stop().await;
    cloud.delete_glance_image(&image).await;
    for r in crate::images::references(&format!("glance/{image}")) {
        let _ = std::process::Command::new("docker").args(["rmi", &r]).output();
    }
}
