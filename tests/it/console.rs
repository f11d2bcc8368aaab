//! The interactive serial console through the real API and the control
//! plane's own nova-serialproxy (issue 21): `openstack console url show
//! --serial` (POST /servers/{id}/remote-consoles, protocol serial), then a
//! websocket client (websocket-client, tests/py/serial_console.py) types
//! into the container's shell and reads its output; a reboot keeps the
//! connection, a delete closes it; a host with consoles disabled refuses
//! as Nova does.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};

const T: Duration = Duration::from_secs(90);

/// The Python that has websocket-client (Debian's python3-websocket).
const CLIENT_PYTHON: &str = "/usr/bin/python3";

/// A user's websocket session on a console URL.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Session {
    async fn open(url: &str) -> Session {
        let mut child = tokio::process::Command::new(CLIENT_PYTHON)
            .arg(common::repo().join("tests/py/serial_console.py"))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the websocket client starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Session { child, stdin, stdout };
        let hello = s.answer().await;
        assert_eq!(hello["ok"], true, "connecting to {url}: {hello}");
        s
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(T, self.stdout.next_line())
            .await
            .expect("the websocket client answers")
            .expect("its stdout")
            .expect("an answer line");
        serde_json::from_str(&line).expect("a JSON answer")
    }

    async fn ask(&mut self, cmd: Value) -> Value {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        self.answer().await
    }

    async fn send(&mut self, text: &str) {
        let a = self.ask(json!({"send": text})).await;
        assert_eq!(a["ok"], true, "{a}");
    }

    /// Types `command` until `output` comes back (what is typed while the
    /// console is not attached yet is lost, as on a serial line).
    async fn run_until(&mut self, command: &str, output: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            self.send(&format!("{command}\n")).await;
            let a = self.ask(json!({"expect": output, "timeout": 3})).await;
            if a["ok"] == true {
                return a;
            }
            assert!(a["closed"] != true, "the console closed: {a}");
            assert!(started.elapsed() < T, "no {output:?} after typing {command:?}: {a}");
        }
    }
}

/// The local addresses (hex, as /proc/net/tcp{,6} write them) of the
/// sockets listening on `port`.
fn tcp_listeners(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}")) {
                out.push(f[1].rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or_default());
            }
        }
    }
    out
}

/// `openstack console url show --serial SERVER`: (status, body).
async fn serial_console_url(cloud: &Cloud, id: &str) -> (u16, Value) {
    cloud
        .nova(
            reqwest::Method::POST,
            &format!("/servers/{id}/remote-consoles"),
            Some(json!({"remote_console": {"protocol": "serial", "type": "serial"}})),
            "2.6",
        )
        .await
}

async fn boot(cloud: &Cloud, host: &ComputeHost, name: &str, image: &str) -> String {
    let (status, v) = cloud
        .nova(
            reqwest::Method::POST,
            "/servers",
            Some(json!({"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none",
                                   "availability_zone": format!("nova:{}", host.name)}})),
            "2.56",
        )
        .await;
    assert_eq!(status, 202, "create server: {v}");
    let id = v["server"]["id"].as_str().expect("server id").to_string();
    cloud.wait_status(&id, "ACTIVE", T).await;
    id
}

async fn a_user_types_into_the_serial_console(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("console");
    let mut host = ComputeHost::start(&cloud, &name, "[serial_console]\nenabled = true\n[docker]\n# one cloud on this machine: the proxy of every test host is the same\nserial_console_single_host = true").await;
    // A shell as the image's command: the console is its terminal.
    let image = cloud
        .docker_image_in_glance(&host.conf, "nd-busybox:latest", "nd-busybox-console-sh", &["os_command_line=/bin/sh"])
        .await;
    let id = boot(&cloud, &host, "console", &image).await;

    let (status, v) = serial_console_url(&cloud, &id).await;
    assert_eq!(status, 200, "console url: {v}");
    let url = v["remote_console"]["url"].as_str().expect("a url").to_string();
    assert_eq!(v["remote_console"]["protocol"], "serial", "{v}");
    let proxy = cloud.var("ND_SERIAL_PROXY");
    assert!(url.starts_with(&format!("{proxy}?token=")), "{url} is not nova-serialproxy's ({proxy})");

    // Through nova-serialproxy: the typed command runs in the container
    // (the output is computed, so it is not the terminal's echo).
    let mut s = Session::open(&url).await;
    s.run_until("echo nd-$((6*7))-ok", "nd-42-ok").await;
    s.run_until("cat /proc/1/cgroup >/dev/null && hostname", "console").await;

    // A hard reboot starts a new run of the container: the same connection
    // reaches the new shell.
    let (status, v) = cloud.action(&id, json!({"reboot": {"type": "HARD"}})).await;
    assert_eq!(status, 202, "reboot: {v}");
    common::wait_for("the reboot done", T, async || {
        cloud.server(&id).await.is_some_and(|s| s["status"] == "ACTIVE" && s["OS-EXT-STS:task_state"].is_null())
    })
    .await;
    s.run_until("echo after-$((1+1))-reboot", "after-2-reboot").await;

    // The port is the proxy's only: it listens on proxyclient_address.
    let log = host.log_text();
    let listening = log
        .lines()
        .find_map(|l| l.split("serial console listening on ").nth(1))
        .unwrap_or_else(|| panic!("no listening line in the log: {log}"));
    let port: u16 = listening.split(':').nth(1).and_then(|p| p.trim().parse().ok()).expect("a port");
    let listeners = tcp_listeners(port);
    assert!(!listeners.is_empty() && listeners.iter().all(|a| a == "0100007F"), "port {port}: {listeners:?}");

    // Delete closes the connection.
    cloud.delete_server(&id, T).await;
    let a = s.ask(json!({"closed": 30})).await;
    assert_eq!(a["ok"], true, "the console stayed open after the delete: {a}");
    let _ = s.child.kill().await;
    host.stop().await;
}

#[tokio::test]
async fn a_user_types_into_the_serial_console_newest() {
    a_user_types_into_the_serial_console(Release::Newest).await;
}

#[tokio::test]
async fn a_user_types_into_the_serial_console_zed() {
    a_user_types_into_the_serial_console(Release::Zed).await;
}

async fn serial_console_disabled_is_refused_like_nova(release: Release) {
    let cloud = Cloud::get(release);
    let name = host_name("noconsole");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.public_busybox_image(&host.conf).await;
    let id = boot(&cloud, &host, "noconsole", &image).await;
    let (status, v) = serial_console_url(&cloud, &id).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("Unavailable console type serial"), "{v}");
    cloud.delete_server(&id, T).await;
    host.stop().await;
}

#[tokio::test]
async fn serial_console_disabled_is_refused_like_nova_newest() {
    serial_console_disabled_is_refused_like_nova(Release::Newest).await;
}

#[tokio::test]
async fn serial_console_disabled_is_refused_like_nova_zed() {
    serial_console_disabled_is_refused_like_nova(Release::Zed).await;
}
