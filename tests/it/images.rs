//! Images both ways, through real Glance, Docker and Nova: snapshots that
//! boot again, `image import` / `image fetch`, and Glance failing mid-upload.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::proxy::Relay;

const T: Duration = Duration::from_secs(120);

async fn docker_exec(container: &str, cmd: &str) -> String {
    let out = tokio::process::Command::new("docker").args(["exec", container, "sh", "-c", cmd]).output().await.unwrap();
    assert!(out.status.success(), "docker exec {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A request on one Glance image (`/v2/images/{id}`), with the admin token.
/// The `repo:tag` references of the machine engine in `repository`.
pub fn references(repository: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["images", repository, "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker images");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

async fn glance_request(cloud: &Cloud, method: reqwest::Method, id: &str) -> reqwest::Response {
    let url = format!("{}/v2/images/{id}", cloud.var("ND_GLANCE"));
    reqwest::Client::new().request(method, url).header("X-Auth-Token", cloud.var("ND_TOKEN")).send().await.unwrap()
}

async fn glance_image(cloud: &Cloud, id: &str) -> serde_json::Value {
    glance_request(cloud, reqwest::Method::GET, id).await.json().await.unwrap()
}

async fn wait_image_active(cloud: &Cloud, id: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let img = glance_image(cloud, id).await;
        if img["status"] == "active" {
            return img;
        }
        assert!(started.elapsed() < T, "image {id} not active: {img}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn snapshot_boots_again(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("snap");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("snapsrc", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let marker = common::unique("written-before-snapshot");
    docker_exec(&format!("nova-{id}"), &format!("echo {marker} > /root/marker")).await;

    let (status, v) = cloud.action(&id, json!({"createImage": {"name": common::unique("nd-snap")}})).await;
    assert_eq!(status, 202, "{v}");
    let snap = v["image_id"].as_str().expect("image_id (2.45+)").to_string();
    cloud.wait_status(&id, "ACTIVE", T).await;
    let img = wait_image_active(&cloud, &snap).await;
    assert_eq!((img["container_format"].as_str(), img["disk_format"].as_str()), (Some("docker"), Some("raw")), "{img}");
    assert!(img["size"].as_u64().unwrap() > 0);
    let snapshot_action = cloud.actions(&id).await.into_iter().find(|a| a["action"] == "createImage").unwrap();
    assert_eq!(snapshot_action["events"][0]["result"], "Success", "{snapshot_action}");
    // The committed image does not stay on the host (keep_snapshot_images = false).
    assert!(references(&format!("glance/{snap}")).is_empty(), "committed image kept after upload");

    // The uploaded bytes are a docker-save archive Docker loads.
    let bytes = reqwest::Client::new()
        .get(format!("{}/v2/images/{snap}/file", cloud.var("ND_GLANCE")))
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = host.state.join("snapshot.tar");
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new("docker").args(["load", "-i"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "docker load: {}", String::from_utf8_lossy(&out.stderr));
    // The host's own archive: no tag in it, only the image.
    let loaded = String::from_utf8_lossy(&out.stdout).to_string();
    let loaded_id = loaded.trim().strip_prefix("Loaded image ID: ").unwrap_or_else(|| panic!("{loaded}"));
    let _ = std::process::Command::new("docker").args(["rmi", loaded_id]).output();

    // A server booted from the snapshot has the file (downloaded from Glance,
    // since this host kept nothing).
    let id2 = cloud.create_server("fromsnap", &snap, &name, "1").await;
    cloud.wait_status(&id2, "ACTIVE", T).await;
    let content = docker_exec(&format!("nova-{id2}"), "cat /root/marker").await;
    assert_eq!(content.trim(), marker);
    for i in [&id, &id2] {
        cloud.delete_server(i, T).await;
    }
    host.stop().await;
}

#[tokio::test]
async fn snapshot_boots_again_newest() {
    snapshot_boots_again(Release::Newest).await;
}

#[tokio::test]
async fn snapshot_boots_again_zed() {
    snapshot_boots_again(Release::Zed).await;
}

/// `image import` of a local image, boot it; `image fetch` loads a Glance image.
#[tokio::test]
async fn image_import_then_boot() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("import");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let glance_name = common::unique("nd-chatty");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
        .args([
            "image",
            "import",
            "nd-busybox:chatty",
            "--name",
            &glance_name,
            "--property",
            "os_distro=busybox",
            "--config-file",
        ])
        .arg(&host.conf)
        .env("OS_AUTH_TOKEN", cloud.var("ND_TOKEN"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let img = glance_image(&cloud, &id).await;
    assert_eq!(img["status"], "active");
    assert_eq!(img["container_format"], "docker");
    assert_eq!(img["os_distro"], "busybox");

    let server = cloud.create_server("imported", &id, &name, "1").await;
    cloud.wait_status(&server, "ACTIVE", T).await;
    let (_, out) = cloud.action(&server, json!({"os-getConsoleOutput": {"length": 3}})).await;
    assert!(out["output"].as_str().unwrap().contains("line "), "{out}");
    cloud.delete_server(&server, T).await;

    // fetch: Glance -> docker load, bound to the Glance image by a reference
    // that names the loaded image's ID.
    for r in references(&format!("glance/{id}")) {
        let _ = std::process::Command::new("docker").args(["rmi", &r]).output();
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
        .args(["image", "fetch", &id, "--config-file"])
        .arg(&host.conf)
        .env("OS_AUTH_TOKEN", cloud.var("ND_TOKEN"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "fetch: {}", String::from_utf8_lossy(&out.stderr));
    let fetched = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(references(&format!("glance/{id}")), vec![format!("glance/{id}:v1-{}", &fetched["sha256:".len()..])]);
    host.stop().await;
}

/// Glance goes away in the middle of a snapshot's upload: the snapshot fails
/// cleanly, the instance stays ACTIVE, the failure is recorded, and the host
/// keeps serving.
#[tokio::test]
async fn glance_lost_during_snapshot_upload() {
    let cloud = Cloud::get(Release::Newest);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("glancecut");
    let extra = format!("[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("big", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    // 64 MB of incompressible data makes the upload long enough to cut.
    docker_exec(&format!("nova-{id}"), "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null").await;

    let before = relay.sent.load(std::sync::atomic::Ordering::SeqCst);
    let (status, v) = cloud.action(&id, json!({"createImage": {"name": common::unique("nd-cut")}})).await;
    assert_eq!(status, 202, "{v}");
    let started = Instant::now();
    while relay.sent.load(std::sync::atomic::Ordering::SeqCst) < before + 8 * 1024 * 1024 {
        assert!(started.elapsed() < T, "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.cut();
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let action = cloud.actions(&id).await.into_iter().find(|a| a["action"] == "createImage").unwrap();
    assert_eq!(action["events"][0]["result"], "Error", "{action}");
    relay.restore();
    // Still serving: a reboot works.
    assert_eq!(cloud.action(&id, json!({"reboot": {"type": "HARD"}})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// `createBackup` with rotation 1, twice: each backup is an active
/// docker/raw image with Nova's backup properties, and the second one
/// rotates the first out of Glance.
#[tokio::test]
async fn backups_rotate() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("backup");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("backupsrc", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let mut backups = Vec::new();
    for _ in 0..2 {
        let body =
            json!({"createBackup": {"name": common::unique("nd-backup"), "backup_type": "daily", "rotation": 1}});
        let (status, v) = cloud.action(&id, body).await;
        assert_eq!(status, 202, "{v}");
        let backup = v["image_id"].as_str().expect("image_id (2.45+)").to_string();
        cloud.wait_status(&id, "ACTIVE", T).await;
        let img = wait_image_active(&cloud, &backup).await;
        assert_eq!((img["container_format"].as_str(), img["disk_format"].as_str()), (Some("docker"), Some("raw")));
        assert_eq!((img["image_type"].as_str(), img["backup_type"].as_str()), (Some("backup"), Some("daily")), "{img}");
        assert_eq!(img["instance_uuid"], id.as_str());
        backups.push(backup);
    }
    let first = &backups[0];
    common::wait_for("the first backup to be rotated out", T, async || {
        glance_request(&cloud, reqwest::Method::GET, first).await.status() == 404
    })
    .await;
    assert_eq!(glance_image(&cloud, &backups[1]).await["status"], "active", "the newest backup stays");
    let backup_action = cloud.actions(&id).await.into_iter().find(|a| a["action"] == "createBackup").unwrap();
    assert_eq!(backup_action["events"][0]["result"], "Success", "{backup_action}");
    glance_request(&cloud, reqwest::Method::DELETE, &backups[1]).await;
    cloud.delete_server(&id, T).await;
    host.stop().await;
}
