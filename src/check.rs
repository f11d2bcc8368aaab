//! `nova-docker check`: tries every dependency the way `serve` uses it and
//! says plainly what is wrong. Each check is bounded in time.

use std::time::Duration;

use crate::auth::{HttpError, ServiceClient};
use crate::conductor::Conductor;
use crate::config::{AuthSettings, LoginMethod, ServiceSettings, Settings};
use crate::image::Glance;
use crate::placement::Placement;
use crate::rpc::{RequestContext, RpcClient, Topology, Transport};
use crate::service::transport_options;
use crate::virt::docker::DockerDriver;

struct Report {
    failures: usize,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("[ OK ] {what}: {}", detail.as_ref());
    }

    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.failures += 1;
        println!("[FAIL] {what}: {}", detail.as_ref());
    }

    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("[WARN] {what}: {}", detail.as_ref());
    }
}

/// Runs every check; returns whether all passed.
pub async fn run(settings: &Settings) -> bool {
    let mut r = Report { failures: 0 };
    r.ok("configuration", format!("host {}, transport_url {}", settings.host, settings.transport_url.brokers[0]));
    for unknown in &settings.unknown_options {
        r.warn(
            "configuration",
            format!("{unknown} is not an option of nova-docker: ignored (see `nova-docker config sample`)"),
        );
    }
    for line in &settings.unused_options {
        println!("[INFO] configuration: {line}");
    }
    check_state_path(settings, &mut r).await;
    check_privileges(&mut r);
    check_docker(settings, &mut r).await;
    check_amqp_and_conductor(settings, &mut r).await;
    check_placement(settings, &mut r).await;
    check_glance(settings, &mut r).await;
    check_http("neutron", &settings.neutron, "/v2.0/networks?limit=1", &mut r).await;
    if r.failures == 0 {
        println!("all checks passed");
    } else {
        println!("{} check(s) failed", r.failures);
    }
    r.failures == 0
}

async fn check_state_path(settings: &Settings, r: &mut Report) {
    check_writable_dir("state_path", &settings.state_path, r).await;
    // Every boot writes the instance's resolv.conf and hosts here.
    check_writable_dir("instances_path", &settings.docker.instances_path, r).await;
}

async fn check_writable_dir(what: &str, dir: &std::path::Path, r: &mut Report) {
    let probe = dir.join(".nova-docker-check");
    match tokio::fs::create_dir_all(dir).await.and(tokio::fs::write(&probe, b"ok").await) {
        Ok(()) => {
            let _ = tokio::fs::remove_file(&probe).await;
            r.ok(what, format!("{} is writable", dir.display()));
        }
        Err(e) => r.fail(what, format!("{} is not writable: {e}", dir.display())),
    }
}

/// Effective capabilities of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The capabilities plugging ports needs: netlink changes (NET_ADMIN),
/// entering and bind-mounting namespaces (SYS_ADMIN), and opening
/// `/proc/<pid>/ns/net` of a container process owned by another user
/// (SYS_PTRACE).
const NEEDED_CAPS: &[(u32, &str)] = &[(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")];

fn check_privileges(r: &mut Report) {
    match effective_caps() {
        Some(caps) => {
            let missing: Vec<&str> =
                NEEDED_CAPS.iter().filter(|(bit, _)| caps & (1u64 << bit) == 0).map(|(_, name)| *name).collect();
            if missing.is_empty() {
                r.ok(
                    "privileges",
                    "CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_SYS_PTRACE present (to plug ports into containers)",
                );
            } else {
                r.fail(
                    "privileges",
                    format!(
                        "missing {}: run as root or grant them (AmbientCapabilities in the systemd unit)",
                        missing.join(", ")
                    ),
                );
            }
        }
        None => r.warn("privileges", "cannot read /proc/self/status"),
    }
}

async fn check_docker(settings: &Settings, r: &mut Report) {
    let path = settings.docker.socket_path.display().to_string();
    match tokio::time::timeout(Duration::from_secs(15), DockerDriver::connect(&settings.docker, &settings.host)).await {
        Ok(Ok(d)) => match d.client().version().await {
            Ok(v) => {
                r.ok(
                    "docker",
                    format!(
                        "engine {} (API {}) at {path}",
                        v.version.unwrap_or_default(),
                        v.api_version.unwrap_or_default()
                    ),
                );
                check_root_disk(settings, &d, r);
                r.ok(
                    "console log",
                    format!(
                        "each instance keeps at most {} bytes of output on the host (json-file, rotated)",
                        settings.docker.console_log_max_bytes
                    ),
                );
                if let Ok(info) = d.client().info().await {
                    let userns = info.security_options.unwrap_or_default().iter().any(|o| o.contains("userns"));
                    if !userns && settings.docker.userns_mode.is_none() {
                        r.warn("docker", "user namespace remapping is off: root in a container is root on the host (see rootwrap/README.md)");
                    }
                }
            }
            Err(e) => r.fail("docker", format!("the engine at {path} does not answer version: {e}")),
        },
        Ok(Err(e)) => r.fail("docker", e.to_string()),
        Err(_) => r.fail("docker", format!("no answer from {path} within 15 s")),
    }
}

/// Which root disk mode the host is in, and why.
fn check_root_disk(settings: &Settings, d: &DockerDriver, r: &mut Report) {
    use crate::config::OverLimitAction;
    use crate::virt::Driver;
    use crate::virt::root_disk::Enforcement;
    let mode = d.root_disk_mode();
    match mode.enforcement {
        _ if mode.quota_unsupported => r.fail("root disk", &mode.reason),
        Enforcement::Quota => r.ok("root disk", format!("quota: {}", mode.reason)),
        Enforcement::Measure => {
            let action = match settings.docker.root_disk_over_limit_action {
                OverLimitAction::Stop => "stopped with a fault",
                OverLimitAction::Log => "only logged (root_disk_over_limit_action = log)",
            };
            r.ok("root disk", format!("measure: {}; an instance over its root_gb is {action}", mode.reason))
        }
        Enforcement::Off => r.warn("root disk", &mode.reason),
    }
    if mode.enforcement != Enforcement::Off && settings.docker.zero_disk_flavor_root_gb == 0 {
        r.warn(
            "zero-disk flavors",
            "instances of flavors with root_gb = 0 have no root disk limit (Nova's policy lets only admins boot \
             them); set [docker] zero_disk_flavor_root_gb to limit them",
        );
    }
}

async fn check_amqp_and_conductor(settings: &Settings, r: &mut Report) {
    let transport = Transport::start(transport_options(settings));
    let brokers: Vec<String> = settings.transport_url.brokers.iter().map(|b| b.to_string()).collect();
    if let Err(e) = transport.wait_connected(Duration::from_secs(10)).await {
        let why = transport.last_connect_error().map(|w| format!(" (last attempt: {w})")).unwrap_or_default();
        r.fail(
            "rabbitmq",
            format!(
                "{e} at {}{why}. Is RabbitMQ running there, and are the user, password and vhost right?",
                brokers.join(", ")
            ),
        );
        transport.close().await;
        r.fail("nova-conductor", "not checked: no RabbitMQ connection");
        return;
    }
    let on = transport.connected_broker();
    let tls = if on.as_ref().is_some_and(|b| b.tls) { "TLS" } else { "plain AMQP" };
    let login = match settings.rabbit.login_method {
        LoginMethod::AmqPlain => "AMQPLAIN",
        LoginMethod::Plain => "PLAIN",
        LoginMethod::External => "EXTERNAL (client certificate)",
    };
    let on = on.map(|b| b.to_string()).unwrap_or_default();
    r.ok("rabbitmq", format!("connected to {on} ({tls}, {login} login); transport_url lists {}", brokers.join(", ")));
    // Several brokers: one that refused us before another accepted is still
    // worth knowing about.
    if let Some(why) = transport.last_connect_error() {
        r.warn("rabbitmq", format!("an earlier attempt failed: {why}"));
    }
    let topology = Topology::new(settings.rabbit.clone(), settings.control_exchange.clone());
    match RpcClient::start(transport.clone(), &topology, Duration::from_secs(10)).await {
        Ok(client) => {
            let conductor = Conductor::new(client, &settings.host);
            match conductor.ping(Duration::from_secs(10)).await {
                Ok(()) => match conductor.service_minimum_version(&RequestContext::admin(), "nova-conductor").await {
                    Ok(v) => r.ok(
                        "nova-conductor",
                        format!("answers (service version {v}, release {})", crate::release::detect(v).name),
                    ),
                    Err(e) => r.fail("nova-conductor", format!("answers ping but not object calls: {e}")),
                },
                Err(e) => r.fail(
                    "nova-conductor",
                    format!(
                        "{e}: is nova-conductor running on the same RabbitMQ vhost ({})?",
                        settings.transport_url.brokers[0].vhost
                    ),
                ),
            }
        }
        Err(e) => r.fail("rabbitmq", format!("cannot declare a reply queue: {e}")),
    }
    transport.close().await;
}

async fn check_placement(settings: &Settings, r: &mut Report) {
    let placement = Placement::new(ServiceClient::new(settings.placement.clone(), "placement", "placement"));
    match tokio::time::timeout(Duration::from_secs(20), placement.ping(&settings.host)).await {
        Ok(Ok(())) => r.ok("placement", "reachable and accepts the credentials"),
        Ok(Err(crate::placement::PlacementError::Http(e))) => r.fail("placement", explain(&e, "placement")),
        Ok(Err(e)) => r.fail("placement", e.to_string()),
        Err(_) => r.fail("placement", "no answer within 20 s"),
    }
}

async fn check_glance(settings: &Settings, r: &mut Report) {
    if settings.glance.auth == AuthSettings::User {
        // Nova's default: requests carry the user's token (and, without an
        // endpoint_override, the user's catalog names Glance).
        if settings.glance.endpoint_override.is_none() {
            return r.ok("glance", glance_from_catalog(&settings.glance));
        }
        return check_http("glance", &settings.glance, "/versions", r).await;
    }
    let glance = Glance::new(ServiceClient::new(settings.glance.clone(), "glance", "glance"));
    match tokio::time::timeout(Duration::from_secs(20), glance.ping(None)).await {
        Ok(Ok(())) => r.ok("glance", "reachable and accepts the credentials"),
        Ok(Err(e)) => r.fail("glance", explain(&e, "glance")),
        Err(_) => r.fail("glance", "no answer within 20 s"),
    }
}

/// How a boot finds Glance when each request's catalog names it.
fn glance_from_catalog(s: &ServiceSettings) -> String {
    let interfaces =
        if s.valid_interfaces.is_empty() { "internal,public".to_string() } else { s.valid_interfaces.join(",") };
    let region = s.region_name.as_deref().map(|r| format!(", region {r}")).unwrap_or_default();
    format!(
        "each boot uses the image endpoint of the user's service catalog (interface {interfaces}{region}), with \
         the user's token: nothing to reach before a boot (set [glance] endpoint_override to pin one)"
    )
}

async fn check_http(name: &'static str, s: &ServiceSettings, path: &str, r: &mut Report) {
    let client = ServiceClient::new(s.clone(), name, name);
    let attempt =
        tokio::time::timeout(Duration::from_secs(20), client.json(None, reqwest::Method::GET, path, |b| b)).await;
    match attempt {
        Ok(Ok(_)) => r.ok(name, "reachable"),
        Ok(Err(e)) => r.fail(name, explain(&e, name)),
        Err(_) => r.fail(name, "no answer within 20 s"),
    }
}

/// An HTTP failure in words: what was tried, what went wrong at the bottom
/// of the error chain, and which settings to look at.
fn explain(e: &HttpError, section: &str) -> String {
    match e {
        HttpError::Transport { url, source, service: "keystone", .. } => {
            let mut cause: &dyn std::error::Error = source;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!(
                "cannot reach Keystone at {url}: {cause}. Is [{section}] auth_url right (and, for TLS, cafile or \
                 certfile/keyfile)?"
            )
        }
        HttpError::Transport { url, source, .. } => {
            let mut cause: &dyn std::error::Error = source;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!(
                "cannot reach {url}: {cause}. Is the service running there, and is [{section}] endpoint_override \
                 (or the catalog's endpoint) right?"
            )
        }
        HttpError::Status { url, status: 401 | 403, .. } => format!(
            "{url} refused the credentials ({}): check [{section}] auth_type, username, password and project",
            e.status().unwrap_or_default()
        ),
        HttpError::Status { url, status: 404, .. } => {
            format!("{url} answered 404 Not Found: is [{section}] endpoint_override the service's root URL?")
        }
        other => other.to_string(),
    }
}
