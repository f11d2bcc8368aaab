//! Becoming a compute host Nova schedules onto: the Service record and its
//! heartbeat, the ComputeNode with the host's real resources, and the
//! Placement provider with inventory and traits.
//!
//! Python nova-compute does the same through nova-conductor at start-up
//! (`Service.start`, `ResourceTracker._init_compute_node`,
//! `_update_to_placement`) and refreshes it periodically.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::compute::states::VmState;
use crate::conductor::{Conductor, ConductorError};
use crate::config::Settings;
use crate::objects::compute_node::NodeResources;
use crate::objects::{ComputeNode, Instance, Service};
use crate::placement::{Inventory, Placement, PlacementError, TraitPolicy};
use crate::release::Release;
use crate::rpc::RequestContext;
use crate::virt::{Driver, HostResources, VirtError};

/// Capability traits this host truly has.
pub const CAPABILITY_TRAITS: &[&str] = &["COMPUTE_IMAGE_TYPE_RAW", "COMPUTE_NET_ATTACH_INTERFACE"];

/// Capability traits Nova drivers may report that this host does not have:
/// removed if someone set them.
pub const ABSENT_CAPABILITY_TRAITS: &[&str] = &[
    "COMPUTE_IMAGE_TYPE_AKI",
    "COMPUTE_IMAGE_TYPE_AMI",
    "COMPUTE_IMAGE_TYPE_ARI",
    "COMPUTE_IMAGE_TYPE_ISO",
    "COMPUTE_IMAGE_TYPE_QCOW2",
    "COMPUTE_IMAGE_TYPE_VDI",
    "COMPUTE_IMAGE_TYPE_VHD",
    "COMPUTE_IMAGE_TYPE_VHDX",
    "COMPUTE_IMAGE_TYPE_VMDK",
    "COMPUTE_IMAGE_TYPE_PLOOP",
    "COMPUTE_DEVICE_TAGGING",
    "COMPUTE_NET_ATTACH_INTERFACE_WITH_TAG",
    "COMPUTE_VOLUME_ATTACH_WITH_TAG",
    "COMPUTE_VOLUME_EXTEND",
    "COMPUTE_VOLUME_MULTI_ATTACH",
    "COMPUTE_TRUSTED_CERTS",
    "COMPUTE_ACCELERATORS",
    "COMPUTE_RESCUE_BFV",
    "COMPUTE_SECURITY_UEFI_SECURE_BOOT",
];

/// Registration failures.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A conductor call (service or node record) failed.
    #[error(transparent)]
    Conductor(#[from] ConductorError),
    /// Placement refused or did not answer the provider update.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The driver could not report the host's resources.
    #[error(transparent)]
    Virt(#[from] VirtError),
    /// The node's persistent uuid file cannot be read or written; without it
    /// the node would come back as a new one after a restart.
    #[error("node identity file {path}: {detail}")]
    Identity {
        /// The file holding the node's persistent uuid.
        path: String,
        /// What was wrong with it.
        detail: String,
    },
}

/// The registered identity of this host, shared by the manager.
pub struct HostRecords {
    /// This host's Service record; the report loop updates it.
    pub service: Mutex<Service>,
    /// This host's ComputeNode record, updated with resource figures.
    pub node: Mutex<ComputeNode>,
    /// The node's persistent uuid, also its resource provider's uuid in Placement.
    pub node_uuid: String,
    /// The ComputeNode's database id (0 until known), for `Instance.compute_id`.
    pub node_id: std::sync::atomic::AtomicI64,
    /// Whether the service is disabled, as last seen.
    pub disabled: std::sync::atomic::AtomicBool,
}

/// Reads the node uuid as Nova does (`read_local_node_uuid`): from each of
/// `paths` that exists (its first 40 bytes, trimmed, must be a uuid), all
/// of them agreeing; returns it with the file it was first found in.
pub async fn read_node_identities(paths: &[PathBuf]) -> Result<Option<(String, PathBuf)>, HostError> {
    let mut found: Option<(String, PathBuf)> = None;
    for path in paths {
        let bad = |detail: String| HostError::Identity { path: path.display().to_string(), detail };
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(bad(e.to_string())),
        };
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).trim().to_string();
        let uuid =
            uuid::Uuid::parse_str(&head).map_err(|_| bad(format!("{head:?} is not a uuid")))?.hyphenated().to_string();
        match &found {
            Some((first, first_path)) if *first != uuid => {
                return Err(bad(format!(
                    "holds {uuid}, but {} holds {first}: the node's identity files must agree",
                    first_path.display()
                )));
            }
            Some(_) => {}
            None => found = Some((uuid, path.clone())),
        }
    }
    Ok(found)
}

/// Persists the node uuid atomically.
pub async fn write_node_identity(path: &Path, uuid: &str) -> Result<(), HostError> {
    let err = |e: std::io::Error| HostError::Identity { path: path.display().to_string(), detail: e.to_string() };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, format!("{uuid}\n")).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
}

/// What this host uses, from Nova's view of its instances.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    /// vCPUs of the flavors placed here.
    pub vcpus: i64,
    /// Memory of the flavors placed here, in MiB.
    pub memory_mb: i64,
    /// Root plus ephemeral disk of the flavors placed here, in GiB.
    pub disk_gb: i64,
    /// Instances that hold resources (deleted and offloaded ones do not).
    pub instances: i64,
}

impl Usage {
    /// Sums the instances placed on this host that hold resources. Sizes
    /// come from the conductor's instance list: a negative one counts as 0
    /// and sums saturate, so a bad record cannot wrap the host's usage.
    pub fn of(instances: &[Instance]) -> Self {
        let mut u = Usage::default();
        for i in instances {
            if matches!(i.vm_state(), Some(VmState::Deleted | VmState::ShelvedOffloaded)) {
                continue;
            }
            let disk = i.root_gb().max(0).saturating_add(i.obj.get_i64("ephemeral_gb").unwrap_or(0).max(0));
            u.vcpus = u.vcpus.saturating_add(i.vcpus().max(0));
            u.memory_mb = u.memory_mb.saturating_add(i.memory_mb().max(0));
            u.disk_gb = u.disk_gb.saturating_add(disk);
            u.instances = u.instances.saturating_add(1);
        }
        u
    }
}

/// Registers and keeps the host's records current.
pub struct HostRegistrar<D: Driver> {
    /// The host's configuration (host name, ratios, reserved resources).
    pub settings: Arc<Settings>,
    /// Reads and writes the Service and ComputeNode records.
    pub conductor: Conductor,
    /// Placement, to keep the resource provider current; None when
    /// Placement is not configured.
    pub placement: Option<Placement>,
    /// The driver, which reports the host's resources.
    pub driver: Arc<D>,
}

impl<D: Driver> HostRegistrar<D> {
    fn release(&self) -> &'static Release {
        self.conductor.release()
    }

    fn ratios(&self, existing: Option<&serde_json::Value>) -> (f64, f64, f64) {
        let s = &self.settings;
        let from_placement = |rc: &str| existing.and_then(|e| e[rc]["allocation_ratio"].as_f64());
        let cpu = s
            .cpu_allocation_ratio
            .or_else(|| from_placement("VCPU"))
            .or(s.initial_cpu_allocation_ratio)
            .unwrap_or(self.release().initial_cpu_ratio);
        let ram = s
            .ram_allocation_ratio
            .or_else(|| from_placement("MEMORY_MB"))
            .or(s.initial_ram_allocation_ratio)
            .unwrap_or(self.release().initial_ram_ratio);
        let disk =
            s.disk_allocation_ratio.or_else(|| from_placement("DISK_GB")).unwrap_or(s.initial_disk_allocation_ratio);
        (cpu, ram, disk)
    }

    fn node_resources(&self, host: &HostResources, usage: &Usage, ratios: (f64, f64, f64)) -> NodeResources {
        let s = &self.settings;
        let reserved_disk_gb = s.reserved_host_disk_mb.div_ceil(1024) as i64;
        NodeResources {
            vcpus: host.vcpus as i64,
            memory_mb: host.memory_mb as i64,
            local_gb: host.disk_gb as i64,
            vcpus_used: usage.vcpus,
            memory_mb_used: (s.reserved_host_memory_mb.min(i64::MAX as u64) as i64).saturating_add(usage.memory_mb),
            local_gb_used: reserved_disk_gb.saturating_add(usage.disk_gb),
            running_vms: usage.instances,
            disk_available_least: host.disk_free_gb as i64,
            hypervisor_version: host.hypervisor_version,
            cpu_info: host.cpu_info.clone(),
            arch: host.arch.clone(),
            host_ip: s.my_ip.map(|ip| ip.to_string()).unwrap_or_else(detect_my_ip),
            cpu_allocation_ratio: ratios.0,
            ram_allocation_ratio: ratios.1,
            disk_allocation_ratio: ratios.2,
        }
    }

    /// Gets or creates the Service record with this release's version.
    pub async fn ensure_service(&self, ctx: &RequestContext) -> Result<Service, HostError> {
        match self.conductor.service_get(ctx).await? {
            Some(mut service) => {
                if service.version() != Some(self.release().service_version) {
                    service.obj.set("version", self.release().service_version);
                    self.conductor.service_save(ctx, &mut service).await?;
                }
                Ok(service)
            }
            None => {
                let mut service = Service::new_compute(&self.settings.host, self.release().service_version);
                self.conductor.service_create(ctx, &mut service).await?;
                tracing::info!(service_id = ?service.id(), version = self.release().service_version, "created the nova-compute service record");
                Ok(service)
            }
        }
    }

    /// Registers the whole host: Service, ComputeNode, Placement provider.
    pub async fn register(&self, ctx: &RequestContext) -> Result<HostRecords, HostError> {
        let service = self.ensure_service(ctx).await?;
        let instances = self.conductor.instances_on_host(ctx).await?;
        let usage = Usage::of(&instances);
        let host = self.driver.host_resources().await?;
        let id_path = self.settings.compute_id_path();
        let identity = read_node_identities(&self.settings.compute_id_paths()).await?;
        // A uuid provisioned next to the configuration (not our own file)
        // is the node's, as for Nova: never traded for another by name.
        let provisioned = identity.as_ref().is_some_and(|(_, path)| *path != id_path);
        let known_uuid = identity.map(|(uuid, _)| uuid);
        let mut node = match &known_uuid {
            Some(uuid) => self.conductor.compute_node_by_uuid(ctx, uuid).await?,
            None => None,
        };
        if node.is_none() && !provisioned {
            // Adopt a node recorded for this host (e.g. state_path was wiped).
            node = self.conductor.compute_node_by_name(ctx, &self.settings.host).await?;
        }
        let existing_inventory = match (&self.placement, node.as_ref().and_then(|n| n.uuid())) {
            (Some(p), Some(uuid)) => p.inventories(uuid).await.ok().map(|(_, inv)| inv),
            _ => None,
        };
        let resources = self.node_resources(&host, &usage, self.ratios(existing_inventory.as_ref()));
        let node = match node {
            Some(mut n) => {
                n.update_resources(&resources);
                self.conductor.compute_node_save(ctx, &mut n).await?;
                n
            }
            None => {
                let uuid = known_uuid.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let mut n = ComputeNode::new(&uuid, &self.settings.host, service.id(), &resources);
                self.conductor.compute_node_create(ctx, &mut n).await?;
                tracing::info!(node = %uuid, "created the compute node record");
                n
            }
        };
        let node_uuid = node.uuid().map(str::to_string).ok_or_else(|| HostError::Identity {
            path: id_path.display().to_string(),
            detail: "the conductor returned a compute node without uuid".into(),
        })?;
        if known_uuid.as_deref() != Some(node_uuid.as_str()) && !provisioned {
            write_node_identity(&id_path, &node_uuid).await?;
        }
        let records = HostRecords {
            node_id: std::sync::atomic::AtomicI64::new(node.id().unwrap_or(0)),
            disabled: std::sync::atomic::AtomicBool::new(service.disabled()),
            service: Mutex::new(service),
            node: Mutex::new(node),
            node_uuid,
        };
        self.sync_placement(&records, &resources).await?;
        Ok(records)
    }

    /// Provider, inventory and traits.
    pub async fn sync_placement(&self, records: &HostRecords, r: &NodeResources) -> Result<(), HostError> {
        let Some(placement) = &self.placement else { return Ok(()) };
        let s = &self.settings;
        placement.ensure_provider(&records.node_uuid, &s.host).await?;
        let inventories = vec![
            Inventory {
                resource_class: "VCPU",
                total: r.vcpus.max(0) as u64,
                reserved: s.reserved_host_cpus,
                allocation_ratio: r.cpu_allocation_ratio,
            },
            Inventory {
                resource_class: "MEMORY_MB",
                total: r.memory_mb.max(0) as u64,
                reserved: s.reserved_host_memory_mb,
                allocation_ratio: r.ram_allocation_ratio,
            },
            Inventory {
                resource_class: "DISK_GB",
                total: r.local_gb.max(0) as u64,
                reserved: s.reserved_host_disk_mb.div_ceil(1024),
                allocation_ratio: r.disk_allocation_ratio,
            },
        ];
        if placement.set_inventory(&records.node_uuid, &inventories).await? {
            tracing::info!(provider = %records.node_uuid, "placement inventory updated");
        }
        self.sync_traits(records).await
    }

    /// Traits: capabilities, COMPUTE_NODE, OWNER_NOVA (newer releases) and
    /// COMPUTE_STATUS_DISABLED following the service's disabled flag.
    pub async fn sync_traits(&self, records: &HostRecords) -> Result<(), HostError> {
        let Some(placement) = &self.placement else { return Ok(()) };
        let disabled = records.disabled.load(std::sync::atomic::Ordering::SeqCst);
        let mut policy = TraitPolicy::default();
        policy.required.insert("COMPUTE_NODE".into());
        policy.required.extend(CAPABILITY_TRAITS.iter().map(|t| t.to_string()));
        policy.forbidden.extend(ABSENT_CAPABILITY_TRAITS.iter().map(|t| t.to_string()));
        if self.release().owner_nova_trait {
            policy.required.insert("OWNER_NOVA".into());
        }
        if disabled {
            policy.required.insert("COMPUTE_STATUS_DISABLED".into());
        } else {
            policy.forbidden.insert("COMPUTE_STATUS_DISABLED".into());
        }
        let traits: BTreeSet<String> = placement.set_traits(&records.node_uuid, &policy).await?;
        tracing::debug!(?traits, "provider traits");
        Ok(())
    }

    /// The periodic refresh: resources into the ComputeNode (saved only when
    /// changed), inventory and traits into Placement, the disabled flag.
    pub async fn refresh(&self, ctx: &RequestContext, records: &HostRecords) -> Result<(), HostError> {
        let instances = self.conductor.instances_on_host(ctx).await?;
        let usage = Usage::of(&instances);
        let host = self.driver.host_resources().await?;
        let existing = match &self.placement {
            Some(p) => p.inventories(&records.node_uuid).await.ok().map(|(_, inv)| inv),
            None => None,
        };
        let resources = self.node_resources(&host, &usage, self.ratios(existing.as_ref()));
        {
            let mut node = records.node.lock().await;
            if node.update_resources(&resources) {
                self.conductor.compute_node_save(ctx, &mut node).await?;
            }
        }
        if let Ok(Some(service)) = self.conductor.service_get(ctx).await {
            records.disabled.store(service.disabled(), std::sync::atomic::Ordering::SeqCst);
        }
        self.sync_placement(records, &resources).await
    }

    /// Registers again after the records vanished under a running service
    /// (an operator deleted the compute service, or the database was
    /// restored): the same node uuid is kept.
    pub async fn reregister(&self, ctx: &RequestContext, records: &HostRecords) -> Result<(), HostError> {
        tracing::warn!("this host's service record is gone from Nova; registering again");
        let fresh = self.register(ctx).await?;
        *records.service.lock().await = fresh.service.into_inner();
        *records.node.lock().await = fresh.node.into_inner();
        records
            .node_id
            .store(fresh.node_id.load(std::sync::atomic::Ordering::SeqCst), std::sync::atomic::Ordering::SeqCst);
        records
            .disabled
            .store(fresh.disabled.load(std::sync::atomic::Ordering::SeqCst), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// One heartbeat: `report_count + 1` through `Service.save`. Returns
    /// whether the disabled flag changed.
    pub async fn heartbeat(&self, ctx: &RequestContext, records: &HostRecords) -> Result<bool, HostError> {
        let mut service = records.service.lock().await;
        let next = service.report_count().saturating_add(1);
        service.obj.set("report_count", next);
        if let Err(e) = self.conductor.service_save(ctx, &mut service).await {
            // Keep the counter where the database has it.
            service.obj.set_clean("report_count", next - 1);
            service.obj.reset_changes();
            return Err(e.into());
        }
        let disabled = service.disabled();
        let before = records.disabled.swap(disabled, std::sync::atomic::Ordering::SeqCst);
        Ok(before != disabled)
    }
}

/// The source address of the default route, Nova's default for `my_ip`.
pub fn detect_my_ip() -> String {
    // Connecting a UDP socket sends nothing; it only selects a route.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn node_identity_is_read_where_nova_reads_it() {
        let dir = std::env::temp_dir().join(format!("nd-compute-id-{}", uuid::Uuid::new_v4().simple()));
        let (etc, state) = (dir.join("etc"), dir.join("state"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let paths = [etc.join("compute_id"), state.join("compute_id")];
        assert_eq!(read_node_identities(&paths).await.unwrap(), None);
        let u = "6f1c0f3e-0000-4000-8000-00000000000a";
        // Only in the configuration's directory (provisioned), with whitespace.
        std::fs::write(&paths[0], format!("  {u}\n")).unwrap();
        assert_eq!(read_node_identities(&paths).await.unwrap(), Some((u.to_string(), paths[0].clone())));
        // In both, the same: found first next to the configuration.
        std::fs::write(&paths[1], u.to_uppercase()).unwrap();
        assert_eq!(read_node_identities(&paths).await.unwrap(), Some((u.to_string(), paths[0].clone())));
        // Disagreeing files, or garbage: refused, naming the file.
        std::fs::write(&paths[1], "6f1c0f3e-0000-4000-8000-00000000000b").unwrap();
        let err = read_node_identities(&paths).await.unwrap_err().to_string();
        assert!(err.contains("must agree") && err.contains(&paths[1].display().to_string()), "{err}");
        std::fs::write(&paths[1], "not a uuid").unwrap();
        assert!(read_node_identities(&paths).await.unwrap_err().to_string().contains("is not a uuid"));
        std::fs::remove_file(&paths[0]).unwrap();
        std::fs::write(&paths[1], u).unwrap();
        assert_eq!(read_node_identities(&paths).await.unwrap(), Some((u.to_string(), paths[1].clone())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use serde_json::json;

    fn instance(memory_mb: i64, vcpus: i64, root_gb: i64, ephemeral_gb: i64) -> Instance {
        Instance::from_primitive(&json!({
            "nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.8",
            "nova_object.data": {"uuid": "6f1b2c1e-0000-4000-8000-000000000001", "vm_state": "active",
                "memory_mb": memory_mb, "vcpus": vcpus, "root_gb": root_gb, "ephemeral_gb": ephemeral_gb}
        }))
        .unwrap()
    }

    #[test]
    fn conductor_sizes_cannot_wrap_the_hosts_usage() {
        let huge = instance(i64::MAX, i64::MAX, i64::MAX, i64::MAX);
        let u = Usage::of(&[huge.clone(), huge]);
        assert_eq!((u.memory_mb, u.vcpus, u.disk_gb, u.instances), (i64::MAX, i64::MAX, i64::MAX, 2));
        let negative = instance(i64::MIN, -4, -1, i64::MIN);
        let u = Usage::of(&[negative, instance(512, 2, 1, 0)]);
        assert_eq!((u.memory_mb, u.vcpus, u.disk_gb), (512, 2, 1));
    }
}
