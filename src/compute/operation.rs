//! One way every instance operation runs, what Nova writes once as
//! `@wrap_instance_event`, `@reverts_task_state` and `@wrap_instance_fault`:
//! the instance's lock (two operations on one instance never interleave),
//! the busy mark (power sync stays away), the instance-action event recorded
//! at the start and finish with the request's context, and on failure the
//! fault and the instance's state put back as Nova expects. An operation is
//! then only its own steps: [`ComputeManager::run`] with an [`Operation`] and
//! a body that moves the instance with [`ComputeManager::begin_task`] and
//! [`ComputeManager::settle`].
//!
//! What Nova's scheduler claimed in Placement before the operation reached
//! this host (a [`Claim`]) is given back whenever the operation fails or is
//! refused, as Python nova-compute does in each operation's `except` block
//! (`_revert_allocation`, `delete_allocation_for_evacuated_instance`,
//! `delete_allocation_for_instance`): a refusal never shrinks the host's
//! capacity.
//!
//! An operation superseded by another request (the instance was deleted or
//! its task state changed: `UnexpectedTaskStateError`, `InstanceNotFound`)
//! stops quietly: no fault, no revert, nothing more written.

use std::borrow::Cow;
use std::future::Future;
use std::time::Instant;

use super::errors::OpError;
use super::manager::ComputeManager;
use crate::conductor::Expected;
use crate::metrics;
use crate::objects::states::{PowerState, TaskState, VmState};
use crate::objects::{Instance, Migration};
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// What a failed operation leaves on the instance (besides the action event,
/// which always records the failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// A fault, and the task state cleared (`@wrap_instance_fault` and
    /// `@reverts_task_state`): the instance keeps its vm_state.
    RevertTask,
    /// A fault, and vm_state ERROR (`_set_instance_obj_error_state`).
    ErrorState {
        /// Whether the task state is cleared too.
        clean_task_state: bool,
        /// Whether the power state is read again from the driver first.
        refresh_power: bool,
    },
    /// A fault only.
    FaultOnly,
    /// Nothing beyond the event: the caller handles the failure (an RPC call
    /// whose caller gets the error, or an operation with its own clean-up,
    /// which then calls [`ComputeManager::fail`]).
    EventOnly,
}

/// What Nova claimed for an operation before casting it here, and so what a
/// failure or refusal gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// A move to this host (`prep_resize` at the destination): the
    /// scheduler moved the instance's source allocation to the migration's
    /// uuid and gave the instance one on this host. Given back as Nova's
    /// `_revert_allocation`: the migration's allocation moved back to the
    /// instance (replacing this host's), and the migration's status set to
    /// `error` (`errors_out_migration`).
    MovedToMigration(Migration),
    /// An evacuation to this host: the scheduler added this host's
    /// resources to the instance's allocation. Given back as Nova's
    /// `delete_allocation_for_evacuated_instance(node_type='destination')`:
    /// this host's provider removed from it, the migration `failed`.
    AddedOnThisNode(Option<Migration>),
    /// An unshelve of an offloaded instance: everything the instance holds
    /// was claimed for this host. Given back as Nova's
    /// `delete_allocation_for_instance`.
    WholeInstance,
}

/// How one operation runs.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The instance-action event (`compute_<method>`).
    pub event: Cow<'static, str>,
    /// What a failure leaves on the instance.
    pub on_failure: OnFailure,
    /// What Placement holds for the operation, given back if it fails.
    pub claim: Option<Claim>,
}

impl Operation {
    /// An operation recorded as `event` that reverts the task state on failure.
    pub fn new(event: impl Into<Cow<'static, str>>) -> Self {
        Operation { event: event.into(), on_failure: OnFailure::RevertTask, claim: None }
    }

    /// The same operation holding `claim`, given back when it fails.
    pub fn holding(mut self, claim: Option<Claim>) -> Self {
        self.claim = claim;
        self
    }

    /// The same operation with another failure policy.
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }
}

impl<D: Driver> ComputeManager<D> {
    /// Runs `body` as the operation `op` on `i`: takes the instance's lock,
    /// marks it busy, records the action event around the body, and on
    /// failure applies `op.on_failure`. The error is returned, superseded
    /// ones included (see [`ComputeManager::operate`] for operations that
    /// end quietly then).
    pub async fn run<T>(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        op: Operation,
        body: impl AsyncFnOnce(&mut Instance) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        self.run_held(ctx, i, op, body).await
    }

    /// [`ComputeManager::run`] for a caller that already holds the
    /// instance's lock and busy mark (it read the instance under them).
    pub async fn run_held<T>(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        op: Operation,
        body: impl AsyncFnOnce(&mut Instance) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let uuid = i.uuid().to_string();
        let result = self.with_event(ctx, &uuid, &op.event, body(i)).await;
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                if let Some(claim) = op.claim {
                    self.give_back(ctx, i.uuid(), claim, e.is_superseded()).await;
                }
                self.apply_failure(ctx, i, op.on_failure, &e).await;
                Err(e)
            }
        }
    }

    /// Gives back what Nova claimed for a failed or refused operation (see
    /// [`Claim`]), best effort: a Placement or conductor failure is logged,
    /// the operation's own error is what the caller reports. When the
    /// instance was deleted or changed meanwhile (`superseded`), a
    /// migration's allocation is deleted rather than moved back to an
    /// instance that may be gone.
    pub async fn give_back(&self, ctx: &RequestContext, uuid: &str, claim: Claim, superseded: bool) {
        let placement = self.placement.as_deref();
        let (result, migration, status) = match claim {
            Claim::MovedToMigration(m) => {
                let r = match (placement, Some(m.uuid())) {
                    (Some(p), Some(mig)) if superseded => p.delete_allocation(mig).await,
                    (Some(p), Some(mig)) => p.move_allocations(mig, uuid).await.map(|moved| {
                        if !moved {
                            tracing::warn!(
                                instance = uuid,
                                migration = mig,
                                "the migration held no allocation to give back"
                            );
                        }
                    }),
                    _ => Ok(()),
                };
                (r, Some(m), "error")
            }
            Claim::AddedOnThisNode(m) => {
                let provider = self.records.get().map(|r| r.node_uuid.clone());
                let r = match (placement, provider) {
                    (Some(p), Some(rp)) => p.remove_provider(uuid, &rp).await,
                    _ => Ok(()),
                };
                (r, m, "failed")
            }
            Claim::WholeInstance => {
                let r = match placement {
                    Some(p) => p.delete_allocation(uuid).await,
                    None => Ok(()),
                };
                (r, None, "")
            }
        };
        match result {
            Ok(()) => tracing::info!(instance = uuid, "gave back what Placement held for the failed operation"),
            Err(e) => tracing::warn!(instance = uuid, error = %e, "could not give back the operation's allocation"),
        }
        if let Some(mut m) = migration {
            m.set_status(status);
            if let Err(e) = self.conductor.migration_save(ctx, &mut m).await {
                tracing::warn!(instance = uuid, error = %e, "could not record the migration's status {status}");
            }
        }
    }

    /// [`ComputeManager::run`] for an operation with no result: superseded
    /// by another request, it ends quietly with `Ok`.
    pub async fn operate(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        op: Operation,
        body: impl AsyncFnOnce(&mut Instance) -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        let r = self.run(ctx, &mut i, op, body).await;
        quiet_if_superseded(i.uuid(), r)
    }

    /// Applies `on_failure` for `err` after the operation's own clean-up
    /// (for operations run with [`OnFailure::EventOnly`]); superseded ends
    /// quietly with `Ok`.
    pub async fn fail(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        on_failure: OnFailure,
        err: OpError,
    ) -> Result<(), OpError> {
        self.apply_failure(ctx, i, on_failure, &err).await;
        quiet_if_superseded(i.uuid(), Err(err))
    }

    async fn apply_failure(&self, ctx: &RequestContext, i: &mut Instance, on_failure: OnFailure, e: &OpError) {
        if e.is_superseded() || on_failure == OnFailure::EventOnly {
            return;
        }
        tracing::warn!(instance = i.uuid(), error = %e, "operation failed");
        self.record_fault(ctx, i.uuid(), e).await;
        match on_failure {
            OnFailure::RevertTask => self.revert_task_state(ctx, i).await,
            OnFailure::ErrorState { clean_task_state, refresh_power } => {
                if refresh_power {
                    let now = self.power_state_of(i.uuid()).await.unwrap_or(PowerState::NoState);
                    i.set_power_state(now);
                }
                self.set_error_state(ctx, i, clean_task_state).await;
            }
            OnFailure::FaultOnly | OnFailure::EventOnly => {}
        }
    }

    /// Moves the instance into `task`, saved only if its task state is
    /// `expected` (another request that changed it wins).
    pub async fn begin_task(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        task: TaskState,
        expected: Expected,
    ) -> Result<(), OpError> {
        i.set_task_state(Some(task));
        self.save(ctx, i, expected).await
    }

    /// The end of an operation: `vm` and `power` with no task, saved only if
    /// the task state is `expected`.
    pub async fn settle(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        vm: VmState,
        power: PowerState,
        expected: Expected,
    ) -> Result<(), OpError> {
        i.set_power_state(power);
        i.set_vm_state(vm);
        i.set_task_state(None);
        self.save(ctx, i, expected).await
    }

    /// Records the `event` start and finish around `op`, with the request's
    /// context (instance actions are found by its request id).
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
        instance.set_task_state(None);
        if let Err(e) = self.conductor.instance_save(ctx, instance, Expected::Any).await {
            tracing::warn!(instance = instance.uuid(), error = %e, "could not revert the task state");
        }
    }

    /// Marks the instance in error, as `_set_instance_obj_error_state` does.
    pub async fn set_error_state(&self, ctx: &RequestContext, instance: &mut Instance, clean_task_state: bool) {
        instance.set_vm_state(VmState::Error);
        if clean_task_state {
            instance.set_task_state(None);
        }
        if let Err(e) = self.conductor.instance_save(ctx, instance, Expected::Any).await {
            tracing::warn!(instance = instance.uuid(), error = %e, "could not set the instance in error");
        }
    }
}

fn quiet_if_superseded(uuid: &str, r: Result<(), OpError>) -> Result<(), OpError> {
    match r {
        Err(e) if e.is_superseded() => {
            tracing::info!(instance = uuid, error = %e, "operation superseded; nothing more to do");
            Ok(())
        }
        other => other,
    }
}
