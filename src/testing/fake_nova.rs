//! An in-memory Nova behind the conductor's calls ([`ConductorTransport`]):
//! instance rows with `Instance.save`'s expected-task-state check, action
//! events, faults and info caches, answering the same `object_action` and
//! `object_class_action_versions` calls nova-conductor answers, with the same
//! exceptions. Any call can be made to fail as if the conductor were gone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::conductor::ConductorTransport;
use crate::objects::Instance;
use crate::rpc::{CallError, RemoteError, RequestContext, Target};

/// One `InstanceActionEvent` as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionEvent {
    /// The instance.
    pub uuid: String,
    /// `compute_<method>`.
    pub event: String,
    /// Whether it finished (a started event that never finished is a bug).
    pub finished: bool,
    /// The failure message it finished with.
    pub failure: Option<String>,
}

/// One `InstanceFault`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The instance.
    pub uuid: String,
    /// Its HTTP code.
    pub code: u64,
    /// What the tenant reads.
    pub message: String,
}

#[derive(Default)]
struct Db {
    instances: HashMap<String, Map<String, Value>>,
    events: Vec<ActionEvent>,
    faults: Vec<Fault>,
    /// Migration rows by uuid (what `Migration.save` wrote).
    migrations: HashMap<String, Map<String, Value>>,
    /// Calls that fail once they succeeded this many more times.
    failing: HashMap<String, usize>,
    saves: usize,
    casts: Vec<Cast>,
    /// Service rows of other compute hosts, by host.
    services: HashMap<String, Value>,
    /// Server groups (`nova_object.data`), by uuid.
    groups: HashMap<String, Value>,
    /// Instances whose console tokens were cleaned, in order.
    console_cleanups: Vec<String>,
}

/// A cast a compute sent to another compute (a move's next step).
#[derive(Debug, Clone)]
pub struct Cast {
    /// The host addressed (`compute.<host>`).
    pub host: String,
    /// The method.
    pub method: String,
    /// Its arguments.
    pub args: Map<String, Value>,
}

/// The in-memory Nova.
#[derive(Default)]
pub struct FakeNova {
    db: Mutex<Db>,
}

/// A Migration primitive of a stored row.
fn migration_primitive(data: &impl serde::Serialize) -> Value {
    json!({"nova_object.name": "Migration", "nova_object.namespace": "nova",
           "nova_object.version": "1.7", "nova_object.data": data})
}

/// A MigrationList primitive of stored rows.
fn migration_list<'a>(rows: impl Iterator<Item = &'a serde_json::Map<String, Value>>) -> Value {
    let objects: Vec<Value> = rows.map(migration_primitive).collect();
    json!({"nova_object.name": "MigrationList", "nova_object.namespace": "nova",
           "nova_object.version": "1.5", "nova_object.data": {"objects": objects}})
}

fn nova_error(class: &str, message: String, code: u16) -> CallError {
    CallError::Remote(RemoteError::nova(class, message, code, json!({})))
}

fn instance_primitive(data: &Map<String, Value>) -> Value {
    json!({"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.8",
           "nova_object.data": data})
}

impl FakeNova {
    fn with<T>(&self, f: impl FnOnce(&mut Db) -> T) -> T {
        f(&mut self.db.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds an instance row (the `nova_object.data` of an Instance).
    pub fn add_instance(&self, data: Value) {
        let data = data.as_object().cloned().unwrap_or_default();
        let uuid = data.get("uuid").and_then(Value::as_str).unwrap_or_default().to_string();
        self.with(|db| db.instances.insert(uuid, data));
    }

    /// The instance as the API would send it in an RPC.
    pub fn instance(&self, uuid: &str) -> Instance {
        let data = self.with(|db| db.instances.get(uuid).cloned()).unwrap_or_default();
        Instance::from_primitive(&instance_primitive(&data)).expect("a stored instance")
    }

    /// One field of an instance row (Null when unset, None without a row).
    pub fn field(&self, uuid: &str, field: &str) -> Option<Value> {
        self.with(|db| db.instances.get(uuid).map(|d| d.get(field).cloned().unwrap_or(Value::Null)))
    }

    /// Changes a row behind the compute's back (another request).
    pub fn set_field(&self, uuid: &str, field: &str, value: Value) {
        self.with(|db| db.instances.get_mut(uuid).map(|d| d.insert(field.to_string(), value)));
    }

    /// Removes an instance row (the API deleted the instance).
    pub fn remove_instance(&self, uuid: &str) {
        self.with(|db| db.instances.remove(uuid));
    }

    /// Adds a migration row (the `nova_object.data` of a Migration).
    pub fn add_migration(&self, data: Value) {
        let data = data.as_object().cloned().unwrap_or_default();
        let uuid = data.get("uuid").and_then(Value::as_str).unwrap_or_default().to_string();
        self.with(|db| db.migrations.insert(uuid, data));
    }

    /// The migration as the API or a compute would send it.
    pub fn migration(&self, uuid: &str) -> crate::objects::Migration {
        let data = self.with(|db| db.migrations.get(uuid).cloned()).unwrap_or_default();
        crate::objects::Migration::from_primitive(&migration_primitive(&data)).expect("a stored migration")
    }

    /// Changes a migration row behind the compute's back (the API).
    pub fn set_migration_field(&self, uuid: &str, field: &str, value: Value) {
        self.with(|db| db.migrations.get_mut(uuid).map(|d| d.insert(field.to_string(), value)));
    }

    /// Adds a server group (`nova_object.data` with `uuid`, `name`, `policy`, `members`).
    pub fn add_group(&self, data: Value) {
        let uuid = data["uuid"].as_str().unwrap_or_default().to_string();
        self.with(|db| db.groups.insert(uuid, data));
    }

    /// Gives `host` a compute service row (`nova_object.data`).
    pub fn add_service(&self, host: &str, data: Value) {
        self.with(|db| db.services.insert(host.to_string(), data));
    }

    /// Takes the casts sent so far, oldest first.
    pub fn take_casts(&self) -> Vec<Cast> {
        self.with(|db| std::mem::take(&mut db.casts))
    }

    /// The action events recorded.
    pub fn events(&self) -> Vec<ActionEvent> {
        self.with(|db| db.events.clone())
    }

    /// The faults recorded.
    pub fn faults(&self) -> Vec<Fault> {
        self.with(|db| db.faults.clone())
    }

    /// A field of a migration row as `Migration.save` left it.
    pub fn migration_field(&self, uuid: &str, field: &str) -> Option<Value> {
        self.with(|db| db.migrations.get(uuid).and_then(|m| m.get(field).cloned()))
    }

    /// The instances whose console tokens were cleaned
    /// (`ConsoleAuthToken.clean_console_auths_for_instance`), in order.
    pub fn console_cleanups(&self) -> Vec<String> {
        self.with(|db| db.console_cleanups.clone())
    }

    /// How many `Instance.save` calls succeeded.
    pub fn saves(&self) -> usize {
        self.with(|db| db.saves)
    }

    /// Makes every later call of `what` (`Instance.save`,
    /// `InstanceActionEvent.event_start`, ...) time out.
    pub fn fail(&self, what: &str) {
        self.fail_after(what, 0);
    }

    /// Lets `n` more calls of `what` through, then makes every later one
    /// time out.
    pub fn fail_after(&self, what: &str, n: usize) {
        self.with(|db| db.failing.insert(what.to_string(), n));
    }

    fn object_action(&self, args: &Map<String, Value>) -> Result<Value, CallError> {
        let obj = &args["objinst"];
        let data = obj["nova_object.data"].as_object().cloned().unwrap_or_default();
        let changes: Vec<String> = obj["nova_object.changes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let name = obj["nova_object.name"].as_str().unwrap_or_default();
        let method = args["objmethod"].as_str().unwrap_or_default();
        let str_of = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        self.with(|db| match (name, method) {
            ("Instance", "save") => {
                let uuid = str_of("uuid");
                let Some(row) = db.instances.get_mut(&uuid) else {
                    return Err(nova_error("InstanceNotFound", format!("Instance {uuid} could not be found."), 404));
                };
                if let Some(expected) = args["kwargs"].get("expected_task_state") {
                    let allowed = match expected {
                        Value::Array(a) => a.clone(),
                        one => vec![one.clone()],
                    };
                    let actual = row.get("task_state").cloned().unwrap_or(Value::Null);
                    if !allowed.contains(&actual) {
                        let class = if actual == "deleting" {
                            "UnexpectedDeletingTaskStateError"
                        } else {
                            "UnexpectedTaskStateError"
                        };
                        let message =
                            format!("Unexpected task state: expecting {expected} but the actual state is {actual}");
                        return Err(nova_error(class, message, 500));
                    }
                }
                for c in changes {
                    row.insert(c.clone(), data.get(&c).cloned().unwrap_or(Value::Null));
                }
                db.saves += 1;
                Ok(json!([{}, null]))
            }
            ("Migration", "save") => {
                let row = db.migrations.entry(str_of("uuid")).or_insert_with(|| data.clone());
                for c in changes {
                    row.insert(c.clone(), data.get(&c).cloned().unwrap_or(Value::Null));
                }
                Ok(json!([{}, null]))
            }
            ("Instance", "destroy") => {
                db.instances.remove(&str_of("uuid"));
                Ok(json!([{}, null]))
            }
            ("InstanceFault", "create") => {
                db.faults.push(Fault {
                    uuid: str_of("instance_uuid"),
                    code: data.get("code").and_then(Value::as_u64).unwrap_or(0),
                    message: str_of("message"),
                });
                Ok(json!([{}, null]))
            }
            ("InstanceGroup", "get_hosts") => {
                let exclude: Vec<Value> = args["kwargs"]["exclude"].as_array().cloned().unwrap_or_default();
                let members = data.get("members").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut hosts: Vec<Value> = members
                    .iter()
                    .filter(|m| !exclude.contains(m))
                    .filter_map(|m| db.instances.get(m.as_str().unwrap_or_default()))
                    .filter_map(|row| row.get("host").filter(|h| !h.is_null()).cloned())
                    .collect();
                hosts.dedup();
                Ok(json!([{}, hosts]))
            }
            ("InstanceInfoCache", "save") => {
                let uuid = str_of("instance_uuid");
                let cache = json!({"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova",
                    "nova_object.version": "1.5", "nova_object.data": data});
                db.instances.get_mut(&uuid).map(|row| row.insert("info_cache".into(), cache));
                Ok(json!([{}, null]))
            }
            _ => Err(nova_error("NotImplementedError", format!("fake Nova: {name}.{method}"), 500)),
        })
    }

    fn class_action(&self, args: &Map<String, Value>) -> Result<Value, CallError> {
        let name = args["objname"].as_str().unwrap_or_default();
        let method = args["objmethod"].as_str().unwrap_or_default();
        let a = args["args"].as_array().cloned().unwrap_or_default();
        let arg = |n: usize| a.get(n).and_then(Value::as_str).unwrap_or_default().to_string();
        self.with(|db| match (name, method) {
            ("InstanceActionEvent", "event_start") => {
                db.events.push(ActionEvent { uuid: arg(0), event: arg(1), finished: false, failure: None });
                Ok(Value::Null)
            }
            ("InstanceActionEvent", "event_finish_with_failure") => {
                let (uuid, event) = (arg(0), arg(1));
                let failure = args["kwargs"]["exc_val"].as_str().map(str::to_string);
                match db.events.iter_mut().rev().find(|e| e.uuid == uuid && e.event == event && !e.finished) {
                    Some(e) => {
                        e.finished = true;
                        e.failure = failure;
                    }
                    // Finished without a start (the start raced): still recorded.
                    None => db.events.push(ActionEvent { uuid, event, finished: true, failure }),
                }
                Ok(Value::Null)
            }
            ("InstanceAction", "action_start") => Ok(Value::Null),
            ("ConsoleAuthToken", "clean_console_auths_for_instance") => {
                db.console_cleanups.push(arg(0));
                Ok(Value::Null)
            }
            ("Instance", "get_by_uuid") => match db.instances.get(&arg(0)) {
                Some(data) => Ok(instance_primitive(data)),
                None => Err(nova_error("InstanceNotFound", format!("Instance {} could not be found.", arg(0)), 404)),
            },
            ("InstanceList", "get_by_host") => {
                let host = arg(0);
                let objects: Vec<Value> = db
                    .instances
                    .values()
                    .filter(|d| d.get("host").and_then(Value::as_str) == Some(host.as_str()))
                    .map(instance_primitive)
                    .collect();
                Ok(json!({"nova_object.name": "InstanceList", "nova_object.namespace": "nova",
                          "nova_object.version": "2.6", "nova_object.data": {"objects": objects}}))
            }
            ("Migration", "get_by_instance_and_status") => {
                let (instance, status) = (arg(0), arg(1));
                let found = db.migrations.values().find(|m| {
                    m.get("instance_uuid").and_then(Value::as_str) == Some(instance.as_str())
                        && m.get("status").and_then(Value::as_str) == Some(status.as_str())
                });
                match found {
                    Some(data) => Ok(migration_primitive(data)),
                    None => Err(nova_error("MigrationNotFoundByStatus", format!("no migration {status}"), 404)),
                }
            }
            ("MigrationList", "get_by_filters") => {
                // Nova's `migration_get_all_by_filters` knows a fixed set of
                // keys and ignores any other without a word (a filter on
                // `dest_compute` returns every host's migrations): the fake
                // refuses those, so a query that relies on one fails here.
                let f = a.first().and_then(Value::as_object).cloned().unwrap_or_default();
                const KNOWN: [&str; 6] =
                    ["status", "host", "source_compute", "migration_type", "instance_uuid", "node"];
                if let Some(k) = f.keys().find(|k| !KNOWN.contains(&k.as_str())) {
                    return Err(nova_error(
                        "FakeNovaUnsupported",
                        format!("Nova ignores the migration filter {k}"),
                        500,
                    ));
                }
                let matches = |m: &serde_json::Map<String, Value>, k: &str, want: &Value| match (k, want) {
                    ("host", one) => m.get("source_compute") == Some(one) || m.get("dest_compute") == Some(one),
                    ("node", one) => m.get("source_node") == Some(one) || m.get("dest_node") == Some(one),
                    (_, Value::Array(any)) => any.contains(&m.get(k).cloned().unwrap_or(Value::Null)),
                    (_, one) => m.get(k) == Some(one),
                };
                Ok(migration_list(db.migrations.values().filter(|m| {
                    // `host` wins over `source_compute`, as in Nova's query
                    f.iter().all(|(k, want)| (k == "source_compute" && f.contains_key("host")) || matches(m, k, want))
                })))
            }
            ("MigrationList", "get_unconfirmed_by_dest_compute") => {
                // Rows without `updated_at` count as old enough.
                let window = a.first().and_then(Value::as_i64).unwrap_or(0);
                let cutoff = chrono::Utc::now() - chrono::Duration::seconds(window);
                let dest = arg(1);
                Ok(migration_list(db.migrations.values().filter(|m| {
                    m.get("status").and_then(Value::as_str) == Some("finished")
                        && m.get("dest_compute").and_then(Value::as_str) == Some(dest.as_str())
                        && m.get("updated_at")
                            .and_then(Value::as_str)
                            .and_then(crate::objects::time::parse)
                            .is_none_or(|t| t <= cutoff)
                })))
            }
            ("InstanceGroup", "get_by_hint" | "get_by_uuid") => {
                let key = arg(0);
                match db.groups.values().find(|g| g["uuid"] == json!(key) || g["name"] == json!(key)) {
                    Some(data) => Ok(json!({"nova_object.name": "InstanceGroup", "nova_object.namespace": "nova",
                        "nova_object.version": "1.11", "nova_object.data": data})),
                    None => Err(nova_error(
                        "InstanceGroupNotFound",
                        format!("Instance group {key} could not be found."),
                        404,
                    )),
                }
            }
            ("InstanceList", "get_uuids_by_host") => {
                let host = arg(0);
                let uuids: Vec<Value> = db
                    .instances
                    .iter()
                    .filter(|(_, d)| d.get("host").and_then(Value::as_str) == Some(host.as_str()))
                    .map(|(u, _)| json!(u))
                    .collect();
                Ok(Value::Array(uuids))
            }
            ("MigrationList", "get_in_progress_by_host_and_node") => {
                // Nova's query: leaving or coming to the host, not ended.
                const ENDED: [&str; 8] =
                    ["accepted", "confirmed", "reverted", "error", "failed", "completed", "cancelled", "done"];
                let host = arg(0);
                Ok(migration_list(db.migrations.values().filter(|m| {
                    let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default();
                    [field("source_compute"), field("dest_compute")].contains(&host.as_str())
                        && !ENDED.contains(&field("status"))
                })))
            }
            ("Service", "get_by_compute_host") => match db.services.get(&arg(0)) {
                Some(data) => Ok(json!({"nova_object.name": "Service", "nova_object.namespace": "nova",
                    "nova_object.version": "1.22", "nova_object.data": data})),
                None => {
                    Err(nova_error("ComputeHostNotFound", format!("Compute host {} could not be found.", arg(0)), 404))
                }
            },
            ("InstanceInfoCache", "get_by_instance_uuid") => {
                match db.instances.get(&arg(0)).and_then(|d| d.get("info_cache")).cloned() {
                    Some(cache) => Ok(cache),
                    None => Err(nova_error("InstanceInfoCacheNotFound", "no info cache".into(), 404)),
                }
            }
            _ => Err(nova_error("NotImplementedError", format!("fake Nova: {name}.{method}"), 500)),
        })
    }
}

impl ConductorTransport for FakeNova {
    fn cast<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(async move {
            // `fail("cast.<method>")` makes that cast fail (the broker lost).
            let what = format!("cast.{method}");
            if self.with(|db| db.failing.get(&what) == Some(&0)) {
                return Err(CallError::Timeout { method: what, timeout: Duration::from_secs(60) });
            }
            let host = target.server.clone().unwrap_or_default();
            self.with(|db| db.casts.push(Cast { host, method: method.to_string(), args }));
            Ok(())
        })
    }

    fn call<'a>(
        &'a self,
        _ctx: &'a RequestContext,
        _target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            if method == "migrate_server" {
                self.with(|db| db.casts.push(Cast { host: "conductor".into(), method: method.into(), args }));
                return Ok(Value::Null);
            }
            let what = match method {
                "object_action" => format!(
                    "{}.{}",
                    args["objinst"]["nova_object.name"].as_str().unwrap_or_default(),
                    args["objmethod"].as_str().unwrap_or_default()
                ),
                _ => format!(
                    "{}.{}",
                    args["objname"].as_str().unwrap_or_default(),
                    args["objmethod"].as_str().unwrap_or_default()
                ),
            };
            let fails = self.with(|db| match db.failing.get_mut(&what) {
                Some(0) => true,
                Some(n) => {
                    *n -= 1;
                    false
                }
                None => false,
            });
            if fails {
                return Err(CallError::Timeout { method: what, timeout: timeout.unwrap_or(Duration::from_secs(60)) });
            }
            match method {
                "object_action" => self.object_action(&args),
                "object_class_action_versions" => self.class_action(&args),
                other => Err(nova_error("NotImplementedError", format!("fake Nova: {other}"), 500)),
            }
        })
    }
}
