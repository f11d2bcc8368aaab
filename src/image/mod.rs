//! Images: Glance `docker save` archives streamed into Docker (boot) and out
//! of it (snapshots, `image import`), with a local cache.
//!
//! A Glance image is bound to the Docker image the host loaded for it by
//! the reference `glance/<glance id>:v1-<hex of its image ID>`: the tag
//! names the content, so a reference that points elsewhere (moved by
//! anything on the host) is seen and never used. `v1` names the policy the
//! archive went through (`archive`): images loaded under another policy,
//! by an older host, are loaded again rather than trusted. Tags inside archives never reach
//! Docker (see [`archive`]); every boot creates its container from the image
//! ID itself. Bytes flow Glance -> hash check (on its own task, [`readahead`]) ->
//! canonicalizer -> `docker load` with bounded memory and no temporary file.

pub mod archive;
pub mod cache;
pub mod cli;
pub mod cli_auth;
pub mod glance;
pub mod integrity;
pub mod readahead;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::rpc::RequestContext;
use crate::virt::{Driver, ImageRef, VirtError};
use archive::{ArchiveError, ArchiveLimits, ArchiveSummary};
pub use glance::{Glance, GlanceImage};
pub use store::ImageStore;

/// Why an image could not be made available to Docker.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {id} has container_format {format:?}: nova-docker boots only container_format=docker images \
         (the output of `docker save`)"
    )]
    /// Only `docker save` archives can become containers; any other format
    /// is refused rather than guessed at.
    NotDocker {
        /// The Glance image id.
        id: String,
        /// Its `container_format`.
        format: Option<String>,
    },
    /// The image is not `active` in Glance (queued, killed, deleted...): it
    /// has no data to boot.
    #[error("image {id} is {status}, not active")]
    NotActive {
        /// The Glance image id.
        id: String,
        /// Its Glance status.
        status: String,
    },
    /// Glance refused or failed the download.
    #[error("Glance: {0}")]
    Glance(#[from] glance::GlanceError),
    /// The image has no hash this host can verify its data against.
    #[error(transparent)]
    NoHash(#[from] integrity::NoUsableHash),
    /// The image data is not an archive this host will hand to Docker.
    #[error("image {id} was refused: {source}")]
    Archive {
        /// The Glance image id.
        id: String,
        /// Why the archive was refused.
        source: ArchiveError,
    },
    /// Docker could not load the archive.
    #[error("docker load of image {id} failed: {source}")]
    Load {
        /// The Glance image id.
        id: String,
        /// The engine's error.
        source: VirtError,
    },
    /// Docker loaded something else than the image this host sent.
    #[error("docker load of image {id} did not load the image this host sent ({detail})")]
    Unexpected {
        /// The Glance image id.
        id: String,
        /// What Docker loaded instead.
        detail: String,
    },
    /// Another Docker call (inspect, tag, remove) failed.
    #[error("Docker: {0}")]
    Docker(#[from] VirtError),
}

/// The limits every archive gets on this host, from `[docker]`.
pub fn archive_limits(docker: &crate::config::DockerSettings) -> ArchiveLimits {
    ArchiveLimits {
        max_json_bytes: docker.max_image_manifest_bytes,
        max_held_json_bytes: docker.max_image_manifest_bytes.saturating_mul(4),
        max_unpacked_bytes: docker.max_image_unpacked_bytes,
        ..Default::default()
    }
}

/// The Docker repository of a Glance image's references.
pub fn cache_repository(glance_id: &str) -> String {
    format!("glance/{}", glance_id.to_lowercase())
}

/// How many downloaded chunks may wait for the canonicalizer: enough for
/// the download and its hash to run while Docker takes earlier bytes.
const READ_AHEAD_CHUNKS: usize = 8;

/// The repository prefix of the filesystems committed for a resize or
/// cold migration: apart from `glance/`, so that no Glance image (whose id
/// a user may choose) can ever be served one from the cache.
pub const MOVE_REPOSITORY_PREFIX: &str = "nova-docker-move/";

/// The Docker repository keeping the filesystem committed for a migration.
pub fn move_repository(migration_uuid: &str) -> String {
    format!("{MOVE_REPOSITORY_PREFIX}{}", migration_uuid.to_lowercase())
}

/// The version of the canonicalization policy, in every reference.
const POLICY: &str = "v1";

/// The tag binding a Glance image to the Docker image `image_id`.
pub fn cache_tag(image_id: &str) -> String {
    format!("{POLICY}-{}", image_id.trim_start_matches("sha256:"))
}

/// The reference binding a Glance image to the Docker image `image_id`.
pub fn cache_reference(glance_id: &str, image_id: &str) -> String {
    format!("{}:{}", cache_repository(glance_id), cache_tag(image_id))
}

/// Makes Glance images available to Docker.
pub struct ImageService<D: Driver> {
    glance: Arc<dyn ImageStore>,
    driver: Arc<D>,
    limits: ArchiveLimits,
    /// One download per image at a time; others wait and reuse it.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The Docker image ID last found bound to each Glance image: a hint
    /// that turns the lookup into one inspect of the exact reference
    /// (Docker's filtered image list costs several times more). Never
    /// trusted alone: the reference must still name that ID.
    bound: std::sync::Mutex<HashMap<String, String>>,
}

/// Hints kept at most; beyond it they are forgotten and relearned.
const MAX_BOUND_HINTS: usize = 4096;

impl<D: Driver> ImageService<D> {
    /// A service over a Glance client and the driver.
    pub fn new(glance: Glance, driver: Arc<D>, limits: ArchiveLimits) -> Self {
        Self::with_store(Arc::new(glance), driver, limits)
    }

    /// A service over any image store (an in-memory one in unit tests).
    pub fn with_store(glance: Arc<dyn ImageStore>, driver: Arc<D>, limits: ArchiveLimits) -> Self {
        ImageService { glance, driver, limits, inflight: Mutex::new(HashMap::new()), bound: Default::default() }
    }

    /// The Glance client.
    pub fn glance(&self) -> &dyn ImageStore {
        self.glance.as_ref()
    }

    /// The limits applied to every archive.
    pub fn limits(&self) -> &ArchiveLimits {
        &self.limits
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
        if let Some(found) = self.cached(&image.id).await? {
            return Ok((found, false));
        }
        let gate = {
            let mut inflight = self.inflight.lock().await;
            inflight.entry(image.id.clone()).or_default().clone()
        };
        let _held = gate.lock().await;
        // Someone else may have loaded it while we waited.
        let result = match self.cached(&image.id).await? {
            Some(found) => Ok((found, false)),
            None => self.load_from_glance(ctx, image).await.map(|r| (r, true)),
        };
        self.inflight.lock().await.remove(&image.id);
        result
    }

    /// The image this host loaded for a Glance image: the one whose ID its
    /// reference names. A reference naming an ID the image does not have
    /// was moved by someone else; it is ignored (and the image loaded anew).
    pub async fn cached(&self, glance_id: &str) -> Result<Option<ImageRef>, ImageError> {
        let hint = self.bound_hint(glance_id);
        if let Some(image_id) = hint {
            match self.driver.find_image(&cache_reference(glance_id, &image_id)).await? {
                Some(found) if found.id == image_id => return Ok(Some(found)),
                _ => self.forget_binding(glance_id),
            }
        }
        let repository = cache_repository(glance_id);
        for image in self.driver.images_in_repository(&repository).await? {
            let bound = image.tags.iter().any(|t| *t == cache_reference(glance_id, &image.id));
            let moved: Vec<&String> = image.tags.iter().filter(|t| t.starts_with(&format!("{repository}:"))).collect();
            if bound {
                self.remember_binding(glance_id, &image.id);
                return Ok(Some(ImageRef { id: image.id, volumes: image.volumes }));
            }
            if moved.iter().any(|t| t.rsplit_once(':').is_some_and(|(_, tag)| tag.starts_with(&format!("{POLICY}-")))) {
                tracing::warn!(image = glance_id, docker_image = %image.id, tags = ?moved,
                    "a reference of this Glance image names another image: ignored");
            }
        }
        Ok(None)
    }

    fn bound_hint(&self, glance_id: &str) -> Option<String> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).get(glance_id).cloned()
    }

    fn remember_binding(&self, glance_id: &str, image_id: &str) {
        let mut bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        if bound.len() >= MAX_BOUND_HINTS {
            bound.clear();
        }
        bound.insert(glance_id.to_string(), image_id.to_string());
    }

    fn forget_binding(&self, glance_id: &str) {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).remove(glance_id);
    }

    /// Streams Glance's data through its hash check and the canonicalizer
    /// into `docker load`, checks Docker loaded exactly what was sent, then
    /// binds it to the Glance image.
    pub async fn load_from_glance(
        &self,
        ctx: Option<&RequestContext>,
        image: &GlanceImage,
    ) -> Result<ImageRef, ImageError> {
        let id = image.id.as_str();
        let expected = integrity::expected(image)?;
        let data = self.glance.download(ctx, id).await?;
        let data = readahead::read_ahead(integrity::verified(data, expected), READ_AHEAD_CHUNKS);
        let (summary, lines, loaded) =
            load_canonical(self.driver.as_ref(), data, self.limits.clone()).await.map_err(|e| e.for_image(id))?;
        let image_id = summary.image_id.clone();
        self.driver.tag_image(&image_id, &cache_repository(id), &cache_tag(&image_id)).await?;
        self.remember_binding(id, &image_id);
        tracing::info!(image = id, docker_image = %image_id, bytes = summary.input_bytes,
            compression = summary.compression.map(|c| c.name()), dropped_tags = ?summary.dropped_tags,
            removed_volumes = ?summary.removed_volumes, engine = ?lines, "image loaded from Glance");
        Ok(loaded)
    }
}

/// Why [`load_canonical`] failed, before the image it was for is known.
#[derive(Debug)]
pub enum LoadError {
    /// The archive was refused.
    Archive(ArchiveError),
    /// Docker could not load it.
    Load(VirtError),
    /// Docker loaded something else than the image sent.
    Unexpected(String),
    /// Another Docker call failed.
    Docker(VirtError),
}

impl LoadError {
    /// The same failure, as the error of loading image `id`.
    pub fn for_image(self, id: &str) -> ImageError {
        let id = id.to_string();
        match self {
            LoadError::Archive(source) => ImageError::Archive { id, source },
            LoadError::Load(source) => ImageError::Load { id, source },
            LoadError::Unexpected(detail) => ImageError::Unexpected { id, detail },
            LoadError::Docker(e) => ImageError::Docker(e),
        }
    }
}

/// Canonicalizes a tenant's archive into `docker load` and checks what
/// Docker reports: the image ID the host computed, and no tag. Returns the
/// summary, the engine's lines and the loaded image.
pub async fn load_canonical<D, S>(
    driver: &D,
    data: S,
    limits: ArchiveLimits,
) -> Result<(ArchiveSummary, Vec<String>, ImageRef), LoadError>
where
    D: Driver,
    S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
{
    let (canonical, summary) = archive::canonicalize(data, limits);
    // The canonicalizer's verdict reaches docker load as a stream error, so
    // Docker aborts the load; keep the first error to report it.
    let first_error: Arc<std::sync::Mutex<Option<ArchiveError>>> = Arc::default();
    let keep = first_error.clone();
    let body = canonical
        .map_err(move |e| {
            let text = e.to_string();
            let mut slot = keep.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
            std::io::Error::other(text)
        })
        .boxed();
    let loaded = driver.load_image(body).await;
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(LoadError::Archive(e));
    }
    let lines = loaded.map_err(LoadError::Load)?;
    let summary = summary.await.map_err(|_| LoadError::Unexpected("the archive was not read to its end".into()))?;
    let expected = format!("Loaded image ID: {}", summary.image_id);
    if lines.iter().any(|l| l.starts_with("Loaded image: ")) || !lines.contains(&expected) {
        return Err(LoadError::Unexpected(format!("sent {}, Docker said {lines:?}", summary.image_id)));
    }
    match driver.find_image(&summary.image_id).await.map_err(LoadError::Docker)? {
        Some(found) if found.id == summary.image_id => Ok((summary, lines, found)),
        other => Err(LoadError::Unexpected(format!("sent {}, Docker has {other:?}", summary.image_id))),
    }
}

/// Streams `docker save` of a local image into an existing Glance image,
/// through the canonicalizer, so Glance gets exactly what a host would
/// load (snapshots and `image import` alike). `sent` counts bytes out.
pub async fn save_to_glance<D: Driver>(
    driver: &D,
    glance: &dyn ImageStore,
    ctx: Option<&RequestContext>,
    docker_image: &str,
    glance_id: &str,
    limits: ArchiveLimits,
    sent: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<ArchiveSummary, ImageError> {
    let data = driver.save_image(docker_image).map_err(|e| std::io::Error::other(e.to_string()));
    let (canonical, summary) = archive::canonicalize(data, limits);
    let first_error: Arc<std::sync::Mutex<Option<ArchiveError>>> = Arc::default();
    let keep = first_error.clone();
    let body = canonical
        .map_ok(move |chunk| {
            if let Some(s) = &sent {
                s.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            chunk
        })
        .map_err(move |e| {
            let text = e.to_string();
            let mut slot = keep.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e);
            }
            std::io::Error::other(text)
        });
    let uploaded = glance.upload(ctx, glance_id, body.boxed()).await;
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(ImageError::Archive { id: docker_image.to_string(), source: e });
    }
    uploaded?;
    summary.await.map_err(|_| ImageError::Unexpected {
        id: docker_image.to_string(),
        detail: "the archive was not read to its end".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_driver::FakeDriver;
    use crate::testing::fake_glance::FakeGlance;

    fn service(driver: Arc<FakeDriver>) -> ImageService<FakeDriver> {
        ImageService::with_store(Arc::new(FakeGlance::default()), driver, ArchiveLimits::default())
    }

    fn lookups(driver: &FakeDriver) -> (usize, usize) {
        let calls = driver.calls();
        let count = |op: &str| calls.iter().filter(|c| c.starts_with(&format!("{op} "))).count();
        (count("find_image"), count("images_in_repository"))
    }

    #[tokio::test]
    async fn a_known_binding_is_one_inspect_of_its_reference() {
        let driver = Arc::new(FakeDriver::default());
        driver.add_cached_image("g1");
        let images = service(driver.clone());
        let first = images.cached("g1").await.unwrap().unwrap();
        assert_eq!(lookups(&driver), (0, 1));
        let again = images.cached("g1").await.unwrap().unwrap();
        assert_eq!(again.id, first.id);
        assert_eq!(lookups(&driver), (1, 1), "the second lookup inspects the reference only");
    }

    #[tokio::test]
    async fn a_moved_reference_is_not_trusted_through_the_hint() {
        let driver = Arc::new(FakeDriver::default());
        driver.add_cached_image("g1");
        let images = service(driver.clone());
        let bound = images.cached("g1").await.unwrap().unwrap();
        // Someone on the host points the reference at another image.
        let other = format!("sha256:{}", "b".repeat(64));
        driver.move_reference(&cache_reference("g1", &bound.id), &other);
        assert!(images.cached("g1").await.unwrap().is_none(), "the moved reference is ignored");
        // And the hint is gone: the next lookup lists the repository again.
        assert!(images.cached("g1").await.unwrap().is_none());
        assert_eq!(lookups(&driver), (1, 3));
    }

    #[tokio::test]
    async fn a_removed_reference_is_looked_up_anew() {
        let driver = Arc::new(FakeDriver::default());
        driver.add_cached_image("g1");
        let images = service(driver.clone());
        let bound = images.cached("g1").await.unwrap().unwrap();
        driver.remove_image(&bound.id).await.unwrap();
        assert!(images.cached("g1").await.unwrap().is_none());
    }
}
