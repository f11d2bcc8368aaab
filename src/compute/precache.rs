//! `cache_images`: the aggregate image-cache API (microversion 2.81) asks
//! the hosts of an aggregate to load images ahead of the boots that will
//! need them, as Nova's `ComputeManager.cache_images` asks its driver. Each
//! image goes through the same path as a build's (Glance's record checked,
//! the archive canonicalised, the load bound to its Glance id), so a later
//! build finds it cached.

use serde_json::{Map, Value};

use super::manager::ComputeManager;
use crate::rpc::RequestContext;
use crate::virt::Driver;

impl<D: Driver> ComputeManager<D> {
    /// Loads each image unless the host has it; Nova's answer: by image id,
    /// `cached` (loaded now), `existing` (already here) or `error`.
    pub async fn cache_images(&self, ctx: &RequestContext, image_ids: &[String]) -> Map<String, Value> {
        let mut results = Map::new();
        for id in image_ids {
            let outcome = async {
                let meta = self.images.glance().get(Some(ctx), id).await.map_err(crate::image::ImageError::from)?;
                self.images.ensure(Some(ctx), &meta).await.map(|(_, downloaded)| downloaded)
            };
            let status = match outcome.await {
                Ok(true) => "cached",
                Ok(false) => "existing",
                Err(e) => {
                    tracing::warn!(image = %id, error = %e, "could not pre-cache the image");
                    "error"
                }
            };
            tracing::info!(image = %id, status, "image pre-cache");
            results.insert(id.clone(), Value::from(status));
        }
        results
    }
}
