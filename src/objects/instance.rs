//! `Instance` (2.7 in Zed, 2.8 since 2023.2) and the `Flavor` inside it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::states::{PowerState, TaskState, VmState};
use super::{NovaObject, ObjectError};

/// An instance as received from Nova, with typed accessors for the fields a
/// compute host reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The object as received; written back with its changes tracked.
    pub obj: NovaObject,
}

/// The flavor embedded in an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Flavor {
    /// The flavor object as embedded in the instance.
    pub obj: NovaObject,
}

impl Flavor {
    /// RAM in MiB.
    pub fn memory_mb(&self) -> Option<i64> {
        self.obj.get_i64("memory_mb")
    }

    /// vCPU count.
    pub fn vcpus(&self) -> Option<i64> {
        self.obj.get_i64("vcpus")
    }

    /// Root disk in GiB.
    pub fn root_gb(&self) -> Option<i64> {
        self.obj.get_i64("root_gb")
    }

    /// The flavor's database id (`instance_type_id`).
    pub fn id(&self) -> Option<i64> {
        self.obj.get_i64("id")
    }

    /// Flavor name.
    pub fn name(&self) -> Option<&str> {
        self.obj.get_str("name")
    }

    /// Public flavor id.
    pub fn flavorid(&self) -> Option<&str> {
        self.obj.get_str("flavorid")
    }

    /// Extra specs (string values only).
    pub fn extra_specs(&self) -> BTreeMap<String, String> {
        string_map(self.obj.get("extra_specs"))
    }
}

/// `8-4-4-4-12` lowercase or uppercase hex digits, as `uuid.uuid4()` prints.
pub fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

impl Instance {
    /// Reads an `Instance` primitive.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        let obj = NovaObject::expect(v, "Instance")?;
        // The uuid names the container, the netns entry and URLs: only the
        // canonical form Nova generates is accepted.
        if !obj.get_str("uuid").is_some_and(is_canonical_uuid) {
            return Err(ObjectError::Field { object: "Instance", field: "uuid" });
        }
        Ok(Instance { obj })
    }

    /// The primitive to send back.
    pub fn to_primitive(&self) -> Value {
        self.obj.to_primitive()
    }

    /// The instance uuid (always present: checked on arrival).
    pub fn uuid(&self) -> &str {
        self.obj.get_str("uuid").unwrap_or_default()
    }

    /// `vm_state` (None when absent or one this service does not know:
    /// [`Instance::vm_state_name`] has the string).
    pub fn vm_state(&self) -> Option<VmState> {
        self.vm_state_name().and_then(VmState::parse)
    }

    /// `vm_state` as Nova sent it.
    pub fn vm_state_name(&self) -> Option<&str> {
        self.obj.get_str("vm_state")
    }

    /// `task_state` (None when idle, or for a task this service does not
    /// know: [`Instance::has_task_state`] tells those apart).
    pub fn task_state(&self) -> Option<TaskState> {
        self.task_state_name().and_then(TaskState::parse)
    }

    /// `task_state` as Nova sent it.
    pub fn task_state_name(&self) -> Option<&str> {
        self.obj.get_str("task_state")
    }

    /// Whether a task (known or not) is in progress on the instance.
    pub fn has_task_state(&self) -> bool {
        self.task_state_name().is_some()
    }

    /// `power_state`.
    pub fn power_state(&self) -> PowerState {
        PowerState::from_code(self.obj.get_i64("power_state").unwrap_or(0))
    }

    /// Sets `vm_state`.
    pub fn set_vm_state(&mut self, state: VmState) {
        self.obj.set("vm_state", state.as_str());
    }

    /// Sets `task_state` (None: idle).
    pub fn set_task_state(&mut self, state: Option<TaskState>) {
        self.obj.set("task_state", state.map(TaskState::as_str));
    }

    /// Sets `power_state`.
    pub fn set_power_state(&mut self, state: PowerState) {
        self.obj.set("power_state", state.code());
    }

    /// The host Nova believes runs the instance.
    pub fn host(&self) -> Option<&str> {
        self.obj.get_str("host")
    }

    /// Glance image id.
    pub fn image_ref(&self) -> Option<&str> {
        self.obj.get_str("image_ref").filter(|s| !s.is_empty())
    }

    /// Owning project.
    pub fn project_id(&self) -> Option<&str> {
        self.obj.get_str("project_id")
    }

    /// Owning user.
    pub fn user_id(&self) -> Option<&str> {
        self.obj.get_str("user_id")
    }

    /// Guest hostname chosen by Nova (already sanitised by the API).
    pub fn hostname(&self) -> Option<&str> {
        self.obj.get_str("hostname")
    }

    /// The public key of the server's key pair (`key_data`), tenant text.
    pub fn key_data(&self) -> Option<&str> {
        self.obj.get_str("key_data")
    }

    /// Whether the server asked for a config drive (`config_drive`, a
    /// string field: Nova stores "True" or an empty string; any non-empty
    /// string or true counts, as Python's truth in `configdrive.required_by`).
    pub fn config_drive(&self) -> bool {
        match self.obj.get("config_drive") {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Bool(b)) => *b,
            _ => false,
        }
    }

    /// User-facing name.
    pub fn display_name(&self) -> Option<&str> {
        self.obj.get_str("display_name")
    }

    /// Availability zone (used for the ports' device_owner).
    pub fn availability_zone(&self) -> Option<&str> {
        self.obj.get_str("availability_zone")
    }

    /// The embedded flavor, if loaded.
    pub fn flavor(&self) -> Option<Flavor> {
        self.obj.get("flavor").and_then(|v| NovaObject::expect(v, "Flavor").ok()).map(|obj| Flavor { obj })
    }

    /// One of the instance's flavors: `flavor`, `old_flavor` (kept during a
    /// resize for a revert) or `new_flavor` (stashed by prep_resize).
    pub fn flavor_named(&self, field: &str) -> Option<Flavor> {
        self.obj.get(field).and_then(|v| NovaObject::expect(v, "Flavor").ok()).map(|obj| Flavor { obj })
    }

    /// Makes `flavor` the instance's flavor with the columns that mirror it,
    /// as Nova's `_set_instance_info` does when a resize finishes or reverts.
    pub fn apply_flavor(&mut self, flavor: &Flavor) {
        for (column, field) in [
            ("memory_mb", "memory_mb"),
            ("vcpus", "vcpus"),
            ("root_gb", "root_gb"),
            ("ephemeral_gb", "ephemeral_gb"),
            ("instance_type_id", "id"),
        ] {
            if let Some(v) = flavor.obj.get_i64(field) {
                self.obj.set(column, v);
            }
        }
        self.obj.set("flavor", flavor.obj.to_primitive());
    }

    /// RAM in MiB (flavor first, then the instance column).
    pub fn memory_mb(&self) -> i64 {
        self.flavor().and_then(|f| f.memory_mb()).or_else(|| self.obj.get_i64("memory_mb")).unwrap_or(0)
    }

    /// vCPUs (flavor first, then the instance column).
    pub fn vcpus(&self) -> i64 {
        self.flavor().and_then(|f| f.vcpus()).or_else(|| self.obj.get_i64("vcpus")).unwrap_or(1)
    }

    /// Root disk GiB.
    pub fn root_gb(&self) -> i64 {
        self.flavor().and_then(|f| f.root_gb()).or_else(|| self.obj.get_i64("root_gb")).unwrap_or(0)
    }

    /// User metadata (`server create --property`).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        string_map(self.obj.get("metadata"))
    }

    /// System metadata (image properties copied at boot, `old_vm_state`, ...).
    pub fn system_metadata(&self) -> BTreeMap<String, String> {
        string_map(self.obj.get("system_metadata"))
    }

    /// Sets (or with `None` removes) one system metadata key; Nova replaces
    /// the whole dict on save, so the full map is sent.
    pub fn set_system_metadata(&mut self, key: &str, value: Option<&str>) {
        let mut m: Map<String, Value> =
            self.obj.get("system_metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        match value {
            Some(v) => m.insert(key.to_string(), json!(v)),
            None => m.remove(key),
        };
        self.obj.set("system_metadata", Value::Object(m));
    }

    /// The network_info JSON text of the info cache ("[]" when none).
    pub fn network_info_json(&self) -> String {
        self.obj
            .get("info_cache")
            .and_then(|v| NovaObject::from_primitive(v).ok())
            .and_then(|c| c.get_str("network_info").map(str::to_string))
            .unwrap_or_else(|| "[]".into())
    }

    /// Sets a field and records the change.
    pub fn set(&mut self, field: &str, value: impl Into<Value>) {
        self.obj.set(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = include_str!("../../tests/fixtures/build_and_run_instance.newest.cast.body.json");

    fn build_args() -> Value {
        let outer: Value = serde_json::from_str(BUILD).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        inner["args"].clone()
    }

    #[test]
    fn reads_the_instance_of_a_real_build() {
        let i = Instance::from_primitive(&build_args()["instance"]).unwrap();
        assert_eq!(i.uuid().len(), 36);
        assert_eq!(i.vm_state(), Some(VmState::Building));
        assert_eq!(i.task_state(), Some(TaskState::Scheduling));
        assert_eq!(i.memory_mb(), 512);
        assert_eq!(i.vcpus(), 1);
        assert!(i.image_ref().is_some());
        assert_eq!(i.flavor().unwrap().name(), Some("m1.tiny"));
        assert_eq!(i.network_info_json(), "[]");
        assert_eq!(i.system_metadata()["image_container_format"], "docker");
    }

    #[test]
    fn system_metadata_updates_send_the_whole_dict() {
        let mut i = Instance::from_primitive(&build_args()["instance"]).unwrap();
        let before = i.system_metadata().len();
        i.set_system_metadata("old_vm_state", Some("active"));
        assert_eq!(i.system_metadata().len(), before + 1);
        assert!(i.obj.changes().contains("system_metadata"));
    }

    #[test]
    fn only_canonical_uuids_name_an_instance() {
        let mut args = build_args();
        for bad in ["../../images/x", "6f1b2c1e00004000800000000000000001", "6f1b2c1e-0000-4000-8000-00000000000g", ""]
        {
            args["instance"]["nova_object.data"]["uuid"] = json!(bad);
            assert!(Instance::from_primitive(&args["instance"]).is_err(), "{bad:?}");
        }
        assert!(is_canonical_uuid("6F1B2C1E-0000-4000-8000-000000000001"));
    }
}
