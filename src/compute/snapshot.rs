//! Snapshots and backups: `docker commit` of the instance's container, then
//! `docker save` of exactly that image streamed through the canonicalizer
//! into the Glance image Nova created (container_format docker, disk_format
//! raw), with Nova's task states. With `keep_snapshot_images` the committed
//! image stays, bound to the new Glance image as a load would bind it.

use std::time::Instant;

use serde_json::json;

use super::errors::OpError;
use super::manager::ComputeManager;
use super::operation::{OnFailure, Operation};
use super::states::TaskState;
use crate::conductor::Expected;
use crate::image::{ImageError, cache_repository, cache_tag, save_to_glance};
use crate::metrics;
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::Driver;

/// A backup's rotation request.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The rotation group (e.g. `daily`): only backups of this type count.
    pub backup_type: String,
    /// How many backups of that type to keep; older ones are deleted.
    pub keep: usize,
}

impl<D: Driver> ComputeManager<D> {
    /// `snapshot_instance` (rotation `None`) and `backup_instance`.
    pub async fn snapshot_instance(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        image_id: &str,
        rotation: Option<Rotation>,
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _slot = self.snapshot_slot().await;
        let _lock = self.locks.lock(&uuid).await;
        let _busy = self.mark_busy(&uuid);
        let event = if rotation.is_some() { "compute_backup_instance" } else { "compute_snapshot_instance" };
        let started = Instant::now();
        let op = Operation::new(event).on_failure(OnFailure::EventOnly);
        let r = self
            .run_held(ctx, &mut i, op, async |i| {
                // Nova saves image_snapshot, then the power state: one save
                // here, with the same expected task state and end result.
                i.set_power_state(self.power_state_of(&uuid).await?);
                let expected = if rotation.is_none() {
                    let pending = Expected::task(TaskState::ImageSnapshotPending);
                    self.begin_task(ctx, i, TaskState::ImageSnapshot, pending).await?;
                    TaskState::ImageSnapshot
                } else {
                    self.save(ctx, i, Expected::Any).await?;
                    TaskState::ImageBackup
                };
                let states = (TaskState::ImagePendingUpload, TaskState::ImageUploading);
                self.snapshot_to_glance(ctx, i, image_id, expected, states).await?;
                i.set_task_state(None);
                self.save(ctx, i, Expected::task(TaskState::ImageUploading)).await?;
                if let Some(rot) = &rotation {
                    self.rotate_backups(ctx, &uuid, i.project_id().unwrap_or_default(), rot).await;
                }
                Ok(())
            })
            .await;
        metrics::global().observe(
            "nova_docker_operation_duration_seconds",
            &[("operation", "snapshot"), ("phase", "total")],
            started.elapsed(),
        );
        let Err(e) = r else { return Ok(()) };
        // Nova's delete_image_on_error: the half-made image goes.
        if let Err(de) = self.images.glance().delete(Some(ctx), image_id).await {
            tracing::warn!(instance = %uuid, image = image_id, error = %de, "could not delete the failed snapshot image");
        }
        self.fail(ctx, &mut i, OnFailure::RevertTask, e).await
    }

    /// Commits the container and uploads it into Glance image `image_id`,
    /// moving the instance through `(pending, uploading)` task states
    /// (a snapshot's, or a shelve's) from `expected`.
    pub(crate) async fn snapshot_to_glance(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        image_id: &str,
        expected: TaskState,
        (pending, uploading): (TaskState, TaskState),
    ) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        self.begin_task(ctx, i, pending, Expected::task(expected)).await?;

        let t = Instant::now();
        let glance = self.images.glance();
        // The Glance record gets its formats while Docker commits: two
        // round trips off the snapshot's critical path.
        let formats = async {
            let current = glance.get(Some(ctx), image_id).await?;
            glance
                .update(
                    Some(ctx),
                    image_id,
                    &current,
                    &[("container_format", json!("docker")), ("disk_format", json!("raw"))],
                )
                .await
        };
        // Committed, then image_uploading saved (as Nova's driver does it,
        // before the upload's Glance calls), beside the formats.
        let commit_and_mark = async {
            let image = self.driver.commit(&uuid, self.settings.docker.snapshot_pause, Vec::new()).await?;
            metrics::global().observe(
                "nova_docker_operation_duration_seconds",
                &[("operation", "snapshot"), ("phase", "commit")],
                t.elapsed(),
            );
            let marked = self.begin_task(ctx, i, uploading, Expected::task(pending)).await;
            Ok::<_, OpError>((image, marked))
        };
        let (committed, formats) = tokio::join!(commit_and_mark, formats);
        let (docker_image, marked) = committed?;

        let result = async {
            marked?;
            formats.map_err(ImageError::from)?;
            let t = Instant::now();
            let limits = self.images.limits().clone();
            let summary =
                save_to_glance(self.driver.as_ref(), glance, Some(ctx), &docker_image, image_id, limits, None).await?;
            metrics::global().observe(
                "nova_docker_operation_duration_seconds",
                &[("operation", "snapshot"), ("phase", "upload")],
                t.elapsed(),
            );
            Ok::<_, OpError>(summary)
        }
        .await;
        // Kept only when Glance holds exactly this image: then it is what a
        // boot from the snapshot would load.
        let keep = match &result {
            Ok(summary) => self.settings.docker.keep_snapshot_images && summary.image_id == docker_image,
            Err(_) => false,
        };
        let kept = keep
            && self
                .driver
                .tag_image(&docker_image, &cache_repository(image_id), &cache_tag(&docker_image))
                .await
                .is_ok();
        if !kept && let Err(e) = self.driver.remove_image(&docker_image).await {
            tracing::warn!(instance = %uuid, image = %docker_image, error = %e, "could not remove the committed image");
        }
        result.map(|_| ())
    }

    /// Deletes the oldest backups of this instance and type beyond `keep`.
    async fn rotate_backups(&self, ctx: &RequestContext, uuid: &str, project: &str, rot: &Rotation) {
        let filters = [("image_type", "backup"), ("backup_type", rot.backup_type.as_str()), ("instance_uuid", uuid)];
        match self.images.glance().list(Some(ctx), &filters).await {
            Ok(images) => {
                // Review sketch: only the instance project's images count
                // (credentials that see every project list planted ones too).
                let own = images.iter().filter(|im| !project.is_empty() && im.owner.as_deref() == Some(project));
                for old in own.skip(rot.keep) {
                    tracing::info!(instance = uuid, image = %old.id, "rotating out an old backup");
                    if let Err(e) = self.images.glance().delete(Some(ctx), &old.id).await {
                        tracing::warn!(instance = uuid, image = %old.id, error = %e, "could not delete an old backup");
                    }
                }
            }
            Err(e) => tracing::warn!(instance = uuid, error = %e, "could not list backups to rotate"),
        }
    }
}
