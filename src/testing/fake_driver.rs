//! An in-memory [`Driver`]: containers are records, ports are lists of port
//! ids, and any operation can be made to fail or to stop half-way until the
//! test lets it go on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::{Notify, Semaphore};

use crate::image::cache_reference;
use crate::net::{NetworkInfo, Vif};
use crate::virt::root_disk::{Enforcement, RootDiskMode};
use crate::virt::{
    ContainerSpec, Driver, FilesystemSize, HostResources, ImageRef, InstanceInfo, InstanceStats, LifecycleEvent,
    LocalImage, ManagedContainer, PowerState, RootDiskUsage, VirtError,
};

/// One instance's container, as the fake engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    /// Its power state.
    pub state: PowerState,
    /// The ids of the ports plugged into its current namespace, in order.
    pub plugged: Vec<String>,
    /// The DNS servers its resolv.conf names.
    pub dns: Vec<String>,
    /// Its memory limit (0 for one the test added).
    pub memory_bytes: i64,
    /// The image it was created from (empty for one the test added).
    pub image: String,
    /// The files written into it before its first start.
    pub files: Vec<crate::virt::spec::GuestFile>,
    /// Its config drive's files (network_data.json as the refreshed
    /// port ids, comma-separated, once refreshed).
    pub config_drive: Option<Vec<crate::virt::config_drive::DriveFile>>,
}

/// An operation held at its start until the test releases it.
pub struct Gate {
    entered: Notify,
    release: Semaphore,
}

impl Gate {
    /// Waits until the operation reached the gate.
    pub async fn entered(&self) {
        self.entered.notified().await;
    }

    /// Lets the operation go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, FakeContainer>,
    set_aside: HashMap<String, FakeContainer>,
    failing: HashSet<&'static str>,
    failing_once: HashSet<&'static str>,
    gates: HashMap<&'static str, Arc<Gate>>,
    calls: Vec<String>,
    images: Vec<LocalImage>,
    root_disks: Vec<RootDiskUsage>,
    written: HashMap<String, u64>,
    image_bytes: HashMap<String, u64>,
}

/// The in-memory driver.
pub struct FakeDriver {
    state: Mutex<State>,
    root_disk: RootDiskMode,
}

impl Default for FakeDriver {
    fn default() -> Self {
        FakeDriver {
            state: Mutex::default(),
            root_disk: RootDiskMode {
                enforcement: Enforcement::Measure,
                reason: "fake".into(),
                quota_unsupported: false,
            },
        }
    }
}

fn injected(op: &str) -> VirtError {
    VirtError::Engine { op: op.to_string(), detail: "injected failure".into(), status: Some(500) }
}

impl FakeDriver {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Gives `uuid` a container in `state`.
    pub fn add_container(&self, uuid: &str, state: PowerState) {
        let c = FakeContainer {
            state,
            plugged: Vec::new(),
            dns: Vec::new(),
            memory_bytes: 0,
            image: String::new(),
            files: Vec::new(),
            config_drive: None,
        };
        self.with(|s| s.containers.insert(uuid.to_string(), c));
    }

    /// Gives the container of `uuid` an empty config drive (as a build
    /// that asked for one would have).
    pub fn give_config_drive(&self, uuid: &str) {
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(uuid) {
                c.config_drive = Some(Vec::new());
            }
        });
    }

    /// The container of `uuid`, if any.
    pub fn container(&self, uuid: &str) -> Option<FakeContainer> {
        self.with(|s| s.containers.get(uuid).cloned())
    }

    /// Marks `ports` plugged into the running container of `uuid`.
    pub fn change_plugged(&self, uuid: &str, ports: &[&str]) {
        let _ = self.change(uuid, |c| c.plugged = ports.iter().map(|p| p.to_string()).collect());
    }

    /// Takes the container of `uuid` away, as if it were on another host
    /// (a test playing both ends of a move puts it back with
    /// [`FakeDriver::put_container`]).
    pub fn take_container(&self, uuid: &str) -> Option<FakeContainer> {
        self.with(|s| s.containers.remove(uuid))
    }

    /// Gives `uuid` the container `c` (see [`FakeDriver::take_container`]).
    pub fn put_container(&self, uuid: &str, c: FakeContainer) {
        self.with(|s| s.containers.insert(uuid.to_string(), c));
    }

    /// The container a rebuild set aside for `uuid`, if any.
    pub fn set_aside_container(&self, uuid: &str) -> Option<FakeContainer> {
        self.with(|s| s.set_aside.get(uuid).cloned())
    }

    /// Sets what the instance wrote in its container (its writable layer);
    /// a new container starts at zero.
    pub fn set_written(&self, uuid: &str, bytes: u64) {
        self.with(|s| s.written.insert(uuid.to_string(), bytes));
    }

    /// Makes every later `op` (a [`Driver`] method name) fail.
    pub fn fail(&self, op: &'static str) {
        self.with(|s| s.failing.insert(op));
    }

    /// Makes the next call of `op` fail (later ones succeed).
    pub fn fail_once(&self, op: &'static str) {
        self.with(|s| s.failing_once.insert(op));
    }

    /// Holds the next `op` at its start until the returned gate is released.
    pub fn hold(&self, op: &'static str) -> Arc<Gate> {
        let gate = Arc::new(Gate { entered: Notify::new(), release: Semaphore::new(0) });
        self.with(|s| s.gates.insert(op, gate.clone()));
        gate
    }

    /// The operations called so far, in order (`op uuid`).
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// What the next root disk measurements report.
    pub fn set_root_disk_usage(&self, usage: Vec<RootDiskUsage>) {
        self.with(|s| s.root_disks = usage);
    }

    /// Makes Glance image `glance_id` one this host has loaded.
    pub fn add_cached_image(&self, glance_id: &str) {
        let id = format!("sha256:{}", "a".repeat(64));
        let image = LocalImage { tags: vec![cache_reference(glance_id, &id)], id, volumes: Vec::new() };
        self.with(|s| s.images.push(image));
    }

    /// Points `reference` at another image, as `docker tag` by anyone on
    /// the host would (the reference leaves the image that had it).
    pub fn move_reference(&self, reference: &str, to_image_id: &str) {
        self.with(|s| {
            s.images.iter_mut().for_each(|i| i.tags.retain(|t| t != reference));
            if !s.images.iter().any(|i| i.id == to_image_id) {
                s.images.push(LocalImage { id: to_image_id.to_string(), tags: Vec::new(), volumes: Vec::new() });
            }
            s.images.iter_mut().filter(|i| i.id == to_image_id).for_each(|i| i.tags.push(reference.to_string()));
        });
    }

    /// Records the call, waits at its gate, fails when told to.
    async fn enter(&self, op: &'static str, uuid: &str) -> Result<(), VirtError> {
        let gate = self.with(|s| {
            s.calls.push(format!("{op} {uuid}"));
            s.gates.remove(op)
        });
        if let Some(gate) = gate {
            gate.entered.notify_one();
            let _ = gate.release.acquire().await;
        }
        if self.with(|s| s.failing.contains(op) || s.failing_once.remove(op)) {
            return Err(injected(op));
        }
        Ok(())
    }

    fn info(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.with(|s| s.containers.get(uuid).cloned())
            .map(|c| InstanceInfo {
                uuid: uuid.to_string(),
                container_id: format!("{:0>64}", uuid.replace('-', "")),
                state: c.state,
                oom_killed: false,
                exit_code: None,
                started_at: None,
            })
            .ok_or_else(|| VirtError::NotFound(uuid.to_string()))
    }

    /// Changes a container; NotFound when there is none.
    fn change(&self, uuid: &str, f: impl FnOnce(&mut FakeContainer)) -> Result<InstanceInfo, VirtError> {
        let found = self.with(|s| s.containers.get_mut(uuid).map(f).is_some());
        if !found {
            return Err(VirtError::NotFound(uuid.to_string()));
        }
        self.info(uuid)
    }
}

fn started(c: &mut FakeContainer) {
    // A started container has a new namespace: nothing plugged yet.
    c.state = PowerState::Running;
    c.plugged.clear();
}

impl Driver for FakeDriver {
    async fn ping(&self) -> Result<(), VirtError> {
        self.enter("ping", "-").await
    }

    async fn host_resources(&self) -> Result<HostResources, VirtError> {
        self.enter("host_resources", "-").await?;
        Ok(HostResources {
            vcpus: 4,
            memory_mb: 8192,
            disk_gb: 100,
            disk_free_gb: 50,
            hypervisor_version: 1,
            arch: "x86_64".into(),
            cpu_info: "{}".into(),
        })
    }

    async fn list_instances(&self) -> Result<Vec<ManagedContainer>, VirtError> {
        self.enter("list_instances", "-").await?;
        Ok(self.with(|s| {
            s.containers
                .iter()
                .map(|(uuid, c)| ManagedContainer {
                    uuid: uuid.clone(),
                    container_id: uuid.clone(),
                    state: c.state,
                    labels: BTreeMap::new(),
                })
                .collect()
        }))
    }

    async fn create(&self, spec: &ContainerSpec, network_info: &NetworkInfo) -> Result<(), VirtError> {
        self.enter("create", &spec.uuid).await?;
        let dns = crate::virt::host_network::dns_servers(network_info);
        let c = FakeContainer {
            state: PowerState::Shutdown,
            plugged: Vec::new(),
            dns,
            memory_bytes: spec.memory_bytes,
            image: spec.image.clone(),
            files: spec.files.clone(),
            config_drive: spec.config_drive.clone().map(|d| d.0),
        };
        self.with(|s| {
            s.written.remove(&spec.uuid);
            s.containers.insert(spec.uuid.clone(), c)
        });
        Ok(())
    }

    async fn start_created(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        if let Err(e) = self.enter("start_created", uuid).await {
            self.with(|s| s.containers.remove(uuid));
            return Err(e);
        }
        self.change(uuid, started)
    }

    async fn refresh_config_drive(&self, uuid: &str, network_info: &NetworkInfo) -> Result<(), VirtError> {
        self.enter("refresh_config_drive", uuid).await?;
        let ports: Vec<String> = network_info.iter().map(|v| v.id.clone()).collect();
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(uuid)
                && let Some(drive) = c.config_drive.as_mut()
            {
                drive.retain(|(p, _)| p != crate::virt::config_drive::NETWORK_DATA);
                drive.push((crate::virt::config_drive::NETWORK_DATA.to_string(), ports.join(",").into_bytes()));
            }
        });
        Ok(())
    }

    async fn destroy(&self, uuid: &str, _timeout: Duration, _network_info: &NetworkInfo) -> Result<(), VirtError> {
        self.enter("destroy", uuid).await?;
        self.with(|s| {
            s.containers.remove(uuid);
            s.set_aside.remove(uuid)
        });
        Ok(())
    }

    async fn set_aside(&self, uuid: &str, _timeout: Duration) -> Result<Option<PowerState>, VirtError> {
        self.enter("set_aside", uuid).await?;
        Ok(self.with(|s| {
            let mut c = s.containers.remove(uuid)?;
            let was = c.state;
            c.state = PowerState::Shutdown;
            c.plugged.clear();
            s.set_aside.insert(uuid.to_string(), c);
            Some(was)
        }))
    }

    async fn discard_set_aside(&self, uuid: &str) -> Result<(), VirtError> {
        self.enter("discard_set_aside", uuid).await?;
        self.with(|s| s.set_aside.remove(uuid));
        Ok(())
    }

    async fn restore_set_aside(&self, uuid: &str) -> Result<bool, VirtError> {
        self.enter("restore_set_aside", uuid).await?;
        Ok(self.with(|s| match s.set_aside.remove(uuid) {
            Some(c) => {
                s.containers.insert(uuid.to_string(), c);
                true
            }
            None => false,
        }))
    }

    async fn plug_vifs(&self, uuid: &str, network_info: &NetworkInfo) -> Result<(), VirtError> {
        if network_info.is_empty() {
            return Ok(());
        }
        self.enter("plug_vifs", uuid).await?;
        let info = self.info(uuid)?;
        if info.state != PowerState::Running {
            return Err(VirtError::Invalid("the container is not running; cannot plug its ports".into()));
        }
        self.change(uuid, |c| c.plugged = network_info.iter().map(|v| v.id.clone()).collect())?;
        Ok(())
    }

    async fn unplug_vifs(&self, uuid: &str, _network_info: &NetworkInfo) {
        let _ = self.enter("unplug_vifs", uuid).await;
        let _ = self.change(uuid, |c| c.plugged.clear());
    }

    async fn attach_interface(&self, uuid: &str, vif: &Vif, _index: usize) -> Result<(), VirtError> {
        self.enter("attach_interface", uuid).await?;
        self.change(uuid, |c| {
            if c.state == PowerState::Running {
                c.plugged.push(vif.id.clone());
            }
        })?;
        Ok(())
    }

    async fn detach_interface(&self, uuid: &str, vif: &Vif) -> Result<(), VirtError> {
        self.enter("detach_interface", uuid).await?;
        let _ = self.change(uuid, |c| c.plugged.retain(|p| *p != vif.id));
        Ok(())
    }

    async fn ensure_vifs_plugged(&self, uuid: &str, network_info: &NetworkInfo) -> Result<bool, VirtError> {
        self.enter("ensure_vifs_plugged", uuid).await?;
        let wanted: Vec<String> = network_info.iter().map(|v| v.id.clone()).collect();
        match self.info(uuid) {
            Ok(info) if info.state == PowerState::Running && !wanted.is_empty() => {
                let changed = self.container(uuid).is_some_and(|c| c.plugged != wanted);
                self.change(uuid, |c| c.plugged = wanted)?;
                Ok(changed)
            }
            _ => Ok(false),
        }
    }

    async fn cleanup_stopped(&self, uuid: &str) {
        let _ = self.enter("cleanup_stopped", uuid).await;
    }

    async fn cleanup_host(&self) {
        let _ = self.enter("cleanup_host", "-").await;
    }

    async fn reboot(&self, uuid: &str, _hard: bool, _timeout: Duration) -> Result<InstanceInfo, VirtError> {
        self.enter("reboot", uuid).await?;
        self.change(uuid, started)
    }

    async fn power_off(&self, uuid: &str, _timeout: Duration) -> Result<InstanceInfo, VirtError> {
        self.enter("power_off", uuid).await?;
        self.change(uuid, |c| {
            c.state = PowerState::Shutdown;
            c.plugged.clear();
        })
    }

    async fn power_on(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.enter("power_on", uuid).await?;
        self.change(uuid, |c| {
            if c.state == PowerState::Paused {
                c.state = PowerState::Running;
            } else if c.state != PowerState::Running {
                started(c);
            }
        })
    }

    async fn pause(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.enter("pause", uuid).await?;
        self.change(uuid, |c| c.state = PowerState::Paused)
    }

    async fn unpause(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.enter("unpause", uuid).await?;
        self.change(uuid, |c| {
            if c.state == PowerState::Paused {
                c.state = PowerState::Running;
            }
        })
    }

    async fn get_info(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.info(uuid)
    }

    async fn console_output(&self, uuid: &str, _max_bytes: usize) -> Result<Vec<u8>, VirtError> {
        self.enter("console_output", uuid).await?;
        self.info(uuid)?;
        Ok(b"booted\n".to_vec())
    }

    async fn stats(&self, uuid: &str) -> Result<InstanceStats, VirtError> {
        self.enter("stats", uuid).await?;
        self.info(uuid)?;
        Ok(InstanceStats::default())
    }

    async fn find_image(&self, reference: &str) -> Result<Option<ImageRef>, VirtError> {
        self.enter("find_image", reference).await?;
        Ok(self.with(|s| {
            s.images
                .iter()
                .find(|i| i.id == reference || i.tags.iter().any(|t| t == reference))
                .map(|i| ImageRef { id: i.id.clone(), volumes: i.volumes.clone() })
        }))
    }

    async fn filesystem_size(&self, uuid: &str) -> Result<FilesystemSize, VirtError> {
        self.enter("filesystem_size", uuid).await?;
        self.info(uuid)?;
        Ok(self.with(|s| {
            let image = s.containers.get(uuid).map(|c| c.image.clone()).unwrap_or_default();
            let image_bytes = s.image_bytes.get(&image).copied().unwrap_or(0);
            FilesystemSize { image, image_bytes, written_bytes: s.written.get(uuid).copied().unwrap_or(0) }
        }))
    }

    async fn images_in_repository(&self, repository: &str) -> Result<Vec<LocalImage>, VirtError> {
        self.enter("images_in_repository", repository).await?;
        let prefix = format!("{repository}:");
        Ok(self.with(|s| s.images.iter().filter(|i| i.tags.iter().any(|t| t.starts_with(&prefix))).cloned().collect()))
    }

    async fn load_image(
        &self,
        archive: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<Vec<String>, VirtError> {
        use futures::TryStreamExt;
        self.enter("load_image", "-").await?;
        // As Docker: the whole archive, or nothing when the stream breaks.
        let chunks: Vec<Bytes> = archive.try_collect().await.map_err(|e| VirtError::Engine {
            op: "load".into(),
            detail: e.to_string(),
            status: None,
        })?;
        let id = loaded_image_id(&chunks.concat())
            .ok_or_else(|| VirtError::Invalid("the archive has no manifest.json naming a config".into()))?;
        let image = LocalImage { id: id.clone(), tags: Vec::new(), volumes: Vec::new() };
        self.with(|s| s.images.push(image));
        Ok(vec![format!("Loaded image ID: {id}")])
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<(), VirtError> {
        self.enter("tag_image", image).await?;
        let reference = format!("{repo}:{tag}");
        self.with(|s| s.images.iter_mut().filter(|i| i.id == image).for_each(|i| i.tags.push(reference.clone())));
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<(), VirtError> {
        self.enter("remove_image", image).await?;
        self.with(|s| s.images.retain(|i| i.id != image));
        Ok(())
    }

    async fn commit(&self, uuid: &str, _pause: bool, _changes: Vec<String>) -> Result<String, VirtError> {
        self.enter("commit", uuid).await?;
        self.info(uuid)?;
        let id = format!("sha256:{}", "c".repeat(64));
        self.with(|s| {
            let image = s.containers.get(uuid).map(|c| c.image.clone()).unwrap_or_default();
            let size = s.image_bytes.get(&image).copied().unwrap_or(0) + s.written.get(uuid).copied().unwrap_or(0);
            s.image_bytes.insert(id.clone(), size);
            if !s.images.iter().any(|i| i.id == id) {
                s.images.push(LocalImage { id: id.clone(), tags: Vec::new(), volumes: Vec::new() });
            }
        });
        Ok(id)
    }

    fn save_image(&self, image: &str) -> BoxStream<'static, Result<Bytes, VirtError>> {
        let calls = self.with(|s| {
            s.calls.push(format!("save_image {image}"));
            s.failing.contains("save_image")
        });
        let data = if calls { Err(injected("save_image")) } else { Ok(Bytes::from(docker_save_archive())) };
        Box::pin(futures::stream::once(async move { data }))
    }

    fn root_disk_mode(&self) -> &RootDiskMode {
        &self.root_disk
    }

    async fn root_disk_usage(&self) -> Result<Vec<RootDiskUsage>, VirtError> {
        self.enter("root_disk_usage", "-").await?;
        Ok(self.with(|s| s.root_disks.clone()))
    }

    fn events(&self) -> BoxStream<'static, Result<LifecycleEvent, VirtError>> {
        Box::pin(futures::stream::pending())
    }
}

/// What `docker save` writes for a one-layer image (the legacy layout).
pub fn docker_save_archive() -> Vec<u8> {
    use sha2::Digest;
    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], kind: tar::EntryType) {
        let mut h = tar::Header::new_ustar();
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_entry_type(kind);
        b.append_data(&mut h, path, data).expect("tar entry");
    }
    let mut layer = tar::Builder::new(Vec::new());
    add(&mut layer, "bin/busybox", b"busybox binary", tar::EntryType::Regular);
    let layer = layer.into_inner().expect("layer tar");
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:0000"]}}"#;
    let cfg = format!("{:x}.json", sha2::Sha256::digest(config));
    let id = format!("{:064x}", 1);
    let manifest = serde_json::json!([{"Config": cfg, "RepoTags": [], "Layers": [format!("{id}/layer.tar")]}]);
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, &format!("{id}/"), b"", tar::EntryType::Directory);
    add(&mut b, &format!("{id}/VERSION"), b"1.0", tar::EntryType::Regular);
    add(&mut b, &format!("{id}/json"), br#"{"id":"1"}"#, tar::EntryType::Regular);
    add(&mut b, &format!("{id}/layer.tar"), &layer, tar::EntryType::Regular);
    add(&mut b, &cfg, config, tar::EntryType::Regular);
    add(&mut b, "manifest.json", manifest.to_string().as_bytes(), tar::EntryType::Regular);
    b.into_inner().expect("archive")
}

/// The image id `docker load` reports for an archive: its config's digest
/// (the canonical archive names the config `<hex>.json`).
fn loaded_image_id(archive: &[u8]) -> Option<String> {
    use std::io::Read;
    let mut entries = tar::Archive::new(archive);
    for entry in entries.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.to_str() == Some("manifest.json") {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
            let config = manifest[0]["Config"].as_str()?;
            let hex = config.trim_start_matches("blobs/sha256/").trim_end_matches(".json");
            return Some(format!("sha256:{hex}"));
        }
    }
    None
}
