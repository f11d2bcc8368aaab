//! Plug latency: this module vs. the old driver's command sequence.
//!
//! `cargo test --release --test net_bench -- --ignored --nocapture`
//! (root + Docker). Both are timed the same way, wall clock around one plug,
//! 50 rounds after 3 warm-ups, torn down (untimed) between rounds, on one
//! container attached to a Linux bridge inside a private "host" netns.

use std::time::{Duration, Instant};

use super::fixture::*;
use nova_docker::net::{NetnsLink, PlugOptions, Vif, plug, unplug};

const ROUNDS: usize = 50;
const WARMUP: usize = 3;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn show(label: &str, v: &mut [Duration]) {
    let p50 = pct(v, 0.5);
    let p90 = pct(v, 0.9);
    let min = v[0];
    let max = v[v.len() - 1];
    println!("{label:<58} p50 {p50:>10.3?}  p90 {p90:>10.3?}  min {min:>10.3?}  max {max:>10.3?}  (n={})", v.len());
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

async fn bench_ours(pid: i32, v: &Vif) -> Vec<Duration> {
    let opts = PlugOptions::default();
    let mut out = Vec::new();
    for i in 0..WARMUP + ROUNDS {
        let t = Instant::now();
        plug(v, pid, "eth0", &opts).await.expect("plug");
        let d = t.elapsed();
        unplug(v, &opts).await.expect("unplug");
        if i >= WARMUP {
            out.push(d);
        }
    }
    out
}

/// The old driver's sequence for a `bridge` VIF (nova-docker.md §4.2:
/// `_attach_vifs` + `plug_bridge` + `attach`), minus rootwrap.
async fn bench_old(cid: &str, pid: i32, br: &str, use_ip_n: bool) -> Vec<Duration> {
    let have_ethtool = run("sh", &["-c", "command -v ethtool"]).await.ok;
    let tap = "tapbench0old0";
    let ns = "nsbench0old0";
    let link = format!("/var/run/netns/{cid}");
    let mut out = Vec::new();
    for i in 0..WARMUP + ROUNDS {
        let proc_ns = format!("/proc/{pid}/ns/net");
        let t = Instant::now();
        let inns = |args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = if use_ip_n {
                vec!["-n".into(), cid.into()]
            } else {
                vec!["netns".into(), "exec".into(), cid.into(), "ip".into()]
            };
            v.extend(args.iter().map(|s| s.to_string()));
            v
        };
        let steps: Vec<(&str, Vec<String>)> = vec![
            ("ln", vec!["-sf".into(), proc_ns.clone(), link.clone()]),
            ("ip", inns(&["link", "set", "lo", "up"])),
            ("ip", ["link", "add", "name", tap, "type", "veth", "peer", "name", ns].map(String::from).to_vec()),
            ("ip", ["link", "set", tap, "address", "fe:ed:00:00:00:01"].map(String::from).to_vec()),
            ("brctl", ["addif", br, tap].map(String::from).to_vec()),
            ("ip", ["link", "set", tap, "up"].map(String::from).to_vec()),
            ("ip", vec!["link".into(), "set".into(), ns.into(), "netns".into(), cid.into()]),
            ("ip", inns(&["link", "set", ns, "address", "fa:16:3e:00:00:01"])),
            ("ip", inns(&["addr", "add", "10.77.0.60/24", "dev", ns])),
            ("ip", inns(&["link", "set", ns, "up"])),
            ("ip", inns(&["link", "set", ns, "mtu", "1400"])),
            ("ip", inns(&["route", "replace", "default", "via", "10.77.0.1", "dev", ns])),
        ];
        for (prog, args) in &steps {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            must(prog, &a).await;
        }
        if have_ethtool && !use_ip_n {
            must("ip", &["netns", "exec", cid, "ethtool", "--offload", ns, "tso", "off"]).await;
        }
        let d = t.elapsed();
        must("ip", &["link", "del", tap]).await;
        must("rm", &["-f", &link]).await;
        if i >= WARMUP {
            out.push(d);
        }
    }
    if !have_ethtool {
        println!("(ethtool not installed: its step was skipped)");
    }
    out
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn plug_latency() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;
        let (c1, pid1) = fx.container(0).await;
        let (c2, pid2) = fx.container(1).await;
        NetnsLink::create(&c1, pid1).await.unwrap();

        let v4 = bridge_vif(&br, "10.77.0.60", None, 1400);
        let v46 = bridge_vif(&br, "10.77.0.61", Some("fd77::61"), 1400);

        let fds_before = fd_count();
        let mut ours4 = bench_ours(pid1, &v4).await;
        let mut ours46 = bench_ours(pid1, &v46).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fds_after = fd_count();

        let mut old = bench_old(&c2, pid2, &br, false).await;
        let mut old_n = bench_old(&c2, pid2, &br, true).await;

        println!();
        show("net::plug, bridge VIF, 1 IPv4 (old driver's scope)", &mut ours4);
        show("net::plug, bridge VIF, IPv4 + IPv6", &mut ours46);
        show("old driver sequence (ip netns exec, brctl, ethtool)", &mut old);
        show("same sequence with `ip -n` instead of `ip netns exec`", &mut old_n);
        println!("fds before {fds_before}, after {} plug/unplug cycles: {fds_after}", 2 * (WARMUP + ROUNDS));
        assert!(fds_after <= fds_before + 2, "fd leak: {fds_before} -> {fds_after}");
        NetnsLink::remove(&c1).await.unwrap();
    });
}
