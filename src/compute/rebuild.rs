//! `rebuild_instance`: a new container from the (new or same) image with the
//! instance's name, ports and metadata, as Nova's `_do_rebuild_instance` with
//! its default implementation (destroy, then spawn) does, except that the old
//! container is only set aside (stopped and renamed) until the new one runs:
//! a rebuild that fails puts it back, so the instance stays usable, and the
//! image Nova shows is put back to the one the container runs. With
//! `recreate` (an evacuation) the instance comes here from a host that is
//! down: its ports are bound to this host and the migration ends `done`.

use serde_json::{Map, Value};

use super::errors::OpError;
use super::manager::ComputeManager;
use super::operation::{Claim, OnFailure, Operation};
use super::states::{PowerState, TaskState, VmState};
use crate::conductor::Expected;
use crate::objects::{Instance, Migration};
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// The arguments of `rebuild_instance` (compute RPC 6.x) this host reads.
#[derive(Debug, Clone, Default)]
pub struct RebuildRequest {
    /// The image to rebuild from (None or empty: the instance's own, as
    /// for an evacuation).
    pub image_ref: Option<String>,
    /// The image the instance ran before the API changed `image_ref`: what
    /// Nova shows again if the rebuild fails and the old container stays.
    pub orig_image_ref: Option<String>,
    /// The system metadata before the API copied the new image's
    /// properties into it (restored with `orig_image_ref`).
    pub orig_sys_metadata: Option<Map<String, Value>>,
    /// An evacuation to this host (`recreate`).
    pub evacuate: bool,
    /// The evacuation's migration record.
    pub migration: Option<Migration>,
    /// Whether the caller says the instance's disk is on shared storage (an
    /// evacuation); containers never are.
    pub on_shared_storage: Option<bool>,
    /// Files to write into the instance (the deprecated personality).
    pub injected_files: Vec<Value>,
    /// Whether a volume-backed root disk is to be re-imaged.
    pub reimage_boot_volume: bool,
    /// The vm_state an evacuated instance ends in (2.95: `stopped`).
    pub target_state: Option<String>,
    /// The RequestSpec primitive (Null when the conductor sent none): its
    /// scheduler hints name the server group an evacuation is checked
    /// against here.
    pub request_spec: Value,
}

impl RebuildRequest {
    /// Reads the RPC arguments.
    pub fn from_args(args: &Map<String, Value>) -> Self {
        let text = |k: &str| args.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        RebuildRequest {
            image_ref: text("image_ref"),
            orig_image_ref: text("orig_image_ref"),
            orig_sys_metadata: args.get("orig_sys_metadata").and_then(Value::as_object).cloned(),
            evacuate: args.get("recreate").and_then(Value::as_bool).unwrap_or(false),
            migration: args.get("migration").filter(|v| !v.is_null()).and_then(|v| Migration::from_primitive(v).ok()),
            on_shared_storage: args.get("on_shared_storage").and_then(Value::as_bool),
            injected_files: args.get("injected_files").and_then(Value::as_array).cloned().unwrap_or_default(),
            reimage_boot_volume: args.get("reimage_boot_volume").and_then(Value::as_bool).unwrap_or(false),
            target_state: text("target_state"),
            request_spec: args.get("request_spec").cloned().unwrap_or(Value::Null),
        }
    }
}

/// How far a rebuild went, which decides what a failure undoes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Nothing changed on the host yet.
    Untouched,
    /// The old container is set aside; it had this power state (None: the
    /// instance had no container here).
    SetAside(Option<PowerState>),
}

impl<D: Driver> ComputeManager<D> {
    /// `rebuild_instance`: see the module documentation.
    pub async fn rebuild_instance(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        req: RebuildRequest,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _slot = self.build_slot().await;
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        // An evacuation claims, fails or completes the migration the RPC
        // names: only this instance's evacuation (as check_migration for
        // the other moves), never another's that a buggy peer names.
        if req.evacuate
            && let Some(m) = &req.migration
            && (m.instance_uuid() != uuid || m.migration_type() != Some("evacuation"))
        {
            return Err(OpError::Nova(crate::rpc::RemoteError::bad_request(format!(
                "migration {} is not an evacuation of instance {uuid}",
                m.uuid()
            ))));
        }
        let claim = req.evacuate.then(|| Claim::AddedOnThisNode(req.migration.clone()));
        let op = Operation::new("compute_rebuild_instance").on_failure(OnFailure::EventOnly).holding(claim);
        let orig_vm_state = i.vm_state();
        let mut stage = Stage::Untouched;
        let r = self
            .run_held(ctx, &mut i, op, async |i| self.do_rebuild(ctx, i, &req, orig_vm_state, &mut stage).await)
            .await;
        let Err(e) = r else { return Ok(()) };
        if e.is_superseded() {
            // Deleted meanwhile: the delete removes both containers.
            return self.fail(ctx, &mut i, OnFailure::EventOnly, e).await;
        }
        let usable = match stage {
            Stage::Untouched => true,
            Stage::SetAside(before) => self.put_back(ctx, &mut i, before).await,
        };
        if usable && !req.evacuate {
            // The container runs the image it ran: Nova shows that one again.
            if let Some(orig) = &req.orig_image_ref {
                i.set("image_ref", orig.as_str());
            }
            if let Some(sys) = &req.orig_sys_metadata {
                i.set("system_metadata", Value::Object(sys.clone()));
            }
            if let Some(vm) = orig_vm_state {
                i.set_vm_state(vm);
            }
            self.fail(ctx, &mut i, OnFailure::RevertTask, e).await
        } else {
            let on_failure = OnFailure::ErrorState { clean_task_state: true, refresh_power: true };
            self.fail(ctx, &mut i, on_failure, e).await
        }
    }

    async fn do_rebuild(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        req: &RebuildRequest,
        orig_vm_state: Option<VmState>,
        stage: &mut Stage,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        refuse_what_containers_cannot_do(req)?;
        let image_id = req
            .image_ref
            .clone()
            .or_else(|| i.image_ref().map(str::to_string))
            .ok_or_else(|| OpError::Invalid("the instance has no image to rebuild from".into()))?;
        let mut group_lock = None;
        if req.evacuate && !req.request_spec.is_null() {
            // Nova's late server-group check of an evacuation: a parallel
            // scheduling (or a host forced past the scheduler) may break the
            // group's policy here. Rebuild has no reschedule: the evacuation
            // fails, its migration `failed` and this host's share of the
            // allocation given back (the claim), the instance in ERROR.
            group_lock = self.validate_group_policy(ctx, i, &req.request_spec, &Value::Null).await?;
        }
        let power = self.power_state_of(&uuid).await?;
        if req.evacuate && power != PowerState::NoState {
            // Nova's _check_instance_exists: an evacuation never lands on a
            // host that has the instance.
            return Err(OpError::Nova(crate::rpc::RemoteError::nova(
                "InstanceExists",
                format!("Instance {uuid} already exists."),
                409,
                serde_json::json!({}),
            )));
        }
        i.set_power_state(power);
        self.begin_task(ctx, i, TaskState::Rebuilding, Expected::task(TaskState::Rebuilding)).await?;
        // Nova's rebuild_claim: the evacuation names this host from here on.
        let mut migration = req.migration.clone().filter(|_| req.evacuate);
        if let Some(m) = migration.as_mut() {
            self.claim_migration_here(ctx, m).await?;
        }
        // The evacuation names this host now: the next member's check counts it.
        drop(group_lock);
        // The image first: a failure here leaves the old container as it was.
        let build = super::build::BuildRequest::default();
        let (meta, image) = self.build_image(ctx, &build, &image_id).await?;
        let ni = if req.evacuate {
            self.bind_ports_for_evacuation(ctx, i, migration.as_ref()).await?
        } else {
            self.network_info(ctx, i).await?
        };

        let timeout = self.shutdown_timeout(i, true);
        *stage = Stage::SetAside(self.driver.set_aside(&uuid, timeout).await?);
        self.begin_task(ctx, i, TaskState::RebuildBlockDeviceMapping, Expected::task(TaskState::Rebuilding)).await?;
        self.begin_task(ctx, i, TaskState::RebuildSpawning, Expected::task(TaskState::RebuildBlockDeviceMapping))
            .await?;
        self.create_container(i, &meta, &image, &ni, &Default::default()).await?;
        let stopped = match (req.evacuate, req.target_state.as_deref(), orig_vm_state) {
            (true, Some(target), _) => target == VmState::Stopped.as_str(),
            (_, _, Some(VmState::Stopped)) => true,
            _ => false,
        };
        let (vm, power) = if stopped {
            // A stopped instance stays stopped: its container is made, not
            // started (Nova starts and then stops it).
            (VmState::Stopped, PowerState::Shutdown)
        } else {
            let info = self.start_created(&uuid).await?;
            self.plug_vifs(&uuid, &ni, false).await?;
            (VmState::Active, info.state)
        };
        self.driver.discard_set_aside(&uuid).await?;
        i.set("launched_at", Self::now());
        if req.evacuate {
            self.take_over(i);
        }
        self.settle(ctx, i, vm, power, Expected::task(TaskState::RebuildSpawning)).await?;
        if let Some(mut m) = migration {
            m.set_status("done");
            self.conductor.migration_save(ctx, &mut m).await?;
        }
        Ok(())
    }

    /// The instance is this host's now (an evacuation's end: Nova's
    /// `finish_evacuation`).
    fn take_over(&self, i: &mut Instance) {
        i.set("host", self.host());
        i.set("node", self.host());
        if self.conductor.release().instance_compute_id
            && let Some(id) =
                self.records.get().map(|r| r.node_id.load(std::sync::atomic::Ordering::SeqCst)).filter(|id| *id > 0)
        {
            i.set("compute_id", id);
        }
    }

    /// Puts the container set aside back (started again if it ran, its
    /// ports plugged); whether the instance is usable as before.
    async fn put_back(&self, ctx: &RequestContext, i: &mut Instance, before: Option<PowerState>) -> bool {
        let uuid = i.uuid().to_string();
        match self.driver.restore_set_aside(&uuid).await {
            Ok(true) => {}
            // It had no container here: nothing to put back, and the new one goes.
            Ok(false) => {
                let _ = self.driver.destroy(&uuid, std::time::Duration::ZERO, &Vec::new()).await;
                return before.is_none();
            }
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e, "could not put the old container back");
                return false;
            }
        }
        if matches!(before, Some(PowerState::Running | PowerState::Paused)) {
            match self.power_on_and_replug(ctx, i).await {
                Ok(info) => i.set_power_state(info.state),
                Err(e) => {
                    tracing::warn!(instance = %uuid, error = %e, "the old container did not start again");
                    return false;
                }
            }
        } else {
            i.set_power_state(PowerState::Shutdown);
        }
        true
    }
}

/// What a container host cannot honour in a rebuild, refused before
/// anything changes.
fn refuse_what_containers_cannot_do(req: &RebuildRequest) -> Result<(), OpError> {
    if req.reimage_boot_volume {
        return Err(OpError::Invalid("re-imaging a boot volume is not supported by nova-docker (no volumes)".into()));
    }
    if !req.injected_files.is_empty() {
        return Err(OpError::Invalid(
            "injected files (personality) are not supported by nova-docker: use user data".into(),
        ));
    }
    if req.evacuate && req.on_shared_storage == Some(true) {
        return Err(OpError::Nova(crate::rpc::RemoteError::nova(
            "InvalidSharedStorage",
            "Invalid state of instance files on shared storage: a container's disk is never on shared storage",
            400,
            serde_json::json!({}),
        )));
    }
    if let Some(t) = req.target_state.as_deref()
        && ![VmState::Active.as_str(), VmState::Stopped.as_str()].contains(&t)
    {
        return Err(OpError::Invalid(format!("an evacuated instance cannot end {t:?}")));
    }
    Ok(())
}
