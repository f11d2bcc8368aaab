//! Shared helpers: where the environment is, and how to run the Python peers.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nova_docker::config::TransportUrl;
use nova_docker::rpc::{Topology, Transport, TransportOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The control planes the tests run against: the two Nova releases, and the
/// newest one's variant with ML2/OVN on the TLS RabbitMQ cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Nova 34 (2026.2) from the PyPI virtualenv.
    Newest,
    /// Nova 26 (Zed) from Debian bookworm.
    Zed,
    /// Nova 34's services with Neutron's OVN driver, on the TLS cluster.
    Ovn,
}

impl Release {
    /// The release's name for tests/env/controlplane.sh (and its state dir).
    pub fn env_name(self) -> &'static str {
        match self {
            Release::Newest => "newest",
            Release::Zed => "zed",
            Release::Ovn => "ovn",
        }
    }

    /// The Python interpreter that has this release's nova and oslo.messaging.
    pub fn python(self) -> PathBuf {
        match self {
            Release::Newest | Release::Ovn => {
                std::env::var("ND_PY_NEWEST").unwrap_or_else(|_| "/opt/nova-docker-test/venv/bin/python".into()).into()
            }
            Release::Zed => std::env::var("ND_PY_ZED").unwrap_or_else(|_| "/usr/bin/python3".into()).into(),
        }
    }
}

/// The RabbitMQ the tests use (RPC-level tests use the default vhost).
pub fn rabbit_url() -> String {
    std::env::var("ND_TEST_TRANSPORT_URL").unwrap_or_else(|_| "rabbit://guest:guest@127.0.0.1:5672/".into())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `check` every 200 ms until it holds; panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints one figure of RELIABILITY.md, tagged with the test that measured
/// it; `tests/reliability/figures` collects these lines into that file.
pub fn figure(text: impl std::fmt::Display) {
    let thread = std::thread::current();
    eprintln!("FIGURE {} | {text}", thread.name().unwrap_or("?"));
}

/// `docker save` of a local image: an archive a server boots from (the
/// test images have a command; the busybox-save.tar fixture has none).
pub fn docker_save(image: &str) -> Vec<u8> {
    let out = std::process::Command::new("docker").args(["save", image]).output().expect("docker save");
    assert!(out.status.success(), "docker save {image}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A file tests/env/images.sh built in the environment's fixtures.
pub fn fixture(name: &str) -> PathBuf {
    let state = std::env::var("ND_ENV_STATE").unwrap_or_else(|_| "/var/lib/nova-docker-test".into());
    let path = PathBuf::from(state).join("fixtures").join(name);
    assert!(path.is_file(), "{} is missing: build it with tests/env/images.sh", path.display());
    path
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A transport to `url` with test-friendly reconnect timings.
pub fn transport(url: &str) -> Transport {
    let brokers = TransportUrl::parse(url, false).expect("transport url").brokers;
    Transport::start(TransportOptions {
        brokers,
        heartbeat: 10,
        retry_interval: Duration::from_millis(500),
        retry_backoff: Duration::from_millis(500),
        interval_max: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        prefetch: 0,
        connection_name: "nova-docker-tests".into(),
        login_method: nova_docker::config::LoginMethod::AmqPlain,
        tls: Default::default(),
    })
}

/// The default topology (exchange `nova`, oslo's default flags).
pub fn topology() -> Topology {
    let s = nova_docker::config::Settings::from_layered(
        &nova_docker::config::Layered::from_text("[DEFAULT]\ntransport_url = rabbit://h/\n").unwrap(),
    )
    .unwrap();
    Topology::new(s.rabbit, "nova".into())
}

/// Waits for the broker, failing with advice when the environment is missing.
pub async fn connected(t: &Transport) {
    if t.wait_connected(Duration::from_secs(15)).await.is_err() {
        panic!("RabbitMQ is not reachable at {}: start the test environment with tests/env/rabbitmq.sh", rabbit_url());
    }
}

/// Runs `tests/py/oslo_peer.py MODE ...` with the release's Python and
/// returns its JSON output.
pub async fn python_peer(release: Release, mode: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    python_peer_with(release, "", mode, args, timeout).await
}

/// [`python_peer`] with `[oslo_messaging_rabbit]` options (`opt=value;...`,
/// see `ND_OSLO_RABBIT` in tests/py/oslo_peer.py).
pub async fn python_peer_with(
    release: Release,
    rabbit_opts: &str,
    mode: &str,
    args: &[&str],
    timeout: Duration,
) -> serde_json::Value {
    let script = repo().join("tests/py/oslo_peer.py");
    let mut cmd = tokio::process::Command::new(release.python());
    cmd.arg(script).arg(mode).args(args).env("ND_OSLO_RABBIT", rabbit_opts).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("python peer {mode} did not finish within {timeout:?}"))
        .expect("python peer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python peer failed: {stderr}");
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad output {last:?}: {e}; stderr: {stderr}"))
}

/// A Python oslo.messaging RPC server running until dropped.
pub struct PythonServer {
    child: tokio::process::Child,
}

impl PythonServer {
    /// Starts the server and waits until it consumes.
    pub async fn start(release: Release, url: &str, topic: &str, server: &str) -> Self {
        Self::start_with(release, "", url, topic, server).await
    }

    /// [`PythonServer::start`] with `[oslo_messaging_rabbit]` options (`opt=value;...`).
    pub async fn start_with(release: Release, rabbit_opts: &str, url: &str, topic: &str, server: &str) -> Self {
        let script = repo().join("tests/py/oslo_peer.py");
        let mut child = tokio::process::Command::new(release.python())
            .arg(script)
            .args(["server", url, topic, server])
            .env("ND_OSLO_RABBIT", rabbit_opts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "READY" {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready.ok(), Some(true), "python RPC server did not become ready");
        PythonServer { child }
    }

    /// Stops the server and waits until it has exited: it writes to the
    /// test's stderr, and one still exiting after the test counts as leaked.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `nova-docker check` of a configuration: whether it passed, and its report.
pub async fn check(conf: &std::path::Path) -> (bool, String) {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["check", "--config-file"])
            .arg(conf)
            .output(),
    )
    .await
    .expect("check finished in time")
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// The line of a `check` report about `what` (`[OK] what: ...`).
pub fn line<'a>(report: &'a str, what: &str) -> &'a str {
    report.lines().find(|l| l.contains(&format!("] {what}:"))).unwrap_or_else(|| {
        panic!(
            "no {what} line:
{report}"
        )
    })
}

/// `docker exec` of `sh -c cmd` in the server's container on the machine's
/// engine; its stdout as printed.
pub fn guest_exec(id: &str, cmd: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", &format!("nova-{id}"), "sh", "-c", cmd])
        .output()
        .expect("docker exec runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Builds `tag` FROM nd-busybox:latest with a /marker holding `marker`.
pub fn build_marked(tag: &str, marker: &str) {
    let ctx = std::env::temp_dir().join(unique("nd-ctx"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("marker"), format!("{marker}\n")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM nd-busybox:latest\nCOPY marker /marker\n").unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(&ctx)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    let _ = std::fs::remove_dir_all(&ctx);
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
}
