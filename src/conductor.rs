//! The conductor API a compute host uses for every database read and write.
//!
//! nova-compute has no database access: each `@remotable` object call becomes
//! an RPC call to topic `conductor` (`object_class_action_versions` for class
//! methods, `object_action` for instance methods), version 3.0. This module
//! wraps those calls for the objects this service uses, with the object
//! versions of the release it talks to.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::objects::{
    ComputeNode, Instance, Manifest, Migration, NovaObject, ObjectError, Service, TaskState, manifest_json,
};
use crate::release::Release;
use crate::rpc::{CallError, RemoteError, RequestContext, RpcClient, Target};

/// A conductor call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    /// The RPC call itself failed (timeout, remote exception, transport).
    #[error("conductor call {method} failed: {source}")]
    Call {
        /// The conductor method called.
        method: String,
        /// Why the call failed.
        source: CallError,
    },
    /// The conductor answered, but not with what the call must return.
    #[error("conductor returned an unusable {what}: {detail}")]
    BadResult {
        /// What was expected (e.g. `Instance`).
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl ConductorError {
    /// The Nova exception the conductor raised, if that is what happened.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ConductorError::Call { source, .. } => source.remote(),
            _ => None,
        }
    }

    /// Whether the conductor raised `nova.exception.<class>`.
    pub fn is_nova(&self, class: &str) -> bool {
        self.remote().is_some_and(|e| e.is_nova(class))
    }

    /// Whether the failure means the instance is gone or was changed by
    /// someone else (the operation must stop, nothing to report).
    pub fn instance_vanished_or_changed(&self) -> bool {
        ["InstanceNotFound", "UnexpectedDeletingTaskStateError", "UnexpectedTaskStateError"]
            .iter()
            .any(|c| self.is_nova(c))
    }
}

impl From<ObjectError> for ConductorError {
    fn from(e: ObjectError) -> Self {
        ConductorError::BadResult { what: "object", detail: e.to_string() }
    }
}

/// The `expected_task_state` of `Instance.save`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// No check.
    Any,
    /// The task state must be one of these (None = no task).
    OneOf(Vec<Option<TaskState>>),
}

impl Expected {
    /// Exactly this task state.
    pub fn task(state: TaskState) -> Self {
        Expected::OneOf(vec![Some(state)])
    }

    /// No task in progress.
    pub fn idle() -> Self {
        Expected::OneOf(vec![None])
    }

    /// Whether an instance whose task state is `current` passes the check.
    pub fn admits(&self, current: Option<&str>) -> bool {
        match self {
            Expected::Any => true,
            Expected::OneOf(states) => states.iter().any(|s| s.map(TaskState::as_str) == current),
        }
    }

    fn to_json(&self) -> Option<Value> {
        let name = |s: &Option<TaskState>| json!(s.map(TaskState::as_str));
        match self {
            Expected::Any => None,
            Expected::OneOf(states) if states.len() == 1 => Some(name(&states[0])),
            Expected::OneOf(states) => Some(Value::Array(states.iter().map(name).collect())),
        }
    }
}

/// Where the conductor's calls go: nova-conductor over RabbitMQ
/// ([`RpcClient`]), or in unit tests an in-memory Nova that answers the same
/// calls, so the compute state machine is tested without a cloud.
pub trait ConductorTransport: Send + Sync + 'static {
    /// Sends one call to `target` and returns its result.
    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<Value, CallError>>;

    /// Sends one cast to `target` (no reply): a move's next step on
    /// another compute host. A transport that cannot cast says so.
    fn cast<'a>(
        &'a self,
        ctx: &'a RequestContext,
        target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        let _ = (ctx, target, args);
        Box::pin(async move {
            Err(CallError::Remote(RemoteError::not_implemented(format!("this transport cannot cast {method}"))))
        })
    }
}

impl ConductorTransport for RpcClient {
    fn call<'a>(
        &'a self,
        ctx: &'a RequestContext,
        target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(RpcClient::call(self, ctx, target, method, args, timeout))
    }

    fn cast<'a>(
        &'a self,
        ctx: &'a RequestContext,
        target: &'a Target,
        method: &'a str,
        args: Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(RpcClient::cast(self, ctx, target, method, args))
    }
}

/// Nova's default `long_rpc_timeout`: how long a conductor task call
/// (a reschedule) may take.
pub const LONG_RPC_TIMEOUT: Duration = Duration::from_secs(1800);

/// Client of nova-conductor's object API.
#[derive(Clone)]
pub struct Conductor {
    rpc: Arc<dyn ConductorTransport>,
    release: Arc<OnceLock<&'static Release>>,
    host: String,
}

fn service_manifest() -> Manifest {
    vec![
        ("Service", "1.22"),
        ("ComputeNode", "1.19"),
        ("HVSpec", "1.2"),
        ("PciDevicePoolList", "1.1"),
        ("PciDevicePool", "1.1"),
    ]
}

fn compute_node_manifest() -> Manifest {
    vec![("ComputeNode", "1.19"), ("HVSpec", "1.2"), ("PciDevicePoolList", "1.1"), ("PciDevicePool", "1.1")]
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Conductor {
    /// A conductor client for `host`.
    pub fn new(rpc: RpcClient, host: &str) -> Self {
        Self::with_transport(Arc::new(rpc), host)
    }

    /// A conductor client for `host` whose calls go to `transport`.
    pub fn with_transport(transport: Arc<dyn ConductorTransport>, host: &str) -> Self {
        Conductor { rpc: transport, release: Default::default(), host: host.to_string() }
    }

    /// Fixes the release once known (object versions depend on it).
    pub fn set_release(&self, release: &'static Release) {
        let _ = self.release.set(release);
    }

    /// The release, once set (Zed's versions until then).
    pub fn release(&self) -> &'static Release {
        self.release.get().copied().unwrap_or(&crate::release::ZED)
    }

    /// The compute host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn instance_manifest(&self) -> Manifest {
        vec![
            ("Instance", self.release().instance_version),
            ("InstanceList", "2.6"),
            ("BlockDeviceMapping", "1.21"),
            ("BlockDeviceMappingList", "1.18"),
            ("EC2Ids", "1.0"),
            ("Flavor", "1.2"),
            ("InstanceDeviceMetadata", "1.0"),
            ("DeviceMetadata", "1.0"),
            ("InstanceFault", "1.2"),
            ("InstanceInfoCache", "1.5"),
            ("InstanceNUMATopology", "1.3"),
            ("InstanceNUMACell", "1.6"),
            ("VirtCPUTopology", "1.0"),
            ("InstancePCIRequests", "1.1"),
            ("InstancePCIRequest", "1.4"),
            ("KeyPairList", "1.3"),
            ("KeyPair", "1.4"),
            ("MigrationContext", "1.2"),
            ("PciDeviceList", "1.3"),
            ("PciDevice", "1.7"),
            ("ResourceList", "1.0"),
            ("Resource", "1.0"),
            ("ResourceMetadata", "1.0"),
            ("SecurityGroupList", "1.1"),
            ("SecurityGroup", "1.2"),
            ("ServiceList", "1.19"),
            ("Service", "1.22"),
            ("ComputeNode", "1.19"),
            ("HVSpec", "1.2"),
            ("PciDevicePoolList", "1.1"),
            ("PciDevicePool", "1.1"),
            ("TagList", "1.1"),
            ("Tag", "1.1"),
            ("TrustedCerts", "1.0"),
            ("VirtCPUModel", "1.0"),
        ]
    }

    async fn call(
        &self,
        ctx: &RequestContext,
        method: &str,
        a: Value,
        timeout: Option<Duration>,
        what: String,
    ) -> Result<Value, ConductorError> {
        let target = Target::new("conductor", "3.0");
        self.rpc
            .call(ctx, &target, method, args(a), timeout)
            .await
            .map_err(|source| ConductorError::Call { method: what, source })
    }

    /// A remotable classmethod (`object_class_action_versions`).
    pub async fn class_action(
        &self,
        ctx: &RequestContext,
        objname: &str,
        objmethod: &str,
        manifest: &Manifest,
        call_args: Vec<Value>,
        kwargs: Value,
    ) -> Result<Value, ConductorError> {
        self.call(
            ctx,
            "object_class_action_versions",
            json!({"objname": objname, "objmethod": objmethod, "object_versions": manifest_json(manifest),
                   "args": call_args, "kwargs": kwargs}),
            None,
            format!("{objname}.{objmethod}"),
        )
        .await
    }

    /// A remotable method on an object (`object_action`): sends the object
    /// with its changes, applies the conductor's updates, returns the result.
    pub async fn object_action(
        &self,
        ctx: &RequestContext,
        obj: &mut NovaObject,
        objmethod: &str,
        kwargs: Value,
    ) -> Result<Value, ConductorError> {
        let what = format!("{}.{objmethod}", obj.name());
        let reply = self
            .call(
                ctx,
                "object_action",
                json!({"objinst": obj.to_primitive(), "objmethod": objmethod, "args": [], "kwargs": kwargs}),
                None,
                what.clone(),
            )
            .await?;
        match reply {
            Value::Array(mut pair) if pair.len() == 2 => {
                let result = pair.pop().unwrap_or(Value::Null);
                let updates = pair.pop().unwrap_or(Value::Null);
                obj.apply_updates(&updates);
                Ok(result)
            }
            other => Err(ConductorError::BadResult { what: "object_action reply", detail: format!("{what}: {other}") }),
        }
    }

    /// `baseapi.ping`: true when the conductor answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), ConductorError> {
        let target = Target::new("conductor", "1.0").namespace("baseapi");
        self.rpc
            .call(&RequestContext::admin(), &target, "ping", args(json!({"arg": "1.21 GigaWatts"})), Some(timeout))
            .await
            .map(|_| ())
            .map_err(|source| ConductorError::Call { method: "ping".into(), source })
    }

    /// Waits for the conductor like `nova.conductor.api.API.wait_until_ready`:
    /// pings with a 10 s timeout until it answers (forever, logging).
    pub async fn wait_until_ready(&self) {
        let mut attempt = 0u32;
        loop {
            match self.ping(Duration::from_secs(10)).await {
                Ok(()) => return,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "nova-conductor not answering yet; retrying");
                    if !matches!(e, ConductorError::Call { source: CallError::Timeout { .. }, .. }) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// `Service.get_minimum_version(binary)`.
    pub async fn service_minimum_version(&self, ctx: &RequestContext, binary: &str) -> Result<i64, ConductorError> {
        let v = self
            .class_action(ctx, "Service", "get_minimum_version", &service_manifest(), vec![json!(binary)], json!({}))
            .await?;
        v.as_i64().ok_or(ConductorError::BadResult { what: "service version", detail: v.to_string() })
    }

    /// `Service.get_by_host_and_binary(host, "nova-compute")`.
    pub async fn service_get(&self, ctx: &RequestContext) -> Result<Option<Service>, ConductorError> {
        let v = self
            .class_action(
                ctx,
                "Service",
                "get_by_host_and_binary",
                &service_manifest(),
                vec![json!(self.host), json!("nova-compute")],
                json!({}),
            )
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(Service::from_primitive(&v)?))
    }

    /// `Service.create`.
    pub async fn service_create(&self, ctx: &RequestContext, service: &mut Service) -> Result<(), ConductorError> {
        self.object_action(ctx, &mut service.obj, "create", json!({})).await.map(|_| ())
    }

    /// `Service.save` (heartbeats, version updates).
    pub async fn service_save(&self, ctx: &RequestContext, service: &mut Service) -> Result<(), ConductorError> {
        self.object_action(ctx, &mut service.obj, "save", json!({})).await.map(|_| ())
    }

    /// `ComputeNode.get_by_uuid`; `None` when there is none.
    pub async fn compute_node_by_uuid(
        &self,
        ctx: &RequestContext,
        uuid: &str,
    ) -> Result<Option<ComputeNode>, ConductorError> {
        let r = self
            .class_action(ctx, "ComputeNode", "get_by_uuid", &compute_node_manifest(), vec![json!(uuid)], json!({}))
            .await;
        optional_compute_node(r)
    }

    /// `ComputeNode.get_by_host_and_nodename`; `None` when there is none.
    pub async fn compute_node_by_name(
        &self,
        ctx: &RequestContext,
        nodename: &str,
    ) -> Result<Option<ComputeNode>, ConductorError> {
        let r = self
            .class_action(
                ctx,
                "ComputeNode",
                "get_by_host_and_nodename",
                &compute_node_manifest(),
                vec![json!(self.host), json!(nodename)],
                json!({}),
            )
            .await;
        optional_compute_node(r)
    }

    /// `ComputeNode.create`.
    pub async fn compute_node_create(
        &self,
        ctx: &RequestContext,
        node: &mut ComputeNode,
    ) -> Result<(), ConductorError> {
        self.object_action(ctx, &mut node.obj, "create", json!({})).await.map(|_| ())
    }

    /// `ComputeNode.save` of the changed fields (no-op without changes).
    pub async fn compute_node_save(&self, ctx: &RequestContext, node: &mut ComputeNode) -> Result<(), ConductorError> {
        if node.obj.changes().is_empty() {
            return Ok(());
        }
        self.object_action(ctx, &mut node.obj, "save", json!({})).await.map(|_| ())
    }

    /// `Instance.get_by_uuid`, with the attributes a compute needs.
    pub async fn instance_get(&self, ctx: &RequestContext, uuid: &str) -> Result<Instance, ConductorError> {
        let v = self
            .class_action(
                ctx,
                "Instance",
                "get_by_uuid",
                &self.instance_manifest(),
                vec![json!(uuid)],
                json!({"expected_attrs": ["flavor", "info_cache", "metadata", "system_metadata"]}),
            )
            .await?;
        Ok(Instance::from_primitive(&v)?)
    }

    /// `InstanceList.get_by_host(host)`.
    pub async fn instances_on_host(&self, ctx: &RequestContext) -> Result<Vec<Instance>, ConductorError> {
        let v = self
            .class_action(
                ctx,
                "InstanceList",
                "get_by_host",
                &self.instance_manifest(),
                vec![json!(self.host)],
                json!({"expected_attrs": ["flavor", "info_cache", "metadata", "system_metadata"]}),
            )
            .await?;
        let list = NovaObject::expect(&v, "InstanceList")?;
        let objects = list.get("objects").and_then(Value::as_array).cloned().unwrap_or_default();
        objects.iter().map(|o| Instance::from_primitive(o).map_err(Into::into)).collect()
    }

    /// `Instance.save(expected_task_state=...)` of the changed fields.
    pub async fn instance_save(
        &self,
        ctx: &RequestContext,
        instance: &mut Instance,
        expected: Expected,
    ) -> Result<(), ConductorError> {
        let mut kwargs = Map::new();
        if let Some(e) = expected.to_json() {
            kwargs.insert("expected_task_state".into(), e);
        }
        self.object_action(ctx, &mut instance.obj, "save", Value::Object(kwargs)).await.map(|_| ())
    }

    /// The evacuations away from this host that are started, in progress
    /// or done (`MigrationList.get_by_filters`, as Nova's
    /// `_destroy_evacuated_instances` reads them at start-up).
    pub async fn evacuations_from_host(&self, ctx: &RequestContext) -> Result<Vec<Migration>, ConductorError> {
        let filters = json!({"source_compute": self.host, "status": ["accepted", "pre-migrating", "done"],
                             "migration_type": "evacuation"});
        self.migration_list(ctx, "get_by_filters", vec![filters]).await
    }

    /// The evacuations this host started (`pre-migrating`, set by its
    /// claim) and did not finish: at start-up, those a crash of this
    /// service cut short. An `accepted` one has not started here: its cast
    /// may still wait in the queue. Nova's query has no `dest_compute`
    /// filter (it would ignore one and return every host's evacuations):
    /// `host` matches source or destination, and the destination is checked
    /// here.
    pub async fn evacuations_to_host(&self, ctx: &RequestContext) -> Result<Vec<Migration>, ConductorError> {
        let filters = json!({"host": self.host, "status": ["pre-migrating"], "migration_type": "evacuation"});
        let all = self.migration_list(ctx, "get_by_filters", vec![filters]).await?;
        Ok(all.into_iter().filter(|m| m.dest_compute() == Some(self.host.as_str())).collect())
    }

    /// One `MigrationList` class method, its migrations decoded.
    async fn migration_list(
        &self,
        ctx: &RequestContext,
        method: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Migration>, ConductorError> {
        let manifest: Manifest = vec![("MigrationList", "1.5"), ("Migration", "1.7")];
        let v = self.class_action(ctx, "MigrationList", method, &manifest, args, json!({})).await?;
        let list = NovaObject::expect(&v, "MigrationList")?;
        let objects = list.get("objects").and_then(Value::as_array).cloned().unwrap_or_default();
        objects.iter().map(|o| Migration::from_primitive(o).map_err(Into::into)).collect()
    }

    /// `MigrationList.get_unconfirmed_by_dest_compute`: the migrations that
    /// landed on this host (`finished`) and have not changed for at least
    /// `window` (Nova's `_poll_unconfirmed_resizes`).
    pub async fn unconfirmed_migrations(
        &self,
        ctx: &RequestContext,
        window: Duration,
    ) -> Result<Vec<Migration>, ConductorError> {
        let args = vec![json!(window.as_secs()), json!(self.host)];
        self.migration_list(ctx, "get_unconfirmed_by_dest_compute", args).await
    }

    /// `Service.get_by_compute_host`: the compute service of another host
    /// (None when Nova has none).
    pub async fn compute_service_of(
        &self,
        ctx: &RequestContext,
        host: &str,
    ) -> Result<Option<Service>, ConductorError> {
        match self
            .class_action(ctx, "Service", "get_by_compute_host", &service_manifest(), vec![json!(host)], json!({}))
            .await
        {
            Ok(v) if v.is_null() => Ok(None),
            Ok(v) => Ok(Some(Service::from_primitive(&v)?)),
            Err(e) if e.is_nova("ComputeHostNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `Migration.save()` of the changed fields (its status, as the
    /// compute hosts move it along).
    pub async fn migration_save(&self, ctx: &RequestContext, migration: &mut Migration) -> Result<(), ConductorError> {
        if migration.obj.changes().is_empty() {
            return Ok(());
        }
        self.object_action(ctx, &mut migration.obj, "save", json!({})).await.map(|_| ())
    }

    /// Casts `method` to the compute service of `host` (compute RPC API
    /// 6.0), as `nova/compute/rpcapi.py` does for a move's next step.
    pub async fn cast_compute(
        &self,
        ctx: &RequestContext,
        host: &str,
        method: &str,
        a: Value,
    ) -> Result<(), ConductorError> {
        let target = Target::new("compute", "6.0").server(host);
        self.rpc
            .cast(ctx, &target, method, args(a))
            .await
            .map_err(|source| ConductorError::Call { method: format!("compute.{host}.{method}"), source })
    }

    /// `Migration.get_by_instance_and_status`: the instance's migration in
    /// `status`, if any.
    pub async fn migration_by_instance_and_status(
        &self,
        ctx: &RequestContext,
        instance_uuid: &str,
        status: &str,
    ) -> Result<Option<Migration>, ConductorError> {
        let manifest: Manifest = vec![("Migration", "1.7")];
        match self
            .class_action(
                ctx,
                "Migration",
                "get_by_instance_and_status",
                &manifest,
                vec![json!(instance_uuid), json!(status)],
                json!({}),
            )
            .await
        {
            Ok(v) => Ok(Some(Migration::from_primitive(&v)?)),
            Err(e) if e.is_nova("MigrationNotFoundByStatus") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ComputeTaskAPI.migrate_server` (conductor `compute_task` 1.20): a
    /// cold migration or resize that failed on the destination started again
    /// on the next of the scheduler's alternate hosts (`host_list`), as
    /// Nova's `_reschedule_resize_or_reraise` does. A call, bounded by Nova's
    /// default `long_rpc_timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn migrate_server(
        &self,
        ctx: &RequestContext,
        instance: &Instance,
        filter_properties: Value,
        flavor: Value,
        clean_shutdown: bool,
        request_spec: Value,
        host_list: Value,
    ) -> Result<(), ConductorError> {
        let target = Target::new("conductor", "1.20").namespace("compute_task");
        let a = json!({
            "instance": instance.to_primitive(), "scheduler_hint": {"filter_properties": filter_properties},
            "live": false, "rebuild": false, "flavor": flavor, "block_migration": null,
            "disk_over_commit": null, "reservations": null, "clean_shutdown": clean_shutdown,
            "request_spec": request_spec, "host_list": host_list,
        });
        self.rpc
            .call(ctx, &target, "migrate_server", args(a), Some(LONG_RPC_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|source| ConductorError::Call { method: "compute_task.migrate_server".into(), source })
    }

    /// `ComputeTaskAPI.build_instances` (conductor `compute_task` 1.19, a
    /// cast): a build that failed here sent back with the scheduler's
    /// alternate hosts, as Nova's `_do_build_and_run_instance` does on a
    /// `RescheduledException`.
    pub async fn build_instances(
        &self,
        ctx: &RequestContext,
        instance: &Instance,
        req: &crate::compute::build::BuildRequest,
        filter_properties: Value,
    ) -> Result<(), ConductorError> {
        let target = Target::new("conductor", "1.19").namespace("compute_task");
        let a = json!({
            "instances": [instance.to_primitive()], "image": req.image, "filter_properties": filter_properties,
            "admin_password": req.admin_password, "injected_files": req.injected_files.clone().unwrap_or(json!([])),
            "requested_networks": req.requested_networks, "security_groups": req.security_groups.clone().unwrap_or(json!([])),
            "request_spec": req.request_spec, "host_lists": [req.host_list],
        });
        self.rpc
            .cast(ctx, &target, "build_instances", args(a))
            .await
            .map_err(|source| ConductorError::Call { method: "compute_task.build_instances".into(), source })
    }

    /// `InstanceGroup.get_by_hint` (a name or uuid; None when there is no
    /// such group).
    pub async fn instance_group_by_hint(
        &self,
        ctx: &RequestContext,
        hint: &str,
    ) -> Result<Option<NovaObject>, ConductorError> {
        self.instance_group(ctx, "get_by_hint", hint).await
    }

    /// `InstanceGroup.get_by_uuid` (None when there is no such group).
    pub async fn instance_group_by_uuid(
        &self,
        ctx: &RequestContext,
        uuid: &str,
    ) -> Result<Option<NovaObject>, ConductorError> {
        self.instance_group(ctx, "get_by_uuid", uuid).await
    }

    async fn instance_group(
        &self,
        ctx: &RequestContext,
        method: &str,
        key: &str,
    ) -> Result<Option<NovaObject>, ConductorError> {
        let manifest: Manifest = vec![("InstanceGroup", "1.11")];
        match self.class_action(ctx, "InstanceGroup", method, &manifest, vec![json!(key)], json!({})).await {
            Ok(v) => Ok(Some(NovaObject::expect(&v, "InstanceGroup")?)),
            Err(e) if e.is_nova("InstanceGroupNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `InstanceGroup.get_hosts(exclude)`: the hosts of the group's members.
    pub async fn instance_group_hosts(
        &self,
        ctx: &RequestContext,
        group: &mut NovaObject,
        exclude: &str,
    ) -> Result<Vec<String>, ConductorError> {
        let v = self.object_action(ctx, group, "get_hosts", json!({"exclude": [exclude]})).await?;
        Ok(strings(&v))
    }

    /// `InstanceList.get_uuids_by_host`: the uuids of this host's instances.
    pub async fn instance_uuids_on_host(&self, ctx: &RequestContext) -> Result<Vec<String>, ConductorError> {
        let manifest: Manifest = vec![("InstanceList", "2.6"), ("Instance", "2.8")];
        let v = self
            .class_action(ctx, "InstanceList", "get_uuids_by_host", &manifest, vec![json!(self.host)], json!({}))
            .await?;
        Ok(strings(&v))
    }

    /// `MigrationList.get_in_progress_by_host_and_node`: the instances
    /// moving to or from this host.
    pub async fn migrating_instances(&self, ctx: &RequestContext, node: &str) -> Result<Vec<String>, ConductorError> {
        let manifest: Manifest = vec![("MigrationList", "1.5"), ("Migration", "1.7")];
        let args = vec![json!(self.host), json!(node)];
        let v = self
            .class_action(ctx, "MigrationList", "get_in_progress_by_host_and_node", &manifest, args, json!({}))
            .await?;
        let list = NovaObject::expect(&v, "MigrationList")?;
        let objects = list.get("objects").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(objects.iter().filter_map(|o| o["nova_object.data"]["instance_uuid"].as_str().map(str::to_string)).collect())
    }

    /// `Instance.destroy()` (soft delete of the row, as nova-compute does).
    pub async fn instance_destroy(&self, ctx: &RequestContext, instance: &mut Instance) -> Result<(), ConductorError> {
        self.object_action(ctx, &mut instance.obj, "destroy", json!({})).await.map(|_| ())
    }

    /// `InstanceActionEvent.event_start`: the action row is nova-api's; a
    /// missing action (`InstanceActionNotFound`) is not an error for us.
    pub async fn event_start(&self, ctx: &RequestContext, uuid: &str, event: &str) {
        let r = self
            .class_action(
                ctx,
                "InstanceActionEvent",
                "event_start",
                &vec![("InstanceActionEvent", "1.4")],
                vec![json!(uuid), json!(event)],
                json!({"want_result": false, "host": self.host}),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(instance = uuid, event, error = %e, "could not record the action event start");
        }
    }

    /// `InstanceAction.action_start`: an action recorded by this host itself
    /// under the context's request id (Nova's power sync records `stop` this
    /// way, through its local compute API, before it stops an instance).
    pub async fn action_start(&self, ctx: &RequestContext, uuid: &str, action: &str) {
        let r = self
            .class_action(
                ctx,
                "InstanceAction",
                "action_start",
                &vec![("InstanceAction", "1.2")],
                vec![json!(uuid), json!(action)],
                json!({"want_result": false}),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(instance = uuid, action, error = %e, "could not record the instance action");
        }
    }

    /// `InstanceActionEvent.event_finish_with_failure` (failure = message and
    /// traceback text; `Error` result when present).
    pub async fn event_finish(&self, ctx: &RequestContext, uuid: &str, event: &str, failure: Option<(&str, &str)>) {
        let (exc_val, exc_tb) = match failure {
            Some((v, tb)) => (json!(v), json!(tb)),
            None => (Value::Null, Value::Null),
        };
        let r = self
            .class_action(
                ctx,
                "InstanceActionEvent",
                "event_finish_with_failure",
                &vec![("InstanceActionEvent", "1.4")],
                vec![json!(uuid), json!(event)],
                json!({"exc_val": exc_val, "exc_tb": exc_tb, "want_result": false}),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(instance = uuid, event, error = %e, "could not record the action event finish");
        }
    }

    /// `InstanceFault.create`, as `add_instance_fault_from_exc` does.
    pub async fn fault_create(&self, ctx: &RequestContext, uuid: &str, code: u16, message: &str, details: &str) {
        let mut fault = NovaObject::new("InstanceFault", "1.2");
        fault.set("instance_uuid", uuid);
        fault.set("code", code);
        // The DB column is 255 characters.
        fault.set("message", message.chars().take(255).collect::<String>());
        fault.set("details", details);
        fault.set("host", self.host.as_str());
        if let Err(e) = self.object_action(ctx, &mut fault, "create", json!({})).await {
            tracing::warn!(instance = uuid, error = %e, "could not record the instance fault");
        }
    }

    /// `InstanceInfoCache.get_by_instance_uuid`, put on `instance` (Nova's
    /// lazy load of `info_cache`, for an instance the API sent without it).
    /// An instance with no cache row gets an empty one.
    pub async fn info_cache_load(&self, ctx: &RequestContext, instance: &mut Instance) -> Result<(), ConductorError> {
        let uuid = instance.uuid().to_string();
        let loaded = self
            .class_action(
                ctx,
                "InstanceInfoCache",
                "get_by_instance_uuid",
                &vec![("InstanceInfoCache", "1.5")],
                vec![json!(uuid)],
                json!({}),
            )
            .await;
        let prim = match loaded {
            Ok(v) => v,
            Err(e) if e.is_nova("InstanceInfoCacheNotFound") => {
                let mut empty = NovaObject::new("InstanceInfoCache", "1.5");
                empty.set_clean("instance_uuid", uuid);
                empty.set_clean("network_info", "[]");
                empty.to_primitive()
            }
            Err(e) => return Err(e),
        };
        instance.obj.set_clean("info_cache", prim);
        Ok(())
    }

    /// `InstanceInfoCache.save` of a new network_info (JSON text).
    pub async fn info_cache_save(
        &self,
        ctx: &RequestContext,
        instance: &mut Instance,
        network_info_json: &str,
    ) -> Result<(), ConductorError> {
        let mut cache = NovaObject::new("InstanceInfoCache", "1.5");
        cache.set_clean("instance_uuid", instance.uuid());
        cache.set("network_info", network_info_json);
        self.object_action(ctx, &mut cache, "save", json!({})).await?;
        // Keep our copy of the instance in step, without marking it changed.
        let prim = cache.to_primitive();
        instance.obj.set_clean("info_cache", prim);
        Ok(())
    }

    /// `ConsoleAuthToken(...).authorize(ttl)`, as Nova's compute manager
    /// issues a console token: the conductor stores its hash and returns
    /// the token.
    pub async fn authorize_console(
        &self,
        ctx: &RequestContext,
        token: ConsoleToken<'_>,
        ttl: Duration,
    ) -> Result<String, ConductorError> {
        // 1.1 is what both releases accept (Zed has 1.1, later ones read it).
        let mut obj = NovaObject::new("ConsoleAuthToken", "1.1");
        obj.set("console_type", token.console_type);
        obj.set("host", token.host);
        obj.set("port", token.port);
        obj.set("internal_access_path", Value::Null);
        obj.set("instance_uuid", token.instance_uuid);
        obj.set("access_url_base", token.access_url_base);
        let result = self.object_action(ctx, &mut obj, "authorize", json!({"ttl": ttl.as_secs()})).await?;
        result
            .as_str()
            .or_else(|| obj.get_str("token"))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ConductorError::BadResult { what: "ConsoleAuthToken.authorize", detail: result.to_string() })
    }

    /// `ConsoleAuthToken.clean_console_auths_for_instance` (part of a delete).
    pub async fn clean_console_auths(&self, ctx: &RequestContext, uuid: &str) {
        let r = self
            .class_action(
                ctx,
                "ConsoleAuthToken",
                "clean_console_auths_for_instance",
                &vec![("ConsoleAuthToken", "1.1")],
                vec![json!(uuid)],
                json!({}),
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(instance = uuid, error = %e, "console auth cleanup failed");
        }
    }
}

/// What a console token grants: a connection to `host:port` for the
/// instance, through the proxy at `access_url_base`.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleToken<'a> {
    /// `serial`.
    pub console_type: &'a str,
    /// The address the proxy connects to.
    pub host: &'a str,
    /// The port the proxy connects to.
    pub port: u16,
    /// The instance.
    pub instance_uuid: &'a str,
    /// The proxy's URL (`[serial_console] base_url`).
    pub access_url_base: &'a str,
}

/// A ComputeNode lookup's answer: `None` when the conductor has none (a
/// null result or ComputeHostNotFound), so start-up creates it.
fn optional_compute_node(r: Result<Value, ConductorError>) -> Result<Option<ComputeNode>, ConductorError> {
    match r {
        Ok(v) if v.is_null() => Ok(None),
        Ok(v) => Ok(Some(ComputeNode::from_primitive(&v)?)),
        Err(e) if e.is_nova("ComputeHostNotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The strings of a JSON list (anything else: none).
fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}
