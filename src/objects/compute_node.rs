//! `ComputeNode` 1.19: the host's resources as Nova's scheduler sees them.

use serde_json::{Value, json};

use super::{NovaObject, ObjectError};

/// The object version of ComputeNode in every supported release.
pub const COMPUTE_NODE_VERSION: &str = "1.19";

/// A ComputeNode record.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeNode {
    /// The object as exchanged with the conductor; the accessors read it.
    pub obj: NovaObject,
}

/// Resource figures reported for the node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResources {
    /// CPUs on the host, before overcommit.
    pub vcpus: i64,
    /// Memory on the host, in MiB.
    pub memory_mb: i64,
    /// Disk for instances, in GiB.
    pub local_gb: i64,
    /// vCPUs taken by the instances on the host.
    pub vcpus_used: i64,
    /// Memory in use, in MiB: reserved for the host plus the instances' flavors.
    pub memory_mb_used: i64,
    /// Disk in use, in GiB: reserved for the host plus the instances' flavors.
    pub local_gb_used: i64,
    /// Instances on the host that hold resources.
    pub running_vms: i64,
    /// Free disk on the host, in GiB (Nova shows it to admins).
    pub disk_available_least: i64,
    /// The Docker engine's version as an integer, shown as the hypervisor version.
    pub hypervisor_version: i64,
    /// The host CPU description (JSON), shown by `hypervisor show`.
    pub cpu_info: String,
    /// The host's CPU architecture.
    pub arch: String,
    /// The address Nova shows for the hypervisor (`my_ip`).
    pub host_ip: String,
    /// Overcommit ratio for vCPUs, as Placement applies it.
    pub cpu_allocation_ratio: f64,
    /// Overcommit ratio for memory.
    pub ram_allocation_ratio: f64,
    /// Overcommit ratio for disk.
    pub disk_allocation_ratio: f64,
}

impl ComputeNode {
    /// A new node to create (uuid and service_id set, as Nova 2023.2+ does).
    pub fn new(uuid: &str, host: &str, service_id: Option<i64>, r: &NodeResources) -> Self {
        let mut obj = NovaObject::new("ComputeNode", COMPUTE_NODE_VERSION);
        obj.set("uuid", uuid);
        if let Some(id) = service_id {
            obj.set("service_id", id);
        }
        obj.set("host", host);
        obj.set("hypervisor_hostname", host);
        obj.set("numa_topology", Value::Null);
        obj.set("metrics", "[]");
        let mut node = ComputeNode { obj };
        node.update_resources(r);
        node
    }

    /// Reads a ComputeNode primitive.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        Ok(ComputeNode { obj: NovaObject::expect(v, "ComputeNode")? })
    }

    /// Database id (Instance.compute_id).
    pub fn id(&self) -> Option<i64> {
        self.obj.get_i64("id")
    }

    /// The node uuid (= placement resource provider uuid).
    pub fn uuid(&self) -> Option<&str> {
        self.obj.get_str("uuid")
    }

    /// Sets the resource fields that differ from what is recorded; returns
    /// whether anything changed (so a save is needed).
    pub fn update_resources(&mut self, r: &NodeResources) -> bool {
        let free_ram = r.memory_mb - r.memory_mb_used;
        let free_disk = r.local_gb - r.local_gb_used;
        let fields: Vec<(&str, Value)> = vec![
            ("vcpus", json!(r.vcpus)),
            ("memory_mb", json!(r.memory_mb)),
            ("local_gb", json!(r.local_gb)),
            ("vcpus_used", json!(r.vcpus_used)),
            ("memory_mb_used", json!(r.memory_mb_used)),
            ("local_gb_used", json!(r.local_gb_used)),
            ("free_ram_mb", json!(free_ram)),
            ("free_disk_gb", json!(free_disk)),
            ("running_vms", json!(r.running_vms)),
            ("current_workload", json!(0)),
            ("disk_available_least", json!(r.disk_available_least)),
            ("hypervisor_version", json!(r.hypervisor_version)),
            ("cpu_info", json!(r.cpu_info)),
            ("host_ip", json!(r.host_ip)),
            ("cpu_allocation_ratio", json!(r.cpu_allocation_ratio)),
            ("ram_allocation_ratio", json!(r.ram_allocation_ratio)),
            ("disk_allocation_ratio", json!(r.disk_allocation_ratio)),
            ("stats", json!({"num_instances": r.running_vms.to_string(), "failed_builds": "0"})),
        ];
        let mut changed = false;
        for (k, v) in fields {
            if self.obj.get(k) != Some(&v) {
                self.obj.set(k, v);
                changed = true;
            }
        }
        // What this driver is, as Nova's resource tracker copies it from the
        // driver each time: a node another driver recorded for this host
        // (a libvirt host switched over, a FakeDriver run under the name)
        // becomes docker's, or the scheduler's ImagePropertiesFilter keeps
        // refusing docker images on it.
        if self.obj.get_str("hypervisor_type") != Some("docker") {
            self.obj.set("hypervisor_type", "docker");
            changed = true;
        }
        let specs = self.obj.get("supported_hv_specs").and_then(Value::as_array).cloned().unwrap_or_default();
        let ours = |spec: &Value| {
            let d = &spec["nova_object.data"];
            (d["arch"].as_str(), d["hv_type"].as_str(), d["vm_mode"].as_str())
                == (Some(r.arch.as_str()), Some("docker"), Some("exe"))
        };
        if specs.len() != 1 || !specs.iter().all(ours) {
            self.obj.set(
                "supported_hv_specs",
                json!([{
                    "nova_object.name": "HVSpec", "nova_object.namespace": "nova", "nova_object.version": "1.2",
                    "nova_object.data": {"arch": r.arch, "hv_type": "docker", "vm_mode": "exe"},
                }]),
            );
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> NodeResources {
        NodeResources {
            vcpus: 2,
            memory_mb: 1024,
            local_gb: 10,
            vcpus_used: 0,
            memory_mb_used: 0,
            local_gb_used: 0,
            running_vms: 0,
            disk_available_least: 10,
            hypervisor_version: 20010024,
            cpu_info: "{}".into(),
            arch: "x86_64".into(),
            host_ip: "127.0.0.1".into(),
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            disk_allocation_ratio: 1.0,
        }
    }

    /// A node another driver recorded under this host's name is adopted as
    /// docker's: otherwise the scheduler's ImagePropertiesFilter refuses
    /// every move of a docker image onto it (seen after a FakeDriver ran
    /// under the name).
    #[test]
    fn an_adopted_node_becomes_dockers() {
        let fake = json!({"nova_object.name": "ComputeNode", "nova_object.namespace": "nova",
            "nova_object.version": "1.19", "nova_object.data": {"uuid": "n1", "host": "h",
            "hypervisor_type": "fake", "supported_hv_specs": [{"nova_object.name": "HVSpec",
            "nova_object.namespace": "nova", "nova_object.version": "1.2",
            "nova_object.data": {"arch": "x86_64", "hv_type": "fake", "vm_mode": "hvm"}}]}});
        let mut node = ComputeNode::from_primitive(&fake).unwrap();
        assert!(node.update_resources(&resources()));
        assert_eq!(node.obj.get_str("hypervisor_type"), Some("docker"));
        let spec = &node.obj.get("supported_hv_specs").unwrap()[0]["nova_object.data"];
        assert_eq!((spec["hv_type"].as_str(), spec["vm_mode"].as_str()), (Some("docker"), Some("exe")));
        assert!(!node.update_resources(&resources()), "nothing more to save");
        let new = ComputeNode::new("n2", "h", None, &resources());
        assert_eq!(new.obj.get_str("hypervisor_type"), Some("docker"));
    }
}
