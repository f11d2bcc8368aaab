//! Broker loss: a private RabbitMQ node is stopped and started under a
//! running server, idle and while a call is in flight.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::proxy::Relay;
use crate::rpc::start_server;

/// A private RabbitMQ node for one test (tests/env/rabbitmq.sh private).
pub struct PrivateBroker {
    pub name: String,
    pub url: String,
}

async fn rabbit(args: &[&str]) {
    let script = common::repo().join("tests/env/rabbitmq.sh");
    let out = tokio::time::timeout(Duration::from_secs(120), tokio::process::Command::new(script).args(args).output())
        .await
        .expect("rabbitmq.sh finished in time")
        .expect("rabbitmq.sh runs");
    assert!(out.status.success(), "rabbitmq.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl PrivateBroker {
    /// Starts (or reuses) node `name` on `port`.
    pub async fn start(name: &str, port: u16) -> PrivateBroker {
        rabbit(&["private", name, &port.to_string()]).await;
        PrivateBroker { name: name.into(), url: format!("rabbit://guest:guest@127.0.0.1:{port}/") }
    }

    pub async fn stop(&self) {
        rabbit(&["private-stop", &self.name]).await;
    }

    pub async fn restart(&self) {
        rabbit(&["private-start", &self.name]).await;
    }
}

#[tokio::test]
async fn broker_restart_while_idle() {
    let broker = PrivateBroker::start("ndfault-idle", 5691).await;
    let s = start_server(&broker.url).await;
    let out =
        common::python_peer(Release::Newest, "ping", &[&broker.url, &s.topic, &s.host], Duration::from_secs(60)).await;
    assert_eq!(out["result"]["arg"], "hello");
    let connections = s.transport.connection_count();

    broker.stop().await;
    broker.restart().await;
    let back = Instant::now();
    while s.transport.connection_count() == connections || !s.transport.is_connected() {
        assert!(back.elapsed() < Duration::from_secs(5), "not reconnected within 5 s of the broker's return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::figure(format!("reconnected {:?} after the broker was back", back.elapsed()));
    // The queues were lost with the broker (non-durable); they are declared
    // again and consumed: a real client's ping is answered.
    let out =
        common::python_peer(Release::Newest, "ping", &[&broker.url, &s.topic, &s.host], Duration::from_secs(60)).await;
    assert_eq!(out["result"]["arg"], "hello", "{out}");
}

#[tokio::test]
async fn broker_restart_during_a_call() {
    let broker = PrivateBroker::start("ndfault-call", 5692).await;
    let s = start_server(&broker.url).await;
    let script = common::repo().join("tests/py/oslo_peer.py");
    let mut caller = tokio::process::Command::new(Release::Newest.python())
        .arg(script)
        .args(["slowcall", &broker.url, &s.topic, &s.host])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(caller.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap();
    assert_eq!(started.as_deref(), Some("STARTED"));
    // The call is in the server's hands for 10 s; the broker goes away meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop().await;
    broker.restart().await;
    let result = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.unwrap().unwrap().unwrap();
    let out: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(out["result"], "slept", "the reply reached the caller after the broker came back: {out}");
    // And the server still serves new calls.
    let out =
        common::python_peer(Release::Newest, "ping", &[&broker.url, &s.topic, &s.host], Duration::from_secs(60)).await;
    assert_eq!(out["result"]["arg"], "hello");
}

/// Starts the main RabbitMQ node again if a test left it stopped.
struct MainBrokerGuard;

impl Drop for MainBrokerGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::repo().join("tests/env/rabbitmq.sh")).arg("ensure").output();
    }
}

/// The broker of the control plane itself restarted while a real boot is in
/// progress on this host. Runs alone (`.config/nextest.toml`): every service
/// of both control planes loses its connection too.
#[tokio::test]
async fn main_broker_restarted_during_a_boot() {
    let cloud = Cloud::get(Release::Newest);
    let glance = cloud.var("ND_GLANCE").trim_start_matches("http://").to_string();
    let relay = Relay::start(&glance).await;
    let name = host_name("brokerboot");
    let extra = format!("[glance]\nendpoint_override = {}\n", relay.url);
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    let image =
        cloud.raw_glance_image(&common::unique("nd-brokerboot"), "docker", crate::faults::bootable_archive()).await;
    relay.hold();
    let id = cloud.create_server("brokerboot", &image, &name, "42").await;
    let claimed = Instant::now();
    loop {
        let s = cloud.server(&id).await.expect("the server exists");
        if s["OS-EXT-SRV-ATTR:host"] == name.as_str() {
            break;
        }
        assert!(s["status"] != "ERROR", "the build was not scheduled here: {}", s["fault"]);
        assert!(claimed.elapsed() < Duration::from_secs(120), "the build never reached the host: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The broker goes away; once it is gone the download goes on, so the
    // build reaches its next conductor call while there is no broker.
    let _guard = MainBrokerGuard;
    let restart = tokio::spawn(rabbit(&["restart-main"]));
    let down = Instant::now();
    while tokio::net::TcpStream::connect("127.0.0.1:5672").await.is_ok() {
        assert!(down.elapsed() < Duration::from_secs(60), "the broker did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.release();
    restart.await.unwrap();
    common::figure(format!("the broker was away for {:?}", down.elapsed()));
    let back = Instant::now();
    let back_utc = chrono::Utc::now().naive_utc();
    while !host.log_text().contains("connection=2") {
        assert!(back.elapsed() < Duration::from_secs(5), "not consuming again within 5 s of the broker's return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::figure(format!("the host consumed again {:?} after the broker was back", back.elapsed()));

    // The build finishes (its conductor calls wait for the conductor to be
    // back), the host heartbeats again and still takes new work.
    let s = cloud.wait_status(&id, "ACTIVE", Duration::from_secs(240)).await;
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    // Built exactly once: one create action with one build event.
    let actions = cloud.actions(&id).await;
    let create: Vec<_> = actions.iter().filter(|a| a["action"] == "create").collect();
    assert_eq!(create.len(), 1, "{actions:?}");
    let builds =
        create[0]["events"].as_array().unwrap().iter().filter(|e| e["event"] == "compute__do_build_and_run_instance");
    assert_eq!(builds.count(), 1, "{:?}", create[0]);
    host.wait_up(&cloud, Duration::from_secs(120)).await;
    assert_eq!(cloud.action(&id, json!({"os-stop": null})).await.0, 202);
    cloud.wait_status(&id, "SHUTOFF", Duration::from_secs(120)).await;
    cloud.delete_server(&id, Duration::from_secs(120)).await;
    host.stop().await;
    let log = host.log_text();
    assert!(!log.contains("panicked"));
    // Leave the control planes as found for the tests after this one: the
    // Python services lost the calls they made while the broker was away.
    // They are restarted (a precaution: the boots once seen lost afterwards
    // were this service's, see RELIABILITY.md); then each schedules a boot
    // and each Neutron agent has reported again.
    for release in [Release::Newest, Release::Zed] {
        Cloud::restart(release).await;
        let cloud = Cloud::get(release);
        cloud.wait_schedulable(Duration::from_secs(120)).await;
        common::figure(format!("{release:?}: scheduling again {:?} after the broker was back", back.elapsed()));
        let started = Instant::now();
        while !agents_reported_since(&cloud, back_utc).await {
            assert!(started.elapsed() < Duration::from_secs(180), "{release:?}: Neutron agents did not report again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        common::figure(format!(
            "{release:?}: Neutron agents reporting again {:?} after the broker was back",
            back.elapsed()
        ));
    }
    // newest's restart took its Open vSwitch datapath from under the ovn
    // control plane (which runs on the TLS cluster, not on this broker):
    // `up` checks its chassis and metadata agent again.
    Cloud::up(Release::Ovn).await;
}

/// Whether every Neutron agent's last heartbeat is later than `since`.
async fn agents_reported_since(cloud: &Cloud, since: chrono::NaiveDateTime) -> bool {
    let url = format!("{}/v2.0/agents", cloud.var("ND_NEUTRON"));
    let Ok(resp) = reqwest::Client::new().get(url).header("X-Auth-Token", cloud.var("ND_TOKEN")).send().await else {
        return false;
    };
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    !agents.is_empty()
        && agents.iter().all(|a| {
            a["heartbeat_timestamp"]
                .as_str()
                .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok())
                .is_some_and(|t| t > since)
        })
}

/// Failover between the brokers of `transport_url`: a host given two
/// (two relays to the control plane's RabbitMQ) loses the one it uses and
/// goes on through the other: heartbeats, a boot and a delete.
#[tokio::test]
async fn fails_over_between_the_brokers_of_transport_url() {
    let cloud = Cloud::get(Release::Newest);
    let url = cloud.var("ND_TRANSPORT_URL").to_string();
    let (scheme_and_user, rest) = url.split_once('@').expect("rabbit://user:password@host:port/vhost");
    let user = scheme_and_user.trim_start_matches("rabbit://");
    let (broker, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let relays = [Relay::start(broker).await, Relay::start(broker).await];
    let addr = |r: &Relay| r.url.trim_start_matches("http://").to_string();
    let both = format!("rabbit://{user}@{},{user}@{}/{vhost}", addr(&relays[0]), addr(&relays[1]));
    let name = host_name("failover");
    let mut host = ComputeHost::start(&cloud, &name, &format!("[DEFAULT]\ntransport_url = {both}\n")).await;
    let sent = |r: &Relay| r.sent.load(std::sync::atomic::Ordering::SeqCst);
    let used = relays.iter().position(|r| sent(r) > 0).expect("connected through one of the brokers");
    let other = &relays[1 - used];
    let before = sent(other);
    relays[used].cut();
    common::wait_for("the host to reconnect through the other broker", Duration::from_secs(60), async || {
        sent(other) > before
    })
    .await;
    // Heartbeats go on through it (a newer updated_at), and so does work.
    let last = cloud.compute_service(&name).await.unwrap()["updated_at"].clone();
    common::wait_for("a heartbeat through the other broker", Duration::from_secs(60), async || {
        let svc = cloud.compute_service(&name).await.unwrap();
        svc["state"] == "up" && svc["updated_at"].as_str() > last.as_str()
    })
    .await;
    let image = cloud.busybox_image(&host.conf).await;
    let id = cloud.create_server("failover", &image, &name, "1").await;
    cloud.wait_status(&id, "ACTIVE", Duration::from_secs(120)).await;
    cloud.delete_server(&id, Duration::from_secs(120)).await;
    assert_eq!(host.stop().await.map(|s| s.success()), Some(true), "graceful exit 0");
}
