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
    // The tenant's download names nothing of the host (its labels blanked).
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .Config.Labels}}", loaded_id])
        .output()
        .unwrap();
    let labels: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for (k, v) in labels.as_object().into_iter().flatten() {
        assert!(!k.starts_with("nova.") || v == "", "the snapshot carries {k}={v}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&name), "the snapshot names the host: {labels}");
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
    // Set by default: ImagePropertiesFilter keeps it off libvirt hosts, and
    // this host (hv_type docker) takes it.
    assert_eq!(img["hypervisor_type"], "docker", "{img}");

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

/// Starts a snapshot of `id` and waits until 8 MiB of its upload went
/// through the relay; returns the snapshot's Glance image id.
async fn snapshot_under_way(cloud: &Cloud, relay: &Relay, id: &str) -> String {
    let before = relay.sent.load(std::sync::atomic::Ordering::SeqCst);
    let (status, v) = cloud.action(id, json!({"createImage": {"name": common::unique("nd-cut")}})).await;
    assert_eq!(status, 202, "{v}");
    let snap = v["image_id"].as_str().expect("image_id (2.45+)").to_string();
    common::wait_for("8 MiB of the upload", T, async || {
        relay.sent.load(std::sync::atomic::Ordering::SeqCst) >= before + 8 * 1024 * 1024
    })
    .await;
    snap
}

/// The snapshot failed cleanly: the instance ACTIVE and running, the
/// `createImage` action's event an error.
async fn snapshot_failed(cloud: &Cloud, id: &str) {
    let s = cloud.wait_status(id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert!(s["OS-EXT-STS:task_state"].is_null(), "{s}");
    let action = cloud.actions(id).await.into_iter().find(|a| a["action"] == "createImage").unwrap();
    assert_eq!(action["events"][0]["result"], "Error", "{action}");
}

/// Glance goes away in the middle of a snapshot's upload: the snapshot fails
/// cleanly, the instance stays ACTIVE, the failure is recorded, the
/// half-uploaded image is deleted (or, while Glance stays away, a warning
/// names it), and the host keeps serving.
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

    // 1. The upload's connection drops; Glance answers again at once: the
    // half-uploaded image is deleted.
    let snap = snapshot_under_way(&cloud, &relay, &id).await;
    relay.reset();
    snapshot_failed(&cloud, &id).await;
    common::wait_for("the half-uploaded image to be deleted", T, async || {
        glance_request(&cloud, reqwest::Method::GET, &snap).await.status() == 404
    })
    .await;

    // 2. Glance stays away: the image cannot be deleted, and a warning
    // names it for the operator.
    let snap = snapshot_under_way(&cloud, &relay, &id).await;
    relay.cut();
    snapshot_failed(&cloud, &id).await;
    let warned = host.log_text().lines().any(|l| l.contains("WARN") && l.contains(&snap));
    assert!(warned, "no warning names the image {snap}:\n{}", host.log_text());
    relay.restore();
    glance_request(&cloud, reqwest::Method::DELETE, &snap).await;

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

/// The `repo:tag` references in `repository` of the engine at `socket`.
fn references_on(socket: &std::path::Path, repository: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["-H", &format!("unix://{}", socket.display()), "images", repository])
        .args(["--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker images");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `[image_cache]`: the reference of a Glance image no container and no
/// instance of this host uses is removed once unused for the minimum age;
/// the reference of an image in use stays, though both name the same
/// Docker image. The host has a private engine: its passes see only the
/// images this test loads.
#[tokio::test]
async fn unused_images_leave_the_cache() {
    let cloud = Cloud::get(Release::Newest);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd"));
    let engine = crate::faults::PrivateDocker::start(&dir).await;
    let socket = engine.socket();
    let name = host_name("imgcache");
    let extra = format!(
        "[docker]\nhost_url = unix://{}\n[image_cache]\nmanager_interval = 1\nremove_unused_original_minimum_age_seconds = 3\n",
        socket.display()
    );
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let archive = common::docker_save("nd-busybox:latest");
    let kept = cloud.raw_glance_image(&common::unique("nd-cache-kept"), "docker", archive.clone()).await;
    let unused = cloud.raw_glance_image(&common::unique("nd-cache-unused"), "docker", archive).await;
    let a = cloud.create_server("cachekept", &kept, &name, "1").await;
    let b = cloud.create_server("cacheunused", &unused, &name, "1").await;
    cloud.wait_status(&a, "ACTIVE", T).await;
    cloud.wait_status(&b, "ACTIVE", T).await;
    assert_eq!(references_on(&socket, &format!("glance/{unused}")).len(), 1, "loaded for its server");
    cloud.delete_server(&b, T).await;
    common::wait_for("the unused image's reference to be removed", T, async || {
        references_on(&socket, &format!("glance/{unused}")).is_empty()
    })
    .await;
    assert_eq!(references_on(&socket, &format!("glance/{kept}")).len(), 1, "the image in use keeps its reference");
    assert!(host.log_text().contains("removed the image reference"), "{}", host.log_text());
    // Booting from the removed image loads it again.
    let c = cloud.create_server("cacheagain", &unused, &name, "1").await;
    cloud.wait_status(&c, "ACTIVE", T).await;
    for s in [&a, &c] {
        cloud.delete_server(s, T).await;
    }
    host.stop().await;
    for image in [&kept, &unused] {
        cloud.delete_glance_image(image).await;
    }
}
