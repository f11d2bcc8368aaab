//! What a tenant's container can see and do, and where secrets go: checked
//! from inside a real instance and on the host.

use std::time::Duration;

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, Tenant, host_name};
use crate::common::{self, Release};

const T: Duration = Duration::from_secs(120);

async fn exec(container: &str, cmd: &str) -> (bool, String) {
    let out = tokio::process::Command::new("docker").args(["exec", container, "sh", "-c", cmd]).output().await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

fn status_field(status: &str, key: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap_or_default().trim().to_string()
}

/// The default capability set of `[docker] capabilities` as a bit mask.
fn default_caps_mask() -> u64 {
    // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7,
    // SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, AUDIT_WRITE 29.
    [0u32, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29].iter().map(|b| 1u64 << b).sum()
}

#[tokio::test]
async fn instances_are_isolated_and_secrets_stay_out() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("iso");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let secret = common::unique("nd-admin-pass-secret");
    let body = json!({"server": {"name": "iso", "imageRef": image, "flavorRef": "42", "networks": "none",
        "adminPass": secret, "metadata": {"ROLE": "web"}, "availability_zone": format!("nova:{name}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    cloud.wait_status(&id, "ACTIVE", T).await;
    let c = format!("nova-{id}");

    // Only its own processes, no host network, no Docker socket.
    let (_, ps) = exec(&c, "ps -o comm").await;
    assert!(!ps.contains("dockerd") && !ps.contains("containerd") && !ps.contains("nova-docker"), "{ps}");
    let (_, nets) = exec(&c, "ls /sys/class/net").await;
    assert_eq!(nets.split_whitespace().collect::<Vec<_>>(), ["lo"], "network mode none");
    let (socket, _) = exec(&c, "test -e /var/run/docker.sock || test -e /run/docker.sock").await;
    assert!(!socket, "the Docker socket is not reachable");
    // The minimal capability set, no-new-privileges, seccomp, a pids limit.
    let (_, st) = exec(&c, "cat /proc/self/status").await;
    let caps = u64::from_str_radix(&status_field(&st, "CapEff"), 16).unwrap();
    assert_eq!(caps, default_caps_mask(), "CapEff {caps:x}");
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    assert_eq!(status_field(&st, "Seccomp"), "2", "filtered by the engine's seccomp profile");
    let (_, pids) = exec(&c, "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max").await;
    assert_eq!(pids.trim(), "4096");
    let (mounted_as_root, _) = exec(&c, "mount -o remount,rw / 2>/dev/null").await;
    assert!(!mounted_as_root, "no CAP_SYS_ADMIN: cannot remount");

    // Metadata becomes environment; the admin password goes nowhere.
    let inspect = std::process::Command::new("docker").args(["inspect", &c]).output().unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("ROLE=web"));
    assert!(!inspect.contains(&secret), "admin password in the container's config");
    let log = host.log_text();
    assert!(!log.contains(&secret), "admin password in the service log");
    assert!(!log.contains("guest:guest@"), "broker password in the service log");
    cloud.delete_server(&id, T).await;
    host.stop().await;
    let log = host.log_text();
    assert!(!log.contains(&secret));
}

/// A host logging everything at debug level (every crate: lapin, hyper,
/// reqwest included) boots, reboots and deletes a server created with an
/// admin password: its log has neither the password, nor the user's token
/// (the request context's), nor its own Neutron token or Keystone password,
/// nor the broker's password.
#[tokio::test]
async fn debug_logs_hold_no_password_or_token() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("debuglog");
    let neutron_token = common::unique("nd-neutron-token-secret");
    let mut host = ComputeHost::configure(&cloud, &name, &format!("[neutron]\ntoken = {neutron_token}\n"));
    host.set_env("RUST_LOG", "debug");
    host.spawn();
    host.wait_up(&cloud, Duration::from_secs(60)).await;
    cloud.map_host(&name).await;
    let image = cloud.busybox_image(&host.conf).await;
    let secret = common::unique("nd-admin-pass-secret");
    let body = json!({"server": {"name": "debuglog", "imageRef": image, "flavorRef": "42", "networks": "none",
        "adminPass": secret, "availability_zone": format!("nova:{name}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    cloud.wait_status(&id, "ACTIVE", T).await;
    let (status, v) = cloud.action(&id, json!({"reboot": {"type": "HARD"}})).await;
    assert_eq!(status, 202, "{v}");
    cloud.wait_status(&id, "ACTIVE", T).await;
    let (status, v) = cloud.action(&id, json!({"os-getConsoleOutput": {"length": 5}})).await;
    assert_eq!(status, 200, "{v}");
    cloud.delete_server(&id, T).await;
    host.stop().await;
    let log = host.log_text();
    // Debug it was: the service's own lines and the libraries'.
    for target in ["DEBUG nova_docker", "DEBUG lapin", "DEBUG bollard"] {
        assert!(log.contains(target), "no {target} line: not at debug level");
    }
    let user_token = cloud.var("ND_TOKEN");
    for (what, s) in [
        ("the admin password", secret.as_str()),
        ("the user's token", user_token),
        ("the Neutron token", neutron_token.as_str()),
        // with Keystone, the host logs in with the service users' password
        (
            "the Keystone password",
            cloud.env.get("ND_SERVICE_PASSWORD").map(String::as_str).unwrap_or(neutron_token.as_str()),
        ),
        ("the broker's password", "guest:guest@"),
    ] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(s)).take(3).collect();
        assert!(hits.is_empty(), "{what} is in the debug log:\n{}", hits.join("\n"));
    }
}

/// What a build that failed for a host-side reason tells the tenant and the
/// admin, read through the real API: the tenant's fault message and action
/// event details name no host path, internal URL or address; the admin's
/// fault details hold the whole error. Two hosts fail two ways: Glance's
/// endpoint unreachable (its URL and address in the error) and an
/// `instances_path` under a file (the path in the error).
#[tokio::test]
async fn tenants_see_faults_without_host_paths_or_internal_urls() {
    let cloud = Cloud::get(Release::Newest);
    let ok_host = ComputeHost::start(&cloud, &host_name("faultimg"), "").await;
    let image = cloud.public_busybox_image(&ok_host.conf).await;
    drop(ok_host);
    let glance_down = "[glance]\nendpoint_override = http://127.0.0.1:9/nd-internal-glance\n";
    let blocked = std::env::temp_dir().join(common::unique("nd-not-a-dir"));
    std::fs::write(&blocked, b"a file where a directory should be").unwrap();
    let no_instances_path = format!("[DEFAULT]\ninstances_path = {}/instances\n", blocked.display());
    // The tenant (a member of its own project) boots; the admin looks too.
    let tenant = cloud.tenant_token(Tenant::A);
    let tenant = tenant.as_str();
    for (extra, leak) in [(glance_down.to_string(), "127.0.0.1:9"), (no_instances_path, blocked.to_str().unwrap())] {
        let name = host_name("fault");
        let mut host = ComputeHost::start(&cloud, &name, &extra).await;
        cloud.wait_inventory(&name, T).await;
        // A fresh image for the Glance case, so no cached copy hides the download.
        let image = if extra.contains("[glance]") {
            cloud.raw_glance_image(&common::unique("nd-fault"), "docker", b"not an archive".to_vec()).await
        } else {
            image.clone()
        };
        let id = cloud.create_server_as(tenant, "fault", &image, &name, "42").await;
        let admin_view = cloud.wait_status(&id, "ERROR", T).await;
        let (status, tenant_view) =
            cloud.nova_as(tenant, reqwest::Method::GET, &format!("/servers/{id}"), None, "2.88").await;
        assert_eq!(status, 200, "{tenant_view}");
        let tenant_fault = &tenant_view["server"]["fault"];
        let message = tenant_fault["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "no fault: {tenant_view}");
        assert_eq!(tenant_fault["code"], 500, "{tenant_fault}");
        assert!(tenant_fault.get("details").is_none(), "the tenant sees details: {tenant_fault}");
        for needle in [leak, "http://", "/var/", "/tmp/", "/run/", "127.0.0.1"] {
            assert!(!message.contains(needle), "the tenant's fault names {needle}: {message}");
        }
        let details = admin_view["fault"]["details"].as_str().unwrap_or_default();
        assert!(details.contains(leak), "the admin's details lack {leak}: {}", admin_view["fault"]);
        // The action event's details (2.84+) are the tenant's too.
        let (_, actions) = cloud
            .nova_as(tenant, reqwest::Method::GET, &format!("/servers/{id}/os-instance-actions"), None, "2.84")
            .await;
        let request_id = actions["instanceActions"][0]["request_id"].as_str().unwrap().to_string();
        let (_, action) = cloud
            .nova_as(
                tenant,
                reqwest::Method::GET,
                &format!("/servers/{id}/os-instance-actions/{request_id}"),
                None,
                "2.84",
            )
            .await;
        let events = action["instanceAction"]["events"].to_string();
        assert!(events.contains("compute__do_build_and_run_instance"), "{action}");
        for needle in [leak, "http://", "/tmp/", "127.0.0.1"] {
            assert!(!events.contains(needle), "the tenant's action events name {needle}: {events}");
        }
        println!("tenant sees {message:?}; admin sees {details:?}");
        cloud.delete_server(&id, T).await;
        host.stop().await;
    }
    let _ = std::fs::remove_file(&blocked);
}

/// An admin's flavor asks to hand tenants `SYS_ADMIN`: the boot fails with a
/// fault naming the capability and the allowed list, and no container is
/// created.
#[tokio::test]
async fn a_flavor_granting_sys_admin_is_refused_with_a_clear_fault() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("caps");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let flavor = "4243";
    let (status, _) = cloud.nova(reqwest::Method::GET, &format!("/flavors/{flavor}"), None, "2.88").await;
    if status != 200 {
        let body = json!({"flavor": {"name": "nd.sys-admin", "id": flavor, "ram": 64, "vcpus": 1, "disk": 1}});
        let (status, v) = cloud.nova(reqwest::Method::POST, "/flavors", Some(body), "2.88").await;
        assert!(status == 200 || status == 409, "{v}");
        let specs = json!({"extra_specs": {"docker:capabilities": "NET_RAW, cap_sys_admin"}});
        let (status, v) =
            cloud.nova(reqwest::Method::POST, &format!("/flavors/{flavor}/os-extra_specs"), Some(specs), "2.88").await;
        assert_eq!(status, 200, "{v}");
    }
    let id = cloud.create_server("caps", &image, &name, flavor).await;
    let s = cloud.wait_status(&id, "ERROR", T).await;
    let message = s["fault"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cap_sys_admin") && message.contains("NET_BIND_SERVICE,NET_BROADCAST,NET_RAW"),
        "{message}"
    );
    assert!(message.ends_with("SYS_CHROOT"), "the whole list fits in the fault: {message}");
    let containers = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=nova.instance={id}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&containers.stdout).trim().is_empty(), "a container was created");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// A tenant attaches another project's port, or a port on another
/// project's private network, to its own server. nova-api looks a port up
/// with the user's token (another project's is not found), but it passes a
/// network on unchecked, and the host creates ports with its own
/// credentials, which see every project's networks: the host checks as
/// Nova's `_get_available_networks` does and answers NetworkNotFound (404;
/// without the check the port is made, and here fails to bind, a 500,
/// since no agent serves B's network's physnet: the unit tests in
/// `network::tenant_bounds_tests` show nothing is made). On Zed's L2-agent
/// host, where B's port on the shared network would bind.
#[tokio::test]
async fn attach_never_takes_another_tenants_port_or_network() {
    use crate::network::neutron;
    use reqwest::Method;
    let cloud = Cloud::get(Release::Zed);
    let name = cloud.var("ND_NET_HOST").to_string();
    let shared_net = cloud.var("ND_NETWORK_ID").to_string();
    let host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.public_busybox_image(&host.conf).await;
    let tenant_a = cloud.tenant_token(Tenant::A);
    let id = cloud.create_server_as(&tenant_a, "attach-steal", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;

    // Tenant B: an unused port on the shared network, and a private network.
    let b = cloud.project_id("nd-tenant-b");
    let body = json!({"port": {"network_id": shared_net, "project_id": b}});
    let (status, v) = neutron(&cloud, Method::POST, "/v2.0/ports", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let port = v["port"]["id"].as_str().unwrap().to_string();
    let net_name = common::unique("nd-b-private");
    let (status, v) = neutron(
        &cloud,
        Method::POST,
        "/v2.0/networks",
        // flat on a physnet of its own (the test Neutron has no project
        // network types)
        Some(json!({"network": {"name": net_name, "project_id": b, "shared": false,
                                "provider:network_type": "flat", "provider:physical_network": net_name}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let net = v["network"]["id"].as_str().unwrap().to_string();
    let subnet = json!({"subnet": {"network_id": net, "project_id": b, "ip_version": 4, "cidr": "10.251.0.0/24"}});
    let (status, v) = neutron(&cloud, Method::POST, "/v2.0/subnets", Some(subnet)).await;
    assert_eq!(status, 201, "{v}");

    for attachment in [json!({"port_id": port}), json!({"net_id": net})] {
        let (status, v) = cloud
            .nova_as(
                &tenant_a,
                Method::POST,
                &format!("/servers/{id}/os-interface"),
                Some(json!({"interfaceAttachment": attachment})),
                "2.88",
            )
            .await;
        assert_eq!(status, 404, "tenant A attached {attachment} of tenant B: {v}");
        assert!(v.to_string().contains("could not be found"), "{v}");
    }
    // Not even bound for a moment (a binding rolled back leaves the port
    // looking untouched): Neutron's API log has no update of it.
    let api_log = std::path::Path::new(cloud.var("ND_STATE")).join("log/neutron-api.log");
    let api_log = std::fs::read_to_string(&api_log).unwrap_or_default();
    assert!(!api_log.contains(&format!("\"PUT /v2.0/ports/{port} ")), "B's port was updated for A's server");
    let (_, v) = neutron(&cloud, Method::GET, &format!("/v2.0/ports/{port}"), None).await;
    assert_eq!(v["port"]["device_id"], "", "B's port is untouched: {v}");
    assert_eq!(v["port"]["binding:host_id"], "", "B's port is untouched: {v}");
    let (_, v) = neutron(&cloud, Method::GET, &format!("/v2.0/ports?network_id={net}"), None).await;
    assert_eq!(v["ports"], json!([]), "no port made on B's network: {v}");
    let (_, v) = neutron(&cloud, Method::GET, &format!("/v2.0/ports?device_id={id}"), None).await;
    assert_eq!(v["ports"], json!([]), "A's server got no port: {v}");

    cloud.delete_server(&id, T).await;
    neutron(&cloud, Method::DELETE, &format!("/v2.0/ports/{port}"), None).await;
    neutron(&cloud, Method::DELETE, &format!("/v2.0/networks/{net}"), None).await;
    drop(host);
}
