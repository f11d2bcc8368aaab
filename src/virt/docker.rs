//! The Docker engine implementation of [`Driver`], over the unix socket with
//! bollard.
//!
//! Containers are found by name (`nova-<uuid>`), one API call per lookup, and
//! listed by label. Every request has the configured timeout; operations that
//! wait inside the engine (stop with a grace period) get that period on top.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HealthConfig, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder, CreateContainerOptionsBuilder,
    EventsOptionsBuilder, ImportImageOptionsBuilder, InspectContainerOptions, InspectContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RenameContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::guest_files;
use super::host_network::{self, HostContainer, HostNetwork};
use super::root_disk::{self, Enforcement, EngineStorage, RootDiskMode};
use super::spec::{ContainerSpec, SET_ASIDE_SUFFIX, container_name, labels, set_aside_name};
use super::{
    Driver, FilesystemSize, HostResources, ImageRef, InstanceInfo, InstanceStats, LifecycleEvent, LocalImage,
    ManagedContainer, PowerState, RootDiskUsage, VirtError,
};
use crate::config::DockerSettings;
use crate::image::archive::VOLUMES_LABEL;
use crate::net::{NetworkInfo, Vif};

/// The Docker driver.
#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    settings: DockerSettings,
    host: String,
    /// How root disk limits are enforced (decided once at connect).
    root_disk: RootDiskMode,
    /// How the instances' ports are plugged on this host.
    network: HostNetwork,
}

/// How many containers a root disk measurement inspects at once: each
/// inspection walks a writable layer on the engine's side.
const MEASURE_CONCURRENCY: usize = 2;

/// How many files the console log is rotated over; the cap is split evenly.
const CONSOLE_LOG_FILES: u64 = 4;

/// Where this process sees its mounts (the engine's data root is looked up
/// there to read its filesystem's mount options).
const MOUNTINFO: &str = "/proc/self/mountinfo";

fn engine(op: &str, e: BollardError) -> VirtError {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => {
            VirtError::Engine { op: op.to_string(), detail: message, status: Some(status_code) }
        }
        BollardError::RequestTimeoutError => VirtError::Timeout { op: op.to_string(), after: Duration::ZERO },
        other => VirtError::Engine { op: op.to_string(), detail: other.to_string(), status: None },
    }
}

/// The paths listed by an image's volumes label (none when absent or not a
/// list of strings; each is checked again where it is used).
fn volumes_label(labels: Option<&HashMap<String, String>>) -> Vec<String> {
    labels
        .and_then(|l| l.get(VOLUMES_LABEL))
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Nova's `convert_version_to_int`: "20.10.24" -> 20010024.
pub fn version_to_int(version: &str) -> i64 {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    let mut n = 0i64;
    for _ in 0..3 {
        let p: i64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        n = n * 1000 + p.min(999);
    }
    n
}

fn power_state(status: Option<&ContainerStateStatusEnum>, oom: bool, exit_code: Option<i64>) -> PowerState {
    match status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::RESTARTING) => PowerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => PowerState::Paused,
        Some(ContainerStateStatusEnum::DEAD) => PowerState::Crashed,
        Some(ContainerStateStatusEnum::EXITED) if oom => PowerState::Crashed,
        Some(ContainerStateStatusEnum::EXITED) if exit_code.is_some_and(|c| c != 0 && c != 137 && c != 143) => {
            // A non-zero exit not caused by our SIGTERM/SIGKILL.
            PowerState::Crashed
        }
        Some(ContainerStateStatusEnum::CREATED) | Some(ContainerStateStatusEnum::EXITED) => PowerState::Shutdown,
        _ => PowerState::NoState,
    }
}

impl DockerDriver {
    /// Connects to the engine's unix socket and checks it answers.
    pub async fn connect(settings: &DockerSettings, host: &str) -> Result<Self, VirtError> {
        let path = settings.socket_path.to_string_lossy().to_string();
        let docker = Docker::connect_with_unix(&path, settings.api_timeout.as_secs(), bollard::API_DEFAULT_VERSION)
            .map_err(|e| VirtError::Engine {
                op: "connect".into(),
                detail: format!("{e} (is the Docker engine running, and may this service use {path}?)"),
                status: None,
            })?;
        docker.ping().await.map_err(|e| VirtError::Engine {
            op: "ping".into(),
            detail: format!("{e} (is the Docker engine running, and may this service use {path}?)"),
            status: None,
        })?;
        let root_disk = detect_root_disk(&docker, settings).await?;
        let network = HostNetwork::default();
        Ok(DockerDriver { docker, settings: settings.clone(), host: host.to_string(), root_disk, network })
    }

    /// The same driver plugging ports as `network` says (the integration
    /// bridge of `[neutron] ovs_bridge`).
    pub fn with_network(mut self, network: HostNetwork) -> Self {
        self.network = network;
        self
    }

    /// Ids of every container the engine has (any owner, any state).
    pub async fn all_container_ids(&self) -> Result<Vec<String>, VirtError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).build()))
            .await
            .map_err(|e| engine("list containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// The container of `uuid`, None when there is none (an engine error is
    /// logged and counts as none: callers clean up best effort).
    async fn existing(&self, uuid: &str) -> Option<InstanceInfo> {
        match self.inspect(uuid).await {
            Ok(info) => Some(info),
            Err(VirtError::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(instance = uuid, error = %e, "cannot inspect the container");
                None
            }
        }
    }

    /// The bollard client (for image streaming helpers).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// A client whose timeout also covers an in-engine wait of `extra`.
    fn with_wait(&self, extra: Duration) -> Docker {
        self.docker.clone().with_timeout(self.settings.api_timeout.saturating_add(extra))
    }

    async fn inspect(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        Ok(self.inspect_host(uuid).await?.0)
    }

    /// The container's state, and what the host side of its ports needs
    /// (its process, whose namespace they go into): the latter stays in the
    /// driver.
    async fn inspect_host(&self, uuid: &str) -> Result<(InstanceInfo, HostContainer), VirtError> {
        let name = container_name(uuid);
        let c = self.docker.inspect_container(&name, None::<InspectContainerOptions>).await.map_err(|e| {
            if is_status(&e, 404) { VirtError::NotFound(uuid.to_string()) } else { engine("inspect", e) }
        })?;
        let state = c.state.unwrap_or_default();
        let oom = state.oom_killed.unwrap_or(false);
        let container_id = c.id.unwrap_or_default();
        let host =
            HostContainer { uuid: uuid.to_string(), id: container_id.clone(), pid: state.pid.filter(|p| *p > 0) };
        let info = InstanceInfo {
            uuid: uuid.to_string(),
            container_id,
            state: power_state(state.status.as_ref(), oom, state.exit_code),
            oom_killed: oom,
            exit_code: state.exit_code,
            started_at: state.started_at,
        };
        Ok((info, host))
    }

    /// Creates, in a created container, the mount points of the volumes its
    /// image declared (the host removed them from the image: see
    /// `image::archive`) that the image does not have: root-owned 0755
    /// directories in the writable layer, as Docker would make them. Only
    /// missing components are created, so an image's own directories keep
    /// their owner and mode.
    async fn create_volume_dirs(&self, spec: &ContainerSpec) -> Result<(), VirtError> {
        if spec.volumes.is_empty() {
            return Ok(());
        }
        if spec.read_only_rootfs {
            tracing::info!(instance = %spec.uuid, volumes = ?spec.volumes, "read-only root disk: image volumes are not created");
            return Ok(());
        }
        let paths = &spec.volumes;
        let name = container_name(&spec.uuid);
        let mut missing: Vec<String> = Vec::new();
        for path in paths.iter().take(256) {
            let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            if comps.is_empty() || comps.iter().any(|c| *c == "." || *c == "..") || path.len() > 4096 {
                return Err(VirtError::Invalid(format!("image volume {path:?} is not a plain absolute path")));
            }
            let mut parent_missing = false;
            for depth in 1..=comps.len() {
                let prefix = comps[..depth].join("/");
                if missing.contains(&prefix) {
                    parent_missing = true;
                    continue;
                }
                if parent_missing {
                    missing.push(prefix);
                    continue;
                }
                let stat = self
                    .docker
                    .get_container_archive_info(
                        &name,
                        Some(ContainerArchiveInfoOptionsBuilder::default().path(&format!("/{prefix}")).build()),
                    )
                    .await;
                match stat {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {
                        missing.push(prefix);
                        parent_missing = true;
                    }
                    Err(e) => return Err(engine("stat", e)),
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort();
        let tar = crate::image::archive::directories(&missing);
        self.docker
            .upload_to_container(
                &name,
                Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                bollard::body_full(Bytes::from(tar)),
            )
            .await
            .map_err(|e| engine("create volume directories", e))
    }

    /// Writes the spec's files into the created container, in one archive
    /// put at `/` (`PUT /containers/{id}/archive`). The engine extracts it
    /// inside the container's root filesystem (chrooted there), so a
    /// symlink of the image (`/root -> /etc` or to any host path) resolves
    /// in the container, never on the host, and an existing symlink where a
    /// written entry goes is replaced by the entry. Never by host paths.
    async fn write_guest_files(&self, spec: &ContainerSpec) -> Result<(), VirtError> {
        if spec.files.is_empty() {
            return Ok(());
        }
        let entries: Vec<crate::image::archive::TarEntry<'_>> = spec
            .files
            .iter()
            .map(|f| crate::image::archive::TarEntry { path: &f.path, mode: f.mode, contents: f.contents.as_deref() })
            .collect();
        let mtime =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let tar = crate::image::archive::guest_entries(&entries, mtime);
        self.docker
            .upload_to_container(
                &container_name(&spec.uuid),
                Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                bollard::body_full(Bytes::from(tar)),
            )
            .await
            .map_err(|e| engine("write the instance's files", e))
    }

    /// Stops (within `timeout`, when not zero) and removes the container;
    /// a missing container is success.
    async fn remove_container(&self, uuid: &str, timeout: Duration) -> Result<(), VirtError> {
        let name = container_name(uuid);
        if !timeout.is_zero() {
            match self.get_info(uuid).await {
                Ok(info) if info.state == PowerState::Paused => {
                    let _ = self.docker.unpause_container(&name).await;
                }
                Ok(_) => {}
                Err(VirtError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
            let stop = self
                .with_wait(timeout)
                .stop_container(&name, Some(StopContainerOptionsBuilder::default().t(stop_seconds(timeout)).build()))
                .await;
            match stop {
                Ok(()) => {}
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) if is_status(&e, 304) => {}
                Err(e) => tracing::warn!(instance = uuid, error = %e, "graceful stop failed; removing by force"),
            }
        }
        let remove = self
            .docker
            .remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build()))
            .await;
        match remove {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // "removal already in progress"
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(engine("remove", e)),
        }
    }

    /// Removes the container named `name` by force with its anonymous
    /// volumes; a missing one is success.
    async fn remove_named(&self, name: &str) -> Result<(), VirtError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(engine("remove", e)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), VirtError> {
        let options = RenameContainerOptionsBuilder::default().name(to).build();
        self.docker.rename_container(from, options).await.map_err(|e| engine("rename", e))
    }

    fn not_found_or(uuid: &str, op: &str, e: BollardError) -> VirtError {
        if is_status(&e, 404) { VirtError::NotFound(uuid.to_string()) } else { engine(op, e) }
    }
}

/// Decides how root disk limits are enforced, from `docker info` and the
/// mount options of the filesystem holding the engine's storage.
pub async fn detect_root_disk(docker: &Docker, settings: &DockerSettings) -> Result<RootDiskMode, VirtError> {
    let info = docker.info().await.map_err(|e| engine("info", e))?;
    let storage = EngineStorage::from_info(&info);
    // Unreadable: no mount is found, and quota detection says so.
    let mountinfo = tokio::fs::read_to_string(MOUNTINFO).await.unwrap_or_default();
    Ok(root_disk::decide(settings.root_disk_limit, &storage, &mountinfo, settings.root_disk_measure_interval.as_secs()))
}

/// The json-file log settings that keep at most `max_bytes` of an
/// instance's output on the host, whatever the daemon's defaults.
fn log_config(max_bytes: u64) -> HostConfigLogConfig {
    let per_file = (max_bytes / CONSOLE_LOG_FILES).max(1);
    HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), per_file.to_string()),
            ("max-file".to_string(), CONSOLE_LOG_FILES.to_string()),
        ])),
    }
}

/// A grace period as the engine's `t` (seconds, an i32).
fn stop_seconds(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX)
}

/// The create request of an instance's container; `binds` put its generated
/// /etc files in place; `quota` asks the storage driver to cap the root
/// filesystem at the spec's limit.
fn create_body(spec: &ContainerSpec, binds: Vec<String>, quota: bool) -> ContainerCreateBody {
    let storage_opt = match spec.root_disk_gb {
        Some(gb) if quota => Some(HashMap::from([("size".to_string(), root_disk::storage_size(gb))])),
        _ => None,
    };
    let host_config = HostConfig {
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_bytes),
        cpu_shares: Some(spec.cpu_shares),
        nano_cpus: spec.nano_cpus,
        cpuset_cpus: spec.cpuset_cpus.clone(),
        pids_limit: spec.pids_limit,
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(spec.cap_add.clone()),
        security_opt: Some(spec.security_opt.clone()),
        privileged: Some(false),
        readonly_rootfs: Some(spec.read_only_rootfs),
        network_mode: Some("none".into()),
        userns_mode: spec.userns_mode.clone(),
        binds: Some(binds),
        init: Some(true),
        storage_opt,
        log_config: Some(log_config(spec.console_log_max_bytes)),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        hostname: Some(spec.hostname.clone()),
        cmd: spec.command.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        // The serial console (virt::console): a terminal, and a stdin that
        // stays open between attachments.
        tty: Some(spec.interactive_console),
        open_stdin: Some(spec.interactive_console),
        stdin_once: Some(false),
        // No libnetwork sandbox and no setkey hook at each start (see
        // guest_files); runc still gives the container its own namespace.
        network_disabled: Some(true),
        // An image's HEALTHCHECK would make the engine exec into the
        // container on the image's schedule (any interval it likes).
        healthcheck: Some(HealthConfig { test: Some(vec!["NONE".into()]), ..Default::default() }),
        host_config: Some(host_config),
        ..Default::default()
    }
}

impl Driver for DockerDriver {
    async fn ping(&self) -> Result<(), VirtError> {
        self.docker.ping().await.map(|_| ()).map_err(|e| engine("ping", e))
    }

    async fn host_resources(&self) -> Result<HostResources, VirtError> {
        let info = self.docker.info().await.map_err(|e| engine("info", e))?;
        let root = info.docker_root_dir.clone().unwrap_or_else(|| "/var/lib/docker".into());
        let (disk_gb, disk_free_gb) = tokio::task::spawn_blocking(move || {
            let st = nix::sys::statvfs::statvfs(root.as_str()).or_else(|_| nix::sys::statvfs::statvfs("/"));
            match st {
                Ok(s) => {
                    let frag = s.fragment_size();
                    let gib = 1024 * 1024 * 1024;
                    ((s.blocks() * frag) / gib, (s.blocks_available() * frag) / gib)
                }
                Err(_) => (0, 0),
            }
        })
        .await
        .unwrap_or((0, 0));
        let arch = match info.architecture.as_deref() {
            Some("x86_64") | None => "x86_64".to_string(),
            Some("aarch64") => "aarch64".to_string(),
            Some(other) => other.to_string(),
        };
        let vcpus = info.ncpu.unwrap_or(1).max(1) as u64;
        let cpu_info = serde_json::json!({
            "arch": arch, "vendor": "docker", "model": info.server_version.clone().unwrap_or_default(),
            "topology": {"sockets": 1, "cores": vcpus, "threads": 1}, "features": [],
        })
        .to_string();
        Ok(HostResources {
            vcpus,
            memory_mb: (info.mem_total.unwrap_or(0).max(0) as u64) / (1024 * 1024),
            disk_gb,
            disk_free_gb,
            hypervisor_version: version_to_int(info.server_version.as_deref().unwrap_or("0")),
            arch,
            cpu_info,
        })
    }

    async fn list_instances(&self) -> Result<Vec<ManagedContainer>, VirtError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_string(), vec![format!("{}={}", labels::HOST, self.host)])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(|e| engine("list containers", e))?;
        Ok(list
            .into_iter()
            // A container set aside by a rebuild in progress is not the
            // instance's (it goes with the rebuild's end or the instance).
            .filter(|c| !c.names.iter().flatten().any(|n| n.ends_with(SET_ASIDE_SUFFIX)))
            .filter_map(|c| {
                let labels: BTreeMap<String, String> = c.labels.unwrap_or_default().into_iter().collect();
                let uuid = labels.get(labels::INSTANCE)?.clone();
                let state = match c.state.map(|s| s.to_string()).as_deref() {
                    Some("running") | Some("restarting") => PowerState::Running,
                    Some("paused") => PowerState::Paused,
                    Some("dead") => PowerState::Crashed,
                    Some(_) => PowerState::Shutdown,
                    None => PowerState::NoState,
                };
                Some(ManagedContainer { uuid, container_id: c.id.unwrap_or_default(), state, labels })
            })
            .collect())
    }

    async fn create(&self, spec: &ContainerSpec, network_info: &NetworkInfo) -> Result<(), VirtError> {
        if spec.read_only_rootfs && !spec.files.is_empty() {
            return Err(VirtError::Invalid(
                "the instance's root filesystem is read-only (docker:read_only_rootfs or os_read_only_rootfs): \
                 its key pair or injected files cannot be written into it"
                    .into(),
            ));
        }
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let host_resolv_conf = guest_files::read_host_resolv_conf().await;
        let dns = host_network::dns_servers(network_info);
        let addresses = host_network::fixed_addresses(network_info);
        let files = guest_files::render(&host_resolv_conf, &dns, &spec.hostname, &addresses);
        let mut binds = guest_files::write(&self.settings.instances_path, &spec.uuid, &files, spec.read_only_rootfs)
            .await
            .map_err(|(path, source)| VirtError::HostFile { path, source })?;
        if let Some(drive) = &spec.config_drive {
            let bind = guest_files::write_config_drive(&self.settings.instances_path, &spec.uuid, &drive.0)
                .await
                .map_err(|(path, source)| VirtError::HostFile { path, source })?;
            binds.push(bind);
        }
        let mut attempt = 0;
        loop {
            let quota = self.root_disk.enforcement == Enforcement::Quota;
            match self.docker.create_container(Some(options.clone()), create_body(spec, binds.clone(), quota)).await {
                Ok(_) => break,
                // A container of this instance already exists (a build retried
                // after a crash): replace it, so the spec is exactly this one.
                Err(e) if is_status(&e, 409) && attempt == 0 => {
                    tracing::warn!(instance = %spec.uuid, "replacing an existing container of this instance");
                    self.remove_container(&spec.uuid, Duration::ZERO).await?;
                    attempt += 1;
                }
                Err(e) => return Err(engine("create", e)),
            }
        }
        let prepared = match self.create_volume_dirs(spec).await {
            Ok(()) => self.write_guest_files(spec).await,
            Err(e) => Err(e),
        };
        if let Err(e) = prepared {
            let _ = self.remove_container(&spec.uuid, Duration::ZERO).await;
            return Err(e);
        }
        Ok(())
    }

    async fn start_created(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        if let Err(e) = self.docker.start_container(&container_name(uuid), None::<StartContainerOptions>).await {
            let err = engine("start", e);
            // Never leave a created-but-broken container behind.
            let _ = self.destroy(uuid, Duration::ZERO, &Vec::new()).await;
            return Err(err);
        }
        self.inspect(uuid).await
    }

    async fn destroy(&self, uuid: &str, timeout: Duration, network_info: &NetworkInfo) -> Result<(), VirtError> {
        let container_id = self.existing(uuid).await.map(|c| c.container_id);
        self.remove_container(uuid, timeout).await?;
        // What an interrupted rebuild set aside goes with the instance.
        self.remove_named(&set_aside_name(uuid)).await?;
        let removed = guest_files::remove(&self.settings.instances_path, uuid)
            .await
            .map_err(|(path, source)| VirtError::HostFile { path, source });
        self.network.unplug_all(uuid, container_id.as_deref(), network_info).await;
        removed
    }

    async fn set_aside(&self, uuid: &str, timeout: Duration) -> Result<Option<PowerState>, VirtError> {
        let info = match self.inspect(uuid).await {
            Ok(info) => info,
            Err(VirtError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // One left by an interrupted rebuild is older than this one.
        self.remove_named(&set_aside_name(uuid)).await?;
        if matches!(info.state, PowerState::Running | PowerState::Paused) {
            self.power_off(uuid, timeout).await?;
        }
        self.rename(&container_name(uuid), &set_aside_name(uuid)).await?;
        Ok(Some(info.state))
    }

    async fn discard_set_aside(&self, uuid: &str) -> Result<(), VirtError> {
        self.remove_named(&set_aside_name(uuid)).await
    }

    async fn restore_set_aside(&self, uuid: &str) -> Result<bool, VirtError> {
        let aside = set_aside_name(uuid);
        match self.docker.inspect_container(&aside, None::<InspectContainerOptions>).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(e) => return Err(engine("inspect", e)),
        }
        if let Some(new) = self.existing(uuid).await {
            self.network.forget(uuid, &new.container_id).await;
            self.remove_container(uuid, Duration::ZERO).await?;
        }
        self.rename(&aside, &container_name(uuid)).await?;
        Ok(true)
    }

    async fn plug_vifs(&self, uuid: &str, network_info: &NetworkInfo) -> Result<(), VirtError> {
        if network_info.is_empty() {
            return Ok(());
        }
        let (_, host) = self.inspect_host(uuid).await?;
        self.network.plug_all(&host, network_info).await
    }

    async fn unplug_vifs(&self, uuid: &str, network_info: &NetworkInfo) {
        let container_id = self.existing(uuid).await.map(|c| c.container_id);
        self.network.unplug_all(uuid, container_id.as_deref(), network_info).await;
    }

    async fn attach_interface(&self, uuid: &str, vif: &Vif, index: usize) -> Result<(), VirtError> {
        let (_, host) = self.inspect_host(uuid).await?;
        self.network.plug_one(&host, vif, index).await
    }

    async fn refresh_config_drive(&self, uuid: &str, network_info: &NetworkInfo) -> Result<(), VirtError> {
        let data = serde_json::to_vec(&super::config_drive::network_data(Some(network_info)))
            .map_err(|e| VirtError::Invalid(e.to_string()))?;
        let rel = super::config_drive::NETWORK_DATA;
        guest_files::replace_in_config_drive(&self.settings.instances_path, uuid, rel, &data)
            .await
            .map(|_| ())
            .map_err(|(path, source)| VirtError::HostFile { path, source })
    }

    async fn detach_interface(&self, uuid: &str, vif: &Vif) -> Result<(), VirtError> {
        self.network.unplug_one(uuid, vif).await
    }

    async fn ensure_vifs_plugged(&self, uuid: &str, network_info: &NetworkInfo) -> Result<bool, VirtError> {
        if network_info.is_empty() {
            return Ok(false);
        }
        let host = match self.inspect_host(uuid).await {
            Ok((_, host)) => host,
            Err(VirtError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if host.pid.is_none() || self.network.is_current(&host).await {
            return Ok(false);
        }
        tracing::info!(instance = uuid, "the container's namespace changed; plugging its ports again");
        self.network.plug_all(&host, network_info).await?;
        Ok(true)
    }

    async fn cleanup_stopped(&self, uuid: &str) {
        if let Some(c) = self.existing(uuid).await {
            self.network.forget(uuid, &c.container_id).await;
        }
    }

    async fn cleanup_host(&self) {
        let Ok(ids) = self.all_container_ids().await else { return };
        self.network.sweep(&ids.into_iter().collect()).await;
    }

    async fn reboot(&self, uuid: &str, hard: bool, timeout: Duration) -> Result<InstanceInfo, VirtError> {
        let name = container_name(uuid);
        let info = self.inspect(uuid).await?;
        if info.state == PowerState::Paused {
            self.docker.unpause_container(&name).await.map_err(|e| engine("unpause", e))?;
        }
        if hard {
            if matches!(info.state, PowerState::Running | PowerState::Paused) {
                match self
                    .docker
                    .kill_container(&name, Some(KillContainerOptionsBuilder::default().signal("SIGKILL").build()))
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 409) => {} // not running any more
                    Err(e) => return Err(Self::not_found_or(uuid, "kill", e)),
                }
            }
            match self.docker.start_container(&name, None::<StartContainerOptions>).await {
                Ok(()) => {}
                Err(e) if is_status(&e, 304) => {}
                Err(e) => return Err(Self::not_found_or(uuid, "start", e)),
            }
        } else {
            self.with_wait(timeout)
                .restart_container(
                    &name,
                    Some(RestartContainerOptionsBuilder::default().t(stop_seconds(timeout)).build()),
                )
                .await
                .map_err(|e| Self::not_found_or(uuid, "restart", e))?;
        }
        self.inspect(uuid).await
    }

    async fn power_off(&self, uuid: &str, timeout: Duration) -> Result<InstanceInfo, VirtError> {
        let name = container_name(uuid);
        let info = self.inspect(uuid).await?;
        if info.state == PowerState::Paused {
            self.docker.unpause_container(&name).await.map_err(|e| engine("unpause", e))?;
        }
        match self
            .with_wait(timeout)
            .stop_container(&name, Some(StopContainerOptionsBuilder::default().t(stop_seconds(timeout)).build()))
            .await
        {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) => {} // already stopped
            Err(e) => return Err(Self::not_found_or(uuid, "stop", e)),
        }
        let stopped = self.inspect(uuid).await?;
        // The namespace is gone: its entry goes too.
        self.network.forget(uuid, &stopped.container_id).await;
        Ok(stopped)
    }

    async fn power_on(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        let name = container_name(uuid);
        let info = self.inspect(uuid).await?;
        if info.state == PowerState::Paused {
            self.docker.unpause_container(&name).await.map_err(|e| engine("unpause", e))?;
        } else {
            match self.docker.start_container(&name, None::<StartContainerOptions>).await {
                Ok(()) => {}
                Err(e) if is_status(&e, 304) => {} // already running
                Err(e) => return Err(Self::not_found_or(uuid, "start", e)),
            }
        }
        self.inspect(uuid).await
    }

    async fn pause(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        let info = self.inspect(uuid).await?;
        if info.state != PowerState::Paused {
            self.docker
                .pause_container(&container_name(uuid))
                .await
                .map_err(|e| Self::not_found_or(uuid, "pause", e))?;
        }
        self.inspect(uuid).await
    }

    async fn unpause(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        let info = self.inspect(uuid).await?;
        if info.state == PowerState::Paused {
            self.docker
                .unpause_container(&container_name(uuid))
                .await
                .map_err(|e| Self::not_found_or(uuid, "unpause", e))?;
        }
        self.inspect(uuid).await
    }

    async fn get_info(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.inspect(uuid).await
    }

    async fn console_output(&self, uuid: &str, max_bytes: usize) -> Result<Vec<u8>, VirtError> {
        let name = container_name(uuid);
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(false).tail("all").build();
        let collect = async {
            let mut out: Vec<u8> = Vec::new();
            let mut logs = self.docker.logs(&name, Some(opts));
            while let Some(chunk) = logs.next().await {
                let chunk = chunk.map_err(|e| Self::not_found_or(uuid, "logs", e))?;
                out.extend_from_slice(&chunk.into_bytes());
                // Keep only the tail, bounded, however chatty the container.
                if out.len() > 2 * max_bytes {
                    out.drain(..out.len() - max_bytes);
                }
            }
            if out.len() > max_bytes {
                out.drain(..out.len() - max_bytes);
            }
            Ok(out)
        };
        tokio::time::timeout(self.settings.api_timeout, collect)
            .await
            .map_err(|_| VirtError::Timeout { op: "logs".into(), after: self.settings.api_timeout })?
    }

    async fn stats(&self, uuid: &str) -> Result<InstanceStats, VirtError> {
        let name = container_name(uuid);
        let opts = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let fetch = async { self.docker.stats(&name, Some(opts)).next().await };
        let s = tokio::time::timeout(self.settings.api_timeout, fetch)
            .await
            .map_err(|_| VirtError::Timeout { op: "stats".into(), after: self.settings.api_timeout })?
            .ok_or_else(|| VirtError::NotFound(uuid.to_string()))?
            .map_err(|e| Self::not_found_or(uuid, "stats", e))?;
        let cpu = s.cpu_stats.unwrap_or_default();
        let mem = s.memory_stats.unwrap_or_default();
        let (info, host) = self.inspect_host(uuid).await?;
        // Docker's stats list only interfaces libnetwork made, never the
        // plugged ports: the kernel's counters of the namespace have them.
        let nics = match host.pid {
            Some(pid) => super::net_dev::read(pid).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let uptime_s = info
            .started_at
            .as_deref()
            .and_then(crate::objects::time::parse)
            .filter(|_| info.state == PowerState::Running)
            .map(|t| (chrono::Utc::now() - t).num_seconds().max(0) as u64);
        Ok(InstanceStats {
            cpu_time_ns: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
            memory_used_bytes: mem.usage.unwrap_or(0),
            memory_limit_bytes: mem.limit.unwrap_or(0),
            online_cpus: cpu.online_cpus.unwrap_or(0) as u64,
            nics,
            uptime_s,
        })
    }

    async fn find_image(&self, reference: &str) -> Result<Option<ImageRef>, VirtError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(ImageRef {
                id: i.id.unwrap_or_default(),
                volumes: volumes_label(i.config.and_then(|c| c.labels).as_ref()),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(engine("inspect image", e)),
        }
    }

    async fn filesystem_size(&self, uuid: &str) -> Result<FilesystemSize, VirtError> {
        let opts = InspectContainerOptionsBuilder::default().size(true).build();
        let c = self
            .docker
            .inspect_container(&container_name(uuid), Some(opts))
            .await
            .map_err(|e| Self::not_found_or(uuid, "inspect", e))?;
        let image = c.image.unwrap_or_default();
        let i = self.docker.inspect_image(&image).await.map_err(|e| engine("inspect image", e))?;
        Ok(FilesystemSize {
            image,
            image_bytes: i.size.unwrap_or(0).max(0) as u64,
            written_bytes: c.size_rw.unwrap_or(0).max(0) as u64,
        })
    }

    async fn images_in_repository(&self, repository: &str) -> Result<Vec<LocalImage>, VirtError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("reference".to_string(), vec![repository.to_string()])]);
        let list = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(|e| engine("list images", e))?;
        Ok(list
            .into_iter()
            .map(|i| LocalImage { volumes: volumes_label(Some(&i.labels)), id: i.id, tags: i.repo_tags })
            .collect())
    }

    async fn load_image(
        &self,
        archive: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<Vec<String>, VirtError> {
        // The upload can take long; the timeout covers response headers,
        // which docker load sends only after reading the whole archive.
        let docker = self.with_wait(Duration::from_secs(3600));
        let lines: Vec<String> = docker
            .import_image_stream(ImportImageOptionsBuilder::default().quiet(true).build(), archive, None)
            .map_ok(|info| info.stream.unwrap_or_default().trim().to_string())
            .try_collect()
            .await
            .map_err(|e| engine("load", e))?;
        Ok(lines.into_iter().filter(|l| !l.is_empty()).collect())
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<(), VirtError> {
        self.docker
            .tag_image(image, Some(TagImageOptionsBuilder::default().repo(repo).tag(tag).build()))
            .await
            .map_err(|e| engine("tag", e))
    }

    async fn remove_image(&self, image: &str) -> Result<(), VirtError> {
        match self
            .docker
            .remove_image(image, Some(RemoveImageOptionsBuilder::default().noprune(false).build()), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(engine("remove image", e)),
        }
    }

    async fn commit(&self, uuid: &str, pause: bool, changes: Vec<String>) -> Result<String, VirtError> {
        let name = container_name(uuid);
        let mut opts = CommitContainerOptionsBuilder::default().container(&name).pause(pause);
        let joined = changes.join("\n");
        if !changes.is_empty() {
            opts = opts.changes(&joined);
        }
        // Docker merges the container's labels into the committed image,
        // and the image goes to Glance, where the tenant downloads it: the
        // host's labels (host name, project, user, flavor) are blanked.
        let host_labels = [
            labels::INSTANCE,
            labels::HOST,
            labels::PROJECT,
            labels::USER,
            labels::FLAVOR,
            labels::IMAGE,
            labels::ROOT_GB,
        ];
        let config = bollard::models::ContainerConfig {
            labels: Some(host_labels.iter().map(|k| (k.to_string(), String::new())).collect()),
            ..Default::default()
        };
        let r = self
            .with_wait(Duration::from_secs(600))
            .commit_container(opts.build(), config)
            .await
            .map_err(|e| Self::not_found_or(uuid, "commit", e))?;
        Ok(r.id)
    }

    fn save_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, VirtError>> {
        let docker = self.with_wait(Duration::from_secs(3600));
        let image = image.to_string();
        futures::stream::once(async move { docker.export_image(&image).map_err(|e| engine("save", e)) })
            .flatten()
            .boxed()
    }

    fn root_disk_mode(&self) -> &RootDiskMode {
        &self.root_disk
    }

    async fn root_disk_usage(&self) -> Result<Vec<RootDiskUsage>, VirtError> {
        let targets: Vec<(String, u64)> = self
            .list_instances()
            .await?
            .into_iter()
            .filter(|c| c.state == PowerState::Running)
            .filter_map(|c| {
                let gb = c.labels.get(labels::ROOT_GB)?.parse::<u64>().ok()?;
                Some((c.uuid, gb))
            })
            .collect();
        let timeout = self.settings.api_timeout;
        let measured = futures::stream::iter(targets)
            .map(|(uuid, limit_gb)| async move {
                let opts = InspectContainerOptionsBuilder::default().size(true).build();
                let name = container_name(&uuid);
                let inspect = self.docker.inspect_container(&name, Some(opts));
                match tokio::time::timeout(timeout, inspect).await {
                    Ok(Ok(c)) => {
                        let used_bytes = c.size_rw.unwrap_or(0).max(0) as u64;
                        Some(RootDiskUsage { uuid, used_bytes, limit_gb })
                    }
                    Ok(Err(e)) if is_status(&e, 404) => None,
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %uuid, error = %e, "cannot measure the root disk");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(instance = %uuid, ?timeout, "measuring the root disk timed out");
                        None
                    }
                }
            })
            .buffer_unordered(MEASURE_CONCURRENCY)
            .filter_map(|m| async move { m })
            .collect()
            .await;
        Ok(measured)
    }

    fn events(&self) -> BoxStream<'static, Result<LifecycleEvent, VirtError>> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{}={}", labels::HOST, self.host)]),
        ]);
        // No timeout on an event stream (it is idle by nature).
        let docker = self.docker.clone().with_timeout(Duration::from_secs(u32::MAX as u64));
        docker
            .events(Some(EventsOptionsBuilder::default().filters(&filters).build()))
            .filter_map(|r| async move {
                match r {
                    Ok(ev) => {
                        let actor = ev.actor?;
                        let uuid = actor.attributes?.get(labels::INSTANCE)?.clone();
                        Some(Ok(LifecycleEvent { uuid, action: ev.action.unwrap_or_default() }))
                    }
                    Err(e) => Some(Err(engine("events", e))),
                }
            })
            .boxed()
    }

    async fn has_console(&self, uuid: &str) -> Result<bool, VirtError> {
        let c = self
            .docker
            .inspect_container(&container_name(uuid), None::<InspectContainerOptions>)
            .await
            .map_err(|e| Self::not_found_or(uuid, "inspect", e))?;
        let config = c.config.unwrap_or_default();
        Ok(config.tty == Some(true) && config.open_stdin == Some(true))
    }

    async fn attach_console(&self, uuid: &str) -> Result<super::console::ConsoleIo, VirtError> {
        let s =
            super::attach::attach(&self.settings.socket_path, &container_name(uuid), uuid, self.settings.api_timeout)
                .await?;
        Ok(Box::pin(s))
    }

    async fn wait_running(&self, uuid: &str) -> Result<(), VirtError> {
        let name = container_name(uuid);
        // Events from a second before the inspection on: a start between
        // the two is replayed, never missed.
        let since = (chrono::Utc::now().timestamp() - 1).to_string();
        let filters = wait_running_filters(name);
        // Idle by nature, as `events`.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(u32::MAX as u64));
        let mut events = docker.events(Some(EventsOptionsBuilder::default().since(&since).filters(&filters).build()));
        loop {
            match self.inspect(uuid).await?.state {
                PowerState::Running => return Ok(()),
                _ => match events.next().await {
                    Some(Ok(_)) => {} // look again
                    Some(Err(e)) => return Err(engine("events", e)),
                    None => return Err(engine("events", BollardError::RequestTimeoutError)),
                },
            }
        }
    }
}

/// The engine events after which [`DockerDriver::wait_running`] looks at
/// the container again: it may run (start, unpause: a paused container's
/// connections wait for the unpause, not the next start), or be gone
/// (destroy, rename).
fn wait_running_filters(name: String) -> HashMap<String, Vec<String>> {
    let events = ["start", "unpause", "destroy", "rename"];
    HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("container".to_string(), vec![name]),
        ("event".to_string(), events.iter().map(|e| e.to_string()).collect()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_waiting_for_its_guest_wakes_on_unpause_as_on_start() {
        let f = wait_running_filters("nova-u".into());
        let events = &f["event"];
        for e in ["start", "unpause", "destroy"] {
            assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
        }
        assert_eq!(f["container"], ["nova-u"]);
    }

    #[test]
    fn versions_become_integers_like_nova() {
        assert_eq!(version_to_int("20.10.24+dfsg1"), 20010024);
        assert_eq!(version_to_int("29.3.1"), 29003001);
        assert_eq!(version_to_int("1.0"), 1000000);
    }

    fn spec(root_disk_gb: Option<u64>) -> ContainerSpec {
        ContainerSpec {
            uuid: "u".into(),
            name: "nova-u".into(),
            image: "sha256:x".into(),
            hostname: "h".into(),
            command: None,
            env: vec![],
            labels: Default::default(),
            memory_bytes: 1 << 27,
            cpu_shares: 1024,
            nano_cpus: None,
            cpuset_cpus: None,
            pids_limit: None,
            cap_add: vec![],
            security_opt: vec![],
            read_only_rootfs: false,
            userns_mode: None,
            root_disk_gb,
            console_log_max_bytes: 2 << 20,
            volumes: Vec::new(),
            files: Vec::new(),
            config_drive: None,
            interactive_console: false,
        }
    }

    #[test]
    fn containers_get_a_terminal_and_an_open_stdin_only_for_the_serial_console() {
        let plain = create_body(&spec(None), vec![], false);
        assert_eq!((plain.tty, plain.open_stdin), (Some(false), Some(false)));
        let console = create_body(&ContainerSpec { interactive_console: true, ..spec(None) }, vec![], false);
        assert_eq!((console.tty, console.open_stdin, console.stdin_once), (Some(true), Some(true), Some(false)));
    }

    #[test]
    fn containers_get_a_bounded_log_no_health_check_and_a_size_only_with_quota() {
        let body = create_body(&spec(Some(3)), vec![], true);
        let hc = body.host_config.clone().unwrap();
        assert_eq!(hc.storage_opt.unwrap()["size"], "3G");
        let log = hc.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let log = log.config.unwrap();
        assert_eq!((log["max-size"].as_str(), log["max-file"].as_str()), ("524288", "4"));
        assert_eq!(body.healthcheck.unwrap().test.unwrap(), ["NONE"]);
        assert_eq!(create_body(&spec(Some(3)), vec![], false).host_config.unwrap().storage_opt, None);
        assert_eq!(create_body(&spec(None), vec![], true).host_config.unwrap().storage_opt, None);
    }

    #[test]
    fn container_states_map_to_power_states() {
        use ContainerStateStatusEnum as S;
        assert_eq!(power_state(Some(&S::RUNNING), false, None), PowerState::Running);
        assert_eq!(power_state(Some(&S::PAUSED), false, None), PowerState::Paused);
        assert_eq!(power_state(Some(&S::EXITED), false, Some(0)), PowerState::Shutdown);
        assert_eq!(power_state(Some(&S::EXITED), false, Some(137)), PowerState::Shutdown);
        assert_eq!(power_state(Some(&S::EXITED), true, Some(137)), PowerState::Crashed);
        assert_eq!(power_state(Some(&S::EXITED), false, Some(2)), PowerState::Crashed);
        assert_eq!(power_state(Some(&S::CREATED), false, None), PowerState::Shutdown);
    }
}
