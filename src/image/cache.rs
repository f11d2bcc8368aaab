//! The image cache manager (`[image_cache]`): the references this host
//! gave Docker images it loaded from Glance (`glance/<id>:v1-<hex>`, see
//! the module above) are removed once nothing has used their Glance image
//! for `remove_unused_original_minimum_age_seconds`, as Nova's image cache
//! manager removes unused base images. So are the filesystems committed
//! for a resize (`nova-docker-move/<migration>:v1-<hex>`) once no container
//! of the engine has used that Docker image for the same time.
//!
//! A Glance image is in use while a container of the engine was booted
//! from it (its `nova.image` label; stopped containers too), or while an
//! instance Nova has on this host boots from it (a build between the
//! image's load and its container's creation included). Its unused time
//! starts at the later of its reference's tagging (its load) and the first
//! pass of this process that found it unused: a restart starts the clock
//! again, so a reference is never removed early. References are removed
//! without force: the engine deletes an image with its last reference, and
//! refuses while a container still uses it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Why an image cache pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The engine failed to list or remove an image.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// Without the host's instances the cache cannot know what is in use,
    /// so it removes nothing.
    #[error("listing the instances of this host: {0}")]
    Conductor(#[from] crate::conductor::ConductorError),
}

/// One reference binding a Glance image to the Docker image loaded for it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedReference {
    /// `glance/<id>:v1-<hex>` or `nova-docker-move/<migration>:v1-<hex>`.
    pub reference: String,
    /// The Docker image it names.
    pub image: String,
    /// When the Docker image was last tagged (loaded), if the engine says.
    pub tagged_at: Option<SystemTime>,
}

impl CachedReference {
    /// The Glance image id the reference names.
    pub fn glance_id(&self) -> Option<&str> {
        self.reference.strip_prefix("glance/")?.split_once(':').map(|(id, _)| id)
    }

    /// What makes the reference in use: its Glance image (lower case), or
    /// for a moved filesystem its Docker image (used by a container); none
    /// for a reference that is not ours (never removed).
    pub fn in_use_key(&self) -> Option<String> {
        if self.reference.starts_with(crate::image::MOVE_REPOSITORY_PREFIX) {
            return Some(self.image.clone());
        }
        self.glance_id().map(str::to_string)
    }
}

/// The decision of one pass, apart from Docker: which references to remove
/// now, given the Glance ids (lower case) and Docker image ids in use. `unused_since` keeps,
/// across passes, when each unused reference was first seen unused;
/// references in use or gone leave it.
pub fn to_remove<'a>(
    references: &'a [CachedReference],
    in_use: &HashSet<String>,
    unused_since: &mut HashMap<String, SystemTime>,
    now: SystemTime,
    minimum_age: Duration,
) -> Vec<&'a CachedReference> {
    let unused: Vec<&CachedReference> =
        references.iter().filter(|r| r.in_use_key().is_some_and(|k| !in_use.contains(&k))).collect();
    let names: HashSet<&str> = unused.iter().map(|r| r.reference.as_str()).collect();
    unused_since.retain(|r, _| names.contains(r.as_str()));
    unused
        .into_iter()
        .filter(|r| {
            let first_seen = *unused_since.entry(r.reference.clone()).or_insert(now);
            let since = r.tagged_at.map_or(first_seen, |t| t.max(first_seen));
            now.duration_since(since).unwrap_or_default() >= minimum_age
        })
        .collect()
}

/// Removes the unused images of this host on every pass.
pub struct ImageCacheManager {
    docker: Docker,
    minimum_age: Duration,
    unused_since: Mutex<HashMap<String, SystemTime>>,
}

impl ImageCacheManager {
    /// A manager over the engine's API client.
    pub fn new(docker: Docker, minimum_age: Duration) -> Self {
        ImageCacheManager { docker, minimum_age, unused_since: Mutex::default() }
    }

    /// The references of the images loaded from Glance, with tag times.
    async fn cached_references(&self) -> Result<Vec<CachedReference>, bollard::errors::Error> {
        let patterns = vec!["glance/*".to_string(), format!("{}*", crate::image::MOVE_REPOSITORY_PREFIX)];
        let filters: HashMap<String, Vec<String>> = HashMap::from([("reference".into(), patterns)]);
        let list = self.docker.list_images(Some(ListImagesOptionsBuilder::default().filters(&filters).build())).await?;
        let mut references = Vec::new();
        for summary in list {
            let tagged_at = match self.docker.inspect_image(&summary.id).await {
                Ok(i) => i
                    .metadata
                    .and_then(|m| m.last_tag_time)
                    .and_then(|t| crate::objects::time::parse(&t))
                    .map(SystemTime::from),
                Err(_) => None,
            };
            references.extend(
                summary
                    .repo_tags
                    .into_iter()
                    .filter(|t| t.starts_with("glance/") || t.starts_with(crate::image::MOVE_REPOSITORY_PREFIX))
                    .map(|reference| CachedReference { reference, image: summary.id.clone(), tagged_at }),
            );
        }
        Ok(references)
    }

    /// The Glance images the engine's containers were booted from, and the
    /// Docker images they use.
    async fn container_images(&self) -> Result<HashSet<String>, bollard::errors::Error> {
        let list = self.docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).build())).await?;
        let mut used = HashSet::new();
        for c in list {
            used.extend(c.labels.and_then(|l| l.get("nova.image").map(|g| g.to_lowercase())));
            used.extend(c.image_id);
        }
        Ok(used)
    }

    /// One pass: removes every reference whose Glance image has been
    /// unused for at least the minimum age. `glance_ids` are the images of
    /// this host's instances. Returns the references removed.
    pub async fn pass(&self, mut glance_ids: HashSet<String>) -> Result<Vec<String>, CacheError> {
        let references = self.cached_references().await?;
        glance_ids.extend(self.container_images().await?);
        let remove: Vec<CachedReference> = {
            let mut since = self.unused_since.lock().await;
            to_remove(&references, &glance_ids, &mut since, SystemTime::now(), self.minimum_age)
                .into_iter()
                .cloned()
                .collect()
        };
        let mut removed = Vec::new();
        for r in remove {
            let opts = RemoveImageOptionsBuilder::default().noprune(false).build();
            match self.docker.remove_image(&r.reference, Some(opts), None).await {
                Ok(_) => {
                    tracing::info!(
                        reference = r.reference,
                        minimum_age_s = self.minimum_age.as_secs(),
                        "removed the image reference of a Glance image no instance used for the minimum age"
                    );
                    removed.push(r.reference);
                }
                // Its image is used by a container none of ours: kept.
                Err(e) => tracing::info!(reference = r.reference, error = %e, "unused image reference kept"),
            }
        }
        Ok(removed)
    }
}

/// Starts the periodic passes of `[image_cache]` when enabled
/// (`manager_interval` > 0 and `remove_unused_base_images`).
pub fn spawn(
    settings: &crate::config::Settings,
    docker: Docker,
    conductor: crate::conductor::Conductor,
    stop: CancellationToken,
) {
    let Some(every) = settings.image_cache_interval.filter(|_| settings.image_cache_remove_unused) else {
        return;
    };
    let manager = Arc::new(ImageCacheManager::new(docker, settings.image_cache_minimum_age));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            let ctx = crate::rpc::RequestContext::admin();
            let result = match conductor.instances_on_host(&ctx).await {
                Ok(instances) => {
                    let ids = instances.iter().filter_map(|i| i.image_ref()).map(str::to_lowercase).collect();
                    manager.pass(ids).await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "image cache pass failed; nothing removed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(glance: &str, tagged_s_ago: Option<u64>, now: SystemTime) -> CachedReference {
        CachedReference {
            reference: format!("glance/{glance}:v1-0123"),
            image: format!("sha256:{glance}"),
            tagged_at: tagged_s_ago.map(|s| now - Duration::from_secs(s)),
        }
    }

    fn names(v: Vec<&CachedReference>) -> Vec<String> {
        v.into_iter().map(|r| r.reference.clone()).collect()
    }

    #[test]
    fn only_references_unused_for_the_minimum_age_go() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let age = Duration::from_secs(100);
        let refs = vec![
            reference("ga", Some(1000), t0), // in use
            reference("gc", Some(1000), t0), // unused, loaded long ago
            reference("gd", Some(10), t0),   // unused, loaded 10 s ago
            reference("ge", None, t0),       // unused, no tag time
        ];
        let in_use = HashSet::from(["ga".to_string()]);
        let mut since = HashMap::new();
        // First pass: the clock starts now for every unused reference.
        assert!(to_remove(&refs, &in_use, &mut since, t0, age).is_empty());
        assert_eq!(since.len(), 3);
        // Not yet the minimum age.
        assert!(to_remove(&refs, &in_use, &mut since, t0 + Duration::from_secs(99), age).is_empty());
        // The minimum age after the first pass: the three unused go.
        let t1 = t0 + age;
        assert_eq!(
            names(to_remove(&refs, &in_use, &mut since, t1, age)),
            ["glance/gc:v1-0123", "glance/gd:v1-0123", "glance/ge:v1-0123"]
        );
        // Used again, a reference leaves the clock; unused again, it starts over.
        let gc = &refs[1..2];
        to_remove(gc, &HashSet::from(["gc".to_string()]), &mut since, t1, age);
        assert!(!since.contains_key("glance/gc:v1-0123"));
        assert!(to_remove(gc, &HashSet::new(), &mut since, t1 + age / 2, age).is_empty());
        assert_eq!(to_remove(gc, &HashSet::new(), &mut since, t1 + age + age / 2, age).len(), 1);
    }

    #[test]
    fn a_fresh_load_is_young_whatever_the_clock_says() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let age = Duration::from_secs(100);
        let r = reference("gf", Some(5), t0);
        // Seen unused long ago, then loaded again 5 s ago (tagged anew).
        let mut since = HashMap::from([(r.reference.clone(), t0 - Duration::from_secs(1000))]);
        let refs = vec![r];
        assert!(to_remove(&refs, &HashSet::new(), &mut since, t0, age).is_empty());
        // A minimum age of 0 removes whatever is unused at once.
        assert_eq!(to_remove(&refs, &HashSet::new(), &mut since, t0, Duration::ZERO).len(), 1);
    }

    #[test]
    fn the_glance_id_comes_from_the_reference() {
        let r = |s: &str| CachedReference { reference: s.into(), image: "sha256:1".into(), tagged_at: None };
        assert_eq!(r("glance/abc:v1-1").glance_id(), Some("abc"));
        assert_eq!(r("other/abc:v1-1").glance_id(), None);
        // Not a reference of ours: never removed.
        assert!(
            to_remove(&[r("other/abc:1")], &HashSet::new(), &mut HashMap::new(), SystemTime::now(), Duration::ZERO)
                .is_empty()
        );
    }

    #[test]
    fn a_moved_filesystem_is_in_use_while_a_container_uses_its_image() {
        let r =
            CachedReference { reference: "nova-docker-move/m1:v1-1".into(), image: "sha256:1".into(), tagged_at: None };
        assert_eq!(r.glance_id(), None, "never a Glance image's");
        let refs = [r];
        let now = SystemTime::now();
        let used = HashSet::from(["sha256:1".to_string()]);
        assert!(to_remove(&refs, &used, &mut HashMap::new(), now, Duration::ZERO).is_empty());
        assert_eq!(to_remove(&refs, &HashSet::new(), &mut HashMap::new(), now, Duration::ZERO).len(), 1);
    }
}
