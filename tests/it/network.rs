//! Neutron networking end to end: servers booted with `--network private`
//! on this service, with the control plane's real L2 agent (linuxbridge on
//! Zed, Open vSwitch on the newest release) binding their ports.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, Tenant};
use crate::common::{self, Release};
use crate::proxy::Relay;

const T: Duration = Duration::from_secs(120);

pub(crate) async fn exec(container: &str, cmd: &str) -> (bool, String) {
    let out = tokio::process::Command::new("docker").args(["exec", container, "sh", "-c", cmd]).output().await.unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A flavor whose containers may send ICMP (the flavor extra spec
/// `docker:capabilities` adds NET_RAW to the minimal set).
pub(crate) async fn ping_flavor(cloud: &Cloud) -> String {
    let id = "4242";
    let (status, _) = cloud.nova(reqwest::Method::GET, &format!("/flavors/{id}"), None, "2.88").await;
    if status == 200 {
        return id.into();
    }
    let body = json!({"flavor": {"name": "nd.ping", "id": id, "ram": 128, "vcpus": 1, "disk": 1}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/flavors", Some(body), "2.88").await;
    assert!(status == 200 || status == 409, "{v}");
    let specs = json!({"extra_specs": {"docker:capabilities": "NET_RAW"}});
    let (status, v) =
        cloud.nova(reqwest::Method::POST, &format!("/flavors/{id}/os-extra_specs"), Some(specs), "2.88").await;
    assert_eq!(status, 200, "{v}");
    id.into()
}

async fn create_on_network(cloud: &Cloud, name: &str, image: &str, host: &str, flavor: &str, net: &str) -> String {
    let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor,
        "networks": [{"uuid": net}], "availability_zone": format!("nova:{host}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    v["server"]["id"].as_str().unwrap().to_string()
}

pub(crate) async fn neutron(cloud: &Cloud, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", cloud.var("ND_NEUTRON")))
        .header("X-Auth-Token", cloud.var("ND_TOKEN"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn ports_of(cloud: &Cloud, server: &str) -> Vec<Value> {
    let (_, v) = neutron(cloud, reqwest::Method::GET, &format!("/v2.0/ports?device_id={server}"), None).await;
    v["ports"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn fixed_ip(port: &Value, v6: bool) -> String {
    port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["ip_address"].as_str())
        .find(|ip| ip.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address on {port}", if v6 { "v6" } else { "v4" }))
        .to_string()
}

async fn pings(container: &str, ip: &str) -> bool {
    let cmd = if ip.contains(':') { format!("ping -6 -c1 -W3 {ip}") } else { format!("ping -c1 -W3 {ip}") };
    // A port may take a moment to forward after the agent wires it (the
    // agents poll their devices, slowly on a busy machine): bounded retries.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if exec(container, &cmd).await.0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

async fn two_way(a: &str, b: &str, pa: &Value, pb: &Value) {
    for v6 in [false, true] {
        let (ia, ib) = (fixed_ip(pa, v6), fixed_ip(pb, v6));
        assert!(pings(&format!("nova-{a}"), &ib).await, "{a} cannot ping {ib}");
        assert!(pings(&format!("nova-{b}"), &ia).await, "{b} cannot ping {ia}");
    }
}

fn host_devices() -> String {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn neutron_networking(release: Release) {
    let cloud = Cloud::get(release);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let mut host = ComputeHost::start(&cloud, &host_name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let flavor = ping_flavor(&cloud).await;

    let started = Instant::now();
    let a = create_on_network(&cloud, "net-a", &image, &host_name, &flavor, &net).await;
    let b = create_on_network(&cloud, "net-b", &image, &host_name, &flavor, &net).await;
    cloud.wait_status(&a, "ACTIVE", T).await;
    cloud.wait_status(&b, "ACTIVE", T).await;
    eprintln!("two servers ACTIVE with ports in {:?}", started.elapsed());
    let (pa, pb) = (ports_of(&cloud, &a).await, ports_of(&cloud, &b).await);
    assert_eq!((pa.len(), pb.len()), (1, 1));
    // Servers that ask for no group: their project's default group, whose
    // members reach each other (the pings below go through the firewall).
    let project = pa[0]["project_id"].as_str().unwrap().to_string();
    let (_, sgs) = neutron(
        &cloud,
        reqwest::Method::GET,
        &format!("/v2.0/security-groups?name=default&project_id={project}"),
        None,
    )
    .await;
    let default_group = sgs["security_groups"][0]["id"].clone();
    assert!(default_group.is_string(), "{sgs}");
    for p in [&pa[0], &pb[0]] {
        assert_eq!(p["status"], "ACTIVE", "the L2 agent wired the port: {p}");
        assert_eq!(p["binding:host_id"], host_name.as_str());
        assert_eq!(p["binding:vif_type"], cloud.var("ND_NET_VIF_TYPE"));
        assert_eq!(p["port_security_enabled"], true, "{p}");
        assert_eq!(p["security_groups"], json!([default_group]), "{p}");
    }
    // network_info in Nova names the port and its addresses.
    let s = cloud.server(&a).await.unwrap();
    let addrs = s["addresses"]["private"].as_array().cloned().unwrap_or_default();
    assert!(addrs.iter().any(|x| x["addr"] == fixed_ip(&pa[0], false).as_str()), "{s}");

    // Inside: eth0 with the port's MAC, the network's MTU, DNS from the subnet.
    let (_, link) = exec(&format!("nova-{a}"), "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu").await;
    let (_, netdoc) = neutron(&cloud, reqwest::Method::GET, &format!("/v2.0/networks/{net}"), None).await;
    assert!(link.contains(pa[0]["mac_address"].as_str().unwrap()), "{link}");
    assert!(link.contains(&netdoc["network"]["mtu"].to_string()), "{link} vs {netdoc}");
    let (_, resolv) = exec(&format!("nova-{a}"), "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.99.0.53\n"), "the subnet's DNS server: {resolv}");
    let (_, hosts) = exec(&format!("nova-{a}"), "cat /etc/hosts").await;
    assert!(
        hosts.contains(&format!("{}\tnet-a\n", fixed_ip(&pa[0], false))),
        "the fixed IP under the hostname: {hosts}"
    );
    let (_, routes) = exec(&format!("nova-{a}"), "ip route; ip -6 route").await;
    assert_eq!(routes.matches("default").count(), 2, "one default route per family: {routes}");

    two_way(&a, &b, &pa[0], &pb[0]).await;

    // Diagnostics count the plugged port's traffic (Docker's stats do not
    // see it: the kernel's counters of the container's namespace do).
    let (status, d) = cloud.nova(reqwest::Method::GET, &format!("/servers/{a}/diagnostics"), None, "2.48").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["num_nics"], 1, "{d}");
    let nic = &d["nic_details"][0];
    assert_eq!(nic["mac_address"], pa[0]["mac_address"], "{d}");
    assert!(nic["rx_packets"].as_u64().unwrap() > 0 && nic["tx_octets"].as_u64().unwrap() > 0, "{d}");
    let (status, d) = cloud.nova(reqwest::Method::GET, &format!("/servers/{a}/diagnostics"), None, "2.1").await;
    assert_eq!(status, 200, "{d}");
    assert!(d["eth0_rx_packets"].as_u64().unwrap() > 0, "{d}");

    // A started container has a new namespace: networking is plugged again.
    assert_eq!(cloud.action(&a, json!({"reboot": {"type": "HARD"}})).await.0, 202);
    cloud.wait_status(&a, "ACTIVE", T).await;
    let (_, link) = exec(&format!("nova-{a}"), "cat /sys/class/net/eth0/address").await;
    assert!(link.contains(pa[0]["mac_address"].as_str().unwrap()), "eth0 at ACTIVE after a reboot: {link}");
    two_way(&a, &b, &pa[0], &pb[0]).await;
    assert_eq!(cloud.action(&b, json!({"os-stop": null})).await.0, 202);
    cloud.wait_status(&b, "SHUTOFF", T).await;
    assert_eq!(cloud.action(&b, json!({"os-start": null})).await.0, 202);
    cloud.wait_status(&b, "ACTIVE", T).await;
    // Plugged by the start itself, before ACTIVE (Zed's API sends the
    // instance without its info cache: the host must load it).
    let (_, link) = exec(&format!("nova-{b}"), "cat /sys/class/net/eth0/address").await;
    assert!(link.contains(pb[0]["mac_address"].as_str().unwrap()), "eth0 at ACTIVE after a start: {link}");
    two_way(&a, &b, &pa[0], &pb[0]).await;
    // The netns entry lets operators use `ip netns exec <container id>`.
    let cid = String::from_utf8_lossy(
        &std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.Id}}", &format!("nova-{b}")])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cid, "ip", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&fixed_ip(&pb[0], false)), "ip netns exec works");

    // Hot-plug: attach a second port, then detach it.
    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{a}/os-interface"),
            Some(json!({"interfaceAttachment": {"net_id": net}})),
            "2.88",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let new_port = v["interfaceAttachment"]["port_id"].as_str().unwrap().to_string();
    let (_, link) = exec(&format!("nova-{a}"), "ls /sys/class/net").await;
    assert!(link.contains("eth1"), "{link}");
    let (status, v) =
        cloud.nova(reqwest::Method::DELETE, &format!("/servers/{a}/os-interface/{new_port}"), None, "2.88").await;
    assert_eq!(status, 202, "{v}");
    let started = Instant::now();
    loop {
        let (_, link) = exec(&format!("nova-{a}"), "ls /sys/class/net").await;
        if !link.contains("eth1") {
            break;
        }
        assert!(started.elapsed() < T, "eth1 still there");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Released right after the unplug (eth1 gone); poll briefly.
    let mut status = 0;
    for _ in 0..50 {
        status = neutron(&cloud, reqwest::Method::GET, &format!("/v2.0/ports/{new_port}"), None).await.0;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404, "the detached port (created by Nova) is deleted");

    // Delete: no veth, no netns entry, no port left.
    let devs: Vec<String> =
        [&pa[0], &pb[0]].iter().map(|p| format!("tap{}", &p["id"].as_str().unwrap()[..11])).collect();
    for s in [&a, &b] {
        cloud.delete_server(s, T).await;
    }
    let present = host_devices();
    for d in &devs {
        assert!(!present.split(' ').any(|x| x == d), "{d} left on the host: {present}");
    }
    assert!(!std::path::Path::new("/var/run/netns").join(&cid).exists(), "netns entry removed");
    for s in [&a, &b] {
        assert!(ports_of(&cloud, s).await.is_empty(), "ports of {s} deleted");
    }
    host.stop().await;
}

#[tokio::test]
async fn neutron_networking_newest() {
    neutron_networking(Release::Newest).await;
}

#[tokio::test]
async fn neutron_networking_zed() {
    neutron_networking(Release::Zed).await;
}

/// The same on ML2/OVN: ovn-controller claims the port by the iface-id the
/// host sets, OVN's own DHCP and ACLs replace the agents', and the control
/// plane talks over the TLS cluster.
#[tokio::test]
async fn neutron_networking_ovn() {
    neutron_networking(Release::Ovn).await;
}

/// A server with a port on a network whose binding cannot succeed (no agent
/// for the host) fails cleanly with a clear fault; no port is left behind.
#[tokio::test]
async fn binding_failure_is_a_clear_fault() {
    let cloud = Cloud::get(Release::Newest);
    let name = crate::cloud::host_name("nobind");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let id = create_on_network(&cloud, &common::unique("nobind"), &image, &name, "1", &net).await;
    let s = cloud.wait_status(&id, "ERROR", T).await;
    let msg = s["fault"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("could not be bound") || msg.contains("binding"), "{msg}");
    assert!(ports_of(&cloud, &id).await.is_empty(), "the port was released");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// A delete releases every port Neutron lists for the server, not only those
/// its info cache names (here a port bound to it behind Nova's back). While
/// Neutron is unreachable the delete fails visibly (ERROR with a fault) and
/// the port stays; once Neutron is back, a reset and a second delete finish
/// the job.
#[tokio::test]
async fn delete_releases_every_port_neutron_lists() {
    let cloud = Cloud::get(Release::Newest);
    let relay = Relay::start(cloud.var("ND_NEUTRON").trim_start_matches("http://")).await;
    let name = crate::cloud::host_name("portrel");
    let mut host = ComputeHost::start(&cloud, &name, &format!("[neutron]\nendpoint_override = {}\n", relay.url)).await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("portrel", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let body =
        json!({"port": {"network_id": cloud.var("ND_NETWORK_ID"), "device_id": id, "device_owner": "compute:nova"}});
    let (status, v) = neutron(&cloud, reqwest::Method::POST, "/v2.0/ports", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    assert!(cloud.server(&id).await.unwrap()["addresses"].as_object().is_none_or(|a| a.is_empty()), "not in the cache");

    relay.cut();
    let (status, v) = cloud.nova(reqwest::Method::DELETE, &format!("/servers/{id}"), None, "2.88").await;
    assert_eq!(status, 204, "{v}");
    // As in Nova, the failed delete leaves ERROR with task_state deleting.
    common::wait_for("the delete to fail", T, async || {
        cloud.server(&id).await.is_some_and(|s| s["status"] == "ERROR" && !s["fault"].is_null())
    })
    .await;
    let s = cloud.server(&id).await.unwrap();
    assert!(s["fault"]["message"].as_str().unwrap_or_default().contains("Neutron"), "{}", s["fault"]);
    assert_eq!(ports_of(&cloud, &id).await.len(), 1, "the port is kept while Neutron is away");

    // A second delete is ignored while the task state says deleting (as
    // with Python nova-compute): the operator resets the state first.
    relay.restore();
    assert_eq!(cloud.action(&id, json!({"os-resetState": {"state": "error"}})).await.0, 202);
    cloud.delete_server(&id, T).await;
    assert!(ports_of(&cloud, &id).await.is_empty(), "the port Nova did not know of is deleted");
    host.stop().await;
}

/// A Neutron request with a tenant's token.
async fn neutron_as(cloud: &Cloud, token: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", cloud.var("ND_NEUTRON")))
        .header("X-Auth-Token", token)
        .timeout(Duration::from_secs(60))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A port by id (None once deleted), as the admin sees it.
async fn port(cloud: &Cloud, id: &str) -> Option<Value> {
    let (status, v) = neutron(cloud, reqwest::Method::GET, &format!("/v2.0/ports/{id}"), None).await;
    (status == 200).then(|| v["port"].clone())
}

/// Tenant B points a port of its own at tenant A's server (a port's
/// `device_id` is whatever its owner writes). The service lists ports with
/// admin credentials; A's delete must still release A's ports only: A's own
/// port pointed at the server goes, B's stays as B left it.
#[tokio::test]
async fn a_delete_never_releases_another_tenants_port() {
    let cloud = Cloud::get(Release::Newest);
    let name = crate::cloud::host_name("portten");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.public_busybox_image(&host.conf).await;
    let (token_a, token_b) = (cloud.tenant_token(Tenant::A), cloud.tenant_token(Tenant::B));
    let id = cloud.create_server_as(&token_a, &common::unique("portten"), &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let mut ports = Vec::new();
    for token in [&token_a, &token_b] {
        let body = json!({"port": {"network_id": net, "device_id": id, "device_owner": "compute:nova"}});
        let (status, v) = neutron_as(&cloud, token, reqwest::Method::POST, "/v2.0/ports", body).await;
        assert_eq!(status, 201, "{v}");
        ports.push(v["port"]["id"].as_str().unwrap().to_string());
    }
    let (own, other) = (&ports[0], &ports[1]);
    cloud.delete_server(&id, T).await;
    assert!(port(&cloud, own).await.is_none(), "the tenant's own port pointed at its server is released");
    let kept = port(&cloud, other).await.expect("the other tenant's port is not deleted");
    assert_eq!(kept["device_id"], id.as_str(), "and not unbound: {kept}");
    assert_eq!(kept["project_id"], cloud.project_id("nd-tenant-b").as_str());
    // (Neutron's policy lets only an admin delete a compute:* port.)
    let (status, v) = neutron(&cloud, reqwest::Method::DELETE, &format!("/v2.0/ports/{other}"), None).await;
    assert_eq!(status, 204, "{v}");
    host.stop().await;
}

/// `network-vif-plugged` that never comes: a port created with its admin
/// state down is bound to the host, but the L2 agent never wires it, so
/// Neutron never sends the event. With `vif_plugging_is_fatal` the build
/// fails after `vif_plugging_timeout` with a fault naming the event; without
/// it the server goes ACTIVE and a warning says it went on without.
#[tokio::test]
async fn vif_plugged_that_never_comes_follows_the_options_newest() {
    let cloud = Cloud::get(Release::Newest);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    for fatal in [true, false] {
        let extra = format!("[DEFAULT]\nvif_plugging_timeout = 5\nvif_plugging_is_fatal = {fatal}\n");
        let mut host = ComputeHost::start(&cloud, &host_name, &extra).await;
        let image = cloud.busybox_image(&host.conf).await;
        let body = json!({"port": {"network_id": net, "admin_state_up": false, "name": common::unique("nd-vifwait")}});
        let (status, v) = neutron(&cloud, reqwest::Method::POST, "/v2.0/ports", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        let port = v["port"]["id"].as_str().unwrap().to_string();
        let body = json!({"server": {"name": "vifwait", "imageRef": image, "flavorRef": "1",
            "networks": [{"port": port}], "availability_zone": format!("nova:{host_name}")}});
        let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
        assert_eq!(status, 202, "{v}");
        let id = v["server"]["id"].as_str().unwrap().to_string();
        if fatal {
            let s = cloud.wait_status(&id, "ERROR", T).await;
            let fault = format!("{} {}", s["fault"]["message"], s["fault"]["details"]);
            assert!(fault.contains(&format!("network-vif-plugged-{port}")), "{fault}");
        } else {
            cloud.wait_status(&id, "ACTIVE", T).await;
            let log = host.log_text();
            assert!(log.contains("continuing without network-vif-plugged"), "{log}");
        }
        let (_, p) = neutron(&cloud, reqwest::Method::GET, &format!("/v2.0/ports/{port}"), None).await;
        assert_ne!(p["port"]["status"], "ACTIVE", "the agent never wired it: {p}");
        cloud.delete_server(&id, T).await;
        neutron(&cloud, reqwest::Method::DELETE, &format!("/v2.0/ports/{port}"), None).await;
        host.stop().await;
    }
}
