//! The compute manager: Nova's state machine around the driver, as
//! `nova/compute/manager.py` runs it. Each RPC method becomes one operation
//! that takes the instance's lock, records the instance-action event with the
//! request's context, moves vm_state / task_state / power_state through the
//! same `Instance.save(expected_task_state=...)` steps as Python, and on
//! failure records a fault and leaves the instance in the state Nova expects.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use super::errors::{OpError, instance_invalid_state, instance_not_found};
use super::events::EventWaiters;
use super::host::{HostRecords, HostRegistrar};
use super::locks::InstanceLocks;
use super::states::{task, vm};
use crate::conductor::{Conductor, Expected};
use crate::config::Settings;
use crate::image::ImageService;
use crate::metrics;
use crate::net::PlugOptions;
use crate::network::Neutron;
use crate::objects::Instance;
use crate::objects::time;
use crate::placement::Placement;
use crate::rpc::{RemoteError, RequestContext};
use crate::virt::{Driver, PowerState, VirtError};

/// The largest console log returned (Nova's libvirt driver keeps 100 KiB).
pub const MAX_CONSOLE_BYTES: usize = 100 * 1024;

/// The compute manager.
pub struct ComputeManager<D: Driver> {
    pub settings: Arc<Settings>,
    pub conductor: Conductor,
    pub placement: Option<Placement>,
    pub driver: Arc<D>,
    pub images: ImageService<D>,
    pub locks: InstanceLocks,
    pub build_slots: Option<Semaphore>,
    pub snapshot_slots: Option<Semaphore>,
    pub registrar: HostRegistrar<D>,
    /// Set once the host is registered; handlers wait for it.
    pub records: tokio::sync::OnceCell<Arc<HostRecords>>,
    ready: watch::Sender<bool>,
    /// Instances with an operation in progress, to keep power sync away.
    busy: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Neutron, when configured.
    pub neutron: Option<Neutron>,
    /// How ports are plugged on this host.
    pub plug_opts: PlugOptions,
    /// Pending waits for Neutron's events.
    pub vif_events: EventWaiters,
    /// Instances by vm_state, for the metrics.
    pub census: super::census::Census,
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
    /// A manager; `mark_ready` opens it to requests.
    pub fn new(
        settings: Arc<Settings>,
        conductor: Conductor,
        placement: Option<Placement>,
        driver: Arc<D>,
        images: ImageService<D>,
        registrar: HostRegistrar<D>,
        neutron: Option<Neutron>,
    ) -> Self {
        let (ready, _) = watch::channel(false);
        ComputeManager {
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
            plug_opts: PlugOptions::default(),
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

    /// Records `compute_<event>` start and finish around `op`, with the
    /// request's context (instance actions are found by its request id).
    pub async fn with_event<T>(
        &self,
        ctx: &RequestContext,
        uuid: &str,
        event: &str,
        op: impl Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        let started = Instant::now();
        // The action event is a record of its own: written while the
        // operation begins rather than one conductor round trip before it.
        let ((), result) = tokio::join!(self.conductor.event_start(ctx, uuid, event), op);
        let failure = match &result {
            Ok(_) => None,
            Err(e) if e.is_superseded() => None,
            Err(e) => Some((e.tenant_message(), e.to_remote())),
        };
        // The event's message is shown to the tenant (microversion 2.84
        // `details`), its traceback to admins only: the whole error goes there.
        let (message, trace) = match &failure {
            Some((message, f)) => (message.clone(), format!("{}: {}\n", f.class, f.message)),
            None => (String::new(), String::new()),
        };
        let detail = failure.as_ref().map(|_| (message.as_str(), trace.as_str()));
        self.conductor.event_finish(ctx, uuid, event, detail).await;
        metrics::global().observe(
            "nova_docker_operation_duration_seconds",
            &[("operation", event), ("phase", "total")],
            started.elapsed(),
        );
        result
    }

    /// Records an instance fault for a failed operation.
    pub async fn record_fault(&self, ctx: &RequestContext, uuid: &str, err: &OpError) {
        if err.is_superseded() {
            return;
        }
        // The tenant reads the message; the whole error goes to details.
        let fault = err.fault_record();
        self.conductor.fault_create(ctx, uuid, fault.code, &fault.message, &fault.details).await;
    }

    /// `@reverts_task_state`: clears the task state after a failure (unless
    /// someone else changed the instance).
    pub async fn revert_task_state(&self, ctx: &RequestContext, instance: &mut Instance) {
        instance.set("task_state", serde_json::Value::Null);
        if let Err(e) = self.conductor.instance_save(ctx, instance, Expected::Any).await {
            tracing::warn!(instance = instance.uuid(), error = %e, "could not revert the task state");
        }
    }

    /// Marks the instance in error, as `_set_instance_obj_error_state` does.
    pub async fn set_error_state(&self, ctx: &RequestContext, instance: &mut Instance, clean_task_state: bool) {
        instance.set("vm_state", vm::ERROR);
        if clean_task_state {
            instance.set("task_state", serde_json::Value::Null);
        }
        if let Err(e) = self.conductor.instance_save(ctx, instance, Expected::Any).await {
            tracing::warn!(instance = instance.uuid(), error = %e, "could not set the instance in error");
        }
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
        self.census.record(i.uuid(), i.vm_state());
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

    // ------------------------------------------------------------------
    // Simple power operations
    // ------------------------------------------------------------------

    /// `stop_instance`: graceful stop, then `vm_state=stopped`.
    pub async fn stop_instance(&self, ctx: &RequestContext, mut i: Instance, clean: bool) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let r = self
            .with_event(ctx, &uuid, "compute_stop_instance", async {
                let current = self.power_state_of(&uuid).await?;
                let mut expected = vec![Some(task::POWERING_OFF)];
                if matches!(current, PowerState::NoState | PowerState::Shutdown | PowerState::Crashed) {
                    expected.push(None);
                }
                let timeout = self.shutdown_timeout(&i, clean);
                let state = match self.driver.power_off(&uuid, timeout).await {
                    Ok(info) => info.state,
                    Err(VirtError::NotFound(_)) => PowerState::NoState,
                    Err(e) => return Err(e.into()),
                };
                self.forget_netns(&uuid).await;
                i.set("power_state", state.code());
                i.set("vm_state", vm::STOPPED);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::OneOf(expected)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `start_instance`: start, then `vm_state=active`.
    pub async fn start_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let r = self
            .with_event(ctx, &uuid, "compute_start_instance", async {
                let info = self.power_on_and_replug(ctx, &mut i).await?;
                i.set("power_state", info.state.code());
                i.set("vm_state", vm::ACTIVE);
                i.set("task_state", serde_json::Value::Null);
                for key in ["shelved_at", "shelved_image_id", "shelved_host"] {
                    if i.system_metadata().contains_key(key) {
                        i.set_system_metadata(key, None);
                    }
                }
                self.save(ctx, &mut i, Expected::task(task::POWERING_ON)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `pause_instance` / `unpause_instance` (cgroup freezer).
    pub async fn pause_instance(&self, ctx: &RequestContext, mut i: Instance, pause: bool) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let event = if pause { "compute_pause_instance" } else { "compute_unpause_instance" };
        let r = self
            .with_event(ctx, &uuid, event, async {
                let info = if pause { self.driver.pause(&uuid).await? } else { self.driver.unpause(&uuid).await? };
                i.set("power_state", info.state.code());
                i.set("vm_state", if pause { vm::PAUSED } else { vm::ACTIVE });
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::task(if pause { task::PAUSING } else { task::UNPAUSING })).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `suspend_instance`: a container has no memory image to save, so
    /// suspend freezes its processes (like pause) and Nova records SUSPENDED;
    /// memory stays allocated. The previous vm_state is kept in
    /// `system_metadata.old_vm_state` as Nova does.
    pub async fn suspend_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let previous = i.vm_state().unwrap_or(vm::ACTIVE).to_string();
        let r = self
            .with_event(ctx, &uuid, "compute_suspend_instance", async {
                self.driver.pause(&uuid).await?;
                i.set_system_metadata("old_vm_state", Some(&previous));
                i.set("power_state", PowerState::Suspended.code());
                i.set("vm_state", vm::SUSPENDED);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::task(task::SUSPENDING)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `resume_instance`: thaws, and restores the vm_state from before.
    pub async fn resume_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let r = self
            .with_event(ctx, &uuid, "compute_resume_instance", async {
                let info = self.driver.unpause(&uuid).await?;
                let old = i.system_metadata().get("old_vm_state").cloned().unwrap_or_else(|| vm::ACTIVE.to_string());
                i.set_system_metadata("old_vm_state", None);
                i.set("power_state", info.state.code());
                i.set("vm_state", old);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::task(task::RESUMING)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `soft_delete_instance`: powers off and records `soft-delete`.
    pub async fn soft_delete_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let r = self
            .with_event(ctx, &uuid, "compute_soft_delete_instance", async {
                let state = match self.driver.power_off(&uuid, self.settings.shutdown_timeout).await {
                    Ok(info) => info.state,
                    Err(VirtError::NotFound(_)) => PowerState::NoState,
                    Err(e) => return Err(e.into()),
                };
                self.forget_netns(&uuid).await;
                i.set("power_state", state.code());
                i.set("vm_state", vm::SOFT_DELETED);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::task(task::SOFT_DELETING)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `restore_instance`: powers a soft-deleted instance back on.
    pub async fn restore_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let r = self
            .with_event(ctx, &uuid, "compute_restore_instance", async {
                let info = self.power_on_and_replug(ctx, &mut i).await?;
                i.set("power_state", info.state.code());
                i.set("vm_state", vm::ACTIVE);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::task(task::RESTORING)).await
            })
            .await;
        self.finish(ctx, &mut i, r).await
    }

    /// `reboot_instance`: the pending/started task states, then a soft
    /// (SIGTERM, wait, start) or hard (kill, start) restart.
    pub async fn reboot_instance(&self, ctx: &RequestContext, mut i: Instance, hard: bool) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let (expected, pending, started) = if hard {
            (
                vec![Some(task::REBOOTING_HARD), Some(task::REBOOT_PENDING_HARD), Some(task::REBOOT_STARTED_HARD)],
                task::REBOOT_PENDING_HARD,
                task::REBOOT_STARTED_HARD,
            )
        } else {
            (
                vec![Some(task::REBOOTING), Some(task::REBOOT_PENDING), Some(task::REBOOT_STARTED)],
                task::REBOOT_PENDING,
                task::REBOOT_STARTED,
            )
        };
        let result = self
            .with_event(ctx, &uuid, "compute_reboot_instance", async {
                let current = self.power_state_of(&uuid).await?;
                i.set("power_state", current.code());
                i.set("task_state", pending);
                self.save(ctx, &mut i, Expected::OneOf(expected)).await?;
                // Nova saves the started state and then reboots. The
                // restart needs nothing from that save, so it runs beside it
                // and beside loading the network info its replug needs; a
                // refused save still wins over the restart's outcome.
                let started_saved = async {
                    i.set("task_state", started);
                    self.save(ctx, &mut i, Expected::task(pending)).await?;
                    self.network_info(ctx, &mut i).await
                };
                let (ni, rebooted) =
                    tokio::join!(started_saved, self.driver.reboot(&uuid, hard, self.settings.shutdown_timeout));
                let ni = ni?;
                let new_state = match rebooted {
                    Ok(info) => {
                        // A restarted container has a new network namespace.
                        self.plug_vifs(&uuid, &ni, false).await?;
                        info.state
                    }
                    Err(e) => {
                        // Nova: if the guest still runs, record the fault and carry on.
                        let now = self.power_state_of(&uuid).await.unwrap_or(PowerState::NoState);
                        if now != PowerState::Running {
                            return Err(e.into());
                        }
                        self.record_fault(ctx, &uuid, &OpError::Virt(e)).await;
                        now
                    }
                };
                let new_vm = if i.vm_state() == Some(vm::RESCUED) { vm::RESCUED } else { vm::ACTIVE };
                i.set("power_state", new_state.code());
                i.set("vm_state", new_vm);
                i.set("task_state", serde_json::Value::Null);
                self.save(ctx, &mut i, Expected::Any).await
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_superseded() => Ok(()),
            Err(e) => {
                self.record_fault(ctx, &uuid, &e).await;
                i.set("power_state", self.power_state_of(&uuid).await.unwrap_or(PowerState::NoState).code());
                self.set_error_state(ctx, &mut i, true).await;
                Err(e)
            }
        }
    }

    /// Common end of an operation: on failure a fault and the task state
    /// reverted (Nova's `wrap_instance_fault` + `reverts_task_state`); an
    /// operation superseded by another request ends quietly.
    pub async fn finish(&self, ctx: &RequestContext, i: &mut Instance, r: Result<(), OpError>) -> Result<(), OpError> {
        let Err(e) = r else { return Ok(()) };
        if e.is_superseded() {
            tracing::info!(instance = i.uuid(), error = %e, "operation superseded; nothing more to do");
            return Ok(());
        }
        tracing::warn!(instance = i.uuid(), error = %e, "operation failed");
        self.record_fault(ctx, i.uuid(), &e).await;
        self.revert_task_state(ctx, i).await;
        Err(e)
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
    pub async fn unsupported_cast(
        &self,
        ctx: &RequestContext,
        method: &str,
        instance: Option<Instance>,
    ) -> RemoteError {
        let err = self.unsupported(method);
        if let Some(mut i) = instance {
            let uuid = i.uuid().to_string();
            let _lock = self.locks.lock(&uuid).await;
            let e = OpError::Nova(err.clone());
            let r: Result<(), OpError> =
                self.with_event(ctx, &uuid, &format!("compute_{method}"), async { Err(e) }).await;
            if let Err(e) = r {
                self.record_fault(ctx, &uuid, &e).await;
                self.revert_task_state(ctx, &mut i).await;
            }
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
