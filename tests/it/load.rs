//! Load: 100 servers booted and deleted in waves on one host, some of them
//! with Neutron ports wired by the real L2 agent. Afterwards nothing is left
//! behind (containers, netns entries, host devices, OVS ports, placement
//! allocations, file descriptors) and the service's RSS is near where it
//! started. Figures go to stderr for RELIABILITY.md.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost};
use crate::common::{self, Release};

const WAVES: usize = 4;
const PER_WAVE: usize = 25;
/// Servers of each wave that get a Neutron port (the rest boot with none).
const WITH_PORT: usize = 10;
const T: Duration = Duration::from_secs(300);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn create(cloud: &Cloud, name: &str, image: &str, host: &str, net: Option<&str>) -> String {
    let networks = match net {
        Some(n) => json!([{"uuid": n}]),
        None => json!("none"),
    };
    let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": "42", "networks": networks,
        "availability_zone": format!("nova:{host}")}});
    let (status, v) = cloud.nova(reqwest::Method::POST, "/servers", Some(body), "2.88").await;
    assert_eq!(status, 202, "{v}");
    v["server"]["id"].as_str().unwrap().to_string()
}

/// The host ends of a server's ports (Nova's `tap<port id>[:14]`).
async fn tap_names(cloud: &Cloud, server: &str) -> Vec<String> {
    let url = format!("{}/v2.0/ports?device_id={server}", cloud.var("ND_NEUTRON"));
    let v: serde_json::Value = reqwest::Client::new()
        .get(url)
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .map(|id| format!("tap{id}").chars().take(14).collect())
        .collect()
}

/// Runs on the release's L2-agent host, so it shares a test group with the
/// networking test of that release (`.config/nextest.toml`).
#[tokio::test]
async fn load_100_servers_in_waves_leaves_nothing_behind() {
    let cloud = Cloud::get(Release::Newest);
    let host_name = cloud.var("ND_NET_HOST").to_string();
    let net = cloud.var("ND_NETWORK_ID").to_string();
    let mut host = ComputeHost::start(&cloud, &host_name, "").await;
    let pid = host.pid().expect("running");
    let image = cloud.busybox_image(&host.conf).await;

    // Warm up (image in the cache, one port plugged and unplugged) before
    // the baseline is taken.
    let warm = create(&cloud, "load-warm", &image, &host_name, Some(&net)).await;
    cloud.wait_status(&warm, "ACTIVE", T).await;
    cloud.delete_server(&warm, T).await;
    let (fds_base, rss_base) = (open_fds(pid), rss_kib(pid));
    // The host name is fixed (the L2 agent's), so servers a failed earlier
    // run left on it may still hold allocations: compare with now.
    let rp = cloud.provider(&host_name).await.expect("resource provider");
    let rp = rp["uuid"].as_str().unwrap().to_string();
    let usages_base = cloud.placement(&format!("/resource_providers/{rp}/usages")).await;
    let mut servers = BTreeSet::new();

    let mut containers = BTreeSet::new();
    let mut taps = BTreeSet::new();
    let mut rss_peak = rss_base;
    let started = Instant::now();
    for wave in 0..WAVES {
        let t0 = Instant::now();
        let mut ids = Vec::new();
        for i in 0..PER_WAVE {
            let n = (i < WITH_PORT).then_some(net.as_str());
            ids.push(create(&cloud, &format!("load-{wave}-{i}"), &image, &host_name, n).await);
        }
        servers.extend(ids.iter().cloned());
        futures::future::join_all(ids.iter().map(|id| cloud.wait_status(id, "ACTIVE", T))).await;
        let booted = t0.elapsed();
        rss_peak = rss_peak.max(rss_kib(pid));
        for id in &ids {
            let inspect = sh(&format!("docker inspect -f '{{{{.Id}}}}' nova-{id}"));
            containers.insert(inspect.trim().to_string());
            taps.extend(tap_names(&cloud, id).await);
        }
        let t1 = Instant::now();
        futures::future::join_all(ids.iter().map(|id| cloud.delete_server(id, T))).await;
        common::figure(format!(
            "wave {wave}: {PER_WAVE} servers ({WITH_PORT} with ports) ACTIVE in {booted:?}, deleted in {:?}; \
             RSS {} KiB, fds {}",
            t1.elapsed(),
            rss_kib(pid),
            open_fds(pid)
        ));
    }
    assert_eq!(taps.len(), WAVES * WITH_PORT, "every server with a port had one: {taps:?}");
    assert_eq!(containers.len(), WAVES * PER_WAVE);

    // Nothing left on Docker, in /var/run/netns, on the host or in OVS.
    let left = sh(&format!("docker ps -aq --filter label=nova.host={host_name}"));
    assert!(left.trim().is_empty(), "containers left: {left}");
    let netns: BTreeSet<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    let stale: Vec<_> = containers.intersection(&netns).collect();
    assert!(stale.is_empty(), "netns entries left: {stale:?}");
    let links = sh("ip -o link show");
    let ovs_ports = match cloud.var("ND_OVS_DB") {
        "" => String::new(),
        db => sh(&format!("ovs-vsctl --db={db} list-ports {}", cloud.var("ND_NET_BRIDGE"))),
    };
    for tap in &taps {
        assert!(!links.contains(&format!(" {tap}:")) && !links.contains(&format!(" {tap}@")), "{tap} left on the host");
        assert!(!ovs_ports.lines().any(|p| p == tap), "{tap} left on {}", cloud.var("ND_NET_BRIDGE"));
    }

    // Placement holds nothing for these servers any more.
    let allocs = cloud.placement(&format!("/resource_providers/{rp}/allocations")).await;
    let held: Vec<&String> =
        allocs["allocations"].as_object().unwrap().keys().filter(|c| servers.contains(c.as_str())).collect();
    assert!(held.is_empty(), "allocations left: {held:?}");
    let usages = cloud.placement(&format!("/resource_providers/{rp}/usages")).await;
    assert_eq!(usages["usages"], usages_base["usages"], "usage back to where it was");

    // The service holds no more descriptors than before, and its memory
    // came back near the baseline. HTTP pools close idle connections 1.5 s
    // after their last use, so what a leak would keep is what is still
    // open once they had the time to (polled, bounded).
    let settled = |fds: usize, rss: u64| fds <= fds_base + 4 && rss <= rss_base + rss_base / 2 + 4096;
    let quiet = Instant::now();
    let (mut fds, mut rss) = (open_fds(pid), rss_kib(pid));
    while !settled(fds, rss) && quiet.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        (fds, rss) = (open_fds(pid), rss_kib(pid));
    }
    common::figure(format!(
        "{} servers in {:?}; fds {fds_base} -> {fds}; RSS baseline {rss_base} KiB, peak {rss_peak} KiB, after {rss} KiB",
        WAVES * PER_WAVE,
        started.elapsed()
    ));
    assert!(fds <= fds_base + 4, "descriptors grew from {fds_base} to {fds}");
    assert!(rss <= rss_base + rss_base / 2 + 4096, "RSS {rss} KiB after, baseline {rss_base} KiB");
    assert!(!host.log_text().contains("panicked"), "a task panicked");
    host.stop().await;
}
