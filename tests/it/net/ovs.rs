//! `ovs` and hybrid `ovs` VIFs against a real, private Open vSwitch
//! (ovsdb-server + ovs-vswitchd with the userspace `netdev` datapath, so no
//! kernel module is needed), started inside the test's private netns.
//! Fails when Open vSwitch is not installed: the environment has it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fixture::*;
use nova_docker::net::{NetError, NetnsLink, PlugOptions, Vif, plug, unplug};

/// A private OVS; killed (and its files removed) on drop.
struct Ovs {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Ovs {
    /// Path of a wrapper that points ovs-vsctl at this instance's database.
    fn vsctl(&self) -> PathBuf {
        self.dir.join("ovs-vsctl")
    }

    async fn start() -> Ovs {
        let schema = "/usr/share/openvswitch/vswitch.ovsschema";
        // Missing Open vSwitch fails the test: a pass must mean the ovs and
        // hybrid plugs were tried (tests/env/install.sh installs it).
        assert!(
            Path::new("/usr/sbin/ovs-vswitchd").exists() && Path::new(schema).exists(),
            "Open vSwitch (openvswitch-switch) is not installed: run tests/env/install.sh"
        );
        let dir = std::env::temp_dir().join(format!("nvt-ovs-{}", suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ovs = Ovs { dir: dir.clone(), children: Vec::new() };
        let d = dir.to_str().unwrap().to_string();
        must("ovsdb-tool", &["create", &format!("{d}/conf.db"), schema]).await;
        let spawn = |prog: &str, args: Vec<String>| {
            Command::new(prog)
                .args(args)
                .env("OVS_RUNDIR", &d)
                .env("OVS_DBDIR", &d)
                .env("OVS_LOGDIR", &d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        ovs.children.push(spawn(
            "ovsdb-server",
            vec![
                format!("{d}/conf.db"),
                format!("--remote=punix:{d}/db.sock"),
                format!("--unixctl={d}/ovsdb.ctl"),
                format!("--log-file={d}/ovsdb.log"),
            ],
        ));
        for _ in 0..100 {
            if Path::new(&format!("{d}/db.sock")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wrapper = format!("#!/bin/sh\nexec /usr/bin/ovs-vsctl --db=unix:{d}/db.sock \"$@\"\n");
        std::fs::write(ovs.vsctl(), wrapper).unwrap();
        must("chmod", &["755", ovs.vsctl().to_str().unwrap()]).await;
        must(ovs.vsctl().to_str().unwrap(), &["--no-wait", "init"]).await;
        ovs.children.push(spawn(
            "ovs-vswitchd",
            vec![
                format!("unix:{d}/db.sock"),
                format!("--unixctl={d}/vswitchd.ctl"),
                format!("--log-file={d}/vswitchd.log"),
            ],
        ));
        ovs
    }

    async fn vsctl_out(&self, args: &[&str]) -> String {
        must(self.vsctl().to_str().unwrap(), args).await
    }
}

fn ovs_vif(br: &str, ip: &str, hybrid: bool) -> Vif {
    let v6 = ip.replace("10.77.0.", "fd77::");
    let mut j = serde_json::to_value(bridge_vif(br, ip, Some(&v6), 1450)).unwrap();
    j["type"] = "ovs".into();
    j["ovs_interfaceid"] = j["id"].clone();
    j["details"] = serde_json::json!({"port_filter": !hybrid, "ovs_hybrid_plug": hybrid, "datapath_type": "netdev"});
    serde_json::from_value(j).unwrap()
}

#[test]
fn ovs_and_hybrid_ovs_vifs() {
    in_private_netns(|| async {
        let ovs = Ovs::start().await;
        let fx = Fixture::new().await;
        let br = format!("nvo{}", &fx.tag[..6]);
        ovs.vsctl_out(&["--timeout=10", "add-br", &br, "--", "set", "bridge", &br, "datapath_type=netdev"]).await;

        let (a, pid_a) = fx.container(0).await;
        let (b, pid_b) = fx.container(1).await;
        let va = ovs_vif(&br, "10.77.0.70", false);
        let vb = ovs_vif(&br, "10.77.0.71", true);
        let vm_uuid = uuid::Uuid::new_v4().to_string();
        let opts = PlugOptions {
            instance_uuid: Some(vm_uuid.clone()),
            ovs_vsctl: ovs.vsctl(),
            ovs_integration_bridge: br.clone(),
            ..PlugOptions::default()
        };

        NetnsLink::create(&a, pid_a).await.unwrap();
        NetnsLink::create(&b, pid_b).await.unwrap();
        let ra = plug(&va, pid_a, "eth0", &opts).await.unwrap();
        let rb = plug(&vb, pid_b, "eth0", &opts).await.unwrap();
        println!("ovs plug {:?}, hybrid plug {:?}", ra.elapsed, rb.elapsed);
        assert_eq!(rb.hybrid_bridge.as_deref(), Some(&*format!("qbr{}", &vb.id[..11])));

        // plain ovs: the tap itself is the OVS port, with Neutron's external-ids
        let tap_a = va.devname_or_default();
        let ext = ovs.vsctl_out(&["get", "Interface", &tap_a, "external_ids"]).await;
        for want in [
            format!("iface-id=\"{}\"", va.id),
            "iface-status=active".to_string(),
            format!("attached-mac=\"{}\"", va.address.as_deref().unwrap()),
            format!("vm-uuid=\"{vm_uuid}\""),
        ] {
            assert!(ext.contains(&want), "{want} not in {ext}");
        }
        // hybrid: tap + qvb on qbr, qvo on OVS
        let qbr = format!("qbr{}", &vb.id[..11]);
        let qvb = format!("qvb{}", &vb.id[..11]);
        let qvo = format!("qvo{}", &vb.id[..11]);
        let mut qbr_ports = bridge_ports(&qbr).await;
        qbr_ports.sort();
        let mut want = vec![vb.devname_or_default(), qvb.clone()];
        want.sort();
        assert_eq!(qbr_ports, want);
        let mut ports: Vec<String> = ovs.vsctl_out(&["list-ports", &br]).await.lines().map(String::from).collect();
        ports.sort();
        let mut want = vec![tap_a.clone(), qvo.clone()];
        want.sort();
        assert_eq!(ports, want);
        let ext = ovs.vsctl_out(&["get", "Interface", &qvo, "external_ids"]).await;
        assert!(ext.contains(&format!("iface-id=\"{}\"", vb.id)), "{ext}");
        assert!(must("ip", &["-o", "link", "show", &qvo]).await.contains("PROMISC"));

        // traffic through the userspace datapath, both families
        let mut ok = false;
        for _ in 0..5 {
            if exec(&a, &["ping", "-c1", "-W2", "10.77.0.71"]).await.ok {
                ok = true;
                break;
            }
        }
        assert!(ok, "ovs container A cannot reach hybrid container B");
        assert!(exec(&b, &["ping", "-c1", "-W2", "fd77::70"]).await.ok);

        // teardown
        unplug(&va, &opts).await.unwrap();
        unplug(&vb, &opts).await.unwrap();
        unplug(&vb, &opts).await.unwrap(); // idempotent
        assert_eq!(ovs.vsctl_out(&["list-ports", &br]).await.trim(), "");
        let l = links().await;
        for d in [&tap_a, &vb.devname_or_default(), &qbr, &qvb, &qvo] {
            assert!(!l.contains(d), "{d} left behind: {l:?}");
        }
        NetnsLink::remove(&a).await.unwrap();
        NetnsLink::remove(&b).await.unwrap();

        // an OVS failure after the veth exists is rolled back (the
        // integration bridge configured, but missing in OVS)
        let missing = PlugOptions { ovs_integration_bridge: "no-such-br".into(), ..opts.clone() };
        let bad = ovs_vif("no-such-br", "10.77.0.72", false);
        let e = plug(&bad, pid_a, "eth0", &missing).await.unwrap_err();
        println!("expected failure: {e}");
        assert!(matches!(e, NetError::Ovs { .. }), "{e:?}");
        assert!(!links().await.contains(&bad.devname_or_default()));
        assert!(exec(&a, &["ls", "/sys/class/net"]).await.stdout.split_whitespace().eq(["lo"]));
        // hybrid failure: qbr/qvb/qvo created by this plug are removed too
        let bad = ovs_vif("no-such-br", "10.77.0.73", true);
        assert!(plug(&bad, pid_a, "eth0", &missing).await.is_err());
        let l = links().await;
        assert!(!l.iter().any(|d| d.ends_with(&bad.id[..11])), "{l:?}");
    });
}
