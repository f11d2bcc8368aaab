//! Shelving, as Nova's `_shelve_instance`, `_shelve_offload_instance` and
//! `_unshelve_instance` do it: shelve stops the instance and uploads its
//! filesystem (`docker commit` + the snapshot path) into the Glance image
//! nova-api created with the shelved-image properties, then offloads it at
//! once (Nova's default `shelved_offload_time = 0`, the only behaviour this
//! host has): the container goes, the ports are unbound from this host and
//! the Placement allocation is freed. Unshelve, on whichever host the
//! scheduler picked, loads that image, binds the ports here, starts the
//! container and deletes the shelved image.

use serde_json::Value;

use super::build::BuildRequest;
use super::errors::OpError;
use super::manager::ComputeManager;
use super::operation::{Claim, OnFailure, Operation};
use super::states::{PowerState, TaskState, VmState};
use crate::conductor::Expected;
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// The system metadata keys of a shelved instance.
const SHELVED_KEYS: [&str; 3] = ["shelved_at", "shelved_image_id", "shelved_host"];

impl<D: Driver> ComputeManager<D> {
    /// `shelve_instance`: stop, snapshot into `image_id`, SHELVED, then offload.
    pub async fn shelve_instance(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        image_id: &str,
        clean: bool,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _slot = self.snapshot_slot().await;
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let was = self.power_state_of(&uuid).await.unwrap_or(PowerState::NoState);
        let op = Operation::new("compute_shelve_instance").on_failure(OnFailure::EventOnly);
        let r = self
            .run_held(ctx, &mut i, op, async |i| {
                let clean = clean && was != PowerState::Paused;
                i.set_power_state(self.power_off(&uuid, self.shutdown_timeout(i, clean)).await?);
                let states = (TaskState::ShelvingImagePendingUpload, TaskState::ShelvingImageUploading);
                self.snapshot_to_glance(ctx, i, image_id, TaskState::Shelving, states).await?;
                i.set_system_metadata(
                    "shelved_at",
                    Some(&chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()),
                );
                i.set_system_metadata("shelved_image_id", Some(image_id));
                i.set_system_metadata("shelved_host", Some(self.host()));
                i.set_vm_state(VmState::Shelved);
                i.set_task_state(Some(TaskState::ShelvingOffloading));
                i.set_power_state(self.power_state_of(&uuid).await?);
                let expected =
                    Expected::OneOf(vec![Some(TaskState::Shelving), Some(TaskState::ShelvingImageUploading)]);
                self.save(ctx, i, expected).await?;
                self.offload(ctx, i).await
            })
            .await;
        let Err(e) = r else { return Ok(()) };
        if i.vm_state() != Some(VmState::Shelved) {
            // Not shelved: the half-made image goes, the instance runs again.
            if let Err(de) = self.images.glance().delete(Some(ctx), image_id).await {
                tracing::warn!(instance = %uuid, image = image_id, error = %de, "could not delete the shelve image");
            }
            if matches!(was, PowerState::Running | PowerState::Paused) && !e.is_superseded() {
                match self.power_on_and_replug(ctx, &mut i).await {
                    Ok(info) => i.set_power_state(info.state),
                    Err(se) => tracing::warn!(instance = %uuid, error = %se, "could not start the instance again"),
                }
            }
        }
        self.fail(ctx, &mut i, OnFailure::RevertTask, e).await
    }

    /// `shelve_offload_instance` (of an instance shelved and kept here).
    pub async fn shelve_offload_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        self.operate(ctx, i, Operation::new("compute_shelve_offload_instance"), async |i| self.offload(ctx, i).await)
            .await
    }

    /// Removes the shelved instance from this host: its container, its
    /// ports' binding here, its allocation; then SHELVED_OFFLOADED with no
    /// host (Nova's `_shelve_offload_instance`).
    async fn offload(&self, ctx: &RequestContext, i: &mut Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let power = self.power_off(&uuid, self.shutdown_timeout(i, false)).await?;
        let ni = self.network_info(ctx, i).await?;
        if !ni.is_empty()
            && let Some(n) = &self.neutron
        {
            let ids: Vec<String> = ni.iter().map(|v| v.id.clone()).collect();
            n.unbind_host(&ids).await?;
        }
        self.end_console(ctx, &uuid).await;
        self.driver.destroy(&uuid, std::time::Duration::ZERO, &ni).await?;
        // A console opened while the container went is closed too.
        self.consoles.close(&uuid);
        // Freed before the state changes, as Nova does: a client polling for
        // SHELVED_OFFLOADED may schedule into the room at once.
        if let Some(p) = &self.placement {
            p.delete_allocation(&uuid).await.map_err(|e| OpError::Invalid(format!("placement: {e}")))?;
        }
        i.set_power_state(power);
        i.set_vm_state(VmState::ShelvedOffloaded);
        i.set_task_state(None);
        let expected = Expected::OneOf(vec![Some(TaskState::Shelving), Some(TaskState::ShelvingOffloading)]);
        self.save(ctx, i, expected).await?;
        self.nil_out_host(i);
        self.save(ctx, i, Expected::idle()).await
    }

    /// `_nil_out_instance_obj_host_and_node`.
    fn nil_out_host(&self, i: &mut Instance) {
        i.set("host", Value::Null);
        i.set("node", Value::Null);
        if self.conductor.release().instance_compute_id {
            i.set("compute_id", Value::Null);
        }
    }

    /// `unshelve_instance`: the shelved image loaded and started here; the
    /// image deleted from Glance once the instance runs. A failure leaves
    /// the instance SHELVED_OFFLOADED with a fault, nothing here, and gives
    /// back what the scheduler claimed.
    pub async fn unshelve_instance(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        image: Option<Value>,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _slot = self.build_slot().await;
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let op = Operation::new("compute_unshelve_instance")
            .on_failure(OnFailure::EventOnly)
            .holding(Some(Claim::WholeInstance));
        let r = self.run_held(ctx, &mut i, op, async |i| self.do_unshelve(ctx, i, image.as_ref()).await).await;
        let Err(e) = r else { return Ok(()) };
        let _ = self.driver.destroy(&uuid, std::time::Duration::ZERO, &Vec::new()).await;
        if !e.is_superseded() {
            self.nil_out_host(&mut i);
        }
        self.fail(ctx, &mut i, OnFailure::RevertTask, e).await
    }

    async fn do_unshelve(&self, ctx: &RequestContext, i: &mut Instance, image: Option<&Value>) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let shelved_image = image
            .and_then(|v| v["id"].as_str())
            .map(str::to_string)
            .or_else(|| i.system_metadata().get("shelved_image_id").cloned())
            .ok_or_else(|| OpError::Invalid("the shelved instance has no image to unshelve from".into()))?;
        // The claim: this host's, in the spawning save (Nova's instance_claim).
        i.set("host", self.host());
        i.set("node", self.host());
        if self.conductor.release().instance_compute_id
            && let Some(id) =
                self.records.get().map(|r| r.node_id.load(std::sync::atomic::Ordering::SeqCst)).filter(|id| *id > 0)
        {
            i.set("compute_id", id);
        }
        self.begin_task(ctx, i, TaskState::Spawning, Expected::task(TaskState::Unshelving)).await?;
        let req = BuildRequest { image: image.cloned().unwrap_or(Value::Null), ..Default::default() };
        let (meta, docker_image) = self.build_image(ctx, &req, &shelved_image).await?;
        let ni = self.bind_ports_for_evacuation(ctx, i, None).await?;
        self.create_container(i, &meta, &docker_image, &ni, &Default::default()).await?;
        let info = self.start_created(&uuid).await?;
        self.plug_vifs(&uuid, &ni, false).await?;
        if image.is_some() || i.system_metadata().contains_key("shelved_image_id") {
            // Nova's _delete_snapshot_of_shelved_instance: the container
            // runs from the loaded copy; Glance's goes.
            if let Err(e) = self.images.glance().delete(Some(ctx), &shelved_image).await {
                tracing::warn!(instance = %uuid, image = %shelved_image, error = %e, "could not delete the shelved image");
            }
        }
        for key in SHELVED_KEYS {
            i.set_system_metadata(key, None);
        }
        i.set("launched_at", Self::now());
        self.settle(ctx, i, VmState::Active, info.state, Expected::task(TaskState::Spawning)).await
    }
}
