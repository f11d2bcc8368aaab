//! What a server gets in its guest besides the image, through the real Nova
//! API as a user asks for it (issue 21): its key pair (`[docker]
//! inject_key`) and injected files (personality) written into the
//! container before it starts, never through host paths; block device
//! mappings the host cannot honour refused with a fault.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};

const T: Duration = Duration::from_secs(90);

/// `docker exec` in the server's container; its stdout.
fn guest(id: &str, cmd: &str) -> String {
    common::guest_exec(id, cmd)
}

/// A Docker image FROM the test busybox whose `/root/.ssh` and `/opt/inj`
/// are symlinks to absolute paths that exist on the host (`escape_dir`) or
/// could be made there (`escape_ssh`): a writer going through host paths
/// would follow them out of the container.
fn hostile_image(tag: &str, escape_ssh: &str, escape_dir: &str) {
    let ctx = std::env::temp_dir().join(format!("{tag}-ctx").replace(':', "-"));
    std::fs::create_dir_all(&ctx).unwrap();
    let script =
        format!("mkdir -p /root /opt {escape_dir} && ln -s {escape_ssh} /root/.ssh && ln -s {escape_dir} /opt/inj");
    std::fs::write(ctx.join("Dockerfile"), format!("FROM nd-busybox:latest\nRUN {script}\n")).unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "--network", "none", "-t", tag])
        .arg(&ctx)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build runs");
    let _ = std::fs::remove_dir_all(&ctx);
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
}

async fn post_server(cloud: &Cloud, body: Value) -> String {
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(json!({"server": body})), "2.56").await;
    assert_eq!(status, 202, "create server: {v}");
    v["server"]["id"].as_str().expect("server id").to_string()
}

async fn key_pair_and_injected_files_are_written_into_the_container(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("guestfiles");
    let mut host = ComputeHost::start(&cloud, &name, "[docker]\ninject_key = true").await;
    let u = common::unique("nd-guest");
    let (escape_ssh, escape_dir) = (format!("/tmp/{u}-ssh"), format!("/tmp/{u}-dir"));
    std::fs::create_dir_all(&escape_dir).unwrap();
    let tag = format!("{u}:latest");
    hostile_image(&tag, &escape_ssh, &escape_dir);
    let image = cloud.docker_image_in_glance(&host.conf, &tag, &u, &[]).await;

    // Nova makes the key pair (microversion < 2.92) and keeps its public key.
    let (status, kp) =
        cloud.nova(reqwest::Method::POST, "/os-keypairs", Some(json!({"keypair": {"name": u}})), "2.56").await;
    assert!(status == 200 || status == 201, "{status} {kp}");
    let public_key = kp["keypair"]["public_key"].as_str().unwrap().trim().to_string();

    let motd = "hello from personality\n";
    let secret = "\u{0}binary\u{1}";
    let id = post_server(
        &cloud,
        json!({"name": "guestfiles", "imageRef": image, "flavorRef": "1", "networks": "none",
        "availability_zone": format!("nova:{name}"), "key_name": u,
        "personality": [
            {"path": "/etc/motd", "contents": base64(motd.as_bytes())},
            {"path": "/opt/inj/through-a-symlink", "contents": base64(secret.as_bytes())},
            {"path": "/srv/new/dir/file", "contents": base64(b"x")},
        ]}),
    )
    .await;
    cloud.wait_status(&id, "ACTIVE", T).await;

    // The key, as root's only authorized key, with sshd's modes; the image's
    // symlink at /root/.ssh replaced by a directory in the container.
    let modes = guest(&id, "stat -c '%F %a %u %g' /root/.ssh /root/.ssh/authorized_keys");
    assert_eq!(modes, "directory 700 0 0\nregular file 600 0 0\n", "{modes}");
    assert_eq!(guest(&id, "cat /root/.ssh/authorized_keys"), format!("{public_key}\n"));
    // Personality files, byte for byte, root-owned 0644; missing parents made.
    assert_eq!(guest(&id, "cat /etc/motd"), motd);
    assert_eq!(guest(&id, "stat -c '%a %u %g' /etc/motd /srv/new/dir"), "644 0 0\n755 0 0\n");
    assert_eq!(guest(&id, "cat /opt/inj/through-a-symlink"), secret, "written through the symlink, in the container");
    // Nothing reached the host through the image's symlinks.
    assert!(!std::path::Path::new(&escape_ssh).exists(), "{escape_ssh} was created on the host");
    let leaked: Vec<_> = std::fs::read_dir(&escape_dir).unwrap().collect();
    assert!(leaked.is_empty(), "written on the host through the image's symlink: {leaked:?}");

    cloud.delete_server(&id, T).await;
    let _ = cloud.nova(reqwest::Method::DELETE, &format!("/os-keypairs/{u}"), None, "2.56").await;
    cloud.delete_glance_image(&image).await;
    let _ = std::process::Command::new("docker").args(["rmi", &tag]).output();
    let _ = std::fs::remove_dir_all(&escape_dir);
    host.stop().await;
}

#[tokio::test]
async fn key_pair_and_injected_files_are_written_into_the_container_newest() {
    key_pair_and_injected_files_are_written_into_the_container(Release::Newest).await;
}

#[tokio::test]
async fn key_pair_and_injected_files_are_written_into_the_container_zed() {
    key_pair_and_injected_files_are_written_into_the_container(Release::Zed).await;
}

/// Waits for ERROR; the fault's message.
async fn fault_of(cloud: &Cloud, id: &str) -> String {
    let s = cloud.wait_status(id, "ERROR", T).await;
    s["fault"]["message"].as_str().unwrap_or_default().to_string()
}

async fn what_the_host_cannot_honour_is_refused_with_a_fault(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("guestrefuse");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let az = format!("nova:{name}");

    // A flavor with an ephemeral disk: Nova maps a blank local disk.
    let flavor = common::unique("nd-eph");
    let (status, f) = cloud
        .nova(
            reqwest::Method::POST,
            "/flavors",
            Some(json!({"flavor": {"name": flavor, "ram": 128, "vcpus": 1, "disk": 1,
                                   "OS-FLV-EXT-DATA:ephemeral": 1}})),
            "2.55",
        )
        .await;
    assert_eq!(status, 200, "{f}");
    let flavor_id = f["flavor"]["id"].as_str().unwrap().to_string();
    let id = post_server(
        &cloud,
        json!({"name": "eph", "imageRef": image, "flavorRef": flavor_id, "networks": "none", "availability_zone": az}),
    )
    .await;
    let fault = fault_of(&cloud, &id).await;
    assert!(fault.contains("not supported by nova-docker") && fault.contains("ephemeral"), "{fault}");
    assert!(
        std::process::Command::new("docker").args(["inspect", &format!("nova-{id}")]).output().unwrap().status.code()
            != Some(0)
    );
    cloud.delete_server(&id, T).await;
    let _ = cloud.nova(reqwest::Method::DELETE, &format!("/flavors/{flavor_id}"), None, "2.55").await;

    // An injected file whose path is not absolute.
    let id = post_server(
        &cloud,
        json!({"name": "relpath", "imageRef": image, "flavorRef": "1", "networks": "none", "availability_zone": az,
               "personality": [{"path": "etc/relative", "contents": base64(b"x")}]}),
    )
    .await;
    let fault = fault_of(&cloud, &id).await;
    assert_eq!(fault, "injected file 1: its path is not an absolute path");
    cloud.delete_server(&id, T).await;

    // Files for a read-only root filesystem (image os_read_only_rootfs):
    // they cannot be written, so the build fails rather than runs without.
    let ro_name = common::unique("nd-guest-ro");
    let ro_image =
        cloud.docker_image_in_glance(&host.conf, "nd-busybox:latest", &ro_name, &["os_read_only_rootfs=true"]).await;
    let id = post_server(
        &cloud,
        json!({"name": "rofiles", "imageRef": ro_image, "flavorRef": "1", "networks": "none", "availability_zone": az,
               "personality": [{"path": "/etc/motd", "contents": base64(b"x")}]}),
    )
    .await;
    let fault = fault_of(&cloud, &id).await;
    assert!(fault.contains("read-only") && fault.contains("cannot be written"), "{fault}");
    cloud.delete_server(&id, T).await;
    // A config drive is a mount, not a write: a read-only root has one.
    let id = post_server(
        &cloud,
        json!({"name": "rodrive", "imageRef": ro_image, "flavorRef": "1", "networks": "none", "availability_zone": az,
               "config_drive": true}),
    )
    .await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    let md = guest(&id, "cat /mnt/config/openstack/latest/meta_data.json");
    assert!(md.contains(&id), "{md}");
    cloud.delete_server(&id, T).await;
    cloud.delete_glance_image(&ro_image).await;

    host.stop().await;
}

#[tokio::test]
async fn what_the_host_cannot_honour_is_refused_with_a_fault_newest() {
    what_the_host_cannot_honour_is_refused_with_a_fault(Release::Newest).await;
}

#[tokio::test]
async fn what_the_host_cannot_honour_is_refused_with_a_fault_zed() {
    what_the_host_cannot_honour_is_refused_with_a_fault(Release::Zed).await;
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `ping` from inside an instance as `user`, retried while the L2 agent
/// wires the ports (bounded): whether one got an answer, and the last output.
async fn pings(server: &str, user: &str, ping: &str, ip: &str) -> (bool, String) {
    let started = std::time::Instant::now();
    loop {
        let out = tokio::process::Command::new("docker")
            .args(["exec", "--user", user, &format!("nova-{server}"), ping, "-c1", "-W3", ip])
            .output()
            .await
            .expect("docker exec runs");
        let (ok, text) = (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        );
        // "permission denied (are you root?)", "Operation not permitted": no
        // socket of that kind for this user, no retry helps.
        let refused = text.contains("permission denied") || text.contains("not permitted");
        if ok || refused || started.elapsed() > Duration::from_secs(90) {
            return (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Instances of a plain flavor ping each other with both kinds of ping:
/// busybox's `ping` as root opens a raw socket (NET_RAW is in the default
/// set), Debian's iputils `ping` as an unprivileged user (uid 65534, no
/// capabilities) opens an ICMP datagram socket, open to every group by
/// `net.ipv4.ping_group_range`.
async fn instances_of_a_plain_flavor_ping_each_other(release: Release) {
    let cloud = Cloud::get(release);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let mut host = ComputeHost::start(&cloud, &host_name, "").await;
    let image = cloud.docker_image_in_glance(&host.conf, "nd-busybox:iputils", "nd-busybox-iputils", &[]).await;
    let boot = |name: &'static str| {
        json!({"name": name, "imageRef": image, "flavorRef": "1", "networks": [{"uuid": net}],
               "availability_zone": format!("nova:{host_name}")})
    };
    let a = post_server(&cloud, boot("ping-a")).await;
    let b = post_server(&cloud, boot("ping-b")).await;
    cloud.wait_status(&a, "ACTIVE", T).await;
    cloud.wait_status(&b, "ACTIVE", T).await;
    let (pa, pb) = (crate::network::ports_of(&cloud, &a).await, crate::network::ports_of(&cloud, &b).await);
    let (ia, ib) = (crate::network::fixed_ip(&pa[0], false), crate::network::fixed_ip(&pb[0], false));
    for (from, to) in [(&a, &ib), (&b, &ia)] {
        let (ok, out) = pings(from, "0", "ping", to).await;
        assert!(ok, "raw socket: {from} cannot ping {to} with busybox as root: {out}");
        let (ok, out) = pings(from, "65534", "/usr/bin/iputils-ping", to).await;
        assert!(ok, "datagram socket: {from} cannot ping {to} with iputils as uid 65534: {out}");
    }
    for id in [&a, &b] {
        let (_, range) = crate::network::exec(&format!("nova-{id}"), "cat /proc/sys/net/ipv4/ping_group_range").await;
        assert_eq!(range.split_whitespace().collect::<Vec<_>>(), ["0", "2147483647"], "{range}");
    }
    cloud.delete_server(&a, T).await;
    cloud.delete_server(&b, T).await;
    host.stop().await;
}

#[tokio::test]
async fn instances_of_a_plain_flavor_ping_each_other_newest() {
    instances_of_a_plain_flavor_ping_each_other(Release::Newest).await;
}

#[tokio::test]
async fn instances_of_a_plain_flavor_ping_each_other_zed() {
    instances_of_a_plain_flavor_ping_each_other(Release::Zed).await;
}

/// What Nova's own `InstanceMetadata` puts in the config drive of `id`
/// (tests/py/instance_metadata.py, run with the release's Nova against its
/// database): file name under `openstack/latest/` to contents.
async fn novas_drive(cloud: &Cloud, release: Release, id: &str, admin_pass: &str) -> serde_json::Map<String, Value> {
    let script = common::repo().join("tests/py/instance_metadata.py");
    let conf = format!("{}/etc/nova/nova.conf", cloud.var("ND_STATE"));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(release.python())
            .arg(script)
            .args([conf.as_str(), id, admin_pass])
            .env("PYTHONPATH", common::repo().join("tests/env/pylib"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("instance_metadata.py in time")
    .expect("instance_metadata.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "instance_metadata.py: {}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Compares the container's drive with Nova's, file by file (JSON parsed;
/// `random_seed` is random on both sides: 512 bytes each).
async fn drive_matches_novas(cloud: &Cloud, release: Release, id: &str, admin_pass: &str) {
    let nova = novas_drive(cloud, release, id, admin_pass).await;
    let mut names: Vec<&String> = nova.keys().collect();
    names.sort();
    let ours = guest(id, "ls /mnt/config/openstack/latest");
    let mut our_names: Vec<&str> = ours.split_whitespace().collect();
    our_names.sort();
    assert_eq!(our_names, names, "the files of openstack/latest");
    for (name, theirs) in &nova {
        let theirs = theirs.as_str().unwrap();
        let mine = guest(id, &format!("cat /mnt/config/openstack/latest/{name}"));
        if name.ends_with(".json") {
            let mut a: Value = serde_json::from_str(&mine).unwrap_or_else(|e| panic!("{name}: {e}: {mine}"));
            let mut b: Value = serde_json::from_str(theirs).unwrap();
            for v in [&mut a, &mut b] {
                if let Some(seed) = v.as_object_mut().and_then(|m| m.remove("random_seed")) {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD.decode(seed.as_str().unwrap()).unwrap();
                    assert_eq!(bytes.len(), 512, "{name} random_seed");
                }
            }
            assert_eq!(a, b, "{name}: ours (left) and Nova's (right)");
        } else {
            assert_eq!(mine, theirs, "{name}");
        }
    }
}

/// A server booted with `--config-drive true` (on the test network, with a
/// key pair, metadata, user data and an admin password) has Nova's drive,
/// read-only at /mnt/config, as Nova's own code writes it; its
/// network_data.json follows an interface attach and detach; nothing of it
/// is left on the host after delete, and a server that asked for none has
/// none.
async fn config_drive_matches_novas_instance_metadata(release: Release) {
    let cloud = Cloud::get(release);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let mut host = ComputeHost::start(&cloud, &host_name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let u = common::unique("nd-guest");
    let (status, kp) =
        cloud.nova(reqwest::Method::POST, "/os-keypairs", Some(json!({"keypair": {"name": u}})), "2.56").await;
    assert!(status == 200 || status == 201, "{status} {kp}");
    let admin_pass = common::unique("pw");
    let user_data = "#cloud-config\nruncmd: [echo hi]\n";
    let id = post_server(
        &cloud,
        json!({"name": "cdrive", "imageRef": image, "flavorRef": "1", "networks": [{"uuid": net}],
               "availability_zone": format!("nova:{host_name}"), "config_drive": true, "key_name": u,
               "metadata": {"role": "web", "owner": "guest21"}, "user_data": base64(user_data.as_bytes()),
               "adminPass": admin_pass}),
    )
    .await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    drive_matches_novas(&cloud, release, &id, &admin_pass).await;
    assert_eq!(guest(&id, "cat /mnt/config/openstack/latest/user_data"), user_data);
    let (wrote, _) = crate::network::exec(&format!("nova-{id}"), "touch /mnt/config/x").await;
    assert!(!wrote, "the drive is read-only");

    // An interface attached, then detached: network_data.json follows.
    let before = guest(&id, "cat /mnt/config/openstack/latest/network_data.json");
    let (status, att) = cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{id}/os-interface"),
            Some(json!({"interfaceAttachment": {"net_id": net}})),
            "2.88",
        )
        .await;
    assert_eq!(status, 200, "{att}");
    let port = att["interfaceAttachment"]["port_id"].as_str().unwrap().to_string();
    let attached = guest(&id, "cat /mnt/config/openstack/latest/network_data.json");
    assert!(attached.contains(&port) && attached != before, "{attached}");
    drive_matches_novas(&cloud, release, &id, &admin_pass).await;
    let (status, v) =
        cloud.nova(reqwest::Method::DELETE, &format!("/servers/{id}/os-interface/{port}"), None, "2.88").await;
    assert_eq!(status, 202, "{v}");
    common::wait_for("network_data.json without the detached port", T, async || {
        !guest(&id, "cat /mnt/config/openstack/latest/network_data.json").contains(&port)
    })
    .await;
    drive_matches_novas(&cloud, release, &id, &admin_pass).await;

    // A server that asked for no drive has none.
    let plain = post_server(
        &cloud,
        json!({"name": "nodrive", "imageRef": image, "flavorRef": "1", "networks": "none",
               "availability_zone": format!("nova:{host_name}")}),
    )
    .await;
    cloud.wait_status(&plain, "ACTIVE", T).await;
    assert_eq!(guest(&plain, "ls -A /mnt 2>/dev/null | wc -l").trim(), "0", "no drive asked, none given");

    let drive_dir = host.state.join("instances").join(&id).join("config-drive");
    assert!(drive_dir.join("openstack/latest/meta_data.json").exists(), "{}", drive_dir.display());
    cloud.delete_server(&id, T).await;
    cloud.delete_server(&plain, T).await;
    assert!(!host.state.join("instances").join(&id).exists(), "the drive went with the instance");
    let _ = cloud.nova(reqwest::Method::DELETE, &format!("/os-keypairs/{u}"), None, "2.56").await;
    host.stop().await;
}

#[tokio::test]
async fn config_drive_matches_novas_instance_metadata_newest() {
    config_drive_matches_novas_instance_metadata(Release::Newest).await;
}

#[tokio::test]
async fn config_drive_matches_novas_instance_metadata_zed() {
    config_drive_matches_novas_instance_metadata(Release::Zed).await;
}

/// The body of `GET path` from the metadata service, asked from inside the
/// server with busybox's `nc` (its static `wget` crashes looking up the
/// "http" service), retried while the agents wire the port (bounded).
async fn fetch_in_guest(server: &str, path: &str) -> String {
    let started = std::time::Instant::now();
    let request =
        format!("printf 'GET {path} HTTP/1.0\\r\\nHost: 169.254.169.254\\r\\n\\r\\n' | nc -w 5 169.254.169.254 80");
    loop {
        let (_, out) = crate::network::exec(&format!("nova-{server}"), &request).await;
        if let Some((head, body)) = out.split_once("\r\n\r\n")
            && head.starts_with("HTTP/1.")
            && head.split_whitespace().nth(1) == Some("200")
        {
            return body.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{server}: {path} never answered 200: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The metadata service, as a VM on the same network reaches it: Neutron's
/// DHCP agent serves isolated metadata on the network (its haproxy on
/// 169.254.169.254 in the DHCP namespace), its metadata agent signs each
/// request with the instance Neutron finds for the source address, and the
/// control plane's nova metadata API answers. The host routes
/// 169.254.169.254 through the subnet's DHCP port (`[docker]
/// metadata_route = dhcp_port`), as the DHCP agent tells VMs. On OVN the
/// haproxy sits behind the network's metadata port, and the host routes
/// through that port's address (`metadata_port`), as OVN's DHCP tells VMs.
/// Two servers each read their own metadata, user data included, never the
/// other's.
async fn the_metadata_service_answers_each_instance_with_its_own(release: Release) {
    let cloud = Cloud::get(release);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let route = if release == Release::Ovn { "metadata_port" } else { "dhcp_port" };
    let mut host = ComputeHost::start(&cloud, &host_name, &format!("[docker]\nmetadata_route = {route}\n")).await;
    let image = cloud.busybox_image(&host.conf).await;
    let boot = |name: &str| {
        json!({"name": name, "imageRef": image, "flavorRef": "1", "networks": [{"uuid": net}],
               "metadata": {"role": name}, "user_data": base64(format!("#!/bin/sh\necho {name}\n").as_bytes()),
               "availability_zone": format!("nova:{host_name}")})
    };
    let a = post_server(&cloud, boot("md-a")).await;
    let b = post_server(&cloud, boot("md-b")).await;
    cloud.wait_status(&a, "ACTIVE", T).await;
    cloud.wait_status(&b, "ACTIVE", T).await;
    // The next hop: the port that serves the metadata on this network (the
    // DHCP agent's port, or OVN's metadata port), never just the link.
    let owner = if release == Release::Ovn { "network%3Adistributed" } else { "network%3Adhcp" };
    let (_, ports) = crate::network::neutron(
        &cloud,
        reqwest::Method::GET,
        &format!("/v2.0/ports?network_id={net}&device_owner={owner}"),
        None,
    )
    .await;
    let server_ip = ports["ports"][0]["fixed_ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|ip| ip["ip_address"].as_str().filter(|a| !a.contains(':'))))
        .unwrap_or_else(|| panic!("no IPv4 address of a {owner} port: {ports}"))
        .to_string();
    for (id, name) in [(&a, "md-a"), (&b, "md-b")] {
        let (_, route) = crate::network::exec(&format!("nova-{id}"), "ip route get 169.254.169.254").await;
        assert!(route.contains(&format!("via {server_ip} ")), "{id}: {route}");
        let text = fetch_in_guest(id, "/openstack/latest/meta_data.json").await;
        let md: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{id}: meta_data.json: {e}: {text}"));
        assert_eq!(md["uuid"], id.as_str(), "{md}");
        assert_eq!(md["name"], name, "{md}");
        assert_eq!(md["meta"]["role"], name, "{md}");
        let user_data = fetch_in_guest(id, "/openstack/latest/user_data").await;
        assert_eq!(user_data, format!("#!/bin/sh\necho {name}\n"));
        // the EC2 tree too, as cloud-init's Ec2 source reads it
        let hostname = fetch_in_guest(id, "/latest/meta-data/hostname").await;
        assert!(hostname.starts_with(name), "{hostname}");
        // Nova's own view of the port: a DHCP subnet, as for a VM
        let nd = fetch_in_guest(id, "/openstack/latest/network_data.json").await;
        let nd: Value = serde_json::from_str(&nd).unwrap_or_else(|e| panic!("{id}: network_data.json: {e}: {nd}"));
        assert_eq!(nd["networks"][0]["type"], "ipv4_dhcp", "{nd}");
    }
    cloud.delete_server(&a, T).await;
    cloud.delete_server(&b, T).await;
    host.stop().await;
}

#[tokio::test]
async fn the_metadata_service_answers_each_instance_with_its_own_newest() {
    the_metadata_service_answers_each_instance_with_its_own(Release::Newest).await;
}

#[tokio::test]
async fn the_metadata_service_answers_each_instance_with_its_own_zed() {
    the_metadata_service_answers_each_instance_with_its_own(Release::Zed).await;
}

/// On OVN: the metadata agent's haproxy sits behind the network's metadata
/// port (no DHCP agent, no DHCP port).
#[tokio::test]
async fn the_metadata_service_answers_each_instance_with_its_own_ovn() {
    the_metadata_service_answers_each_instance_with_its_own(Release::Ovn).await;
}
