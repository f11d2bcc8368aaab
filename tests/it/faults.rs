//! Faults around a running host: its AMQP connection killed by the broker in
//! the middle of a boot, and its Docker engine restarted under it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release, wait_for};
use crate::proxy::Relay;

const T: Duration = Duration::from_secs(120);

/// `docker save` of the bootable test image, to upload as a new Glance image.
pub fn bootable_archive() -> Vec<u8> {
    let out = std::process::Command::new("docker").args(["save", "nd-busybox:latest"]).output().unwrap();
    assert!(out.status.success(), "docker save: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Closes the service's AMQP connection(s) from the broker side.
fn kill_amqp_connections(vhost: &str, pid: u32) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "-p", vhost, "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let needle = format!("nova-docker:{pid}:");
    let mut killed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&needle)) {
        let conn = line.split('\t').next().unwrap();
        let r = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", conn, "fault injection by the tests"])
            .output()
            .unwrap();
        assert!(r.status.success(), "close_connection: {}", String::from_utf8_lossy(&r.stderr));
        killed += 1;
    }
    killed
}

#[tokio::test]
async fn amqp_connection_killed_during_a_boot() {
    let cloud = Cloud::get(Release::Newest);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("amqpkill");
    let extra = format!("[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    // A never-seen image: the build stalls in its download while held.
    let image = cloud.raw_glance_image(&common::unique("nd-amqpkill"), "docker", bootable_archive()).await;
    relay.hold();
    let id = cloud.create_server("amqpkill", &image, &name, "42").await;
    wait_for("the build to be claimed here", T, async || {
        cloud.server(&id).await.unwrap()["OS-EXT-SRV-ATTR:host"] == name.as_str()
    })
    .await;
    let killed = kill_amqp_connections(cloud.var("ND_VHOST"), host.pid().unwrap());
    assert!(killed >= 1, "found the service's connection");
    wait_for("a new AMQP connection", Duration::from_secs(15), async || host.log_text().contains("connection=2")).await;
    relay.release();
    // The build goes on to ACTIVE: nothing stays in a transitional state.
    let s = cloud.wait_status(&id, "ACTIVE", T).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    // Still consuming and heartbeating: a reboot round trip and "up".
    assert_eq!(cloud.action(&id, json!({"reboot": {"type": "HARD"}})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    host.wait_up(&cloud, T).await;
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

/// A private Docker engine (its own socket, data and containerd namespace),
/// which the test can restart without touching the machine's engine.
pub(crate) struct PrivateDocker {
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateDocker {
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The nova.conf lines pointing a host at this engine.
    pub(crate) fn host_conf(&self) -> String {
        format!("[docker]\nhost_url = unix://{}\n", self.socket().display())
    }

    /// Two engines started at once, in temporary directories: the two hosts
    /// of a move.
    pub(crate) async fn pair() -> (PrivateDocker, PrivateDocker) {
        let dir_a = std::env::temp_dir().join(crate::common::unique("nd-dockerd-a"));
        let dir_b = std::env::temp_dir().join(crate::common::unique("nd-dockerd-b"));
        tokio::join!(PrivateDocker::start(&dir_a), PrivateDocker::start(&dir_b))
    }

    pub(crate) async fn start(dir: &Path) -> PrivateDocker {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = PrivateDocker { dir: dir.to_path_buf(), child: None };
        d.launch().await;
        d
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("dockerd.log")).unwrap();
        let tag = self.dir.file_name().unwrap().to_string_lossy().to_string();
        // Its own (empty) daemon.json: the machine's would clash with the flags.
        let config = self.dir.join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let child = std::process::Command::new("dockerd")
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--data-root={}", self.dir.join("data").display()))
            .arg(format!("--exec-root={}", self.dir.join("exec").display()))
            .arg(format!("--pidfile={}", self.dir.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", self.socket().display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false"])
            .args(["--userland-proxy=false", "--storage-driver=vfs"])
            .arg(format!("--containerd-namespace={tag}"))
            .arg(format!("--containerd-plugins-namespace={tag}-plugins"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
        let socket = self.socket();
        wait_for("the private dockerd", Duration::from_secs(60), async || {
            std::process::Command::new("docker")
                .args(["-H", &format!("unix://{}", socket.display()), "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await;
    }

    pub(crate) async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                assert!(started.elapsed() < Duration::from_secs(60), "dockerd did not stop");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.launch().await;
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        // vfs layers are plain directories.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn docker_engine_restarted_under_the_host() {
    let cloud = Cloud::get(Release::Newest);
    let dir = std::env::temp_dir().join(common::unique("nd-dockerd"));
    let mut engine = PrivateDocker::start(&dir).await;
    let name = host_name("dockerd");
    let extra = engine.host_conf();
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let image = cloud.busybox_image(&host.conf).await;
    // The private engine has no images: this boot also loads from Glance.
    let id = cloud.create_server("dockerd", &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;

    engine.restart().await;
    // The engine stopped the container when it went down; the event stream
    // is followed again and Nova is told.
    let s = cloud.wait_status(&id, "SHUTOFF", Duration::from_secs(30)).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 4);
    // Nova may hear of the stop from the service's re-inspection before the
    // event stream is back: wait for that too.
    wait_for("the Docker event stream to resume", Duration::from_secs(60), async || {
        host.log_text().contains("Docker event stream resumed")
    })
    .await;
    // The host works against the restarted engine.
    assert_eq!(cloud.action(&id, json!({"os-start": null})).await.0, 202);
    cloud.wait_status(&id, "ACTIVE", T).await;
    host.wait_up(&cloud, T).await;
    cloud.delete_server(&id, T).await;
    host.stop().await;
}
