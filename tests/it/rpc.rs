//! The RPC layer against real RabbitMQ and real Python oslo.messaging peers
//! of both Nova releases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nova_docker::metrics;
use nova_docker::rpc::envelope::{self, new_id};
use nova_docker::rpc::topology::Declaration;
use nova_docker::rpc::transport::PublishProps;
use nova_docker::rpc::{
    BaseApi, BoxFuture, CallResult, Dispatcher, Endpoint, Invocation, RemoteError, RequestContext, RpcClient,
    RpcServer, ServerOptions, Target, Transport, Version,
};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{self, PythonServer, Release};

/// A test endpoint with a method per behaviour to observe.
#[derive(Default)]
pub struct TestEndpoint {
    recorded: Mutex<Vec<Value>>,
    /// How many `sleep` calls started (a call done twice counts twice).
    pub sleeps: std::sync::atomic::AtomicUsize,
}

impl Endpoint for TestEndpoint {
    fn namespace(&self) -> Option<&str> {
        None
    }

    fn version(&self) -> Version {
        Version::new(6, 9)
    }

    fn has_method(&self, method: &str) -> bool {
        ["echo", "whoami", "fail_nova", "fail_not_implemented", "sleep", "record", "recorded"].contains(&method)
    }

    fn invoke(self: Arc<Self>, call: Invocation) -> BoxFuture<'static, CallResult> {
        Box::pin(async move {
            let arg = |k: &str| call.args.get(k).cloned().unwrap_or(Value::Null);
            match call.method.as_str() {
                "echo" => Ok(arg("value")),
                "whoami" => Ok(json!({
                    "request_id": call.context.request_id(), "project_id": call.context.project_id(),
                    "user_id": call.context.user_id(), "roles": call.context.roles(), "is_admin": call.context.is_admin(),
                })),
                "fail_nova" => {
                    let uuid = arg("uuid").as_str().unwrap_or_default().to_string();
                    Err(RemoteError::nova(
                        "InstanceNotFound",
                        format!("Instance {uuid} could not be found."),
                        404,
                        json!({"instance_id": uuid}),
                    ))
                }
                "fail_not_implemented" => Err(RemoteError::not_implemented("not in containers")),
                "sleep" => {
                    self.sleeps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs_f64(arg("seconds").as_f64().unwrap_or(0.0))).await;
                    Ok(json!("slept"))
                }
                "record" => {
                    self.recorded.lock().unwrap().push(arg("value"));
                    Ok(Value::Null)
                }
                "recorded" => Ok(Value::Array(self.recorded.lock().unwrap().clone())),
                _ => unreachable!(),
            }
        })
    }
}

pub struct TestServer {
    stop: CancellationToken,
    pub transport: Transport,
    pub topic: String,
    pub host: String,
    pub endpoint: Arc<TestEndpoint>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_server(url: &str) -> TestServer {
    let transport = common::transport(url);
    common::connected(&transport).await;
    start_server_on(transport, common::topology(), &common::unique("ndtest")).await
}

/// An RPC server for `topic` (server `h1`) on a connected transport, declaring
/// with `topology`'s flags.
pub async fn start_server_on(transport: Transport, topology: nova_docker::rpc::Topology, topic: &str) -> TestServer {
    let topic = topic.to_string();
    let host = "h1".to_string();
    let endpoint = Arc::new(TestEndpoint::default());
    let endpoints: Vec<Arc<dyn Endpoint>> = vec![Arc::new(BaseApi::new("compute")), endpoint.clone()];
    let server = RpcServer::new(
        transport.clone(),
        topology,
        Dispatcher::new(endpoints),
        ServerOptions {
            topics: vec![topic.clone()],
            server: host.clone(),
            max_message_bytes: 1 << 20,
            concurrency: 16,
            missing_consumer_retry_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
        },
    );
    server.declare().await.expect("declare");
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    TestServer { stop, transport, topic, host, endpoint }
}

async fn python_client_against_our_server(release: Release) {
    let url = common::rabbit_url();
    let s = start_server(&url).await;
    let unknown = || {
        metrics::global()
            .counter("nova_docker_rpc_requests_total", &[("method", metrics::UNKNOWN), ("outcome", "unsupported")])
    };
    let unknown_before = unknown();
    let out = common::python_peer(release, "client", &[&url, &s.topic, &s.host], Duration::from_secs(120)).await;
    // The peer's made-up method is counted, under a bounded label; its name
    // never becomes a series.
    assert!(unknown() > unknown_before, "no_such_thing counted as {}", metrics::UNKNOWN);
    assert!(!metrics::global().render().contains("no_such_thing"), "a peer's method name became a label");

    assert_eq!(out["ping"]["result"], json!({"service": "compute", "arg": "1.21 GigaWatts"}), "{out}");
    assert_eq!(out["echo"]["result"], json!({"a": [1, 2, "x"], "b": null}));
    let ctx = &out["context"]["result"];
    assert_eq!(ctx["request_id"], "req-11111111-2222-3333-4444-555555555555");
    assert_eq!(ctx["project_id"], "p-test");
    assert_eq!(ctx["user_id"], "u-test");
    assert_eq!(ctx["roles"], json!(["member"]));
    assert_eq!(ctx["is_admin"], false);
    // A nova.exception class is rebuilt by the Python caller, code included.
    let e = &out["nova_error"];
    assert_eq!(e["nova_class"], "InstanceNotFound", "{e}");
    assert_eq!(e["is_instance_not_found"], true);
    assert_eq!(e["code"], 404);
    assert!(e["str"].as_str().unwrap().contains("6f1b2c1e-0000-4000-8000-000000000001 could not be found"));
    assert_eq!(out["not_implemented"]["is_not_implemented"], true, "{}", out["not_implemented"]);
    assert_eq!(out["no_such_method"]["exception"], "RemoteError");
    assert_eq!(out["no_such_method"]["exc_type"], "NoSuchMethod");
    assert!(
        out["no_such_method"]["str"].as_str().unwrap().contains("Endpoint does not support RPC method no_such_thing")
    );
    assert_eq!(out["unsupported_version"]["exc_type"], "UnsupportedVersion");
    assert_eq!(out["newer_minor"]["result"], 1, "6.9 is served by a 6.9 endpoint");
    let mut recorded: Vec<String> =
        out["recorded"]["result"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    recorded.sort();
    assert_eq!(recorded, ["cast-1", "cast-2"]);
    assert_eq!(out["slow_with_heartbeats"]["result"], "slept", "{}", out["slow_with_heartbeats"]);
}

#[tokio::test]
async fn python_client_against_our_server_newest() {
    python_client_against_our_server(Release::Newest).await;
}

#[tokio::test]
async fn python_client_against_our_server_zed() {
    python_client_against_our_server(Release::Zed).await;
}

async fn our_client_against_python_server(release: Release) {
    let url = common::rabbit_url();
    let transport = common::transport(&url);
    common::connected(&transport).await;
    let topic = common::unique("ndpy");
    let server = PythonServer::start(release, &url, &topic, "py1").await;
    let client = RpcClient::start(transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let target = Target::new(&topic, "3.0").server("py1");
    let ctx = RequestContext::admin();
    let args = |v: Value| -> Map<String, Value> { v.as_object().cloned().unwrap() };

    let r = client.call(&ctx, &target, "echo", args(json!({"value": {"k": [1, "two"]}})), None).await.unwrap();
    assert_eq!(r, json!({"k": [1, "two"]}));

    // The Python server sees our context as Nova's 25 keys.
    let r = client.call(&ctx, &target, "whoami", Map::new(), None).await.unwrap();
    assert_eq!(r["request_id"], json!(ctx.request_id()));
    assert_eq!(r["is_admin"], true);
    for (key, _) in ctx.to_wire() {
        let key = key.trim_start_matches("_context_");
        assert!(r.get(key).is_some(), "context key {key} missing from {r}");
    }

    let e = client.call(&ctx, &target, "fail", args(json!({"uuid": "abc"})), None).await.unwrap_err();
    let remote = e.remote().expect("a remote error");
    assert!(remote.is_nova("InstanceNotFound"), "{remote:?}");
    assert_eq!(remote.code(), Some(404));
    assert_eq!(remote.kwargs["instance_id"], "abc");

    let e = client.call(&ctx, &target, "fail_plain", Map::new(), None).await.unwrap_err();
    let remote = e.remote().expect("a remote error");
    assert_eq!((remote.module.as_str(), remote.class.as_str()), ("builtins", "ValueError"));
    assert_eq!(remote.message, "plain failure");

    let e = client.call(&ctx, &target, "nope", Map::new(), None).await.unwrap_err();
    assert_eq!(e.remote().map(|r| r.class.as_str()), Some("NoSuchMethod"));

    client.cast(&ctx, &target, "record", args(json!({"value": 1}))).await.unwrap();
    client.cast(&ctx, &target, "record", args(json!({"value": 2}))).await.unwrap();
    let r = client.call(&ctx, &target, "get_recorded", Map::new(), None).await.unwrap();
    assert_eq!(r, json!([1, 2]));

    // Nobody serves this topic: a clean timeout, not a hang.
    let started = std::time::Instant::now();
    let e = client
        .call(&ctx, &Target::new(&common::unique("nobody"), "1.0"), "echo", Map::new(), Some(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(e, nova_docker::rpc::CallError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    server.stop().await;
    transport.close().await;
}

/// A call published before its server has declared its queue (a broker
/// restart, a service starting) is returned by the broker and sent again
/// until the queue exists, instead of vanishing until the timeout.
#[tokio::test]
async fn a_call_waits_for_its_server_to_declare_its_queue() {
    let url = common::rabbit_url();
    let transport = common::transport(&url);
    common::connected(&transport).await;
    let client = RpcClient::start(transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let topic = common::unique("ndlate");
    let target = Target::new(&topic, "3.0").server("py1");
    let resends = || metrics::global().counter("nova_docker_rpc_call_resends_total", &[]);
    let resends_before = resends();
    let (url2, topic2) = (url.clone(), topic.clone());
    // The server comes up only after the call has been sent.
    let server = tokio::spawn(async move { PythonServer::start(Release::Newest, &url2, &topic2, "py1").await });
    let args = json!({"value": "late"}).as_object().cloned().unwrap();
    let r = client.call(&RequestContext::admin(), &target, "echo", args, Some(Duration::from_secs(60))).await;
    assert_eq!(r.unwrap(), json!("late"), "answered once the server was there");
    assert!(resends() > resends_before, "the call went out before the queue existed and was sent again");
    server.await.unwrap().stop().await;
    transport.close().await;
}

#[tokio::test]
async fn our_client_against_python_server_newest() {
    our_client_against_python_server(Release::Newest).await;
}

#[tokio::test]
async fn our_client_against_python_server_zed() {
    our_client_against_python_server(Release::Zed).await;
}

fn raw_call(method: &str, args: Value, unique_id: Option<&str>) -> Map<String, Value> {
    let mut m = envelope::request_message(
        &RequestContext::admin(),
        method,
        args.as_object().cloned().unwrap_or_default(),
        None,
        "6.0",
        None,
    );
    if let Some(id) = unique_id {
        m.insert("_unique_id".into(), json!(id));
    }
    m
}

#[tokio::test]
async fn malformed_input_is_dropped_and_the_server_keeps_serving() {
    let url = common::rabbit_url();
    let s = start_server(&url).await;
    let rk = format!("{}.{}", s.topic, s.host);
    let malformed_before = metrics::global()
        .counter("nova_docker_rpc_requests_total", &[("method", metrics::UNKNOWN), ("outcome", "malformed")]);

    let mut wrong_types = raw_call("echo", json!({"value": 1}), None);
    wrong_types.insert("_context_roles".into(), json!("admin"));
    wrong_types.insert("_context_is_admin".into(), json!("yes"));
    let mut no_method = raw_call("echo", json!({}), None);
    no_method.remove("method");
    no_method.insert("_msg_id".into(), json!(new_id()));
    no_method.insert("_reply_q".into(), json!("reply_nonexistent"));
    let bodies: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        b"[1, 2, 3]".to_vec(),
        br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#.to_vec(),
        br#"{"oslo.version": "2.0", "oslo.message": "not json inside"}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        envelope::seal(&no_method),
        envelope::seal(&wrong_types),
        // 10 MB of valid JSON: over the size limit.
        format!("{{\"pad\": \"{}\"}}", "x".repeat(10 * 1024 * 1024)).into_bytes(),
    ];
    for body in &bodies {
        s.transport.publish("nova", &rk, body, PublishProps::default(), Duration::from_secs(10)).await.unwrap();
    }
    // Still serving: a real oslo client's ping is answered.
    let out = common::python_peer(Release::Newest, "ping", &[&url, &s.topic, &s.host], Duration::from_secs(60)).await;
    assert_eq!(out["result"], json!({"service": "compute", "arg": "hello"}));
    let malformed_after = metrics::global()
        .counter("nova_docker_rpc_requests_total", &[("method", metrics::UNKNOWN), ("outcome", "malformed")]);
    assert_eq!(malformed_after - malformed_before, bodies.len() as f64, "every bad message was seen and refused");
}

#[tokio::test]
async fn the_same_unique_id_is_handled_once() {
    let url = common::rabbit_url();
    let s = start_server(&url).await;
    let rk = format!("{}.{}", s.topic, s.host);
    let dup = raw_call("record", json!({"value": "dup"}), Some(&new_id()));
    let other = raw_call("record", json!({"value": "other"}), None);
    for m in [&dup, &dup, &other, &dup] {
        s.transport
            .publish("nova", &rk, &envelope::seal(m), PublishProps::default(), Duration::from_secs(10))
            .await
            .unwrap();
    }
    let client = RpcClient::start(s.transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let target = Target::new(&s.topic, "6.0").server(&s.host);
    // Casts are handled concurrently: wait until two are in, then check
    // nothing more arrives.
    for _ in 0..50 {
        let recorded = client.call(&RequestContext::admin(), &target, "recorded", Map::new(), None).await.unwrap();
        if recorded.as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded = client.call(&RequestContext::admin(), &target, "recorded", Map::new(), None).await.unwrap();
    let mut values: Vec<&str> = recorded.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    values.sort();
    assert_eq!(values, ["dup", "other"], "the duplicate was handled once");
}

/// A bind whose fanout exchange is gone declares the exchange again and
/// binds, on the same connection. In CI a host failed to start this way:
/// another host's last fanout queue went away between our exchange
/// declaration and our bind, and the auto-delete exchange went with it. Here
/// the exchange declaration comes after its bind, so the bind meets no
/// exchange every time.
#[tokio::test]
async fn a_bind_whose_exchange_vanished_declares_it_again() {
    let topic = common::unique("ndvanish");
    let (mut decls, queues) = common::topology().rpc_server(&topic, "h", &common::unique("f"));
    let fanout_exchange = format!("{topic}_fanout");
    let at = decls.iter().position(|d| matches!(d, Declaration::Exchange(x) if x.name == fanout_exchange)).unwrap();
    let exchange = decls.remove(at);
    decls.push(exchange);
    let transport = common::transport(&common::rabbit_url());
    transport.wait_connected(Duration::from_secs(10)).await.unwrap();
    transport.declare(decls).await.expect("the declarations succeed");
    let fanout_queue = queues.iter().find(|q| q.contains("_fanout_")).unwrap().clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    transport.consume(&fanout_queue, tx, usize::MAX).await;
    let props = PublishProps { expiration_ms: None, mandatory: true };
    transport.publish(&fanout_exchange, "", b"{}", props, Duration::from_secs(10)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(matches!(got, Ok(Some(_))), "the fanout queue is bound");
    assert_eq!(transport.connection_count(), 1, "no reconnect was needed");
    for q in &queues {
        transport.delete_queue(q).await;
    }
    transport.close().await;
}

/// A queue declared and consumed while the transport is still connecting
/// (as the service's RPC server does at start-up, right after its client
/// declared its own queue) is served on the first connection: no "no queue"
/// from the broker, no reconnect. A hundred earlier declarations make the
/// connection's set-up long enough for the moment of the declaration to be
/// swept across it.
#[tokio::test]
async fn a_queue_declared_while_connecting_is_consumed_on_the_first_connection() {
    let url = common::rabbit_url();
    let topology = common::topology();
    let filler_prefix = common::unique("ndfill");
    let fillers: Vec<_> = (0..100).map(|k| topology.reply_queue(&format!("{filler_prefix}-{k}"))).collect();
    for round in 0..40u64 {
        let transport = common::transport(&url);
        transport.declare(fillers.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_micros(round * 500)).await;
        let queue = common::unique("ndearly");
        transport.declare(vec![topology.reply_queue(&queue)]).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        transport.consume(&queue, tx, usize::MAX).await;
        transport.wait_connected(Duration::from_secs(10)).await.unwrap();
        let props = PublishProps { expiration_ms: None, mandatory: true };
        transport.publish("", &queue, b"{}", props, Duration::from_secs(10)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(got, Ok(Some(_))), "round {round}: the message never reached the consumer");
        assert_eq!(transport.connection_count(), 1, "round {round}: the transport had to reconnect");
        transport.delete_queue(&queue).await;
        transport.close().await;
    }
}

/// A series' value in the service's metrics text (0 when absent).
fn series(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// The server's own part of each call, from the delivery to the reply
/// confirmed by the broker (`nova_docker_rpc_server_seconds`, which the
/// bench reads), is recorded once per call, by method class: baseapi
/// pings, the methods an endpoint serves, and unknown ones. Casts, which
/// get no reply, are not.
#[tokio::test]
async fn the_server_side_time_of_calls_is_recorded_by_class() {
    let url = common::rabbit_url();
    let s = start_server(&url).await;
    let client = RpcClient::start(s.transport.clone(), &common::topology(), Duration::from_secs(20)).await.unwrap();
    let ctx = RequestContext::admin();
    let args = |v: Value| -> Map<String, Value> { v.as_object().cloned().unwrap() };
    let of = |what: &str, class: &str| {
        series(&metrics::global().render(), &format!("nova_docker_rpc_server_seconds_{what}{{class=\"{class}\"}}"))
    };
    let published = |what: &str, class: &str| {
        series(
            &metrics::global().render(),
            &format!("nova_docker_rpc_reply_published_seconds_{what}{{class=\"{class}\"}}"),
        )
    };
    let before: Vec<f64> = metrics::RPC_CLASSES.iter().map(|c| of("count", c)).collect();
    let pings_published_before = published("count", "baseapi");
    let published_sum_before = published("sum", "baseapi");
    let confirmed_sum_before = of("sum", "baseapi");
    let ping = Target::new(&s.topic, "1.1").namespace("baseapi").server(&s.host);
    let ours = Target::new(&s.topic, "6.0").server(&s.host);
    for _ in 0..5 {
        let r = client.call(&ctx, &ping, "ping", args(json!({"arg": "x"})), None).await.unwrap();
        assert_eq!(r["arg"], "x");
    }
    client.call(&ctx, &ours, "echo", args(json!({"value": 1})), None).await.unwrap();
    client.call(&ctx, &ours, "no_such_thing", Map::new(), None).await.unwrap_err();
    client.cast(&ctx, &ours, "record", args(json!({"value": 1}))).await.unwrap();
    // Wait until the cast was handled; each look is one more call.
    let mut compute_calls = 1.0;
    for _ in 0..100 {
        let recorded = client.call(&ctx, &ours, "recorded", Map::new(), None).await.unwrap();
        compute_calls += 1.0;
        if !recorded.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after: Vec<f64> = metrics::RPC_CLASSES.iter().map(|c| of("count", c)).collect();
    assert_eq!(metrics::RPC_CLASSES, ["baseapi", "compute", metrics::UNKNOWN]);
    assert_eq!(after[0] - before[0], 5.0, "one observation per ping");
    assert_eq!(after[1] - before[1], compute_calls, "one per call an endpoint serves, none for the cast");
    assert_eq!(after[2] - before[2], 1.0, "the unknown method's failure reply");
    // Each ping took some time, and less than a second on any machine.
    let per_ping = of("sum", "baseapi") / of("count", "baseapi");
    assert!(per_ping > 0.0 && per_ping < 1.0, "{per_ping} s per ping");
    // The same calls up to the reply handed to the connection: one each,
    // never longer than up to the broker's confirm.
    assert_eq!(published("count", "baseapi") - pings_published_before, 5.0, "one per ping, published");
    let (to_publish, to_confirm) =
        (published("sum", "baseapi") - published_sum_before, of("sum", "baseapi") - confirmed_sum_before);
    assert!(to_publish > 0.0 && to_publish <= to_confirm, "published {to_publish} s, confirmed {to_confirm} s");
    // Sub-millisecond buckets, which the bench interpolates in.
    assert!(
        metrics::global().render().contains("nova_docker_rpc_server_seconds_bucket{le=\"0.0001\",class=\"baseapi\"}")
    );
}
