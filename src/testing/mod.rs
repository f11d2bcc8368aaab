//! Fakes for unit tests of the compute state machine: an in-memory driver
//! ([`fake_driver`]), an in-memory Nova behind the conductor
//! ([`fake_nova`]), an in-memory Neutron ([`fake_neutron`]) and Glance
//! ([`fake_glance`]), and a [`Harness`] that builds a [`ComputeManager`] on
//! them, so each operation's success and failure paths run in milliseconds
//! without RabbitMQ, Docker or OpenStack.

pub mod fake_driver;
pub mod fake_glance;
pub mod fake_neutron;
pub mod fake_nova;
pub mod fake_placement;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::compute::ComputeManager;
use crate::compute::host::HostRegistrar;
use crate::conductor::Conductor;
use crate::config::{Layered, Settings};
use crate::image::{ImageService, ImageStore};
use crate::network::PortService;
use crate::objects::{Instance, PowerState, TaskState, VmState};
use crate::rpc::RequestContext;

pub use fake_driver::FakeDriver;
pub use fake_glance::FakeGlance;
pub use fake_neutron::FakeNeutron;
pub use fake_nova::{Cast, FakeNova};
pub use fake_placement::FakePlacement;

/// The host name of the harness's compute.
pub const HOST: &str = "fake-host";
/// The project owning every instance of the harness.
pub const PROJECT: &str = "project-1";

/// A compute manager on fakes.
pub struct Harness {
    /// The manager under test.
    pub manager: Arc<ComputeManager<FakeDriver>>,
    /// Its driver.
    pub driver: Arc<FakeDriver>,
    /// The Nova behind its conductor.
    pub nova: Arc<FakeNova>,
    /// Its Neutron.
    pub neutron: Arc<FakeNeutron>,
    /// Its Glance.
    pub glance: Arc<FakeGlance>,
    /// Its Placement.
    pub placement: Arc<FakePlacement>,
    /// The context requests come with.
    pub ctx: RequestContext,
}

impl Harness {
    /// A ready manager with no instances.
    pub fn new() -> Self {
        Self::with_options("")
    }

    /// The same with more `[DEFAULT]` options (INI lines).
    pub fn with_options(options: &str) -> Self {
        let text = format!("[DEFAULT]\ntransport_url = rabbit://fake/\nhost = {HOST}\n{options}\n");
        let settings = Arc::new(Settings::from_layered(&Layered::from_text(&text).expect("ini")).expect("settings"));
        let nova = Arc::new(FakeNova::default());
        let conductor = Conductor::with_transport(nova.clone(), HOST);
        let driver = Arc::new(FakeDriver::default());
        let glance = Arc::new(FakeGlance::default());
        let store: Arc<dyn ImageStore> = glance.clone();
        let images = ImageService::with_store(store, driver.clone(), crate::image::archive_limits(&settings.docker));
        let registrar = HostRegistrar {
            settings: settings.clone(),
            conductor: conductor.clone(),
            placement: None,
            driver: driver.clone(),
        };
        let neutron = Arc::new(FakeNeutron::default());
        let ports: Arc<dyn PortService> = neutron.clone();
        let placement = Arc::new(FakePlacement::default());
        let allocations: Arc<dyn crate::placement::Allocations> = placement.clone();
        let manager = Arc::new(ComputeManager::new(
            settings,
            conductor,
            Some(allocations),
            driver.clone(),
            images,
            registrar,
            Some(ports),
        ));
        manager.mark_ready();
        Harness { manager, driver, nova, neutron, glance, placement, ctx: RequestContext::admin() }
    }

    /// An instance of this host in `vm`/`task`, with a container in `power`
    /// (none for NOSTATE); returns its uuid.
    pub fn instance(&self, vm: VmState, task: Option<TaskState>, power: PowerState) -> String {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.nova.add_instance(json!({
            "uuid": uuid, "id": 1, "project_id": PROJECT, "host": HOST, "node": HOST, "vm_state": vm.as_str(),
            "task_state": task.map(TaskState::as_str), "power_state": power.code(),
            "memory_mb": 64, "vcpus": 1, "root_gb": 1, "image_ref": "img-1",
            "system_metadata": {}, "metadata": {},
            "info_cache": {"nova_object.name": "InstanceInfoCache", "nova_object.namespace": "nova",
                "nova_object.version": "1.5", "nova_object.data": {"network_info": "[]"}},
        }));
        if power != PowerState::NoState {
            self.driver.add_container(&uuid, power);
        }
        uuid
    }

    /// The instance as an RPC brings it.
    pub fn rpc_instance(&self, uuid: &str) -> Instance {
        self.nova.instance(uuid)
    }

    /// `(vm_state, task_state, power_state)` as Nova has them.
    pub fn states(&self, uuid: &str) -> (Option<VmState>, Option<TaskState>, PowerState) {
        let i = self.nova.instance(uuid);
        (i.vm_state(), i.task_state(), i.power_state())
    }

    /// Sets the instance's task state as the API does before it casts.
    pub fn request(&self, uuid: &str, task: TaskState) {
        self.nova.set_field(uuid, "task_state", Value::from(task.as_str()));
    }
}

/// A registered host's records whose node (and resource provider) is `node_uuid`.
pub fn host_records(node_uuid: &str) -> crate::compute::host::HostRecords {
    crate::compute::host::HostRecords {
        service: tokio::sync::Mutex::new(crate::objects::Service::new_compute(HOST, 66)),
        node: tokio::sync::Mutex::new(
            crate::objects::ComputeNode::from_primitive(&json!({
            "nova_object.name": "ComputeNode", "nova_object.namespace": "nova", "nova_object.version": "1.19",
            "nova_object.data": {"uuid": node_uuid, "host": HOST}}))
            .expect("a node"),
        ),
        node_uuid: node_uuid.to_string(),
        node_id: std::sync::atomic::AtomicI64::new(1),
        disabled: std::sync::atomic::AtomicBool::new(false),
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
