//! The AMQP entities an oslo.messaging peer declares, with the flags that follow
//! the operator's `[oslo_messaging_rabbit]` settings.
//!
//! Flags must equal what the rest of the deployment declared, or RabbitMQ
//! closes the channel with 406 PRECONDITION_FAILED; so they are derived here in
//! one place, the way oslo's rabbit driver derives them.

use std::time::Duration;

use crate::config::RabbitSettings;

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDecl {
    /// The exchange's name, as the rest of the deployment spells it.
    pub name: String,
    /// How the exchange routes (topic or fanout).
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart (`amqp_durable_queues`).
    pub durable: bool,
    /// Whether the broker deletes it when its last binding goes (`amqp_auto_delete`).
    pub auto_delete: bool,
}

/// Exchange types used by oslo.messaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes by routing key: requests to a topic or to one server of it.
    Topic,
    /// Copies each message to every bound queue: fanout casts to all hosts.
    Fanout,
}

/// A queue argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// An integer argument (e.g. `x-expires` in milliseconds).
    Int(i64),
    /// A string argument (e.g. `x-queue-type`).
    Str(String),
}

/// A queue to declare.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    /// The queue's name, as oslo names it for this topic and server.
    pub name: String,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Whether the broker deletes it when its last consumer goes.
    pub auto_delete: bool,
    /// The `x-` arguments (queue type, expiry), which must match any existing
    /// declaration of the same queue.
    pub arguments: Vec<(String, ArgValue)>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDecl {
    /// The queue receiving the messages.
    pub queue: String,
    /// The exchange they come from.
    pub exchange: String,
    /// The key that selects them.
    pub routing_key: String,
}

/// Something to (re)declare on every new connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Declaration {
    /// Declare an exchange.
    Exchange(ExchangeDecl),
    /// Declare a queue.
    Queue(QueueDecl),
    /// Bind a queue to an exchange.
    Binding(BindingDecl),
}

/// Derives declarations from the rabbit settings.
#[derive(Debug, Clone)]
pub struct Topology {
    rabbit: RabbitSettings,
    control_exchange: String,
}

impl Topology {
    /// Topology for `control_exchange` (Nova: `nova`).
    pub fn new(rabbit: RabbitSettings, control_exchange: String) -> Self {
        Topology { rabbit, control_exchange }
    }

    /// The exchange carrying RPC requests.
    pub fn control_exchange(&self) -> &str {
        &self.control_exchange
    }

    fn durable(&self) -> bool {
        self.rabbit.durable_queues || self.rabbit.quorum_queue
    }

    /// oslo.messaging's `_get_queue_arguments(ha, ttl, quorum, quorum_config)`
    /// in the order it builds them (the order does not matter to RabbitMQ).
    fn queue_arguments(&self, quorum: bool, ttl: Duration) -> Vec<(String, ArgValue)> {
        let mut args = Vec::new();
        if self.rabbit.ha_queues {
            args.push(("x-ha-policy".into(), ArgValue::Str("all".into())));
        }
        if quorum {
            args.push(("x-queue-type".into(), ArgValue::Str("quorum".into())));
            if self.rabbit.quorum_delivery_limit > 0 {
                args.push(("x-delivery-limit".into(), ArgValue::Int(self.rabbit.quorum_delivery_limit)));
            }
            if self.rabbit.quorum_max_memory_length > 0 {
                args.push(("x-max-in-memory-length".into(), ArgValue::Int(self.rabbit.quorum_max_memory_length)));
            }
            if self.rabbit.quorum_max_memory_bytes > 0 {
                args.push(("x-max-in-memory-bytes".into(), ArgValue::Int(self.rabbit.quorum_max_memory_bytes)));
            }
        }
        // oslo: `if rabbit_queue_ttl > 0` (whole seconds, times 1000)
        if ttl.as_secs() > 0 {
            args.push(("x-expires".into(), ArgValue::Int(ttl.as_secs() as i64 * 1000)));
        }
        args
    }

    /// Topic queues: no TTL; quorum with `rabbit_quorum_queue`.
    fn topic_queue_arguments(&self) -> Vec<(String, ArgValue)> {
        self.queue_arguments(self.rabbit.quorum_queue, Duration::ZERO)
    }

    /// Reply and fanout queues: `x-expires` from `rabbit_transient_queues_ttl`;
    /// quorum (with the same quorum limits) with `rabbit_transient_quorum_queue`.
    fn transient_queue_arguments(&self) -> Vec<(String, ArgValue)> {
        self.queue_arguments(self.rabbit.transient_quorum_queue, self.rabbit.transient_queues_ttl)
    }

    /// The control exchange (`nova`, topic).
    pub fn control_exchange_decl(&self) -> ExchangeDecl {
        ExchangeDecl {
            name: self.control_exchange.clone(),
            kind: ExchangeKind::Topic,
            durable: self.durable(),
            auto_delete: self.rabbit.auto_delete,
        }
    }

    /// What an RPC server for `topic` on `server` declares: the shared queue
    /// `<topic>`, the host queue `<topic>.<server>`, and the fanout exchange
    /// `<topic>_fanout` with a per-process queue `<topic>_fanout_<fanout_id>`.
    /// Returns the declarations and the three queue names to consume.
    pub fn rpc_server(&self, topic: &str, server: &str, fanout_id: &str) -> (Vec<Declaration>, Vec<String>) {
        let exchange = self.control_exchange_decl();
        let topic_queue = |name: String| QueueDecl {
            name,
            durable: self.durable(),
            auto_delete: self.rabbit.auto_delete,
            arguments: self.topic_queue_arguments(),
        };
        let shared = topic.to_string();
        let host = format!("{topic}.{server}");
        let fanout_exchange = format!("{topic}_fanout");
        let fanout_queue = format!("{topic}_fanout_{fanout_id}");
        let decls = vec![
            Declaration::Exchange(exchange.clone()),
            Declaration::Queue(topic_queue(shared.clone())),
            Declaration::Binding(BindingDecl {
                queue: shared.clone(),
                exchange: exchange.name.clone(),
                routing_key: shared.clone(),
            }),
            Declaration::Queue(topic_queue(host.clone())),
            Declaration::Binding(BindingDecl {
                queue: host.clone(),
                exchange: exchange.name.clone(),
                routing_key: host.clone(),
            }),
            Declaration::Exchange(ExchangeDecl {
                name: fanout_exchange.clone(),
                kind: ExchangeKind::Fanout,
                durable: false,
                auto_delete: true,
            }),
            Declaration::Queue(QueueDecl {
                name: fanout_queue.clone(),
                durable: self.rabbit.transient_quorum_queue,
                auto_delete: false,
                arguments: self.transient_queue_arguments(),
            }),
            Declaration::Binding(BindingDecl {
                queue: fanout_queue.clone(),
                exchange: fanout_exchange,
                routing_key: topic.to_string(),
            }),
        ];
        (decls, vec![host, shared, fanout_queue])
    }

    /// A caller's reply queue `reply_<id>` (bound only to the default exchange).
    pub fn reply_queue(&self, name: &str) -> Declaration {
        Declaration::Queue(QueueDecl {
            name: name.to_string(),
            durable: self.rabbit.transient_quorum_queue,
            auto_delete: false,
            arguments: self.transient_queue_arguments(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabbit() -> RabbitSettings {
        RabbitSettings {
            heartbeat_timeout_threshold: 60,
            durable_queues: false,
            auto_delete: false,
            ha_queues: false,
            quorum_queue: false,
            quorum_delivery_limit: 0,
            quorum_max_memory_length: 0,
            quorum_max_memory_bytes: 0,
            transient_queues_ttl: Duration::from_secs(1800),
            prefetch_count: 0,
            retry_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(2),
            interval_max: Duration::from_secs(30),
            missing_consumer_retry_timeout: Duration::from_secs(60),
            transient_quorum_queue: false,
            login_method: crate::config::LoginMethod::AmqPlain,
            tls: Default::default(),
        }
    }

    #[test]
    fn default_flags_match_a_python_compute() {
        let t = Topology::new(rabbit(), "nova".into());
        let (decls, queues) = t.rpc_server("compute", "cmp1", "abc");
        assert_eq!(queues, ["compute.cmp1", "compute", "compute_fanout_abc"]);
        let Declaration::Exchange(nova) = &decls[0] else { panic!() };
        assert_eq!((nova.durable, nova.auto_delete, nova.kind), (false, false, ExchangeKind::Topic));
        let Declaration::Queue(host) = &decls[3] else { panic!() };
        assert!(!host.durable && !host.auto_delete && host.arguments.is_empty());
        let Declaration::Queue(fanout) = &decls[6] else { panic!() };
        assert_eq!(fanout.arguments, vec![("x-expires".to_string(), ArgValue::Int(1_800_000))]);
        let Declaration::Binding(b) = &decls[7] else { panic!() };
        assert_eq!((b.exchange.as_str(), b.routing_key.as_str()), ("compute_fanout", "compute"));
    }

    #[test]
    fn quorum_implies_durable_and_arguments() {
        let mut r = rabbit();
        r.quorum_queue = true;
        r.quorum_delivery_limit = 5;
        let t = Topology::new(r, "nova".into());
        let (decls, _) = t.rpc_server("compute", "cmp1", "abc");
        let Declaration::Queue(q) = &decls[1] else { panic!() };
        assert!(q.durable);
        assert!(q.arguments.contains(&("x-queue-type".into(), ArgValue::Str("quorum".into()))));
        assert!(q.arguments.contains(&("x-delivery-limit".into(), ArgValue::Int(5))));
    }

    #[test]
    fn transient_quorum_queues_as_oslo_declares_them() {
        // oslo.messaging 18 declare_direct_consumer / declare_fanout_consumer:
        // durable = rabbit_transient_quorum_queue, quorum arguments with the
        // quorum limits, plus x-expires; the fanout exchange stays transient.
        let mut r = rabbit();
        r.transient_quorum_queue = true;
        r.quorum_delivery_limit = 3;
        let t = Topology::new(r, "nova".into());
        let (decls, _) = t.rpc_server("compute", "cmp1", "abc");
        let Declaration::Queue(topic) = &decls[1] else { panic!() };
        assert!(!topic.durable && topic.arguments.is_empty(), "topic queues follow rabbit_quorum_queue only");
        let Declaration::Exchange(fx) = &decls[5] else { panic!() };
        assert!(!fx.durable && fx.auto_delete);
        let expected = vec![
            ("x-queue-type".to_string(), ArgValue::Str("quorum".into())),
            ("x-delivery-limit".to_string(), ArgValue::Int(3)),
            ("x-expires".to_string(), ArgValue::Int(1_800_000)),
        ];
        let Declaration::Queue(fanout) = &decls[6] else { panic!() };
        assert!(fanout.durable && !fanout.auto_delete);
        assert_eq!(fanout.arguments, expected);
        let Declaration::Queue(reply) = t.reply_queue("reply_x") else { panic!() };
        assert!(reply.durable);
        assert_eq!(reply.arguments, expected);
    }

    #[test]
    fn zero_ttl_means_no_expiry() {
        let mut r = rabbit();
        r.transient_queues_ttl = Duration::ZERO;
        let Declaration::Queue(reply) = Topology::new(r, "nova".into()).reply_queue("reply_x") else { panic!() };
        assert!(reply.arguments.is_empty());
    }
}
