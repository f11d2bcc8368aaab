//! The production broker set-up of issue 23: a three-node RabbitMQ cluster
//! (tests/env/rabbitmq.sh cluster: ndc1..ndc3, AMQP on 5681..5683, TLS on
//! 5685..5687) with quorum queues, reached over TLS.
//!
//! These tests stop cluster nodes, so they run one at a time
//! (`.config/nextest.toml`, test group `rabbit-cluster`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use nova_docker::config::{Layered, Settings};
use nova_docker::rpc::{RequestContext, RpcClient, Target, Topology, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::common::{self, PythonServer, Release};
use crate::rpc::start_server_on;

const NODES: [&str; 3] = ["ndc1", "ndc2", "ndc3"];
const AMQP_PORTS: [u16; 3] = [5681, 5682, 5683];
const TLS_PORTS: [u16; 3] = [5685, 5686, 5687];

async fn rabbit(args: &[&str]) -> String {
    let script = common::repo().join("tests/env/rabbitmq.sh");
    let out = tokio::time::timeout(Duration::from_secs(240), tokio::process::Command::new(script).args(args).output())
        .await
        .expect("rabbitmq.sh finished in time")
        .expect("rabbitmq.sh runs");
    assert!(out.status.success(), "rabbitmq.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes sure the three nodes run and are clustered.
async fn cluster() {
    rabbit(&["cluster"]).await;
}

fn tls_file(name: &str) -> String {
    let state = std::env::var("ND_ENV_STATE").unwrap_or_else(|_| "/var/lib/nova-docker-test".into());
    format!("{state}/rabbitmq/tls/{name}")
}

/// `rabbit://` URL of the plain AMQP listeners of the nodes `idx`.
fn amqp_url(idx: &[usize]) -> String {
    let hosts: Vec<String> = idx.iter().map(|&i| format!("guest:guest@127.0.0.1:{}", AMQP_PORTS[i])).collect();
    format!("rabbit://{}/", hosts.join(","))
}

/// Settings of a host with `rabbit` lines under `[oslo_messaging_rabbit]`.
fn settings(url: &str, rabbit: &str) -> Settings {
    let text = format!("[DEFAULT]\ntransport_url = {url}\n[oslo_messaging_rabbit]\n{rabbit}\n");
    Settings::from_layered(&Layered::from_text(&text).expect("ini")).expect("settings")
}

/// The host's transport for `settings`, with test-friendly reconnect timings.
fn transport(settings: &Settings, name: &str) -> Transport {
    let mut opts = nova_docker::service::transport_options(settings);
    opts.retry_interval = Duration::from_millis(200);
    opts.retry_backoff = Duration::from_millis(200);
    opts.interval_max = Duration::from_secs(1);
    opts.connect_timeout = Duration::from_secs(5);
    opts.connection_name = name.to_string();
    Transport::start(opts)
}

fn tls_lines(login: &str) -> String {
    format!(
        "ssl_ca_file = {}\nssl_cert_file = {}\nssl_key_file = {}\nrabbit_login_method = {login}\n",
        tls_file("ca.pem"),
        tls_file("client.pem"),
        tls_file("client.key")
    )
}

/// Which node (index) the transport is connected to.
fn node_of(t: &Transport) -> Option<usize> {
    let b = t.connected_broker()?;
    AMQP_PORTS.iter().position(|&p| p == b.port).or_else(|| TLS_PORTS.iter().position(|&p| p == b.port))
}

/// `rabbitmqctl -n NODE ARGS` output.
fn ctl(node: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-n", &format!("{node}@localhost"), "-q"])
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_logins_on_the_cluster() {
    cluster().await;
    // AMQPLAIN and PLAIN with the password, EXTERNAL with the client
    // certificate (the broker takes the user from its CN).
    for (login, url, user) in [
        ("AMQPLAIN", "amqps://guest:guest@127.0.0.1:5685/", "guest"),
        ("PLAIN", "rabbit://guest:guest@127.0.0.1:5686/?ssl=1", "guest"),
        ("EXTERNAL", "amqps://127.0.0.1:5687/", "nova-docker-client"),
    ] {
        let name = common::unique(&format!("nd-tls-{login}"));
        let s = settings(url, &tls_lines(login));
        let t = transport(&s, &name);
        t.wait_connected(Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{login}: {e}; last error: {:?}", t.last_connect_error()));
        // The broker's view: this connection is TLS, with that mechanism and user.
        let rows = ctl("ndc1", &["list_connections", "ssl", "auth_mechanism", "user", "client_properties"]);
        let row = rows.lines().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("{name} not in\n{rows}"));
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[..3], ["true", login, user], "{row}");
        t.close().await;
    }
}

/// One connection attempt with these settings; the error it was refused with.
async fn refusal(url: &str, rabbit: &str) -> String {
    let s = settings(url, rabbit);
    let t = transport(&s, &common::unique("nd-tls-refused"));
    assert!(t.wait_connected(Duration::from_secs(3)).await.is_err(), "{url} with {rabbit} connected");
    let why = t.last_connect_error().expect("a reason");
    t.close().await;
    why
}

#[tokio::test]
async fn tls_refusals_say_why() {
    cluster().await;
    let ca = format!("ssl_ca_file = {}\n", tls_file("ca.pem"));
    let wrong_ca = format!("ssl_ca_file = {}\n", tls_file("other-ca.pem"));
    let client = |name: &str| {
        format!(
            "{ca}ssl_cert_file = {}\nssl_key_file = {}\nrabbit_login_method = EXTERNAL\n",
            tls_file(&format!("{name}.pem")),
            tls_file(&format!("{name}.key"))
        )
    };
    // An expired client certificate is refused at start-up, with its dates
    // (the broker would only close the connection).
    let text = format!(
        "[DEFAULT]\ntransport_url = amqps://127.0.0.1:5685/\n[oslo_messaging_rabbit]\n{}",
        client("expired-client")
    );
    let e = Settings::from_layered(&Layered::from_text(&text).unwrap()).unwrap_err().to_string();
    assert!(e.contains("ssl_cert_file") && e.contains("to 2020-01-02T00:00:00+00:00 only"), "{e}");
    let cases = [
        ("amqps://guest:guest@127.0.0.1:5685/", wrong_ca.clone(), "not signed by a trusted CA"),
        ("amqps://127.0.0.1:5685/", client("foreign-client"), "refused our client certificate"),
        ("amqps://guest:wrong@127.0.0.1:5685/", ca.clone(), "refused the login"),
        // plain AMQP on a TLS listener, and TLS to a plain one: no fallback
        // (RabbitMQ answers with an error, or resets the connection)
        ("rabbit://guest:guest@127.0.0.1:5685/", String::new(), "a TLS listener?"),
        ("amqps://guest:guest@127.0.0.1:5681/", ca.clone(), "TLS handshake failed"),
    ];
    for (url, rabbit, cause) in &cases {
        let why = refusal(url, rabbit).await;
        eprintln!("{url}: {why}");
        assert!(why.contains(cause), "{url} with {rabbit:?}: {why}");
        assert!(!why.contains('\n'), "one line: {why}");
    }

    // `nova-docker check` names the cause.
    let dir = std::env::temp_dir().join(common::unique("nd-tls-check"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nova.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nhost = {}\nstate_path = {}\ntransport_url = amqps://guest:guest@127.0.0.1:5685/\n\
             [oslo_messaging_rabbit]\n{wrong_ca}",
            common::unique("nd-tls-check"),
            dir.display()
        ),
    )
    .unwrap();
    let (ok, report) = common::check(&conf).await;
    assert!(!ok, "{report}");
    let line = common::line(&report, "rabbitmq");
    assert!(line.starts_with("[FAIL]") && line.contains("not signed by a trusted CA"), "{report}");
    // and what it connected with when it works
    let text = std::fs::read_to_string(&conf).unwrap().replace(&wrong_ca, &tls_lines("EXTERNAL"));
    std::fs::write(&conf, text).unwrap();
    let (_, report) = common::check(&conf).await;
    let line = common::line(&report, "rabbitmq");
    assert!(line.starts_with("[ OK ]") && line.contains("(TLS, EXTERNAL (client certificate) login)"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------ quorum queues

/// `[oslo_messaging_rabbit]` quorum options a release has, as nova.conf
/// lines (ours) and as `ND_OSLO_RABBIT` (the Python peer's).
fn quorum_options(release: Release) -> (&'static str, &'static str) {
    match release {
        Release::Newest | Release::Ovn => (
            "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true\nrabbit_quorum_delivery_limit = 5\n",
            "rabbit_quorum_queue=true;rabbit_transient_quorum_queue=true;rabbit_quorum_delivery_limit=5",
        ),
        // oslo.messaging 14 (Zed) has no rabbit_transient_quorum_queue.
        Release::Zed => (
            "rabbit_quorum_queue = true\nrabbit_quorum_delivery_limit = 5\n",
            "rabbit_quorum_queue=true;rabbit_quorum_delivery_limit=5",
        ),
    }
}

async fn quorum_queues_shared_with_python(release: Release) {
    cluster().await;
    let url = amqp_url(&[0, 1, 2]);
    let (ours, theirs) = quorum_options(release);
    let s = settings(&url, ours);
    let t = transport(&s, &common::unique("nd-quorum"));
    common::connected(&t).await;
    let topology = Topology::new(s.rabbit.clone(), "nova".into());
    let topic = common::unique("ndquorum");

    // Python declares the shared topic queue first, then we do: the flags
    // and arguments must be equal or RabbitMQ refuses with PRECONDITION_FAILED.
    let py = PythonServer::start_with(release, theirs, &url, &topic, "py1").await;
    let server = start_server_on(t.clone(), topology.clone(), &topic).await;
    // A Python client (its reply queue declared by Python) calls our host.
    let out =
        common::python_peer_with(release, theirs, "ping", &[&url, &topic, &server.host], Duration::from_secs(60)).await;
    assert_eq!(out["result"]["arg"], "hello", "{out}");
    // Our client (our reply queue) calls the Python server.
    let client = RpcClient::start(t.clone(), &topology, Duration::from_secs(10)).await.expect("client");
    let to_py = Target::new(&topic, "3.0").server("py1");
    let mut args = serde_json::Map::new();
    args.insert("value".into(), json!("to-python"));
    let r = client.call(&RequestContext::admin(), &to_py, "echo", args, Some(Duration::from_secs(20))).await;
    assert_eq!(r.expect("call to python"), json!("to-python"));
    assert_eq!(t.connection_count(), 1, "no declaration was refused (a refusal costs the connection)");

    // What the broker holds: the topic queues are quorum queues with the
    // delivery limit, the transient ones follow rabbit_transient_quorum_queue.
    let rows = ctl("ndc1", &["list_queues", "name", "type", "durable", "arguments"]);
    let row = |name: &str| -> Vec<String> {
        rows.lines()
            .find(|l| l.split('\t').next() == Some(name))
            .unwrap_or_else(|| panic!("no queue {name} in\n{rows}"))
            .split('\t')
            .map(str::to_string)
            .collect()
    };
    for q in [topic.clone(), format!("{topic}.h1"), format!("{topic}.py1")] {
        let r = row(&q);
        assert_eq!((r[1].as_str(), r[2].as_str()), ("quorum", "true"), "{q}: {r:?}");
        assert!(r[3].contains("x-delivery-limit"), "{q}: {r:?}");
    }
    let fanouts: Vec<&str> = rows.lines().filter(|l| l.starts_with(&format!("{topic}_fanout_"))).collect();
    assert_eq!(fanouts.len(), 2, "one fanout queue per server: {fanouts:?}");
    let transient_type = if release == Release::Newest { "quorum" } else { "classic" };
    for f in &fanouts {
        assert!(f.contains(&format!("\t{transient_type}\t")) && f.contains("x-expires"), "{f}");
    }
    drop(client);
    py.stop().await;
    drop(server);
    t.close().await;
}

#[tokio::test]
async fn quorum_queues_shared_with_python_newest() {
    quorum_queues_shared_with_python(Release::Newest).await;
}

#[tokio::test]
async fn quorum_queues_shared_with_python_zed() {
    quorum_queues_shared_with_python(Release::Zed).await;
}

// ---------------------------------------------------------------- failover

/// A warm Python client pinging the host on request (oslo_peer.py pinger).
struct Pinger {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Pinger {
    async fn start(opts: &str, url: &str, topic: &str, server: &str) -> Pinger {
        let mut child = tokio::process::Command::new(Release::Newest.python())
            .arg(common::repo().join("tests/py/oslo_peer.py"))
            .args(["pinger", url, topic, server])
            .env("ND_OSLO_RABBIT", opts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pinger starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref l))) if l == "READY"), "pinger not ready: {ready:?}");
        Pinger { child, lines }
    }

    /// One ping; its outcome and how long it took from here.
    async fn ping(&mut self) -> (Value, Duration) {
        let t0 = Instant::now();
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"ping\n").await.expect("write");
        stdin.flush().await.expect("flush");
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("pinger answered")
            .expect("read")
            .expect("a line");
        (serde_json::from_str(&line).expect("json"), t0.elapsed())
    }
}

/// Stops node `idx` (the one `t` is connected to). As soon as the host has
/// lost its connection, the Python client pings it: the answer must come
/// within 5 s (the client's timeout) of the loss. Returns the node the host
/// moved to.
async fn stop_and_follow(t: &Transport, idx: usize, how: &'static str, pinger: &mut Pinger) -> usize {
    let before = t.connection_count();
    let t0 = Instant::now();
    let node = NODES[idx];
    let verb = if how == "private-kill" { "killed" } else { "stopped" };
    let stop = tokio::spawn(async move { rabbit(&[how, node]).await });
    while t.is_connected() && t.connection_count() == before {
        assert!(t0.elapsed() < Duration::from_secs(60), "the host never lost its connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost = Instant::now();
    let (out, _) = pinger.ping().await;
    let answered = lost.elapsed();
    assert_eq!(out["result"]["arg"], "hello", "ping after the loss of {}: {out}", NODES[idx]);
    let back = t.connection_count() > before;
    let node = node_of(t).expect("connected");
    assert!(back && node != idx, "on another node");
    common::figure(format!(
        "cluster failover: {} {verb}; the host lost it {:?} after that began, moved to {} \
         ({} connections so far), ping answered {answered:?} after the loss",
        NODES[idx],
        lost - t0,
        NODES[node],
        t.connection_count()
    ));
    assert!(answered < Duration::from_secs(5), "ping answered {answered:?} after the loss");
    stop.await.expect("stop task");
    node
}

/// Stops the node the host is connected to while a call is in flight: the
/// host moves to another node over TLS, answers pings within 5 s, the call
/// completes once; the node comes back and another one is stopped, then the
/// next one is killed.
#[tokio::test]
async fn cluster_node_loss_under_a_serving_host() {
    cluster().await;
    let (ours, theirs) = quorum_options(Release::Newest);
    // The host: TLS, EXTERNAL login, all three nodes, quorum queues, and
    // short heartbeats so that a dead one would show.
    let tls_url = "amqps://127.0.0.1:5685,127.0.0.1:5686,127.0.0.1:5687/";
    let s = settings(tls_url, &format!("{}{ours}heartbeat_timeout_threshold = 4\n", tls_lines("EXTERNAL")));
    let t = transport(&s, &common::unique("nd-failover"));
    common::connected(&t).await;
    let topology = Topology::new(s.rabbit.clone(), "nova".into());
    let topic = common::unique("ndfailover");
    let server = start_server_on(t.clone(), topology, &topic).await;
    let first = node_of(&t).expect("connected");
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();

    // A Python caller on a node that stays: a 10 s call in flight.
    let caller_url = amqp_url(&others);
    let mut caller = tokio::process::Command::new(Release::Newest.python())
        .arg(common::repo().join("tests/py/oslo_peer.py"))
        .args(["slowcall", &caller_url, &topic, &server.host])
        .env("ND_OSLO_RABBIT", theirs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("caller starts");
    let mut caller_out = BufReader::new(caller.stdout.take().expect("stdout")).lines();
    let mut pinger = Pinger::start(theirs, &caller_url, &topic, &server.host).await;
    let (out, _) = pinger.ping().await;
    assert_eq!(out["result"]["arg"], "hello", "{out}");
    let t0 = Instant::now();
    while server.endpoint.sleeps.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the slow call never reached the host");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Round 1: the host's node goes away with the call in flight.
    let second = stop_and_follow(&t, first, "private-stop", &mut pinger).await;
    let line = tokio::time::timeout(Duration::from_secs(60), caller_out.next_line())
        .await
        .expect("the slow call returned")
        .expect("read");
    let line = line.expect("STARTED line");
    assert_eq!(line, "STARTED");
    let line = tokio::time::timeout(Duration::from_secs(60), caller_out.next_line())
        .await
        .expect("the slow call returned")
        .expect("read")
        .expect("result line");
    let out: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(out["result"], "slept", "the call in flight completed: {out}");
    assert_eq!(server.endpoint.sleeps.load(std::sync::atomic::Ordering::SeqCst), 1, "done once");

    // Round 2: the node comes back; another node (the host's) is stopped.
    rabbit(&["private-start", NODES[first]]).await;
    let third = (0..3).find(|&i| i != first && i != second).expect("a third node");
    let mut pinger = Pinger::start(theirs, &amqp_url(&[third]), &topic, &server.host).await;
    let now = stop_and_follow(&t, second, "private-stop", &mut pinger).await;
    rabbit(&["private-start", NODES[second]]).await;

    // Round 3: the host's node crashes (SIGKILL: no connection.close, the
    // quorum queues elect new leaders).
    let keep = (0..3).find(|&i| i != now).expect("another node");
    let mut pinger = Pinger::start(theirs, &amqp_url(&[keep]), &topic, &server.host).await;
    stop_and_follow(&t, now, "private-kill", &mut pinger).await;
    rabbit(&["private-start", NODES[now]]).await;

    // Heartbeats continue on the new connection: no reconnection over three
    // heartbeat timeouts with nothing else happening.
    let count = t.connection_count();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(t.connection_count(), count, "the connection stayed up");
    let (out, _) = pinger.ping().await;
    assert_eq!(out["result"]["arg"], "hello", "{out}");
    drop(server);
    t.close().await;
}

// ------------------------------------------- failover under a real control plane

/// The node (index into NODES) the host process `pid` is connected to: the
/// TLS port of its established connection, as `ss` lists the process's sockets.
fn node_of_process(pid: u32) -> Option<usize> {
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established"]).output().ok()?;
    let owner = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&owner)).find_map(|l| {
        let peer = l.split_whitespace().nth(3)?;
        let port: u16 = peer.rsplit(':').next()?.parse().ok()?;
        TLS_PORTS.iter().position(|&p| p == port)
    })
}

/// The `ovn` control plane runs every service on the cluster over TLS. Its
/// compute host's node is stopped while a boot is on its way to the host:
/// the host (and the Python services on that node) move to the others, the
/// boot completes once, the host answers Nova's calls and keeps its service
/// up, and all of it again with the node back and another one stopped.
#[tokio::test]
async fn a_boot_completes_while_the_hosts_node_stops_ovn() {
    cluster().await;
    let cloud = crate::cloud::Cloud::get(Release::Ovn);
    let name = common::unique("nd-ovn-failover");
    let mut host = crate::cloud::ComputeHost::start(&cloud, &name, "").await;
    let image = cloud.busybox_image(&host.conf).await;
    let pid = host.pid().expect("the host runs");
    let t = Duration::from_secs(120);

    let mut stopped = Vec::new();
    for round in 0..2 {
        let node = node_of_process(pid).expect("the host is connected to a cluster node");
        let id = cloud.create_server(&format!("failover-{round}"), &image, &name, "42").await;
        // On its way: scheduled to this host (the cast is sent or in flight).
        common::wait_for("the boot scheduled to the host", t, async || {
            cloud.server(&id).await.is_some_and(|s| s["OS-EXT-SRV-ATTR:host"] == name.as_str())
        })
        .await;
        let lost = Instant::now();
        rabbit(&["private-stop", NODES[node]]).await;
        stopped.push(node);
        let s = cloud.wait_status(&id, "ACTIVE", t).await;
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], name.as_str(), "{s}");
        // Done once: one create action with one build event.
        let actions = cloud.actions(&id).await;
        assert_eq!(actions.len(), 1, "{actions:?}");
        let builds = actions[0]["events"]
            .as_array()
            .map(|e| e.iter().filter(|e| e["event"] == "compute__do_build_and_run_instance").count());
        assert_eq!(builds, Some(1), "{actions:?}");
        // The host answers a call (Nova's diagnostics) from its new node.
        let (status, d) = cloud.nova(reqwest::Method::GET, &format!("/servers/{id}/diagnostics"), None, "2.48").await;
        assert_eq!(status, 200, "{d}");
        let answered = lost.elapsed();
        let moved = node_of_process(pid).expect("connected again");
        assert_ne!(moved, node, "the host moved off {}", NODES[node]);
        // Heartbeats go on: the service record is updated after the loss.
        let before = cloud.compute_service(&name).await.expect("service")["updated_at"].clone();
        common::wait_for("a heartbeat after the failover", Duration::from_secs(60), async || {
            cloud.compute_service(&name).await.is_some_and(|s| s["updated_at"] != before && s["state"] == "up")
        })
        .await;
        common::figure(format!(
            "cluster failover under the ovn control plane: {} stopped with a boot on its way; the host \
             moved to {}, the boot went ACTIVE and a diagnostics call was answered {answered:?} after the \
             stop began",
            NODES[node], NODES[moved]
        ));
        cloud.delete_server(&id, t).await;
        rabbit(&["private-start", NODES[node]]).await;
    }
    assert_ne!(stopped[0], stopped[1], "two different nodes were stopped: {stopped:?}");
    host.stop().await;
}
