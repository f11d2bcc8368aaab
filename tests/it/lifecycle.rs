//! Instances as containers, through the real Nova API: every lifecycle
//! command, Nova's view (status, power state, actions) and Docker's
//! (container state, limits, labels), for both releases.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::proxy::Relay;

const T: Duration = Duration::from_secs(60);

async fn container(docker: &Docker, id: &str) -> Option<bollard::models::ContainerInspectResponse> {
    docker.inspect_container(&format!("nova-{id}"), None::<InspectContainerOptions>).await.ok()
}

fn started_at(c: &bollard::models::ContainerInspectResponse) -> String {
    c.state.as_ref().and_then(|s| s.started_at.clone()).unwrap_or_default()
}

async fn full_lifecycle(release: Release) {
    let cloud = Cloud::get(release);
    let docker = Docker::connect_with_unix_defaults().unwrap();
    let name = host_name("life");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;

    // create -> ACTIVE with a running, locked-down container
    let id = cloud.create_server("life", &image, &name, "1").await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], name.as_str());
    let c = container(&docker, &id).await.expect("container exists");
    assert_eq!(c.state.as_ref().unwrap().running, Some(true));
    let hc = c.host_config.clone().unwrap();
    assert_eq!(hc.memory, Some(512 * 1024 * 1024), "flavor RAM is the limit");
    assert_eq!(hc.memory_swap, Some(512 * 1024 * 1024), "no swap beyond RAM");
    assert_eq!(hc.cpu_shares, Some(1024));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(hc.security_opt.unwrap_or_default().iter().any(|o| o.starts_with("no-new-privileges")));
    assert!(hc.pids_limit.unwrap_or(0) > 0);
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["nova.instance"], id);
    assert_eq!(labels["nova.image"], image);
    assert_eq!(labels["nova.flavor"], "m1.tiny");
    assert_eq!(labels["nova.host"], name);
    assert!(labels.contains_key("nova.project") && labels.contains_key("nova.user"));
    assert_eq!(c.config.as_ref().unwrap().hostname.as_deref(), Some("life"));

    // console log shows the container's output
    let (status, out) = cloud.action(&id, json!({"os-getConsoleOutput": {"length": 10}})).await;
    assert_eq!(status, 200, "{out}");
    assert!(out["output"].as_str().unwrap().contains("nova-docker test instance life up"), "{out}");

    // soft and hard reboot restart the container
    for kind in ["SOFT", "HARD"] {
        let before = started_at(&container(&docker, &id).await.unwrap());
        let (status, _) = cloud.action(&id, json!({"reboot": {"type": kind}})).await;
        assert_eq!(status, 202);
        cloud.wait_status(&id, "ACTIVE", T).await;
        let after = container(&docker, &id).await.unwrap();
        assert_ne!(started_at(&after), before, "{kind} reboot restarted the container");
        assert_eq!(after.state.unwrap().running, Some(true));
    }

    // stop -> SHUTOFF, start -> ACTIVE
    assert_eq!(cloud.action(&id, json!({"os-stop": null})).await.0, 202);
    let s = cloud.wait_status(&id, "SHUTOFF", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 4);
    assert_eq!(container(&docker, &id).await.unwrap().state.unwrap().running, Some(false));
    assert_eq!(cloud.action(&id, json!({"os-start": null})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(container(&docker, &id).await.unwrap().state.unwrap().running, Some(true));

    // pause / unpause (freezer), suspend / resume
    assert_eq!(cloud.action(&id, json!({"pause": null})).await.0, 202);
    let s = cloud.wait_status(&id, "PAUSED", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 3);
    assert_eq!(container(&docker, &id).await.unwrap().state.unwrap().paused, Some(true));
    assert_eq!(cloud.action(&id, json!({"unpause": null})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(container(&docker, &id).await.unwrap().state.unwrap().paused, Some(false));
    assert_eq!(cloud.action(&id, json!({"suspend": null})).await.0, 202);
    let s = cloud.wait_status(&id, "SUSPENDED", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 7);
    assert_eq!(cloud.action(&id, json!({"resume": null})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;

    // diagnostics from Docker stats
    let (status, d) = cloud.nova(reqwest::Method::GET, &format!("/servers/{id}/diagnostics"), None, "2.48").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "running");
    assert_eq!(d["memory_details"]["maximum"], 512);
    assert_eq!(d["num_cpus"], 1);
    assert!(d["cpu_details"][0]["time"].as_u64().unwrap() > 0);
    let (status, d) = cloud.nova(reqwest::Method::GET, &format!("/servers/{id}/diagnostics"), None, "2.1").await;
    assert_eq!(status, 200, "{d}");
    assert!(d["memory"].as_u64().unwrap() > 0);

    // every action has its compute event, finished with Success
    let actions = cloud.actions(&id).await;
    let names: Vec<&str> = actions.iter().filter_map(|a| a["action"].as_str()).collect();
    for a in ["create", "reboot", "stop", "start", "pause", "unpause", "suspend", "resume"] {
        assert!(names.contains(&a), "{a} missing from {names:?}");
    }
    for a in &actions {
        let events = a["events"].as_array().cloned().unwrap_or_default();
        assert!(!events.is_empty(), "no compute event for {a}");
        for e in events {
            assert!(e["event"].as_str().unwrap().starts_with("compute_"), "{e}");
            assert_eq!(e["result"], "Success", "{e}");
        }
    }

    // delete -> gone in Nova, Docker and Placement
    cloud.delete_server(&id, T).await;
    assert!(container(&docker, &id).await.is_none(), "container removed");
    let alloc = cloud.placement(&format!("/allocations/{id}")).await;
    assert_eq!(alloc["allocations"], json!({}), "allocation removed");
    host.stop().await;
}

#[tokio::test]
async fn full_lifecycle_newest() {
    full_lifecycle(Release::Newest).await;
}

#[tokio::test]
async fn full_lifecycle_zed() {
    full_lifecycle(Release::Zed).await;
}

fn fault_message(s: &Value) -> String {
    s["fault"]["message"].as_str().unwrap_or_default().to_string()
}

/// Broken images end in ERROR with a clear fault; the host stays healthy.
#[tokio::test]
async fn bad_images_fail_cleanly() {
    let cloud = Cloud::get(Release::Newest);
    let docker = Docker::connect_with_unix_defaults().unwrap();
    let name = host_name("badimg");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let good = cloud.busybox_image(&host.conf).await;
    let random: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let garbage = cloud.raw_glance_image("nd-random-bytes", "docker", random).await;
    let bare = cloud.raw_glance_image("nd-bare", "bare", vec![0u8; 1024]).await;

    let id = cloud.create_server("garbage", &garbage, &name, "1").await;
    let s = cloud.wait_status(&id, "ERROR", T).await;
    let msg = fault_message(&s);
    assert!(msg.contains("not a valid docker-save archive") || msg.contains("docker load"), "fault: {msg}");
    assert!(container(&docker, &id).await.is_none());
    assert_eq!(cloud.placement(&format!("/allocations/{id}")).await["allocations"], json!({}));

    let id2 = cloud.create_server("bare", &bare, &name, "1").await;
    let s = cloud.wait_status(&id2, "ERROR", T).await;
    assert!(fault_message(&s).contains("container_format"), "fault: {}", fault_message(&s));

    // The host still builds a good image.
    let ok = cloud.create_server("good", &good, &name, "1").await;
    cloud.wait_status(&ok, "ACTIVE", T).await;
    for i in [&id, &id2, &ok] {
        cloud.delete_server(i, T).await;
    }
    host.stop().await;
}

/// A server deleted while its image is still downloading (the claim is
/// saved, the container is created as soon as the image is there) ends
/// deleted: no container, no allocation, and the host builds on.
#[tokio::test]
async fn deleted_while_its_image_downloads() {
    let cloud = Cloud::get(Release::Newest);
    let docker = Docker::connect_with_unix_defaults().unwrap();
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("delbuild");
    let extra = format!("[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    // A Glance image this host has never loaded.
    let fresh =
        cloud.docker_image_in_glance(&host.conf, "nd-busybox:latest", &common::unique("nd-delbuild"), &[]).await;

    relay.hold();
    let id = cloud.create_server("delbuild", &fresh, &name, "1").await;
    common::wait_for("the build to claim this host", T, async || {
        cloud.server(&id).await.unwrap()["OS-EXT-SRV-ATTR:host"] == name.as_str()
    })
    .await;
    let (status, _) = cloud.nova(reqwest::Method::DELETE, &format!("/servers/{id}"), None, "2.88").await;
    assert_eq!(status, 204);
    relay.release();

    common::wait_for("the server deleted during its build to be gone", T, async || cloud.server(&id).await.is_none())
        .await;
    assert!(container(&docker, &id).await.is_none(), "its container is gone");
    assert_eq!(cloud.placement(&format!("/allocations/{id}")).await["allocations"], json!({}));
    let next = cloud.create_server("after", &fresh, &name, "1").await;
    cloud.wait_status(&next, "ACTIVE", T).await;
    cloud.delete_server(&next, T).await;
    host.stop().await;
}

/// A server deleted while its build waits in this host's queue: the build
/// arrives for an instance Nova has already destroyed, its claim is
/// refused, and the container the host made beside the claim is removed
/// again; nothing stays behind and the host builds on.
#[tokio::test]
async fn deleted_before_its_build_arrives() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let cloud = Cloud::get(Release::Newest);
    let docker = Docker::connect_with_unix_defaults().unwrap();
    let name = host_name("gone");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    let pid = Pid::from_raw(host.pid().unwrap() as i32);

    kill(pid, Signal::SIGSTOP).unwrap();
    let id = cloud.create_server("gone", &image, &name, "1").await;
    let queue = format!("compute.{name}");
    common::wait_for("the build to wait in the host's queue", T, async || {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-p", cloud.var("ND_VHOST"), "list_queues", "name", "messages"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let mut f = l.split('\t');
            f.next() == Some(queue.as_str()) && f.next().and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(0) > 0
        })
    })
    .await;
    let (status, _) = cloud.nova(reqwest::Method::DELETE, &format!("/servers/{id}"), None, "2.88").await;
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(status, 204);
    assert!(cloud.server(&id).await.is_none(), "Nova deleted the unclaimed server at once");

    common::wait_for("the host to drop the build", T, async || {
        host.log_text().lines().any(|l| l.contains(&id) && l.contains("build stopped"))
    })
    .await;
    // The line comes before the removal it announces.
    common::wait_for("the dropped build's container to be removed", T, async || {
        container(&docker, &id).await.is_none()
    })
    .await;
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let out = std::process::Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until", &until.to_string()])
        .args(["--filter", &format!("label=nova.instance={id}"), "--format", "{{.Action}}"])
        .output()
        .unwrap();
    let actions = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("Docker events of the dropped build: {:?}", actions.lines().collect::<Vec<_>>());
    assert!(actions.lines().any(|a| a == "destroy"), "the container made beside the claim was removed: {actions}");
    assert_eq!(cloud.placement(&format!("/allocations/{id}")).await["allocations"], json!({}));

    let next = cloud.create_server("after", &image, &name, "1").await;
    cloud.wait_status(&next, "ACTIVE", T).await;
    cloud.delete_server(&next, T).await;
    host.stop().await;
}

/// A container stopped behind Nova's back shows SHUTOFF within seconds.
#[tokio::test]
async fn docker_stop_behind_novas_back() {
    let cloud = Cloud::get(Release::Newest);
    let docker = Docker::connect_with_unix_defaults().unwrap();
    let name = host_name("sync");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("sync", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    docker
        .stop_container(&format!("nova-{id}"), None::<bollard::query_parameters::StopContainerOptions>)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let s = cloud.wait_status(&id, "SHUTOFF", Duration::from_secs(10)).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 4);
    eprintln!("SHUTOFF seen {:?} after docker stop", started.elapsed());
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// Ten boots at once all reach ACTIVE; deleting them leaves nothing.
#[tokio::test]
async fn ten_concurrent_boots() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("par");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let names: Vec<String> = (0..10).map(|n| format!("par{n}")).collect();
    let ids: Vec<String> =
        futures::future::join_all(names.iter().map(|n| cloud.create_server(n, &image, &name, "42"))).await;
    futures::future::join_all(ids.iter().map(|id| cloud.wait_status(id, "ACTIVE", Duration::from_secs(120)))).await;
    futures::future::join_all(ids.iter().map(|id| cloud.delete_server(id, Duration::from_secs(120)))).await;
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=nova.host={name}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "containers left behind");
    host.stop().await;
}

/// What containers cannot do fails at once and leaves the server usable.
#[tokio::test]
async fn unsupported_operations_fail_fast() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("unsup");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("unsup", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", T).await;

    // A call: the API maps NotImplementedError to 501.
    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{id}/remote-consoles"),
            Some(json!({"remote_console": {"protocol": "vnc", "type": "novnc"}})),
            "2.8",
        )
        .await;
    assert_eq!(status, 501, "{v}");
    // A cast: the task state is reverted, a fault is recorded, no hang.
    let (status, v) = cloud.action(&id, json!({"rescue": null})).await;
    assert_eq!(status, 200, "{v}");
    cloud.wait_status(&id, "ACTIVE", T).await;
    let rescue = cloud.actions(&id).await.into_iter().find(|a| a["action"] == "rescue").expect("rescue action");
    assert_eq!(rescue["events"][0]["result"], "Error", "{rescue}");
    let trace = rescue["events"][0]["traceback"].as_str().unwrap_or_default();
    assert!(trace.contains("not supported"), "{rescue}");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}
