//! Resize and cold migration through the API as users run them (issue 20),
//! on both releases: on one host (`allow_resize_to_same_host`) and between
//! two hosts, each with its own Docker engine, with revert and confirm.
//! Checked on Nova's side (status, host, flavor, the migration record, the
//! Placement allocations of the instance and of the migration) and on
//! Docker's (which engine runs the container, its memory limit, a file
//! written inside before the move).
//!
//! Hosts are pinned without disturbing other tests: a resize's new flavor
//! requires a custom trait only this test's host has; a cold migration
//! names its target host (microversion 2.56).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, Tenant, host_name};
use crate::common::{self, Release, wait_for};
use crate::faults::PrivateDocker;

const T: Duration = Duration::from_secs(180);
const NANO_MB: i64 = 128;
const BIG_MB: i64 = 256;

/// `docker` on an engine (None: the machine's).
fn docker(engine: Option<&PrivateDocker>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("docker");
    if let Some(e) = engine {
        cmd.arg("-H").arg(format!("unix://{}", e.socket().display()));
    }
    let out = cmd.args(args).output().expect("docker runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The container's running state and memory limit on an engine (None
/// when it has no container of the server).
fn container(engine: Option<&PrivateDocker>, server: &str) -> Option<(bool, i64)> {
    let name = format!("nova-{server}");
    let (ok, out) = docker(engine, &["inspect", "-f", "{{.State.Running}} {{.HostConfig.Memory}}", &name]);
    if !ok {
        return None;
    }
    let (running, memory) = out.split_once(' ')?;
    Some((running == "true", memory.parse().ok()?))
}

fn read_file(engine: Option<&PrivateDocker>, server: &str) -> String {
    docker(engine, &["exec", &format!("nova-{server}"), "cat", "/moved.txt"]).1
}

async fn placement_put(cloud: &Cloud, path: &str, body: Option<Value>) -> u16 {
    let mut req = reqwest::Client::new()
        .put(format!("{}{path}", cloud.var("ND_PLACEMENT")))
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .header("OpenStack-API-Version", "placement 1.36")
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Adds a custom trait to a host's provider (kept by the host, which only
/// manages its own traits).
pub(crate) async fn add_trait(cloud: &Cloud, provider: &str, name: &str) {
    assert!(placement_put(cloud, &format!("/traits/{name}"), None).await < 300);
    for _ in 0..10 {
        let v = cloud.placement(&format!("/resource_providers/{provider}/traits")).await;
        let mut traits: Vec<Value> = v["traits"].as_array().cloned().unwrap_or_default();
        traits.push(json!(name));
        let body = json!({"resource_provider_generation": v["resource_provider_generation"], "traits": traits});
        if placement_put(cloud, &format!("/resource_providers/{provider}/traits"), Some(body)).await == 200 {
            return;
        }
    }
    panic!("could not add trait {name} to {provider}");
}

/// A public flavor of `ram` MiB that only providers with `required_trait` fit.
pub(crate) async fn pinned_flavor(cloud: &Cloud, ram: i64, required_trait: &str) -> String {
    let body = json!({"flavor": {"name": common::unique("nd-moves"), "ram": ram, "vcpus": 1, "disk": 1}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/flavors", Some(body), "2.88").await;
    assert_eq!(status, 200, "{v}");
    let id = v["flavor"]["id"].as_str().unwrap().to_string();
    let specs = json!({"extra_specs": {format!("trait:{required_trait}"): "required"}});
    let (status, v) =
        cloud.nova(reqwest::Method::POST, &format!("/flavors/{id}/os-extra_specs"), Some(specs), "2.88").await;
    assert_eq!(status, 200, "{v}");
    id
}

pub(crate) async fn delete_flavor(cloud: &Cloud, id: &str) {
    cloud.nova(reqwest::Method::DELETE, &format!("/flavors/{id}"), None, "2.88").await;
}

/// The server's newest migration record (microversion 2.59 shows its uuid).
pub(crate) async fn migration(cloud: &Cloud, server: &str) -> Value {
    let (_, v) =
        cloud.nova(reqwest::Method::GET, &format!("/os-migrations?instance_uuid={server}"), None, "2.59").await;
    let list = v["migrations"].as_array().cloned().unwrap_or_default();
    list.into_iter().max_by_key(|m| m["id"].as_i64().unwrap_or(0)).unwrap_or_else(|| panic!("no migration: {v}"))
}

/// `{provider uuid: MEMORY_MB}` of a consumer's allocations.
async fn memory_allocations(cloud: &Cloud, consumer: &str) -> Vec<(String, i64)> {
    let v = cloud.placement(&format!("/allocations/{consumer}")).await;
    let mut out: Vec<(String, i64)> = v["allocations"]
        .as_object()
        .map(|m| m.iter().map(|(rp, a)| (rp.clone(), a["resources"]["MEMORY_MB"].as_i64().unwrap_or(0))).collect())
        .unwrap_or_default();
    out.sort();
    out
}

async fn write_file(engine: Option<&PrivateDocker>, server: &str, text: &str) {
    let cmd = format!("echo {text} > /moved.txt");
    let (ok, out) = docker(engine, &["exec", &format!("nova-{server}"), "sh", "-c", &cmd]);
    assert!(ok, "write a file in the instance: {out}");
}

/// Waits for the resize's end as the API shows it; panics on ERROR.
async fn wait_verify(cloud: &Cloud, id: &str) -> Value {
    cloud.wait_status(id, "VERIFY_RESIZE", T).await
}

/// No Glance image is left of a migration.
async fn no_migration_image(cloud: &Cloud, migration: &str) {
    // The image is hidden (os_hidden): Glance lists hidden images only when asked.
    for hidden in ["", "&os_hidden=true"] {
        let url = format!("{}/v2/images?name=nova-docker-migration-{migration}{hidden}", cloud.var("ND_GLANCE"));
        let v: Value = reqwest::Client::new()
            .get(&url)
            .header("X-Auth-Token", cloud.var("ND_TOKEN"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["images"], json!([]), "the migration's Glance image was left: {v}");
    }
}

async fn resize_on_one_host(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("resize1");
    let host = ComputeHost::start(&cloud, &name, "").await;
    let rp = cloud.wait_provider(&name, T).await["uuid"].as_str().unwrap().to_string();
    let marker = format!("CUSTOM_ND_{}", common::unique("R").replace('-', "_").to_uppercase());
    add_trait(&cloud, &rp, &marker).await;
    let big = pinned_flavor(&cloud, BIG_MB, &marker).await;

    // A tenant's server, resized by its owner.
    let token = cloud.tenant_token(Tenant::A);
    let image = cloud.public_busybox_image(&host.conf).await;
    let id = cloud.create_server_as(&token, &common::unique("nd-resize"), &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;
    assert_eq!(container(None, &id), Some((true, NANO_MB << 20)));

    let resize = |flavor: &str| json!({"resize": {"flavorRef": flavor}});
    let action = async |body: Value| {
        let (status, v) =
            cloud.nova_as(&token, reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.88").await;
        assert!(status == 202 || status == 204, "{status} {v}");
    };

    // Resize, then revert: the old limit, the file kept.
    action(resize(&big)).await;
    let s = wait_verify(&cloud, &id).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], name.as_str());
    assert_eq!(s["flavor"]["ram"], BIG_MB);
    assert_eq!(container(None, &id), Some((true, BIG_MB << 20)), "the new flavor's limit, running");
    assert_eq!(read_file(None, &id), text, "the file written before the resize");
    let m = migration(&cloud, &id).await;
    let mig = m["uuid"].as_str().unwrap().to_string();
    assert_eq!(m["status"], "finished");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp.clone(), BIG_MB)]);
    assert_eq!(memory_allocations(&cloud, &mig).await, [(rp.clone(), NANO_MB)], "the migration holds the old flavor");

    action(json!({"revertResize": null})).await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["flavor"]["ram"], NANO_MB);
    assert_eq!(container(None, &id), Some((true, NANO_MB << 20)), "the old flavor's limit again");
    assert_eq!(read_file(None, &id), text);
    wait_for("the migration to be reverted", T, async || migration(&cloud, &id).await["status"] == "reverted").await;
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "the migration's allocation went back");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp.clone(), NANO_MB)]);

    // Resize again, then confirm.
    action(resize(&big)).await;
    wait_verify(&cloud, &id).await;
    let mig = migration(&cloud, &id).await["uuid"].as_str().unwrap().to_string();
    action(json!({"confirmResize": null})).await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["flavor"]["ram"], BIG_MB);
    wait_for("the migration to be confirmed", T, async || migration(&cloud, &id).await["status"] == "confirmed").await;
    assert_eq!(container(None, &id), Some((true, BIG_MB << 20)));
    assert_eq!(read_file(None, &id), text);
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "confirm drops the migration's allocation");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp.clone(), BIG_MB)]);

    cloud.delete_server(&id, T).await;
    assert_eq!(memory_allocations(&cloud, &id).await, []);
    delete_flavor(&cloud, &big).await;
}

#[tokio::test]
async fn resize_on_one_host_revert_and_confirm() {
    resize_on_one_host(Release::Newest).await;
}

#[tokio::test]
async fn resize_on_one_host_revert_and_confirm_zed() {
    resize_on_one_host(Release::Zed).await;
}

async fn cold_migration_between_hosts(release: Release) {
    let cloud = Cloud::get(release);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd-moves"));
    let engine = PrivateDocker::start(&dir).await;
    let (a_name, b_name) = (host_name("migra"), host_name("migrb"));
    let host_a = ComputeHost::start(&cloud, &a_name, "").await;
    let extra = engine.host_conf();
    let _host_b = ComputeHost::start(&cloud, &b_name, &extra).await;
    let rp_a = cloud.wait_provider(&a_name, T).await["uuid"].as_str().unwrap().to_string();
    let rp_b = cloud.wait_provider(&b_name, T).await["uuid"].as_str().unwrap().to_string();
    let b = Some(&engine);

    let image = cloud.busybox_image(&host_a.conf).await;
    let id = cloud.create_server(&common::unique("nd-migrate"), &image, &a_name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;

    let migrate = async || {
        let body = json!({"migrate": {"host": b_name}});
        let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await;
        assert_eq!(status, 202, "{v}");
        let s = wait_verify(&cloud, &id).await;
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str());
        assert_eq!(container(b, &id), Some((true, NANO_MB << 20)), "running on B's engine");
        assert_eq!(read_file(b, &id), text, "the file moved with the instance");
        assert_eq!(container(None, &id), Some((false, NANO_MB << 20)), "A keeps its stopped container");
        let m = migration(&cloud, &id).await;
        assert_eq!((m["status"].as_str(), m["migration_type"].as_str()), (Some("finished"), Some("migration")));
        let mig = m["uuid"].as_str().unwrap().to_string();
        assert_eq!(memory_allocations(&cloud, &id).await, [(rp_b.clone(), NANO_MB)]);
        assert_eq!(memory_allocations(&cloud, &mig).await, [(rp_a.clone(), NANO_MB)]);
        no_migration_image(&cloud, &mig).await;
        mig
    };

    // Migrate to B, then revert: back on A, running, the file there.
    let mig = migrate().await;
    let (status, v) = cloud.action(&id, json!({"revertResize": null})).await;
    assert_eq!(status, 202, "{v}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
    assert_eq!(container(None, &id), Some((true, NANO_MB << 20)), "A's container running again");
    assert_eq!(read_file(None, &id), text);
    assert_eq!(container(b, &id), None, "B's container removed");
    wait_for("the migration to be reverted", T, async || migration(&cloud, &id).await["status"] == "reverted").await;
    assert_eq!(memory_allocations(&cloud, &mig).await, []);
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp_a.clone(), NANO_MB)]);

    // Migrate again, then confirm: on B only.
    let mig = migrate().await;
    let (status, v) = cloud.action(&id, json!({"confirmResize": null})).await;
    assert_eq!(status, 204, "{v}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str());
    wait_for("the migration to be confirmed", T, async || migration(&cloud, &id).await["status"] == "confirmed").await;
    wait_for("A's container to go", T, async || container(None, &id).is_none()).await;
    assert_eq!(container(b, &id), Some((true, NANO_MB << 20)));
    assert_eq!(read_file(b, &id), text);
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "confirm drops the source allocation");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp_b.clone(), NANO_MB)]);

    // Migrate back to A... deleted while waiting for confirmation: the
    // API confirms first (a call to the source), then deletes.
    let body = json!({"migrate": {"host": a_name}});
    let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await;
    assert_eq!(status, 202, "{v}");
    let s = wait_verify(&cloud, &id).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
    let mig = migration(&cloud, &id).await["uuid"].as_str().unwrap().to_string();
    cloud.delete_server(&id, T).await;
    assert_eq!(container(b, &id), None);
    assert_eq!(container(None, &id), None);
    assert_eq!(memory_allocations(&cloud, &mig).await, []);
    assert_eq!(memory_allocations(&cloud, &id).await, []);
}

#[tokio::test]
async fn cold_migration_between_hosts_revert_and_confirm() {
    cold_migration_between_hosts(Release::Newest).await;
}

#[tokio::test]
async fn cold_migration_between_hosts_revert_and_confirm_zed() {
    cold_migration_between_hosts(Release::Zed).await;
}

/// A same-host resize of a server with a port, on the host name the
/// release's L2 agent serves (`ND_NET_HOST`, the only one Neutron binds
/// to in the test clouds): the port stays bound here and is plugged into
/// the new container, and again into the one a revert makes.
#[tokio::test]
async fn resize_with_a_port_replugs_it_newest() {
    let cloud = Cloud::get(Release::Newest);
    let name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let host = ComputeHost::start(&cloud, &name, "").await;
    let rp = cloud.wait_provider(&name, T).await["uuid"].as_str().unwrap().to_string();
    let marker = format!("CUSTOM_ND_{}", common::unique("P").replace('-', "_").to_uppercase());
    add_trait(&cloud, &rp, &marker).await;
    let big = pinned_flavor(&cloud, BIG_MB, &marker).await;
    let image = cloud.busybox_image(&host.conf).await;
    let body = json!({"server": {"name": common::unique("nd-resize-port"), "imageRef": image, "flavorRef": "42",
        "networks": [{"uuid": net}], "availability_zone": format!("nova:{name}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    cloud.wait_status(&id, "ACTIVE", T).await;
    let ports = crate::network::ports_of(&cloud, &id).await;
    assert_eq!(ports.len(), 1);
    let (port, mac) =
        (ports[0]["id"].as_str().unwrap().to_string(), ports[0]["mac_address"].as_str().unwrap().to_string());
    let plugged = async || {
        let (_, link) = crate::network::exec(&format!("nova-{id}"), "cat /sys/class/net/eth0/address").await;
        assert!(link.contains(&mac), "the port is plugged into the container: {link}");
        wait_for("the port to be active again", T, async || {
            let p = crate::network::ports_of(&cloud, &id).await;
            p[0]["status"] == "ACTIVE" && p[0]["binding:host_id"] == name.as_str()
        })
        .await;
    };

    let (status, v) = cloud.action(&id, json!({"resize": {"flavorRef": big}})).await;
    assert_eq!(status, 202, "{v}");
    wait_verify(&cloud, &id).await;
    assert_eq!(container(None, &id), Some((true, BIG_MB << 20)));
    plugged().await;

    let (status, v) = cloud.action(&id, json!({"revertResize": null})).await;
    assert_eq!(status, 202, "{v}");
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(container(None, &id), Some((true, NANO_MB << 20)));
    plugged().await;
    assert_eq!(crate::network::ports_of(&cloud, &id).await[0]["id"], port.as_str(), "the same port");

    cloud.delete_server(&id, T).await;
    delete_flavor(&cloud, &big).await;
}

/// A resize the scheduler first sends to a host that cannot take it (its
/// Docker engine is down, the host itself up) is refused there and
/// rescheduled by the conductor to the alternate host, as with Python
/// nova-compute: the instance moves from C to B, not to A.
async fn resize_rescheduled_to_the_alternate(release: Release) {
    let cloud = Cloud::get(release);
    let (a_name, b_name, c_name) = (host_name("reschda"), host_name("reschdb"), host_name("reschdc"));
    let engine_a = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-ra"))).await;
    let engine_b = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-rb"))).await;
    let host_c = ComputeHost::start(&cloud, &c_name, "").await;
    let _host_a = ComputeHost::start(&cloud, &a_name, &engine_a.host_conf()).await;
    // B reports much less free memory: the RAM weigher puts A first.
    let extra = format!(
        "[DEFAULT]\nreserved_host_memory_mb = 8192\n[docker]\nhost_url = unix://{}\n",
        engine_b.socket().display()
    );
    let _host_b = ComputeHost::start(&cloud, &b_name, &extra).await;
    let marker = format!("CUSTOM_ND_{}", common::unique("S").replace('-', "_").to_uppercase());
    for name in [&a_name, &b_name] {
        let rp = cloud.wait_provider(name, T).await["uuid"].as_str().unwrap().to_string();
        add_trait(&cloud, &rp, &marker).await;
    }
    let big = pinned_flavor(&cloud, BIG_MB, &marker).await;
    let image = cloud.busybox_image(&host_c.conf).await;
    let id = cloud.create_server(&common::unique("nd-resched"), &image, &c_name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;
    drop(engine_a);

    let (status, v) = cloud.action(&id, json!({"resize": {"flavorRef": big}})).await;
    assert_eq!(status, 202, "{v}");
    let s = wait_verify(&cloud, &id).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str(), "rescheduled to the alternate");
    assert_eq!(container(Some(&engine_b), &id), Some((true, BIG_MB << 20)));
    assert_eq!(read_file(Some(&engine_b), &id), text);
    let actions = cloud.actions(&id).await;
    let prep_hosts: Vec<String> = actions
        .iter()
        .flat_map(|a| a["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event"] == "compute_prep_resize")
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect();
    assert!(prep_hosts.contains(&a_name) && prep_hosts.contains(&b_name), "tried A, then B: {prep_hosts:?}");
    let (status, v) = cloud.action(&id, json!({"confirmResize": null})).await;
    assert_eq!(status, 204, "{v}");
    cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(container(None, &id), None, "C's container went with the confirm");
    cloud.delete_server(&id, T).await;
    delete_flavor(&cloud, &big).await;
}

#[tokio::test]
async fn resize_refused_here_is_rescheduled_to_the_alternate() {
    resize_rescheduled_to_the_alternate(Release::Newest).await;
}

#[tokio::test]
async fn resize_refused_here_is_rescheduled_to_the_alternate_zed() {
    resize_rescheduled_to_the_alternate(Release::Zed).await;
}

/// SIGKILL of the source while it hands the instance's filesystem over
/// (its Glance traffic held), then a restart: the move is rolled back as
/// Nova's start-up does (the instance runs on the source again, files
/// intact), and nothing is left: no container on the destination, no
/// allocation held by the migration, no Glance image of the move.
async fn source_killed_during_a_migration(release: Release) {
    let cloud = Cloud::get(release);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = crate::proxy::Relay::start(&glance).await;
    let engine = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-kill"))).await;
    let (a_name, b_name) = (host_name("killa"), host_name("killb"));
    // A host reaches Glance with the request's token; at start-up there is
    // none, so the clean-up of the move's image needs credentials of its own.
    let mut glance_conf = format!("[glance]\nendpoint_override = {}\n", relay.url);
    if cloud.keystone() {
        glance_conf += &format!(
            "auth_type = password\nauth_url = {}\nusername = {}\npassword = {}\nproject_name = {}\n\
             user_domain_name = Default\nproject_domain_name = Default\n",
            cloud.var("ND_KEYSTONE"),
            cloud.var("ND_ADMIN_USER"),
            cloud.var("ND_ADMIN_PASSWORD"),
            cloud.var("ND_ADMIN_PROJECT")
        );
    }
    let mut host_a = ComputeHost::start(&cloud, &a_name, &glance_conf).await;
    let extra = engine.host_conf();
    let _host_b = ComputeHost::start(&cloud, &b_name, &extra).await;
    let rp_a = cloud.wait_provider(&a_name, T).await["uuid"].as_str().unwrap().to_string();
    let image = cloud.busybox_image(&host_a.conf).await;
    let id = cloud.create_server(&common::unique("nd-migrate-kill"), &image, &a_name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;

    relay.hold();
    let body = json!({"migrate": {"host": b_name}});
    let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await;
    assert_eq!(status, 202, "{v}");
    wait_for("the source to stop and commit the instance", T, async || {
        let s = cloud.server(&id).await.unwrap();
        s["OS-EXT-STS:task_state"] == "resize_migrating" && container(None, &id).is_some_and(|(running, _)| !running)
    })
    .await;
    let mig = migration(&cloud, &id).await["uuid"].as_str().unwrap().to_string();
    // Whether the source got as far as creating the Glance image (the
    // relay holds its transfers, but the record may be written first).
    let image_created = migration_image_exists(&cloud, &mig).await;
    host_a.kill().await;
    relay.release();
    host_a.spawn();
    host_a.wait_up(&cloud, T).await;

    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
    wait_for("the instance to run again", T, async || container(None, &id).is_some_and(|(running, _)| running)).await;
    assert_eq!(read_file(None, &id), text);
    assert_eq!(container(Some(&engine), &id), None, "nothing on the destination");
    wait_for("the migration to be in error", T, async || migration(&cloud, &id).await["status"] == "error").await;
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "no allocation left on the migration");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp_a.clone(), NANO_MB)]);
    no_migration_image(&cloud, &mig).await;
    if image_created {
        assert!(host_a.log_text().contains("deleted the interrupted migration's Glance image"));
    }
    eprintln!(
        "the source was killed {} the move's Glance image existed",
        if image_created { "once" } else { "before" }
    );
    cloud.delete_server(&id, T).await;
}

async fn migration_image_exists(cloud: &Cloud, migration: &str) -> bool {
    let url = format!("{}/v2/images?name=nova-docker-migration-{migration}", cloud.var("ND_GLANCE"));
    let v: Value = reqwest::Client::new()
        .get(&url)
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["images"].as_array().is_some_and(|a| !a.is_empty())
}

#[tokio::test]
async fn source_killed_during_a_migration_rolls_back() {
    source_killed_during_a_migration(Release::Newest).await;
}

#[tokio::test]
async fn source_killed_during_a_migration_rolls_back_zed() {
    source_killed_during_a_migration(Release::Zed).await;
}

/// `resize_confirm_window` on the destination: a cold migration left in
/// VERIFY_RESIZE is confirmed by the destination's periodic pass once the
/// window has passed (Nova's `_poll_unconfirmed_resizes`): the source's
/// container and the migration's allocation go, the server is ACTIVE on the
/// destination with its files.
async fn unconfirmed_migration_confirmed_after_the_window(release: Release) {
    let cloud = Cloud::get(release);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd-confirm"));
    let engine = PrivateDocker::start(&dir).await;
    let (a_name, b_name) = (host_name("cwina"), host_name("cwinb"));
    let host_a = ComputeHost::start(&cloud, &a_name, "").await;
    let extra =
        format!("[DEFAULT]\nresize_confirm_window = 2\n[docker]\nhost_url = unix://{}\n", engine.socket().display());
    let _host_b = ComputeHost::start(&cloud, &b_name, &extra).await;
    cloud.wait_provider(&a_name, T).await;
    let rp_b = cloud.wait_provider(&b_name, T).await["uuid"].as_str().unwrap().to_string();
    let b = Some(&engine);

    let image = cloud.busybox_image(&host_a.conf).await;
    let id = cloud.create_server(&common::unique("nd-cwin"), &image, &a_name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;
    let body = json!({"migrate": {"host": b_name}});
    let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await;
    assert_eq!(status, 202, "{v}");

    // Nobody confirms: the destination does, after the window.
    wait_for("the migration to be confirmed", T, async || {
        let (_, v) =
            cloud.nova(reqwest::Method::GET, &format!("/os-migrations?instance_uuid={id}"), None, "2.59").await;
        let s = cloud.server(&id).await.unwrap_or_default();
        assert_ne!(s["status"], "ERROR", "{s}");
        v["migrations"].as_array().is_some_and(|l| l.iter().any(|m| m["status"] == "confirmed"))
    })
    .await;
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str());
    wait_for("A's container to go", T, async || container(None, &id).is_none()).await;
    assert_eq!(read_file(b, &id), text);
    let mig = migration(&cloud, &id).await["uuid"].as_str().unwrap().to_string();
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "confirm drops the source allocation");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp_b, NANO_MB)]);
    let actions = cloud.actions(&id).await;
    assert!(actions.iter().any(|a| a["action"] == "confirmResize"), "{actions:?}");
    cloud.delete_server(&id, T).await;
}

#[tokio::test]
async fn unconfirmed_migration_is_confirmed_after_the_window() {
    unconfirmed_migration_confirmed_after_the_window(Release::Newest).await;
}

#[tokio::test]
async fn unconfirmed_migration_is_confirmed_after_the_window_zed() {
    unconfirmed_migration_confirmed_after_the_window(Release::Zed).await;
}

/// A build the scheduler first sends to a host whose Docker engine is down
/// (the host itself up) fails there and goes back to the conductor with the
/// alternate hosts, as with Python nova-compute's `RescheduledException`:
/// the server ends ACTIVE on the alternate, with one allocation, there.
async fn build_rescheduled_to_the_alternate(release: Release) {
    let cloud = Cloud::get(release);
    let (a_name, b_name) = (host_name("bresa"), host_name("bresb"));
    let engine_a = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-ba"))).await;
    let engine_b = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-bb"))).await;
    let host_a = ComputeHost::start(&cloud, &a_name, &engine_a.host_conf()).await;
    // B reports much less free memory: the RAM weigher puts A first.
    let extra = format!(
        "[DEFAULT]\nreserved_host_memory_mb = 8192\n[docker]\nhost_url = unix://{}\n",
        engine_b.socket().display()
    );
    let _host_b = ComputeHost::start(&cloud, &b_name, &extra).await;
    let marker = format!("CUSTOM_ND_{}", common::unique("B").replace('-', "_").to_uppercase());
    let mut rp_b = String::new();
    for name in [&a_name, &b_name] {
        let rp = cloud.wait_provider(name, T).await["uuid"].as_str().unwrap().to_string();
        add_trait(&cloud, &rp, &marker).await;
        rp_b = rp;
    }
    let flavor = pinned_flavor(&cloud, NANO_MB, &marker).await;
    let image = cloud.busybox_image(&host_a.conf).await;
    drop(engine_a);

    let body = json!({"server": {"name": common::unique("nd-bresched"), "imageRef": image, "flavorRef": flavor,
        "networks": "none"}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str(), "rescheduled to the alternate");
    assert_eq!(container(Some(&engine_b), &id).map(|c| c.0), Some(true));
    let hosts: Vec<String> = cloud
        .actions(&id)
        .await
        .iter()
        .flat_map(|a| a["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event"] == "compute__do_build_and_run_instance")
        .filter_map(|e| e["host"].as_str().map(str::to_string))
        .collect();
    assert!(hosts.contains(&a_name) && hosts.contains(&b_name), "tried A, then B: {hosts:?}");
    assert_eq!(memory_allocations(&cloud, &id).await, [(rp_b, NANO_MB)], "nothing left held on A");
    cloud.delete_server(&id, T).await;
    delete_flavor(&cloud, &flavor).await;
}

#[tokio::test]
async fn build_failing_here_is_rescheduled_to_the_alternate() {
    build_rescheduled_to_the_alternate(Release::Newest).await;
}

#[tokio::test]
async fn build_failing_here_is_rescheduled_to_the_alternate_zed() {
    build_rescheduled_to_the_alternate(Release::Zed).await;
}

/// Boots a server in server group `group` forced onto `host`.
pub(crate) async fn boot_in_group(cloud: &Cloud, image: &str, host: &str, group: &str) -> String {
    let body = json!({"server": {"name": common::unique("nd-grp"), "imageRef": image, "flavorRef": "42",
        "networks": "none", "availability_zone": format!("nova:{host}")}, "os:scheduler_hints": {"group": group}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    v["server"]["id"].as_str().unwrap().to_string()
}

/// The late server-group check (Nova's `_validate_instance_group_policy`)
/// against the real conductor: a host forced past the scheduler's filters
/// (no retry then) still refuses a second anti-affinity member on it, and a
/// second affinity member away from the first's host, with Nova's fault.
async fn late_group_policy_check(release: Release) {
    let cloud = Cloud::get(release);
    let (a_name, b_name) = (host_name("grpa"), host_name("grpb"));
    let host_a = ComputeHost::start(&cloud, &a_name, "").await;
    let _host_b = ComputeHost::start(&cloud, &b_name, "").await;
    let image = cloud.busybox_image(&host_a.conf).await;
    for (policy, second_host, violated) in
        [("anti-affinity", &a_name, "Anti-affinity"), ("affinity", &b_name, "Affinity")]
    {
        let body = json!({"server_group": {"name": common::unique("nd-grp"), "policy": policy}});
        let (status, v) = cloud.nova(reqwest::Method::POST, "/os-server-groups", Some(body), "2.64").await;
        assert_eq!(status, 200, "{v}");
        let group = v["server_group"]["id"].as_str().unwrap().to_string();
        let first = boot_in_group(&cloud, &image, &a_name, &group).await;
        cloud.wait_status(&first, "ACTIVE", T).await;
        let second = boot_in_group(&cloud, &image, second_host, &group).await;
        let s = cloud.wait_status(&second, "ERROR", T).await;
        let fault = s["fault"]["message"].as_str().unwrap_or_default();
        assert!(fault.contains(&format!("{violated} instance group policy was violated")), "{policy}: {}", s["fault"]);
        for id in [&first, &second] {
            cloud.delete_server(id, T).await;
        }
        let (status, _) =
            cloud.nova(reqwest::Method::DELETE, &format!("/os-server-groups/{group}"), None, "2.64").await;
        assert_eq!(status, 204);
    }
}

#[tokio::test]
async fn late_group_policy_check_refuses_a_forced_host_that_breaks_it() {
    late_group_policy_check(Release::Newest).await;
}

#[tokio::test]
async fn late_group_policy_check_refuses_a_forced_host_that_breaks_it_zed() {
    late_group_policy_check(Release::Zed).await;
}

/// The late server-group check of a cold migration (Nova's `prep_resize`),
/// through the real Nova: two members of an anti-affinity group, on hosts
/// A and B, are migrated to host C at the same moment. The scheduler's
/// anti-affinity filter sees each request alone (the group's hosts as they
/// were, A and B) and lets both through; C takes the first and refuses the
/// second: that one stays ACTIVE on its host with the violation as its
/// fault, its migration in error and nothing held on C for it.
async fn racing_migrations_into_anti_affinity(release: Release) {
    let cloud = Cloud::get(release);
    let engine_c = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-race"))).await;
    let (a_name, b_name, c_name) = (host_name("racea"), host_name("raceb"), host_name("racec"));
    let host_a = ComputeHost::start(&cloud, &a_name, "").await;
    let _host_b = ComputeHost::start(&cloud, &b_name, "").await;
    let _host_c = ComputeHost::start(&cloud, &c_name, &engine_c.host_conf()).await;
    let rp_c = cloud.wait_provider(&c_name, T).await["uuid"].as_str().unwrap().to_string();
    let image = cloud.busybox_image(&host_a.conf).await;
    let body = json!({"server_group": {"name": common::unique("nd-race"), "policy": "anti-affinity"}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/os-server-groups", Some(body), "2.64").await;
    assert_eq!(status, 200, "{v}");
    let group = v["server_group"]["id"].as_str().unwrap().to_string();
    let on_a = boot_in_group(&cloud, &image, &a_name, &group).await;
    let on_b = boot_in_group(&cloud, &image, &b_name, &group).await;
    cloud.wait_status(&on_a, "ACTIVE", T).await;
    cloud.wait_status(&on_b, "ACTIVE", T).await;

    let migrate = async |id: &str| {
        let body = json!({"migrate": {"host": c_name}});
        cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await
    };
    let (ra, rb) = tokio::join!(migrate(&on_a), migrate(&on_b));
    assert_eq!((ra.0, rb.0), (202, 202), "the scheduler let both through: {ra:?} {rb:?}");
    let mut landed = Vec::new();
    let mut refused: Vec<(String, Value)> = Vec::new();
    wait_for("both migrations to end", T, async || {
        landed.clear();
        refused.clear();
        for (id, home) in [(&on_a, &a_name), (&on_b, &b_name)] {
            let s = cloud.server(id).await.unwrap();
            match (s["status"].as_str(), s["OS-EXT-STS:task_state"].is_null()) {
                (Some("VERIFY_RESIZE"), true) => landed.push(id.clone()),
                (Some("ACTIVE"), true)
                    if s["OS-EXT-SRV-ATTR:host"] == home.as_str()
                        && migration(&cloud, id).await["status"] == "error" =>
                {
                    refused.push((id.clone(), s));
                }
                _ => {}
            }
        }
        landed.len() + refused.len() == 2
    })
    .await;
    assert_eq!((landed.len(), refused.len()), (1, 1), "one lands on C, one is refused there: {refused:?}");
    let (id, _) = &refused[0];
    // The API shows an ACTIVE server's fault nowhere but in its action's
    // event (details, 2.84).
    let events: Vec<Value> = cloud
        .actions(id)
        .await
        .iter()
        .flat_map(|a| a["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event"] == "compute_prep_resize")
        .collect();
    assert!(
        events.iter().any(|e| e["result"] == "Error"
            && e["details"].as_str().unwrap_or_default().contains("Anti-affinity instance group policy was violated")),
        "{events:?}"
    );
    let mig = migration(&cloud, id).await["uuid"].as_str().unwrap().to_string();
    assert_eq!(memory_allocations(&cloud, &mig).await, [], "the refused migration holds nothing");
    assert!(
        !memory_allocations(&cloud, id).await.iter().any(|(rp, _)| *rp == rp_c),
        "nothing held on C for the refused member"
    );
    assert_eq!(container(None, id).map(|c| c.0), Some(true), "the refused member still runs where it was");

    let (status, v) = cloud.action(&landed[0], json!({"confirmResize": null})).await;
    assert_eq!(status, 204, "{v}");
    cloud.wait_status(&landed[0], "ACTIVE", T).await;
    for id in [&on_a, &on_b] {
        cloud.delete_server(id, T).await;
    }
    let (status, _) = cloud.nova(reqwest::Method::DELETE, &format!("/os-server-groups/{group}"), None, "2.64").await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn racing_migrations_into_anti_affinity_are_refused_on_the_destination() {
    racing_migrations_into_anti_affinity(Release::Newest).await;
}

#[tokio::test]
async fn racing_migrations_into_anti_affinity_are_refused_on_the_destination_zed() {
    racing_migrations_into_anti_affinity(Release::Zed).await;
}

/// A compute host running as the ovn control plane's second chassis
/// (`ND_NET_HOST2`, integration bridge `ND_NET_BRIDGE2`) on its own Docker
/// engine: the template's `[neutron] ovs_bridge` names the first chassis'
/// bridge, so it is rewritten before the host starts.
pub(crate) async fn second_chassis_host(cloud: &Cloud, engine: &PrivateDocker) -> ComputeHost {
    let name = cloud.var("ND_NET_HOST2").to_string();
    let bridge = cloud.var("ND_NET_BRIDGE2").to_string();
    assert!(!name.is_empty() && !bridge.is_empty(), "the control plane has a second chassis (ovn up)");
    let mut host = ComputeHost::configure(cloud, &name, &engine.host_conf());
    let conf = std::fs::read_to_string(&host.conf).unwrap();
    let line = format!("ovs_bridge = {}\n", cloud.var("ND_NET_BRIDGE"));
    assert!(conf.contains(&line), "the template sets {line}");
    std::fs::write(&host.conf, conf.replace(&line, &format!("ovs_bridge = {bridge}\n"))).unwrap();
    host.spawn();
    host.wait_up(cloud, Duration::from_secs(60)).await;
    cloud.map_host(&name).await;
    cloud.wait_inventory(&name, Duration::from_secs(60)).await;
    host
}

/// The OVS bridge the tap of `port` is in (None: in no bridge).
pub(crate) fn bridge_of_port(cloud: &Cloud, port: &str) -> Option<String> {
    let tap = format!("tap{}", &port[..11]);
    let out = std::process::Command::new("ovs-vsctl")
        .arg(format!("--db={}", cloud.var("ND_OVS_DB")))
        .args(["iface-to-br", &tap])
        .output()
        .expect("ovs-vsctl runs");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Boots a server with a port on the seeded network, on `host`.
pub(crate) async fn boot_with_port(cloud: &Cloud, name: &str, image: &str, host: &str, flavor: &str) -> String {
    let body = json!({"server": {"name": common::unique(name), "imageRef": image, "flavorRef": flavor,
        "networks": [{"uuid": cloud.var("ND_NETWORK_ID")}], "availability_zone": format!("nova:{host}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    v["server"]["id"].as_str().unwrap().to_string()
}

/// The server's only port is bound to `host`, ACTIVE, its tap in `bridge`,
/// and plugged as eth0 (its MAC) into the container on `engine`; returns
/// the port.
pub(crate) async fn port_plugged_on(
    cloud: &Cloud,
    engine: Option<&PrivateDocker>,
    server: &str,
    host: &str,
    bridge: &str,
) -> Value {
    wait_for(&format!("the port to be ACTIVE on {host}"), T, async || {
        let p = crate::network::ports_of(cloud, server).await;
        p.len() == 1 && p[0]["status"] == "ACTIVE" && p[0]["binding:host_id"] == host
    })
    .await;
    let port = crate::network::ports_of(cloud, server).await.remove(0);
    let id = port["id"].as_str().unwrap();
    assert_eq!(bridge_of_port(cloud, id).as_deref(), Some(bridge), "the tap of {id} is in {bridge}");
    let (ok, mac) = docker(engine, &["exec", &format!("nova-{server}"), "cat", "/sys/class/net/eth0/address"]);
    assert!(ok, "eth0 in the container: {mac}");
    assert_eq!(mac, port["mac_address"].as_str().unwrap(), "the port's MAC on eth0");
    port
}

/// Waits until a ping from `from` (on the machine's engine) to `ip` answers.
pub(crate) async fn wait_ping(from: &str, ip: &str, why: &str) {
    let cmd = format!("ping -c1 -W2 {ip}");
    wait_for(&format!("{from} to ping {ip}: {why}"), T, async || {
        crate::network::exec(&format!("nova-{from}"), &cmd).await.0
    })
    .await;
}

/// A cold migration of a server with a port between the ovn control
/// plane's two chassis: A = `ND_NET_HOST` on the machine's Docker engine, B
/// = `ND_NET_HOST2` on its own. The port follows the instance (binding,
/// tap in the destination's integration bridge, eth0 with its MAC), a
/// server left on A reaches it across the chassis, and a revert brings it
/// back plugged on A.
#[tokio::test]
async fn cold_migration_with_a_port_between_chassis_ovn() {
    let cloud = Cloud::get(Release::Ovn);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd-chassis2"));
    let engine = PrivateDocker::start(&dir).await;
    let (a_name, a_br) = (cloud.var("ND_NET_HOST").to_string(), cloud.var("ND_NET_BRIDGE").to_string());
    let (b_name, b_br) = (cloud.var("ND_NET_HOST2").to_string(), cloud.var("ND_NET_BRIDGE2").to_string());
    let host_a = ComputeHost::start(&cloud, &a_name, "").await;
    let _host_b = second_chassis_host(&cloud, &engine).await;
    let b = Some(&engine);
    let image = cloud.busybox_image(&host_a.conf).await;
    let ping_flavor = crate::network::ping_flavor(&cloud).await;

    let id = boot_with_port(&cloud, "nd-migrate-port", &image, &a_name, "42").await;
    let pinger = boot_with_port(&cloud, "nd-pinger", &image, &a_name, &ping_flavor).await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    cloud.wait_status(&pinger, "ACTIVE", T).await;
    let port = port_plugged_on(&cloud, None, &id, &a_name, &a_br).await;
    let ip = crate::network::fixed_ip(&port, false);
    wait_ping(&pinger, &ip, "both on A").await;
    let text = common::unique("kept");
    write_file(None, &id, &text).await;

    let migrate = async || {
        let body = json!({"migrate": {"host": b_name}});
        let (status, v) = cloud.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.56").await;
        assert_eq!(status, 202, "{v}");
        let s = wait_verify(&cloud, &id).await;
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str());
        let moved = port_plugged_on(&cloud, b, &id, &b_name, &b_br).await;
        assert_eq!(moved["id"], port["id"], "the same port");
        assert_eq!(read_file(b, &id), text, "the file moved with the instance");
        wait_ping(&pinger, &ip, "from A to the instance on B (across the chassis)").await;
    };

    // Migrate to B, then revert: back on A, plugged on A's bridge.
    migrate().await;
    let (status, v) = cloud.action(&id, json!({"revertResize": null})).await;
    assert_eq!(status, 202, "{v}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], a_name.as_str());
    port_plugged_on(&cloud, None, &id, &a_name, &a_br).await;
    assert_eq!(read_file(None, &id), text);
    assert_eq!(container(b, &id), None, "B's container removed");
    wait_ping(&pinger, &ip, "after the revert, both on A").await;

    // Migrate again, then confirm: on B only, still reachable.
    migrate().await;
    let (status, v) = cloud.action(&id, json!({"confirmResize": null})).await;
    assert_eq!(status, 204, "{v}");
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], b_name.as_str());
    wait_for("A's container to go", T, async || container(None, &id).is_none()).await;
    port_plugged_on(&cloud, b, &id, &b_name, &b_br).await;
    wait_ping(&pinger, &ip, "after the confirm, across the chassis").await;

    for s in [&id, &pinger] {
        cloud.delete_server(s, T).await;
    }
}
