//! Fixtures for the networking integration tests (root + Docker required).
//!
//! * The test image is a busybox-static rootfs imported with `docker import`
//!   (no registry): `bin/busybox` plus applet symlinks.
//! * Containers run `sleep 3600` with network mode `none` and are removed by
//!   a drop guard even when the test panics; netns entries likewise.
//! * Most tests run on a tokio runtime whose threads first `unshare` their
//!   network namespace ([`in_private_netns`]): that namespace plays the
//!   compute host. On this machine Docker's `FORWARD DROP` policy together
//!   with br_netfilter (`bridge-nf-call-iptables=1`) would drop bridged
//!   container-to-container traffic in the real host netns; a fresh netns has
//!   empty ACCEPT tables. It also lets every test use 10.77.0.1/24 and
//!   fd77::1/64 at once, and everything the library creates on the "host"
//!   side vanishes with the namespace even if a test aborts.
#![allow(dead_code)]

use std::future::Future;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions, RestartContainerOptionsBuilder,
    StartContainerOptions,
};
use futures::TryStreamExt;
use nova_docker::net::{Vif, model::format_mac};

pub const IMAGE_REPO: &str = "nova-net-test-busybox";
pub const IMAGE_TAG: &str = "1";
const APPLETS: &[&str] =
    &["sh", "ip", "ping", "ping6", "sleep", "cat", "ls", "sysctl", "grep", "ifconfig", "route", "echo", "true"];

/// Random 8-hex suffix for unique names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A random Neutron-like port id and MAC (fa:16:3e:..).
pub fn port_id_and_mac() -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().into_bytes();
    (id, format_mac(&[0xfa, 0x16, 0x3e, b[0], b[1], b[2]]))
}

/// Runs `f` on a fresh multi-thread runtime whose threads all live in a new,
/// private network namespace (see module docs). Panics propagate.
pub fn in_private_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(f());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Output of a command.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command (inheriting the calling thread's netns) with a deadline.
pub async fn run(prog: &str, args: &[&str]) -> Out {
    let mut c = tokio::process::Command::new(prog);
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let o = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .unwrap_or_else(|_| panic!("{prog} {args:?} timed out"))
        .unwrap_or_else(|e| panic!("{prog} {args:?}: {e}"));
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs a command and panics unless it succeeds; returns stdout.
pub async fn must(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args).await;
    assert!(o.ok, "{prog} {args:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// `docker exec <c> args...`
pub async fn exec(c: &str, args: &[&str]) -> Out {
    let mut a = vec!["exec", c];
    a.extend_from_slice(args);
    run("docker", &a).await
}

/// Names of the links in the calling thread's netns (`ip -o link`).
pub async fn links() -> Vec<String> {
    must("ip", &["-o", "link", "show"])
        .await
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

/// Ports of a Linux bridge in the calling thread's netns.
pub async fn bridge_ports(br: &str) -> Vec<String> {
    must("ip", &["-o", "link", "show", "master", br])
        .await
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

/// Creates a Linux bridge with 10.77.0.1/24 and fd77::1/64 (nodad) in the
/// calling thread's netns.
pub async fn make_bridge(name: &str, v4: &str, v6: &str) {
    must("ip", &["link", "add", name, "type", "bridge"]).await;
    must("ip", &["addr", "add", v4, "dev", name]).await;
    must("ip", &["addr", "add", v6, "dev", name, "nodad"]).await;
    must("ip", &["link", "set", name, "up"]).await;
}

pub fn docker() -> Docker {
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    Docker::connect_with_unix(&sock, 60, bollard::API_DEFAULT_VERSION).expect("docker socket")
}

/// A minimal ustar archive writer (directories, files, symlinks).
struct Tar(Vec<u8>);

impl Tar {
    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{:0w$o}\0", v, w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }
    fn entry(&mut self, name: &str, typeflag: u8, mode: u64, data: &[u8], link: &str) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        Self::octal(&mut h[100..108], mode);
        Self::octal(&mut h[108..116], 0);
        Self::octal(&mut h[116..124], 0);
        Self::octal(&mut h[124..136], data.len() as u64);
        Self::octal(&mut h[136..148], 1_700_000_000);
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let cs = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cs.as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

/// Imports the busybox test image unless present.
pub async fn ensure_image(d: &Docker) {
    let reference = format!("{IMAGE_REPO}:{IMAGE_TAG}");
    if d.inspect_image(&reference).await.is_ok() {
        return;
    }
    let busybox = tokio::fs::read("/bin/busybox").await.expect("/bin/busybox (busybox-static)");
    let mut t = Tar(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"] {
        t.entry(dir, b'5', 0o755, &[], "");
    }
    t.entry("bin/busybox", b'0', 0o755, &busybox, "");
    for a in APPLETS {
        t.entry(&format!("bin/{a}"), b'2', 0o777, &[], "busybox");
    }
    let opts = CreateImageOptionsBuilder::default().from_src("-").repo(IMAGE_REPO).tag(IMAGE_TAG).build();
    let fut = d.create_image(Some(opts), Some(bollard::body_full(t.finish().into())), None).try_collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(60), fut).await.expect("docker import timed out").expect("docker import");
}

/// Containers (and netns entries) owned by a test; removed on drop, also
/// when the test panics.
pub struct Fixture {
    pub docker: Docker,
    pub tag: String,
    containers: Mutex<Vec<String>>,
    netns: Mutex<Vec<String>>,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let docker = docker();
        ensure_image(&docker).await;
        Fixture { docker, tag: suffix(), containers: Mutex::new(Vec::new()), netns: Mutex::new(Vec::new()) }
    }

    /// Starts a `sleep 3600` container with network mode none; returns (id, pid).
    pub async fn container(&self, n: usize) -> (String, i32) {
        let name = format!("nvt-{}-{n}", self.tag);
        let body = ContainerCreateBody {
            image: Some(format!("{IMAGE_REPO}:{IMAGE_TAG}")),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            labels: Some([("nova-net-test".to_string(), self.tag.clone())].into()),
            host_config: Some(HostConfig { network_mode: Some("none".into()), ..Default::default() }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = self.docker.create_container(Some(opts), body).await.expect("create container").id;
        self.containers.lock().unwrap().push(id.clone());
        self.netns.lock().unwrap().push(id.clone());
        self.docker.start_container(&id, None::<StartContainerOptions>).await.expect("start container");
        let pid = self.pid(&id).await;
        (id, pid)
    }

    pub async fn pid(&self, id: &str) -> i32 {
        let i = self.docker.inspect_container(id, None::<InspectContainerOptions>).await.expect("inspect");
        let pid = i.state.and_then(|s| s.pid).unwrap_or(0) as i32;
        assert!(pid > 0, "container {id} has no pid");
        pid
    }

    pub async fn restart(&self, id: &str) -> i32 {
        let o = RestartContainerOptionsBuilder::default().t(0).build();
        self.docker.restart_container(id, Some(o)).await.expect("restart");
        self.pid(id).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.containers.lock().unwrap_or_else(|p| p.into_inner()));
        for chunk in ids.chunks(20) {
            let mut a = vec!["30", "docker", "rm", "-f"];
            a.extend(chunk.iter().map(String::as_str));
            let _ = std::process::Command::new("timeout").args(&a).output();
        }
        for n in std::mem::take(&mut *self.netns.lock().unwrap_or_else(|p| p.into_inner())) {
            let p = format!("/var/run/netns/{n}");
            if std::fs::symlink_metadata(&p).is_ok() {
                let _ = std::process::Command::new("timeout").args(["10", "ip", "netns", "delete", &n]).output();
            }
        }
    }
}

/// A fresh linuxbridge-agent bridge name, `brq` + a network id's first 11
/// characters (the only Linux bridge a `bridge` VIF may name).
pub fn lb_bridge() -> String {
    format!("brq{}", &uuid::Uuid::new_v4().to_string()[..11])
}

/// The network id a `brq` bridge name was made from (completed with random
/// digits); a random one for other bridges.
pub fn network_id_of(bridge: &str) -> String {
    let random = uuid::Uuid::new_v4().to_string();
    match bridge.strip_prefix("brq") {
        Some(head) if head.len() == 11 => format!("{head}{}", &random[11..]),
        _ => random,
    }
}

/// A bridge VIF: one v4 subnet (and optionally one v6 subnet) with gateways.
pub fn bridge_vif(bridge: &str, v4: &str, v6: Option<&str>, mtu: u32) -> Vif {
    let (id, mac) = port_id_and_mac();
    let mut subnets = vec![serde_json::json!({
        "cidr": "10.77.0.0/24", "version": 4, "meta": {"dhcp_server": "10.77.0.2"},
        "gateway": {"address": "10.77.0.1", "type": "gateway", "version": 4, "meta": {}},
        "dns": [{"address": "10.77.0.53", "type": "dns", "version": 4, "meta": {}}],
        "ips": [{"address": v4, "type": "fixed", "version": 4, "meta": {}, "floating_ips": []}],
        "routes": []
    })];
    if let Some(v6) = v6 {
        subnets.push(serde_json::json!({
            "cidr": "fd77::/64", "version": 6, "meta": {},
            "gateway": {"address": "fd77::1", "type": "gateway", "version": 6, "meta": {}},
            "dns": [], "routes": [],
            "ips": [{"address": v6, "type": "fixed", "version": 6, "meta": {}, "floating_ips": []}]
        }));
    }
    let v = serde_json::json!({
        "id": id, "address": mac, "type": "bridge",
        "devname": format!("tap{}", &id[..11]), "ovs_interfaceid": null, "active": false,
        "vnic_type": "normal", "details": {"port_filter": true}, "profile": {},
        "qbh_params": null, "qbg_params": null, "preserve_on_delete": false, "meta": {},
        "network": {"id": network_id_of(bridge), "bridge": bridge, "label": "test",
                    "meta": {"mtu": mtu, "tenant_id": "t"}, "subnets": subnets}
    });
    serde_json::from_value(v).expect("vif json")
}
