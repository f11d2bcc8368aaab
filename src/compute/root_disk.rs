//! Root disks over their flavor's `root_gb`, where the storage driver cannot
//! enforce a quota: the driver measures each running instance's writable
//! layer, and this module decides what Nova sees. With
//! `root_disk_over_limit_action = stop` an instance over its limit is
//! stopped the way Nova's power sync stops one (a `stop` instance action,
//! `powering-off`, then SHUTOFF with power state SHUTDOWN) and an instance
//! fault says why; with `log` only this service's log says so.

use super::errors::OpError;
use super::manager::ComputeManager;
use super::operation::Operation;
use super::states::{TaskState, VmState};
use crate::conductor::Expected;
use crate::config::OverLimitAction;
use crate::rpc::RequestContext;
use crate::virt::{Driver, RootDiskUsage};

const MIB: u64 = 1 << 20;

/// The fault an instance stopped for its root disk gets (no host path in it:
/// tenants read faults).
pub fn over_limit_message(u: &RootDiskUsage) -> String {
    format!(
        "The instance wrote {} MiB to its root disk, over its limit of {} GiB (the flavor's root_gb): \
         the compute host stopped it. After a start, free space before the next measurement.",
        u.used_bytes / MIB,
        u.limit_gb
    )
}

impl<D: Driver> ComputeManager<D> {
    /// One measurement pass: every running instance with a limit measured,
    /// those over it handled as configured.
    pub async fn enforce_root_disks(&self) {
        let usage = match self.driver.root_disk_usage().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the instances' root disks");
                return;
            }
        };
        for u in usage.iter().filter(|u| u.over_limit()) {
            match self.settings.docker.root_disk_over_limit_action {
                OverLimitAction::Log => tracing::warn!(
                    instance = %u.uuid,
                    used_mib = u.used_bytes / MIB,
                    limit_gib = u.limit_gb,
                    "root disk over its limit (root_disk_over_limit_action = log)"
                ),
                OverLimitAction::Stop => {
                    if let Err(e) = self.stop_over_limit(u).await {
                        tracing::warn!(instance = %u.uuid, error = %e, "could not stop an instance over its root disk limit");
                    }
                }
            }
        }
    }

    /// Stops an instance over its root disk limit, unless an operation is
    /// running on it or Nova does not have it ACTIVE here (the next pass
    /// measures it again).
    async fn stop_over_limit(&self, u: &RootDiskUsage) -> Result<(), OpError> {
        if self.is_busy(&u.uuid) {
            return Ok(());
        }
        let ctx = RequestContext::admin();
        let _lock = self.locks.lock(&u.uuid).await;
        let _busy = self.mark_busy(&u.uuid);
        let mut i = match self.conductor.instance_get(&ctx, &u.uuid).await {
            Ok(i) => i,
            Err(e) if e.is_nova("InstanceNotFound") => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if i.host() != Some(self.host()) || i.vm_state() != Some(VmState::Active) || i.has_task_state() {
            return Ok(());
        }
        tracing::warn!(
            instance = %u.uuid,
            used_mib = u.used_bytes / MIB,
            limit_gib = u.limit_gb,
            "root disk over its limit: stopping the instance"
        );
        // As the compute API's stop: the action, then powering-off.
        self.conductor.action_start(&ctx, &u.uuid, "stop").await;
        self.begin_task(&ctx, &mut i, TaskState::PoweringOff, Expected::idle()).await?;
        let stopped = self
            .run_held(&ctx, &mut i, Operation::new("compute_stop_instance"), async |i| {
                let state = self.power_off(&u.uuid, self.settings.shutdown_timeout).await?;
                self.settle(&ctx, i, VmState::Stopped, state, Expected::task(TaskState::PoweringOff)).await
            })
            .await;
        match stopped {
            Err(e) if e.is_superseded() => {}
            r => r?,
        }
        self.record_fault(&ctx, &u.uuid, &OpError::Invalid(over_limit_message(u))).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_names_sizes_not_paths() {
        let u = RootDiskUsage { uuid: "u".into(), used_bytes: 1100 * MIB, limit_gb: 1 };
        assert!(u.over_limit());
        let m = over_limit_message(&u);
        assert!(m.contains("1100 MiB") && m.contains("1 GiB"), "{m}");
        assert!(!m.contains("/var") && m.len() <= 255, "{m}");
        assert!(!RootDiskUsage { uuid: "u".into(), used_bytes: 1 << 30, limit_gb: 1 }.over_limit());
    }
}
