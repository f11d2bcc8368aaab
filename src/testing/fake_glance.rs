//! An in-memory Glance ([`ImageStore`]): image records and their data, with
//! any call made to fail on request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use futures::TryStreamExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::auth::HttpError;
use crate::image::GlanceImage;
use crate::image::glance::GlanceError;
use crate::image::store::{ImageData, ImageStore};
use crate::rpc::RequestContext;

#[derive(Default)]
struct State {
    images: BTreeMap<String, (GlanceImage, Option<Vec<u8>>)>,
    failing: HashSet<&'static str>,
    cut_after: Option<usize>,
    created: Vec<Value>,
    hidden: HashSet<String>,
}

/// The in-memory Glance.
#[derive(Default)]
pub struct FakeGlance {
    state: Mutex<State>,
}

fn status(method: &str, id: &str, status: u16, body: &str) -> GlanceError {
    HttpError::Status {
        service: "glance",
        method: method.into(),
        url: format!("/v2/images/{id}"),
        status,
        body: body.into(),
    }
}

impl FakeGlance {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A new image record without data (what Nova's API creates before a
    /// snapshot), with `properties`.
    pub fn add_queued(&self, id: &str, properties: Value) {
        let mut doc = json!({"id": id, "status": "queued"});
        if let (Some(d), Some(p)) = (doc.as_object_mut(), properties.as_object()) {
            d.extend(p.clone());
        }
        let image = GlanceImage::from_json(&doc).expect("an image document");
        let hidden = doc["os_hidden"] == json!(true);
        self.with(|s| {
            if hidden {
                s.hidden.insert(id.to_string());
            }
            s.images.insert(id.to_string(), (image, None))
        });
    }

    /// An active image of `container_format` with `data`.
    pub fn add_active(&self, id: &str, container_format: &str, data: Vec<u8>) {
        use sha2::Digest;
        let hash = format!("{:x}", sha2::Sha512::digest(&data));
        let doc = json!({"id": id, "status": "active", "container_format": container_format, "disk_format": "raw",
            "size": data.len(), "os_hash_algo": "sha512", "os_hash_value": hash});
        let image = GlanceImage::from_json(&doc).expect("an image document");
        self.with(|s| s.images.insert(id.to_string(), (image, Some(data))));
    }

    /// Its downloads deliver the first `n` bytes, then break off.
    pub fn cut_downloads_after(&self, n: usize) {
        self.with(|s| s.cut_after = Some(n));
    }

    /// The record and data of an image, if it exists.
    pub fn image(&self, id: &str) -> Option<(GlanceImage, Option<Vec<u8>>)> {
        self.with(|s| s.images.get(id).cloned())
    }

    /// The ids of the images Glance has.
    pub fn images(&self) -> Vec<String> {
        self.with(|s| s.images.keys().cloned().collect())
    }

    /// The bodies of the images created through the API, in order.
    pub fn created(&self) -> Vec<Value> {
        self.with(|s| s.created.clone())
    }

    /// Makes every later `what` (an [`ImageStore`] method) fail with a 503.
    pub fn fail(&self, what: &'static str) {
        self.with(|s| s.failing.insert(what));
    }

    fn check(&self, what: &'static str, id: &str) -> Result<(), GlanceError> {
        if self.with(|s| s.failing.contains(what)) { Err(status(what, id, 503, "injected failure")) } else { Ok(()) }
    }

    fn found(&self, id: &str, method: &str) -> Result<GlanceImage, GlanceError> {
        self.with(|s| s.images.get(id).map(|(i, _)| i.clone())).ok_or_else(|| status(method, id, 404, "not found"))
    }
}

impl ImageStore for FakeGlance {
    fn get<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(async move {
            self.check("get", id)?;
            self.found(id, "GET")
        })
    }

    fn list<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        filters: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<GlanceImage>, GlanceError>> {
        Box::pin(async move {
            self.check("list", "")?;
            // Newest first: the last created is the last in id order here.
            // As Glance: hidden images (os_hidden) only when asked for, and
            // then only they.
            let want_hidden = filters.contains(&("os_hidden", "true"));
            Ok(self.with(|s| {
                s.images
                    .values()
                    .rev()
                    .filter(|(i, _)| s.hidden.contains(&i.id) == want_hidden)
                    .filter(|(i, _)| {
                        filters
                            .iter()
                            .filter(|(k, _)| *k != "os_hidden")
                            .all(|(k, v)| i.properties.get(*k).and_then(Value::as_str) == Some(*v))
                    })
                    .map(|(i, _)| i.clone())
                    .collect()
            }))
        })
    }

    fn download<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ImageData, GlanceError>> {
        Box::pin(async move {
            self.check("download", id)?;
            let (data, cut) = self.with(|s| (s.images.get(id).and_then(|(_, d)| d.clone()), s.cut_after));
            let data = data.ok_or_else(|| status("GET", id, 204, "the image has no data"))?;
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = match cut {
                Some(n) => vec![
                    Ok(bytes::Bytes::from(data[..n.min(data.len())].to_vec())),
                    Err(std::io::Error::other("Glance download interrupted: connection reset")),
                ],
                None => vec![Ok(bytes::Bytes::from(data))],
            };
            let stream: ImageData = Box::pin(futures::stream::iter(chunks));
            Ok(stream)
        })
    }

    fn update<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        id: &'a str,
        _current: &'a GlanceImage,
        values: &'a [(&'a str, Value)],
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(async move {
            self.check("update", id)?;
            let mut image = self.found(id, "PATCH")?;
            for (k, v) in values {
                match *k {
                    "container_format" => image.container_format = v.as_str().map(str::to_string),
                    "disk_format" => image.disk_format = v.as_str().map(str::to_string),
                    "name" => image.name = v.as_str().map(str::to_string),
                    other => {
                        image.properties.insert(other.to_string(), v.clone());
                    }
                }
            }
            self.with(|s| s.images.get_mut(id).map(|e| e.0 = image.clone()));
            Ok(image)
        })
    }

    fn upload<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        id: &'a str,
        data: ImageData,
    ) -> BoxFuture<'a, Result<(), GlanceError>> {
        Box::pin(async move {
            self.check("upload", id)?;
            self.found(id, "PUT")?;
            let chunks: Vec<bytes::Bytes> =
                data.try_collect().await.map_err(|e| status("PUT", id, 400, &format!("upload interrupted: {e}")))?;
            let body: Vec<u8> = chunks.concat();
            self.with(|s| {
                if let Some((image, d)) = s.images.get_mut(id) {
                    image.status = "active".into();
                    image.size = Some(body.len() as u64);
                    *d = Some(body);
                }
            });
            Ok(())
        })
    }

    fn delete<'a>(&'a self, _ctx: Option<&'a RequestContext>, id: &'a str) -> BoxFuture<'a, Result<(), GlanceError>> {
        Box::pin(async move {
            self.check("delete", id)?;
            self.with(|s| s.images.remove(id));
            Ok(())
        })
    }

    fn create<'a>(
        &'a self,
        _ctx: Option<&'a RequestContext>,
        body: Value,
    ) -> BoxFuture<'a, Result<GlanceImage, GlanceError>> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            self.check("create", &id)?;
            self.with(|s| s.created.push(body.clone()));
            self.add_queued(&id, body);
            self.found(&id, "POST")
        })
    }
}
