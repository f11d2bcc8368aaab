//! Keeping Nova and Docker in agreement: start-up recovery (Nova's
//! `init_host` / `_init_instance`), power-state sync driven by Docker's event
//! stream (with a periodic full pass as a safety net), and containers whose
//! instance is gone (`running_deleted_instance_action`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::errors::OpError;
use super::manager::ComputeManager;
use super::states::{TaskState, VmState};
use crate::conductor::Expected;
use crate::config::DeletedInstanceAction;
use crate::metrics;
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::{Driver, PowerState, VirtError};

impl<D: Driver> ComputeManager<D> {
    /// `set_host_enabled`: the COMPUTE_STATUS_DISABLED trait follows.
    pub async fn set_host_enabled(&self, enabled: bool) {
        if let Some(records) = self.records.get() {
            records.disabled.store(!enabled, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = self.registrar.sync_traits(records).await {
                tracing::warn!(error = %e, "could not update the provider's COMPUTE_STATUS_DISABLED trait");
            }
        }
    }

    /// Start-up recovery of every instance Nova places on this host.
    pub async fn init_host(&self, ctx: &RequestContext) -> Result<(), OpError> {
        self.destroy_evacuated_instances(ctx).await;
        self.fail_interrupted_evacuations(ctx).await;
        let instances = self.conductor.instances_on_host(ctx).await?;
        tracing::info!(count = instances.len(), "recovering instances of this host");
        for i in instances {
            let uuid = i.uuid().to_string();
            if let Err(e) = self.init_instance(ctx, i).await {
                tracing::warn!(instance = %uuid, error = %e, "start-up recovery of the instance failed");
            }
        }
        Ok(())
    }

    /// Nova's `_destroy_evacuated_instances`: the instances evacuated
    /// away while this host was down lose their container here (never
    /// started again) and this host's share of their allocation; their
    /// migrations end `completed`. Best effort: failures are logged.
    pub async fn destroy_evacuated_instances(&self, ctx: &RequestContext) {
        let evacuations = match self.conductor.evacuations_from_host(ctx).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the evacuations from this host");
                return;
            }
        };
        if evacuations.is_empty() {
            return;
        }
        let local: std::collections::HashSet<String> = match self.driver.list_instances().await {
            Ok(list) => list.into_iter().map(|c| c.uuid).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list this host's containers; evacuated ones stay for now");
                return;
            }
        };
        let provider = self.records.get().map(|r| r.node_uuid.clone());
        for mut m in evacuations {
            let uuid = m.instance_uuid().to_string();
            let instance = self.conductor.instance_get(ctx, &uuid).await.ok();
            if local.contains(&uuid) {
                tracing::info!(instance = %uuid, "destroying the container of an instance evacuated from this host");
                let ni = instance.as_ref().map(|i| self.network_info_of(i)).unwrap_or_default();
                self.end_console(ctx, &uuid).await;
                let destroyed = self.driver.destroy(&uuid, Duration::ZERO, &ni).await;
                self.consoles.close(&uuid);
                if let Err(e) = destroyed {
                    tracing::warn!(instance = %uuid, error = %e, "could not destroy the evacuated instance's container");
                    continue;
                }
            }
            if instance.is_some()
                && let (Some(p), Some(rp)) = (&self.placement, &provider)
                && let Err(e) = p.remove_provider(&uuid, rp).await
            {
                tracing::warn!(instance = %uuid, error = %e, "could not free the evacuated instance's allocation here");
                continue;
            }
            m.set_status("completed");
            if let Err(e) = self.conductor.migration_save(ctx, &mut m).await {
                tracing::warn!(instance = %uuid, error = %e, "could not complete the evacuation's migration");
            }
        }
    }

    /// Evacuations to this host that a crash of this service cut short:
    /// the instance is still the source's (Nova sets the destination only
    /// once the rebuild is done), so no start-up pass of Nova's looks at it
    /// and it would stay in REBUILD. Each ends as a failed evacuation does
    /// in Nova's `rebuild_instance`: whatever container it got here goes,
    /// the migration `failed`, this host's allocation for it deleted
    /// (`delete_allocation_for_evacuated_instance`, destination), and the
    /// instance ERROR with a fault, its task state cleared, so it can be
    /// evacuated again. Best effort: failures are logged.
    pub async fn fail_interrupted_evacuations(&self, ctx: &RequestContext) {
        let evacuations = match self.conductor.evacuations_to_host(ctx).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the evacuations to this host");
                return;
            }
        };
        let provider = self.records.get().map(|r| r.node_uuid.clone());
        for mut m in evacuations {
            let uuid = m.instance_uuid().to_string();
            let _lock = self.locks.lock(&uuid).await;
            let Ok(mut i) = self.conductor.instance_get(ctx, &uuid).await else { continue };
            let rebuilding = matches!(
                i.task_state(),
                Some(TaskState::Rebuilding | TaskState::RebuildBlockDeviceMapping | TaskState::RebuildSpawning)
            );
            if i.host() == Some(self.host()) || !rebuilding {
                continue; // landed here (init_instance's), or not ours to settle
            }
            tracing::warn!(instance = %uuid, "an evacuation to this host was interrupted by a restart of this service; setting ERROR");
            self.end_console(ctx, &uuid).await;
            if let Err(e) = self.driver.destroy(&uuid, Duration::ZERO, &self.network_info_of(&i)).await {
                tracing::warn!(instance = %uuid, error = %e, "could not remove the interrupted evacuation's container");
            }
            self.consoles.close(&uuid);
            m.set_status("failed");
            if let Err(e) = self.conductor.migration_save(ctx, &mut m).await {
                tracing::warn!(instance = %uuid, error = %e, "could not fail the interrupted evacuation's migration");
            }
            if let (Some(p), Some(rp)) = (&self.placement, &provider)
                && let Err(e) = p.remove_provider(&uuid, rp).await
            {
                tracing::warn!(instance = %uuid, error = %e, "could not free the interrupted evacuation's allocation here");
            }
            let e = OpError::Invalid(
                "the evacuation was interrupted by a restart of the destination's compute service".into(),
            );
            self.record_fault(ctx, &uuid, &e).await;
            self.set_error_state(ctx, &mut i, true).await;
        }
    }

    async fn init_instance(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let vm_state = i.vm_state();
        let task_state = i.task_state();
        let has_task = i.has_task_state();
        if matches!(vm_state, Some(VmState::Deleted | VmState::SoftDeleted)) && !has_task {
            return Ok(());
        }
        if vm_state == Some(VmState::Building) || task_state.is_some_and(TaskState::is_build) {
            tracing::warn!(instance = %uuid, "the build was interrupted by a restart of this service; setting ERROR");
            let _ = self.driver.destroy(&uuid, Duration::ZERO, &Vec::new()).await;
            let e = OpError::Invalid("the build was interrupted by a restart of the compute service".into());
            self.record_fault(ctx, &uuid, &e).await;
            self.set_error_state(ctx, &mut i, true).await;
            return Ok(());
        }
        if matches!(
            task_state,
            Some(TaskState::Rebuilding | TaskState::RebuildBlockDeviceMapping | TaskState::RebuildSpawning)
        ) {
            // As Nova: a rebuild cut short ends in ERROR (rebuild again). Of
            // the two containers, the new one stays if it was made, else
            // the old one is put back; never both.
            tracing::warn!(instance = %uuid, "the rebuild was interrupted by a restart of this service; setting ERROR");
            let settled = match self.driver.get_info(&uuid).await {
                Ok(_) => self.driver.discard_set_aside(&uuid).await,
                Err(_) => self.driver.restore_set_aside(&uuid).await.map(|_| ()),
            };
            if let Err(e) = settled {
                tracing::warn!(instance = %uuid, error = %e, "could not settle the interrupted rebuild's containers");
            }
            let e = OpError::Invalid("the rebuild was interrupted by a restart of the compute service".into());
            self.record_fault(ctx, &uuid, &e).await;
            i.set_power_state(self.power_state_of(&uuid).await.unwrap_or(PowerState::NoState));
            self.set_error_state(ctx, &mut i, true).await;
            return Ok(());
        }
        if matches!(task_state, Some(TaskState::ResizeMigrated | TaskState::ResizeFinish | TaskState::ResizeReverting))
        {
            // As Nova's _init_instance: a move between two of its steps (the
            // next step's cast may still be queued for this host) is left to
            // that step. Clearing the task state would make the step find
            // the instance changed and drop the move half-way.
            tracing::info!(instance = %uuid, task = ?task_state, "a move in flight: left to its next step");
            return Ok(());
        }
        if task_state == Some(TaskState::Deleting) {
            tracing::info!(instance = %uuid, "finishing a deletion interrupted by a restart");
            drop(_lock);
            return self.terminate_instance(ctx, i).await;
        }
        let current = match self.driver.get_info(&uuid).await {
            Ok(info) => info.state,
            Err(VirtError::NotFound(_)) => PowerState::NoState,
            Err(e) => return Err(e.into()),
        };
        match task_state {
            Some(t) if t.is_snapshot() => {
                tracing::info!(instance = %uuid, task = %t, "resetting a snapshot interrupted by a restart");
                if current == PowerState::Paused && !matches!(vm_state, Some(VmState::Paused | VmState::Suspended)) {
                    // The engine pauses during commit; thaw what we froze.
                    let _ = self.driver.unpause(&uuid).await;
                }
            }
            Some(TaskState::ResizeMigrating) => {
                // Nova rolls a resize interrupted on the source back: the
                // instance runs here again as it did before.
                let was_stopped = i.system_metadata().get("old_vm_state").map(String::as_str) == Some("stopped");
                tracing::warn!(instance = %uuid, "a resize was interrupted by a restart here; rolling it back");
                self.roll_back_interrupted_resize(ctx, &i).await;
                if !was_stopped && current != PowerState::Running {
                    let _ = self.driver.power_on(&uuid).await;
                }
            }
            Some(TaskState::PoweringOff) => {
                if current == PowerState::Running {
                    let _ = self.driver.power_off(&uuid, self.settings.shutdown_timeout).await;
                }
                i.set_vm_state(VmState::Stopped);
            }
            Some(TaskState::PoweringOn) => {
                if current != PowerState::Running {
                    let _ = self.driver.power_on(&uuid).await;
                }
                i.set_vm_state(VmState::Active);
            }
            Some(t) if t.is_reboot() => {
                if current != PowerState::Running {
                    let _ = self.driver.power_on(&uuid).await;
                }
                i.set_vm_state(VmState::Active);
            }
            Some(t @ (TaskState::Pausing | TaskState::Suspending)) => {
                let _ = self.driver.pause(&uuid).await;
                i.set_vm_state(if t == TaskState::Pausing { VmState::Paused } else { VmState::Suspended });
            }
            Some(TaskState::Unpausing | TaskState::Resuming) => {
                let _ = self.driver.unpause(&uuid).await;
                i.set_vm_state(VmState::Active);
            }
            None if !has_task
                && vm_state == Some(VmState::Active)
                && self.settings.resume_guests_state_on_host_boot
                && matches!(current, PowerState::Shutdown | PowerState::Crashed) =>
            {
                tracing::info!(instance = %uuid, "starting the container again (resume_guests_state_on_host_boot)");
                let _ = self.driver.power_on(&uuid).await;
            }
            _ => {}
        }
        let now = self.power_state_of(&uuid).await?;
        if now == PowerState::Running
            && let Err(e) = self.ensure_plugged(&i).await
        {
            tracing::warn!(instance = %uuid, error = %e, "could not plug the instance's ports at start-up");
        }
        let mut changed = has_task;
        if has_task {
            i.set_task_state(None);
        }
        let reported = nova_power_state(now, i.vm_state());
        if i.power_state() != reported {
            i.set_power_state(reported);
            changed = true;
        }
        if changed {
            self.save(ctx, &mut i, Expected::Any).await?;
        }
        Ok(())
    }

    /// Brings one instance's Nova record in line with its container (Nova's
    /// `_sync_instance_power_state`); skipped while an operation runs on it.
    pub async fn sync_instance(&self, ctx: &RequestContext, uuid: &str) -> Result<(), OpError> {
        if self.is_busy(uuid) {
            return Ok(());
        }
        let _lock = self.locks.lock(uuid).await;
        let mut i = match self.conductor.instance_get(ctx, uuid).await {
            Ok(i) => i,
            Err(e) if e.is_nova("InstanceNotFound") => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if i.host() != Some(self.host()) || i.has_task_state() {
            return Ok(());
        }
        let info = match self.driver.get_info(uuid).await {
            Ok(info) => Some(info),
            Err(VirtError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let state = info.as_ref().map(|i| i.state).unwrap_or(PowerState::NoState);
        let vm_state = i.vm_state();
        let mut fault = None;
        match (vm_state, state) {
            (Some(VmState::Active), PowerState::Shutdown | PowerState::Crashed) => {
                tracing::warn!(instance = uuid, "the container stopped outside Nova; recording SHUTOFF");
                if info.as_ref().is_some_and(|x| x.oom_killed) {
                    fault = Some(OpError::Invalid(
                        "the container was killed for exceeding its memory limit (the flavor's RAM)".into(),
                    ));
                }
                i.set_vm_state(VmState::Stopped);
                i.set_power_state(PowerState::Shutdown);
                // What the host kept for the running container goes.
                self.driver.cleanup_stopped(uuid).await;
            }
            (Some(VmState::Stopped), PowerState::Running | PowerState::Paused) => {
                tracing::warn!(instance = uuid, "the container runs but Nova has it stopped; stopping it");
                let off = self.driver.power_off(uuid, self.settings.shutdown_timeout).await?;
                i.set_power_state(nova_power_state(off.state, Some(VmState::Stopped)));
            }
            (Some(VmState::Paused | VmState::Suspended), PowerState::Shutdown | PowerState::Crashed) => {
                i.set_vm_state(VmState::Stopped);
                i.set_power_state(PowerState::Shutdown);
            }
            _ => {
                let reported = nova_power_state(state, i.vm_state());
                if i.power_state() != reported {
                    i.set_power_state(reported);
                }
                if vm_state == Some(VmState::Active) && state == PowerState::Running {
                    self.ensure_plugged(&i).await?;
                }
            }
        }
        if i.obj.changes().is_empty() {
            return Ok(());
        }
        if let Some(e) = &fault {
            self.record_fault(ctx, uuid, e).await;
        }
        self.save(ctx, &mut i, Expected::idle()).await
    }

    /// Follows Docker's event stream until `stop`, syncing the instances it
    /// names. When the engine goes away (restart, upgrade) it waits for it to
    /// answer again, subscribes anew and reconciles every instance, so
    /// nothing that happened meanwhile stays wrong in Nova.
    pub async fn watch_events(self: Arc<Self>, stop: CancellationToken) {
        let mut first = true;
        while !stop.is_cancelled() {
            let mut events = self.driver.events();
            if !first {
                tracing::info!("Docker event stream resumed; reconciling all instances");
                self.sync_all(&RequestContext::admin()).await;
            }
            first = false;
            loop {
                let next = tokio::select! {
                    e = events.next() => e,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(ev)) => self.clone().on_event(ev),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Docker event stream failed");
                        break;
                    }
                    None => {
                        tracing::warn!("Docker event stream ended");
                        break;
                    }
                }
            }
            // Wait for the engine before subscribing again.
            let mut logged = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                match self.driver.ping().await {
                    Ok(()) => break,
                    Err(e) if !logged => {
                        tracing::warn!(error = %e, "the Docker engine does not answer; waiting for it");
                        logged = true;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn on_event(self: Arc<Self>, ev: crate::virt::LifecycleEvent) {
        metrics::global().inc("nova_docker_docker_events_total", &[("action", ev.action.as_str())]);
        let relevant = ["die", "stop", "kill", "oom", "start", "pause", "unpause", "destroy", "restart"];
        if !relevant.iter().any(|a| ev.action.starts_with(a)) {
            return;
        }
        tokio::spawn(async move {
            // Let the engine settle (die, then stop).
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = self.sync_instance(&RequestContext::admin(), &ev.uuid).await {
                tracing::warn!(instance = %ev.uuid, error = %e, "power-state sync failed");
            }
        });
    }

    /// A full pass: every instance of this host, and containers without one.
    /// Each completed pass is timed (`nova_docker_operation_duration_seconds`
    /// with operation `power_sync`, phase `pass`, and a debug line): the
    /// bench reads how long one pass over N instances takes.
    pub async fn sync_all(&self, ctx: &RequestContext) {
        let started = std::time::Instant::now();
        let containers = match self.driver.list_instances().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers for the power-state sync");
                return;
            }
        };
        let instances = match self.conductor.instances_on_host(ctx).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list instances for the power-state sync");
                return;
            }
        };
        self.census.replace(instances.iter().map(|i| (i.uuid(), i.vm_state_name().unwrap_or("unknown"))));
        for i in &instances {
            if let Err(e) = self.sync_instance(ctx, i.uuid()).await {
                tracing::warn!(instance = i.uuid(), error = %e, "power-state sync failed");
            }
        }
        self.driver.cleanup_host().await;
        let known: HashSet<&str> = instances.iter().map(|i| i.uuid()).collect();
        for c in containers.iter().filter(|c| !known.contains(c.uuid.as_str()) && !self.is_busy(&c.uuid)) {
            self.handle_orphan(ctx, &c.uuid, c.state).await;
        }
        let elapsed = started.elapsed();
        metrics::global().observe(
            "nova_docker_operation_duration_seconds",
            &[("operation", "power_sync"), ("phase", "pass")],
            elapsed,
        );
        tracing::debug!(
            instances = instances.len(),
            containers = containers.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "power-state sync pass done"
        );
    }

    /// A container of this host whose instance Nova does not place here.
    async fn handle_orphan(&self, ctx: &RequestContext, uuid: &str, state: PowerState) {
        match self.conductor.instance_get(ctx, uuid).await {
            Ok(i) if i.host() == Some(self.host()) && i.vm_state() != Some(VmState::Deleted) => return,
            Ok(i) if i.vm_state() != Some(VmState::Deleted) => {
                tracing::warn!(instance = uuid, nova_host = ?i.host(), "a container here belongs to an instance Nova places elsewhere; left alone");
                return;
            }
            Ok(_) => {}
            Err(e) if e.is_nova("InstanceNotFound") => {}
            Err(e) => {
                tracing::warn!(instance = uuid, error = %e, "cannot check a container's instance");
                return;
            }
        }
        let action = self.settings.running_deleted_instance_action;
        match action {
            DeletedInstanceAction::Noop => {}
            DeletedInstanceAction::Log => {
                tracing::warn!(
                    instance = uuid,
                    ?state,
                    "container of a deleted instance (running_deleted_instance_action=log)"
                )
            }
            DeletedInstanceAction::Shutdown => {
                if state == PowerState::Running || state == PowerState::Paused {
                    tracing::warn!(instance = uuid, "stopping the container of a deleted instance");
                    let _ = self.driver.power_off(uuid, self.settings.shutdown_timeout).await;
                }
            }
            DeletedInstanceAction::Reap => {
                tracing::warn!(instance = uuid, "removing the container of a deleted instance");
                self.end_console(ctx, uuid).await;
                if let Err(e) = self.driver.destroy(uuid, self.settings.shutdown_timeout, &Vec::new()).await {
                    tracing::warn!(instance = uuid, error = %e, "could not remove the container");
                }
                self.consoles.close(uuid);
            }
        }
    }
}

/// The power state Nova should record: a frozen container is PAUSED, or
/// SUSPENDED when Nova suspended it (containers have no memory image).
pub fn nova_power_state(engine: PowerState, vm_state: Option<VmState>) -> PowerState {
    match (engine, vm_state) {
        (PowerState::Paused, Some(VmState::Suspended)) => PowerState::Suspended,
        (PowerState::Crashed, _) => PowerState::Shutdown,
        (s, _) => s,
    }
}
