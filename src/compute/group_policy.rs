//! Nova's late server-group check, `_validate_instance_group_policy`: the
//! scheduler's (anti-)affinity filters race with other boots and moves of
//! the same group, so the host that takes an instance checks the group's
//! policy again before anything is made. Nova runs it on a build
//! (`_do_build_and_run_instance`: rescheduled), a resize or cold migration
//! (`prep_resize`: the allocation given back, rescheduled to an alternate or
//! refused) and an evacuation (`_do_rebuild_instance`: the evacuation fails,
//! its migration `failed` and this host's allocation given back); the
//! callers here do the same with the [`OpError`] this module returns.

use std::collections::BTreeSet;

use serde_json::Value;

use super::errors::OpError;
use super::locks::InstanceGuard;
use super::manager::ComputeManager;
use crate::objects::{Instance, NovaObject};
use crate::rpc::{RemoteError, RequestContext};
use crate::virt::Driver;

impl<D: Driver> ComputeManager<D> {
    /// Nova's `_validate_instance_group_policy` with the scheduler hints of
    /// `request_spec` (else the legacy `filter_properties`): with a `group`
    /// hint, anti-affinity allows at most `max_server_per_host` (1 by
    /// default) other members on this host, counting the instances moving
    /// to or from it; affinity wants this host when other members already
    /// have one. A violation is Nova's `GroupAffinityViolation`. Checked
    /// under a per-group lock, as Nova's `utils.synchronized`; the lock is
    /// returned (None without a group) for a move to hold until its
    /// migration names this host (`claim_migration_here`), so that two
    /// moves of members racing here are counted one after the other (each
    /// check otherwise runs before the other's migration shows here).
    pub(super) async fn validate_group_policy(
        &self,
        ctx: &RequestContext,
        i: &Instance,
        request_spec: &Value,
        filter_properties: &Value,
    ) -> Result<Option<InstanceGuard>, OpError> {
        let Some(hint) = group_hint(request_spec, filter_properties) else { return Ok(None) };
        let Some(group) = self.conductor.instance_group_by_hint(ctx, &hint).await? else { return Ok(None) };
        let group_uuid = group.get_str("uuid").unwrap_or_default().to_string();
        let lock = self.locks.lock(&format!("instance-group-{group_uuid}")).await;
        let uuid = i.uuid();
        match group_policy(&group).as_deref() {
            Some("anti-affinity") => {
                let mut here: BTreeSet<String> =
                    self.conductor.instance_uuids_on_host(ctx).await?.into_iter().collect();
                here.extend(self.conductor.migrating_instances(ctx, self.host()).await?);
                // The members as they are now, inside the lock.
                let fresh = self.conductor.instance_group_by_uuid(ctx, &group_uuid).await?.unwrap_or(group);
                let members: Vec<String> = fresh
                    .get("members")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                let others = members.iter().filter(|m| m.as_str() != uuid && here.contains(*m)).count();
                let max = fresh
                    .get("rules")
                    .and_then(|r| r.get("max_server_per_host"))
                    .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
                if others as u64 >= max.unwrap_or(1) {
                    return Err(group_violation(uuid, "Anti-affinity"));
                }
            }
            Some("affinity") => {
                let mut group = group;
                let hosts = self.conductor.instance_group_hosts(ctx, &mut group, uuid).await?;
                if !hosts.is_empty() && !hosts.iter().any(|h| h == self.host()) {
                    return Err(group_violation(uuid, "Affinity"));
                }
            }
            _ => {}
        }
        Ok(Some(lock))
    }
}

/// The `group` scheduler hint: from the request spec, else the legacy
/// filter properties (Nova's `_get_scheduler_hints`); a list's first entry.
pub fn group_hint(request_spec: &Value, filter_properties: &Value) -> Option<String> {
    let from = |hints: &Value| {
        let g = &hints["group"];
        g.as_str().or_else(|| g.as_array().and_then(|a| a.first()).and_then(Value::as_str)).map(str::to_string)
    };
    let spec_hints = &request_spec["nova_object.data"]["scheduler_hints"];
    from(spec_hints).or_else(|| from(&filter_properties["scheduler_hints"])).filter(|g| !g.is_empty())
}

/// A group's policy (`policy`, or the first of the older `policies`).
fn group_policy(group: &NovaObject) -> Option<String> {
    group.get_str("policy").map(str::to_string).or_else(|| {
        group
            .get("policies")
            .and_then(Value::as_array)
            .and_then(|p| p.first())
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// Nova's `GroupAffinityViolation`.
fn group_violation(uuid: &str, policy: &str) -> OpError {
    OpError::Nova(RemoteError::nova(
        "GroupAffinityViolation",
        format!("{policy} instance group policy was violated (instance {uuid})"),
        500,
        serde_json::json!({}),
    ))
}

/// Whether `e` is the late check's refusal.
pub fn is_group_violation(e: &OpError) -> bool {
    matches!(e, OpError::Nova(r) if r.class == "GroupAffinityViolation")
}
