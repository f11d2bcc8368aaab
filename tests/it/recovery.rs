//! Killed with SIGKILL in the middle of a build, a delete and a snapshot:
//! after a restart, every instance ends where Nova's `init_host` would put
//! it, nothing is stuck in a task state, and strays are cleaned up.

use std::time::Duration;

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release, wait_for};
use crate::proxy::Relay;

const T: Duration = Duration::from_secs(120);

/// The engine's clock now, as `docker events --since` takes it.
fn docker_now() -> String {
    let out = std::process::Command::new("date").args(["+%s.%N"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The signals the engine has sent `container` since `since` (its `kill`
/// events), e.g. "15" for the SIGTERM of a stop.
fn signals_sent(container: &str, since: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["events", "--since", since, "--until", &docker_now()])
        .args(["--filter", &format!("container={container}"), "--filter", "event=kill"])
        .args(["--format", "{{index .Actor.Attributes \"signal\"}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker events: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
}

#[tokio::test]
async fn killed_during_build_delete_and_snapshot() {
    let cloud = Cloud::get(Release::Newest);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("crash");
    // Glance through the relay (to stall transfers); containers that ignore
    // SIGTERM get 30 s to stop (to catch a delete in the middle).
    let extra = format!("[DEFAULT]\nshutdown_timeout = 30\n[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let stubborn = cloud
        .docker_image_in_glance(
            &host.conf,
            "nd-busybox:latest",
            "nd-stubborn",
            &["os_command_line=sh -c 'trap \"\" TERM; while true; do sleep 1; done'"],
        )
        .await;
    let plain = cloud.busybox_image(&host.conf).await;

    // An instance to delete (it will not stop by itself) and one to snapshot.
    let deleting = cloud.create_server("deleting", &stubborn, &name, "1").await;
    let snapping = cloud.create_server("snapping", &plain, &name, "1").await;
    cloud.wait_status(&deleting, "ACTIVE", T).await;
    cloud.wait_status(&snapping, "ACTIVE", T).await;
    // A container stopped while the service is down must be synced on restart.
    let drifting = cloud.create_server("drifting", &plain, &name, "1").await;
    cloud.wait_status(&drifting, "ACTIVE", T).await;

    // 1. A snapshot stalled in its upload.
    relay.hold();
    let (status, v) = cloud.action(&snapping, json!({"createImage": {"name": common::unique("nd-crash-snap")}})).await;
    assert_eq!(status, 202, "{v}");
    wait_for("the snapshot to reach image_uploading", T, async || {
        cloud.server(&snapping).await.unwrap()["OS-EXT-STS:task_state"] == "image_uploading"
    })
    .await;
    // 2. A delete waiting for a container that ignores SIGTERM: under way
    // once the engine has sent the container its SIGTERM.
    let since = docker_now();
    let (status, _) = cloud.nova(reqwest::Method::DELETE, &format!("/servers/{deleting}"), None, "2.88").await;
    assert_eq!(status, 204);
    wait_for("the delete's SIGTERM to the container", T, async || {
        signals_sent(&format!("nova-{deleting}"), &since).contains(&"15".to_string())
    })
    .await;
    assert_eq!(cloud.server(&deleting).await.unwrap()["OS-EXT-STS:task_state"], "deleting");
    // 3. A build stalled while downloading its (never seen) image.
    let fresh = cloud
        .raw_glance_image(
            &common::unique("nd-fresh"),
            "docker",
            std::fs::read(common::fixture("busybox-save.tar")).unwrap(),
        )
        .await;
    let building = cloud.create_server("building", &fresh, &name, "1").await;
    // Stalled in its download once the service has asked Glance (held by
    // the relay) for the image's data and saved the build as spawning.
    wait_for("the build's image download to be under way", T, async || {
        host.log_text().lines().any(|l| l.contains("downloading the image from Glance") && l.contains(&fresh))
    })
    .await;
    wait_for("the build to be spawning on this host", T, async || {
        let s = cloud.server(&building).await.unwrap();
        s["OS-EXT-SRV-ATTR:host"] == name.as_str() && s["OS-EXT-STS:task_state"] == "spawning"
    })
    .await;

    // Crash, and something changes behind the dead service's back.
    host.kill().await;
    let out =
        std::process::Command::new("docker").args(["stop", "-t", "1", &format!("nova-{drifting}")]).output().unwrap();
    assert!(out.status.success());
    let stray = uuid::Uuid::new_v4().to_string();
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--network", "none", "--name", &format!("nova-{stray}")])
        .args(["--label", &format!("nova.host={name}"), "--label", &format!("nova.instance={stray}")])
        .args(["nd-busybox:latest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    relay.release();

    host.spawn();
    host.wait_up(&cloud, T).await;
    // The interrupted build ends in ERROR with a fault, its container gone.
    let s = cloud.wait_status(&building, "ERROR", T).await;
    assert!(s["fault"]["message"].as_str().unwrap_or_default().contains("interrupted"), "{}", s["fault"]);
    // The interrupted delete is finished.
    wait_for("the interrupted delete to finish", T, async || cloud.server(&deleting).await.is_none()).await;
    // The interrupted snapshot is reset; the instance runs on.
    let s = cloud.wait_status(&snapping, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let paused = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Paused}}", &format!("nova-{snapping}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&paused.stdout).trim(), "false");
    // The container stopped behind the dead service's back is SHUTOFF.
    cloud.wait_status(&drifting, "SHUTOFF", T).await;
    // The stray container (no such instance) is reaped.
    wait_for("the stray container to be removed", T, async || {
        !std::process::Command::new("docker")
            .args(["inspect", &format!("nova-{stray}")])
            .output()
            .unwrap()
            .status
            .success()
    })
    .await;
    assert!(host.log_text().contains("interrupted"));
    for i in [&building, &snapping, &drifting] {
        cloud.delete_server(i, T).await;
    }
    host.stop().await;
}

/// SIGTERM while a build is in flight (stalled in its image download):
/// the service stops taking requests, lets the build finish (ACTIVE, its
/// container running), then exits 0.
#[tokio::test]
async fn sigterm_lets_a_build_in_flight_finish_then_exits_0() {
    let cloud = Cloud::get(Release::Newest);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("sigterm");
    let extra = format!("[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let fresh =
        cloud.raw_glance_image(&common::unique("nd-sigterm"), "docker", common::docker_save("nd-busybox:latest")).await;
    relay.hold();
    let building = cloud.create_server("sigterm", &fresh, &name, "1").await;
    wait_for("the build's image download to be under way", T, async || {
        host.log_text().lines().any(|l| l.contains("downloading the image from Glance") && l.contains(&fresh))
    })
    .await;
    let pid = host.pid().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the service to take the SIGTERM", T, async || host.log_text().contains("SIGTERM: shutting down")).await;
    relay.release();
    let status = host.wait_exit(T).await.expect("the service exits");
    assert!(status.success(), "exit status {status:?}:\n{}", host.log_text());
    let s = cloud.wait_status(&building, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let running = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &format!("nova-{building}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
    // Deleted by a host started again.
    host.spawn();
    host.wait_up(&cloud, T).await;
    cloud.delete_server(&building, T).await;
    host.stop().await;
    cloud.delete_glance_image(&fresh).await;
}

/// SIGKILL of the destination in the middle of an evacuation (its image
/// fetch from Glance held): after its restart the instance is in ERROR,
/// as Nova's `_init_instance` leaves a rebuild that was under way, with no
/// task state and nothing of it running on the destination's engine; the
/// way Nova offers out of it (a rebuild where the instance now is, or
/// evacuating again from the dead host) brings it back ACTIVE on the
/// destination.
#[tokio::test]
async fn sigkill_during_an_evacuation() {
    use crate::faults::PrivateDocker;
    use crate::moves_rebuild::{engine, force_down, migrations};
    let cloud = Cloud::get(Release::Newest);
    let (engine_a, engine_b) = PrivateDocker::pair().await;
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let (name_a, name_b) = (host_name("evkill-a"), host_name("evkill-b"));
    let mut a = ComputeHost::start(&cloud, &name_a, &engine_a.host_conf()).await;
    let relayed = format!("{}[glance]\nendpoint_override = {}\n", engine_b.host_conf(), relay.url);
    let mut b = ComputeHost::start(&cloud, &name_b, &relayed).await;
    cloud.wait_inventory(&name_b, T).await;
    let image = cloud.busybox_image(&a.conf).await;
    let id = cloud.create_server("evkill", &image, &name_a, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let container = format!("nova-{id}");

    // A dies and is forced down; the evacuation to B stalls in B's image
    // download, and B is killed there.
    a.kill().await;
    force_down(&cloud, &name_a, true).await;
    relay.hold();
    let reached = relay.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let evacuate = json!({"evacuate": {"host": name_b}});
    let (status, v) =
        cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(evacuate.clone()), "2.68").await;
    assert_eq!(status, 200, "{v}");
    // (The relay holds B's first Glance request, the image's metadata.)
    wait_for("B's rebuild to wait on Glance", T, async || {
        relay.accepted.load(std::sync::atomic::Ordering::SeqCst) > reached
    })
    .await;
    b.kill().await;
    relay.release();

    // B again: the interrupted rebuild is an ERROR, nothing stuck.
    b.spawn();
    b.wait_up(&cloud, T).await;
    let s = cloud.wait_status(&id, "ERROR", T).await;
    assert!(s["OS-EXT-STS:task_state"].is_null(), "{s}");
    assert_eq!(
        engine(&engine_b.socket(), &["ps", "-q", "--filter", &format!("name={container}")]),
        "",
        "nothing of the instance runs on B"
    );
    assert_eq!(migrations(&cloud, &id).await.first().map(|m| m["migration_type"].clone()), Some(json!("evacuation")));

    // Out of it as Nova offers: where the instance is now.
    let now_on = s["OS-EXT-SRV-ATTR:host"].as_str().unwrap_or_default().to_string();
    let (status, v) = if now_on == name_b {
        cloud.action(&id, json!({"rebuild": {"imageRef": image}})).await
    } else {
        assert_eq!(now_on, name_a, "{s}");
        cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(evacuate), "2.68").await
    };
    assert!(status == 200 || status == 202, "{v}");
    // (Nova shows ERROR until the rebuild of an ERROR instance is done: no
    // wait_status, which takes ERROR for a failure; a new fault would be.)
    let old_fault = s["fault"]["created"].clone();
    wait_for("the instance ACTIVE on B again", T, async || {
        let s = cloud.server(&id).await.expect("the server exists");
        assert!(s["status"] != "ERROR" || s["fault"]["created"] == old_fault, "a new fault: {}", s["fault"]);
        s["status"] == "ACTIVE" && s["OS-EXT-STS:task_state"].is_null()
    })
    .await;
    let s = cloud.server(&id).await.expect("the server exists");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], name_b.as_str(), "{s}");
    assert_eq!(engine(&engine_b.socket(), &["inspect", "--format", "{{.State.Running}}", &container]), "true");

    cloud.delete_server(&id, T).await;
    force_down(&cloud, &name_a, false).await;
    drop((a, b, engine_a, engine_b));
}
