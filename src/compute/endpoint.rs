//! The compute RPC endpoint: the methods of `nova/compute/rpcapi.py` this host
//! serves, their arguments, and what it answers for the ones containers
//! cannot do.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::build::build_request;
use super::manager::ComputeManager;
use super::operation::Claim;
use super::resize::ResizeRequest;
use super::snapshot::Rotation;
use crate::network::NetworkRequest;
use crate::objects::{Flavor, Instance, Migration, NovaObject};
use crate::rpc::{BoxFuture, CallResult, Endpoint, Invocation, RemoteError, Version};
use crate::virt::Driver;

/// Methods implemented here.
const SUPPORTED: &[&str] = &[
    "build_and_run_instance",
    "terminate_instance",
    "stop_instance",
    "start_instance",
    "reboot_instance",
    "pause_instance",
    "unpause_instance",
    "suspend_instance",
    "resume_instance",
    "soft_delete_instance",
    "restore_instance",
    "get_console_output",
    "get_serial_console",
    "validate_console_port",
    "get_diagnostics",
    "get_instance_diagnostics",
    "set_host_enabled",
    "get_host_uptime",
    "external_instance_event",
    "snapshot_instance",
    "backup_instance",
    "attach_interface",
    "detach_interface",
    "prep_resize",
    "resize_instance",
    "finish_resize",
    "confirm_resize",
    "revert_resize",
    "finish_revert_resize",
    "rebuild_instance",
    "cache_images",
    "shelve_instance",
    "shelve_offload_instance",
    "unshelve_instance",
];

/// Compute API 6.x methods this host cannot perform; they fail at once with
/// NotImplementedError (calls) or a fault and reverted task state (casts).
const UNSUPPORTED: &[&str] = &[
    "add_fixed_ip_to_instance",
    "remove_fixed_ip_from_instance",
    "attach_volume",
    "detach_volume",
    "swap_volume",
    "reserve_block_device_name",
    "remove_volume_connection",
    "extend_volume",
    "volume_snapshot_create",
    "volume_snapshot_delete",
    "prep_snapshot_based_resize_at_dest",
    "prep_snapshot_based_resize_at_source",
    "finish_snapshot_based_resize_at_dest",
    "finish_revert_snapshot_based_resize_at_source",
    "revert_snapshot_based_resize_at_dest",
    "confirm_snapshot_based_resize_at_source",
    "check_can_live_migrate_destination",
    "check_can_live_migrate_source",
    "check_instance_shared_storage",
    "live_migration",
    "live_migration_force_complete",
    "live_migration_abort",
    "pre_live_migration",
    "post_live_migration_at_destination",
    "rollback_live_migration_at_destination",
    "drop_move_claim_at_destination",
    "rescue_instance",
    "unrescue_instance",
    "set_admin_password",
    "inject_network_info",
    "get_vnc_console",
    "get_spice_console",
    "get_rdp_console",
    "get_mks_console",
    "host_maintenance_mode",
    "host_power_action",
    "trigger_crash_dump",
    "quiesce_instance",
    "unquiesce_instance",
    "allow_share",
    "deny_share",
];

/// The `compute` endpoint (default namespace).
pub struct ComputeEndpoint<D: Driver> {
    manager: Arc<ComputeManager<D>>,
    version: Version,
}

impl<D: Driver> ComputeEndpoint<D> {
    /// An endpoint serving the release's compute API version.
    pub fn new(manager: Arc<ComputeManager<D>>, version: Version) -> Self {
        ComputeEndpoint { manager, version }
    }
}

fn instance_arg(args: &Map<String, Value>) -> Result<Instance, RemoteError> {
    let v = args.get("instance").ok_or_else(|| RemoteError::bad_request("missing argument: instance"))?;
    Instance::from_primitive(v).map_err(|e| RemoteError::bad_request(format!("argument instance: {e}")))
}

fn migration_arg(args: &Map<String, Value>) -> Result<Migration, RemoteError> {
    let v = args.get("migration").ok_or_else(|| RemoteError::bad_request("missing argument: migration"))?;
    Migration::from_primitive(v).map_err(|e| RemoteError::bad_request(format!("argument migration: {e}")))
}

/// The flavor argument, under the first of `names` present (6.0 renamed
/// `instance_type` to `flavor`).
fn flavor_arg(args: &Map<String, Value>, names: &[&str]) -> Result<Flavor, RemoteError> {
    let v = names
        .iter()
        .find_map(|n| args.get(*n).filter(|v| !v.is_null()))
        .ok_or_else(|| RemoteError::bad_request("missing argument: flavor"))?;
    NovaObject::expect(v, "Flavor")
        .map(|obj| Flavor { obj })
        .map_err(|e| RemoteError::bad_request(format!("argument flavor: {e}")))
}

fn value_arg(args: &Map<String, Value>, name: &str) -> Value {
    args.get(name).cloned().unwrap_or(Value::Null)
}

fn str_arg(args: &Map<String, Value>, name: &str) -> Result<String, RemoteError> {
    args.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| RemoteError::bad_request(format!("missing or invalid argument: {name}")))
}

fn bool_arg(args: &Map<String, Value>, name: &str, default: bool) -> bool {
    args.get(name).and_then(Value::as_bool).unwrap_or(default)
}

impl<D: Driver> Endpoint for ComputeEndpoint<D> {
    fn namespace(&self) -> Option<&str> {
        None
    }

    fn version(&self) -> Version {
        self.version
    }

    fn has_method(&self, method: &str) -> bool {
        SUPPORTED.contains(&method) || UNSUPPORTED.contains(&method)
    }

    fn invoke(self: Arc<Self>, call: Invocation) -> BoxFuture<'static, CallResult> {
        Box::pin(async move {
            let m = &self.manager;
            m.wait_ready().await;
            let ctx = call.context.clone();
            let args = call.args;
            if let Some(uuid) = args.get("instance").and_then(|i| i["nova_object.data"]["uuid"].as_str()) {
                tracing::Span::current().record("instance", uuid);
            }
            let map = |r: Result<(), super::errors::OpError>| r.map(|_| Value::Null).map_err(|e| e.to_remote());
            match call.method.as_str() {
                "build_and_run_instance" => {
                    let i = instance_arg(&args)?;
                    m.build_and_run_instance(&ctx, i, build_request(&args)).await;
                    Ok(Value::Null)
                }
                "terminate_instance" => map(m.terminate_instance(&ctx, instance_arg(&args)?).await),
                "stop_instance" => {
                    map(m.stop_instance(&ctx, instance_arg(&args)?, bool_arg(&args, "clean_shutdown", true)).await)
                }
                "start_instance" => map(m.start_instance(&ctx, instance_arg(&args)?).await),
                "reboot_instance" => {
                    let hard = args.get("reboot_type").and_then(Value::as_str) == Some("HARD");
                    map(m.reboot_instance(&ctx, instance_arg(&args)?, hard).await)
                }
                "pause_instance" => map(m.pause_instance(&ctx, instance_arg(&args)?, true).await),
                "unpause_instance" => map(m.pause_instance(&ctx, instance_arg(&args)?, false).await),
                "suspend_instance" => map(m.suspend_instance(&ctx, instance_arg(&args)?).await),
                "resume_instance" => map(m.resume_instance(&ctx, instance_arg(&args)?).await),
                "soft_delete_instance" => map(m.soft_delete_instance(&ctx, instance_arg(&args)?).await),
                "restore_instance" => map(m.restore_instance(&ctx, instance_arg(&args)?).await),
                "snapshot_instance" => {
                    let image_id = str_arg(&args, "image_id")?;
                    map(m.snapshot_instance(&ctx, instance_arg(&args)?, &image_id, None).await)
                }
                "backup_instance" => {
                    let image_id = str_arg(&args, "image_id")?;
                    let rotation = Rotation {
                        backup_type: str_arg(&args, "backup_type")?,
                        keep: args.get("rotation").and_then(Value::as_u64).unwrap_or(1) as usize,
                    };
                    map(m.snapshot_instance(&ctx, instance_arg(&args)?, &image_id, Some(rotation)).await)
                }
                "shelve_instance" => {
                    let image_id = str_arg(&args, "image_id")?;
                    let clean = bool_arg(&args, "clean_shutdown", true);
                    map(m.shelve_instance(&ctx, instance_arg(&args)?, &image_id, clean).await)
                }
                "shelve_offload_instance" => map(m.shelve_offload_instance(&ctx, instance_arg(&args)?).await),
                "unshelve_instance" => {
                    let image = args.get("image").filter(|v| v.is_object()).cloned();
                    map(m.unshelve_instance(&ctx, instance_arg(&args)?, image).await)
                }
                "cache_images" => {
                    let ids: Vec<String> = args
                        .get("image_ids")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default();
                    Ok(Value::Object(m.cache_images(&ctx, &ids).await))
                }
                "rebuild_instance" => {
                    let req = super::rebuild::RebuildRequest::from_args(&args);
                    map(m.rebuild_instance(&ctx, instance_arg(&args)?, req).await)
                }
                "get_console_output" => {
                    let tail = args.get("tail_length").and_then(Value::as_u64).map(|n| n as usize);
                    m.get_console_output(&instance_arg(&args)?, tail)
                        .await
                        .map(Value::String)
                        .map_err(|e| e.to_remote())
                }
                "get_serial_console" => {
                    let console_type = str_arg(&args, "console_type")?;
                    m.get_serial_console(&ctx, &console_type, &instance_arg(&args)?).await.map_err(|e| e.to_remote())
                }
                "validate_console_port" => {
                    // Nova's proxy sends the port as a string; accept a number too.
                    let port = match args.get("port") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        _ => return Err(RemoteError::bad_request("missing or invalid argument: port")),
                    };
                    let console_type = str_arg(&args, "console_type")?;
                    m.validate_console_port(&instance_arg(&args)?, &port, &console_type)
                        .map(Value::Bool)
                        .map_err(|e| e.to_remote())
                }
                "get_diagnostics" => m.get_diagnostics(&instance_arg(&args)?).await.map_err(|e| e.to_remote()),
                "get_instance_diagnostics" => {
                    m.get_instance_diagnostics(&instance_arg(&args)?).await.map_err(|e| e.to_remote())
                }
                "set_host_enabled" => {
                    let enabled = bool_arg(&args, "enabled", true);
                    m.set_host_enabled(enabled).await;
                    Ok(json!(if enabled { "enabled" } else { "disabled" }))
                }
                "get_host_uptime" => Ok(json!(host_uptime().await)),
                "external_instance_event" => {
                    m.handle_external_events(&ctx, &args).await;
                    Ok(Value::Null)
                }
                "attach_interface" => {
                    let opt =
                        |k: &str| args.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
                    let request = NetworkRequest {
                        network_id: opt("network_id"),
                        port_id: opt("port_id"),
                        address: opt("requested_ip"),
                        tag: opt("tag"),
                    };
                    m.attach_interface(&ctx, instance_arg(&args)?, request).await.map_err(|e| e.to_remote())
                }
                "detach_interface" => {
                    let port = str_arg(&args, "port_id")?;
                    map(m.detach_interface(&ctx, instance_arg(&args)?, &port, true).await)
                }
                "prep_resize" => {
                    let req = ResizeRequest {
                        flavor: flavor_arg(&args, &["flavor", "instance_type"])?,
                        image: value_arg(&args, "image"),
                        request_spec: value_arg(&args, "request_spec"),
                        filter_properties: value_arg(&args, "filter_properties"),
                        host_list: value_arg(&args, "host_list"),
                        clean_shutdown: bool_arg(&args, "clean_shutdown", true),
                    };
                    map(m.prep_resize(&ctx, instance_arg(&args)?, migration_arg(&args)?, req).await)
                }
                "resize_instance" => {
                    let clean = bool_arg(&args, "clean_shutdown", true);
                    let (image, spec) = (value_arg(&args, "image"), value_arg(&args, "request_spec"));
                    map(m.resize_instance(&ctx, instance_arg(&args)?, migration_arg(&args)?, image, spec, clean).await)
                }
                "finish_resize" => {
                    let disk_info = args.get("disk_info").cloned();
                    map(m.finish_resize(&ctx, instance_arg(&args)?, migration_arg(&args)?, disk_info).await)
                }
                "confirm_resize" => map(m.confirm_resize(&ctx, instance_arg(&args)?, migration_arg(&args)?).await),
                "revert_resize" => {
                    let spec = value_arg(&args, "request_spec");
                    map(m.revert_resize(&ctx, instance_arg(&args)?, migration_arg(&args)?, spec).await)
                }
                "finish_revert_resize" => {
                    map(m.finish_revert_resize(&ctx, instance_arg(&args)?, migration_arg(&args)?).await)
                }
                // The conductor turns anything but a pre-check error into a
                // 500 of the API: this one the user reads as a 400.
                "check_can_live_migrate_destination" | "check_can_live_migrate_source" => {
                    let reason = "live migration is not supported by nova-docker (instances are containers): \
                                  use a cold migration";
                    Err(RemoteError::nova(
                        "MigrationPreCheckError",
                        format!("Migration pre-check error: {reason}"),
                        400,
                        json!({"reason": reason}),
                    ))
                }
                other if call.is_call => Err(m.unsupported(other)),
                other => {
                    let instance = instance_arg(&args).ok();
                    Err(m.unsupported_cast(&ctx, other, instance, claim_of(other, &args)).await)
                }
            }
        })
    }
}

/// What Nova claimed in Placement before casting `method` here (see
/// [`Claim`]): what a refusal or failure must give back.
pub fn claim_of(method: &str, args: &Map<String, Value>) -> Option<Claim> {
    let migration = || args.get("migration").filter(|v| !v.is_null()).and_then(|v| Migration::from_primitive(v).ok());
    match method {
        // At the destination of a resize or cold migration.
        "prep_resize" => migration().map(Claim::MovedToMigration),
        // (rebuild_instance and unshelve_instance hold their claims in
        // their own operations.)
        _ => None,
    }
}

/// `uptime`-like text, what Nova's drivers return for `get_host_uptime`.
pub async fn host_uptime() -> String {
    let uptime = tokio::fs::read_to_string("/proc/uptime").await.unwrap_or_default();
    let load = tokio::fs::read_to_string("/proc/loadavg").await.unwrap_or_default();
    let secs: f64 = uptime.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let loads: Vec<&str> = load.split_whitespace().take(3).collect();
    let now = chrono::Local::now().format("%H:%M:%S");
    let days = (secs / 86400.0) as u64;
    let hours = ((secs % 86400.0) / 3600.0) as u64;
    let minutes = ((secs % 3600.0) / 60.0) as u64;
    format!(" {now} up {days} days, {hours:2}:{minutes:02},  load average: {}", loads.join(", "))
}
