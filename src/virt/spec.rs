//! How an instance becomes a container: limits, isolation, identity.
//!
//! Everything is decided here, once, at create time (the old Python driver's
//! start-time HostConfig could silently drop the memory limit). Operators can
//! loosen or tighten per flavor with `docker:*` extra specs (flavors are admin
//! objects); image properties, which tenants control, can only tighten.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::capabilities;
use crate::config::{CpuLimit, DockerSettings};
use crate::objects::Instance;

/// Label keys put on every container this service creates.
pub mod labels {
    /// The instance uuid; how a container is found again.
    pub const INSTANCE: &str = "nova.instance";
    /// The compute host that owns the container.
    pub const HOST: &str = "nova.host";
    /// The project owning the instance; for operators listing containers.
    pub const PROJECT: &str = "nova.project";
    /// The user who created the instance.
    pub const USER: &str = "nova.user";
    /// The flavor name, so an operator can see what the container was sized for.
    pub const FLAVOR: &str = "nova.flavor";
    /// The Glance image id the container was booted from.
    pub const IMAGE: &str = "nova.image";
    /// The instance's root disk limit in GiB (absent: no limit), which the
    /// periodic measurement compares the writable layer with.
    pub const ROOT_GB: &str = "nova.root_gb";
}

/// The kernel's largest cgroup v1 `cpu.shares` (`MAX_SHARES`, 2^18).
pub const MAX_CPU_SHARES: i64 = 1 << 18;

/// The container name of an instance.
pub fn container_name(uuid: &str) -> String {
    format!("nova-{uuid}")
}

/// The suffix of the name of a container set aside during a rebuild
/// (`nova-<uuid>-previous`), until the new one runs.
pub const SET_ASIDE_SUFFIX: &str = "-previous";

/// The name of the instance's container set aside during a rebuild.
pub fn set_aside_name(uuid: &str) -> String {
    format!("nova-{uuid}{SET_ASIDE_SUFFIX}")
}

/// Everything needed to create an instance's container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The instance the container runs.
    pub uuid: String,
    /// The container name, derived from the uuid so it is unique on the host.
    pub name: String,
    /// Docker image id.
    pub image: String,
    /// The guest's hostname, made valid from the instance's hostname or name.
    pub hostname: String,
    /// Overrides the image's CMD (image property `os_command_line`).
    pub command: Option<Vec<String>>,
    /// Environment (`KEY=value`) set in the container.
    pub env: Vec<String>,
    /// The `nova.*` labels that tie the container to its instance and host.
    pub labels: BTreeMap<String, String>,
    /// The flavor's RAM, as the container's hard memory limit, in bytes.
    pub memory_bytes: i64,
    /// CPU weight relative to other containers: 1024 per flavor vCPU.
    pub cpu_shares: i64,
    /// A hard CPU quota (`docker:cpu_limit=quota`), in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// CPUs the container may run on (`[docker] cpuset_cpus`).
    pub cpuset_cpus: Option<String>,
    /// Cap on processes in the container; None: no cap.
    pub pids_limit: Option<i64>,
    /// Capabilities the container gets: `[docker] capabilities` plus the flavor's
    /// `docker:capabilities`.
    pub cap_add: Vec<String>,
    /// Docker `--security-opt` values: always no-new-privileges, plus the
    /// configured seccomp profile.
    pub security_opt: Vec<String>,
    /// Whether the image's filesystem is mounted read-only.
    pub read_only_rootfs: bool,
    /// Docker `--userns` mode (`[docker] userns_mode`); None: the engine's default.
    pub userns_mode: Option<String>,
    /// The root disk limit in GiB: the flavor's `root_gb`, or for a
    /// zero-disk flavor `[docker] zero_disk_flavor_root_gb`; `None`: none.
    pub root_disk_gb: Option<u64>,
    /// Bytes of console output kept on the host (all rotated files).
    pub console_log_max_bytes: u64,
    /// Directories to make in the container before it starts (the mount
    /// points of the volumes its image declared; see `ImageRef::volumes`).
    pub volumes: Vec<String>,
    /// Files written into the container after it is created and before its
    /// first start (the key pair with `[docker] inject_key`, the server's
    /// injected files), through the engine's archive API.
    pub files: Vec<GuestFile>,
    /// The config drive's files (`virt::config_drive`), when the instance
    /// has one: kept on the host and bind-mounted read-only at
    /// `/mnt/config`.
    pub config_drive: Option<super::config_drive::DriveFiles>,
    /// A terminal and an open stdin for the serial console
    /// (`[serial_console] enabled`; see `virt::console`).
    pub interactive_console: bool,
}

/// A directory or regular file the host writes into an instance's
/// container before it starts, owned by the container's root. Written
/// through the engine's archive API, which resolves the path inside the
/// container's root filesystem: an image's symlink cannot send it to the
/// host. `Debug` shows the path and size, never the contents (an injected
/// file may hold a secret).
#[derive(Clone, PartialEq)]
pub struct GuestFile {
    /// The path relative to the container's `/`, checked by [`guest_path`].
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// A regular file's contents; `None` for a directory.
    pub contents: Option<Vec<u8>>,
}

impl std::fmt::Debug for GuestFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.contents.as_ref().map(Vec::len))
            .finish()
    }
}

/// The longest path accepted for a file written into a container (Linux's
/// `PATH_MAX`).
pub const MAX_GUEST_PATH: usize = 4096;

/// The longest public key written to `authorized_keys` (an OpenSSH RSA key
/// of 16384 bits is about 2.8 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// An absolute path in the guest, from a tenant, as a relative path for the
/// archive API: `/`-separated, no `.` or `..` component, no NUL, at most
/// [`MAX_GUEST_PATH`] bytes and 255 per component. Repeated slashes are
/// folded. The error says why.
pub fn guest_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("is not an absolute path");
    }
    if path.len() > MAX_GUEST_PATH {
        return Err("is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() {
        return Err("names no file");
    }
    if comps.iter().any(|c| *c == "." || *c == "..") {
        return Err("has a . or .. component");
    }
    if comps.iter().any(|c| c.len() > 255) {
        return Err("has a component longer than 255 bytes");
    }
    if path.ends_with('/') {
        return Err("names a directory");
    }
    Ok(comps.join("/"))
}

/// The key pair's public key as `/root/.ssh/authorized_keys` (directory
/// 0700, file 0600, owned by root), as the old nova-docker driver's
/// `inject_key` wrote it; `None` without a key. The key is the tenant's
/// text: written as it is (a newline added), never read by the host.
pub fn authorized_keys(key_data: &str) -> Result<Option<[GuestFile; 2]>, SpecError> {
    let key = key_data.trim_end_matches(['\n', '\r']);
    if key.trim().is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(SpecError::KeyPair(format!("the public key is {} bytes, more than {MAX_KEY_BYTES}", key.len())));
    }
    let mut contents = key.as_bytes().to_vec();
    contents.push(b'\n');
    Ok(Some([
        GuestFile { path: "root/.ssh".into(), mode: 0o700, contents: None },
        GuestFile { path: "root/.ssh/authorized_keys".into(), mode: 0o600, contents: Some(contents) },
    ]))
}

/// A request the spec cannot honour.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A `docker:*` flavor extra spec this host cannot honour.
    #[error("flavor extra spec {key}={value:?} is invalid: {why}")]
    ExtraSpec {
        /// The extra spec's key.
        key: String,
        /// Its value.
        value: String,
        /// What it must be.
        why: &'static str,
    },
    /// The image's `os_command_line` cannot be split into arguments.
    #[error("image property os_command_line is not a valid command line: {0}")]
    CommandLine(String),
    /// The flavor asks for a capability that would let the tenant escape.
    #[error("flavor docker:capabilities: {0}")]
    Capability(#[from] capabilities::NotTenantSafe),
    /// The key pair cannot be written into the container.
    #[error("key pair: {0}")]
    KeyPair(String),
    /// A flavor size no container can be given (negative, or past a kernel limit).
    #[error("flavor {field} {value} is out of range: {why}")]
    FlavorSize {
        /// The flavor field.
        field: &'static str,
        /// Its value.
        value: i64,
        /// The limit it breaks.
        why: &'static str,
    },
}

/// Splits a command line like a POSIX shell would split words (quotes and
/// backslashes; no expansion).
pub fn split_command_line(s: &str) -> Result<Vec<String>, SpecError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(SpecError::CommandLine("unterminated single quote".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err(SpecError::CommandLine("unterminated double quote".into())),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(SpecError::CommandLine("unterminated double quote".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err(SpecError::CommandLine("trailing backslash".into())),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A hostname Docker and DNS accept: lowercase letters, digits and dashes,
/// at most 63 characters.
pub fn sanitize_hostname(name: &str, uuid: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if (c == '-' || c == '_' || c == '.' || c == ' ') && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { format!("instance-{}", &uuid[..uuid.len().min(8)]) } else { out }
}

fn truthy(v: &str) -> Option<bool> {
    crate::config::parse_bool(v)
}

/// Builds the spec of an instance's container.
pub fn build(
    instance: &Instance,
    host: &str,
    image_id: &str,
    image_properties: &Map<String, Value>,
    settings: &DockerSettings,
    seccomp_profile_json: Option<&str>,
) -> Result<ContainerSpec, SpecError> {
    let uuid = instance.uuid().to_string();
    let flavor = instance.flavor();
    let extra = flavor.as_ref().map(|f| f.extra_specs()).unwrap_or_default();
    // Sizes come from the flavor as the RPC peer sent it: refused when no
    // container could have them, never multiplied past i64.
    let size = |field, value: i64, why| SpecError::FlavorSize { field, value, why };
    let vcpus = instance.vcpus();
    if vcpus < 1 {
        return Err(size("vcpus", vcpus, "must be at least 1"));
    }
    let memory_mb = instance.memory_mb();
    if memory_mb < 1 {
        return Err(size("memory_mb", memory_mb, "must be at least 1"));
    }
    let memory_bytes = memory_mb.max(4).checked_mul(1024 * 1024).ok_or(size("memory_mb", memory_mb, "too large"))?;

    let bad = |key: &str, value: &str, why| SpecError::ExtraSpec { key: key.into(), value: value.into(), why };

    // CPU: a weight always; a hard cap when configured or asked by the flavor.
    let cpu_limit = match extra.get("docker:cpu_limit").map(String::as_str) {
        None => settings.cpu_limit,
        Some("shares") => CpuLimit::Shares,
        Some("quota") => CpuLimit::Quota,
        Some(v) => return Err(bad("docker:cpu_limit", v, "must be shares or quota")),
    };
    let nano_cpus = match cpu_limit {
        CpuLimit::Quota => Some(vcpus.checked_mul(1_000_000_000).ok_or(size("vcpus", vcpus, "too large"))?),
        CpuLimit::Shares => None,
    };

    // pids: flavor may set any value; the image may only lower it.
    let mut pids_limit = match extra.get("docker:pids_limit") {
        Some(v) => v.parse::<i64>().map_err(|_| bad("docker:pids_limit", v, "must be an integer"))?,
        None => settings.pids_limit,
    };
    if let Some(p) = image_properties.get("os_pids_limit").and_then(prop_i64)
        && p > 0
        && (pids_limit <= 0 || p < pids_limit)
    {
        pids_limit = p;
    }

    // Root filesystem: read-only if config, flavor or image asks for it;
    // only the flavor may turn a configured read-only off.
    let mut read_only = match extra.get("docker:read_only_rootfs") {
        Some(v) => truthy(v).ok_or_else(|| bad("docker:read_only_rootfs", v, "must be a boolean"))?,
        None => settings.read_only_rootfs,
    };
    if image_properties.get("os_read_only_rootfs").and_then(prop_bool).unwrap_or(false) {
        read_only = true;
    }

    // Capabilities: the configured minimal set plus what the flavor adds,
    // from the tenant-safe list only (see `capabilities`). Image properties
    // cannot add any.
    let mut cap_add = settings.capabilities.clone();
    if let Some(extra_caps) = extra.get("docker:capabilities") {
        let caps = capabilities::parse_flavor_capabilities(extra_caps).map_err(SpecError::Capability)?;
        for c in caps {
            if !cap_add.contains(&c) {
                cap_add.push(c);
            }
        }
    }

    let mut security_opt = vec!["no-new-privileges:true".to_string()];
    if let Some(profile) = seccomp_profile_json {
        security_opt.push(format!("seccomp={profile}"));
    }

    let command = match image_properties.get("os_command_line").and_then(Value::as_str) {
        Some(line) if !line.trim().is_empty() => Some(split_command_line(line)?),
        _ => None,
    };

    let env = instance
        .metadata()
        .into_iter()
        .filter(|(k, v)| !k.is_empty() && !k.contains('=') && !k.contains('\0') && !v.contains('\0'))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();

    let mut labels = BTreeMap::new();
    labels.insert(labels::INSTANCE.to_string(), uuid.clone());
    labels.insert(labels::HOST.to_string(), host.to_string());
    if let Some(p) = instance.project_id() {
        labels.insert(labels::PROJECT.to_string(), p.to_string());
    }
    if let Some(u) = instance.user_id() {
        labels.insert(labels::USER.to_string(), u.to_string());
    }
    if let Some(f) = flavor.as_ref().and_then(|f| f.name().or(f.flavorid())) {
        labels.insert(labels::FLAVOR.to_string(), f.to_string());
    }
    if let Some(i) = instance.image_ref() {
        labels.insert(labels::IMAGE.to_string(), i.to_string());
    }

    // Root disk: the flavor's root_gb; a zero-disk flavor (admin-only by
    // Nova's default policy) gets the operator's default, or no limit.
    let root_disk_gb = match instance.root_gb() {
        gb if gb > 0 => Some(gb as u64),
        _ => (settings.zero_disk_flavor_root_gb > 0).then_some(settings.zero_disk_flavor_root_gb),
    };
    if let Some(gb) = root_disk_gb {
        labels.insert(labels::ROOT_GB.to_string(), gb.to_string());
    }

    let hostname = sanitize_hostname(instance.hostname().or(instance.display_name()).unwrap_or(""), &uuid);

    let mut files = Vec::new();
    if settings.inject_key
        && let Some(key) = instance.key_data()
        && let Some(entries) = authorized_keys(key)?
    {
        files.extend(entries);
    }

    Ok(ContainerSpec {
        name: container_name(&uuid),
        uuid,
        image: image_id.to_string(),
        hostname,
        command,
        env,
        labels,
        memory_bytes,
        // The kernel's cap on cgroup v1 cpu.shares (MAX_SHARES): it would
        // clamp a larger weight to this anyway.
        cpu_shares: vcpus.saturating_mul(1024).min(MAX_CPU_SHARES),
        nano_cpus,
        cpuset_cpus: settings.cpuset_cpus.clone(),
        pids_limit: (pids_limit > 0).then_some(pids_limit),
        cap_add,
        security_opt,
        read_only_rootfs: read_only,
        userns_mode: settings.userns_mode.clone(),
        root_disk_gb,
        console_log_max_bytes: settings.console_log_max_bytes,
        volumes: Vec::new(),
        files,
        config_drive: None,
        interactive_console: settings.interactive_console,
    })
}

fn prop_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn prop_bool(v: &Value) -> Option<bool> {
    v.as_bool().or_else(|| v.as_str().and_then(truthy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;
    use std::time::Duration;

    fn settings() -> DockerSettings {
        DockerSettings {
            socket_path: PathBuf::from("/var/run/docker.sock"),
            api_timeout: Duration::from_secs(120),
            pids_limit: 4096,
            cpu_limit: CpuLimit::Shares,
            cpuset_cpus: None,
            capabilities: vec!["CHOWN".into(), "KILL".into()],
            seccomp_profile: None,
            userns_mode: None,
            read_only_rootfs: false,
            inject_key: false,
            metadata_route: crate::net::MetadataRoute::Router,
            snapshot_pause: true,
            keep_snapshot_images: false,
            max_image_manifest_bytes: 1 << 20,
            max_image_unpacked_bytes: 1 << 30,
            instances_path: std::path::PathBuf::from("/tmp/nd-instances"),
            root_disk_limit: crate::config::RootDiskLimit::Auto,
            root_disk_measure_interval: Duration::from_secs(60),
            root_disk_over_limit_action: crate::config::OverLimitAction::Stop,
            zero_disk_flavor_root_gb: 0,
            console_log_max_bytes: 2 << 20,
            interactive_console: false,
        }
    }

    fn instance(extra_specs: Value, metadata: Value) -> Instance {
        instance_with_disk(extra_specs, metadata, 1)
    }

    fn instance_with_disk(extra_specs: Value, metadata: Value, root_gb: i64) -> Instance {
        Instance::from_primitive(&json!({
            "nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.8",
            "nova_object.data": {
                "uuid": "6f1b2c1e-0000-4000-8000-000000000001", "hostname": "My Server_1", "project_id": "p1",
                "user_id": "u1", "image_ref": "img-1", "metadata": metadata,
                "flavor": {"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": "1.2",
                           "nova_object.data": {"name": "m1.small", "memory_mb": 512, "vcpus": 2, "root_gb": root_gb,
                                                "extra_specs": extra_specs}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_locked_down() {
        let s =
            build(&instance(json!({}), json!({"ROLE": "web"})), "cmp1", "sha256:abc", &Map::new(), &settings(), None)
                .unwrap();
        assert_eq!(s.name, "nova-6f1b2c1e-0000-4000-8000-000000000001");
        assert_eq!(s.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(s.cpu_shares, 2048);
        assert_eq!(s.nano_cpus, None);
        assert_eq!(s.pids_limit, Some(4096));
        assert_eq!(s.cap_add, ["CHOWN", "KILL"]);
        assert_eq!(s.security_opt, ["no-new-privileges:true"]);
        assert_eq!(s.hostname, "my-server-1");
        assert_eq!(s.env, ["ROLE=web"]);
        assert_eq!(s.labels[labels::INSTANCE], "6f1b2c1e-0000-4000-8000-000000000001");
        assert_eq!(s.labels[labels::FLAVOR], "m1.small");
        assert_eq!(s.labels[labels::IMAGE], "img-1");
    }

    #[test]
    fn flavors_loosen_images_only_tighten() {
        let i = instance(
            json!({"docker:pids_limit": "100", "docker:cpu_limit": "quota", "docker:capabilities": "net_raw"}),
            json!({}),
        );
        let props = json!({"os_pids_limit": "50", "os_read_only_rootfs": "true", "os_command_line": "sleep 'a b'"});
        let s = build(&i, "h", "img", props.as_object().unwrap(), &settings(), None).unwrap();
        assert_eq!(s.pids_limit, Some(50));
        assert_eq!(s.nano_cpus, Some(2_000_000_000));
        assert!(s.cap_add.contains(&"NET_RAW".to_string()));
        assert!(s.read_only_rootfs);
        assert_eq!(s.command, Some(vec!["sleep".into(), "a b".into()]));
        let props = json!({"os_pids_limit": "100000"});
        let s = build(&i, "h", "img", props.as_object().unwrap(), &settings(), None).unwrap();
        assert_eq!(s.pids_limit, Some(100));
        for caps in ["SYS_ADMIN", "cap_sys_admin", "NET_RAW,ALL", "SYS_MODULE", "NET_RAW;SYS_ADMIN", "NET_ADMIN"] {
            let bad = instance(json!({"docker:capabilities": caps}), json!({}));
            let e = build(&bad, "h", "img", &Map::new(), &settings(), None).unwrap_err();
            assert!(matches!(e, SpecError::Capability(_)), "{caps}: {e}");
            assert!(e.to_string().contains("docker:capabilities") && e.to_string().contains("NET_RAW"), "{e}");
            // Whole in a fault message (Nova keeps 255 characters).
            assert!(e.to_string().chars().count() <= 255, "{e}");
        }
    }

    #[test]
    fn the_root_disk_limit_is_the_flavors_or_the_zero_disk_default() {
        let s =
            build(&instance_with_disk(json!({}), json!({}), 5), "h", "img", &Map::new(), &settings(), None).unwrap();
        assert_eq!(s.root_disk_gb, Some(5));
        assert_eq!(s.labels[labels::ROOT_GB], "5");
        assert_eq!(s.console_log_max_bytes, 2 << 20);
        let zero = instance_with_disk(json!({}), json!({}), 0);
        let s = build(&zero, "h", "img", &Map::new(), &settings(), None).unwrap();
        assert_eq!(s.root_disk_gb, None);
        assert!(!s.labels.contains_key(labels::ROOT_GB));
        let mut with_default = settings();
        with_default.zero_disk_flavor_root_gb = 10;
        let s = build(&zero, "h", "img", &Map::new(), &with_default, None).unwrap();
        assert_eq!(s.root_disk_gb, Some(10));
    }

    #[test]
    fn image_properties_cannot_loosen_the_flavor() {
        let i = instance(json!({"docker:pids_limit": "100", "docker:read_only_rootfs": "true"}), json!({}));
        let base = build(&i, "h", "img", &Map::new(), &settings(), None).unwrap();
        // Whatever a tenant writes in its image's properties, including the
        // flavor's own keys, nothing gets looser than the flavor made it.
        let props = json!({
            "docker:capabilities": "SYS_ADMIN", "os_capabilities": "ALL", "capabilities": "NET_ADMIN",
            "docker:pids_limit": "0", "os_pids_limit": "-1", "os_read_only_rootfs": "false",
            "docker:read_only_rootfs": "false", "docker:cpu_limit": "shares", "hw_cpu_cores": "64",
            "userns_mode": "host", "security_opt": "seccomp=unconfined", "privileged": true,
        });
        let s = build(&i, "h", "img", props.as_object().unwrap(), &settings(), None).unwrap();
        assert_eq!(s.cap_add, base.cap_add);
        assert_eq!(s.pids_limit, Some(100));
        assert!(s.read_only_rootfs);
        assert_eq!(
            (s.security_opt, s.userns_mode, s.memory_bytes, s.cpu_shares, s.nano_cpus),
            (base.security_opt, base.userns_mode, base.memory_bytes, base.cpu_shares, base.nano_cpus)
        );
        let props = json!({"os_pids_limit": 500});
        assert_eq!(build(&i, "h", "img", props.as_object().unwrap(), &settings(), None).unwrap().pids_limit, Some(100));
    }

    fn sized(memory_mb: Value, vcpus: Value, cpu_limit: &str) -> Instance {
        let mut i = instance(json!({"docker:cpu_limit": cpu_limit}), json!({}));
        let mut p = i.to_primitive();
        p["nova_object.data"]["flavor"]["nova_object.data"]["memory_mb"] = memory_mb;
        p["nova_object.data"]["flavor"]["nova_object.data"]["vcpus"] = vcpus;
        i = Instance::from_primitive(&p).unwrap();
        i
    }

    #[test]
    fn absurd_flavor_sizes_are_refused_not_overflowed() {
        let build_it = |m, v, l| build(&sized(m, v, l), "h", "img", &Map::new(), &settings(), None);
        for (m, v, l, field) in [
            (json!(i64::MAX), json!(1), "shares", "memory_mb"),
            (json!(i64::MAX / 1024 / 1024 + 1), json!(1), "shares", "memory_mb"),
            (json!(0), json!(1), "shares", "memory_mb"),
            (json!(-512), json!(1), "shares", "memory_mb"),
            (json!(512), json!(0), "shares", "vcpus"),
            (json!(512), json!(i64::MIN), "shares", "vcpus"),
            (json!(512), json!(i64::MAX), "quota", "vcpus"),
        ] {
            match build_it(m.clone(), v.clone(), l) {
                Err(SpecError::FlavorSize { field: f, .. }) => assert_eq!(f, field, "{m} {v}"),
                other => panic!("memory_mb {m} vcpus {v}: {other:?}"),
            }
        }
        // Large but representable: the weight is the kernel's maximum.
        let s = build_it(json!(i64::MAX / 1024 / 1024), json!(i64::MAX), "shares").unwrap();
        assert_eq!((s.memory_bytes, s.cpu_shares), ((i64::MAX / 1024 / 1024) * 1024 * 1024, MAX_CPU_SHARES));
    }

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(split_command_line("a  b\\ c \"d \\\"e\" ''").unwrap(), ["a", "b c", "d \"e", ""]);
        assert!(split_command_line("'open").is_err());
        assert!(split_command_line("").unwrap().is_empty());
    }

    #[test]
    fn the_key_pair_goes_to_roots_authorized_keys_only_with_inject_key() {
        let mut p = instance(json!({}), json!({})).to_primitive();
        p["nova_object.data"]["key_data"] = json!("ssh-rsa AAAAB3 me@host\n");
        let i = Instance::from_primitive(&p).unwrap();
        assert!(build(&i, "h", "img", &Map::new(), &settings(), None).unwrap().files.is_empty());
        let mut inject = settings();
        inject.inject_key = true;
        let s = build(&i, "h", "img", &Map::new(), &inject, None).unwrap();
        assert_eq!(s.files.len(), 2);
        assert_eq!(
            (s.files[0].path.as_str(), s.files[0].mode, s.files[0].contents.is_none()),
            ("root/.ssh", 0o700, true)
        );
        assert_eq!((s.files[1].path.as_str(), s.files[1].mode), ("root/.ssh/authorized_keys", 0o600));
        assert_eq!(s.files[1].contents.as_deref(), Some(&b"ssh-rsa AAAAB3 me@host\n"[..]));
        // The contents never show in Debug.
        assert!(!format!("{:?}", s.files).contains("AAAAB3"));
        // No key: nothing; an absurd key: refused.
        assert!(
            build(&instance(json!({}), json!({})), "h", "img", &Map::new(), &inject, None).unwrap().files.is_empty()
        );
        p["nova_object.data"]["key_data"] = json!("x".repeat(MAX_KEY_BYTES + 1));
        let e = build(&Instance::from_primitive(&p).unwrap(), "h", "img", &Map::new(), &inject, None).unwrap_err();
        assert!(matches!(e, SpecError::KeyPair(_)), "{e}");
    }

    #[test]
    fn guest_paths_stay_plain() {
        assert_eq!(guest_path("/root/.ssh/authorized_keys").unwrap(), "root/.ssh/authorized_keys");
        assert_eq!(guest_path("//etc///motd").unwrap(), "etc/motd");
        assert_eq!(guest_path("/.hidden/..x").unwrap(), ".hidden/..x");
        for bad in ["", "etc/motd", "/", "///", "/a/../b", "/a/./b", "/..", "/a/", "/a\0b"] {
            assert!(guest_path(bad).is_err(), "{bad:?}");
        }
        assert!(guest_path(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn hostnames_are_sanitised() {
        assert_eq!(sanitize_hostname("Web.Server", "abcdefgh-1"), "web-server");
        assert_eq!(sanitize_hostname("---", "abcdefgh-1"), "instance-abcdefgh");
        assert_eq!(sanitize_hostname(&"x".repeat(80), "u").len(), 63);
    }
}
