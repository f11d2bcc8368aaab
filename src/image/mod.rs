//! Images: Glance `docker save` archives streamed into Docker (boot) and out
//! of it (snapshots, `image import`), with a local cache.
//!
//! A Glance image is found in Docker by the tag `glance/<image id>:latest`,
//! put on whatever a load produced; matching by Glance *id* (never by name)
//! keeps one tenant's image from shadowing another's. Bytes flow Glance ->
//! validator -> `docker load` with bounded memory and no temporary file.

pub mod archive;
pub mod cli;
pub mod glance;

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::rpc::RequestContext;
use crate::virt::{Driver, ImageRef, VirtError};
use archive::{ArchiveError, ArchiveLimits};
pub use glance::{Glance, GlanceImage};

/// Why an image could not be made available to Docker.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {id} has container_format {format:?}: nova-docker boots only container_format=docker images \
         (the output of `docker save`)"
    )]
    NotDocker { id: String, format: Option<String> },
    #[error("image {id} is {status}, not active")]
    NotActive { id: String, status: String },
    #[error("Glance: {0}")]
    Glance(#[from] glance::GlanceError),
    #[error("image {id} is not a valid docker-save archive: {source}")]
    Archive { id: String, source: ArchiveError },
    #[error("docker load of image {id} failed: {source}")]
    Load { id: String, source: VirtError },
    #[error("docker load of image {id} produced no image")]
    NothingLoaded { id: String },
    #[error("Docker: {0}")]
    Docker(#[from] VirtError),
}

/// The Docker reference under which a Glance image is cached.
pub fn cache_reference(glance_id: &str) -> String {
    format!("glance/{}:latest", glance_id.to_lowercase())
}

/// Makes Glance images available to Docker.
pub struct ImageService<D: Driver> {
    glance: Glance,
    driver: Arc<D>,
    limits: ArchiveLimits,
    /// One download per image at a time; others wait and reuse it.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl<D: Driver> ImageService<D> {
    /// A service over a Glance client and the driver.
    pub fn new(glance: Glance, driver: Arc<D>, limits: ArchiveLimits) -> Self {
        ImageService { glance, driver, limits, inflight: Mutex::new(HashMap::new()) }
    }

    /// The Glance client.
    pub fn glance(&self) -> &Glance {
        &self.glance
    }

    /// Checks the image can boot here.
    pub fn check_bootable(image: &GlanceImage) -> Result<(), ImageError> {
        if image.container_format.as_deref() != Some("docker") {
            return Err(ImageError::NotDocker { id: image.id.clone(), format: image.container_format.clone() });
        }
        if image.status != "active" {
            return Err(ImageError::NotActive { id: image.id.clone(), status: image.status.clone() });
        }
        Ok(())
    }

    /// Returns the Docker image of a Glance image, loading it first when this
    /// host does not have it. Returns whether it was downloaded.
    pub async fn ensure(
        &self,
        ctx: Option<&RequestContext>,
        image: &GlanceImage,
    ) -> Result<(ImageRef, bool), ImageError> {
        Self::check_bootable(image)?;
        let reference = cache_reference(&image.id);
        if let Some(found) = self.driver.find_image(&reference).await? {
            return Ok((found, false));
        }
        let gate = {
            let mut inflight = self.inflight.lock().await;
            inflight.entry(image.id.clone()).or_default().clone()
        };
        let _held = gate.lock().await;
        // Someone else may have loaded it while we waited.
        let result = match self.driver.find_image(&reference).await? {
            Some(found) => Ok((found, false)),
            None => self.load_from_glance(ctx, &image.id).await.map(|r| (r, true)),
        };
        self.inflight.lock().await.remove(&image.id);
        result
    }

    /// Streams Glance's data through the validator into `docker load`, then
    /// tags the result with the cache reference.
    pub async fn load_from_glance(&self, ctx: Option<&RequestContext>, id: &str) -> Result<ImageRef, ImageError> {
        let data = self.glance.download(ctx, id).await?;
        let (checked, summary) = archive::validate(data, self.limits.clone());
        // The validator's verdict reaches docker load as a stream error, so
        // Docker aborts the load; keep the first error to report it.
        let first_error: Arc<std::sync::Mutex<Option<ArchiveError>>> = Arc::default();
        let keep = first_error.clone();
        let body = checked
            .map_err(move |e| {
                let text = e.to_string();
                let mut slot = keep.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(e);
                }
                std::io::Error::other(text)
            })
            .boxed();
        let loaded = self.driver.load_image(body).await;
        if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(ImageError::Archive { id: id.to_string(), source: e });
        }
        let lines = loaded.map_err(|source| ImageError::Load { id: id.to_string(), source })?;
        let summary = summary.await.unwrap_or_default();
        // What was loaded: the config digest of the archive, else the engine's words.
        let mut candidates: Vec<String> = Vec::new();
        if let Some(d) = summary.config_digest {
            candidates.push(d);
        }
        for line in &lines {
            if let Some(r) = line.strip_prefix("Loaded image ID: ").or_else(|| line.strip_prefix("Loaded image: ")) {
                candidates.push(r.trim().to_string());
            }
        }
        candidates.extend(summary.repo_tags);
        for candidate in candidates {
            if let Some(found) = self.driver.find_image(&candidate).await? {
                let reference = cache_reference(id);
                let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference.as_str(), "latest"));
                self.driver.tag_image(&found.id, repo, tag).await?;
                tracing::info!(image = id, docker_image = %found.id, "image loaded from Glance");
                return Ok(found);
            }
        }
        Err(ImageError::NothingLoaded { id: id.to_string() })
    }
}
