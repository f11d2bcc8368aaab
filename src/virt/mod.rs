//! The virtualisation driver contract, in the spirit of Nova's
//! `nova/virt/driver.py` `ComputeDriver`, restricted to what containers can
//! honestly do, and its Docker implementation.
//!
//! The compute manager drives the Nova state machine and talks to Nova; a
//! driver only acts on the host, and owns everything there for an instance:
//! its container, the guest's files, and the host side of its ports (plugged
//! from the `network_info` the manager hands over: the manager never sees a
//! pid or a namespace). Operations are idempotent where Nova expects
//! it (destroying a missing instance succeeds) and every engine call is
//! bounded in time.

pub mod attach;
pub mod capabilities;
pub mod config_drive;
pub mod console;
pub mod docker;
pub mod guest_files;
pub mod host_network;
pub mod net_dev;
pub mod root_disk;
pub mod spec;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use spec::ContainerSpec;

use crate::net::{NetError, NetworkInfo, Vif};

pub use crate::objects::states::PowerState;

/// What the engine reports about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    /// The Nova instance the container runs.
    pub uuid: String,
    /// Docker's id of the container.
    pub container_id: String,
    /// The container's state in Nova's terms, for `power_state`.
    pub state: PowerState,
    /// Whether the last exit was an OOM kill.
    pub oom_killed: bool,
    /// The exit code of the last run, as Docker reports it (0 when it never
    /// stopped).
    pub exit_code: Option<i64>,
    /// When the container last started (RFC 3339, as Docker reports it).
    pub started_at: Option<String>,
}

/// The host's resources as reported to Nova and Placement.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResources {
    /// CPUs the engine sees, before overcommit.
    pub vcpus: u64,
    /// Memory the engine sees, in MiB.
    pub memory_mb: u64,
    /// Size of the filesystem holding Docker's data, in GiB.
    pub disk_gb: u64,
    /// Free space on that filesystem, in GiB.
    pub disk_free_gb: u64,
    /// The engine version as an integer (Nova's `convert_version_to_int`).
    pub hypervisor_version: i64,
    /// The host's CPU architecture in Nova's spelling (e.g. `x86_64`).
    pub arch: String,
    /// JSON text for `ComputeNode.cpu_info`.
    pub cpu_info: String,
}

/// Runtime statistics of one instance (for diagnostics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceStats {
    /// CPU time the container used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory the container uses now, in bytes.
    pub memory_used_bytes: u64,
    /// The container's memory limit (its flavor's RAM), in bytes.
    pub memory_limit_bytes: u64,
    /// CPUs the container may run on.
    pub online_cpus: u64,
    /// Per interface (loopback left out), by name.
    pub nics: Vec<NicStats>,
    /// Seconds since the container started; None when it is not running.
    pub uptime_s: Option<u64>,
}

/// Counters of one network interface.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NicStats {
    /// The interface name inside the container (e.g. `eth0`).
    pub name: String,
    /// The interface's MAC, when the container's sysfs shows it.
    pub mac_address: Option<String>,
    /// Bytes received.
    pub rx_octets: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drop: u64,
    /// Bytes sent.
    pub tx_octets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_drop: u64,
}

/// A container this host runs, as found by label (for reconciliation).
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedContainer {
    /// The instance uuid from the container's `nova.instance` label.
    pub uuid: String,
    /// Docker's id of the container.
    pub container_id: String,
    /// The container's state in Nova's terms.
    pub state: PowerState,
    /// All its labels, as the engine lists them.
    pub labels: BTreeMap<String, String>,
}

/// How much of a container's filesystem is the image it runs from and how
/// much the instance wrote: what a move carries (the image may itself hold
/// what earlier moves committed).
#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemSize {
    /// The id of the image the container runs from.
    pub image: String,
    /// That image's size (all its layers).
    pub image_bytes: u64,
    /// Bytes created or changed by the instance (`SizeRw`).
    pub written_bytes: u64,
}

/// The measured root disk of one running instance (the writable layer).
#[derive(Debug, Clone, PartialEq)]
pub struct RootDiskUsage {
    /// The instance the container runs.
    pub uuid: String,
    /// Bytes created or changed by the instance (`SizeRw`).
    pub used_bytes: u64,
    /// Its limit in GiB (the container's `nova.root_gb` label).
    pub limit_gb: u64,
}

impl RootDiskUsage {
    /// Whether the instance wrote more than its limit.
    pub fn over_limit(&self) -> bool {
        self.used_bytes > self.limit_gb.saturating_mul(1 << 30)
    }
}

/// A change seen on the engine's event stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    /// The instance whose container changed.
    pub uuid: String,
    /// Docker's event action (`start`, `die`, `oom`, ...).
    pub action: String,
}

/// Driver failures.
#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    /// The instance has no container here; Nova maps it to InstanceNotFound.
    #[error("instance {0} has no container on this host")]
    NotFound(String),
    /// The engine refused or failed an operation.
    #[error("Docker {op} failed: {detail}")]
    Engine {
        /// The engine operation (e.g. `create`).
        op: String,
        /// The engine's message.
        detail: String,
        /// The HTTP status the engine answered, when it answered.
        status: Option<u16>,
    },
    /// The engine did not answer in time; the operation's outcome is unknown.
    #[error("Docker {op} did not finish within {after:?}")]
    Timeout {
        /// The engine operation.
        op: String,
        /// The time it was given.
        after: Duration,
    },
    /// The container exists but does not run (e.g. attaching to a stopped
    /// instance's console).
    #[error("instance {0} is not running")]
    NotRunning(String),
    /// The request cannot be honoured by this driver; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A file the driver keeps on the host for an instance (its resolv.conf
    /// and hosts) could not be written or removed.
    #[error("instance file {path}: {source}")]
    HostFile {
        /// The file on the host.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The host side of a port (plugging, unplugging, the netns entry).
    #[error("network plumbing: {0}")]
    Net(#[from] NetError),
}

/// A Docker image reference resolved to its id.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// `sha256:<hex>`: what containers are created from.
    pub id: String,
    /// Mount points of the volumes the host removed from the image
    /// (`image::archive::VOLUMES_LABEL`), to create in its containers.
    pub volumes: Vec<String>,
}

/// A local image and its references (for finding what the host loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalImage {
    /// `sha256:<hex>`.
    pub id: String,
    /// Its `repo:tag` references.
    pub tags: Vec<String>,
    /// As in [`ImageRef::volumes`].
    pub volumes: Vec<String>,
}

/// The compute driver contract.
pub trait Driver: Send + Sync + 'static {
    /// Whether the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// The host's capacity.
    fn host_resources(&self) -> impl Future<Output = Result<HostResources, VirtError>> + Send;
    /// Containers of this host's instances (found by label).
    fn list_instances(&self) -> impl Future<Output = Result<Vec<ManagedContainer>, VirtError>> + Send;
    /// Creates the container of an instance, not started yet (replacing a
    /// leftover container of the same instance), with the guest's view of
    /// `network_info` (its DNS servers and addresses). Separate from
    /// `start_created` so a build can create while it saves its state to the
    /// conductor.
    fn create(
        &self,
        spec: &ContainerSpec,
        network_info: &NetworkInfo,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Starts a container made by `create`; removes it when it cannot start,
    /// so no created-but-broken container is left behind.
    fn start_created(&self, uuid: &str) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// Stops (gracefully within `timeout`) and removes the container, its
    /// anonymous volumes and the host side of the ports of `network_info`;
    /// succeeds when there is nothing to remove.
    fn destroy(
        &self,
        uuid: &str,
        timeout: Duration,
        network_info: &NetworkInfo,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Sets the instance's container aside for a rebuild: stopped
    /// (gracefully within `timeout`) and renamed, so that a new container
    /// takes the instance's name while the old one still exists. Returns
    /// the state it had, None when the instance has no container. Then
    /// either [`Driver::discard_set_aside`] or [`Driver::restore_set_aside`].
    fn set_aside(
        &self,
        uuid: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<PowerState>, VirtError>> + Send;
    /// Removes the container set aside (the new one runs); nothing to do
    /// when there is none.
    fn discard_set_aside(&self, uuid: &str) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Puts the container set aside back under the instance's name,
    /// removing a new container of the instance first (the rebuild failed).
    /// It stays stopped. Returns whether there was one to put back.
    fn restore_set_aside(&self, uuid: &str) -> impl Future<Output = Result<bool, VirtError>> + Send;
    /// Plugs every port of `network_info` into the running instance, in
    /// order (`eth0`, `eth1`, ...); needed after every start, since a started
    /// container has a new network namespace. Nothing to do without ports.
    fn plug_vifs(&self, uuid: &str, network_info: &NetworkInfo) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Removes the host side of the ports of `network_info` (best effort:
    /// failures are logged), e.g. after a build that failed with them plugged.
    fn unplug_vifs(&self, uuid: &str, network_info: &NetworkInfo) -> impl Future<Output = ()> + Send;
    /// Plugs one more port into the instance as its interface `index` or the
    /// next free one; a stopped instance gets it at its next start.
    fn attach_interface(
        &self,
        uuid: &str,
        vif: &Vif,
        index: usize,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Writes the config drive's `network_data.json` again from
    /// `network_info` (after an interface attach or detach); nothing to do
    /// for an instance without a config drive.
    fn refresh_config_drive(
        &self,
        uuid: &str,
        network_info: &NetworkInfo,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Removes the host side of one port.
    fn detach_interface(&self, uuid: &str, vif: &Vif) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Plugs the ports again when the running instance's namespace is not the
    /// one plugged last (it was started outside Nova, or while this service
    /// was down); returns whether it did.
    fn ensure_vifs_plugged(
        &self,
        uuid: &str,
        network_info: &NetworkInfo,
    ) -> impl Future<Output = Result<bool, VirtError>> + Send;
    /// The instance stopped on its own: releases what only a running instance
    /// needs on the host (best effort).
    fn cleanup_stopped(&self, uuid: &str) -> impl Future<Output = ()> + Send;
    /// Removes what the host keeps for instances that no longer exist (best
    /// effort; part of the periodic sync).
    fn cleanup_host(&self) -> impl Future<Output = ()> + Send;
    /// Soft (SIGTERM, wait, start) or hard (kill, start) reboot.
    fn reboot(
        &self,
        uuid: &str,
        hard: bool,
        timeout: Duration,
    ) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// Graceful stop within `timeout`, then kill; what the host kept for the
    /// running instance goes.
    fn power_off(&self, uuid: &str, timeout: Duration) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// Starts a stopped container.
    fn power_on(&self, uuid: &str) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// Freezes the container's processes (cgroup freezer).
    fn pause(&self, uuid: &str) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// Thaws a frozen container.
    fn unpause(&self, uuid: &str) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// The current state.
    fn get_info(&self, uuid: &str) -> impl Future<Output = Result<InstanceInfo, VirtError>> + Send;
    /// The last `max_bytes` of the container's output (stdout and stderr).
    fn console_output(&self, uuid: &str, max_bytes: usize) -> impl Future<Output = Result<Vec<u8>, VirtError>> + Send;
    /// Resource usage counters.
    fn stats(&self, uuid: &str) -> impl Future<Output = Result<InstanceStats, VirtError>> + Send;
    /// Looks an image up by reference.
    fn find_image(&self, reference: &str) -> impl Future<Output = Result<Option<ImageRef>, VirtError>> + Send;
    /// The sizes of an instance's container filesystem (image and writable
    /// layer), so that a move cannot carry more than the flavor's root disk.
    fn filesystem_size(&self, uuid: &str) -> impl Future<Output = Result<FilesystemSize, VirtError>> + Send;
    /// The images with a reference in `repository` (any tag).
    fn images_in_repository(&self, repository: &str)
    -> impl Future<Output = Result<Vec<LocalImage>, VirtError>> + Send;
    /// `docker load` of an archive stream; returns the engine's output lines.
    fn load_image(
        &self,
        archive: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> impl Future<Output = Result<Vec<String>, VirtError>> + Send;
    /// Tags an image (`repo:tag`).
    fn tag_image(&self, image: &str, repo: &str, tag: &str) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// Removes an image reference (untag, and delete when unused).
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// `docker commit` of an instance's container, untagged; returns the image id.
    fn commit(
        &self,
        uuid: &str,
        pause: bool,
        changes: Vec<String>,
    ) -> impl Future<Output = Result<String, VirtError>> + Send;
    /// `docker save` of one image as a stream.
    fn save_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, VirtError>>;
    /// How root disk limits are enforced on this host, and why.
    fn root_disk_mode(&self) -> &root_disk::RootDiskMode;
    /// Measures the writable layer of every running instance that has a
    /// root disk limit (bounded concurrency, each inspection bounded in
    /// time; a container that cannot be measured is logged and left out).
    fn root_disk_usage(&self) -> impl Future<Output = Result<Vec<RootDiskUsage>, VirtError>> + Send;
    /// Container lifecycle events of this host's instances, from now on.
    fn events(&self) -> BoxStream<'static, Result<LifecycleEvent, VirtError>>;
    /// Whether the instance's container has a serial console (it was
    /// created with a terminal and an open stdin); `NotFound` without one.
    fn has_console(&self, _uuid: &str) -> impl Future<Output = Result<bool, VirtError>> + Send {
        async { Ok(false) }
    }
    /// Attaches to the running container's console: the guest's terminal
    /// output, and its stdin. The stream ends when the container stops.
    /// `NotRunning` when it is not running, `NotFound` without a container.
    fn attach_console(&self, _uuid: &str) -> impl Future<Output = Result<console::ConsoleIo, VirtError>> + Send {
        async { Err(VirtError::Invalid("this driver has no serial console".into())) }
    }
    /// Returns once the container runs (at once if it does), `NotFound`
    /// once it is gone.
    fn wait_running(&self, _uuid: &str) -> impl Future<Output = Result<(), VirtError>> + Send {
        async { Err(VirtError::Invalid("this driver has no serial console".into())) }
    }
}
