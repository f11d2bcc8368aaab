//! Becoming a compute host: Service, ComputeNode, Placement, heartbeats,
//! restarts, disabling — against the real control planes of both releases.

use std::time::Duration;

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};

async fn registers_with_real_resources(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("reg");
    let mut host = ComputeHost::start(&cloud, &name, "").await;

    let svc = cloud.compute_service(&name).await.expect("service listed");
    assert_eq!((svc["state"].as_str(), svc["status"].as_str()), (Some("up"), Some("enabled")), "{svc}");

    let (_, hv) = cloud
        .nova(reqwest::Method::GET, &format!("/os-hypervisors/detail?hypervisor_hostname_pattern={name}"), None, "2.53")
        .await;
    let hv = hv["hypervisors"].as_array().and_then(|a| a.first().cloned()).expect("hypervisor listed");
    assert_eq!(hv["hypervisor_type"], "docker", "{hv}");
    assert_eq!(hv["state"], "up");
    let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
    let info = docker.info().await.unwrap();
    assert_eq!(hv["vcpus"].as_i64(), info.ncpu, "vcpus are the engine's");
    assert_eq!(hv["memory_mb"].as_i64(), Some(info.mem_total.unwrap() / (1024 * 1024)));
    assert!(hv["local_gb"].as_i64().unwrap() > 0);
    assert!(hv["hypervisor_version"].as_i64().unwrap() > 1_000_000, "engine version as an integer: {hv}");

    let rp = cloud.wait_provider(&name, Duration::from_secs(60)).await;
    let uuid = rp["uuid"].as_str().unwrap().to_string();
    assert_eq!(hv["id"].as_str(), Some(uuid.as_str()), "provider uuid = compute node uuid");
    let inv = cloud.placement(&format!("/resource_providers/{uuid}/inventories")).await;
    assert_eq!(inv["inventories"]["VCPU"]["total"].as_i64(), info.ncpu);
    assert_eq!(inv["inventories"]["MEMORY_MB"]["reserved"], 512);
    assert!(inv["inventories"]["DISK_GB"]["total"].as_i64().unwrap() > 0);
    let traits = cloud.placement(&format!("/resource_providers/{uuid}/traits")).await;
    let traits: Vec<&str> = traits["traits"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(traits.contains(&"COMPUTE_NODE"), "{traits:?}");
    assert!(!traits.contains(&"COMPUTE_STATUS_DISABLED"));
    assert_eq!(traits.contains(&"OWNER_NOVA"), release == Release::Newest, "{traits:?}");

    // A restart finds the same node and provider: no duplicates.
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
    let identity = std::fs::read_to_string(host.state.join("compute_id")).unwrap();
    assert_eq!(identity.trim(), uuid);
    host.spawn();
    host.wait_up(&cloud, Duration::from_secs(60)).await;
    let (_, hvs) = cloud
        .nova(reqwest::Method::GET, &format!("/os-hypervisors?hypervisor_hostname_pattern={name}"), None, "2.53")
        .await;
    assert_eq!(hvs["hypervisors"].as_array().unwrap().len(), 1, "{hvs}");
    assert_eq!(cloud.provider(&name).await.unwrap()["uuid"].as_str(), Some(uuid.as_str()));
    // The heartbeat keeps it up: two reports after the restart, each seen
    // by Nova as a newer updated_at of the service record (report_interval
    // is 10 s; Nova's service_down_time, 60 s, is too long to wait out).
    let mut last = cloud.compute_service(&name).await.unwrap()["updated_at"].clone();
    for n in 1..=2 {
        common::wait_for(&format!("heartbeat {n} after the restart"), Duration::from_secs(60), async || {
            let svc = cloud.compute_service(&name).await.unwrap();
            assert_eq!(svc["state"], "up", "{svc}");
            let now = svc["updated_at"].clone();
            let newer = now.as_str() > last.as_str();
            last = now;
            newer
        })
        .await;
    }
    assert!(host.log_text().contains("host registered"));
    host.stop().await;
}

#[tokio::test]
async fn registers_with_real_resources_newest() {
    registers_with_real_resources(Release::Newest).await;
}

#[tokio::test]
async fn registers_with_real_resources_zed() {
    registers_with_real_resources(Release::Zed).await;
}

async fn disabling_the_service_sets_the_trait(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("dis");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let svc = cloud.compute_service(&name).await.unwrap();
    let id = svc["id"].as_str().map(|s| s.to_string()).unwrap_or_else(|| svc["id"].to_string());
    let uuid = cloud.wait_provider(&name, Duration::from_secs(60)).await["uuid"].as_str().unwrap().to_string();
    let traits_path = format!("/resource_providers/{uuid}/traits");
    let has_disabled = async |cloud: &Cloud| {
        let t = cloud.placement(&traits_path).await;
        t["traits"].as_array().unwrap().iter().any(|t| t == "COMPUTE_STATUS_DISABLED")
    };
    let (status, v) = cloud
        .nova(
            reqwest::Method::PUT,
            &format!("/os-services/{id}"),
            Some(json!({"status": "disabled", "disabled_reason": "test"})),
            "2.53",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut seen = false;
    for _ in 0..50 {
        if has_disabled(&cloud).await {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen, "COMPUTE_STATUS_DISABLED set after disabling");
    let (status, _) = cloud
        .nova(reqwest::Method::PUT, &format!("/os-services/{id}"), Some(json!({"status": "enabled"})), "2.53")
        .await;
    assert_eq!(status, 200);
    let mut cleared = false;
    for _ in 0..50 {
        if !has_disabled(&cloud).await {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cleared, "COMPUTE_STATUS_DISABLED removed after enabling");
    host.stop().await;
}

#[tokio::test]
async fn disabling_the_service_sets_the_trait_newest() {
    disabling_the_service_sets_the_trait(Release::Newest).await;
}

#[tokio::test]
async fn disabling_the_service_sets_the_trait_zed() {
    disabling_the_service_sets_the_trait(Release::Zed).await;
}

/// A stopped host is reported down once `service_down_time` passes.
#[tokio::test]
async fn a_stopped_host_goes_down() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("down");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    host.stop().await;
    let down_time: u64 = cloud.env.get("ND_SERVICE_DOWN_TIME").and_then(|v| v.parse().ok()).unwrap_or(60);
    let started = std::time::Instant::now();
    loop {
        let svc = cloud.compute_service(&name).await.unwrap();
        if svc["state"] == "down" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(down_time + 30), "still up: {svc}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The service record deleted under a running host (`openstack compute
/// service delete`): the next heartbeat finds it gone and the host registers
/// again, a new Service (up) and a ComputeNode Nova lists, and it can boot.
async fn registers_again_after_its_service_record_is_deleted(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("rereg");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    // Registration done (service, compute node, provider and its
    // inventory): a delete in the middle of it races Nova's own cleanup.
    cloud.wait_inventory(&name, Duration::from_secs(90)).await;
    let old = cloud.compute_service(&name).await.unwrap();
    let old_id = old["id"].as_str().expect("service uuid (2.53)").to_string();
    let (status, v) = cloud.nova(reqwest::Method::DELETE, &format!("/os-services/{old_id}"), None, "2.53").await;
    assert_eq!(status, 204, "{v}\n{}", cloud.recent_errors());
    common::wait_for("a new service record, up", Duration::from_secs(90), async || {
        cloud.compute_service(&name).await.is_some_and(|s| s["id"] != old_id.as_str() && s["state"] == "up")
    })
    .await;
    assert!(host.log_text().contains("registering again"), "{}", host.log_text());
    cloud.map_host(&name).await;
    common::wait_for("the hypervisor listed again", Duration::from_secs(90), async || {
        let (_, hv) = cloud
            .nova(reqwest::Method::GET, &format!("/os-hypervisors?hypervisor_hostname_pattern={name}"), None, "2.53")
            .await;
        hv["hypervisors"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("rereg", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", Duration::from_secs(120)).await;
    cloud.delete_server(&id, Duration::from_secs(120)).await;
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
}

// Not on Zed: there Nova's service delete also drops the host's cell
// mapping, and the compute node this host creates again (same uuid, from
// compute_id) is Nova's soft-deleted row brought back with mapped = 1, so
// discover_hosts never maps the host again: it is up but not listed nor
// schedulable until `nova-manage cell_v2 discover_hosts --by-service`.
#[tokio::test]
async fn registers_again_after_its_service_record_is_deleted_newest() {
    registers_again_after_its_service_record_is_deleted(Release::Newest).await;
}

/// A host switching from Python's nova-compute keeps its compute node: the
/// node identity is read where Nova (2023.1+) reads it, here a `compute_id`
/// provisioned next to nova.conf (state_path elsewhere), and the compute
/// node is registered under that uuid, again after a restart.
#[tokio::test]
async fn compute_id_next_to_nova_conf_is_the_nodes_uuid() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("cid");
    let state = std::env::temp_dir().join(format!("nd-it-{name}")).join("var");
    let mut host = ComputeHost::configure(&cloud, &name, &format!("[DEFAULT]\nstate_path = {}\n", state.display()));
    let uuid = uuid::Uuid::new_v4().to_string();
    std::fs::write(host.conf.parent().unwrap().join("compute_id"), format!("{uuid}\n")).unwrap();
    for _ in 0..2 {
        host.spawn();
        host.wait_up(&cloud, Duration::from_secs(60)).await;
        cloud.map_host(&name).await;
        let (_, hv) = cloud
            .nova(reqwest::Method::GET, &format!("/os-hypervisors?hypervisor_hostname_pattern={name}"), None, "2.53")
            .await;
        let hvs = hv["hypervisors"].as_array().cloned().unwrap_or_default();
        assert_eq!(hvs.len(), 1, "{hv}");
        assert_eq!(hvs[0]["id"].as_str(), Some(uuid.as_str()), "the provisioned uuid is the node's: {hv}");
        assert!(!state.join("compute_id").exists(), "a provisioned identity is not copied into state_path");
        assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
    }
}
