//! `nova-docker image import` and `image fetch`: the operator's way to seed
//! Glance from a local Docker image, and a host from Glance.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use super::{Glance, ImageService, archive_limits, cli_auth, save_to_glance};
use crate::auth::ServiceClient;
use crate::config::keystone::TlsSettings;
use crate::config::{AuthSettings, Settings};
use crate::rpc::RequestContext;
use crate::virt::Driver;
use crate::virt::docker::DockerDriver;

/// The Glance client and the request context of the operator's command.
///
/// When `[glance]` uses the caller's token (auth_type unset or `user`,
/// Nova's default), the caller authenticates like every OpenStack CLI
/// ([`cli_auth`]): the context carries the token and the catalog, where
/// Glance is found unless nova.conf names it; `OS_REGION_NAME`,
/// `OS_INTERFACE` and the CLI's TLS settings apply to Glance too. Otherwise
/// nova.conf's own credentials are used and there is no caller context.
async fn cli_glance(settings: &Settings) -> anyhow::Result<(Glance, Option<RequestContext>)> {
    let mut glance = settings.glance.clone();
    if glance.auth != AuthSettings::User {
        return Ok((Glance::new(ServiceClient::new(glance, "glance", "glance")), None));
    }
    let (auth, cloud) = cli_auth::from_env(|k| std::env::var(k).ok())?;
    if let Some(region) = &cloud.region_name {
        glance.region_name = Some(region.clone());
    }
    if let Some(interface) = &cloud.interface {
        glance.valid_interfaces = vec![interface.trim_end_matches("URL").to_string()];
    }
    if cloud.tls != TlsSettings::default() {
        glance.tls = cloud.tls.clone();
    }
    let session = auth.session(&cloud, glance.timeout).await?;
    let mut m = Map::new();
    m.insert("auth_token".into(), json!(session.token));
    m.insert("service_catalog".into(), Value::Array(session.catalog));
    m.insert("is_admin".into(), json!(true));
    m.insert("request_id".into(), json!(format!("req-{}", uuid::Uuid::new_v4())));
    let ctx = RequestContext::from_map(m)?;
    Ok((Glance::new(ServiceClient::new(glance, "glance", "glance")), Some(ctx)))
}

/// Streams `docker save IMAGE` into a new Glance image; returns its id.
pub async fn import(
    settings: &Settings,
    image: &str,
    name: Option<String>,
    visibility: Option<String>,
    properties: &[String],
    hypervisor_type: bool,
) -> anyhow::Result<String> {
    let body = image_body(image, name, visibility, properties, hypervisor_type)?;
    let (glance, ctx) = cli_glance(settings).await?;
    let driver = DockerDriver::connect(&settings.docker, &settings.host).await?;
    if driver.find_image(image).await?.is_none() {
        bail!("Docker has no image {image:?} on this host");
    }
    let created = glance.create(ctx.as_ref(), Value::Object(body)).await?;
    let limits = archive_limits(&settings.docker);
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(sent.clone());
    let uploaded = save_to_glance(&driver, &glance, ctx.as_ref(), image, &created.id, limits, Some(sent)).await;
    progress.finish();
    if let Err(e) = uploaded {
        let _ = glance.delete(ctx.as_ref(), &created.id).await;
        return Err(e).context(format!("upload of {image} to Glance failed; the partial image was deleted"));
    }
    Ok(created.id)
}

/// The Glance image-create body of `image import`. With `hypervisor_type`
/// (the default), the image gets `hypervisor_type=docker` unless a
/// `--property` sets it: Nova's `ImagePropertiesFilter` then schedules it
/// only to hosts reporting the docker hypervisor type (this host does), and
/// never to the libvirt hosts of a mixed cloud.
pub fn image_body(
    image: &str,
    name: Option<String>,
    visibility: Option<String>,
    properties: &[String],
    hypervisor_type: bool,
) -> anyhow::Result<Map<String, Value>> {
    let mut body = Map::new();
    body.insert("name".into(), json!(name.unwrap_or_else(|| image.to_string())));
    body.insert("container_format".into(), json!("docker"));
    body.insert("disk_format".into(), json!("raw"));
    if let Some(v) = visibility {
        body.insert("visibility".into(), json!(v));
    }
    if hypervisor_type {
        body.insert("hypervisor_type".into(), json!("docker"));
    }
    for p in properties {
        let (k, v) = p.split_once('=').with_context(|| format!("--property {p:?} is not key=value"))?;
        body.insert(k.trim().to_string(), json!(v));
    }
    Ok(body)
}

/// Loads a Glance image into Docker; returns the Docker image id.
pub async fn fetch(settings: &Settings, glance_id: &str) -> anyhow::Result<String> {
    let (glance, ctx) = cli_glance(settings).await?;
    let driver = Arc::new(DockerDriver::connect(&settings.docker, &settings.host).await?);
    let service = ImageService::new(glance, driver, archive_limits(&settings.docker));
    let image = service.glance().get(ctx.as_ref(), glance_id).await?;
    let (found, _) = service.ensure(ctx.as_ref(), &image).await?;
    Ok(found.id)
}

/// Bytes and rate on a terminal (stderr), nothing otherwise.
struct Progress {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Progress {
    fn start(sent: Arc<AtomicU64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut rx => break,
                }
                let bytes = sent.load(Ordering::Relaxed) as f64;
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprint!("\r{:>10.1} MB sent, {:>7.1} MB/s ", bytes / 1e6, bytes / 1e6 / secs);
            }
            eprintln!();
        });
        Progress { stop: Some(tx) }
    }

    fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_images_are_docker_hypervisor_images_unless_told_otherwise() {
        let props = ["os_distro=busybox".to_string()];
        let body = image_body("busybox:1", None, None, &props, true).unwrap();
        assert_eq!(body["hypervisor_type"], "docker");
        assert_eq!(body["container_format"], "docker");
        assert_eq!(body["name"], "busybox:1");
        assert_eq!(body["os_distro"], "busybox");
        let body = image_body("busybox:1", None, None, &props, false).unwrap();
        assert!(!body.contains_key("hypervisor_type"), "{body:?}");
        // An explicit --property wins.
        let body = image_body("b", None, None, &["hypervisor_type=lxc".to_string()], true).unwrap();
        assert_eq!(body["hypervisor_type"], "lxc");
        assert!(image_body("b", None, None, &["novalue".to_string()], true).is_err());
    }
}
