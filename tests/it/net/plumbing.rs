//! Integration tests of `net`: real containers, real netlink. Run as root
//! with a Docker daemon (DOCKER_HOST or /var/run/docker.sock).

use std::path::Path;

use super::fixture::*;
use nova_docker::net::{NetError, NetnsLink, PlugOptions, Vif, plug, unplug};

fn opts() -> PlugOptions {
    PlugOptions::default()
}

fn netns_entry(name: &str) -> bool {
    std::fs::symlink_metadata(Path::new("/var/run/netns").join(name)).is_ok()
}

async fn ping(c: &str, target: &str) -> bool {
    exec(c, &["ping", "-c1", "-W2", target]).await.ok
}

fn default_lines(routes: &str) -> Vec<String> {
    routes.lines().filter(|l| l.starts_with("default")).map(str::to_string).collect()
}

/// Two containers on one Linux bridge: v4 + v6 connectivity both ways and to
/// the bridge address, MTU, MAC, exactly one default route per family, the
/// netns entry usable by `ip netns exec`, and a clean teardown.
#[test]
fn two_containers_on_a_bridge() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;

        let (a, pid_a) = fx.container(0).await;
        let (b, pid_b) = fx.container(1).await;
        let va = bridge_vif(&br, "10.77.0.10", Some("fd77::10"), 1400);
        let vb = bridge_vif(&br, "10.77.0.11", Some("fd77::11"), 1400);

        NetnsLink::create(&a, pid_a).await.unwrap();
        NetnsLink::create(&b, pid_b).await.unwrap();
        let ra = plug(&va, pid_a, "eth0", &opts()).await.unwrap();
        let rb = plug(&vb, pid_b, "eth0", &opts()).await.unwrap();
        println!("plug A took {:?}, B took {:?}", ra.elapsed, rb.elapsed);
        assert_eq!(ra.host_ifname, va.devname_or_default());
        assert_eq!(ra.default_routes.len(), 2);
        assert!(ra.default_routes.iter().all(|d| d.installed));

        // bridge ports are the Nova-named host ends
        let mut ports = bridge_ports(&br).await;
        ports.sort();
        let mut want = vec![va.devname_or_default(), vb.devname_or_default()];
        want.sort();
        assert_eq!(ports, want);

        // connectivity, v4 and v6, container<->container and container->bridge
        for (c, peer4, peer6) in [(&a, "10.77.0.11", "fd77::11"), (&b, "10.77.0.10", "fd77::10")] {
            for t in [peer4, "10.77.0.1", peer6, "fd77::1"] {
                assert!(ping(c, t).await, "{c} cannot ping {t}");
            }
        }

        // MTU on both ends, MAC on the container end
        assert_eq!(exec(&a, &["cat", "/sys/class/net/eth0/mtu"]).await.stdout.trim(), "1400");
        let host_end = must("ip", &["-o", "link", "show", &va.devname_or_default()]).await;
        assert!(host_end.contains("mtu 1400"), "{host_end}");
        assert!(host_end.contains(&format!("link/ether fe:{}", &va.address.clone().unwrap()[3..])), "{host_end}");
        let addr = exec(&a, &["cat", "/sys/class/net/eth0/address"]).await.stdout;
        assert_eq!(addr.trim(), va.address.as_deref().unwrap());

        // exactly one default route per family
        let r4 = exec(&a, &["ip", "route"]).await.stdout;
        assert_eq!(default_lines(&r4), ["default via 10.77.0.1 dev eth0 "], "{r4}");
        let r6 = exec(&a, &["ip", "-6", "route"]).await.stdout;
        let d6 = default_lines(&r6);
        assert_eq!(d6.len(), 1, "{r6}");
        assert!(d6[0].starts_with("default via fd77::1 dev eth0"), "{r6}");

        // operators' view through the netns entry
        let list = must("ip", &["netns", "list"]).await;
        assert!(list.lines().any(|l| l.split_whitespace().next() == Some(a.as_str())), "{list}");
        let inside = must("ip", &["netns", "exec", &a, "ip", "addr", "show", "eth0"]).await;
        assert!(inside.contains("inet 10.77.0.10/24"), "{inside}");
        assert!(inside.contains("inet6 fd77::10/64"), "{inside}");
        assert!(!inside.contains("tentative"), "{inside}");
        assert!(NetnsLink::is_current(&a, pid_a).await.unwrap());

        // re-plugging the same port into the running container is idempotent
        let again = plug(&va, pid_a, "eth0", &opts()).await.unwrap();
        assert!(again.replaced_stale);
        assert!(ping(&a, "10.77.0.11").await);

        // teardown
        for (v, c) in [(&va, &a), (&vb, &b)] {
            unplug(v, &opts()).await.unwrap();
            unplug(v, &opts()).await.unwrap(); // idempotent
            NetnsLink::remove(c).await.unwrap();
            NetnsLink::remove(c).await.unwrap(); // idempotent
            assert!(!netns_entry(c));
            let inside = exec(c, &["ls", "/sys/class/net"]).await.stdout;
            assert_eq!(inside.split_whitespace().collect::<Vec<_>>(), ["lo"]);
        }
        let l = links().await;
        assert!(!l.contains(&va.devname_or_default()) && !l.contains(&vb.devname_or_default()), "{l:?}");
        assert!(bridge_ports(&br).await.is_empty());
        assert!(!must("ip", &["netns", "list"]).await.contains(&a));
    });
}

/// After `docker restart` the container has a new pid and netns: the netns
/// entry is detected stale and replaced, and plugging again works.
#[test]
fn replug_after_docker_restart() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;
        let (c, pid1) = fx.container(0).await;
        let v = bridge_vif(&br, "10.77.0.20", Some("fd77::20"), 1450);

        NetnsLink::create(&c, pid1).await.unwrap();
        NetnsLink::create(&c, pid1).await.unwrap(); // idempotent, no churn
        plug(&v, pid1, "eth0", &opts()).await.unwrap();
        assert!(ping(&c, "10.77.0.1").await);

        let pid2 = fx.restart(&c).await;
        assert_ne!(pid1, pid2);
        assert!(!NetnsLink::is_current(&c, pid2).await.unwrap(), "entry should be stale after restart");
        // The stale entry still pins the old netns, so the old veth is still there.
        assert!(exec(&c, &["ls", "/sys/class/net"]).await.stdout.split_whitespace().eq(["lo"]));

        NetnsLink::create(&c, pid2).await.unwrap();
        assert!(NetnsLink::is_current(&c, pid2).await.unwrap());
        let r = plug(&v, pid2, "eth0", &opts()).await.unwrap();
        println!("re-plug after restart: replaced_stale={} in {:?}", r.replaced_stale, r.elapsed);
        assert!(ping(&c, "10.77.0.1").await);
        assert!(ping(&c, "fd77::1").await);
        let inside = must("ip", &["netns", "exec", &c, "ip", "-o", "addr", "show", "eth0"]).await;
        assert!(inside.contains("10.77.0.20/24"), "{inside}");
        // one host end, on the bridge
        assert_eq!(bridge_ports(&br).await, [v.devname_or_default()]);

        unplug(&v, &opts()).await.unwrap();
        NetnsLink::remove(&c).await.unwrap();
        assert!(!netns_entry(&c));
        assert!(!links().await.contains(&v.devname_or_default()));
    });
}

/// 20 containers plugged at once into a bridge that does not exist yet
/// (exercises the bridge-creation race); all can reach the first one.
#[test]
fn twenty_concurrent_plugs() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        let mut cs = Vec::new();
        for chunk in (0..20).collect::<Vec<_>>().chunks(5) {
            let started = futures::future::join_all(chunk.iter().map(|i| fx.container(*i))).await;
            cs.extend(started);
        }
        let vifs: Vec<Vif> = (0..20).map(|i| bridge_vif(&br, &format!("10.77.0.{}", 100 + i), None, 1500)).collect();

        let t0 = std::time::Instant::now();
        let results = futures::future::join_all(cs.iter().zip(&vifs).map(|((id, pid), v)| async move {
            NetnsLink::create(id, *pid).await?;
            plug(v, *pid, "eth0", &opts()).await
        }))
        .await;
        let wall = t0.elapsed();
        let mut times = Vec::new();
        for r in &results {
            match r {
                Ok(rep) => times.push(rep.elapsed),
                Err(e) => panic!("concurrent plug failed: {e}"),
            }
        }
        times.sort();
        println!("20 concurrent plugs: wall {wall:?}, per-plug p50 {:?} max {:?}", times[10], times[19]);

        assert_eq!(must("ip", &["-o", "link", "show", "type", "bridge"]).await.matches(&br).count(), 1);
        assert_eq!(bridge_ports(&br).await.len(), 20);
        let pings = futures::future::join_all(cs.iter().skip(1).map(|(id, _)| ping(id, "10.77.0.100"))).await;
        assert!(pings.iter().all(|ok| *ok), "{pings:?}");

        let un = futures::future::join_all(cs.iter().zip(&vifs).map(|((id, _), v)| async move {
            unplug(v, &opts()).await?;
            NetnsLink::remove(id).await
        }))
        .await;
        assert!(un.iter().all(Result::is_ok), "{un:?}");
        assert!(bridge_ports(&br).await.is_empty());
        for (id, _) in &cs {
            assert!(!netns_entry(id));
        }
    });
}

/// A second VIF never overrides the default route of the first; its own
/// connected route and host routes are added.
#[test]
fn second_vif_keeps_first_default_route() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br1 = lb_bridge();
        let br2 = lb_bridge();
        make_bridge(&br1, "10.77.0.1/24", "fd77::1/64").await;
        make_bridge(&br2, "10.78.0.1/24", "fd78::1/64").await;
        let (c, pid) = fx.container(0).await;
        let v1 = bridge_vif(&br1, "10.77.0.30", Some("fd77::30"), 1500);
        let mut j = serde_json::to_value(bridge_vif(&br2, "10.78.0.30", Some("fd78::30"), 1500)).unwrap();
        let text = j.to_string().replace("10.77.0.", "10.78.0.").replace("fd77::", "fd78::");
        j = serde_json::from_str(&text).unwrap();
        j["network"]["subnets"][0]["routes"] = serde_json::json!([
            {"cidr": "192.168.50.0/24", "gateway": {"address": "10.78.0.254", "type": "gateway"}, "meta": {}}
        ]);
        let v2: Vif = serde_json::from_value(j).unwrap();

        let r1 = plug(&v1, pid, "eth0", &opts()).await.unwrap();
        let r2 = plug(&v2, pid, "eth1", &opts()).await.unwrap();
        assert!(r1.default_routes.iter().all(|d| d.installed));
        assert_eq!(r2.default_routes.len(), 2);
        assert!(r2.default_routes.iter().all(|d| !d.installed), "{:?}", r2.default_routes);
        assert!(r2.host_routes[0].installed);

        let r4 = exec(&c, &["ip", "route"]).await.stdout;
        assert_eq!(default_lines(&r4), ["default via 10.77.0.1 dev eth0 "], "{r4}");
        assert!(r4.contains("192.168.50.0/24 via 10.78.0.254 dev eth1"), "{r4}");
        assert!(r4.contains("10.78.0.0/24 dev eth1"), "{r4}");
        let r6 = exec(&c, &["ip", "-6", "route"]).await.stdout;
        assert_eq!(default_lines(&r6).len(), 1, "{r6}");
        assert!(ping(&c, "10.78.0.1").await && ping(&c, "fd78::1").await);

        let ni = vec![v1.clone(), v2.clone()];
        nova_docker::net::unplug_all(&ni, &opts()).await.unwrap();
        assert!(exec(&c, &["ls", "/sys/class/net"]).await.stdout.split_whitespace().eq(["lo"]));
    });
}

/// Failures leave nothing behind: a kernel rejection after the veth exists
/// (host route via the subnet broadcast address: EINVAL) is rolled back;
/// unsupported types and missing OVS fail before anything is created.
#[test]
fn failed_plugs_leave_nothing_behind() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;
        let (c, pid) = fx.container(0).await;

        let mut j = serde_json::to_value(bridge_vif(&br, "10.77.0.40", Some("fd77::40"), 1500)).unwrap();
        j["network"]["subnets"][0]["routes"] = serde_json::json!([
            {"cidr": "172.31.0.0/16", "gateway": {"address": "10.77.0.255"}, "meta": {}}
        ]);
        let bad: Vif = serde_json::from_value(j).unwrap();
        let e = plug(&bad, pid, "eth0", &opts()).await.unwrap_err();
        println!("expected failure: {e}");
        assert!(matches!(e, NetError::Netlink { .. }), "{e:?}");
        assert!(e.to_string().contains("172.31.0.0/16") && e.to_string().contains("EINVAL"), "{e}");
        assert!(!links().await.contains(&bad.devname_or_default()));
        assert!(bridge_ports(&br).await.is_empty());
        assert!(exec(&c, &["ls", "/sys/class/net"]).await.stdout.split_whitespace().eq(["lo"]));

        let mut j = serde_json::to_value(bridge_vif(&br, "10.77.0.41", None, 1500)).unwrap();
        j["type"] = "vhostuser".into();
        let e = plug(&serde_json::from_value(j).unwrap(), pid, "eth0", &opts()).await.unwrap_err();
        assert!(matches!(e, NetError::UnsupportedVifType { .. }), "{e}");

        let mut j = serde_json::to_value(bridge_vif(&br, "10.77.0.42", None, 1500)).unwrap();
        j["type"] = "ovs".into();
        let ovs_vif: Vif = serde_json::from_value(j).unwrap();
        let o = PlugOptions {
            instance_uuid: Some(uuid::Uuid::new_v4().to_string()),
            ovs_vsctl: "/nonexistent/ovs-vsctl".into(),
            ovs_integration_bridge: br.clone(),
            ..PlugOptions::default()
        };
        let e = plug(&ovs_vif, pid, "eth0", &o).await.unwrap_err();
        assert!(matches!(e, NetError::OvsUnavailable(_)), "{e}");
        assert!(!links().await.contains(&ovs_vif.devname_or_default()));

        // a dead pid is a typed netns error, not a panic
        let e = plug(&bridge_vif(&br, "10.77.0.43", None, 1500), i32::MAX - 7, "eth0", &opts()).await.unwrap_err();
        assert!(matches!(e, NetError::Netns { .. }), "{e}");
        assert!(bridge_ports(&br).await.is_empty());
    });
}

/// The same flow in the real host network namespace (no private netns):
/// checks /sys/class/net and /var/run/netns directly. Container-to-bridge
/// traffic only (host INPUT), since bridged forwarding between containers is
/// subject to this machine's Docker FORWARD DROP policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_netns_smoke() {
    let fx = Fixture::new().await;
    let br = lb_bridge();
    struct DelBridge(String);
    impl Drop for DelBridge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("timeout").args(["10", "ip", "link", "del", &self.0]).output();
        }
    }
    let _guard = DelBridge(br.clone());
    // 10.77.0.0/24 is unused by the real host (other tests use private netns).
    make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;
    let (c, pid) = fx.container(0).await;
    let v = bridge_vif(&br, "10.77.0.50", Some("fd77::50"), 1400);
    NetnsLink::create(&c, pid).await.unwrap();
    plug(&v, pid, "eth0", &opts()).await.unwrap();
    let dev = v.devname_or_default();
    assert!(Path::new("/sys/class/net").join(&dev).exists());
    assert_eq!(std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu")).unwrap().trim(), "1400");
    assert!(Path::new(&format!("/sys/class/net/{br}/brif/{dev}")).exists());
    assert!(ping(&c, "10.77.0.1").await);
    assert!(ping(&c, "fd77::1").await);
    assert!(must("ip", &["netns", "exec", &c, "ip", "addr"]).await.contains("10.77.0.50/24"));

    unplug(&v, &opts()).await.unwrap();
    NetnsLink::remove(&c).await.unwrap();

    // our own netns (think: a container with network mode host) is refused
    let e = plug(&v, std::process::id() as i32, "eth0", &opts()).await.unwrap_err();
    assert!(matches!(e, NetError::Netns { .. }) && e.to_string().contains("own network namespace"), "{e}");

    assert!(!Path::new("/sys/class/net").join(&dev).exists());
    assert!(std::fs::read_dir(format!("/sys/class/net/{br}/brif")).unwrap().next().is_none());
    assert!(!netns_entry(&c));
}

/// The old driver's symlink (`ln -sf /proc/<pid>/ns/net /var/run/netns/<cid>`)
/// and a bare leftover file are both replaced by a proper entry.
#[test]
fn replaces_legacy_symlink_and_stray_file() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let (c, pid) = fx.container(0).await;
        let p = Path::new("/var/run/netns").join(&c);
        std::fs::create_dir_all("/var/run/netns").unwrap();
        std::os::unix::fs::symlink(format!("/proc/{pid}/ns/net"), &p).unwrap();
        NetnsLink::create(&c, pid).await.unwrap();
        assert!(!std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert!(NetnsLink::is_current(&c, pid).await.unwrap());
        NetnsLink::remove(&c).await.unwrap();
        std::fs::write(&p, b"").unwrap();
        assert!(!NetnsLink::is_current(&c, pid).await.unwrap());
        NetnsLink::create(&c, pid).await.unwrap();
        assert!(must("ip", &["netns", "exec", &c, "ip", "link"]).await.contains("lo:"));
        NetnsLink::remove(&c).await.unwrap();
        assert!(!netns_entry(&c));
    });
}

/// A network_info that does not come from Neutron's binding (a buggy or
/// hostile RPC peer's info cache) names host devices, other bridges or
/// another port's OVS identity: plug and unplug refuse it before any change
/// on the host. The "host" (a private netns) has the same links afterwards,
/// the container has only `lo`, no netns entry appears and `ovs-vsctl` (a
/// recording stand-in) never ran.
#[test]
fn port_names_not_from_neutron_binding_change_nothing_on_the_host() {
    in_private_netns(|| async {
        let fx = Fixture::new().await;
        let br = lb_bridge();
        make_bridge(&br, "10.77.0.1/24", "fd77::1/64").await;
        // Host devices a peer might name: a veth pair and a foreign bridge.
        must("ip", &["link", "add", "victim0", "type", "veth", "peer", "name", "victim1"]).await;
        must("ip", &["link", "add", "hostbr0", "type", "bridge"]).await;
        let (c, pid) = fx.container(0).await;
        let dir = std::env::temp_dir().join(format!("nd-binding-{}", fx.tag));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("vsctl.log");
        let vsctl = dir.join("ovs-vsctl");
        std::fs::write(&vsctl, format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display())).unwrap();
        must("chmod", &["755", vsctl.to_str().unwrap()]).await;
        let opts = PlugOptions {
            instance_uuid: Some(uuid::Uuid::new_v4().to_string()),
            ovs_vsctl: vsctl.clone(),
            ..PlugOptions::default()
        };
        let host_links = must("ip", &["-o", "link", "show"]).await;
        let netns_before = must("ip", &["netns", "list"]).await;

        let good = serde_json::to_value(bridge_vif(&br, "10.77.0.50", None, 1500)).unwrap();
        let other_port = uuid::Uuid::new_v4().to_string();
        let patches = [
            serde_json::json!({"devname": "victim0"}),
            serde_json::json!({"devname": "hostbr0"}),
            serde_json::json!({"network": {"id": good["network"]["id"], "bridge": "hostbr0"}}),
            serde_json::json!({"network": {"id": good["network"]["id"], "bridge": lb_bridge()}}),
            serde_json::json!({"type": "ovs", "network": {"id": good["network"]["id"], "bridge": "br-ex"}}),
            serde_json::json!({"type": "ovs", "network": {"id": good["network"]["id"], "bridge": "br-int"},
                               "ovs_interfaceid": other_port}),
            serde_json::json!({"type": "ovs", "network": {"id": good["network"]["id"], "bridge": "br-int"},
                               "ovs_interfaceid": good["id"], "details": {"ovs_hybrid_plug": true},
                               "devname": "victim1"}),
        ];
        for patch in patches {
            let mut j = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                j[k] = v.clone();
            }
            let vif: Vif = serde_json::from_value(j).unwrap();
            let e = plug(&vif, pid, "eth0", &opts).await.unwrap_err();
            assert!(matches!(e, NetError::NotFromBinding { .. }), "{patch}: {e:?}");
            let e = unplug(&vif, &opts).await.unwrap_err();
            assert!(matches!(e, NetError::NotFromBinding { .. }), "{patch}: {e:?}");
            println!("refused: {e}");
        }

        assert_eq!(must("ip", &["-o", "link", "show"]).await, host_links, "the host's links changed");
        assert!(bridge_ports(&br).await.is_empty() && bridge_ports("hostbr0").await.is_empty());
        assert!(exec(&c, &["ls", "/sys/class/net"]).await.stdout.split_whitespace().eq(["lo"]));
        // /var/run/netns is shared with concurrent tests: only entries this
        // test could have made (the container's, the instance's) count.
        let netns_after = must("ip", &["netns", "list"]).await;
        let new_entries: Vec<&str> = netns_after.lines().filter(|l| !netns_before.lines().any(|b| b == *l)).collect();
        let instance = opts.instance_uuid.clone().unwrap_or_default();
        assert!(
            !new_entries.iter().any(|l| l.contains(c.as_str()) || l.contains(instance.as_str())),
            "a netns entry appeared: {new_entries:?}"
        );
        assert!(!log.exists(), "ovs-vsctl ran: {}", std::fs::read_to_string(&log).unwrap_or_default());

        // The same port with Neutron's names plugs (the fixture is sound).
        let vif: Vif = serde_json::from_value(good).unwrap();
        plug(&vif, pid, "eth0", &opts).await.unwrap();
        assert_eq!(bridge_ports(&br).await, [vif.devname_or_default()]);
        unplug(&vif, &opts).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
