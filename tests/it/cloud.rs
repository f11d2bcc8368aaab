//! The real OpenStack control planes of `tests/env/controlplane.sh`, and this
//! service run as a compute host of them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Release};

/// One control plane (its `env.sh`), with REST helpers.
pub struct Cloud {
    pub env: HashMap<String, String>,
    http: reqwest::Client,
}

fn env_state() -> PathBuf {
    std::env::var("ND_ENV_STATE").unwrap_or_else(|_| "/var/lib/nova-docker-test".into()).into()
}

/// Runs `tests/env/controlplane.sh RELEASE ARGS...`, which must succeed in time.
async fn controlplane(release: &str, args: &[&str], timeout: Duration) {
    if let Err(e) = try_controlplane(release, args, timeout).await {
        panic!("{e}");
    }
}

/// Runs `tests/env/controlplane.sh RELEASE ARGS...`; its log if it fails.
async fn try_controlplane(release: &str, args: &[&str], timeout: Duration) -> Result<(), String> {
    let script = common::repo().join("tests/env/controlplane.sh");
    let what = format!("controlplane.sh {release} {}", args.join(" "));
    let out = tokio::time::timeout(timeout, tokio::process::Command::new(script).arg(release).args(args).output())
        .await
        .map_err(|_| format!("{what} did not finish in {timeout:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Reads `export K=V` lines (values as bash's printf %q wrote them).
fn parse_env_sh(text: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else { continue };
        let Some((k, v)) = rest.split_once('=') else { continue };
        let v = if v == "''" { String::new() } else { v.to_string() };
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        env.insert(k.to_string(), out);
    }
    env
}

/// The tenant projects every control plane has, each with one member
/// (`tests/env/controlplane.sh`, "Identity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenant {
    /// Project nd-tenant-a, user nd-member-a.
    A,
    /// Project nd-tenant-b, user nd-member-b.
    B,
}

/// A project-scoped token from Keystone (password authentication), issued
/// on a thread of its own: `Cloud::get` is called from sync and async code.
fn keystone_token(keystone: &str, user: &str, password: &str, project: &str) -> String {
    let url = format!("{}/auth/tokens", keystone.trim_end_matches('/'));
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password, "domain": {"name": "Default"}}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
    let what = format!("a token for {user} in project {project} from {url}");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let resp = reqwest::Client::new()
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e} (is the control plane up?)"));
            let status = resp.status();
            let token = resp.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
            let text = resp.text().await.unwrap_or_default();
            token.filter(|_| status.is_success()).unwrap_or_else(|| panic!("{what}: {status} {text}"))
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("no Keystone token"))
}

impl Cloud {
    /// The control plane of `release`; it must be up (tests/env/controlplane.sh).
    /// With Keystone (the default), the admin's token (`ND_TOKEN`) is issued
    /// here, so that every test starts with a fresh one.
    pub fn get(release: Release) -> Cloud {
        let name = release.env_name();
        let path = env_state().join(name).join("env.sh");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("{} missing: start the control plane with tests/env/controlplane.sh {name} up", path.display())
        });
        // API servers close idle keep-alive connections (gunicorn after 2 s
        // by default, Apache after 5 s): never reuse one that old.
        let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_millis(1500)).build().unwrap();
        let mut cloud = Cloud { env: parse_env_sh(&text), http };
        if cloud.keystone() {
            let token = keystone_token(
                cloud.var("ND_KEYSTONE"),
                cloud.var("ND_ADMIN_USER"),
                cloud.var("ND_ADMIN_PASSWORD"),
                cloud.var("ND_ADMIN_PROJECT"),
            );
            cloud.env.insert("ND_TOKEN".into(), token);
        }
        cloud
    }

    /// Whether this control plane authenticates with Keystone (else it is
    /// the noauth fast mode, `ND_AUTH=noauth`).
    pub fn keystone(&self) -> bool {
        self.env.get("ND_AUTH").is_some_and(|a| a == "keystone")
    }

    /// A fresh token of the tenant's member (role member in its project).
    pub fn tenant_token(&self, tenant: Tenant) -> String {
        let (user, project) = match tenant {
            Tenant::A => (self.var("ND_MEMBER_A"), self.var("ND_TENANT_A")),
            Tenant::B => (self.var("ND_MEMBER_B"), self.var("ND_TENANT_B")),
        };
        if self.keystone() {
            keystone_token(self.var("ND_KEYSTONE"), user, self.var("ND_MEMBER_PASSWORD"), project)
        } else {
            format!("{user}:{project}")
        }
    }

    /// The id of a project of the cloud: `admin`, `nd-tenant-a` or `nd-tenant-b`.
    pub fn project_id(&self, name: &str) -> String {
        let ids: Value = self
            .env
            .get("ND_PROJECT_IDS")
            .map(|j| serde_json::from_str(j).expect("ND_PROJECT_IDS is JSON"))
            .unwrap_or_default();
        match ids[name].as_str() {
            Some(id) => id.to_string(),
            // noauth: a project is its name
            None if !self.keystone() => name.to_string(),
            None => panic!("no project {name} in ND_PROJECT_IDS: {ids}"),
        }
    }

    /// A value of env.sh.
    pub fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or_else(|| panic!("{k} not in env.sh"))
    }

    fn token(&self) -> &str {
        self.var("ND_TOKEN")
    }

    /// A request to nova-api at microversion 2.88 (or `mv`).
    pub async fn nova(&self, method: reqwest::Method, path: &str, body: Option<Value>, mv: &str) -> (u16, Value) {
        self.nova_as(self.token(), method, path, body, mv).await
    }

    /// A request to nova-api with another token (e.g. `tenant_token`).
    pub async fn nova_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        mv: &str,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.var("ND_NOVA_API"));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Auth-Token", token)
            .header("X-OpenStack-Nova-API-Version", mv)
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("nova-api {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A GET to placement.
    pub async fn placement(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.var("ND_PLACEMENT"));
        let resp = self
            .http
            .get(&url)
            .header("X-Auth-Token", self.token())
            .header("OpenStack-API-Version", "placement 1.36")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("placement {url}: {e}"));
        resp.json().await.unwrap_or(Value::Null)
    }

    /// The resource provider named `name`, if any.
    pub async fn provider(&self, name: &str) -> Option<Value> {
        let v = self.placement(&format!("/resource_providers?name={name}")).await;
        v["resource_providers"].as_array().and_then(|a| a.first().cloned())
    }

    /// Waits for the resource provider named `name`: a host's service
    /// record is up as soon as it exists, before its compute node and
    /// provider are written.
    pub async fn wait_provider(&self, name: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            if let Some(rp) = self.provider(name).await {
                return rp;
            }
            assert!(started.elapsed() < timeout, "no resource provider {name} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the provider named `name` has its inventory: a host is
    /// up and mapped before its first inventory report, and a boot sent in
    /// between finds no valid host (as with a Python nova-compute).
    pub async fn wait_inventory(&self, name: &str, timeout: Duration) {
        let started = Instant::now();
        let rp = self.wait_provider(name, timeout).await;
        let uuid = rp["uuid"].as_str().unwrap_or_default().to_string();
        loop {
            let inv = self.placement(&format!("/resource_providers/{uuid}/inventories")).await;
            if inv["inventories"]["MEMORY_MB"]["total"].as_i64().is_some_and(|t| t > 0) {
                return;
            }
            assert!(started.elapsed() < timeout, "no inventory for provider {name} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `controlplane.sh RELEASE map HOST`: `host` mapped to cell1, by
    /// `nova-manage cell_v2 discover_hosts` or, when that loses the race with
    /// the scheduler's own periodic discovery, by the scheduler.
    pub async fn map_host(&self, host: &str) {
        controlplane(self.var("ND_RELEASE"), &["map", host], Duration::from_secs(120)).await;
    }

    /// The os-services record of `host`'s nova-compute.
    pub async fn compute_service(&self, host: &str) -> Option<Value> {
        let (_, v) = self
            .nova(reqwest::Method::GET, &format!("/os-services?host={host}&binary=nova-compute"), None, "2.53")
            .await;
        v["services"].as_array().and_then(|a| a.first().cloned())
    }

    /// The id of the Glance image for the test busybox image, importing it
    /// once per control plane with `nova-docker image import`.
    pub async fn busybox_image(&self, conf: &PathBuf) -> String {
        self.docker_image_in_glance(conf, "nd-busybox:latest", "nd-busybox", &[]).await
    }

    /// The test busybox image as a public Glance image (tenants can boot
    /// it), imported once per control plane.
    pub async fn public_busybox_image(&self, conf: &PathBuf) -> String {
        self.docker_image_in_glance(conf, "nd-busybox:latest", "nd-busybox-public", &["--visibility", "public"]).await
    }

    /// A Glance image made from a local Docker image, imported once.
    /// `props` are `key=value` properties, or `--visibility V`.
    pub async fn docker_image_in_glance(&self, conf: &PathBuf, docker_ref: &str, name: &str, props: &[&str]) -> String {
        let url = format!("{}/v2/images?name={name}&status=active", self.var("ND_GLANCE"));
        let v: Value =
            self.http.get(&url).header("X-Auth-Token", self.token()).send().await.unwrap().json().await.unwrap();
        if let Some(id) = v["images"].as_array().and_then(|a| a.first()).and_then(|i| i["id"].as_str()) {
            return id.to_string();
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["image", "import", docker_ref, "--name", name])
            .args(image_import_args(props))
            .arg("--config-file")
            .arg(conf)
            .env("OS_AUTH_TOKEN", self.token())
            // The image is the machine engine's, whatever engine the
            // calling test's host runs on (a private one has no images).
            .env("OS_DOCKER__HOST_URL", "unix:///var/run/docker.sock")
            .output()
            .await
            .expect("image import runs");
        assert!(out.status.success(), "image import failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a Glance image with the given formats and raw bytes.
    pub async fn raw_glance_image(&self, name: &str, container_format: &str, data: Vec<u8>) -> String {
        self.glance_image(name, container_format, data, Some("public")).await
    }

    /// Deletes a Glance image a test made (whatever its state).
    pub async fn delete_glance_image(&self, id: &str) {
        let glance = self.var("ND_GLANCE");
        let r = self
            .http
            .delete(format!("{glance}/v2/images/{id}"))
            .header("X-Auth-Token", self.token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {glance}/v2/images/{id}: {e}"));
        assert!(r.status().is_success() || r.status() == 404, "DELETE image {id}: {}", r.status());
    }

    /// Creates a Glance image, with Glance's default visibility if None
    /// (Zed's policy lets only its admin publicize images).
    async fn glance_image(
        &self,
        name: &str,
        container_format: &str,
        data: Vec<u8>,
        visibility: Option<&str>,
    ) -> String {
        let glance = self.var("ND_GLANCE");
        let mut meta = json!({"name": name, "container_format": container_format, "disk_format": "raw"});
        if let Some(v) = visibility {
            meta["visibility"] = json!(v);
        }
        let resp = self
            .http
            .post(format!("{glance}/v2/images"))
            .header("X-Auth-Token", self.token())
            .json(&meta)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {glance}/v2/images: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("POST {glance}/v2/images: {status} {text}")).to_string();
        let r = self
            .http
            .put(format!("{glance}/v2/images/{id}/file"))
            .header("X-Auth-Token", self.token())
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "upload: {}", r.status());
        id
    }

    /// `controlplane.sh RELEASE up`, idempotent: what is missing is started
    /// again and each readiness check passes.
    pub async fn up(release: Release) {
        controlplane(release.env_name(), &["up"], Duration::from_secs(600)).await;
    }

    /// `controlplane.sh RELEASE restart`: every service of the control plane
    /// stopped and started again (read `Cloud::get` afresh afterwards).
    /// A failed restart is reported and followed by one more `up` (which is
    /// idempotent): this is the environment's hygiene, not what is tested.
    pub async fn restart(release: Release) {
        if let Err(e) = try_controlplane(release.env_name(), &["restart"], Duration::from_secs(600)).await {
            eprintln!("the restart failed; bringing the control plane up again. {e}");
            controlplane(release.env_name(), &["up"], Duration::from_secs(600)).await;
        }
    }

    /// Waits until this control plane schedules again: a boot forced onto a
    /// host that does not exist must come back ERROR (NoValidHost), which
    /// takes nova-api -> conductor -> scheduler and the scheduler's reply.
    /// After the broker restarted, the Python services can lose their first
    /// such round trips (the build then waits out Nova's long RPC timeout),
    /// so a probe that hangs is deleted and another one sent.
    pub async fn wait_schedulable(&self, timeout: Duration) {
        let image = self.glance_image(&common::unique("nd-probe"), "docker", b"probe".to_vec(), None).await;
        let started = Instant::now();
        let mut probes = Vec::new();
        'probing: loop {
            assert!(started.elapsed() < timeout, "the control plane did not schedule again within {timeout:?}");
            let (status, v) = self.post_server(&common::unique("nd-probe"), &image, "nd-nowhere", "42").await;
            let Some(id) = v["server"]["id"].as_str().filter(|_| status == 202).map(str::to_string) else {
                eprintln!("probe boot refused ({status} {v}): trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            probes.push(id.clone());
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_secs(20) {
                if self.server(&id).await.is_some_and(|s| s["status"] == "ERROR") {
                    break 'probing;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            eprintln!("probe {id} still not scheduled after 20 s: sending another one");
        }
        for id in &probes {
            self.nova(reqwest::Method::DELETE, &format!("/servers/{id}"), None, "2.88").await;
        }
        let glance = self.var("ND_GLANCE");
        let _ =
            self.http.delete(format!("{glance}/v2/images/{image}")).header("X-Auth-Token", self.token()).send().await;
    }

    /// `POST /servers` for a server with no network on `host` (forced
    /// through the availability zone); nova-api's status and answer.
    async fn post_server(&self, name: &str, image: &str, host: &str, flavor: &str) -> (u16, Value) {
        self.post_server_as(self.token(), name, image, host, flavor).await
    }

    async fn post_server_as(&self, token: &str, name: &str, image: &str, host: &str, flavor: &str) -> (u16, Value) {
        let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none",
                                      "availability_zone": format!("nova:{host}")}});
        self.nova_as(token, reqwest::Method::POST, "/servers", Some(body), "2.88").await
    }

    /// Boots a server on `host` as the owner of `token` (a tenant's member
    /// may force a host in the test clouds' policy).
    pub async fn create_server_as(&self, token: &str, name: &str, image: &str, host: &str, flavor: &str) -> String {
        let (status, v) = self.post_server_as(token, name, image, host, flavor).await;
        assert_eq!(status, 202, "create server: {v}");
        v["server"]["id"].as_str().expect("server id").to_string()
    }

    /// Boots a server on `host` (forced through the availability zone).
    pub async fn create_server(&self, name: &str, image: &str, host: &str, flavor: &str) -> String {
        let (status, v) = self.post_server(name, image, host, flavor).await;
        assert_eq!(status, 202, "create server: {v}");
        v["server"]["id"].as_str().expect("server id").to_string()
    }

    /// The server document (None once deleted).
    pub async fn server(&self, id: &str) -> Option<Value> {
        let (status, v) = self.nova(reqwest::Method::GET, &format!("/servers/{id}"), None, "2.88").await;
        match status {
            200 => Some(v["server"].clone()),
            404 => None,
            other => panic!("GET server {id}: {other} {v}"),
        }
    }

    /// Waits until the server has `status` and no task state; panics on
    /// ERROR (unless that is what is awaited) or timeout.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let s = self.server(id).await.unwrap_or_else(|| panic!("server {id} vanished"));
            let st = s["status"].as_str().unwrap_or("");
            if st == status && s["OS-EXT-STS:task_state"].is_null() {
                return s;
            }
            if st == "ERROR" && status != "ERROR" {
                panic!("server {id} went to ERROR: {}\n{}", s["fault"], self.recent_errors());
            }
            if started.elapsed() > timeout {
                panic!("server {id} not {status} after {timeout:?}: {s}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last ERROR lines (with the first line of each traceback) of the
    /// control plane's service logs: when a test fails on a 500 from Nova,
    /// Neutron, Glance or Placement, the cause is in those logs, which CI
    /// does not keep.
    pub fn recent_errors(&self) -> String {
        let dir = std::path::Path::new(self.var("ND_STATE")).join("log");
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return format!("(no logs in {})", dir.display()) };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let tail = &bytes[bytes.len().saturating_sub(256 * 1024)..];
            let text = String::from_utf8_lossy(tail);
            let lines: Vec<&str> = text.lines().collect();
            let mut picked = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                // Known noise: optional drivers that are not installed, and
                // Zed Keystone's pool closing a connection from another thread.
                let noise = l.contains("stevedore.extension") || l.contains("sqlalchemy.pool.impl.NullPool");
                if (l.contains(" ERROR ") || l.contains(" CRITICAL ")) && !noise {
                    picked.push(l.to_string());
                    // The exception itself: the last line of the traceback that follows.
                    let last = lines[i + 1..].iter().take_while(|n| !n.starts_with("20")).last();
                    if let Some(exc) = last {
                        picked.push(format!("    {exc}"));
                    }
                }
            }
            if !picked.is_empty() {
                let from = picked.len().saturating_sub(12);
                out.push_str(&format!("{}: last errors:\n{}\n", path.display(), picked[from..].join("\n")));
            }
        }
        out
    }

    /// Posts a server action; returns the HTTP status.
    pub async fn action(&self, id: &str, body: Value) -> (u16, Value) {
        self.nova(reqwest::Method::POST, &format!("/servers/{id}/action"), Some(body), "2.88").await
    }

    /// Deletes a server and waits until it is gone.
    pub async fn delete_server(&self, id: &str, timeout: Duration) {
        let fault_before = self.server(id).await.map(|s| s["fault"]["created"].clone()).unwrap_or_default();
        let (status, v) = self.nova(reqwest::Method::DELETE, &format!("/servers/{id}"), None, "2.88").await;
        assert!(status == 204 || status == 404, "delete {id}: {status} {v}");
        let started = Instant::now();
        while let Some(s) = self.server(id).await {
            // A delete that failed leaves the server in ERROR with a new
            // fault (and task_state deleting): say why now, not time out.
            let failed = s["status"] == "ERROR" && !s["fault"].is_null() && s["fault"]["created"] != fault_before;
            assert!(!failed, "deleting server {id} failed: {}", s["fault"]);
            assert!(started.elapsed() < timeout, "server {id} still there after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The instance actions of a server, newest first, with their events.
    pub async fn actions(&self, id: &str) -> Vec<Value> {
        let (_, v) = self.nova(reqwest::Method::GET, &format!("/servers/{id}/os-instance-actions"), None, "2.88").await;
        let mut out = Vec::new();
        for a in v["instanceActions"].as_array().cloned().unwrap_or_default() {
            let req = a["request_id"].as_str().unwrap_or_default();
            let (_, d) = self
                .nova(reqwest::Method::GET, &format!("/servers/{id}/os-instance-actions/{req}"), None, "2.88")
                .await;
            out.push(d["instanceAction"].clone());
        }
        out
    }
}

/// This service running as a compute host of a control plane.
pub struct ComputeHost {
    pub name: String,
    /// Environment for the service (e.g. OVS_RUNDIR of the test's OVS).
    env: Vec<(String, String)>,
    pub conf: PathBuf,
    pub state: PathBuf,
    child: Option<tokio::process::Child>,
    pub log: PathBuf,
}

impl ComputeHost {
    /// Writes the host's nova.conf from the control plane's template.
    pub fn configure(cloud: &Cloud, name: &str, extra: &str) -> ComputeHost {
        let state = std::env::temp_dir().join(format!("nd-it-{name}"));
        std::fs::create_dir_all(&state).unwrap();
        let template = std::fs::read_to_string(cloud.var("ND_COMPUTE_CONF_TEMPLATE")).unwrap();
        let conf_text = template.replace("@HOST@", name).replace("@STATE_PATH@", &state.display().to_string());
        // Containers overcommit CPU well; tests boot tens of 1-vCPU servers
        // on a 2-core machine, so the host reports a generous ratio.
        let conf_text = conf_text.replacen("[DEFAULT]\n", "[DEFAULT]\ncpu_allocation_ratio = 64.0\n", 1);
        let conf = state.join("nova.conf");
        std::fs::write(&conf, format!("{conf_text}\n{extra}\n")).unwrap();
        let env = cloud
            .env
            .get("OVS_RUNDIR")
            .filter(|v| !v.is_empty())
            .map(|v| vec![("OVS_RUNDIR".to_string(), v.clone())])
            .unwrap_or_default();
        ComputeHost { name: name.into(), env, conf, log: state.join("nova-docker.log"), state, child: None }
    }

    /// Configures and starts a host, then waits until Nova has it up and
    /// mapped and Placement has its inventory (os-services shows the host
    /// up before its provider has inventory: a boot scheduled in between
    /// finds no valid host).
    pub async fn start(cloud: &Cloud, name: &str, extra: &str) -> ComputeHost {
        let mut h = Self::configure(cloud, name, extra);
        h.spawn();
        h.wait_up(cloud, Duration::from_secs(60)).await;
        cloud.map_host(name).await;
        cloud.wait_inventory(name, Duration::from_secs(60)).await;
        h
    }

    /// Sets an environment variable of the service (before `spawn`); it
    /// wins over the defaults, e.g. `RUST_LOG`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["serve", "--config-file"])
            .arg(&self.conf)
            .env("RUST_LOG", "info,nova_docker=debug,lapin=warn")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nova-docker starts");
        self.child = Some(child);
    }

    /// Waits until os-services reports the host up.
    pub async fn wait_up(&self, cloud: &Cloud, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(s) = cloud.compute_service(&self.name).await
                && s["state"] == "up"
            {
                return;
            }
            assert!(started.elapsed() < timeout, "{} never came up; log: {}", self.name, self.log_text());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM and wait (graceful shutdown); returns the exit status.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        tokio::time::timeout(Duration::from_secs(90), child.wait()).await.ok().and_then(Result::ok)
    }

    /// Waits for the process to exit by itself (after a signal the test
    /// sent); its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        tokio::time::timeout(timeout, child.wait()).await.ok().and_then(Result::ok)
    }

    /// The service's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ComputeHost {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        // Logs stay for a failed test; a passing one leaves nothing. A failed
        // test also prints the host's warnings: CI keeps only the output.
        if std::thread::panicking() {
            let text = self.log_text();
            let worrying: Vec<&str> =
                text.lines().filter(|l| l.contains(" WARNING ") || l.contains(" ERROR ")).collect();
            let tail = &worrying[worrying.len().saturating_sub(40)..];
            eprintln!("{}: last warnings and errors of {}:\n{}", self.name, self.log.display(), tail.join("\n"));
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
        // Whatever the test left behind on Docker goes with it.
        let filter = format!("label=nova.host={}", self.name);
        if let Ok(out) =
            std::process::Command::new("docker").args(["ps", "-aq", "--no-trunc", "--filter", &filter]).output()
        {
            let ids: Vec<String> =
                String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&ids).output();
                // And their netns entries, which would keep the namespaces alive.
                for id in &ids {
                    let _ = std::process::Command::new("ip").args(["netns", "delete", id]).output();
                }
            }
        }
    }
}

/// `--property k=v` for each property; `--visibility V` passes through.
fn image_import_args(props: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = props.iter();
    while let Some(p) = it.next() {
        if *p == "--visibility" {
            out.push(p.to_string());
            out.push(it.next().expect("--visibility takes a value").to_string());
        } else {
            out.extend(["--property".to_string(), p.to_string()]);
        }
    }
    out
}

/// A fresh host name for one test.
pub fn host_name(test: &str) -> String {
    common::unique(&format!("nd-{test}"))
}
