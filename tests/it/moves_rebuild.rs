//! Rebuild, evacuate, shelve and image pre-caching through the real Nova
//! API (issue 20), and what a refused move gives back to Placement: Nova's
//! view (state, host, image, allocations of the instance and of its
//! migration) and Docker's (container, image, a file written inside).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release, wait_for};

const T: Duration = Duration::from_secs(120);

/// The resources a Placement consumer holds, by provider uuid.
pub(crate) async fn allocations(cloud: &Cloud, consumer: &str) -> serde_json::Map<String, Value> {
    let v = cloud.placement(&format!("/allocations/{consumer}")).await;
    let by_rp = v["allocations"].as_object().cloned().unwrap_or_default();
    by_rp.into_iter().map(|(rp, a)| (rp, a["resources"].clone())).collect()
}

/// The server's migrations (newest first), with their uuids (2.59).
pub(crate) async fn migrations(cloud: &Cloud, server: &str) -> Vec<Value> {
    let (status, v) =
        cloud.nova(reqwest::Method::GET, &format!("/os-migrations?instance_uuid={server}"), None, "2.59").await;
    assert_eq!(status, 200, "{v}");
    v["migrations"].as_array().cloned().unwrap_or_default()
}

/// A cold migration this host refuses gives back what the scheduler
/// claimed for it: the source allocation the migration held returns to the
/// instance, nothing is left on the destination, the migration is in error,
/// and the server is usable on its host. (Before, each attempt leaked the
/// migration's allocation for good.)
async fn a_refused_move_gives_its_allocations_back(release: Release) {
    let cloud = Cloud::get(release);
    let (a_name, b_name) = (host_name("giveback-a"), host_name("giveback-b"));
    let a = ComputeHost::start(&cloud, &a_name, "").await;
    // B refuses every move to it: its Docker engine stops answering once B
    // has registered (a destination without an engine refuses prep_resize).
    let dir = std::env::temp_dir().join(crate::common::unique("nd-dockerd"));
    let engine = crate::faults::PrivateDocker::start(&dir).await;
    let b_extra = engine.host_conf();
    let b = ComputeHost::start(&cloud, &b_name, &b_extra).await;
    let a_rp = cloud.wait_provider(&a_name, T).await["uuid"].as_str().unwrap().to_string();
    let b_rp = cloud.wait_provider(&b_name, T).await["uuid"].as_str().unwrap().to_string();
    drop(engine);
    let image = cloud.busybox_image(&a.conf).await;
    let id = cloud.create_server("giveback", &image, &a_name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let before = allocations(&cloud, &id).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), [&a_rp], "{before:?}");

    for attempt in 1..=2 {
        let (status, v) = cloud
            .nova(
                reqwest::Method::POST,
                &format!("/servers/{id}/action"),
                Some(json!({"migrate": {"host": b_name}})),
                "2.56",
            )
            .await;
        assert_eq!(status, 202, "{v}");
        wait_for("the refused migration to end in error", T, async || {
            migrations(&cloud, &id).await.iter().filter(|m| m["status"] == "error").count() == attempt
        })
        .await;
        let s = cloud.wait_status(&id, "ACTIVE", T).await;
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
        for m in migrations(&cloud, &id).await {
            let mig = m["uuid"].as_str().expect("a migration uuid (2.59)");
            assert!(allocations(&cloud, mig).await.is_empty(), "migration {mig} still holds an allocation");
        }
        let now = allocations(&cloud, &id).await;
        assert_eq!(now, before, "the instance holds its source allocation again, nothing on {b_rp}");
    }
    // Live migration stays refused (the destination's pre-check answers
    // MigrationPreCheckError): the conductor gives its claim back.
    let before_live = migrations(&cloud, &id).await.len();
    let body = json!({"os-migrateLive": {"host": b_name, "block_migration": "auto"}});
    let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.30").await;
    // (The conductor reads the pre-check error as "try another host": with
    // only B requested, the user reads NoValidHost, a 400, not a 500.)
    assert_eq!(status, 400, "a refusal, not an API error: {v}");
    let all = migrations(&cloud, &id).await;
    assert!(all.len() > before_live, "{all:?}");
    assert!(all.iter().all(|m| ["error", "failed"].contains(&m["status"].as_str().unwrap_or(""))), "{all:?}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
    for m in migrations(&cloud, &id).await {
        let mig = m["uuid"].as_str().unwrap();
        assert!(allocations(&cloud, mig).await.is_empty(), "migration {mig} still holds an allocation");
    }
    assert_eq!(allocations(&cloud, &id).await, before);

    let usages = cloud.placement(&format!("/resource_providers/{b_rp}/usages")).await;
    assert!(usages["usages"].as_object().unwrap().values().all(|v| v == 0), "{usages}");

    cloud.delete_server(&id, T).await;
    drop((a, b));
}

#[tokio::test]
async fn a_refused_move_gives_its_allocations_back_zed() {
    a_refused_move_gives_its_allocations_back(Release::Zed).await;
}

#[tokio::test]
async fn a_refused_move_gives_its_allocations_back_newest() {
    a_refused_move_gives_its_allocations_back(Release::Newest).await;
}

/// `docker exec` in the instance's container on the machine's engine; stdout.
fn guest(id: &str, cmd: &str) -> String {
    crate::common::guest_exec(id, cmd).trim().to_string()
}

/// `docker inspect` of one field of a container (empty when there is none).
fn inspect(name: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .expect("docker inspect runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The last instance action's compute_rebuild_instance event.
async fn rebuild_event(cloud: &Cloud, id: &str) -> Value {
    let actions = cloud.actions(id).await;
    let rebuild = actions.iter().find(|a| a["action"] == "rebuild").expect("a rebuild action").clone();
    let events = rebuild["events"].as_array().cloned().unwrap_or_default();
    events.into_iter().find(|e| e["event"] == "compute_rebuild_instance").expect("the compute's event")
}

/// Rebuild as a user runs it: with the same image (the root filesystem is
/// reset), with another image (the container runs it, and Nova says so),
/// and with an image that cannot run (the instance stays as it was, on its
/// old image, with a fault).
async fn rebuild(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("rebuild");
    let host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let tag = format!("{}:latest", crate::common::unique("nd-rebuild"));
    common::build_marked(&tag, "v2");
    let image2 = cloud.docker_image_in_glance(&host.conf, &tag, &crate::common::unique("nd-rebuild-v2"), &[]).await;
    let id = cloud.create_server("rebuild", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let container = format!("nova-{id}");
    let first = inspect(&container, "{{.Id}}");
    guest(&id, "echo written > /root/written");
    assert_eq!(guest(&id, "cat /root/written"), "written");

    // The same image: a new container, the instance's name, an image-fresh disk.
    let (status, v) = cloud.action(&id, json!({"rebuild": {"imageRef": image}})).await;
    assert_eq!(status, 202, "{v}");
    wait_for("the rebuild to begin", T, async || inspect(&container, "{{.Id}}") != first).await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["image"]["id"], image.as_str());
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let second = inspect(&container, "{{.Id}}");
    assert_ne!(second, first, "a new container");
    assert_eq!(inspect(&container, "{{.State.Running}}"), "true");
    assert_eq!(guest(&id, "cat /root/written 2>/dev/null || echo gone"), "gone", "the root filesystem is reset");
    assert_eq!(inspect(&format!("{container}-previous"), "{{.Id}}"), "", "the old container is removed");
    assert_eq!(rebuild_event(&cloud, &id).await["result"], "Success");

    // Another image, with metadata: the container runs it, Nova shows it.
    let (status, v) = cloud.action(&id, json!({"rebuild": {"imageRef": image2, "metadata": {"rebuilt": "v2"}}})).await;
    assert_eq!(status, 202, "{v}");
    wait_for("the second rebuild to begin", T, async || inspect(&container, "{{.Id}}") != second).await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["image"]["id"], image2.as_str());
    assert_eq!(s["metadata"]["rebuilt"], "v2");
    assert_eq!(s["name"], "rebuild");
    assert_eq!(inspect(&container, "{{index .Config.Labels \"nova.image\"}}"), image2);
    assert_eq!(inspect(&container, "{{index .Config.Labels \"nova.instance\"}}"), id);
    assert_eq!(inspect(&container, "{{.Config.Hostname}}"), "rebuild");
    assert_eq!(guest(&id, "cat /marker"), "v2");
    let third = inspect(&container, "{{.Id}}");

    // An image that is not a Docker archive: refused while loading; the
    // old container still runs and Nova shows its image again.
    let bad =
        cloud.raw_glance_image(&crate::common::unique("nd-rebuild-bad"), "docker", b"not an image".repeat(100)).await;
    let (status, v) = cloud.action(&id, json!({"rebuild": {"imageRef": bad}})).await;
    assert_eq!(status, 202, "{v}");
    wait_for("the failed rebuild's event", T, async || {
        let actions = cloud.actions(&id).await;
        actions
            .first()
            .and_then(|a| a["events"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|e| e["event"] == "compute_rebuild_instance" && e["finish_time"].is_string())
    })
    .await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["image"]["id"], image2.as_str(), "Nova shows the image the container runs");
    // (nova-api shows a fault only on an ERROR server: the event says why.)
    assert_eq!(inspect(&container, "{{.Id}}"), third, "the same container");
    assert_eq!(inspect(&container, "{{.State.Running}}"), "true");
    assert_eq!(guest(&id, "cat /marker"), "v2");
    let event = rebuild_event(&cloud, &id).await;
    assert_eq!(event["result"], "Error", "{event}");

    cloud.delete_server(&id, T).await;
    for i in [&image2, &bad] {
        cloud.delete_glance_image(i).await;
    }
    let _ = std::process::Command::new("docker").args(["rmi", &tag]).output();
    drop(host);
}

#[tokio::test]
async fn rebuild_zed() {
    rebuild(Release::Zed).await;
}

#[tokio::test]
async fn rebuild_newest() {
    rebuild(Release::Newest).await;
}

/// The aggregate image-cache API (2.81): the host loads the image into
/// Docker before any boot asks for it, and a boot then uses it.
async fn images_are_cached_ahead_of_boots(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("precache");
    let host = ComputeHost::start(&cloud, &name, "").await;
    let tag = format!("{}:latest", crate::common::unique("nd-precache"));
    common::build_marked(&tag, "precached");
    let image = cloud.docker_image_in_glance(&host.conf, &tag, &crate::common::unique("nd-precache"), &[]).await;
    let cached = || {
        let out = std::process::Command::new("docker")
            .args(["images", "-q", &format!("glance/{image}")])
            .output()
            .expect("docker images runs");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(!cached(), "a new image is not on the host yet");

    let post = async |path: String, body: Value| cloud.nova(reqwest::Method::POST, &path, Some(body), "2.81").await;
    let (status, v) =
        post("/os-aggregates".into(), json!({"aggregate": {"name": crate::common::unique("nd-agg")}})).await;
    assert_eq!(status, 200, "{v}");
    let agg = v["aggregate"]["id"].as_i64().expect("aggregate id");
    let (status, v) = post(format!("/os-aggregates/{agg}/action"), json!({"add_host": {"host": name}})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(format!("/os-aggregates/{agg}/images"), json!({"cache": [{"id": image}]})).await;
    assert_eq!(status, 202, "{v}");
    wait_for("the image to be loaded ahead of any boot", T, async || cached()).await;

    let id = cloud.create_server("precache", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(guest(&id, "cat /marker"), "precached");
    assert!(host.log_text().contains("status=cached"), "the host logged the pre-cache");

    cloud.delete_server(&id, T).await;
    let (status, v) = post(format!("/os-aggregates/{agg}/action"), json!({"remove_host": {"host": name}})).await;
    assert_eq!(status, 200, "{v}");
    cloud.nova(reqwest::Method::DELETE, &format!("/os-aggregates/{agg}"), None, "2.81").await;
    cloud.delete_glance_image(&image).await;
    let refs = std::process::Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", &format!("glance/{image}")])
        .output()
        .expect("docker images runs");
    for r in String::from_utf8_lossy(&refs.stdout).split_whitespace().chain([tag.as_str()]) {
        let _ = std::process::Command::new("docker").args(["rmi", r]).output();
    }
    drop(host);
}

#[tokio::test]
async fn images_are_cached_ahead_of_boots_zed() {
    images_are_cached_ahead_of_boots(Release::Zed).await;
}

#[tokio::test]
async fn images_are_cached_ahead_of_boots_newest() {
    images_are_cached_ahead_of_boots(Release::Newest).await;
}

/// Glance's images named `name` (any status this token sees).
pub(crate) async fn glance_images_named(cloud: &Cloud, name: &str) -> Vec<Value> {
    let url = format!("{}/v2/images?name={name}", cloud.var("ND_GLANCE"));
    let resp = reqwest::Client::new()
        .get(&url)
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let v: Value = resp.json().await.unwrap_or_default();
    v["images"].as_array().cloned().unwrap_or_default()
}

/// Shelve and unshelve as a user runs them: the instance's filesystem goes
/// to Glance as Nova's shelved image, the container and the allocation
/// leave the host, and the unshelve (here onto a chosen host, 2.91) brings
/// the files back and deletes the shelved image.
async fn shelve_and_unshelve(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("shelve");
    let host = ComputeHost::start(&cloud, &name, "").await;
    let rp = cloud.wait_provider(&name, T).await["uuid"].as_str().unwrap().to_string();
    let image = cloud.busybox_image(&host.conf).await;
    let server = crate::common::unique("shelve");
    let id = cloud.create_server(&server, &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    guest(&id, "echo kept > /root/written");
    let container = format!("nova-{id}");

    let (status, v) = cloud.action(&id, json!({"shelve": null})).await;
    assert_eq!(status, 202, "{v}");
    cloud.wait_status(&id, "SHELVED_OFFLOADED", T).await;
    // (Nova saves SHELVED_OFFLOADED, then the host's removal.)
    wait_for("the instance to leave the host", T, async || {
        cloud.server(&id).await.is_some_and(|s| s["OS-EXT-SRV-ATTR:host"].is_null())
    })
    .await;
    assert_eq!(inspect(&container, "{{.Id}}"), "", "the container left the host");
    assert!(allocations(&cloud, &id).await.is_empty(), "the allocation is freed");
    let shelved = glance_images_named(&cloud, &format!("{server}-shelved")).await;
    assert_eq!(shelved.len(), 1, "{shelved:?}");
    let img = &shelved[0];
    assert_eq!((img["status"].as_str(), img["container_format"].as_str()), (Some("active"), Some("docker")));
    assert_eq!(img["image_type"], "snapshot");
    assert_eq!(img["instance_uuid"], id.as_str());
    let shelved_id = img["id"].as_str().unwrap().to_string();

    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{id}/action"),
            Some(json!({"unshelve": {"host": name}})),
            "2.91",
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], name.as_str());
    assert_eq!(s["image"]["id"], image.as_str(), "Nova shows the server's own image");
    assert_eq!(guest(&id, "cat /root/written"), "kept", "the files are intact");
    assert_eq!(inspect(&container, "{{.State.Running}}"), "true");
    let held = allocations(&cloud, &id).await;
    assert_eq!(held.keys().collect::<Vec<_>>(), [&rp], "{held:?}");
    wait_for("the shelved image to be deleted", T, async || {
        glance_images_named(&cloud, &format!("{server}-shelved")).await.iter().all(|i| i["id"] != shelved_id.as_str())
    })
    .await;

    cloud.delete_server(&id, T).await;
    drop(host);
}

#[tokio::test]
async fn shelve_and_unshelve_zed() {
    shelve_and_unshelve(Release::Zed).await;
}

#[tokio::test]
async fn shelve_and_unshelve_newest() {
    shelve_and_unshelve(Release::Newest).await;
}

/// `docker` against a private engine.
pub(crate) fn engine(socket: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PUT os-services/{id} (2.53): forces a compute service down or up.
pub(crate) async fn force_down(cloud: &Cloud, host: &str, down: bool) {
    let service = cloud.compute_service(host).await.expect("the host's service");
    let sid = service["id"].as_str().expect("a service uuid (2.53)").to_string();
    let (status, v) = cloud
        .nova(reqwest::Method::PUT, &format!("/os-services/{sid}"), Some(json!({"forced_down": down})), "2.53")
        .await;
    assert_eq!(status, 200, "{v}");
}

/// Host `a` dies (SIGKILL; its engine keeps the container) and is forced
/// down, as an operator does before evacuating; server `id` is evacuated
/// to `name_b` and lands there.
async fn evacuate_after_the_hosts_death(cloud: &Cloud, a: &mut ComputeHost, name_a: &str, id: &str, name_b: &str) {
    a.kill().await;
    force_down(cloud, name_a, true).await;
    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{id}/action"),
            Some(json!({"evacuate": {"host": name_b}})),
            "2.68",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    wait_for("the server to land on B", T, async || {
        cloud.server(id).await.is_some_and(|s| s["OS-EXT-SRV-ATTR:host"] == name_b)
    })
    .await;
}

/// Evacuation between two hosts, each with its own Docker engine: host A
/// stops and is forced down, the server is rebuilt on B from its image
/// (Nova's view: host B, ACTIVE, B's allocation; Docker's: a running
/// container on B's engine). When A comes back it removes its container of
/// the evacuated server without starting it, and frees its allocation.
async fn evacuate(release: Release) {
    let cloud = Cloud::get(release);
    let (engine_a, engine_b) = crate::faults::PrivateDocker::pair().await;
    let (name_a, name_b) = (host_name("evac-a"), host_name("evac-b"));
    let mut a = ComputeHost::start(&cloud, &name_a, &engine_a.host_conf()).await;
    let b = ComputeHost::start(&cloud, &name_b, &engine_b.host_conf()).await;
    let rp_a = cloud.wait_provider(&name_a, T).await["uuid"].as_str().unwrap().to_string();
    let rp_b = cloud.wait_provider(&name_b, T).await["uuid"].as_str().unwrap().to_string();
    let image = cloud.busybox_image(&a.conf).await;
    let id = cloud.create_server("evac", &image, &name_a, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let container = format!("nova-{id}");
    assert_eq!(engine(&engine_a.socket(), &["inspect", "--format", "{{.State.Running}}", &container]), "true");

    // Host A dies (its engine keeps the container) and is forced down.
    evacuate_after_the_hosts_death(&cloud, &mut a, &name_a, &id, &name_b).await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["image"]["id"], image.as_str());
    assert_eq!(engine(&engine_b.socket(), &["inspect", "--format", "{{.State.Running}}", &container]), "true");
    let held = allocations(&cloud, &id).await;
    assert!(held.contains_key(&rp_b), "{held:?}");
    let evacuation = migrations(&cloud, &id).await.into_iter().next().expect("the evacuation's migration");
    assert_eq!(evacuation["migration_type"], "evacuation");
    assert_eq!(evacuation["status"], "done");

    // A comes back: its container of the server goes, never started again.
    a.spawn();
    wait_for("A to remove the evacuated container", T, async || {
        engine(&engine_a.socket(), &["ps", "-aq", "--filter", &format!("name={container}")]).is_empty()
    })
    .await;
    wait_for("the evacuation's migration to complete", T, async || {
        migrations(&cloud, &id).await.first().is_some_and(|m| m["status"] == "completed")
    })
    .await;
    let held = allocations(&cloud, &id).await;
    assert_eq!(held.keys().collect::<Vec<_>>(), [&rp_b], "A's share is freed: {held:?}");
    let started_on_a =
        engine(&engine_a.socket(), &["events", "--since", "0", "--until", "0s", "--filter", "event=start"]);
    assert_eq!(
        started_on_a.matches(&container).count(),
        1,
        "started once on A (its boot), never again: {started_on_a}"
    );
    force_down(&cloud, &name_a, false).await;
    assert_eq!(engine(&engine_b.socket(), &["inspect", "--format", "{{.State.Running}}", &container]), "true");
    let _ = rp_a;

    cloud.delete_server(&id, T).await;
    drop((a, b, engine_a, engine_b));
}

#[tokio::test]
async fn evacuate_zed() {
    evacuate(Release::Zed).await;
}

#[tokio::test]
async fn evacuate_newest() {
    evacuate(Release::Newest).await;
}

/// Evacuation of a server with a port between the ovn control plane's two
/// chassis: A = `ND_NET_HOST` (the machine's Docker engine) stops and is
/// forced down, the server is rebuilt on B = `ND_NET_HOST2` (its own
/// engine) with its port rebound there, ACTIVE, plugged into B's
/// integration bridge and B's container with the same MAC and address.
/// When A comes back it removes its container of the server without
/// starting it, and the port stays with B.
#[tokio::test]
async fn evacuation_between_chassis_evacuates_with_its_port_ovn() {
    use crate::moves::{boot_with_port, port_plugged_on, second_chassis_host};
    let cloud = Cloud::get(Release::Ovn);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd-evac2"));
    let engine_b = crate::faults::PrivateDocker::start(&dir).await;
    let (name_a, br_a) = (cloud.var("ND_NET_HOST").to_string(), cloud.var("ND_NET_BRIDGE").to_string());
    let (name_b, br_b) = (cloud.var("ND_NET_HOST2").to_string(), cloud.var("ND_NET_BRIDGE2").to_string());
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    // A is the chassis every ovn test runs on: a run of this test that failed
    // between forcing it down and back up would leave it unusable for all.
    if cloud.compute_service(&name_a).await.is_some_and(|s| s["forced_down"] == true) {
        force_down(&cloud, &name_a, false).await;
    }
    let mut a = ComputeHost::start(&cloud, &name_a, "").await;
    let b = second_chassis_host(&cloud, &engine_b).await;
    let image = cloud.busybox_image(&a.conf).await;
    let id = boot_with_port(&cloud, "nd-evac-port", &image, &name_a, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let before = port_plugged_on(&cloud, None, &id, &name_a, &br_a).await;
    let container = format!("nova-{id}");
    let main_docker = |args: &[&str]| {
        let out = std::process::Command::new("docker").args(args).output().expect("docker runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Host A dies (the engine keeps its container) and is forced down.
    evacuate_after_the_hosts_death(&cloud, &mut a, &name_a, &id, &name_b).await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let after = port_plugged_on(&cloud, Some(&engine_b), &id, &name_b, &br_b).await;
    assert_eq!((&after["id"], &after["mac_address"]), (&before["id"], &before["mac_address"]), "the same port");
    assert_eq!(after["fixed_ips"], before["fixed_ips"], "the same addresses");
    let addr = engine(&engine_b.socket(), &["exec", &container, "ip", "-4", "addr", "show", "eth0"]);
    let ip = crate::network::fixed_ip(&before, false);
    assert!(addr.contains(&format!("{ip}/")), "eth0 on B has {ip}: {addr}");

    // A comes back: its container of the server goes, never started again;
    // the port stays bound to B and plugged there.
    a.spawn();
    wait_for("A to remove the evacuated container", T, async || {
        main_docker(&["ps", "-aq", "--filter", &format!("name={container}")]).is_empty()
    })
    .await;
    wait_for("the evacuation's migration to complete", T, async || {
        migrations(&cloud, &id).await.first().is_some_and(|m| m["status"] == "completed")
    })
    .await;
    let started_on_a = main_docker(&[
        "events",
        "--since",
        &since,
        "--until",
        "0s",
        "--filter",
        "event=start",
        "--filter",
        &format!("container={container}"),
    ]);
    assert_eq!(started_on_a.lines().count(), 1, "started once on A (its boot), never again: {started_on_a}");
    force_down(&cloud, &name_a, false).await;
    port_plugged_on(&cloud, Some(&engine_b), &id, &name_b, &br_b).await;

    cloud.delete_server(&id, T).await;
    drop((a, b, engine_b));
}

/// The late server-group check of an evacuation (Nova's
/// `_do_rebuild_instance`), through the real Nova: a member of an
/// anti-affinity group evacuated onto the host that runs the other member
/// fails there before anything is made. Nova's scheduler never picks that
/// host (its anti-affinity filter), so the evacuation is forced onto it
/// (`force: true`, microversions 2.29 to 2.67), past the scheduler as a
/// racing evacuation or boot would get. Nova's view: the server in ERROR
/// with the violation as its fault, still on the dead host, the migration
/// `failed`, B's share of its allocation given back; Docker's: no container
/// of it on B, the other member still running there.
async fn evacuation_breaking_anti_affinity(release: Release) {
    let cloud = Cloud::get(release);
    let (engine_a, engine_b) = crate::faults::PrivateDocker::pair().await;
    let (name_a, name_b) = (host_name("evgrp-a"), host_name("evgrp-b"));
    let mut a = ComputeHost::start(&cloud, &name_a, &engine_a.host_conf()).await;
    let b = ComputeHost::start(&cloud, &name_b, &engine_b.host_conf()).await;
    let rp_a = cloud.wait_provider(&name_a, T).await["uuid"].as_str().unwrap().to_string();
    let rp_b = cloud.wait_provider(&name_b, T).await["uuid"].as_str().unwrap().to_string();
    let image = cloud.busybox_image(&a.conf).await;
    let body = json!({"server_group": {"name": crate::common::unique("nd-evgrp"), "policy": "anti-affinity"}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/os-server-groups", Some(body), "2.64").await;
    assert_eq!(status, 200, "{v}");
    let group = v["server_group"]["id"].as_str().unwrap().to_string();
    let first = crate::moves::boot_in_group(&cloud, &image, &name_a, &group).await;
    let second = crate::moves::boot_in_group(&cloud, &image, &name_b, &group).await;
    cloud.wait_status(&first, "ACTIVE", T).await;
    cloud.wait_status(&second, "ACTIVE", T).await;
    let held_before = allocations(&cloud, &first).await;
    assert_eq!(held_before.keys().collect::<Vec<_>>(), [&rp_a], "{held_before:?}");
    let b_usage_before = cloud.placement(&format!("/resource_providers/{rp_b}/usages")).await;

    a.kill().await;
    force_down(&cloud, &name_a, true).await;
    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{first}/action"),
            Some(json!({"evacuate": {"host": name_b, "force": true}})),
            "2.29",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    wait_for("the evacuation to fail", T, async || {
        migrations(&cloud, &first).await.first().is_some_and(|m| m["status"] == "failed")
    })
    .await;
    let s = cloud.wait_status(&first, "ERROR", T).await;
    let fault = s["fault"]["message"].as_str().unwrap_or_default();
    assert!(fault.contains("Anti-affinity instance group policy was violated"), "{}", s["fault"]);
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], name_a.as_str(), "still on the dead host");
    let evacuation = migrations(&cloud, &first).await.into_iter().next().unwrap();
    assert_eq!(evacuation["migration_type"], "evacuation");
    assert_eq!(allocations(&cloud, &first).await, held_before, "B's share given back");
    let b_usage = cloud.placement(&format!("/resource_providers/{rp_b}/usages")).await;
    assert_eq!(b_usage["usages"], b_usage_before["usages"], "B holds only the other member");
    let on_b = |id: &str| engine(&engine_b.socket(), &["ps", "-aq", "--filter", &format!("name=nova-{id}")]);
    assert!(on_b(&first).is_empty(), "nothing of the refused member on B");
    assert_eq!(
        engine(&engine_b.socket(), &["inspect", "--format", "{{.State.Running}}", &format!("nova-{second}")]),
        "true"
    );

    // A stays forced down: deleting the server of a dead host is Nova's local delete.
    for id in [&first, &second] {
        cloud.delete_server(id, T).await;
    }
    force_down(&cloud, &name_a, false).await;
    let (status, _) = cloud.nova(reqwest::Method::DELETE, &format!("/os-server-groups/{group}"), None, "2.64").await;
    assert_eq!(status, 204);
    drop((a, b, engine_a, engine_b));
}

#[tokio::test]
async fn an_evacuation_breaking_anti_affinity_fails_on_the_destination_newest() {
    evacuation_breaking_anti_affinity(Release::Newest).await;
}

#[tokio::test]
async fn an_evacuation_breaking_anti_affinity_fails_on_the_destination_zed() {
    evacuation_breaking_anti_affinity(Release::Zed).await;
}
