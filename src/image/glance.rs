//! Glance v2: image metadata, and image data streamed in both directions.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::auth::{HttpError, ServiceClient, url_part};
use crate::metrics;
use crate::rpc::RequestContext;

/// Keys of a Glance v2 image that are not image properties.
const CORE_KEYS: &[&str] = &[
    "id",
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "min_ram",
    "min_disk",
    "owner",
    "visibility",
    "protected",
    "os_hidden",
    "created_at",
    "updated_at",
    "tags",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "stores",
];

/// An image record.
#[derive(Debug, Clone, PartialEq)]
pub struct GlanceImage {
    /// The image's UUID, which Nova passes as `image_ref`.
    pub id: String,
    /// The name users gave it; not unique, for messages only.
    pub name: Option<String>,
    /// Glance's lifecycle state (`queued`, `active`, ...); empty when the
    /// document has none. Only an `active` image's data can be read.
    pub status: String,
    /// What the data is packaged as; this host boots only `docker` images
    /// (a `docker save` archive).
    pub container_format: Option<String>,
    /// What the data's disk is (`raw` for the images this host makes).
    pub disk_format: Option<String>,
    /// The data's size in bytes, once uploaded.
    pub size: Option<u64>,
    /// Glance's MD5 of the data (legacy `checksum`).
    pub checksum: Option<String>,
    /// The algorithm of `os_hash_value` (sha512 unless Glance is configured otherwise).
    pub os_hash_algo: Option<String>,
    /// Glance's hash of the data, computed when it was uploaded.
    pub os_hash_value: Option<String>,
    /// The project owning the image (a migration's image must be the
    /// instance's project's before a host loads or deletes it).
    pub owner: Option<String>,
    /// Every non-core key (Glance v2 puts properties at the top level).
    pub properties: Map<String, Value>,
}

impl GlanceImage {
    /// Reads a Glance v2 image document (or Nova's translated image dict,
    /// whose properties sit under `properties`).
    pub fn from_json(v: &Value) -> Option<Self> {
        let m = v.as_object()?;
        let mut properties: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| !CORE_KEYS.contains(&k.as_str()) && *k != "properties")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(Value::Object(p)) = m.get("properties") {
            properties.extend(p.clone());
        }
        let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        Some(GlanceImage {
            id: m.get("id")?.as_str()?.to_string(),
            name: m.get("name").and_then(Value::as_str).map(str::to_string),
            status: m.get("status").and_then(Value::as_str).unwrap_or("").to_string(),
            container_format: m.get("container_format").and_then(Value::as_str).map(str::to_string),
            disk_format: m.get("disk_format").and_then(Value::as_str).map(str::to_string),
            size: m.get("size").and_then(Value::as_u64),
            checksum: text("checksum"),
            os_hash_algo: text("os_hash_algo"),
            os_hash_value: text("os_hash_value"),
            owner: text("owner"),
            properties,
        })
    }
}

/// The Glance client.
#[derive(Clone)]
pub struct Glance {
    client: ServiceClient,
}

/// Glance failures.
pub type GlanceError = HttpError;

impl Glance {
    /// A client over an authenticated service client.
    pub fn new(client: ServiceClient) -> Self {
        Glance { client }
    }

    /// The configured per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.client.timeout()
    }

    /// `GET /v2/images/<id>`.
    pub async fn get(&self, ctx: Option<&RequestContext>, id: &str) -> Result<GlanceImage, GlanceError> {
        let path = format!("/v2/images/{}", url_part(id));
        let v = self.client.json(ctx, Method::GET, &path, |r| r).await?;
        GlanceImage::from_json(&v).ok_or_else(|| HttpError::Decode {
            service: "glance",
            method: "GET".into(),
            url: path,
            detail: "not an image document".into(),
        })
    }

    /// `GET /v2/images?<filters>` (newest first).
    pub async fn list(
        &self,
        ctx: Option<&RequestContext>,
        filters: &[(&str, &str)],
    ) -> Result<Vec<GlanceImage>, GlanceError> {
        let mut query: Vec<(String, String)> = filters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        query.push(("sort_key".into(), "created_at".into()));
        query.push(("sort_dir".into(), "desc".into()));
        let v = self.client.json(ctx, Method::GET, "/v2/images", move |r| r.query(&query)).await?;
        Ok(v["images"].as_array().map(|a| a.iter().filter_map(GlanceImage::from_json).collect()).unwrap_or_default())
    }

    /// `GET /v2/images/<id>/file` as a stream of chunks. The timeout applies
    /// to the response headers and to every gap between chunks.
    pub async fn download(
        &self,
        ctx: Option<&RequestContext>,
        id: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, GlanceError> {
        let path = format!("/v2/images/{}/file", url_part(id));
        tracing::info!(image = id, "downloading the image from Glance");
        let resp = self.client.send(ctx, Method::GET, &path, |r| r).await?;
        if resp.status().as_u16() == 204 {
            return Err(HttpError::Status {
                service: "glance",
                method: "GET".into(),
                url: path,
                status: 204,
                body: "the image has no data".into(),
            });
        }
        let stream = resp
            .bytes_stream()
            .map_ok(|chunk| {
                metrics::global().add(
                    "nova_docker_glance_bytes_total",
                    &[("direction", "download")],
                    chunk.len() as f64,
                );
                chunk
            })
            .map_err(|e| std::io::Error::other(format!("Glance download interrupted: {e}")));
        Ok(stream.boxed())
    }

    /// `POST /v2/images`; returns the new image.
    pub async fn create(&self, ctx: Option<&RequestContext>, body: Value) -> Result<GlanceImage, GlanceError> {
        let v = self.client.json(ctx, Method::POST, "/v2/images", move |r| r.json(&body)).await?;
        GlanceImage::from_json(&v).ok_or_else(|| HttpError::Decode {
            service: "glance",
            method: "POST".into(),
            url: "/v2/images".into(),
            detail: "not an image document".into(),
        })
    }

    /// `PATCH /v2/images/<id>` with JSON-patch `add`/`replace` operations.
    pub async fn update(
        &self,
        ctx: Option<&RequestContext>,
        id: &str,
        current: &GlanceImage,
        values: &[(&str, Value)],
    ) -> Result<GlanceImage, GlanceError> {
        let ops: Vec<Value> = values
            .iter()
            .map(|(k, v)| {
                let exists = match *k {
                    "container_format" => current.container_format.is_some(),
                    "disk_format" => current.disk_format.is_some(),
                    "name" => current.name.is_some(),
                    other => current.properties.contains_key(other),
                };
                json!({"op": if exists { "replace" } else { "add" }, "path": format!("/{k}"), "value": v})
            })
            .collect();
        let path = format!("/v2/images/{}", url_part(id));
        let v = self
            .client
            .json(ctx, Method::PATCH, &path, move |r| {
                r.header("Content-Type", "application/openstack-images-v2.1-json-patch")
                    .body(Value::Array(ops.clone()).to_string())
            })
            .await?;
        GlanceImage::from_json(&v).ok_or_else(|| HttpError::Decode {
            service: "glance",
            method: "PATCH".into(),
            url: path,
            detail: "not an image document".into(),
        })
    }

    /// `PUT /v2/images/<id>/file` from a stream (chunked transfer).
    pub async fn upload<S>(&self, ctx: Option<&RequestContext>, id: &str, data: S) -> Result<(), GlanceError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let path = format!("/v2/images/{}/file", url_part(id));
        let counted = data.map_ok(|chunk| {
            metrics::global().add("nova_docker_glance_bytes_total", &[("direction", "upload")], chunk.len() as f64);
            chunk
        });
        let body = reqwest::Body::wrap_stream(counted);
        self.client
            .send_once(ctx, Method::PUT, &path, move |r| {
                r.header("Content-Type", "application/octet-stream").body(body)
            })
            .await?;
        Ok(())
    }

    /// `DELETE /v2/images/<id>`; a missing image is fine.
    pub async fn delete(&self, ctx: Option<&RequestContext>, id: &str) -> Result<(), GlanceError> {
        match self.client.send(ctx, Method::DELETE, &format!("/v2/images/{}", url_part(id)), |r| r).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether Glance answers (for `check`).
    pub async fn ping(&self, ctx: Option<&RequestContext>) -> Result<(), GlanceError> {
        self.client.json(ctx, Method::GET, "/v2/images?limit=1", |r| r).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_come_from_top_level_and_nova_dicts() {
        let g = GlanceImage::from_json(&json!({"id": "i", "status": "active", "container_format": "docker",
            "os_command_line": "sleep 1", "size": 10}))
        .unwrap();
        assert_eq!(g.properties["os_command_line"], "sleep 1");
        assert!(!g.properties.contains_key("size"));
        let n = GlanceImage::from_json(&json!({"id": "i", "status": "active", "properties": {"os_command_line": "x"}}))
            .unwrap();
        assert_eq!(n.properties["os_command_line"], "x");
    }
}
