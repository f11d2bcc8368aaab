//! Becoming a compute host: Service, ComputeNode, Placement, heartbeats,
//! restarts, disabling — against the real control planes of both releases.

use std::time::Duration;

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::Release;

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

    let rp = cloud.provider(&name).await.expect("resource provider");
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
    // The heartbeat keeps it up past one report interval.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let svc = cloud.compute_service(&name).await.unwrap();
    assert_eq!(svc["state"], "up");
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
    let uuid = cloud.provider(&name).await.unwrap()["uuid"].as_str().unwrap().to_string();
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
