//! Reclaiming soft-deleted instances (`reclaim_instance_interval`), as
//! Nova's `_reclaim_queued_deletes` does: with the option above 0, nova-api
//! soft-deletes a server (`soft_delete_instance`: stopped, vm_state
//! `soft-delete`, `deleted_at` set) and it can be restored until this host,
//! every `reclaim_instance_interval` seconds, deletes for good the
//! soft-deleted instances whose `deleted_at` is at least that old.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::manager::ComputeManager;
use super::states::VmState;
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// Whether a soft-deleted instance is due: idle (no task state) and deleted
/// at least `interval` ago; one without `deleted_at` is due at once, as in
/// Nova's `_deleted_old_enough`.
pub fn due(instance: &Instance, now: DateTime<Utc>, interval: Duration) -> bool {
    if instance.vm_state() != Some(VmState::SoftDeleted) || instance.task_state().is_some() {
        return false;
    }
    match instance.obj.get_str("deleted_at").and_then(crate::objects::time::parse) {
        Some(deleted_at) => (now - deleted_at).to_std().is_ok_and(|age| age >= interval),
        None => true,
    }
}

impl<D: Driver> ComputeManager<D> {
    /// One pass: deletes every soft-deleted instance of this host that is
    /// due, through the ordinary delete (container, ports, allocation, row).
    pub async fn reclaim_queued_deletes(&self, ctx: &RequestContext, interval: Duration) {
        let instances = match self.conductor.instances_on_host(ctx).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this host's instances to reclaim soft-deleted ones");
                return;
            }
        };
        let now = Utc::now();
        for i in instances.into_iter().filter(|i| due(i, now, interval)) {
            let uuid = i.uuid().to_string();
            tracing::info!(instance = %uuid, "reclaiming a soft-deleted instance (reclaim_instance_interval)");
            if let Err(e) = self.terminate_instance(ctx, i).await {
                tracing::warn!(instance = %uuid, error = %e, "reclaiming the soft-deleted instance failed");
            }
        }
    }
}

/// Starts the reclaim passes when `reclaim_instance_interval` is above 0.
pub fn spawn<D: Driver + 'static>(manager: Arc<ComputeManager<D>>, stop: CancellationToken) {
    let Some(every) = manager.settings.reclaim_instance_interval else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            manager.reclaim_queued_deletes(&RequestContext::admin(), every).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(vm_state: &str, task_state: Option<&str>, deleted_at: Option<&str>) -> Instance {
        let v = json!({"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.8",
            "nova_object.data": {"uuid": "6f1b2c1e-0000-4000-8000-000000000001", "vm_state": vm_state,
                "task_state": task_state, "deleted_at": deleted_at}});
        Instance::from_primitive(&v).unwrap()
    }

    #[test]
    fn only_idle_soft_deleted_instances_old_enough_are_due() {
        let now = crate::objects::time::parse("2026-12-06T12:00:00Z").unwrap();
        let hour = Duration::from_secs(3600);
        assert!(due(&instance("soft-delete", None, Some("2026-12-06T11:00:00Z")), now, hour));
        assert!(!due(&instance("soft-delete", None, Some("2026-12-06T11:00:01Z")), now, hour));
        // Being restored, or not soft-deleted: never.
        assert!(!due(&instance("soft-delete", Some("restoring"), Some("2026-12-01T00:00:00Z")), now, hour));
        assert!(!due(&instance("active", None, Some("2026-12-01T00:00:00Z")), now, hour));
        // No deleted_at: due at once (Nova's _deleted_old_enough).
        assert!(due(&instance("soft-delete", None, None), now, hour));
    }
}
