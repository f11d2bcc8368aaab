//! Building and deleting instances: `build_and_run_instance` and
//! `terminate_instance`, step by step as `nova/compute/manager.py` does them.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::errors::OpError;
use super::guest_data;
use super::manager::ComputeManager;
use super::operation::{OnFailure, Operation};
use super::states::{PowerState, TaskState, VmState};
use crate::conductor::Expected;
use crate::image::GlanceImage;
use crate::metrics;
use crate::network::{Requested, requested_networks, requested_security_groups};
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::config_drive;
use crate::virt::{Driver, ImageRef, InstanceInfo, spec};

/// The arguments of `build_and_run_instance` this host uses. `Debug` shows
/// whether an admin password came, never the password.
#[derive(Clone, Default)]
pub struct BuildRequest {
    /// The `image` dict (Glance's view, as Nova translated it).
    pub image: Value,
    /// `requested_networks` NetworkRequestList primitive (None for none).
    pub requested_networks: Option<Value>,
    /// `security_groups`: the names (or ids) of the groups the server asked
    /// for, applied to the ports this host creates.
    pub security_groups: Option<Value>,
    /// The password Nova generated or the user gave for the server: only
    /// into its config drive's `admin_pass` (as Nova's config drive does;
    /// a container has no console login to set it on). `Debug` shows only
    /// whether one came.
    pub admin_password: Option<String>,
    /// `block_device_mapping`: the BlockDeviceMappingList primitive; every
    /// mapping but the image's is refused (`guest_data`).
    pub block_device_mapping: Option<Value>,
    /// `injected_files`: `[path, base64 contents]` pairs (personality),
    /// written into the container before it starts. Tenant data: `Debug`
    /// shows how many, never the contents.
    pub injected_files: Option<Value>,
    /// `filter_properties`: the scheduler's legacy filter properties; its
    /// `retry` says whether a failed build may be rescheduled.
    pub filter_properties: Value,
    /// `request_spec`, passed back to the conductor on a reschedule.
    pub request_spec: Value,
    /// `host_list`: the scheduler's alternate hosts (Selection objects).
    pub host_list: Value,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("image", &self.image)
            .field("requested_networks", &self.requested_networks)
            .field("admin_password", &self.admin_password.as_ref().map(|_| "***"))
            .field("block_device_mapping", &self.block_device_mapping)
            .field("injected_files", &self.injected_files.as_ref().and_then(Value::as_array).map(Vec::len))
            .field("filter_properties", &self.filter_properties)
            .field("alternates", &self.host_list.as_array().map(Vec::len))
            .finish()
    }
}

fn phase(op: &'static str, name: &'static str, started: Instant) {
    metrics::global().observe(
        "nova_docker_operation_duration_seconds",
        &[("operation", op), ("phase", name)],
        started.elapsed(),
    );
    tracing::debug!(phase = name, elapsed_ms = started.elapsed().as_millis() as u64, "build phase done");
}

impl<D: Driver> ComputeManager<D> {
    /// `build_and_run_instance`: claim, image, (network), spawn, ACTIVE. Any
    /// failure ends in vm_state error with a fault, the placement allocation
    /// removed and nothing left on the host; never a server stuck in BUILD.
    pub async fn build_and_run_instance(&self, ctx: &RequestContext, mut i: Instance, req: BuildRequest) {
        let uuid = i.uuid().to_string();
        let _slot = self.build_slot().await;
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let started = Instant::now();
        let op = Operation::new("compute__do_build_and_run_instance").on_failure(OnFailure::EventOnly);
        let r = self.run_held(ctx, &mut i, op, async |i| self.do_build(ctx, i, &req).await).await;
        match r {
            Ok(()) => {
                tracing::info!(instance = %uuid, elapsed_ms = started.elapsed().as_millis() as u64, "instance built");
            }
            Err(e) if e.is_superseded() => {
                tracing::info!(instance = %uuid, error = %e, "build stopped: the instance was deleted or changed");
                let _ = self.driver.destroy(&uuid, Duration::ZERO, &Vec::new()).await;
            }
            Err(e) => {
                tracing::warn!(instance = %uuid, error = %e, "build failed");
                let _ = self.driver.destroy(&uuid, Duration::ZERO, &Vec::new()).await;
                if reschedulable(&e) && self.reschedule_build(ctx, &mut i, &req, &e).await {
                    return;
                }
                // Nova's _nil_out_instance_obj_host_and_node + error state.
                i.set("host", Value::Null);
                i.set("node", Value::Null);
                if self.conductor.release().instance_compute_id {
                    i.set("compute_id", Value::Null);
                }
                let on_failure = OnFailure::ErrorState { clean_task_state: true, refresh_power: false };
                let _ = self.fail(ctx, &mut i, on_failure, e).await;
                if let Some(p) = &self.placement
                    && let Err(pe) = p.delete_allocation(&uuid).await
                {
                    tracing::warn!(instance = %uuid, error = %pe, "could not delete the allocation");
                }
            }
        }
    }

    /// Nova's `RescheduledException` path of `_do_build_and_run_instance`:
    /// with retry information from the scheduler, the instance is given
    /// back (host and node cleared, task `scheduling`, this host's
    /// allocation deleted; its ports are already released) and the
    /// conductor is cast `build_instances` with the alternate hosts and the
    /// reason in `retry.exc_reason` (the conductor records it as the fault
    /// when no alternate is left). Whether the build went back to the
    /// conductor; if not, the caller ends it in ERROR here.
    async fn reschedule_build(&self, ctx: &RequestContext, i: &mut Instance, req: &BuildRequest, e: &OpError) -> bool {
        let uuid = i.uuid().to_string();
        if req.filter_properties.get("retry").is_none_or(Value::is_null) {
            tracing::debug!(instance = %uuid, "no retry information: the build is not rescheduled");
            return false;
        }
        i.set("host", Value::Null);
        i.set("node", Value::Null);
        if self.conductor.release().instance_compute_id {
            i.set("compute_id", Value::Null);
        }
        i.set_task_state(Some(TaskState::Scheduling));
        if let Err(se) = self.save(ctx, i, Expected::Any).await {
            tracing::warn!(instance = %uuid, error = %se, "cannot give the build back to the scheduler");
            return false;
        }
        if let Some(p) = &self.placement
            && let Err(pe) = p.delete_allocation(&uuid).await
        {
            tracing::warn!(instance = %uuid, error = %pe, "could not delete the allocation before rescheduling");
        }
        let mut filter_properties = req.filter_properties.clone();
        let remote = e.to_remote();
        filter_properties["retry"]["exc"] = serde_json::json!([format!("{}: {}\n", remote.class, remote.message)]);
        filter_properties["retry"]["exc_reason"] = serde_json::json!(e.tenant_message());
        match self.conductor.build_instances(ctx, i, req, filter_properties).await {
            Ok(()) => {
                tracing::info!(instance = %uuid, error = %e, "build failed here: rescheduled to an alternate host");
                true
            }
            Err(ce) => {
                tracing::warn!(instance = %uuid, error = %ce, "cannot reschedule the build");
                false
            }
        }
    }

    async fn do_build(&self, ctx: &RequestContext, i: &mut Instance, req: &BuildRequest) -> Result<(), OpError> {
        let image_id = i.image_ref().map(str::to_string).ok_or_else(|| {
            OpError::Invalid("the instance has no image (boot from volume is not supported by nova-docker)".into())
        })?;
        // What the guest gets besides its image: refused before any work
        // when the host cannot honour it.
        guest_data::check_block_devices(req.block_device_mapping.as_ref())?;
        self.validate_group_policy(ctx, i, &req.request_spec, &req.filter_properties).await?;
        let guest = guest_data::Guest {
            files: guest_data::injected_files(req.injected_files.as_ref())?,
            admin_pass: req.admin_password.as_deref(),
        };
        let requested = requested_networks(req.requested_networks.as_ref());
        if requested == Requested::None {
            self.build_without_ports(ctx, i, req, &image_id, &guest).await
        } else {
            self.build_with_ports(ctx, i, req, &image_id, &requested, &guest).await
        }
    }

    /// A server without ports needs nothing from the claim or Neutron to
    /// have its container: the whole Docker side (image, create, start)
    /// runs beside Nova's saves of the claim, block_device_mapping and
    /// spawning, which keep their order; ACTIVE is saved once both sides
    /// are done. A container running before Nova has seen the claim is
    /// invisible to it (as a libvirt domain is before the ACTIVE save), and
    /// any failure, a refused claim included, removes it.
    async fn build_without_ports(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        req: &BuildRequest,
        image_id: &str,
        guest: &guest_data::Guest<'_>,
    ) -> Result<(), OpError> {
        let as_requested = i.clone();
        let saves = async {
            self.claim(ctx, i).await?;
            self.begin_task(ctx, i, TaskState::BlockDeviceMapping, Expected::Any).await?;
            self.begin_task(ctx, i, TaskState::Spawning, Expected::task(TaskState::BlockDeviceMapping)).await
        };
        let docker = async {
            let (meta, image) = self.build_image(ctx, req, image_id).await?;
            self.create_container(&as_requested, &meta, &image, &Vec::new(), guest).await?;
            self.start_created(as_requested.uuid()).await
        };
        // Both run to their end: a failed image must not cut a save short.
        let (saved, started) = tokio::join!(saves, docker);
        saved?;
        self.save_active(ctx, i, started?).await
    }

    /// A server with ports: the claim and its ports bound (beside the
    /// image), then the container created with their DNS servers (beside
    /// the info cache's save), started, and plugged before ACTIVE.
    async fn build_with_ports(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        req: &BuildRequest,
        image_id: &str,
        requested: &Requested,
        guest: &guest_data::Guest<'_>,
    ) -> Result<(), OpError> {
        let groups = requested_security_groups(req.security_groups.as_ref())?;
        // 4. Networking. What the ports are made from is looked up in
        // Neutron beside Nova's saves of the claim and the `networking` task
        // and beside the image, as none needs another; the ports are bound
        // only once both saves are done (Nova gave this build the instance:
        // a stale or duplicate build never touches a port), and the info
        // cache is written beside the container's create. All run to their
        // end (a failed image must not cut a save short); Nova's own
        // refusal (the instance deleted meanwhile) wins over the image's,
        // which wins over Neutron's.
        let as_requested = i.clone();
        let t = Instant::now();
        let saves = async {
            self.claim(ctx, i).await?;
            self.begin_task(ctx, i, TaskState::Networking, Expected::idle()).await
        };
        let prepare = self.prepare_ports(&as_requested, requested, &groups);
        let (saved, image, prepared) = tokio::join!(saves, self.build_image(ctx, req, image_id), prepare);
        saved?;
        let (meta, image) = image?;
        let ni = self.bind_ports(i, prepared?, ctx.is_admin()).await?;
        phase("build", "network_allocate", t);
        let uuid = i.uuid().to_string();
        let built = self.spawn_with_ports(ctx, i, &ni, &meta, &image, guest).await;
        if built.is_err() {
            self.driver.unplug_vifs(&uuid, &ni).await;
            self.deallocate_network(&ni).await;
        }
        built
    }

    /// Step 1: takes the build over from the scheduler and claims this host and
    /// node in one save. Nova saves BUILDING and then, in its resource
    /// tracker's claim, host and node; one atomic save guarded by the
    /// expected task state is the same transition without the half-way
    /// state.
    async fn claim(&self, ctx: &RequestContext, i: &mut Instance) -> Result<(), OpError> {
        let t = Instant::now();
        i.set_vm_state(VmState::Building);
        i.set_task_state(None);
        i.set("host", self.host());
        i.set("launched_on", self.host());
        i.set("node", self.host());
        if self.conductor.release().instance_compute_id
            && let Some(id) =
                self.records.get().map(|r| r.node_id.load(std::sync::atomic::Ordering::SeqCst)).filter(|id| *id > 0)
        {
            i.set("compute_id", id);
        }
        self.save(ctx, i, Expected::OneOf(vec![Some(TaskState::Scheduling), None])).await?;
        phase("build", "claim", t);
        Ok(())
    }

    /// Step 3, the image: Glance's metadata (from the request when it is
    /// complete), loaded into Docker if this host does not have it.
    pub(crate) async fn build_image(
        &self,
        ctx: &RequestContext,
        req: &BuildRequest,
        image_id: &str,
    ) -> Result<(GlanceImage, ImageRef), OpError> {
        let t = Instant::now();
        let meta = match GlanceImage::from_json(&req.image) {
            Some(m) if m.id == image_id && m.container_format.is_some() && !m.status.is_empty() => m,
            _ => self.images.glance().get(Some(ctx), image_id).await.map_err(crate::image::ImageError::from)?,
        };
        let (image, downloaded) = self.images.ensure(Some(ctx), &meta).await?;
        phase("build", if downloaded { "image_download" } else { "image_cached" }, t);
        Ok((meta, image))
    }

    /// Creates (does not start) the instance's container from its spec,
    /// with the build's injected files written into it, and its config
    /// drive when it needs one.
    pub(crate) async fn create_container(
        &self,
        i: &Instance,
        meta: &GlanceImage,
        image: &ImageRef,
        ni: &crate::net::NetworkInfo,
        guest: &guest_data::Guest<'_>,
    ) -> Result<(), OpError> {
        let drive = if guest_data::config_drive_required(i, &meta.properties, self.settings.force_config_drive) {
            let injected: Vec<(String, Vec<u8>)> =
                guest.files.iter().map(|f| (format!("/{}", f.path), f.contents.clone().unwrap_or_default())).collect();
            let input = config_drive::DriveInput {
                network_info: Some(ni),
                admin_pass: guest.admin_pass,
                files: &injected,
                dhcp_domain: self.settings.dhcp_domain.as_deref(),
            };
            Some(config_drive::render(i, &input).map_err(|e| OpError::Invalid(format!("config drive: {e}")))?)
        } else {
            None
        };
        let seccomp = self.seccomp_profile().await?;
        let mut spec =
            spec::build(i, self.host(), &image.id, &meta.properties, &self.settings.docker, seccomp.as_deref())
                .map_err(|e| OpError::Invalid(e.to_string()))?;
        spec.volumes = image.volumes.clone();
        spec.files.extend_from_slice(&guest.files);
        spec.config_drive = drive.map(config_drive::DriveFiles);
        // The bench's mark for where Docker's own create + start begins.
        tracing::debug!(instance = %i.uuid(), "container create sent");
        Ok(self.driver.create(&spec, ni).await?)
    }

    /// Starts the created container (the spawn phase).
    pub(crate) async fn start_created(&self, uuid: &str) -> Result<InstanceInfo, OpError> {
        let t = Instant::now();
        // The bench's mark for where Docker's own start begins.
        tracing::debug!(instance = %uuid, "container start sent");
        let info = self.driver.start_created(uuid).await?;
        phase("build", "spawn", t);
        Ok(info)
    }

    /// Steps 5 and 6: block-device and spawning task states saved while Docker
    /// creates and starts the container (a save refused because the
    /// instance is being deleted wins over a start, and the caller removes
    /// the container), then its ports plugged and ACTIVE saved.
    async fn spawn_with_ports(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        ni: &crate::net::NetworkInfo,
        meta: &GlanceImage,
        image: &ImageRef,
        guest: &guest_data::Guest<'_>,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        // 5. The info cache, then block devices (none to prepare for an
        // image-backed container), saved while Docker creates the container.
        let as_requested = i.clone();
        let saves = async {
            self.cache_network(ctx, i, ni).await?;
            self.begin_task(ctx, i, TaskState::BlockDeviceMapping, Expected::Any).await
        };
        let (saved, created) = tokio::join!(saves, self.create_container(&as_requested, meta, image, ni, guest));
        saved?;
        created?;
        // 6. Spawn.
        let spawning = self.begin_task(ctx, i, TaskState::Spawning, Expected::task(TaskState::BlockDeviceMapping));
        let (saved, started) = tokio::join!(spawning, self.start_created(&uuid));
        saved?;
        let info = started?;
        let t = Instant::now();
        self.plug_vifs(&uuid, ni, true).await?;
        if !ni.is_empty() {
            phase("build", "network_plug", t);
        }
        self.save_active(ctx, i, info).await
    }

    /// Step 7: ACTIVE, with the power state the started container reported.
    async fn save_active(&self, ctx: &RequestContext, i: &mut Instance, info: InstanceInfo) -> Result<(), OpError> {
        let t = Instant::now();
        i.set("launched_at", Self::now());
        self.settle(ctx, i, VmState::Active, info.state, Expected::task(TaskState::Spawning)).await?;
        phase("build", "active_saved", t);
        Ok(())
    }

    pub(super) async fn seccomp_profile(&self) -> Result<Option<String>, OpError> {
        match &self.settings.docker.seccomp_profile {
            None => Ok(None),
            Some(path) => tokio::fs::read_to_string(path)
                .await
                .map(Some)
                .map_err(|e| OpError::Invalid(format!("cannot read [docker] seccomp_profile {}: {e}", path.display()))),
        }
    }

    /// `terminate_instance`: stop and remove the container, record the
    /// deletion, free the allocation, destroy the instance row. Idempotent:
    /// a missing container or instance is not an error.
    pub async fn terminate_instance(&self, ctx: &RequestContext, i: Instance) -> Result<(), OpError> {
        let op = Operation::new("compute_terminate_instance")
            .on_failure(OnFailure::ErrorState { clean_task_state: false, refresh_power: false });
        self.operate(ctx, i, op, async |i| {
            let uuid = i.uuid().to_string();
            let t = Instant::now();
            let ni = self.network_info(ctx, i).await?;
            self.consoles.close(&uuid);
            self.driver.destroy(&uuid, self.settings.shutdown_timeout, &ni).await?;
            // A console opened while the container went is closed too.
            self.consoles.close(&uuid);
            self.release_network(i, &ni).await?;
            phase("delete", "destroy", t);
            i.set("terminated_at", Self::now());
            self.settle(ctx, i, VmState::Deleted, PowerState::NoState, Expected::Any).await?;
            if let Some(p) = &self.placement {
                p.delete_allocation(&uuid).await.map_err(|e| OpError::Invalid(e.to_string()))?;
            }
            self.conductor.clean_console_auths(ctx, &uuid).await;
            self.conductor.instance_destroy(ctx, i).await?;
            self.census.record(&uuid, None);
            Ok(())
        })
        .await
    }
}

/// Whether a build failure is this host's (Nova's `RescheduledException`:
/// another host may well succeed): the Docker engine failed, or could not
/// load the image. What the request or the image itself gets wrong (a
/// refused archive, an image not active, a block device, a bad network
/// request) and Nova's own refusals fail the same anywhere: not rescheduled.
pub fn reschedulable(e: &OpError) -> bool {
    use crate::virt::VirtError;
    match e {
        OpError::Virt(VirtError::Engine { .. } | VirtError::Timeout { .. } | VirtError::HostFile { .. }) => true,
        OpError::Virt(VirtError::Net(_)) => true,
        OpError::Image(crate::image::ImageError::Load { .. } | crate::image::ImageError::Docker(_)) => true,
        // Nova's RescheduledByPolicyException.
        OpError::Nova(_) => super::group_policy::is_group_violation(e),
        _ => false,
    }
}

/// Reads the args of a build into a [`BuildRequest`].
pub fn build_request(args: &Map<String, Value>) -> BuildRequest {
    BuildRequest {
        image: args.get("image").cloned().unwrap_or(Value::Null),
        requested_networks: args.get("requested_networks").filter(|v| !v.is_null()).cloned(),
        security_groups: args.get("security_groups").filter(|v| !v.is_null()).cloned(),
        admin_password: args.get("admin_password").and_then(Value::as_str).map(str::to_string),
        block_device_mapping: args.get("block_device_mapping").filter(|v| !v.is_null()).cloned(),
        injected_files: args.get("injected_files").filter(|v| !v.is_null()).cloned(),
        filter_properties: args.get("filter_properties").cloned().unwrap_or(Value::Null),
        request_spec: args.get("request_spec").cloned().unwrap_or(Value::Null),
        host_list: args.get("host_list").cloned().unwrap_or(Value::Null),
    }
}
