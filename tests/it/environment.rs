//! The test environment's own remedies, checked: what the suite's control
//! planes need to stay reliable under its load is proven like the rest.

use std::process::Command;

use crate::cloud::{Cloud, Tenant};
use crate::common::{Release, repo, unique};

/// Zed's services run under eventlet: a writer waiting for SQLite's lock
/// must let the lock's holder (another greenthread of the same process) run
/// and commit, not freeze the process for the busy timeout
/// (`tests/env/pylib/sitecustomize.py`).
#[test]
fn sqlite_lock_waits_let_eventlet_run() {
    let pylib = repo().join("tests/env/pylib");
    let db = std::env::temp_dir().join(format!("{}.db", unique("nd-green")));
    let out = Command::new("/usr/bin/python3")
        .arg(pylib.join("nd_sqlite_green_check.py"))
        .arg(&db)
        .env("PYTHONPATH", &pylib)
        // Short, so that the unremedied freeze fails in seconds.
        .env("ND_SQLITE_BUSY_TIMEOUT_MS", "5000")
        .output()
        .expect("python3 runs");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the second writer waited"), "{text}");
}

/// The control planes authenticate with Keystone, as a deployment does:
/// every API refuses a token Keystone did not issue and accepts the
/// admin's, and a tenant's member works in its own project only. (The
/// noauth fast mode, `ND_AUTH=noauth`, fails this test: CI must not use it.)
#[tokio::test]
async fn every_api_validates_keystone_tokens() {
    for release in [Release::Newest, Release::Zed] {
        let cloud = Cloud::get(release);
        assert!(cloud.keystone(), "{release:?} runs without Keystone (ND_AUTH=noauth)");
        let http = reqwest::Client::new();
        let apis = [
            ("nova", format!("{}/servers", cloud.var("ND_NOVA_API"))),
            ("placement", format!("{}/resource_providers", cloud.var("ND_PLACEMENT"))),
            ("glance", format!("{}/v2/images", cloud.var("ND_GLANCE"))),
            ("neutron", format!("{}/v2.0/networks", cloud.var("ND_NEUTRON"))),
        ];
        for (api, url) in &apis {
            for (token, want) in [("admin:admin", 401), (cloud.var("ND_TOKEN"), 200)] {
                let status = http.get(url).header("X-Auth-Token", token).send().await.unwrap().status().as_u16();
                assert_eq!(
                    status,
                    want,
                    "{release:?} {api} {url} with {}",
                    if want == 401 { "a forged token" } else { "the admin's" }
                );
            }
        }
        // Each member is scoped to its own project: nova lists the servers
        // of that project, and Keystone names it.
        for (tenant, project) in [(Tenant::A, cloud.var("ND_TENANT_A")), (Tenant::B, cloud.var("ND_TENANT_B"))] {
            let token = cloud.tenant_token(tenant);
            let (status, v) = cloud.nova_as(&token, reqwest::Method::GET, "/servers", None, "2.1").await;
            assert_eq!(status, 200, "{release:?} {tenant:?}: {v}");
            let url = format!("{}/auth/tokens", cloud.var("ND_KEYSTONE"));
            let v: serde_json::Value = http
                .get(&url)
                .header("X-Auth-Token", &token)
                .header("X-Subject-Token", &token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["token"]["project"]["id"].as_str(), Some(cloud.project_id(project).as_str()), "{v}");
            let roles: Vec<&str> =
                v["token"]["roles"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
            assert!(roles.contains(&"member") && !roles.contains(&"admin"), "{tenant:?}: {roles:?}");
        }
    }
}
