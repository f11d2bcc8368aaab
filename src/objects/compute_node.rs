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
        obj.set("hypervisor_type", "docker");
        obj.set("numa_topology", Value::Null);
        obj.set("metrics", "[]");
        obj.set(
            "supported_hv_specs",
            json!([{
                "nova_object.name": "HVSpec", "nova_object.namespace": "nova", "nova_object.version": "1.2",
                "nova_object.data": {"arch": r.arch, "hv_type": "docker", "vm_mode": "exe"},
            }]),
        );
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
        changed
    }
}
