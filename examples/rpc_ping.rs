//! A bench-only RPC client that is not Python: sequential oslo.messaging
//! calls of Nova's `baseapi` `ping` to one server, timed, so that the two
//! servers of the bench (this host and Python oslo.messaging) are compared
//! with a client whose own cost is small and the same for both.
//!
//! It speaks the wire format itself, with lapin and serde_json only, none of
//! the service's RPC code (a fault shared by our server and our client
//! would not show): the oslo.messaging 2.0 envelope
//! `{"oslo.version": "2.0", "oslo.message": "<json>"}` published to the
//! control exchange (`nova`) with routing key `<topic>.<server>`; the call's
//! `_msg_id` and `_reply_q`; a reply queue of its own (`reply_<uuid>`, as
//! oslo names them) that the server reaches through the default exchange.
//! Requests are published without waiting for a publisher confirm and
//! replies are consumed without acknowledgements: the client adds as
//! little as it can to each round trip.
//!
//!     cargo run --release --example rpc_ping -- --url rabbit://u:p@127.0.0.1:5672/ \
//!         --topic compute --server HOST --calls 1000
//!
//! Prints one JSON line: `{"ms": [...]}` (each measured call, in order),
//! after `--warmup` calls that are not measured. Exits non-zero when a call
//! fails or gets no reply within `--timeout` seconds.
//!
//! With `--broker-floor` it calls no server: it publishes to its own reply
//! queue the way a server publishes a reply (default exchange, mandatory,
//! publisher confirms) and times each publish until the broker's confirm,
//! the part of a server's "delivery to reply confirmed" that is the
//! broker's.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{Map, Value, json};

#[derive(Parser, Debug)]
#[command(about = "Sequential oslo.messaging baseapi ping calls, timed (a bench tool)")]
struct Args {
    /// oslo transport URL (rabbit://user:pass@host:port/vhost); its first host is used.
    #[arg(long, env = "ND_TRANSPORT_URL")]
    url: String,
    /// The control exchange.
    #[arg(long, default_value = "nova")]
    exchange: String,
    /// The RPC topic.
    #[arg(long, default_value = "compute")]
    topic: String,
    /// The server (host) addressed.
    #[arg(long)]
    server: String,
    /// Measured calls.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Calls made first and not measured (connection, queues, caches warm).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Seconds to wait for one reply.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Time the broker's publisher confirm of a reply-like publish instead.
    #[arg(long)]
    broker_floor: bool,
}

/// An AMQP URI for lapin from an oslo transport URL: the scheme made
/// `amqp`, the first host of a list, the empty vhost made `/` (as kombu
/// reads it).
fn amqp_uri(transport_url: &str) -> anyhow::Result<String> {
    let rest = transport_url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("not a transport URL (no scheme): {transport_url}"))?;
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = hosts.split(',').next().unwrap_or(hosts);
    let vhost = path.split('?').next().unwrap_or("");
    let vhost = if vhost.is_empty() { "%2f" } else { vhost };
    Ok(format!("amqp://{host}/{vhost}"))
}

/// One oslo.messaging 2.0 call of `baseapi` `ping`.
fn ping_request(msg_id: &str, reply_q: &str, seq: usize) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("method".into(), json!("ping"));
    m.insert("args".into(), json!({"arg": format!("bench-{seq}")}));
    m.insert("namespace".into(), json!("baseapi"));
    m.insert("version".into(), json!("1.1"));
    m.insert("_msg_id".into(), json!(msg_id));
    m.insert("_reply_q".into(), json!(reply_q));
    m.insert("_timeout".into(), Value::Null);
    m.insert("_unique_id".into(), json!(uuid::Uuid::new_v4().simple().to_string()));
    // What nova's RequestContext.to_dict() carries, as oslo packs it
    // (`_context_<key>`); a ping needs no token, so none is sent.
    for (k, v) in [
        ("user_id", json!("u-bench")),
        ("project_id", json!("p-bench")),
        ("is_admin", json!(true)),
        ("roles", json!(["admin"])),
        ("request_id", json!(format!("req-{}", uuid::Uuid::new_v4()))),
        ("auth_token", Value::Null),
        ("read_deleted", json!("no")),
    ] {
        m.insert(format!("_context_{k}"), v);
    }
    let inner = Value::Object(m).to_string();
    json!({"oslo.version": "2.0", "oslo.message": inner}).to_string().into_bytes()
}

/// The inner message of a reply envelope.
fn open_reply(body: &[u8]) -> anyhow::Result<Map<String, Value>> {
    let outer: Value = serde_json::from_slice(body).context("reply is not JSON")?;
    let inner =
        outer.get("oslo.message").and_then(Value::as_str).ok_or_else(|| anyhow!("reply has no oslo.message"))?;
    match serde_json::from_str(inner).context("oslo.message is not JSON")? {
        Value::Object(m) => Ok(m),
        other => bail!("oslo.message is not an object: {other}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs_f64(args.timeout);
    let uri = amqp_uri(&args.url)?;
    let connection = tokio::time::timeout(
        timeout,
        Connection::connect(&uri, ConnectionProperties::default().with_connection_name("nd-bench-rpc-ping".into())),
    )
    .await
    .context("connecting to RabbitMQ timed out")?
    .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    let reply_q = format!("reply_{}", uuid::Uuid::new_v4().simple());
    channel
        .queue_declare(
            reply_q.as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .context("declaring the reply queue")?;
    let mut replies = channel
        .basic_consume(
            reply_q.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .context("consuming the reply queue")?;
    let routing_key = format!("{}.{}", args.topic, args.server);
    let props =
        BasicProperties::default().with_content_type("application/json".into()).with_content_encoding("utf-8".into());
    let mut out = Vec::with_capacity(args.calls);
    if args.broker_floor {
        let confirming = connection.create_channel().await?;
        confirming.confirm_select(ConfirmSelectOptions::default()).await?;
        let body = ping_request("floor", &reply_q, 0);
        for seq in 0..args.warmup + args.calls {
            let t0 = Instant::now();
            let confirm = confirming
                .basic_publish(
                    "".into(),
                    reply_q.as_str().into(),
                    BasicPublishOptions { mandatory: true, immediate: false },
                    &body,
                    props.clone().with_delivery_mode(2),
                )
                .await
                .context("publishing")?;
            match tokio::time::timeout(timeout, confirm).await.context("no confirm in time")?? {
                Confirmation::Ack(None) => {}
                other => bail!("publish {seq} not routed and confirmed: {other:?}"),
            }
            let elapsed = t0.elapsed();
            // Take it off the queue before the next one.
            tokio::time::timeout(timeout, replies.next())
                .await
                .map_err(|_| anyhow!("publish {seq} never came back"))?
                .ok_or_else(|| anyhow!("the consumer was cancelled"))?
                .context("reading it back")?;
            if seq >= args.warmup {
                out.push(elapsed.as_secs_f64() * 1000.0);
            }
        }
        println!("{}", json!({"ms": out}));
        let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "done".into())).await;
        return Ok(());
    }
    for seq in 0..args.warmup + args.calls {
        let msg_id = uuid::Uuid::new_v4().simple().to_string();
        let body = ping_request(&msg_id, &reply_q, seq);
        let t0 = Instant::now();
        channel
            .basic_publish(
                args.exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .context("publishing a call")?;
        // Replies of this call only: a stale one (of a call that timed out)
        // is skipped, as oslo's reply waiter does.
        let reply = loop {
            let delivery = tokio::time::timeout(timeout, replies.next())
                .await
                .map_err(|_| anyhow!("no reply to call {seq} within {timeout:?}"))?
                .ok_or_else(|| anyhow!("the reply consumer was cancelled"))?
                .context("reading a reply")?;
            let reply = open_reply(&delivery.data)?;
            if reply.get("_msg_id").and_then(Value::as_str) == Some(msg_id.as_str())
                && reply.get("ending").and_then(Value::as_bool).unwrap_or(true)
            {
                break reply;
            }
        };
        let elapsed = t0.elapsed();
        if let Some(failure) = reply.get("failure").filter(|f| !f.is_null()) {
            bail!("call {seq} failed: {failure}");
        }
        let arg = reply.get("result").and_then(|r| r.get("arg")).and_then(Value::as_str);
        if arg != Some(format!("bench-{seq}").as_str()) {
            bail!("unexpected ping answer: {:?}", reply.get("result"));
        }
        if seq >= args.warmup {
            out.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    println!("{}", json!({"ms": out}));
    // Best effort: the exclusive reply queue goes with the connection anyway.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(200, "done".into())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_urls_become_amqp_uris() {
        assert_eq!(amqp_uri("rabbit://u:p@127.0.0.1:5672/").unwrap(), "amqp://u:p@127.0.0.1:5672/%2f");
        assert_eq!(amqp_uri("rabbit://u:p@h1:5672,u:p@h2:5672/nova").unwrap(), "amqp://u:p@h1:5672/nova");
        assert_eq!(amqp_uri("rabbit://u:p@h:5672").unwrap(), "amqp://u:p@h:5672/%2f");
        assert!(amqp_uri("nonsense").is_err());
    }

    #[test]
    fn a_request_is_an_oslo_2_envelope() {
        let body = ping_request("m1", "reply_x", 3);
        let m = open_reply(&body).unwrap();
        assert_eq!(m["method"], "ping");
        assert_eq!(m["namespace"], "baseapi");
        assert_eq!(m["_msg_id"], "m1");
        assert_eq!(m["_reply_q"], "reply_x");
        assert_eq!(m["args"]["arg"], "bench-3");
        assert_eq!(m["_context_project_id"], "p-bench");
    }
}
