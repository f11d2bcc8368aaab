//! Rebuild, evacuate, shelve and image pre-caching through the real Nova
//! API (issue 20), and what a refused move gives back to Placement: Nova's
//! view (state, host, image, allocations of the instance and of its
//! migration) and Docker's (container, image, a file written inside).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{Release, wait_for};

const T: Duration = Duration::from_secs(120);

/// The resources a Placement consumer holds, by provider uuid.
async fn allocations(cloud: &Cloud, consumer: &str) -> serde_json::Map<String, Value> {
    let v = cloud.placement(&format!("/allocations/{consumer}")).await;
    let by_rp = v["allocations"].as_object().cloned().unwrap_or_default();
    by_rp.into_iter().map(|(rp, a)| (rp, a["resources"].clone())).collect()
}

/// The server's migrations (newest first), with their uuids (2.59).
async fn migrations(cloud: &Cloud, server: &str) -> Vec<Value> {
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
    let b = ComputeHost::start(&cloud, &b_name, "").await;
    let a_rp = cloud.wait_provider(&a_name, T).await["uuid"].as_str().unwrap().to_string();
    let b_rp = cloud.wait_provider(&b_name, T).await["uuid"].as_str().unwrap().to_string();
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
