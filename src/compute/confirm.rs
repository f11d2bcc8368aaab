//! Automatic confirmation of resizes (`[DEFAULT] resize_confirm_window`), as
//! Nova's `_poll_unconfirmed_resizes` does on the destination: a move that
//! landed here (`finished`) and was left unconfirmed for the window is
//! confirmed the way nova-api's `confirm_resize` does it, which is what the
//! Python periodic task calls in its own process: the source's compute
//! service must be up, the migration goes `confirming`, a `confirmResize`
//! action is recorded, and `confirm_resize` is cast to the source, which
//! removes the old container and drops the migration's allocation. All of it
//! goes through the conductor and the compute RPC API, as for any other
//! step of a move.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::errors::OpError;
use super::manager::ComputeManager;
use super::states::{TaskState, VmState};
use crate::objects::{Instance, Migration, Service};
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// The longest time between two passes (Nova's periodic tasks run at
/// least every `periodic_interval_max`, 60 s by default).
const MAX_POLL: Duration = Duration::from_secs(60);

/// Nova's `servicegroup` DB driver `is_up`: not forced down, and its last
/// heartbeat (`last_seen_up`, else `updated_at`, else `created_at`) at most
/// `down_time` away from `now`.
pub fn service_is_up(service: &Service, now: DateTime<Utc>, down_time: Duration) -> bool {
    if service.forced_down() {
        return false;
    }
    let seen = ["last_seen_up", "updated_at", "created_at"]
        .iter()
        .find_map(|k| service.obj.get_str(k).and_then(crate::objects::time::parse));
    let Some(seen) = seen else { return false };
    (now - seen).abs().to_std().is_ok_and(|elapsed| elapsed <= down_time)
}

/// What a pass does with one unconfirmed migration, from its instance as
/// it is now (Nova's checks, in its order).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Confirm it.
    Confirm,
    /// Leave it for a later pass (being deleted, or still finishing).
    Skip,
    /// Mark the migration `error`, for this reason.
    Error(String),
}

/// Nova's checks of `_poll_unconfirmed_resizes` on the instance (None: not found).
pub fn verdict(i: Option<&Instance>) -> Verdict {
    let Some(i) = i else { return Verdict::Error("Instance not found".into()) };
    if i.vm_state() == Some(VmState::Error) {
        return Verdict::Error("In ERROR state".into());
    }
    if let Some(TaskState::Deleting | TaskState::SoftDeleting | TaskState::ResizeFinish) = i.task_state() {
        return Verdict::Skip;
    }
    if i.vm_state() != Some(VmState::Resized) || i.task_state().is_some() {
        return Verdict::Error(format!(
            "In states {}/{}, not RESIZED/None",
            i.vm_state().map_or("None", |v| v.as_str()),
            i.task_state().map_or("None", |t| t.as_str())
        ));
    }
    Verdict::Confirm
}

impl<D: Driver> ComputeManager<D> {
    /// One pass of `_poll_unconfirmed_resizes`.
    pub async fn poll_unconfirmed_resizes(&self, ctx: &RequestContext, window: Duration) {
        let migrations = match self.conductor.unconfirmed_migrations(ctx, window).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the unconfirmed migrations");
                return;
            }
        };
        if !migrations.is_empty() {
            tracing::info!(
                count = migrations.len(),
                confirm_window = window.as_secs(),
                "found unconfirmed migrations older than the confirm window"
            );
        }
        for mut m in migrations {
            let uuid = m.instance_uuid().to_string();
            let instance = match self.conductor.instance_get(ctx, &uuid).await {
                Ok(i) => Some(i),
                Err(e) if e.is_nova("InstanceNotFound") => None,
                Err(e) => {
                    tracing::warn!(instance = %uuid, error = %e, "cannot read the instance of an unconfirmed migration");
                    continue;
                }
            };
            match verdict(instance.as_ref()) {
                Verdict::Skip => {}
                Verdict::Error(reason) => {
                    tracing::warn!(instance = %uuid, migration = m.uuid(), reason = %reason, "setting migration to error");
                    m.set_status("error");
                    if let Err(e) = self.conductor.migration_save(ctx, &mut m).await {
                        tracing::warn!(instance = %uuid, error = %e, "could not mark the migration in error");
                    }
                }
                Verdict::Confirm => {
                    let Some(i) = instance else { continue };
                    tracing::info!(instance = %uuid, migration = m.uuid(), "automatically confirming the migration");
                    if let Err(e) = self.confirm_resize_as_the_api_does(ctx, &i, m).await {
                        tracing::info!(instance = %uuid, error = %e, "error auto-confirming resize; will retry later");
                    }
                }
            }
        }
    }

    /// nova-api's `confirm_resize` with the migration given: the source up,
    /// the migration `confirming`, the `confirmResize` action, the cast.
    async fn confirm_resize_as_the_api_does(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        mut m: Migration,
    ) -> Result<(), OpError> {
        let source = m.source_compute().map(str::to_string).unwrap_or_default();
        let up = match self.conductor.compute_service_of(ctx, &source).await? {
            Some(service) => service_is_up(&service, Utc::now(), self.settings.service_down_time),
            None => false,
        };
        if !up {
            return Err(OpError::Invalid(format!("the source compute service {source:?} is not up")));
        }
        m.set_status("confirming");
        self.conductor.migration_save(ctx, &mut m).await?;
        self.conductor.action_start(ctx, i.uuid(), "confirmResize").await;
        let args = json!({"instance": i.to_primitive(), "migration": m.to_primitive()});
        self.conductor.cast_compute(ctx, &source, "confirm_resize", args).await?;
        Ok(())
    }
}

/// Starts the passes when `resize_confirm_window` is above 0: every
/// minute, or every window when shorter.
pub fn spawn<D: Driver + 'static>(manager: Arc<ComputeManager<D>>, stop: CancellationToken) {
    let Some(window) = manager.settings.resize_confirm_window else { return };
    let every = window.min(MAX_POLL);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            manager.poll_unconfirmed_resizes(&RequestContext::admin(), window).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Service {
        let p = json!({"nova_object.name": "Service", "nova_object.namespace": "nova", "nova_object.version": "1.22",
            "nova_object.data": v});
        Service::from_primitive(&p).unwrap()
    }

    #[test]
    fn a_service_is_up_while_its_heartbeat_is_recent_and_it_is_not_forced_down() {
        let now = crate::objects::time::parse("2026-12-06T12:00:00Z").unwrap();
        let minute = Duration::from_secs(60);
        assert!(service_is_up(&service(json!({"updated_at": "2026-12-06T11:59:30Z"})), now, minute));
        assert!(!service_is_up(&service(json!({"updated_at": "2026-12-06T11:58:00Z"})), now, minute));
        assert!(!service_is_up(
            &service(json!({"updated_at": "2026-12-06T11:59:30Z", "forced_down": true})),
            now,
            minute
        ));
        // last_seen_up wins over updated_at; nothing at all: down.
        assert!(!service_is_up(
            &service(json!({"updated_at": "2026-12-06T11:59:30Z", "last_seen_up": "2026-12-06T11:00:00Z"})),
            now,
            minute
        ));
        assert!(!service_is_up(&service(json!({})), now, minute));
    }
}
