//! A host reboot with many instances (issue 24): the Docker engine and the
//! service start again as after a reboot, the engine's containers stopped,
//! and `[DEFAULT] resume_guests_state_on_host_boot` brings every instance
//! Nova believes running back, none lost, none started twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::faults::PrivateDocker;

const T: Duration = Duration::from_secs(180);

/// Instances on the host; `ND_REBOOT_INSTANCES` overrides it (the figure in
/// RELIABILITY.md is for 100).
fn instances() -> usize {
    std::env::var("ND_REBOOT_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// The names of the engine's containers of `host`, running or all.
fn containers(socket: &std::path::Path, host: &str, running_only: bool) -> BTreeSet<String> {
    let mut cmd = std::process::Command::new("docker");
    cmd.args(["-H", &format!("unix://{}", socket.display()), "ps", "--format", "{{.Names}}"]);
    cmd.args(["--filter", &format!("label=nova.host={host}")]);
    if !running_only {
        cmd.arg("-a");
    }
    let out = cmd.output().expect("docker ps runs");
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The servers of `ids` that Nova shows ACTIVE with power state running.
async fn running_in_nova(cloud: &Cloud, host: &str, ids: &BTreeSet<String>) -> usize {
    let (_, v) =
        cloud.nova(reqwest::Method::GET, &format!("/servers/detail?host={host}&all_tenants=1"), None, "2.88").await;
    v["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| ids.contains(s["id"].as_str().unwrap_or_default()))
                .filter(|s| {
                    s["status"] == "ACTIVE" && s["OS-EXT-STS:power_state"] == 1 && s["OS-EXT-STS:task_state"].is_null()
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_host_reboot_resumes_every_instance() {
    let n = instances();
    let cloud = Cloud::get(Release::Newest);
    let dir = std::env::temp_dir().join(common::unique("nd-reboot"));
    let mut engine = PrivateDocker::start(&dir).await;
    let name = host_name("reboot");
    let extra = format!(
        "[DEFAULT]\nresume_guests_state_on_host_boot = true\n[docker]\nhost_url = unix://{}\n",
        engine.socket().display()
    );
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    cloud.wait_inventory(&name, T).await;
    let image = cloud.busybox_image(&host.conf).await;

    // The instances, in waves of 20 (the first also loads the image).
    let mut ids = BTreeSet::new();
    let started = Instant::now();
    for wave in 0..n.div_ceil(20) {
        let mut batch = Vec::new();
        for i in wave * 20..n.min(wave * 20 + 20) {
            let body = json!({"server": {"name": format!("reboot-{i}"), "imageRef": image, "flavorRef": "42",
                "networks": "none", "availability_zone": format!("nova:{name}")}});
            let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
            assert_eq!(status, 202, "{v}");
            batch.push(v["server"]["id"].as_str().expect("server id").to_string());
        }
        futures::future::join_all(batch.iter().map(|id| cloud.wait_status(id, "ACTIVE", T))).await;
        ids.extend(batch);
    }
    common::figure(format!("{n} instances ACTIVE in {:.1?}", started.elapsed()));
    let before = containers(&engine.socket(), &name, false);
    assert_eq!(before.len(), n, "one container per instance");

    // The reboot: the service stops, the engine stops (taking every
    // container down with it) and starts again, then the service.
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
    engine.restart().await;
    assert!(containers(&engine.socket(), &name, true).is_empty(), "the engine's restart stopped every container");
    let back = Instant::now();
    host.spawn();
    common::wait_for("every container running again", T, async || containers(&engine.socket(), &name, true).len() == n)
        .await;
    let all_running = back.elapsed();
    common::wait_for("Nova shows every instance ACTIVE and running", T, async || {
        running_in_nova(&cloud, &name, &ids).await == n
    })
    .await;
    common::figure(format!(
        "{n} instances: all containers running {all_running:.1?} after the service started again, all ACTIVE and running in Nova after {:.1?}",
        back.elapsed()
    ));
    // None lost, none started twice: the same containers, one each.
    assert_eq!(containers(&engine.socket(), &name, false), before, "the same containers, no new ones");
    host.wait_up(&cloud, T).await;

    for chunk in ids.iter().collect::<Vec<_>>().chunks(20) {
        futures::future::join_all(chunk.iter().map(|id| cloud.delete_server(id, T))).await;
    }
    assert!(containers(&engine.socket(), &name, false).is_empty(), "nothing left on the engine");
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
}
