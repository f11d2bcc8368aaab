//! Nova versioned objects as they travel over RPC.
//!
//! An object is `{"nova_object.name", "nova_object.namespace": "nova",
//! "nova_object.version", "nova_object.data", "nova_object.changes"}`. The data
//! holds only the fields that are set. We keep objects as they came (unknown
//! fields and versions included) so nothing Nova sent is lost when we send it
//! back, track which fields we change so a `save` writes exactly those, and
//! read the fields we need through typed accessors.

pub mod compute_node;
pub mod instance;
pub mod migration;
pub mod service;
pub mod states;
pub mod time;

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub use compute_node::ComputeNode;
pub use instance::{Flavor, Instance};
pub use migration::Migration;
pub use service::Service;
pub use states::{PowerState, TaskState, VmState};

const NAME: &str = "nova_object.name";
const NAMESPACE: &str = "nova_object.namespace";
const VERSION: &str = "nova_object.version";
const DATA: &str = "nova_object.data";
const CHANGES: &str = "nova_object.changes";

/// Why a value is not a usable object.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ObjectError {
    /// The value lacks the `nova_object.*` keys.
    #[error("not a Nova object primitive")]
    NotAnObject,
    /// A namespace other than `nova`: not an object this service knows.
    #[error("object namespace {0:?} is not \"nova\"")]
    Namespace(String),
    /// An object of another class than the one expected.
    #[error("expected a {expected} object, got {got}")]
    WrongType {
        /// The object name the caller needs.
        expected: &'static str,
        /// The name that came.
        got: String,
    },
    /// A field the host needs is absent or of the wrong type.
    #[error("{object}.{field} is missing or has the wrong type")]
    Field {
        /// The object's name.
        object: &'static str,
        /// The field's name.
        field: &'static str,
    },
    /// An object version of another major: its fields may mean something else,
    /// so it is refused rather than guessed at.
    #[error("{object} version {version:?} is not understood (this service reads {object} {major}.x)")]
    IncompatibleVersion {
        /// The object's name.
        object: &'static str,
        /// The version that came.
        version: String,
        /// The major version this service reads.
        major: u32,
    },
}

/// The major version of each object type this service reads. Minor versions
/// only add fields, which a schemaless reader carries along untouched; a new
/// major version may change meanings, so it is refused with a clear error
/// rather than guessed at (oslo.versionedobjects raises
/// `IncompatibleObjectVersion` for the same reason).
const KNOWN_MAJORS: &[(&str, u32)] =
    &[("Instance", 2), ("InstanceList", 2), ("Flavor", 1), ("ComputeNode", 1), ("Service", 1), ("Migration", 1)];

/// A Nova object primitive with change tracking.
#[derive(Debug, Clone, PartialEq)]
pub struct NovaObject {
    name: String,
    version: String,
    data: Map<String, Value>,
    changes: BTreeSet<String>,
}

/// Removes `nova_object.changes` from nested primitives: incoming objects
/// often carry stale changes, which must not be sent back as ours.
fn strip_nested_changes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove(CHANGES);
            for (_, child) in m.iter_mut() {
                strip_nested_changes(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nested_changes),
        _ => {}
    }
}

impl NovaObject {
    /// A new, empty object of `name` at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        NovaObject { name: name.into(), version: version.into(), data: Map::new(), changes: BTreeSet::new() }
    }

    /// Reads a primitive, dropping the changes it claims.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        let m = v.as_object().ok_or(ObjectError::NotAnObject)?;
        let name = m.get(NAME).and_then(Value::as_str).ok_or(ObjectError::NotAnObject)?;
        let version = m.get(VERSION).and_then(Value::as_str).ok_or(ObjectError::NotAnObject)?;
        match m.get(NAMESPACE).and_then(Value::as_str) {
            Some("nova") => {}
            other => return Err(ObjectError::Namespace(other.unwrap_or("").to_string())),
        }
        let mut data = match m.get(DATA) {
            Some(Value::Object(d)) => d.clone(),
            _ => return Err(ObjectError::NotAnObject),
        };
        for (_, v) in data.iter_mut() {
            strip_nested_changes(v);
        }
        Ok(NovaObject { name: name.into(), version: version.into(), data, changes: BTreeSet::new() })
    }

    /// Reads a primitive that must be of object type `expected`.
    pub fn expect(v: &Value, expected: &'static str) -> Result<Self, ObjectError> {
        let o = Self::from_primitive(v)?;
        if o.name != expected {
            return Err(ObjectError::WrongType { expected, got: o.name });
        }
        if let Some((_, major)) = KNOWN_MAJORS.iter().find(|(name, _)| *name == expected) {
            let parsed =
                o.version.split_once('.').and_then(|(ma, mi)| Some((ma.parse::<u32>().ok()?, mi.parse::<u32>().ok()?)));
            if parsed.map(|(ma, _)| ma) != Some(*major) {
                return Err(ObjectError::IncompatibleVersion { object: expected, version: o.version, major: *major });
            }
        }
        Ok(o)
    }

    /// The primitive to send: all set fields, and exactly our changes.
    pub fn to_primitive(&self) -> Value {
        let mut m = Map::new();
        m.insert(NAME.into(), json!(self.name));
        m.insert(NAMESPACE.into(), json!("nova"));
        m.insert(VERSION.into(), json!(self.version));
        m.insert(DATA.into(), Value::Object(self.data.clone()));
        if !self.changes.is_empty() {
            m.insert(CHANGES.into(), json!(self.changes));
        }
        Value::Object(m)
    }

    /// Object type name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Object version as received or created.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A field's value, if set.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.data.get(field)
    }

    /// A string field (None when unset or null).
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.data.get(field).and_then(Value::as_str)
    }

    /// An integer field (None when unset, null or not integral).
    pub fn get_i64(&self, field: &str) -> Option<i64> {
        self.data.get(field).and_then(Value::as_i64)
    }

    /// A boolean field.
    pub fn get_bool(&self, field: &str) -> Option<bool> {
        self.data.get(field).and_then(Value::as_bool)
    }

    /// Whether a field is set (even to null).
    pub fn is_set(&self, field: &str) -> bool {
        self.data.contains_key(field)
    }

    /// Sets a field and records the change.
    pub fn set(&mut self, field: &str, value: impl Into<Value>) {
        self.data.insert(field.to_string(), value.into());
        self.changes.insert(field.to_string());
    }

    /// Sets a field without recording a change (values learned from Nova).
    pub fn set_clean(&mut self, field: &str, value: impl Into<Value>) {
        self.data.insert(field.to_string(), value.into());
    }

    /// The fields changed since the last save.
    pub fn changes(&self) -> &BTreeSet<String> {
        &self.changes
    }

    /// Forgets recorded changes (after a successful save).
    pub fn reset_changes(&mut self) {
        self.changes.clear();
    }

    /// Applies the `updates` of an `object_action` reply (fields the conductor
    /// refreshed) and clears our changes: the object now matches the database.
    pub fn apply_updates(&mut self, updates: &Value) {
        if let Some(m) = updates.as_object() {
            for (k, v) in m {
                if k == "obj_what_changed" {
                    continue;
                }
                let mut v = v.clone();
                strip_nested_changes(&mut v);
                self.data.insert(k.clone(), v);
            }
        }
        self.changes.clear();
    }

    /// The whole data map (read only).
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }
}

/// Object versions (`object_versions` manifests) sent with class actions.
pub type Manifest = Vec<(&'static str, &'static str)>;

/// Renders a manifest as the JSON object the conductor expects.
pub fn manifest_json(m: &Manifest) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE_CALL: &str = include_str!("../../tests/fixtures/object_action-Instance.save-active.call.body.json");

    fn inner(body: &str) -> Value {
        let outer: Value = serde_json::from_str(body).unwrap();
        serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn round_trips_a_real_instance_and_drops_stale_changes() {
        let msg = inner(SAVE_CALL);
        let prim = &msg["args"]["objinst"];
        let o = NovaObject::expect(prim, "Instance").unwrap();
        assert_eq!(o.version(), "2.8");
        assert!(o.changes().is_empty());
        let back = o.to_primitive();
        assert!(back.get(CHANGES).is_none());
        // nested objects keep their data but lose their stale changes
        assert!(back[DATA]["ec2_ids"].get(CHANGES).is_none());
        assert_eq!(back[DATA]["ec2_ids"][DATA], prim[DATA]["ec2_ids"][DATA]);
        assert_eq!(back[DATA].as_object().unwrap().len(), prim[DATA].as_object().unwrap().len());
    }

    #[test]
    fn changes_are_tracked_and_cleared_by_updates() {
        let mut o = NovaObject::new("Service", "1.22");
        o.set("report_count", 3);
        assert_eq!(o.to_primitive()[CHANGES], json!(["report_count"]));
        o.apply_updates(&json!({"updated_at": "2026-01-01T00:00:00Z", "obj_what_changed": []}));
        assert!(o.changes().is_empty());
        assert_eq!(o.get_str("updated_at"), Some("2026-01-01T00:00:00Z"));
        assert!(o.get("obj_what_changed").is_none());
    }

    #[test]
    fn rejects_foreign_namespaces_and_wrong_types() {
        let v = json!({NAME: "X", NAMESPACE: "other", VERSION: "1.0", DATA: {}});
        assert_eq!(NovaObject::from_primitive(&v), Err(ObjectError::Namespace("other".into())));
        let v = json!({NAME: "Flavor", NAMESPACE: "nova", VERSION: "1.2", DATA: {}});
        assert!(matches!(NovaObject::expect(&v, "Instance"), Err(ObjectError::WrongType { .. })));
        assert_eq!(NovaObject::from_primitive(&json!("x")), Err(ObjectError::NotAnObject));
    }

    #[test]
    fn newer_minor_versions_are_carried_and_new_majors_refused() {
        let prim = |v: &str| json!({NAME: "Instance", NAMESPACE: "nova", VERSION: v, DATA: {"uuid": "6f1b2c1e-0000-4000-8000-000000000001"}});
        let o = NovaObject::expect(&prim("2.99"), "Instance").unwrap();
        assert_eq!(o.to_primitive()[VERSION], "2.99", "sent back at the version received");
        for bad in ["3.0", "1.9", "2", "two.0", ""] {
            assert!(
                matches!(NovaObject::expect(&prim(bad), "Instance"), Err(ObjectError::IncompatibleVersion { .. })),
                "{bad}"
            );
        }
    }
}
