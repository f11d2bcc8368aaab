//! The oslo.messaging envelope 2.0 and the messages inside it.
//!
//! On the wire a body is `{"oslo.version": "2.0", "oslo.message": "<json>"}`:
//! the message is JSON encoded *inside* a JSON string. A body without both keys
//! is a pre-envelope message and is used as is. Requests carry `method`,
//! `args`, `version`, `namespace`, `_unique_id`, the `_context_*` keys and, for
//! calls, `_msg_id`, `_reply_q` and `_timeout`. Replies carry `result`,
//! `failure` (itself a JSON string), `ending`, `_msg_id` and `_unique_id`.

use serde_json::{Map, Value, json};

use super::context::{ContextError, RequestContext};
use super::failure::RemoteError;
use super::version::Version;

/// Why a body could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// The body is larger than `rpc_max_message_bytes` (size, limit): refused
    /// before parsing so a huge message cannot exhaust memory.
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not the `{oslo.version, oslo.message}` object.
    #[error("body is not a JSON object")]
    NotObject,
    /// An envelope version this host does not understand; guessing could
    /// misread the message.
    #[error("unsupported envelope version {0:?} (only 2.x with minor 0 is understood)")]
    Version(String),
    /// `oslo.message` is not a string holding a JSON object.
    #[error("oslo.message is not a JSON object encoded as a string")]
    BadInner,
}

/// Why a decoded message is not a usable request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// A request without a method cannot be dispatched.
    #[error("request has no method")]
    NoMethod,
    /// A request field is of the wrong JSON type.
    #[error("request field {0:?} has the wrong type")]
    BadField(&'static str),
    /// A name field is too long; bounds what a sender can make us log and store.
    #[error("request field {0:?} is longer than {MAX_NAME_BYTES} bytes")]
    TooLong(&'static str),
    /// `_timeout` is negative, not finite or too large to be a duration.
    #[error("request field \"_timeout\" is not a duration in seconds: {0}")]
    BadTimeout(f64),
    /// The `_context_*` keys are malformed.
    #[error("invalid request context: {0}")]
    Context(#[from] ContextError),
    /// The `version` field is not `major.minor`.
    #[error("invalid request version {0:?}")]
    Version(String),
}

/// The longest `_unique_id`, `_msg_id`, `_reply_q` and `method` accepted.
///
/// oslo sends 32 hex digits (ids), `reply_<32 hex>` and Nova's method names;
/// an AMQP queue name is a short string of at most 255 bytes, so a longer
/// `_reply_q` names no queue. The ids are kept (duplicate suppression, the
/// cache of missing reply queues): unbounded, a flood of messages with
/// megabyte ids would be kept too.
pub const MAX_NAME_BYTES: usize = 255;

/// The longest call-monitor `_timeout` honoured (a week); a caller's larger
/// value is read as this. It only spaces the heartbeats (every half of it).
pub const MAX_CALL_MONITOR_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

/// Where a call's reply goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    /// The caller's call id; the reply carries it back so the caller can match it.
    pub msg_id: String,
    /// The caller's reply queue, which receives the reply.
    pub reply_q: String,
}

/// Whether an argument's name says it holds a secret (`admin_password`,
/// `auth_token`, `password`, `secret`, `credential`...), or tenant data that
/// often does (`injected_files`' contents, `user_data`).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "token", "secret", "credential", "private_key", "injected_files", "user_data"]
        .iter()
        .any(|s| k.contains(s))
}

/// `v` with the value of every key [`is_secret_key`] names replaced by
/// `"***"`, at any depth: what `Debug` of a request shows of its arguments.
pub fn redacted(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, v)| (k.clone(), if is_secret_key(k) { json!("***") } else { redacted(v) })).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

/// A decoded RPC request. `Debug` shows its arguments [`redacted`].
#[derive(Clone)]
pub struct Request {
    /// The manager method to run.
    pub method: String,
    /// The method's keyword arguments.
    pub args: Map<String, Value>,
    /// The endpoint namespace (None for the manager's own methods).
    pub namespace: Option<String>,
    /// The requested version as sent (`"1.0"` when absent).
    pub version_text: String,
    /// The requested version, parsed, to check against the one served.
    pub version: Version,
    /// oslo's `_unique_id`, used to drop a message delivered twice.
    pub unique_id: Option<String>,
    /// Present for calls, absent for casts and fanouts.
    pub reply_to: Option<ReplyTo>,
    /// Call-monitor timeout in seconds, when the caller set one.
    pub call_monitor_timeout: Option<f64>,
    /// The caller's identity and request id (`_context_*` keys).
    pub context: RequestContext,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("args", &redacted(&Value::Object(self.args.clone())))
            .field("namespace", &self.namespace)
            .field("version", &self.version_text)
            .field("unique_id", &self.unique_id)
            .field("reply_to", &self.reply_to)
            .field("call_monitor_timeout", &self.call_monitor_timeout)
            .field("context", &self.context)
            .finish()
    }
}

/// A reply to a call (final or call-monitor heartbeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The call id this reply answers.
    pub msg_id: String,
    /// The method's return value (null on failure).
    pub result: Value,
    /// The exception to raise in the caller, when the call failed.
    pub failure: Option<RemoteError>,
    /// True on the last reply of a call; false on a call-monitor heartbeat,
    /// which only tells the caller to keep waiting.
    pub ending: bool,
}

/// Unwraps the envelope, enforcing a size limit first.
pub fn open(body: &[u8], max_bytes: usize) -> Result<Map<String, Value>, EnvelopeError> {
    if body.len() > max_bytes {
        return Err(EnvelopeError::TooLarge(body.len(), max_bytes));
    }
    let outer: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Value::Object(mut outer) = outer else {
        return Err(EnvelopeError::NotObject);
    };
    if !(outer.contains_key("oslo.version") && outer.contains_key("oslo.message")) {
        return Ok(outer);
    }
    let version = match outer.get("oslo.version") {
        Some(Value::String(v)) => v.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let supported = version.parse::<Version>().map(|v| v.major == 2 && v.minor == 0).unwrap_or(false);
    if !supported {
        return Err(EnvelopeError::Version(version));
    }
    match outer.remove("oslo.message") {
        Some(Value::String(inner)) => match serde_json::from_str(&inner) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(EnvelopeError::BadInner),
        },
        _ => Err(EnvelopeError::BadInner),
    }
}

/// Wraps a message in envelope 2.0.
pub fn seal(message: &Map<String, Value>) -> Vec<u8> {
    let inner = Value::Object(message.clone()).to_string();
    json!({"oslo.version": "2.0", "oslo.message": inner}).to_string().into_bytes()
}

/// A fresh `_unique_id`/`_msg_id`: uuid4 in hex, as oslo.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Request {
    /// Where to reply, even when the rest of the message is unusable, so a
    /// malformed call can still be answered with a failure.
    pub fn reply_to_of(message: &Map<String, Value>) -> Option<ReplyTo> {
        match (message.get("_msg_id"), message.get("_reply_q")) {
            (Some(Value::String(msg_id)), Some(Value::String(reply_q)))
                if msg_id.len() <= MAX_NAME_BYTES && !reply_q.is_empty() && reply_q.len() <= MAX_NAME_BYTES =>
            {
                Some(ReplyTo { msg_id: msg_id.clone(), reply_q: reply_q.clone() })
            }
            _ => None,
        }
    }

    /// Interprets an opened message as a request.
    pub fn from_message(mut message: Map<String, Value>) -> Result<Self, RequestError> {
        let reply_to = Self::reply_to_of(&message);
        for field in ["_msg_id", "_reply_q"] {
            match message.get(field) {
                Some(Value::String(s)) if s.len() > MAX_NAME_BYTES => return Err(RequestError::TooLong(field)),
                _ => {}
            }
        }
        let unique_id = match message.remove("_unique_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() > MAX_NAME_BYTES => return Err(RequestError::TooLong("_unique_id")),
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(RequestError::BadField("_unique_id")),
        };
        let call_monitor_timeout = match message.remove("_timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => Some(t.min(MAX_CALL_MONITOR_TIMEOUT)),
                Some(t) => return Err(RequestError::BadTimeout(t)),
                None => return Err(RequestError::BadField("_timeout")),
            },
            Some(_) => return Err(RequestError::BadField("_timeout")),
        };
        message.remove("_msg_id");
        message.remove("_reply_q");
        let mut context = Map::new();
        let keys: Vec<String> = message.keys().filter(|k| k.starts_with("_context_")).cloned().collect();
        for key in keys {
            if let Some(v) = message.remove(&key) {
                context.insert(key["_context_".len()..].to_string(), v);
            }
        }
        let context = RequestContext::from_map(context)?;
        let method = match message.remove("method") {
            Some(Value::String(m)) if m.len() > MAX_NAME_BYTES => return Err(RequestError::TooLong("method")),
            Some(Value::String(m)) if !m.is_empty() => m,
            None | Some(Value::Null) => return Err(RequestError::NoMethod),
            Some(_) => return Err(RequestError::BadField("method")),
        };
        let args = match message.remove("args") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a,
            Some(_) => return Err(RequestError::BadField("args")),
        };
        let namespace = match message.remove("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) => Some(n),
            Some(_) => return Err(RequestError::BadField("namespace")),
        };
        let version_text = match message.remove("version") {
            None | Some(Value::Null) => "1.0".to_string(),
            Some(Value::String(v)) => v,
            Some(_) => return Err(RequestError::BadField("version")),
        };
        let version = version_text.parse().map_err(|_| RequestError::Version(version_text.clone()))?;
        Ok(Request {
            method,
            args,
            namespace,
            version_text,
            version,
            unique_id,
            reply_to,
            call_monitor_timeout,
            context,
        })
    }
}

/// Builds the inner message of a request (`seal` it to send).
pub fn request_message(
    context: &RequestContext,
    method: &str,
    args: Map<String, Value>,
    namespace: Option<&str>,
    version: &str,
    call: Option<(&ReplyTo, Option<f64>)>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("method".into(), json!(method));
    m.insert("args".into(), Value::Object(args));
    if let Some(ns) = namespace {
        m.insert("namespace".into(), json!(ns));
    }
    m.insert("version".into(), json!(version));
    if let Some((reply_to, timeout)) = call {
        m.insert("_msg_id".into(), json!(reply_to.msg_id));
        m.insert("_reply_q".into(), json!(reply_to.reply_q));
        m.insert("_timeout".into(), json!(timeout));
    }
    m.insert("_unique_id".into(), json!(new_id()));
    m.extend(context.to_wire());
    m
}

/// Builds the inner message of a reply or call-monitor heartbeat.
pub fn reply_message(msg_id: &str, result: Result<Value, &RemoteError>, ending: bool) -> Map<String, Value> {
    let (result, failure) = match result {
        Ok(v) => (v, Value::Null),
        Err(e) => (Value::Null, Value::String(e.to_failure_string())),
    };
    let mut m = Map::new();
    m.insert("result".into(), result);
    m.insert("failure".into(), failure);
    m.insert("ending".into(), json!(ending));
    m.insert("_msg_id".into(), json!(msg_id));
    m.insert("_unique_id".into(), json!(new_id()));
    m
}

/// Interprets an opened message as a reply; `None` when it has no `_msg_id`.
pub fn parse_reply(mut message: Map<String, Value>) -> Option<Reply> {
    let msg_id = match message.remove("_msg_id") {
        Some(Value::String(s)) => s,
        _ => return None,
    };
    let failure = match message.remove("failure") {
        Some(Value::String(s)) => Some(
            RemoteError::from_failure_string(&s)
                .unwrap_or_else(|e| RemoteError::internal(format!("undecodable remote failure ({e}): {s}"))),
        ),
        _ => None,
    };
    let ending = message.remove("ending").and_then(|v| v.as_bool()).unwrap_or(true);
    let result = message.remove("result").unwrap_or(Value::Null);
    Some(Reply { msg_id, result, failure, ending })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &[u8] = include_bytes!("../../tests/fixtures/build_and_run_instance.newest.cast.body.json");
    const PING: &[u8] = include_bytes!("../../tests/fixtures/conductor-ping.call.body.json");
    const RESULT: &[u8] = include_bytes!("../../tests/fixtures/oslo-server-reply.result.body.json");

    #[test]
    fn decodes_a_real_cast() {
        let req = Request::from_message(open(BUILD, 1 << 20).unwrap()).unwrap();
        assert_eq!(req.method, "build_and_run_instance");
        assert_eq!(req.version, Version::new(6, 0));
        assert!(req.reply_to.is_none());
        assert!(req.unique_id.is_some());
        assert!(req.args.contains_key("instance"));
        assert!(req.context.request_id().unwrap().starts_with("req-"));
    }

    #[test]
    fn envelope_numbers_and_ids_from_a_peer_are_bounded() {
        let call = |extra: Value| {
            let mut m = open(PING, 1 << 20).unwrap();
            for (k, v) in extra.as_object().unwrap() {
                m.insert(k.clone(), v.clone());
            }
            Request::from_message(m)
        };
        // Call-monitor timeouts: clamped, or refused when not a duration.
        assert_eq!(call(json!({"_timeout": 1e300})).unwrap().call_monitor_timeout, Some(MAX_CALL_MONITOR_TIMEOUT));
        assert_eq!(call(json!({"_timeout": u64::MAX})).unwrap().call_monitor_timeout, Some(MAX_CALL_MONITOR_TIMEOUT));
        assert_eq!(call(json!({"_timeout": 30})).unwrap().call_monitor_timeout, Some(30.0));
        assert_eq!(call(json!({"_timeout": -1})).unwrap_err(), RequestError::BadTimeout(-1.0));
        assert_eq!(call(json!({"_timeout": "60"})).unwrap_err(), RequestError::BadField("_timeout"));
        // Ids and names a host keeps or uses as labels: at most 255 bytes.
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for field in ["_unique_id", "_msg_id", "_reply_q", "method"] {
            assert_eq!(call(json!({field: long})).unwrap_err(), RequestError::TooLong(field), "{field}");
            assert!(call(json!({field: "a".repeat(MAX_NAME_BYTES)})).is_ok(), "{field}");
        }
        let mut m = open(PING, 1 << 20).unwrap();
        m.insert("_reply_q".into(), json!(long));
        assert_eq!(Request::reply_to_of(&m), None, "a queue name AMQP cannot carry is no reply address");
    }

    #[test]
    fn decodes_a_real_call() {
        let req = Request::from_message(open(PING, 1 << 20).unwrap()).unwrap();
        assert_eq!(req.namespace.as_deref(), Some("baseapi"));
        assert_eq!(req.reply_to.as_ref().unwrap().reply_q, "reply_2c8843b9f64844439b66adc49c8203c2");
        assert_eq!(req.call_monitor_timeout, None);
        assert_eq!(req.args["arg"], "1.21 GigaWatts");
    }

    #[test]
    fn round_trips_a_request() {
        let ctx = RequestContext::admin();
        let rt = ReplyTo { msg_id: new_id(), reply_q: "reply_x".into() };
        let mut args = Map::new();
        args.insert("arg".into(), json!(1));
        let body = seal(&request_message(&ctx, "ping", args, Some("baseapi"), "1.1", Some((&rt, Some(30.0)))));
        let req = Request::from_message(open(&body, 1 << 20).unwrap()).unwrap();
        assert_eq!(req.reply_to, Some(rt));
        assert_eq!(req.call_monitor_timeout, Some(30.0));
        assert_eq!(req.context, ctx);
        assert_eq!(req.version_text, "1.1");
    }

    #[test]
    fn decodes_a_real_reply_and_our_failures() {
        let reply = parse_reply(open(RESULT, 1 << 20).unwrap()).unwrap();
        assert!(reply.ending && reply.failure.is_none());
        let e = RemoteError::no_such_method("x");
        let body = seal(&reply_message("m1", Err(&e), true));
        let reply = parse_reply(open(&body, 1 << 20).unwrap()).unwrap();
        assert_eq!(reply.failure, Some(e));
        assert_eq!(reply.result, Value::Null);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(matches!(open(b"not json", 100), Err(EnvelopeError::NotJson(_))));
        assert_eq!(open(b"[1]", 100), Err(EnvelopeError::NotObject));
        assert_eq!(
            open(br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#, 100),
            Err(EnvelopeError::Version("3.0".into()))
        );
        assert_eq!(open(br#"{"oslo.version": "2.0", "oslo.message": "[]"}"#, 100), Err(EnvelopeError::BadInner));
        assert_eq!(open(&[b' '; 200], 100), Err(EnvelopeError::TooLarge(200, 100)));
        // A pre-envelope message is used as is.
        assert!(open(br#"{"method": "ping"}"#, 100).is_ok());
    }

    #[test]
    fn malformed_requests_are_refused_but_keep_their_reply_address() {
        let m = open(br#"{"_msg_id": "a", "_reply_q": "r", "args": {}}"#, 100).unwrap();
        assert!(Request::reply_to_of(&m).is_some());
        assert_eq!(Request::from_message(m).unwrap_err(), RequestError::NoMethod);
        let m = open(br#"{"method": "x", "_context_roles": "admin"}"#, 100).unwrap();
        assert!(matches!(Request::from_message(m), Err(RequestError::Context(_))));
        let m = open(br#"{"method": "x", "version": "six"}"#, 100).unwrap();
        assert_eq!(Request::from_message(m).unwrap_err(), RequestError::Version("six".into()));
    }
}
