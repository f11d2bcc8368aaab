//! What a move costs an instance that wrote data (issue 20's proof):
//! rebuild, shelve, unshelve, same-host resize and cold migration of an
//! instance with N MB written to its root disk (500 by default,
//! `ND_MOVES_MB`), through the Nova API as a user runs them, each beside
//! the plain Docker commands that make the same move by hand. Ignored: a
//! benchmark, run by `tests/bench/run --moves`, which writes BENCHMARKS.md's
//! block from the one line it prints (`MOVES_BENCH {json}`); by hand:
//!
//! `cargo test --release --test integration moves_bench::bench -- --ignored --exact --nocapture`
//!
//! Against the "newest" control plane, with two hosts of its own (B on a
//! private dockerd, as the moves tests run it). Each move starts from a
//! fresh instance (and a fresh plain container) with the data in its
//! writable layer, and is checked where Nova says what becomes of the data
//! (gone after a rebuild, the same SHA-256 after every other move), so no
//! figure comes from a broken move. Everything made is removed, also when
//! a step fails.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use nova_docker::image::{cache_repository, move_repository};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, host_name};
use crate::common::{self, Release};
use crate::faults::PrivateDocker;

/// Every wait of one move or one command (a vfs engine loads slowly).
const T: Duration = Duration::from_secs(900);
/// m1.nano's memory (the flavor servers boot with), and the resize's.
const NANO_MB: i64 = 128;
const BIG_MB: i64 = 256;
/// The GETs while waiting for a state, as the rest of the bench polls.
const POLL: Duration = Duration::from_millis(50);

#[tokio::test]
#[ignore = "a benchmark (minutes, GBs of disk): tests/bench/run --moves"]
async fn bench() {
    let mb: u64 = std::env::var("ND_MOVES_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let cloud = Cloud::get(Release::Newest);
    let engine = PrivateDocker::start(&std::env::temp_dir().join(common::unique("nd-dockerd-mbench"))).await;
    let (port_a, port_b) = (free_port(), free_port());
    let a_extra = format!("[docker]\nmetrics_listen = 127.0.0.1:{port_a}\n");
    let mut a = ComputeHost::start(&cloud, &host_name("mbench-a"), &a_extra).await;
    let b_extra =
        format!("[docker]\nmetrics_listen = 127.0.0.1:{port_b}\nhost_url = unix://{}\n", engine.socket().display());
    let mut b = ComputeHost::start(&cloud, &host_name("mbench-b"), &b_extra).await;
    let mut run = Run {
        cloud: &cloud,
        a: a.name.clone(),
        b: b.name.clone(),
        metrics: [format!("http://127.0.0.1:{port_a}/metrics"), format!("http://127.0.0.1:{port_b}/metrics")],
        b_socket: format!("unix://{}", engine.socket().display()),
        mb,
        tag: common::unique("nd-mbench"),
        image: String::new(),
        left: Leftovers::default(),
    };
    let result = AssertUnwindSafe(run.all(&a.conf)).catch_unwind().await;
    run.clean().await;
    for host in [&mut a, &mut b] {
        host.stop().await;
        quietly(forget_service(&cloud, &host.name)).await;
    }
    drop(engine);
    match result {
        Ok(figures) => println!("MOVES_BENCH {figures}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// What a failed run must still remove.
#[derive(Default)]
struct Leftovers {
    servers: Vec<String>,
    glance: Vec<String>,
    /// Docker repositories on the machine's engine (all their tags go).
    repositories: Vec<String>,
    flavor: Option<String>,
    custom_trait: Option<String>,
}

struct Run<'a> {
    cloud: &'a Cloud,
    a: String,
    b: String,
    /// /metrics of A and B.
    metrics: [String; 2],
    /// B's engine, for `docker -H`.
    b_socket: String,
    mb: u64,
    /// Names and labels of what is made by hand (lower case).
    tag: String,
    /// The Glance image servers boot (the test busybox).
    image: String,
    left: Leftovers,
}

/// Glance bytes counted by our hosts (`nova_docker_glance_bytes_total`).
#[derive(Clone, Copy)]
struct Bytes {
    a_up: f64,
    a_down: f64,
    b_down: f64,
}

impl Run<'_> {
    async fn all(&mut self, conf: &std::path::PathBuf) -> Value {
        self.image = self.cloud.busybox_image(conf).await;
        let rebuild = self.rebuild().await;
        let (shelve, unshelve) = self.shelve_and_unshelve().await;
        let resize = self.resize().await;
        let migrate = self.migrate().await;
        json!({
            "mb": self.mb,
            "hosts": [self.a, self.b],
            "storage": [self.sh("docker info -f '{{.Driver}}'").await, self.sh("docker $B info -f '{{.Driver}}'").await],
            "moves": [rebuild, shelve, unshelve, resize, migrate],
        })
    }

    // ------------------------------------------------------------ moves

    async fn rebuild(&mut self) -> Value {
        let (id, _, _) = self.boot_written("rebuild").await;
        let before = self.bytes().await;
        let ours = self.act(&id, json!({"rebuild": {"imageRef": self.image}}), "2.88", "ACTIVE").await;
        let moved = self.bytes().await;
        assert_eq!(self.sum(false, &format!("nova-{id}")).await, "gone", "a rebuild resets the root disk");
        self.cloud.delete_server(&id, T).await;

        let (p, _) = self.plain_written("rebuild").await;
        let run = self.plain_run(&p, NANO_MB, "nd-busybox:latest", false);
        let plain = self.timed(&format!("docker stop -t 60 {p} >/dev/null && docker rm {p} >/dev/null && {run}")).await;
        assert_eq!(self.sum(false, &p).await, "gone");
        self.remove(false, &p).await;
        json!({"move": "rebuild", "ours_s": ours, "ours_bytes": glance(before, moved),
               "checked": "the data gone (Nova's rebuild resets the root disk)",
               "plain": [{"how": "docker stop, docker rm, docker run -d of the image", "s": plain,
                          "bytes": {"none": 0}}]})
    }

    async fn shelve_and_unshelve(&mut self) -> (Value, Value) {
        let (id, name, sum) = self.boot_written("shelve").await;
        let before = self.bytes().await;
        let shelve = self.act(&id, json!({"shelve": null}), "2.88", "SHELVED_OFFLOADED").await;
        let shelved_bytes = self.bytes().await;
        // (Nova saves SHELVED_OFFLOADED, then the host's removal.)
        self.wait("the instance to leave the host", async |r: &Self| {
            r.cloud.server(&id).await.is_some_and(|s| s["OS-EXT-SRV-ATTR:host"].is_null())
        })
        .await;
        assert_eq!(self.sh(&format!("docker ps -aq --filter name=^nova-{id}$")).await, "", "offloaded");
        let images = crate::moves_rebuild::glance_images_named(self.cloud, &format!("{name}-shelved")).await;
        let shelved = images.first().and_then(|i| i["id"].as_str()).expect("the shelved image").to_string();
        self.left.glance.push(shelved.clone());
        self.left.repositories.push(cache_repository(&shelved));
        let unshelve = self.act(&id, json!({"unshelve": {"host": self.a}}), "2.91", "ACTIVE").await;
        let unshelved_bytes = self.bytes().await;
        assert_eq!(self.sum(false, &format!("nova-{id}")).await, sum, "the data after the unshelve");
        self.cloud.delete_server(&id, T).await;

        let (p, plain_sum) = self.plain_written("shelve").await;
        let (image, committed) = (uuid::Uuid::new_v4().to_string(), format!("{}-shelved:1", self.tag));
        self.left.glance.push(image.clone());
        let plain_shelve = self
            .timed(&format!(
                "docker stop -t 60 {p} >/dev/null && docker commit {p} {committed} >/dev/null && {} && \
                 docker save {committed} | {} && docker rm {p} >/dev/null && docker rmi {committed} >/dev/null",
                glance_create(&image, &format!("{p}-shelved")),
                glance_upload(&image)
            ))
            .await;
        let size = self.glance_size(&image).await;
        let run = self.plain_run(&p, NANO_MB, &committed, false);
        let plain_unshelve = self
            .timed(&format!(
                "curl -sf -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{image}/file\" | docker load >/dev/null \
                 && {run} && curl -sf -X DELETE -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{image}\""
            ))
            .await;
        assert_eq!(self.sum(false, &p).await, plain_sum, "the data after the unshelve by hand");
        self.remove(false, &p).await;
        let checked = "the data's SHA-256 after the unshelve, the container gone while shelved";
        (
            json!({"move": "shelve", "ours_s": shelve, "ours_bytes": glance(before, shelved_bytes),
                   "ours_end": "SHELVED_OFFLOADED", "checked": checked,
                   "plain": [{"how": "docker stop, docker commit, POST /v2/images, docker save | curl -T - to \
                                      Glance, docker rm, docker rmi", "s": plain_shelve,
                              "bytes": {"glance_upload": size}}]}),
            json!({"move": "unshelve", "ours_s": unshelve, "ours_bytes": glance(shelved_bytes, unshelved_bytes),
                   "checked": checked,
                   "plain": [{"how": "curl from Glance | docker load, docker run -d, DELETE the image",
                              "s": plain_unshelve, "bytes": {"glance_download": size}}]}),
        )
    }

    async fn resize(&mut self) -> Value {
        let rp = self.cloud.wait_provider(&self.a, T).await["uuid"].as_str().expect("A's provider").to_string();
        let custom = format!("CUSTOM_{}", self.tag.replace('-', "_").to_uppercase());
        crate::moves::add_trait(self.cloud, &rp, &custom).await;
        self.left.custom_trait = Some(custom.clone());
        let big = crate::moves::pinned_flavor(self.cloud, BIG_MB, &custom).await;
        self.left.flavor = Some(big.clone());

        let (id, _, sum) = self.boot_written("resize").await;
        let image_size = self.size(&self.sh(&format!("docker inspect -f '{{{{.Image}}}}' nova-{id}")).await).await;
        let before = self.bytes().await;
        let (ours, verify) = self.resize_and_confirm(&id, json!({"resize": {"flavorRef": big}}), "2.88").await;
        let moved = self.bytes().await;
        let s = self.cloud.server(&id).await.expect("the server");
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], self.a.as_str());
        assert_eq!(s["flavor"]["ram"], BIG_MB);
        let mig = self.migration(&id).await;
        self.left.repositories.push(move_repository(&mig));
        let committed = self.sh(&format!("docker images -q {} | head -1", move_repository(&mig))).await;
        let layer = self.size(&committed).await - image_size;
        assert_eq!(self.sum(false, &format!("nova-{id}")).await, sum, "the data after the resize");
        let memory = self.sh(&format!("docker inspect -f '{{{{.HostConfig.Memory}}}}' nova-{id}")).await;
        assert_eq!(memory, (BIG_MB << 20).to_string(), "the new flavor's limit");
        self.cloud.delete_server(&id, T).await;

        let (p, plain_sum) = self.plain_written("resize").await;
        let (committed, p2) = (format!("{}-resized:1", self.tag), format!("{p}-resized"));
        let run = self.plain_run(&p2, BIG_MB, &committed, false);
        let plain = self
            .timed(&format!(
                "docker stop -t 60 {p} >/dev/null && docker commit {p} {committed} >/dev/null && {run} && \
                 docker rm {p} >/dev/null"
            ))
            .await;
        let plain_layer = self.size(&committed).await - self.size("nd-busybox:latest").await;
        assert_eq!(self.sum(false, &p2).await, plain_sum, "the data after the resize by hand");
        self.remove(false, &p2).await;
        json!({"move": "resize", "ours_s": ours, "ours_verify_s": verify,
               "ours_bytes": {"committed_layer": layer, "glance": glance(before, moved)},
               "checked": "the data's SHA-256, the new memory limit, on the same host",
               "plain": [{"how": "docker stop, docker commit, docker run -d -m 256m of the commit, docker rm",
                          "s": plain, "bytes": {"committed_layer": plain_layer}}]})
    }

    async fn migrate(&mut self) -> Value {
        let (id, _, sum) = self.boot_written("migrate").await;
        let before = self.bytes().await;
        let (ours, verify) = self.resize_and_confirm(&id, json!({"migrate": {"host": self.b}}), "2.56").await;
        let moved = self.bytes().await;
        let s = self.cloud.server(&id).await.expect("the server");
        assert_eq!(s["OS-EXT-SRV-ATTR:host"], self.b.as_str());
        self.left.repositories.push(move_repository(&self.migration(&id).await));
        assert_eq!(self.sum(true, &format!("nova-{id}")).await, sum, "the data on B");
        self.wait("A's container to go", async |r: &Self| {
            r.sh(&format!("docker ps -aq --filter name=^nova-{id}$")).await.is_empty()
        })
        .await;
        self.cloud.delete_server(&id, T).await;

        // By hand, straight from engine to engine.
        let (p, plain_sum) = self.plain_written("migrate").await;
        let committed = format!("{}-migrated:1", self.tag);
        let count = std::env::temp_dir().join(format!("{}.bytes", self.tag));
        let run = self.plain_run(&p, NANO_MB, &committed, true);
        let direct = self
            .timed(&format!(
                "docker stop -t 60 {p} >/dev/null && docker commit {p} {committed} >/dev/null && \
                 docker save {committed} | tee >(wc -c > {count}) | docker $B load >/dev/null && {run} && \
                 docker rm {p} >/dev/null && docker rmi {committed} >/dev/null",
                count = count.display()
            ))
            .await;
        let piped = self.count(&count).await;
        assert_eq!(self.sum(true, &p).await, plain_sum, "the data on B, moved by hand");
        self.remove(true, &p).await;

        // By hand through Glance, as nova-docker moves it.
        let (p, plain_sum) = self.plain_written("migrate-glance").await;
        let (image, committed) = (uuid::Uuid::new_v4().to_string(), format!("{}-migrated-glance:1", self.tag));
        self.left.glance.push(image.clone());
        let run = self.plain_run(&p, NANO_MB, &committed, true);
        let through_glance = self
            .timed(&format!(
                "docker stop -t 60 {p} >/dev/null && docker commit {p} {committed} >/dev/null && {} && \
                 docker save {committed} | tee >(wc -c > {count}) | {} && docker rmi {committed} >/dev/null && \
                 curl -sf -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{image}/file\" | \
                 docker $B load >/dev/null && {run} && \
                 curl -sf -X DELETE -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{image}\" && \
                 docker rm {p} >/dev/null",
                glance_create(&image, &p),
                glance_upload(&image),
                count = count.display()
            ))
            .await;
        // (the image is deleted: its size is the archive's, as uploaded)
        let size = self.count(&count).await;
        assert_eq!(self.sum(true, &p).await, plain_sum, "the data on B, moved by hand through Glance");
        self.remove(true, &p).await;
        json!({"move": "migrate", "ours_s": ours, "ours_verify_s": verify, "ours_bytes": glance(before, moved),
               "checked": "the data's SHA-256 on B's engine, A's container removed",
               "plain": [
                   {"how": "docker stop, docker commit, docker save | docker -H B load (counted by tee to wc -c), \
                            docker -H B run -d, docker rm, docker rmi", "s": direct, "bytes": {"pipe": piped}},
                   {"how": "docker stop, docker commit, POST /v2/images, docker save | curl -T - to Glance \
                            (counted by tee to wc -c), docker rmi, curl from Glance | docker -H B load, docker -H B run -d, DELETE the image, \
                            docker rm", "s": through_glance,
                    "bytes": {"glance_upload": size, "glance_download": size}}]})
    }

    // ------------------------------------------------------------ ours

    /// A server on A with the data written; its id, name and the data's SHA-256.
    async fn boot_written(&mut self, what: &str) -> (String, String, String) {
        let name = format!("{}-{what}", self.tag);
        let id = self.cloud.create_server(&name, &self.image, &self.a, "42").await;
        self.left.servers.push(id.clone());
        self.cloud.wait_status(&id, "ACTIVE", T).await;
        let sum = self.write(false, &format!("nova-{id}")).await;
        (id, name, sum)
    }

    /// POSTs a server action and waits for `status` with no task state
    /// (panics on ERROR): seconds from the POST, after a `sync`.
    async fn act(&self, id: &str, body: Value, mv: &str, status: &str) -> f64 {
        self.sh("sync").await;
        let t = Instant::now();
        let (code, v) = self.cloud.nova(Method::POST, &format!("/servers/{id}/action"), Some(body), mv).await;
        assert!((200..300).contains(&code), "{code} {v}");
        self.until(id, status).await;
        t.elapsed().as_secs_f64()
    }

    /// A resize or cold migration, confirmed as soon as it awaits it:
    /// seconds from the POST to ACTIVE, and to VERIFY_RESIZE.
    async fn resize_and_confirm(&self, id: &str, body: Value, mv: &str) -> (f64, f64) {
        self.sh("sync").await;
        let t = Instant::now();
        let (code, v) = self.cloud.nova(Method::POST, &format!("/servers/{id}/action"), Some(body), mv).await;
        assert_eq!(code, 202, "{v}");
        self.until(id, "VERIFY_RESIZE").await;
        let verify = t.elapsed().as_secs_f64();
        let (code, v) = self.cloud.action(id, json!({"confirmResize": null})).await;
        assert_eq!(code, 204, "{v}");
        self.until(id, "ACTIVE").await;
        (t.elapsed().as_secs_f64(), verify)
    }

    async fn until(&self, id: &str, status: &str) {
        let started = Instant::now();
        loop {
            let s = self.cloud.server(id).await.unwrap_or_else(|| panic!("server {id} vanished"));
            if s["status"] == status && s["OS-EXT-STS:task_state"].is_null() {
                return;
            }
            assert_ne!(s["status"], "ERROR", "server {id}: {}\n{}", s["fault"], self.cloud.recent_errors());
            assert!(started.elapsed() < T, "server {id} not {status} after {T:?}: {s}");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait(&self, what: &str, mut check: impl AsyncFnMut(&Self) -> bool) {
        let started = Instant::now();
        while !check(self).await {
            assert!(started.elapsed() < T, "timed out waiting for {what}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The server's newest migration's uuid.
    async fn migration(&self, id: &str) -> String {
        crate::moves::migration(self.cloud, id).await["uuid"].as_str().expect("a migration uuid").to_string()
    }

    async fn bytes(&self) -> Bytes {
        let [a, b] = &self.metrics;
        let (a, b) = (scrape(a).await, scrape(b).await);
        let up = r#"nova_docker_glance_bytes_total{direction="upload"}"#;
        let down = r#"nova_docker_glance_bytes_total{direction="download"}"#;
        Bytes { a_up: sample(&a, up), a_down: sample(&a, down), b_down: sample(&b, down) }
    }

    // ------------------------------------------------------------ by hand

    /// A plain container on A with the data written; its name and SHA-256.
    async fn plain_written(&self, what: &str) -> (String, String) {
        let name = format!("{}-plain-{what}", self.tag);
        self.sh(&self.plain_run(&name, NANO_MB, "nd-busybox:latest", false)).await;
        let sum = self.write(false, &name).await;
        (name, sum)
    }

    /// `docker run -d` as our host makes the container: no network, the
    /// flavor's memory.
    fn plain_run(&self, name: &str, mb: i64, image: &str, on_b: bool) -> String {
        format!(
            "{} run -d --name {name} --network none -m {mb}m --label nd-mbench={} {image} >/dev/null",
            docker(on_b),
            self.tag
        )
    }

    /// Runs `script` with bash (pipefail) within T: `$B` is `-H` B's engine,
    /// `$ND_GLANCE` and `$ND_TOKEN` Glance's (not in the script, which a
    /// failure prints). Its stdout, trimmed.
    async fn sh(&self, script: &str) -> String {
        let run = tokio::process::Command::new("bash")
            .args(["-o", "pipefail", "-c", script])
            .env("B", format!("-H {}", self.b_socket))
            .env("ND_GLANCE", self.cloud.var("ND_GLANCE"))
            .env("ND_TOKEN", self.cloud.var("ND_TOKEN"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(T, run).await.unwrap_or_else(|_| panic!("{script}: not done in {T:?}"));
        let out = out.expect("bash runs");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `sh`, timed after a `sync`: seconds.
    async fn timed(&self, script: &str) -> f64 {
        self.sh("sync").await;
        let t = Instant::now();
        self.sh(script).await;
        t.elapsed().as_secs_f64()
    }

    /// Writes the data into a container; its SHA-256.
    async fn write(&self, on_b: bool, container: &str) -> String {
        let cmd = format!("dd if=/dev/urandom of=/data bs=1M count={} 2>/dev/null && sha256sum /data", self.mb);
        let out = self.sh(&format!("{} exec {container} sh -c '{cmd}'", docker(on_b))).await;
        out.split_whitespace().next().expect("sha256sum's output").to_string()
    }

    /// The data's SHA-256 in a container, or "gone".
    async fn sum(&self, on_b: bool, container: &str) -> String {
        let cmd = "sha256sum /data 2>/dev/null || echo gone";
        let out = self.sh(&format!("{} exec {container} sh -c '{cmd}'", docker(on_b))).await;
        out.split_whitespace().next().unwrap_or_default().to_string()
    }

    /// Removes a plain container once checked (its data fills the disk).
    async fn remove(&self, on_b: bool, container: &str) {
        self.sh(&format!("{} rm -f {container} >/dev/null", docker(on_b))).await;
    }

    /// A local image's size (the machine's engine).
    async fn size(&self, image: &str) -> i64 {
        let out = self.sh(&format!("docker image inspect -f '{{{{.Size}}}}' {image}")).await;
        out.parse().unwrap_or_else(|_| panic!("the size of {image}: {out}"))
    }

    async fn glance_size(&self, id: &str) -> i64 {
        let out = self.sh(&format!("curl -sf -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{id}\"")).await;
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["size"].as_i64().unwrap_or_else(|| panic!("image {id} has no size: {out}"))
    }

    /// The number `wc -c` wrote to `file` (a process substitution that
    /// may end just after the pipeline).
    async fn count(&self, file: &std::path::Path) -> i64 {
        let mut n = None;
        self.wait("the byte count", async |_| {
            n = std::fs::read_to_string(file).ok().and_then(|t| t.trim().parse().ok());
            n.is_some()
        })
        .await;
        let _ = std::fs::remove_file(file);
        n.unwrap_or_default()
    }

    // ------------------------------------------------------------ cleanup

    /// Removes what the run made, whatever failed.
    async fn clean(&mut self) {
        let left = std::mem::take(&mut self.left);
        for id in &left.servers {
            quietly(delete_server(self.cloud, id)).await;
        }
        for id in &left.glance {
            quietly(self.sh(&format!(
                "curl -s -o /dev/null -X DELETE -H \"X-Auth-Token: $ND_TOKEN\" \"$ND_GLANCE/v2/images/{id}\""
            )))
            .await;
        }
        if let Some(flavor) = &left.flavor {
            quietly(crate::moves::delete_flavor(self.cloud, flavor)).await;
        }
        let label = format!("label=nd-mbench={}", self.tag);
        for on_b in [false, true] {
            let ps = format!("{} ps -aq --filter {label} | xargs -r {} rm -f", docker(on_b), docker(on_b));
            quietly(self.sh(&ps)).await;
        }
        let mut refs = vec![format!("--filter 'reference={}-*'", self.tag)];
        refs.extend(left.repositories.iter().cloned());
        for r in refs {
            let rmi = format!("docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {r} | xargs -r docker rmi");
            quietly(self.sh(&rmi)).await;
        }
        if let Some(t) = &left.custom_trait {
            quietly(self.sh(&format!(
                "curl -s -o /dev/null -X DELETE -H \"X-Auth-Token: $ND_TOKEN\" \
                 -H 'OpenStack-API-Version: placement 1.36' {}/traits/{t}",
                self.cloud.var("ND_PLACEMENT")
            )))
            .await;
        }
    }
}

/// `docker`, or `docker $B` (B's engine).
fn docker(on_b: bool) -> &'static str {
    if on_b { "docker $B" } else { "docker" }
}

/// `curl` creating a Glance image record with this id, as nova-api does for a shelve.
fn glance_create(id: &str, name: &str) -> String {
    let body = json!({"id": id, "name": name, "container_format": "docker", "disk_format": "raw"});
    format!(
        "curl -sf -o /dev/null -X POST -H \"X-Auth-Token: $ND_TOKEN\" -H 'Content-Type: application/json' \
         -d '{body}' \"$ND_GLANCE/v2/images\""
    )
}

/// `curl -T -` of stdin into a Glance image (chunked, as ours streams it).
fn glance_upload(id: &str) -> String {
    format!(
        "curl -sf -T - -H \"X-Auth-Token: $ND_TOKEN\" -H 'Content-Type: application/octet-stream' \
         \"$ND_GLANCE/v2/images/{id}/file\""
    )
}

/// The Glance bytes our hosts moved between two scrapes.
fn glance(before: Bytes, after: Bytes) -> Value {
    json!({"glance_upload": after.a_up - before.a_up,
           "glance_download": after.a_down - before.a_down + after.b_down - before.b_down})
}

async fn scrape(url: &str) -> String {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(10)).send().await;
    let r = r.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    r.text().await.unwrap_or_default()
}

/// The value of one Prometheus sample (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// A TCP port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// Runs a cleanup step; its failure is printed (by the panic hook), not raised.
async fn quietly<T>(step: impl std::future::Future<Output = T>) {
    let _ = AssertUnwindSafe(step).catch_unwind().await;
}

/// Deletes a server if it is still there and waits until it is gone.
async fn delete_server(cloud: &Cloud, id: &str) {
    if cloud.server(id).await.is_some() {
        cloud.delete_server(id, T).await;
    }
}

/// Deletes a stopped host's service record (and with it its compute node
/// and provider), as the bench does with its hosts.
async fn forget_service(cloud: &Cloud, host: &str) {
    if let Some(id) = cloud.compute_service(host).await.and_then(|s| s["id"].as_str().map(str::to_string)) {
        cloud.nova(Method::DELETE, &format!("/os-services/{id}"), None, "2.53").await;
    }
}
