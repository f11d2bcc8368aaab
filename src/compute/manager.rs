//! The compute manager: Nova's state machine around the driver, as
//! `nova/compute/manager.py` runs it. Each RPC method becomes one operation
//! run by [`super::operation`] (the instance's lock, the instance-action
//! event with the request's context, on failure a fault and the state Nova
//! expects) whose body moves vm_state / task_state / power_state through the
//! same `Instance.save(expected_task_state=...)` steps as Python.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::errors::{OpError, instance_invalid_state, instance_not_found};
use super::events::EventWaiters;
use super::host::{HostRecords, HostRegistrar};
use super::locks::InstanceLocks;
use super::operation::{Claim, OnFailure, Operation};
use super::states::{TaskState, VmState};
use crate::conductor::{Conductor, Expected};
use crate::config::Settings;
use crate::image::ImageService;
use crate::network::PortService;
use crate::objects::Instance;
use crate::objects::time;
use crate::placement::Allocations;
use crate::rpc::{RemoteError, RequestContext};
use crate::virt::{Driver, PowerState, VirtError};

/// The largest console log returned (Nova's libvirt driver keeps 100 KiB).
pub const MAX_CONSOLE_BYTES: usize = 100 * 1024;

/// The compute manager.
pub struct ComputeManager<D: Driver> {
    /// The host's configuration.
    pub settings: Arc<Settings>,
    /// Nova's object API: instances, faults, actions, records.
    pub conductor: Conductor,
    /// Placement, for allocations this host changes; None when not configured.
    pub placement: Option<Arc<dyn Allocations>>,
    /// The virt driver that runs the containers.
    pub driver: Arc<D>,
    /// Glance to Docker image transfer, with its cache.
    pub images: ImageService<D>,
    /// One operation at a time per instance, as Nova's per-instance lock.
    pub locks: InstanceLocks,
    /// Caps concurrent builds (`max_concurrent_builds`); None for unlimited.
    pub build_slots: Option<Semaphore>,
    /// Caps concurrent snapshots (`max_concurrent_snapshots`); None for unlimited.
    pub snapshot_slots: Option<Semaphore>,
    /// Registers the host and refreshes its records and provider.
    pub registrar: HostRegistrar<D>,
    /// Set once the host is registered; handlers wait for it.
    pub records: tokio::sync::OnceCell<Arc<HostRecords>>,
    ready: watch::Sender<bool>,
    /// Instances with an operation in progress, to keep power sync away.
    busy: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Neutron, when configured.
    pub neutron: Option<Arc<dyn PortService>>,
    /// Pending waits for Neutron's events.
    pub vif_events: EventWaiters,
    /// Instances by vm_state, for the metrics.
    pub census: super::census::Census,
    /// The serial consoles listening for nova-serialproxy.
    pub consoles: crate::virt::console::SerialConsoles,
}

/// Marks an instance busy for the life of the value.
pub struct Busy<'a, D: Driver> {
    manager: &'a ComputeManager<D>,
    uuid: String,
}

impl<D: Driver> Drop for Busy<'_, D> {
    fn drop(&mut self) {
        self.manager.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.uuid);
    }
}

fn semaphore(n: usize) -> Option<Semaphore> {
    (n > 0).then(|| Semaphore::new(n))
}

impl<D: Driver> ComputeManager<D> {
    /// A slot of `max_concurrent_builds`, held by every operation that
    /// loads an image into Docker (build, rebuild, unshelve, a move's
    /// finish): a tenant cannot run more image loads at once by choosing
    /// another operation. None when unlimited.
    pub(crate) async fn build_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match &self.build_slots {
            Some(s) => s.acquire().await.ok(),
            None => None,
        }
    }

    /// A slot of `max_concurrent_snapshots`, held by every operation that
    /// commits and uploads a container (snapshot, backup, shelve, a move
    /// between hosts). None when unlimited.
    pub(crate) async fn snapshot_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match &self.snapshot_slots {
            Some(s) => s.acquire().await.ok(),
            None => None,
        }
    }

    /// A manager; `mark_ready` opens it to requests.
    pub fn new(
        settings: Arc<Settings>,
        conductor: Conductor,
        placement: Option<Arc<dyn Allocations>>,
        driver: Arc<D>,
        images: ImageService<D>,
        registrar: HostRegistrar<D>,
        neutron: Option<Arc<dyn PortService>>,
    ) -> Self {
        let (ready, _) = watch::channel(false);
        let consoles = crate::virt::console::SerialConsoles::new(settings.serial_console.clone());
        ComputeManager {
            consoles,
            build_slots: semaphore(settings.max_concurrent_builds),
            snapshot_slots: semaphore(settings.max_concurrent_snapshots),
            settings,
            conductor,
            placement,
            driver,
            images,
            locks: InstanceLocks::default(),
            registrar,
            records: tokio::sync::OnceCell::new(),
            ready,
            busy: Default::default(),
            neutron,
            vif_events: EventWaiters::default(),
            census: Default::default(),
        }
    }

    /// Opens the manager to requests (after registration and recovery).
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits until the manager is ready.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether an operation is in progress on `uuid`.
    pub fn is_busy(&self, uuid: &str) -> bool {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).contains(uuid)
    }

    /// Marks `uuid` busy until the returned value is dropped.
    pub fn mark_busy(&self, uuid: &str) -> Busy<'_, D> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid.to_string());
        Busy { manager: self, uuid: uuid.to_string() }
    }

    /// The compute host name.
    pub fn host(&self) -> &str {
        &self.settings.host
    }

    /// The power state the driver sees (NOSTATE when there is no container).
    pub async fn power_state_of(&self, uuid: &str) -> Result<PowerState, OpError> {
        match self.driver.get_info(uuid).await {
            Ok(info) => Ok(info.state),
            Err(VirtError::NotFound(_)) => Ok(PowerState::NoState),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves the instance, with the expected task state.
    pub async fn save(&self, ctx: &RequestContext, i: &mut Instance, expected: Expected) -> Result<(), OpError> {
        self.conductor.instance_save(ctx, i, expected).await?;
        self.census.record(i.uuid(), i.vm_state_name());
        Ok(())
    }

    /// The grace period of a stop: Nova's `shutdown_timeout`, or the image's
    /// `os_shutdown_timeout`, or 0 for an unclean shutdown.
    pub fn shutdown_timeout(&self, instance: &Instance, clean: bool) -> Duration {
        if !clean {
            return Duration::ZERO;
        }
        image_shutdown_timeout(
            instance.system_metadata().get("image_os_shutdown_timeout").map(String::as_str),
            self.settings.shutdown_timeout,
        )
    }

    /// Powers the instance off within `timeout` (a missing container is
    /// off): its power state afterwards.
    pub async fn power_off(&self, uuid: &str, timeout: Duration) -> Result<PowerState, OpError> {
        match self.driver.power_off(uuid, timeout).await {
            Ok(info) => Ok(info.state),
            Err(VirtError::NotFound(_)) => Ok(PowerState::NoState),
            Err(e) => Err(e.into()),
        }
    }

    // ------------------------------------------------------------------
    // Simple power operations
    // ------------------------------------------------------------------

    /// `stop_instance`: graceful stop, then `vm_state=stopped`.
    pub async fn stop_instance(&self, ctx: &RequestContext, i: Instance, clean: bool) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_stop_instance"), async |i| {
            let current = self.power_state_of(i.uuid()).await?;
            let mut expected = vec![Some(TaskState::PoweringOff)];
            if matches!(current, PowerState::NoState | PowerState::Shutdown | PowerState::Crashed) {
                expected.push(None);
            }
            let state = self.power_off(i.uuid(), self.shutdown_timeout(i, clean)).await?;
            self.settle(ctx, i, VmState::Stopped, state, Expected::OneOf(expected)).await
        })
        .await
    }

    /// `start_instance`: start, then `vm_state=active`.
    pub async fn start_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_start_instance"), async |i| {
            let info = self.power_on_and_replug(ctx, i).await?;
            for key in ["shelved_at", "shelved_image_id", "shelved_host"] {
                if i.system_metadata().contains_key(key) {
                    i.set_system_metadata(key, None);
                }
            }
            self.settle(ctx, i, VmState::Active, info.state, Expected::task(TaskState::PoweringOn)).await
        })
        .await
    }

    /// `pause_instance` / `unpause_instance` (cgroup freezer).
    pub async fn pause_instance(&self, ctx: &RequestContext, i: Instance, pause: bool) -> Result<(), OpError> {
        let event = if pause { "compute_pause_instance" } else { "compute_unpause_instance" };
        self.operate(ctx, i, Operation::new(event), async |i| {
            let (info, vm, task) = if pause {
                (self.driver.pause(i.uuid()).await?, VmState::Paused, TaskState::Pausing)
            } else {
                (self.driver.unpause(i.uuid()).await?, VmState::Active, TaskState::Unpausing)
            };
            self.settle(ctx, i, vm, info.state, Expected::task(task)).await
        })
        .await
    }

    /// `suspend_instance`: a container has no memory image to save, so
    /// suspend freezes its processes (like pause) and Nova records SUSPENDED;
    /// memory stays allocated. The previous vm_state is kept in
    /// `system_metadata.old_vm_state` as Nova does.
    pub async fn suspend_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        let previous = i.vm_state_name().unwrap_or(VmState::Active.as_str()).to_string();
        self.operate(ctx, i, Operation::new("compute_suspend_instance"), async |i| {
            self.driver.pause(i.uuid()).await?;
            i.set_system_metadata("old_vm_state", Some(&previous));
            let expected = Expected::task(TaskState::Suspending);
            self.settle(ctx, i, VmState::Suspended, PowerState::Suspended, expected).await
        })
        .await
    }

    /// `resume_instance`: thaws, and restores the vm_state from before.
    pub async fn resume_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_resume_instance"), async |i| {
            let info = self.driver.unpause(i.uuid()).await?;
            let old =
                i.system_metadata().get("old_vm_state").and_then(|s| VmState::parse(s)).unwrap_or(VmState::Active);
            i.set_system_metadata("old_vm_state", None);
            self.settle(ctx, i, old, info.state, Expected::task(TaskState::Resuming)).await
        })
        .await
    }

    /// `soft_delete_instance`: powers off and records `soft-delete`.
    pub async fn soft_delete_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_soft_delete_instance"), async |i| {
            let state = self.power_off(i.uuid(), self.settings.shutdown_timeout).await?;
            self.settle(ctx, i, VmState::SoftDeleted, state, Expected::task(TaskState::SoftDeleting)).await
        })
        .await
    }

    /// `restore_instance`: powers a soft-deleted instance back on.
    pub async fn restore_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_restore_instance"), async |i| {
            let info = self.power_on_and_replug(ctx, i).await?;
            self.settle(ctx, i, VmState::Active, info.state, Expected::task(TaskState::Restoring)).await
        })
        .await
    }

    /// `reboot_instance`: the pending/started task states, then a soft
    /// (SIGTERM, wait, start) or hard (kill, start) restart. A failure
    /// leaves the instance in ERROR with its power state read again.
    pub async fn reboot_instance(&self, ctx: &RequestContext, i: Instance, hard: bool) -> Result<(), OpError> {
        let (requested, pending, started) = if hard {
            (TaskState::RebootingHard, TaskState::RebootPendingHard, TaskState::RebootStartedHard)
        } else {
            (TaskState::Rebooting, TaskState::RebootPending, TaskState::RebootStarted)
        };
        let op = Operation::new("compute_reboot_instance")
            .on_failure(OnFailure::ErrorState { clean_task_state: true, refresh_power: true });
        self.operate(ctx, i, op, async |i| {
            let uuid = i.uuid().to_string();
            i.set_power_state(self.power_state_of(&uuid).await?);
            let expected = Expected::OneOf(vec![Some(requested), Some(pending), Some(started)]);
            self.begin_task(ctx, i, pending, expected).await?;
            // Nova saves the started state and then reboots. The restart
            // needs nothing from that save, so it runs beside it and beside
            // loading the network info its replug needs; a refused save
            // still wins over the restart's outcome.
            let started_saved = async {
                self.begin_task(ctx, i, started, Expected::task(pending)).await?;
                self.network_info(ctx, i).await
            };
            if hard && !self.settings.hard_reboot_vif_wait.is_empty() {
                // `[workarounds] wait_for_vif_plugged_event_during_hard_reboot`:
                // the restart waits on Neutron around the re-plug.
                let ni = started_saved.await?;
                if let Some(rebooted) = self.hard_reboot_awaiting_vifs(i, &ni).await {
                    return self.settle(ctx, i, after_reboot_vm_state(i), rebooted?.state, Expected::Any).await;
                }
                let info = self.driver.reboot(&uuid, hard, self.settings.shutdown_timeout).await;
                return self.after_reboot(ctx, i, &uuid, &ni, info).await;
            }
            let (ni, rebooted) =
                tokio::join!(started_saved, self.driver.reboot(&uuid, hard, self.settings.shutdown_timeout));
            let ni = ni?;
            self.after_reboot(ctx, i, &uuid, &ni, rebooted).await
        })
        .await
    }

    /// The end of a reboot: the ports plugged into the restarted container,
    /// or, when the restart failed with the guest still running, a fault
    /// and the instance as it is (Nova's way).
    async fn after_reboot(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        uuid: &str,
        ni: &crate::net::NetworkInfo,
        rebooted: Result<crate::virt::InstanceInfo, crate::virt::VirtError>,
    ) -> Result<(), OpError> {
        let new_state = match rebooted {
            Ok(info) => {
                // A restarted container has a new network namespace.
                self.plug_vifs(uuid, ni, false).await?;
                info.state
            }
            Err(e) => {
                // Nova: if the guest still runs, record the fault and carry on.
                let now = self.power_state_of(uuid).await.unwrap_or(PowerState::NoState);
                if now != PowerState::Running {
                    return Err(e.into());
                }
                self.record_fault(ctx, uuid, &OpError::Virt(e)).await;
                now
            }
        };
        self.settle(ctx, i, after_reboot_vm_state(i), new_state, Expected::Any).await
    }

    // ------------------------------------------------------------------
    // Read-only calls
    // ------------------------------------------------------------------

    /// `get_console_output`: the container's output, the last `tail_length`
    /// lines when given, non-ASCII bytes replaced as Nova does.
    pub async fn get_console_output(&self, i: &Instance, tail_length: Option<usize>) -> Result<String, OpError> {
        let uuid = i.uuid();
        let bytes = match self.driver.console_output(uuid, MAX_CONSOLE_BYTES).await {
            Ok(b) => b,
            Err(VirtError::NotFound(_)) => return Err(OpError::Nova(instance_not_found(uuid))),
            Err(e) => return Err(e.into()),
        };
        let bytes = match tail_length {
            Some(n) => tail_lines(&bytes, n),
            None => bytes,
        };
        Ok(bytes.iter().map(|b| if b.is_ascii() { *b as char } else { '\u{FFFD}' }).collect())
    }

    async fn running_or_invalid(&self, i: &Instance, method: &str) -> Result<(), OpError> {
        let state = self.power_state_of(i.uuid()).await?;
        if state != PowerState::Running {
            return Err(OpError::Nova(instance_invalid_state(i.uuid(), "power state", state.name(), method)));
        }
        Ok(())
    }

    /// `get_diagnostics` (API < 2.48): a flat dict like libvirt's.
    pub async fn get_diagnostics(&self, i: &Instance) -> Result<serde_json::Value, OpError> {
        self.running_or_invalid(i, "get_diagnostics").await?;
        let s = self.driver.stats(i.uuid()).await?;
        let mut m = serde_json::Map::new();
        m.insert("driver".into(), "docker".into());
        m.insert("cpu0_time".into(), s.cpu_time_ns.into());
        m.insert("memory".into(), (s.memory_limit_bytes / 1024).into());
        m.insert("memory-actual".into(), (s.memory_limit_bytes / 1024).into());
        m.insert("memory-rss".into(), (s.memory_used_bytes / 1024).into());
        for n in &s.nics {
            m.insert(format!("{}_rx", n.name), n.rx_octets.into());
            m.insert(format!("{}_rx_packets", n.name), n.rx_packets.into());
            m.insert(format!("{}_rx_errors", n.name), n.rx_errors.into());
            m.insert(format!("{}_rx_drop", n.name), n.rx_drop.into());
            m.insert(format!("{}_tx", n.name), n.tx_octets.into());
            m.insert(format!("{}_tx_packets", n.name), n.tx_packets.into());
            m.insert(format!("{}_tx_errors", n.name), n.tx_errors.into());
            m.insert(format!("{}_tx_drop", n.name), n.tx_drop.into());
        }
        Ok(serde_json::Value::Object(m))
    }

    /// `get_instance_diagnostics`: a `Diagnostics` 1.0 object.
    pub async fn get_instance_diagnostics(&self, i: &Instance) -> Result<serde_json::Value, OpError> {
        self.running_or_invalid(i, "get_instance_diagnostics").await?;
        let s = self.driver.stats(i.uuid()).await?;
        let nic = |n: &crate::virt::NicStats| {
            serde_json::json!({
                "nova_object.name": "NicDiagnostics", "nova_object.namespace": "nova", "nova_object.version": "1.0",
                "nova_object.data": {"mac_address": n.mac_address, "rx_octets": n.rx_octets, "rx_errors": n.rx_errors, "rx_drop": n.rx_drop,
                    "rx_packets": n.rx_packets, "tx_octets": n.tx_octets, "tx_errors": n.tx_errors,
                    "tx_drop": n.tx_drop, "tx_packets": n.tx_packets}
            })
        };
        let data = serde_json::json!({
            // No "driver": Nova's HypervisorDriver enum has no docker (an
            // unset field is shown as null); the hypervisor says docker.
            "state": PowerState::Running.name(),
            "hypervisor": "docker",
            "hypervisor_os": "linux",
            "uptime": s.uptime_s.unwrap_or(0),
            "config_drive": false,
            "num_cpus": i.vcpus(),
            "num_nics": s.nics.len(),
            "num_disks": 0,
            "memory_details": {
                "nova_object.name": "MemoryDiagnostics", "nova_object.namespace": "nova", "nova_object.version": "1.0",
                "nova_object.data": {"maximum": s.memory_limit_bytes / (1024 * 1024), "used": s.memory_used_bytes / (1024 * 1024)}
            },
            "cpu_details": [{
                "nova_object.name": "CpuDiagnostics", "nova_object.namespace": "nova", "nova_object.version": "1.0",
                "nova_object.data": {"id": 0, "time": s.cpu_time_ns}
            }],
            "nic_details": s.nics.iter().map(nic).collect::<Vec<_>>(),
            "disk_details": [],
        });
        Ok(serde_json::json!({
            "nova_object.name": "Diagnostics", "nova_object.namespace": "nova", "nova_object.version": "1.0",
            "nova_object.data": data,
        }))
    }

    /// The NotImplementedError of an operation containers cannot do (the
    /// API answers 501 or a clear error).
    pub fn unsupported(&self, method: &str) -> RemoteError {
        RemoteError::not_implemented(format!(
            "{} is not supported by nova-docker (instances are containers)",
            method.trim_end_matches("_instance")
        ))
    }

    /// Answers a cast this host cannot do: the instance gets its task state
    /// reverted, a fault and an error event, so it never stays in a task state.
    /// What Nova claimed for it in Placement is given back ([`Claim`]).
    pub async fn unsupported_cast(
        &self,
        ctx: &RequestContext,
        method: &str,
        instance: Option<Instance>,
        claim: Option<Claim>,
    ) -> RemoteError {
        let err = self.unsupported(method);
        if let Some(mut i) = instance {
            let e = OpError::Nova(err.clone());
            let op = Operation::new(format!("compute_{method}")).holding(claim);
            let _ = self.run(ctx, &mut i, op, async |_| Err::<(), _>(e)).await;
        }
        err
    }

    /// `DateTimeField` for now.
    pub fn now() -> String {
        time::now_field()
    }
}

/// The longest grace period an image's `os_shutdown_timeout` (a tenant's
/// property) may ask for: a stop holds the instance's lock that long.
pub const MAX_IMAGE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);

/// The grace period of a clean stop: the image's `os_shutdown_timeout`
/// (seconds, at most [`MAX_IMAGE_SHUTDOWN_TIMEOUT`]) or else `default`.
pub fn image_shutdown_timeout(property: Option<&str>, default: Duration) -> Duration {
    match property.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(secs) => Duration::from_secs(secs).min(MAX_IMAGE_SHUTDOWN_TIMEOUT),
        None => default,
    }
}

/// The last `n` lines of a log.
pub fn tail_lines(bytes: &[u8], n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut count = 0;
    for (idx, b) in trimmed.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return bytes[idx + 1..].to_vec();
            }
        }
    }
    bytes.to_vec()
}

/// The vm_state a rebooted instance settles in: a rescued one stays rescued.
fn after_reboot_vm_state(i: &Instance) -> VmState {
    if i.vm_state() == Some(VmState::Rescued) { VmState::Rescued } else { VmState::Active }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_images_shutdown_timeout_cannot_hold_a_stop_forever() {
        let d = Duration::from_secs(60);
        assert_eq!(image_shutdown_timeout(None, d), d);
        assert_eq!(image_shutdown_timeout(Some("x"), d), d);
        assert_eq!(image_shutdown_timeout(Some("-5"), d), d);
        assert_eq!(image_shutdown_timeout(Some("5"), d), Duration::from_secs(5));
        assert_eq!(image_shutdown_timeout(Some("18446744073709551615"), d), MAX_IMAGE_SHUTDOWN_TIMEOUT);
    }

    #[test]
    fn tails_lines_like_nova() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\n", 0), b"");
    }
}
