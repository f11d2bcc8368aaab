//! Resize and cold migration, Nova's whole flow (`nova/compute/manager.py`):
//! `prep_resize` on the destination, `resize_instance` on the source,
//! `finish_resize` on the destination, then `confirm_resize` on the source,
//! or `revert_resize` on the destination and `finish_revert_resize` on the
//! source. Each RPC method is one operation on the shared framework
//! ([`super::operation`]); the migration record moves through Nova's
//! statuses and the allocations through Placement as Python does them (the
//! conductor moved the source allocation to the migration's uuid; confirm
//! drops it, revert and every failure before the instance lands give it
//! back to the instance, a failure after it lands drops it).
//!
//! How the container moves: the source stops it and **commits** it (the
//! writable layer becomes one image layer, files and all) and the new
//! container is **created again** from that image with the new flavor's
//! spec, exactly as a build makes one. `docker update` was not used: it
//! changes only cgroup limits, not the root disk quota (`StorageOpt`, fixed
//! at create), the root disk label the measure mode reads, the flavor's
//! capabilities or read-only root: a resize would then silently keep the old
//! flavor's disk and isolation. Same host, the committed image stays on the
//! engine (referenced as `nova-docker-move/<migration uuid>`, apart from the
//! Glance cache's `glance/` so no Glance image id can name it; the image
//! cache manager removes it once no container has used it for its minimum
//! age) and a revert creates the
//! old flavor's container from it again. Between hosts the committed image
//! travels through Glance, as shelve's snapshot does: the source uploads it
//! as a private, hidden image of the instance's project (`docker save` through the
//! canonicalizer, streamed), the destination loads it as any tenant image
//! (streamed, checked, canonicalized) and deletes it from Glance once the
//! container is made from it (a finish that fails hands the instance back
//! to the source: see [`ComputeManager::finish_resize`]). No new listener or credential is needed on the hosts: both
//! already reach Glance with Keystone. The source keeps its stopped
//! container until the resize is confirmed (then removed) or reverted (then
//! started again).
//!
//! The instance's ports follow with Neutron's port binding
//! (`binding:host_id`, Nova's `migrate_instance_finish`): to the destination
//! when the resize finishes, back to the source on revert.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::errors::OpError;
use super::manager::ComputeManager;
use super::operation::{OnFailure, Operation};
use super::states::{PowerState, TaskState, VmState};
use crate::conductor::Expected;
use crate::image::{GlanceImage, ImageError, cache_tag, move_repository, save_to_glance};
use crate::net::NetworkInfo;
use crate::network::BoundPort;
use crate::objects::{Flavor, Instance, Migration};
use crate::rpc::{RemoteError, RequestContext};
use crate::virt::{Driver, ImageRef, VirtError, spec};

/// What `resize_instance` hands to `finish_resize` (Nova's `disk_info`):
/// where the committed filesystem of the instance is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The committed Docker image on the source's engine.
    pub docker_image: String,
    /// The Glance image holding it, for a move between hosts.
    pub glance_image: Option<String>,
}

impl DiskInfo {
    /// Reads `disk_info` as sent (a JSON string, as Nova's drivers send it).
    pub fn parse(v: Option<&Value>) -> Result<Self, OpError> {
        let bad = |why: String| OpError::Invalid(format!("finish_resize: unusable disk_info: {why}"));
        match v {
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| bad(e.to_string())),
            Some(other) => serde_json::from_value(other.clone()).map_err(|e| bad(e.to_string())),
            None => Err(bad("missing".into())),
        }
    }
}

/// What `prep_resize` is asked (its RPC arguments besides the instance and
/// the migration).
#[derive(Debug, Clone)]
pub struct ResizeRequest {
    /// The new flavor (the same one for a cold migration).
    pub flavor: Flavor,
    /// The image dict, passed along to the source.
    pub image: Value,
    /// The request spec, passed along (and back to the conductor on a reschedule).
    pub request_spec: Value,
    /// The scheduler's legacy filter properties (`retry` when rescheduling is allowed).
    pub filter_properties: Value,
    /// The scheduler's alternate hosts (Selection objects).
    pub host_list: Value,
    /// Whether the source stops the guest gracefully.
    pub clean_shutdown: bool,
}

/// The part a host plays in the RPC method it runs, checked against the
/// migration ([`ComputeManager::check_migration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `prep_resize`: the migration leaves the instance's current host.
    Preparing,
    /// `resize_instance`, `confirm_resize`, `finish_revert_resize`.
    Source,
    /// `finish_resize`, `revert_resize`.
    Destination,
}

/// What happens to the migration's allocation when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnMoveFailure {
    /// The instance has not landed: the source allocation goes back to it
    /// (Nova's `_revert_allocation`).
    RevertAllocation,
    /// The instance is on the destination: the source allocation goes
    /// (Nova's `_delete_allocation_after_move`).
    DropSourceAllocation,
    /// Nothing to do with Placement.
    Keep,
}

/// `system_metadata` key: the size of the image an instance was built from,
/// recorded at its first move (see `refuse_filesystem_over_root_disk`).
const BASE_IMAGE_BYTES: &str = "nova_docker_base_image_bytes";

/// The image properties Nova copied into the instance's system metadata at
/// boot (`image_<key>`): what a container is created with again, even if the
/// image has since left Glance.
pub fn image_properties_of(i: &Instance) -> Map<String, Value> {
    i.system_metadata()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("image_").map(|p| (p.to_string(), Value::String(v))))
        .collect()
}

/// The Docker reference keeping a committed image for a migration (out of
/// the Glance cache's namespace: see [`move_repository`]).
fn committed_repository(migration: &Migration) -> String {
    move_repository(migration.uuid())
}

impl<D: Driver> ComputeManager<D> {
    /// Runs one step of a move as an operation; on failure the migration is
    /// marked `error` (Nova's `errors_out_migration`), its allocation
    /// handled per `alloc`, then `op.on_failure` applied.
    async fn move_step(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        m: &mut Migration,
        op: Operation,
        alloc: OnMoveFailure,
        body: impl AsyncFnOnce(&mut Instance, &mut Migration) -> Result<(), OpError>,
    ) -> Result<(), OpError> {
        let on_failure = op.on_failure;
        let op = op.on_failure(OnFailure::EventOnly);
        let r = self.run(ctx, &mut i, op, async |i| body(i, m).await).await;
        let Err(e) = r else { return Ok(()) };
        self.move_failed(ctx, i, m, on_failure, alloc, e).await
    }

    /// The failure of a move step (see [`ComputeManager::move_step`]).
    async fn move_failed(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        m: &mut Migration,
        on_failure: OnFailure,
        alloc: OnMoveFailure,
        e: OpError,
    ) -> Result<(), OpError> {
        if !e.is_superseded() {
            m.set_status("error");
            if let Err(se) = self.conductor.migration_save(ctx, m).await {
                tracing::warn!(instance = i.uuid(), error = %se, "could not mark the migration in error");
            }
            self.move_allocation_on_failure(m, i.uuid(), alloc).await;
        } else {
            self.move_allocation_when_superseded(ctx, m, i.uuid(), alloc).await;
        }
        self.fail(ctx, &mut i, on_failure, e).await
    }

    /// A step superseded (the instance deleted or changed meanwhile) still
    /// settles the migration's allocation, or it would stay in Placement
    /// forever (deleting an instance deletes only its own allocation): an
    /// instance gone or being deleted drops it; one still there gets `alloc`.
    async fn move_allocation_when_superseded(
        &self,
        ctx: &RequestContext,
        m: &Migration,
        instance: &str,
        alloc: OnMoveFailure,
    ) {
        if alloc == OnMoveFailure::Keep {
            return;
        }
        let going = match self.conductor.instance_get(ctx, instance).await {
            Ok(fresh) => {
                fresh.vm_state() == Some(VmState::Deleted)
                    || matches!(fresh.task_state(), Some(TaskState::Deleting | TaskState::SoftDeleting))
            }
            Err(e) if e.is_nova("InstanceNotFound") => true,
            Err(e) => {
                tracing::warn!(instance, migration = m.uuid(), error = %e, "cannot read the instance; its move's allocation is left");
                return;
            }
        };
        let alloc = if going { OnMoveFailure::DropSourceAllocation } else { alloc };
        self.move_allocation_on_failure(m, instance, alloc).await;
    }

    async fn move_allocation_on_failure(&self, m: &Migration, instance: &str, alloc: OnMoveFailure) {
        let Some(p) = &self.placement else { return };
        let r = match alloc {
            OnMoveFailure::RevertAllocation => p.move_allocations(m.uuid(), instance).await.map(|_| ()),
            OnMoveFailure::DropSourceAllocation => p.delete_allocation(m.uuid()).await,
            OnMoveFailure::Keep => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(instance, migration = m.uuid(), error = %e, "could not give back the migration's allocation");
        }
    }

    /// Refuses (as a bad request, before anything is touched) a migration
    /// that is not the instance's or does not name this host in the role
    /// the method plays: an RPC peer's mistake or forgery must not move
    /// another instance's allocations or act on a move of another host.
    fn check_migration(&self, i: &Instance, m: &Migration, role: Role) -> Result<(), OpError> {
        let bad = |why: String| OpError::Nova(RemoteError::bad_request(format!("migration {}: {why}", m.uuid())));
        if m.instance_uuid() != i.uuid() {
            return Err(bad(format!("it moves instance {}, not {}", m.instance_uuid(), i.uuid())));
        }
        // Only a resize or a cold migration runs this flow (a live
        // migration or an evacuation is another one, not supported here).
        if !matches!(m.migration_type(), Some("resize" | "migration")) {
            return Err(bad(format!(
                "its migration_type {:?} is not a resize or a cold migration",
                m.migration_type()
            )));
        }
        let (field, named, expected) = match role {
            Role::Preparing => ("source_compute", m.source_compute(), i.host().unwrap_or_default()),
            Role::Source => ("source_compute", m.source_compute(), self.host()),
            Role::Destination => ("dest_compute", m.dest_compute(), self.host()),
        };
        if named != Some(expected) {
            return Err(bad(format!("its {field} is {named:?}, not {expected}")));
        }
        Ok(())
    }

    /// Bounds what a move carries: the committed filesystem becomes an image
    /// layer and the moved container starts with an empty writable layer, so
    /// without this each move would grant the tenant another root disk. What
    /// the instance wrote (its writable layer, plus what earlier moves
    /// committed: its image beyond the size of the image it was built from,
    /// recorded at its first move) must fit the new flavor's root disk, or
    /// the move is refused before the guest stops (the instance stays active
    /// on its flavor, with the fault). Returns the built-from image's size.
    async fn refuse_filesystem_over_root_disk(&self, i: &Instance) -> Result<u64, OpError> {
        let fs = self.driver.filesystem_size(i.uuid()).await?;
        let base =
            i.system_metadata().get(BASE_IMAGE_BYTES).and_then(|v| v.parse::<u64>().ok()).unwrap_or(fs.image_bytes);
        let new_gb = i.flavor_named("new_flavor").and_then(|f| f.root_gb()).unwrap_or(i.root_gb());
        let limit_gb = match u64::try_from(new_gb) {
            Ok(gb) if gb > 0 => gb,
            _ if self.settings.docker.zero_disk_flavor_root_gb > 0 => self.settings.docker.zero_disk_flavor_root_gb,
            _ => return Ok(base),
        };
        let carried = fs.image_bytes.saturating_sub(base).saturating_add(fs.written_bytes);
        if carried > limit_gb.saturating_mul(1 << 30) {
            return Err(OpError::Nova(RemoteError::nova(
                "ResizeError",
                format!(
                    "Resize error: the instance's files ({} MiB written, earlier moves included) exceed the new \
                     flavor's root disk ({limit_gb} GiB); delete files or choose a larger flavor.",
                    carried >> 20
                ),
                500,
                json!({}),
            )));
        }
        Ok(base)
    }

    /// The compute node id of this host, when the release records one.
    /// Nova's `_update_migration` at a move claim: the migration names
    /// this host as its destination and is `pre-migrating`, so a restart
    /// here finds the moves it cut short.
    pub(super) async fn claim_migration_here(&self, ctx: &RequestContext, m: &mut Migration) -> Result<(), OpError> {
        m.obj.set("dest_compute", self.host());
        m.obj.set("dest_node", self.host());
        m.obj.set("dest_host", self.settings.my_ip.map(|ip| ip.to_string()).unwrap_or_else(|| self.host().into()));
        if let Some(id) = self.node_id() {
            m.obj.set("dest_compute_id", id);
        }
        m.set_status("pre-migrating");
        self.conductor.migration_save(ctx, m).await?;
        Ok(())
    }

    fn node_id(&self) -> Option<i64> {
        if !self.conductor.release().instance_compute_id {
            return None;
        }
        self.records.get().map(|r| r.node_id.load(std::sync::atomic::Ordering::SeqCst)).filter(|id| *id > 0)
    }

    /// Checks the container spec `flavor` would give the instance here:
    /// a flavor this host cannot honour is refused before anything moves.
    fn check_flavor_here(&self, i: &Instance, flavor: &Flavor) -> Result<(), OpError> {
        let mut resized = i.clone();
        resized.apply_flavor(flavor);
        spec::build(&resized, self.host(), "-", &image_properties_of(i), &self.settings.docker, None)
            .map(|_| ())
            .map_err(|e| OpError::Invalid(format!("flavor {}: {e}", flavor.name().unwrap_or("?"))))
    }

    // ------------------------------------------------------------------
    // prep_resize (destination)
    // ------------------------------------------------------------------

    /// `prep_resize`, on the destination: checks this host can take the
    /// instance with the new flavor, records itself on the migration
    /// (`pre-migrating`), stashes the new flavor and the vm_state, and casts
    /// `resize_instance` to the source. A refusal gives the allocation back;
    /// then, with alternate hosts from the scheduler, the conductor is asked
    /// to try the next one (Nova's `_reschedule_resize_or_reraise`; the
    /// fault stays recorded), or else the instance is left as it was, with a
    /// fault.
    pub async fn prep_resize(
        &self,
        ctx: &RequestContext,
        i: Instance,
        mut m: Migration,
        req: ResizeRequest,
    ) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Preparing)?;
        let op = Operation::new("compute_prep_resize").on_failure(OnFailure::RevertTask);
        self.move_step(ctx, i, &mut m, op, OnMoveFailure::Keep, async |i, m| {
            let Err(e) = self.do_prep_resize(ctx, i, m, &req).await else { return Ok(()) };
            if e.is_superseded() {
                self.move_allocation_when_superseded(ctx, m, i.uuid(), OnMoveFailure::RevertAllocation).await;
                return Err(e);
            }
            self.move_allocation_on_failure(m, i.uuid(), OnMoveFailure::RevertAllocation).await;
            if self.reschedule_resize(ctx, i, &req, &e).await {
                self.record_fault(ctx, i.uuid(), &e).await;
                return Ok(());
            }
            Err(e)
        })
        .await
    }

    async fn do_prep_resize(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        m: &mut Migration,
        req: &ResizeRequest,
    ) -> Result<(), OpError> {
        // Nova's late server-group check, before anything is prepared: a
        // violation is refused like any other (allocation given back, the
        // resize rescheduled to an alternate or ended with the fault).
        let group_lock = self.validate_group_policy(ctx, i, &req.request_spec, &req.filter_properties).await?;
        let flavor = &req.flavor;
        let Some(source) = i.host().map(str::to_string) else {
            return Err(migration_error("Instance has no source host"));
        };
        if m.cross_cell_move() {
            return Err(migration_error("cross-cell resize is not supported by nova-docker"));
        }
        let same_flavor = flavor.id().is_some() && flavor.id() == i.obj.get_i64("instance_type_id");
        if source == self.host() && same_flavor {
            return Err(OpError::Nova(RemoteError::nova(
                "UnableToMigrateToSelf",
                format!("Unable to migrate instance ({}) to current host ({}).", i.uuid(), self.host()),
                400,
                json!({}),
            )));
        }
        self.check_flavor_here(i, flavor)?;
        // A host whose engine does not answer cannot take the instance: the
        // scheduler's alternate may.
        self.driver
            .ping()
            .await
            .map_err(|e| OpError::Invalid(format!("this host's Docker engine does not answer: {e}")))?;
        i.set("new_flavor", flavor.obj.to_primitive());
        let vm = i.vm_state_name().unwrap_or(VmState::Active.as_str()).to_string();
        i.set_system_metadata("old_vm_state", Some(&vm));
        self.save(ctx, i, Expected::Any).await?;

        self.claim_migration_here(ctx, m).await?;
        // The migration names this host now: the next member's check counts it.
        drop(group_lock);

        let args = json!({
            "instance": i.to_primitive(), "migration": m.to_primitive(), "image": req.image,
            "flavor": flavor.obj.to_primitive(), "clean_shutdown": req.clean_shutdown,
            "request_spec": req.request_spec,
        });
        self.conductor.cast_compute(ctx, &source, "resize_instance", args).await?;
        Ok(())
    }

    /// Asks the conductor to move the instance to the next alternate host;
    /// whether it took the request (no retry information or no alternate
    /// left: no).
    async fn reschedule_resize(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        req: &ResizeRequest,
        e: &OpError,
    ) -> bool {
        let alternates = req.host_list.as_array().is_some_and(|a| !a.is_empty());
        if !req.filter_properties["retry"].is_object() || !alternates {
            return false;
        }
        let mut filter_properties = req.filter_properties.clone();
        filter_properties["retry"]["exc"] = json!([e.to_string()]);
        if let Err(se) = self.begin_task(ctx, i, TaskState::ResizePrep, Expected::Any).await {
            tracing::warn!(instance = i.uuid(), error = %se, "cannot reschedule the resize");
            return false;
        }
        let flavor = req.flavor.obj.to_primitive();
        let spec = req.request_spec.clone();
        let hosts = req.host_list.clone();
        match self.conductor.migrate_server(ctx, i, filter_properties, flavor, req.clean_shutdown, spec, hosts).await {
            Ok(()) => {
                tracing::info!(instance = i.uuid(), error = %e, "resize refused here; rescheduled to an alternate host");
                true
            }
            Err(re) => {
                tracing::warn!(instance = i.uuid(), error = %re, "could not reschedule the resize");
                self.record_fault(ctx, i.uuid(), &OpError::from(re)).await;
                false
            }
        }
    }

    // ------------------------------------------------------------------
    // resize_instance (source)
    // ------------------------------------------------------------------

    /// `resize_instance`, on the source: stops the container, commits its
    /// filesystem (and between hosts uploads it to Glance), hands the
    /// instance to the destination (`host`, `node`, `old_flavor`) and casts
    /// `finish_resize` there. A failure puts the container back as it was
    /// and gives the allocation back to the instance.
    pub async fn resize_instance(
        &self,
        ctx: &RequestContext,
        i: Instance,
        mut m: Migration,
        image: Value,
        request_spec: Value,
        clean_shutdown: bool,
    ) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Source)?;
        let _slot = self.snapshot_slot().await;
        self.move_step(
            ctx,
            i,
            &mut m,
            Operation::new("compute_resize_instance").on_failure(OnFailure::RevertTask),
            OnMoveFailure::RevertAllocation,
            async |i, m| {
                let dest = m.dest_compute().map(str::to_string).ok_or_else(|| migration_error("no destination"))?;
                m.set_status("migrating");
                self.conductor.migration_save(ctx, m).await?;
                self.begin_task(ctx, i, TaskState::ResizeMigrating, Expected::task(TaskState::ResizePrep)).await?;
                refuse_disk_shrink(i)?;
                let base = self.refuse_filesystem_over_root_disk(i).await?;
                i.set_system_metadata(BASE_IMAGE_BYTES, Some(&base.to_string()));

                let was = self.power_state_of(i.uuid()).await?;
                let disk_info = match self.migrate_disk_and_power_off(ctx, i, m, clean_shutdown).await {
                    Ok(d) => d,
                    Err(e) => {
                        // Nova's InstanceFaultRollback: the guest as it was.
                        if was == PowerState::Running
                            && let Err(pe) = self.power_on_and_replug(ctx, i).await
                        {
                            tracing::warn!(instance = i.uuid(), error = %pe, "could not start the instance again");
                        }
                        return Err(e);
                    }
                };

                // From here on a failure (superseded included) deletes the
                // uploaded image: no one else will.
                let glance_image = disk_info.glance_image.clone();
                let handed: Result<(), OpError> = async {
                    m.set_status("post-migrating");
                    self.conductor.migration_save(ctx, m).await?;
                    i.set("host", dest.as_str());
                    if let Some(node) = m.dest_node() {
                        i.set("node", node);
                    }
                    if self.conductor.release().instance_compute_id
                        && let Some(id) = m.obj.get_i64("dest_compute_id")
                    {
                        i.set("compute_id", id);
                    }
                    if let Some(f) = i.obj.get("flavor").cloned() {
                        i.set("old_flavor", f);
                    }
                    i.set_power_state(PowerState::Shutdown);
                    self.begin_task(ctx, i, TaskState::ResizeMigrated, Expected::task(TaskState::ResizeMigrating))
                        .await?;

                    let disk_info = serde_json::to_string(&disk_info).map_err(|e| OpError::Invalid(e.to_string()))?;
                    let args = json!({
                        "instance": i.to_primitive(), "migration": m.to_primitive(), "image": image,
                        "disk_info": disk_info, "request_spec": request_spec,
                    });
                    self.conductor.cast_compute(ctx, &dest, "finish_resize", args).await?;
                    Ok(())
                }
                .await;
                if let (Err(_), Some(g)) = (&handed, &glance_image) {
                    self.delete_move_image(ctx, i.uuid(), g).await;
                }
                if let Err(e) = &handed
                    && !e.is_superseded()
                {
                    // Not handed over (e.g. the finish_resize cast failed): the
                    // instance is this host's again, its guest as it was.
                    self.take_back(ctx, i, m, was).await;
                }
                handed
            },
        )
        .await
    }

    /// The driver's `migrate_disk_and_power_off`: the container stopped and
    /// committed; between hosts the image uploaded to a new Glance image and
    /// removed here (the stopped container stays for a revert).
    async fn migrate_disk_and_power_off(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        m: &Migration,
        clean_shutdown: bool,
    ) -> Result<DiskInfo, OpError> {
        let uuid = i.uuid();
        self.power_off(uuid, self.shutdown_timeout(i, clean_shutdown)).await?;
        let ni = self.network_info_of(i);
        // Nova's migrate_instance_start: this host's side of the ports goes.
        self.driver.unplug_vifs(uuid, &ni).await;
        let committed = self.driver.commit(uuid, false, Vec::new()).await?;
        // Referenced at once, so that nothing is left unnamed if this host
        // dies now: same host, it is kept for the new container and a
        // revert, and the image cache manager removes it once no container
        // uses it; between hosts it goes once uploaded.
        self.driver.tag_image(&committed, &committed_repository(m), &cache_tag(&committed)).await?;
        if m.same_host() {
            return Ok(DiskInfo { docker_image: committed, glance_image: None });
        }
        let uploaded = self.upload_for_move(ctx, i, m, &committed).await;
        if let Err(e) = self.driver.remove_image(&committed).await {
            tracing::warn!(instance = uuid, image = %committed, error = %e, "could not remove the committed image");
        }
        let glance_image = uploaded?;
        Ok(DiskInfo { docker_image: committed, glance_image: Some(glance_image) })
    }

    /// A move that failed after the instance was handed to the destination
    /// but before the destination was told: host, node and flavor back to
    /// this host's, the guest started again if it ran (the caller reverts
    /// the task state and saves).
    async fn take_back(&self, ctx: &RequestContext, i: &mut Instance, m: &Migration, was: PowerState) {
        i.set("host", self.host());
        i.set("node", m.source_node().unwrap_or(self.host()));
        if let Some(id) = self.node_id() {
            i.set("compute_id", id);
        }
        i.set("old_flavor", Value::Null);
        if was == PowerState::Running {
            match self.power_on_and_replug(ctx, i).await {
                Ok(info) => i.set_power_state(info.state),
                Err(e) => tracing::warn!(instance = i.uuid(), error = %e, "could not start the instance again"),
            }
        }
    }

    /// Deletes a move's Glance image, best effort (logged).
    async fn delete_move_image(&self, ctx: &RequestContext, instance: &str, glance_id: &str) {
        if let Err(e) = self.images.glance().delete(Some(ctx), glance_id).await {
            tracing::warn!(instance, image = %glance_id, error = %e, "could not delete the migration image");
        }
    }

    /// Uploads a committed image to a new private, hidden Glance image of
    /// the instance's project for the destination; a failed upload deletes
    /// it.
    async fn upload_for_move(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        m: &Migration,
        committed: &str,
    ) -> Result<String, OpError> {
        let glance = self.images.glance();
        // The instance's project owns its filesystem, whoever asked for the
        // move (an admin's migration must not put it in the admin's project).
        let project = i.project_id().ok_or_else(|| OpError::Invalid("the instance has no project".into()))?;
        let body = json!({
            "name": format!("nova-docker-migration-{}", m.uuid()),
            "container_format": "docker", "disk_format": "raw", "visibility": "private", "os_hidden": true,
            "owner": project, "nova_docker_migration": m.uuid(), "instance_uuid": i.uuid(),
        });
        let image = glance.create(Some(ctx), body).await.map_err(ImageError::from)?;
        let limits = self.images.limits().clone();
        match save_to_glance(self.driver.as_ref(), glance, Some(ctx), committed, &image.id, limits, None).await {
            Ok(summary) => {
                tracing::info!(instance = i.uuid(), image = %image.id, bytes = summary.input_bytes,
                    "instance filesystem uploaded for its migration");
                Ok(image.id)
            }
            Err(e) => {
                if let Err(de) = glance.delete(Some(ctx), &image.id).await {
                    tracing::warn!(instance = i.uuid(), image = %image.id, error = %de, "could not delete the migration image");
                }
                Err(e.into())
            }
        }
    }

    /// Start-up after a crash in `resize_instance` (task `resize_migrating`):
    /// what the move left is cleaned up and its allocation given back, as a
    /// failed `resize_instance` would have: the migration's Glance image
    /// and committed image, the source allocation back to the instance, the
    /// migration in `error`. The caller starts the instance again.
    pub async fn roll_back_interrupted_resize(&self, ctx: &RequestContext, i: &Instance) {
        let uuid = i.uuid();
        let mut found = None;
        for status in ["migrating", "post-migrating", "pre-migrating"] {
            match self.conductor.migration_by_instance_and_status(ctx, uuid, status).await {
                Ok(Some(m)) => {
                    found = Some(m);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(instance = uuid, error = %e, "cannot read the interrupted migration");
                    return;
                }
            }
        }
        let Some(mut m) = found else {
            tracing::warn!(instance = uuid, "no migration in progress found for the interrupted resize");
            return;
        };
        let glance = self.images.glance();
        // The move's image is hidden (os_hidden): Glance lists it only when
        // asked for hidden images; older ones were not hidden.
        for hidden in [true, false] {
            let mut filters = vec![("nova_docker_migration", m.uuid())];
            if hidden {
                filters.push(("os_hidden", "true"));
            }
            match glance.list(Some(ctx), &filters).await {
                Ok(images) => {
                    for image in images {
                        match glance.delete(Some(ctx), &image.id).await {
                            Ok(()) => tracing::info!(instance = uuid, image = %image.id,
                                "deleted the interrupted migration's Glance image"),
                            Err(e) => tracing::warn!(instance = uuid, image = %image.id, error = %e,
                                "could not delete the migration image"),
                        }
                    }
                }
                Err(e) => tracing::warn!(instance = uuid, migration = m.uuid(), error = %e,
                    "cannot list the migration's Glance images (without [glance] credentials there is no token at \
                     start-up): delete the image named nova-docker-migration-<migration> by hand"),
            }
        }
        if let Ok(committed) = self.driver.images_in_repository(&committed_repository(&m)).await {
            for image in committed {
                if let Err(e) = self.driver.remove_image(&image.id).await {
                    tracing::warn!(instance = uuid, image = %image.id, error = %e, "could not remove the committed image");
                }
            }
        }
        self.move_allocation_on_failure(&m, uuid, OnMoveFailure::RevertAllocation).await;
        m.set_status("error");
        if let Err(e) = self.conductor.migration_save(ctx, &mut m).await {
            tracing::warn!(instance = uuid, error = %e, "could not mark the migration in error");
        }
    }

    // ------------------------------------------------------------------
    // finish_resize (destination)
    // ------------------------------------------------------------------

    /// `finish_resize`, on the destination: the new flavor on the instance,
    /// the ports bound here, the container created from the moved
    /// filesystem with the new flavor (started unless it was stopped),
    /// migration `finished`, instance `resized`; the move's Glance image is
    /// deleted once the container exists here.
    ///
    /// A failure on the same host leaves the instance in ERROR here with a
    /// container of the old flavor (see `restore_original_here`) and drops
    /// the source allocation, as Nova does. Between hosts, Nova leaves the
    /// instance in ERROR on the destination too, to be recovered by a hard
    /// reboot there; here the source still has the stopped container with
    /// every file, so the move is undone as Nova's `revert_resize` would: what
    /// was made here is removed, the old flavor put back, the instance saved
    /// `resize_reverting` and the migration `error`, and the source is cast
    /// `finish_revert_resize`, which gives the source allocation back to the
    /// instance (Nova's `_revert_allocation`), binds the ports there again
    /// and starts the container: the instance ends where it was, with the
    /// fault recorded. Only when that hand-back cannot be made does Nova's
    /// path apply (ERROR here, the source allocation dropped), and then the
    /// move's Glance image is kept (private and hidden, the instance
    /// project's), since the filesystem has not landed anywhere yet.
    pub async fn finish_resize(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        mut m: Migration,
        disk_info: Option<Value>,
    ) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Destination)?;
        let _slot = self.build_slot().await;
        let on_failure = OnFailure::ErrorState { clean_task_state: true, refresh_power: true };
        // The move's Glance image, once checked to be this move's.
        let mut moved: Option<String> = None;
        let mut handed_back = false;
        let op = Operation::new("compute_finish_resize").on_failure(OnFailure::EventOnly);
        let r = self
            .run(ctx, &mut i, op, async |i| {
                let r = self.finish_resize_here(ctx, i, &mut m, disk_info.as_ref(), &mut moved).await;
                if let Err(e) = &r
                    && !e.is_superseded()
                    && !m.same_host()
                {
                    handed_back = self.hand_back_to_source(ctx, i, &mut m).await;
                }
                r
            })
            .await;
        let Err(e) = r else { return Ok(()) };
        if let Some(g) = moved {
            if handed_back || e.is_superseded() {
                self.delete_move_image(ctx, i.uuid(), &g).await;
            } else {
                tracing::warn!(instance = i.uuid(), image = %g, migration = m.uuid(),
                    "the move did not land and the source was not told: its Glance image is kept");
            }
        }
        if handed_back {
            // The source has the instance again: only the fault is this host's.
            return self.fail(ctx, &mut i, OnFailure::FaultOnly, e).await;
        }
        self.move_failed(ctx, i, &mut m, on_failure, OnMoveFailure::DropSourceAllocation, e).await
    }

    async fn finish_resize_here(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        m: &mut Migration,
        disk_info: Option<&Value>,
        moved: &mut Option<String>,
    ) -> Result<(), OpError> {
        let disk = DiskInfo::parse(disk_info)?;
        let old_flavor = i.flavor_named("flavor");
        if let Some(f) = i.obj.get("flavor").cloned() {
            i.set("old_flavor", f);
        }
        let resize = m.obj.get_i64("old_instance_type_id") != m.obj.get_i64("new_instance_type_id");
        if resize {
            let new = i.flavor_named("new_flavor").ok_or_else(|| migration_error("no new flavor stashed"))?;
            i.apply_flavor(&new);
        }
        let power_on = i.system_metadata().get("old_vm_state").map(String::as_str) != Some("stopped");

        let mut bound = None;
        let landed = async {
            let ni = self.bind_ports_here(ctx, i).await?;
            bound = Some(ni.clone());
            self.begin_task(ctx, i, TaskState::ResizeFinish, Expected::task(TaskState::ResizeMigrated)).await?;
            self.finish_migration(ctx, i, m, &disk, &ni, power_on, moved).await
        }
        .await;
        let state = match landed {
            Ok(s) => s,
            Err(e) => {
                if resize && let Some(old) = old_flavor {
                    i.apply_flavor(&old);
                }
                if m.same_host()
                    && let Some(ni) = &bound
                {
                    self.restore_original_here(i, m, ni, power_on).await;
                }
                return Err(e);
            }
        };
        // Landed: the filesystem is in a container here.
        if let Some(g) = moved.take() {
            self.delete_move_image(ctx, i.uuid(), &g).await;
        }
        m.set_status("finished");
        self.conductor.migration_save(ctx, m).await?;
        i.set("launched_at", Self::now());
        self.settle(ctx, i, VmState::Resized, state, Expected::task(TaskState::ResizeFinish)).await
    }

    /// Undoes a move between hosts whose finish failed here (see
    /// [`ComputeManager::finish_resize`]): whatever container was made here
    /// removed, the instance (old flavor already back) saved
    /// `resize_reverting`, the migration `error`, and the source cast
    /// `finish_revert_resize`. Whether the source was told; when it was not,
    /// the caller takes Nova's path (ERROR here).
    async fn hand_back_to_source(&self, ctx: &RequestContext, i: &mut Instance, m: &mut Migration) -> bool {
        let uuid = i.uuid().to_string();
        let Some(source) = m.source_compute().map(str::to_string) else { return false };
        let ni = self.network_info_of(i);
        match self.driver.destroy(&uuid, Duration::ZERO, &ni).await {
            Ok(()) | Err(VirtError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e,
                    "the failed move's container cannot be removed here: the instance stays here, in error");
                return false;
            }
        }
        let expected = Expected::OneOf(vec![Some(TaskState::ResizeMigrated), Some(TaskState::ResizeFinish)]);
        if let Err(e) = self.begin_task(ctx, i, TaskState::ResizeReverting, expected).await {
            tracing::warn!(instance = %uuid, error = %e, "cannot hand the failed move back to the source");
            return false;
        }
        m.set_status("error");
        if let Err(e) = self.conductor.migration_save(ctx, m).await {
            tracing::warn!(instance = %uuid, error = %e, "could not mark the migration in error");
        }
        let args = json!({"instance": i.to_primitive(), "migration": m.to_primitive(), "request_spec": Value::Null});
        match self.conductor.cast_compute(ctx, &source, "finish_revert_resize", args).await {
            Ok(()) => {
                tracing::info!(instance = %uuid, source = %source, migration = m.uuid(),
                    "the move failed here: handed back to the source, which starts the instance again");
                true
            }
            Err(e) => {
                tracing::warn!(instance = %uuid, source = %source, error = %e,
                    "cannot hand the failed move back to the source: the instance stays here, in error");
                false
            }
        }
    }

    /// The driver's `finish_migration`: the moved filesystem made a
    /// container with the instance's (new) flavor.
    #[allow(clippy::too_many_arguments)]
    async fn finish_migration(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        m: &Migration,
        disk: &DiskInfo,
        ni: &NetworkInfo,
        power_on: bool,
        moved: &mut Option<String>,
    ) -> Result<PowerState, OpError> {
        let image = match &disk.glance_image {
            // Same host: the image committed under this migration's own
            // reference; the `docker_image` the RPC names is not trusted.
            None if m.same_host() => self.committed_for(m).await?,
            None => return Err(migration_error("a move between hosts without its Glance image")),
            Some(glance_id) => {
                // Checked before anything is loaded or deleted: only this
                // move's image, of the instance's project.
                let meta = self.moved_image(ctx, i, m, glance_id).await?;
                // Deleted by the caller once the container exists here (or
                // the instance is handed back to the source).
                *moved = Some(glance_id.clone());
                self.images.ensure(Some(ctx), &meta).await.map(|(image, _)| image)?
            }
        };
        if m.same_host() {
            // The original container is in the committed image: it goes,
            // so the new one takes its name.
            self.driver.destroy(i.uuid(), Duration::ZERO, &Vec::new()).await?;
        }
        self.container_from(i, &image, ni, power_on).await
    }

    /// Same host, a failed finish has already removed the original
    /// container (its filesystem is in the committed image): it is created
    /// again from that image with the old flavor, so the instance (in ERROR)
    /// keeps a container a hard reboot can start, rather than none. Best
    /// effort (logged).
    async fn restore_original_here(&self, i: &Instance, m: &Migration, ni: &NetworkInfo, power_on: bool) {
        match self.driver.get_info(i.uuid()).await {
            Err(VirtError::NotFound(_)) => {}
            _ => return,
        }
        let restored = match self.committed_for(m).await {
            Ok(image) => self.container_from(i, &image, ni, power_on).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match restored {
            Ok(()) => {
                tracing::info!(instance = i.uuid(), "the original container is created again after the failed resize")
            }
            Err(e) => tracing::warn!(instance = i.uuid(), error = %e, "could not create the original container again"),
        }
    }

    /// The Glance image `disk_info` names, if it is this move's: made for
    /// this migration and instance (`nova_docker_migration`,
    /// `instance_uuid`) and owned by the instance's project. Anything else
    /// (another tenant's image, a public one) is refused untouched.
    async fn moved_image(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        m: &Migration,
        glance_id: &str,
    ) -> Result<GlanceImage, OpError> {
        let meta = self.images.glance().get(Some(ctx), glance_id).await.map_err(ImageError::from)?;
        let prop = |k: &str| meta.properties.get(k).and_then(Value::as_str);
        let ours = prop("nova_docker_migration") == Some(m.uuid())
            && prop("instance_uuid") == Some(i.uuid())
            && meta.owner.is_some()
            && meta.owner.as_deref() == i.project_id();
        if !ours {
            return Err(migration_error(&format!(
                "Glance image {glance_id} is not the image of migration {} of this instance: not used",
                m.uuid()
            )));
        }
        Ok(meta)
    }

    /// Creates the instance's container from `image` with its current
    /// flavor, as a build would, and starts it (ports plugged) if asked.
    async fn container_from(
        &self,
        i: &Instance,
        image: &ImageRef,
        ni: &NetworkInfo,
        power_on: bool,
    ) -> Result<PowerState, OpError> {
        let mut doc = Value::Object(image_properties_of(i));
        doc["id"] = json!(i.image_ref().unwrap_or_default());
        doc["status"] = json!("active");
        let meta = GlanceImage::from_json(&doc).ok_or_else(|| OpError::Invalid("image properties".into()))?;
        self.create_container(i, &meta, image, ni, &Default::default()).await?;
        if !power_on {
            return Ok(PowerState::Shutdown);
        }
        let info = self.start_created(i.uuid()).await?;
        self.plug_vifs(i.uuid(), ni, false).await?;
        Ok(info.state)
    }

    /// Nova's `migrate_instance_finish`: every port of the instance bound to
    /// this host, and the info cache written from the new bindings. The
    /// ports are the ones Neutron has for the instance (by `device_id`, and
    /// of the instance's project), as Nova's
    /// `_update_port_binding_for_instance` lists them: never whatever the
    /// RPC-supplied info cache names, since the binding is made with this
    /// service's credentials and would move another tenant's port here. A
    /// cached port Neutron does not give as the instance's is refused before
    /// any port is touched.
    async fn bind_ports_here(&self, ctx: &RequestContext, i: &mut Instance) -> Result<NetworkInfo, OpError> {
        let current = self.network_info(ctx, i).await?;
        let Some(neutron) = self.neutron.as_deref() else {
            if current.is_empty() {
                return Ok(current);
            }
            return Err(OpError::Invalid("the instance has ports but Neutron is not configured here".into()));
        };
        let project = i.project_id().ok_or_else(|| OpError::Invalid("the instance has no project".into()))?;
        let mut ports: Vec<Value> = neutron.instance_ports(i.uuid(), project).await?;
        if ports.is_empty() && current.is_empty() {
            return Ok(current);
        }
        let id_of = |p: &Value| p["id"].as_str().unwrap_or_default().to_string();
        // The cache's order (the guest's interface order) first.
        ports.sort_by_key(|p| current.iter().position(|vif| vif.id == id_of(p)).unwrap_or(usize::MAX));
        if let Some(stray) = current.iter().find(|vif| !ports.iter().any(|p| id_of(p) == vif.id)) {
            return Err(OpError::Invalid(format!(
                "port {} in the instance's network info is not a port of this instance in Neutron \
                 (device_id {}, project {project}): not bound",
                stray.id,
                i.uuid()
            )));
        }
        let mut bound = Vec::new();
        for p in &ports {
            let id = id_of(p);
            let port = neutron.bind_to_host(&id, self.host()).await?;
            // A port missing from the cache is kept on delete: nothing says
            // this service created it.
            let preserve = current
                .iter()
                .find(|vif| vif.id == id)
                .is_none_or(|vif| vif.extra.get("preserve_on_delete").and_then(Value::as_bool).unwrap_or(false));
            bound.push(BoundPort { port, created: !preserve });
        }
        let ni = neutron.network_info(&bound).await?;
        let text = crate::net::model::network_info_to_string(&ni)
            .map_err(|e| OpError::Invalid(format!("network_info: {e}")))?;
        self.conductor.info_cache_save(ctx, i, &text).await?;
        Ok(ni)
    }

    // ------------------------------------------------------------------
    // confirm_resize (source)
    // ------------------------------------------------------------------

    /// `confirm_resize`, on the source: the old container goes (between
    /// hosts), the migration is `confirmed`, the source allocation held by
    /// the migration is deleted whatever happens, and the stashed flavors
    /// are cleared.
    pub async fn confirm_resize(&self, ctx: &RequestContext, i: Instance, mut m: Migration) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Source)?;
        match m.status() {
            Some("confirmed") => return Ok(()),
            Some("finished" | "confirming") => {}
            other => {
                tracing::warn!(instance = i.uuid(), status = ?other, "unexpected migration status; not confirming");
                return Ok(());
            }
        }
        let i = match self.conductor.instance_get(ctx, i.uuid()).await {
            Ok(fresh) => fresh,
            Err(e) if e.is_nova("InstanceNotFound") => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // libvirt's _cleanup_resize guard, on the instance as it is now (a
        // stale or duplicate confirm after a revert, or racing one, must not
        // destroy the container the instance runs in): the instance is on
        // the migration's destination, resized, and no other task runs.
        let resized = i.vm_state() == Some(VmState::Resized)
            && matches!(i.task_state(), None | Some(TaskState::Deleting | TaskState::SoftDeleting));
        let moved =
            i.host().is_some() && i.host() == m.dest_compute() && (m.same_host() || i.host() != Some(self.host()));
        if !resized || !moved {
            tracing::warn!(instance = i.uuid(), migration = m.uuid(), host = ?i.host(), vm_state = ?i.vm_state(),
                task_state = ?i.task_state(), "the instance is not resized onto the migration's destination; not confirming");
            return Ok(());
        }
        let uuid = i.uuid().to_string();
        let on_failure = OnFailure::ErrorState { clean_task_state: false, refresh_power: false };
        let r = self
            .move_step(
                ctx,
                i,
                &mut m,
                Operation::new("compute_confirm_resize").on_failure(on_failure),
                OnMoveFailure::Keep,
                async |i, m| {
                    if !m.same_host() {
                        self.end_console(ctx, i.uuid()).await;
                        self.driver.destroy(i.uuid(), Duration::ZERO, &Vec::new()).await?;
                        // A console opened while the container went is closed too.
                        self.consoles.close(i.uuid());
                    }
                    m.set_status("confirmed");
                    self.conductor.migration_save(ctx, m).await?;
                    let vm = if i.power_state() == PowerState::Shutdown { VmState::Stopped } else { VmState::Active };
                    i.set_vm_state(vm);
                    i.set_task_state(None);
                    let expected =
                        Expected::OneOf(vec![None, Some(TaskState::Deleting), Some(TaskState::SoftDeleting)]);
                    self.save(ctx, i, expected).await?;
                    clear_stashed_flavors(i);
                    self.save(ctx, i, Expected::Any).await
                },
            )
            .await;
        // Whatever happened, the instance is on the destination: the
        // allocation the migration holds here goes.
        if let Some(p) = &self.placement
            && let Err(e) = p.delete_allocation(m.uuid()).await
        {
            tracing::warn!(instance = %uuid, migration = m.uuid(), error = %e, "could not delete the migration's allocation");
        }
        r
    }

    // ------------------------------------------------------------------
    // revert_resize (destination) and finish_revert_resize (source)
    // ------------------------------------------------------------------

    /// `revert_resize`, on the destination: its container goes (the ports
    /// stay, they move back with `finish_revert_resize`), the migration is
    /// `reverted`, and the source is told to finish.
    pub async fn revert_resize(
        &self,
        ctx: &RequestContext,
        i: Instance,
        mut m: Migration,
        request_spec: Value,
    ) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Destination)?;
        if !self.still_reverting(ctx, &i, &m, true).await? {
            return Ok(());
        }
        let on_failure = OnFailure::ErrorState { clean_task_state: false, refresh_power: false };
        self.move_step(
            ctx,
            i,
            &mut m,
            Operation::new("compute_revert_resize").on_failure(on_failure),
            OnMoveFailure::Keep,
            async |i, m| {
                let ni = self.network_info(ctx, i).await?;
                let source = m.source_compute().map(str::to_string).ok_or_else(|| migration_error("no source host"))?;
                self.end_console(ctx, i.uuid()).await;
                self.driver.destroy(i.uuid(), Duration::ZERO, &ni).await?;
                self.consoles.close(i.uuid());
                m.set_status("reverted");
                self.conductor.migration_save(ctx, m).await?;
                let args =
                    json!({"instance": i.to_primitive(), "migration": m.to_primitive(), "request_spec": request_spec});
                self.conductor.cast_compute(ctx, &source, "finish_revert_resize", args).await?;
                Ok(())
            },
        )
        .await
    }

    /// `finish_revert_resize`, on the source: the old flavor, host and node
    /// back on the instance, the source allocation back from the migration,
    /// the ports bound here again, the original container started again
    /// (same host: created again from the committed image with the old
    /// flavor), then the vm_state from before the resize.
    pub async fn finish_revert_resize(
        &self,
        ctx: &RequestContext,
        i: Instance,
        mut m: Migration,
    ) -> Result<(), OpError> {
        self.check_migration(&i, &m, Role::Source)?;
        if !self.still_reverting(ctx, &i, &m, false).await? {
            return Ok(());
        }
        let on_failure = OnFailure::ErrorState { clean_task_state: true, refresh_power: true };
        self.move_step(
            ctx,
            i,
            &mut m,
            Operation::new("compute_finish_revert_resize").on_failure(on_failure),
            OnMoveFailure::Keep,
            async |i, m| {
                let r = self.revert_here(ctx, i, m).await;
                if r.is_err() {
                    clear_stashed_flavors(i);
                }
                r
            },
        )
        .await
    }

    /// As `confirm_resize`'s guard, on the instance as it is now: a revert
    /// step runs only while the API is reverting the move (`resize_reverting`;
    /// on the destination also still `resized`). A stale or repeated revert
    /// would otherwise remove the container the instance runs in now.
    async fn still_reverting(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        m: &Migration,
        resized: bool,
    ) -> Result<bool, OpError> {
        let fresh = self.conductor.instance_get(ctx, i.uuid()).await?;
        let reverting = fresh.task_state() == Some(TaskState::ResizeReverting)
            && (!resized || fresh.vm_state() == Some(VmState::Resized));
        if !reverting {
            tracing::warn!(
                instance = i.uuid(),
                migration = m.uuid(),
                vm_state = ?fresh.vm_state(),
                task_state = ?fresh.task_state(),
                "a revert of a move the API is not reverting; nothing done"
            );
        }
        Ok(reverting)
    }

    async fn revert_here(&self, ctx: &RequestContext, i: &mut Instance, m: &Migration) -> Result<(), OpError> {
        let old_vm = i.system_metadata().get("old_vm_state").and_then(|s| VmState::parse(s)).unwrap_or(VmState::Active);
        if let Some(old) = i.flavor_named("old_flavor") {
            i.apply_flavor(&old);
        }
        i.set("host", m.source_compute().unwrap_or(self.host()));
        i.set("node", m.source_node().unwrap_or(self.host()));
        if let Some(id) = self.node_id() {
            i.set("compute_id", id);
        }
        if let Some(p) = &self.placement {
            let moved = p.move_allocations(m.uuid(), i.uuid()).await.map_err(|e| OpError::Invalid(e.to_string()))?;
            if !moved {
                tracing::error!(
                    instance = i.uuid(),
                    migration = m.uuid(),
                    "no allocation held by the migration to give back"
                );
            }
        }
        let ni = self.bind_ports_here(ctx, i).await?;
        let power_on = old_vm != VmState::Stopped;
        let state = match self.driver.get_info(i.uuid()).await {
            Ok(_) if power_on => {
                let info = self.driver.power_on(i.uuid()).await?;
                self.plug_vifs(i.uuid(), &ni, false).await?;
                info.state
            }
            Ok(info) => info.state,
            Err(VirtError::NotFound(_)) => {
                let committed = self.committed_for(m).await?;
                self.container_from(i, &committed, &ni, power_on).await?
            }
            Err(e) => return Err(e.into()),
        };
        clear_stashed_flavors(i);
        i.set("launched_at", Self::now());
        let vm = if power_on { VmState::Active } else { VmState::Stopped };
        self.settle(ctx, i, vm, state, Expected::task(TaskState::ResizeReverting)).await
    }

    /// The image committed here for a same-host resize.
    async fn committed_for(&self, m: &Migration) -> Result<ImageRef, OpError> {
        let repository = committed_repository(m);
        let found = self.driver.images_in_repository(&repository).await?;
        match found.into_iter().next() {
            Some(image) => Ok(ImageRef { id: image.id, volumes: image.volumes }),
            None => Err(OpError::Virt(VirtError::Invalid(format!(
                "the instance's committed filesystem ({repository}) is no longer on this host"
            )))),
        }
    }
}

/// Nova's `_delete_stashed_flavor_info`.
fn clear_stashed_flavors(i: &mut Instance) {
    i.set("old_flavor", Value::Null);
    i.set("new_flavor", Value::Null);
    if i.system_metadata().contains_key("old_vm_state") {
        i.set_system_metadata("old_vm_state", None);
    }
}

/// Nova's libvirt driver (`migrate_disk_and_power_off`): a root disk is
/// never resized down (the instance's files need not fit, and the container
/// would be created again with the whole committed filesystem anyway). The
/// refusal comes before the guest is stopped: as Nova's
/// `InstanceFaultRollback(ResizeError)`, the instance stays active on its old
/// flavor, with the fault.
fn refuse_disk_shrink(i: &Instance) -> Result<(), OpError> {
    let Some(new) = i.flavor_named("new_flavor") else { return Ok(()) };
    if new.root_gb().unwrap_or(0) < i.root_gb() {
        return Err(OpError::Nova(RemoteError::nova(
            "ResizeError",
            "Resize error: Unable to resize disk down.".to_string(),
            500,
            json!({}),
        )));
    }
    Ok(())
}

/// Nova's `MigrationError`.
fn migration_error(reason: &str) -> OpError {
    OpError::Nova(RemoteError::nova("MigrationError", format!("Migration error: {reason}"), 500, json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_info_travels_as_a_json_string() {
        let d = DiskInfo { docker_image: "sha256:ab".into(), glance_image: Some("g".into()) };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(DiskInfo::parse(Some(&json!(text))).unwrap(), d);
        assert!(DiskInfo::parse(Some(&json!("[]"))).is_err());
        assert!(DiskInfo::parse(None).is_err());
    }
}
