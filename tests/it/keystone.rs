//! The host and its CLI in a Keystone cloud (the control planes'
//! Keystone, `tests/env/controlplane.sh`): keystoneauth's options as a
//! deployment writes them (ids, TLS with a CA of its own), the CLI's
//! OpenStack-style authentication, and tenants' images fetched with the
//! tenant's own token.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cloud::{Cloud, ComputeHost, Tenant, host_name};
use crate::common::{self, Release, wait_for};

const T: Duration = Duration::from_secs(120);

/// A request to Keystone (v3) with `token`; status and body.
async fn keystone(
    cloud: &Cloud,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", cloud.var("ND_KEYSTONE"));
    let mut req = reqwest::Client::new().request(method, &url).header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.timeout(Duration::from_secs(60)).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A request to Glance with `token`; status and body. A request that could
/// not be sent is tried again (twice): a busy Glance worker may drop one.
async fn glance(cloud: &Cloud, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", cloud.var("ND_GLANCE"));
    let mut attempt = 0;
    loop {
        let mut req = reqwest::Client::new().request(method.clone(), &url).header("X-Auth-Token", token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        match req.timeout(Duration::from_secs(60)).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                return (status, resp.json().await.unwrap_or(Value::Null));
            }
            Err(e) if attempt < 2 => {
                eprintln!("{method} {url}: {e:?}: trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{url}: {e:?}"),
        }
    }
}

/// `[section]` of a nova.conf text without the lines starting with one of `keys`.
fn without(text: &str, section: &str, keys: &[&str]) -> String {
    let mut current = String::new();
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with('[') {
            current = l.to_string();
        }
        if !(current == format!("[{section}]") && keys.iter().any(|k| l.starts_with(k))) {
            out.push(l);
        }
    }
    out.join("\n") + "\n"
}

/// `nova-docker image import` with only the given environment (plus PATH).
async fn import(conf: &Path, name: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nova-docker"))
            .args(["image", "import", "nd-busybox:latest", "--name", name, "--config-file"])
            .arg(conf)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("image import finished in time")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A compute nova.conf of this cloud whose `[glance]` has no endpoint: the
/// catalog names Glance, as in a usual deployment.
fn catalog_conf(cloud: &Cloud, name: &str) -> (ComputeHost, PathBuf) {
    let host = ComputeHost::configure(cloud, name, "");
    let text = std::fs::read_to_string(&host.conf).unwrap();
    let conf = host.state.join("catalog.conf");
    std::fs::write(&conf, without(&text, "glance", &["endpoint_override", "api_servers"])).unwrap();
    (host, conf)
}

/// The CLI authenticates like every OpenStack CLI: a cloud of clouds.yaml
/// (a tenant's member), the OS_* variables with domains by id, and, with
/// nothing usable, one sentence saying what to set. Glance comes from the
/// login's catalog, and the images belong to the caller's project.
#[tokio::test]
async fn cli_authenticates_like_openstack_clis() {
    let cloud = Cloud::get(Release::Newest);
    let (_host, conf) = catalog_conf(&cloud, &host_name("cliauth"));
    let clouds = cloud.var("OS_CLIENT_CONFIG_FILE");
    let name_a = common::unique("nd-cli-a");
    let (ok, id_a, err) =
        import(&conf, &name_a, &[("OS_CLOUD", "nd-newest-tenant-a"), ("OS_CLIENT_CONFIG_FILE", clouds)]).await;
    assert!(ok, "OS_CLOUD: {err}");
    let name_b = common::unique("nd-cli-b");
    let password = cloud.var("ND_MEMBER_PASSWORD").to_string();
    let (ok, id_b, err) = import(
        &conf,
        &name_b,
        &[
            ("OS_AUTH_URL", cloud.var("ND_KEYSTONE")),
            ("OS_USERNAME", cloud.var("ND_MEMBER_B")),
            ("OS_PASSWORD", &password),
            ("OS_PROJECT_NAME", cloud.var("ND_TENANT_B")),
            ("OS_USER_DOMAIN_ID", "default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", cloud.var("ND_REGION")),
        ],
    )
    .await;
    assert!(ok, "OS_* variables: {err}");
    let admin = cloud.var("ND_TOKEN").to_string();
    for (id, tenant) in [(&id_a, "nd-tenant-a"), (&id_b, "nd-tenant-b")] {
        let (status, img) = glance(&cloud, &admin, reqwest::Method::GET, &format!("/v2/images/{id}"), None).await;
        assert_eq!(status, 200, "{img}");
        assert_eq!(img["owner"].as_str(), Some(cloud.project_id(tenant).as_str()), "{img}");
        assert_eq!(img["status"], "active", "{img}");
    }
    let (ok, _, err) = import(&conf, &common::unique("nd-cli-none"), &[]).await;
    assert!(!ok);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains("no OpenStack credentials: set OS_CLOUD"), "{err}");
    assert_eq!(last.matches(". ").count(), 0, "one sentence: {last}");
    for id in [&id_a, &id_b] {
        glance(&cloud, &admin, reqwest::Method::DELETE, &format!("/v2/images/{id}"), None).await;
    }
}

/// A TLS-terminating proxy (socat) with a certificate of a test CA in
/// front of the control plane's Keystone; stopped on drop.
struct TlsKeystone {
    dir: PathBuf,
    child: std::process::Child,
    url: String,
}

impl TlsKeystone {
    fn start(cloud: &Cloud) -> TlsKeystone {
        let dir = std::env::temp_dir().join(common::unique("nd-tls-keystone"));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=nd-test-ca",
        ]);
        sh(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        sh(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = cloud.var("ND_KEYSTONE").trim_start_matches("http://").split('/').next().unwrap().to_string();
        let child = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ))
            .arg(format!("TCP:{target}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("socat runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "socat does not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsKeystone { url: format!("https://127.0.0.1:{port}/v3"), child, dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TlsKeystone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host logs in as a deployment's nova.conf has it: Keystone over TLS
/// with the deployment's own CA (`cafile`), the user's domain and the
/// project by id, endpoints from the catalog. Without the CA it does not
/// trust that Keystone, and says so.
#[tokio::test]
async fn host_logs_in_over_tls_with_ids() {
    let cloud = Cloud::get(Release::Newest);
    let tls = TlsKeystone::start(&cloud);
    let (status, v) =
        keystone(&cloud, cloud.var("ND_TOKEN"), reqwest::Method::GET, "/projects?name=service", None).await;
    assert_eq!(status, 200, "{v}");
    let service = v["projects"][0]["id"].as_str().expect("project service").to_string();
    let section = |name: &str, cafile: &str| {
        format!("[{name}]\nauth_url = {}\nuser_domain_id = default\nproject_id = {service}\n{cafile}\n", tls.url)
    };
    let ca = format!("cafile = {}", tls.ca().display());
    let extra = format!("{}{}", section("placement", &ca), section("neutron", &ca));
    let name = host_name("kstls");
    let mut host = ComputeHost::start(&cloud, &name, &extra).await;
    cloud.wait_provider(&name, Duration::from_secs(60)).await;
    host.stop().await;

    // the same without the CA: Keystone's certificate is not trusted
    let name = host_name("kstlsno");
    let mut host =
        ComputeHost::configure(&cloud, &name, &format!("{}{}", section("placement", ""), section("neutron", "")));
    host.spawn();
    wait_for("the host to report the untrusted certificate", T, async || {
        let log = host.log_text();
        log.contains("keystone") && (log.contains("certificate") || log.contains("UnknownIssuer"))
    })
    .await;
    assert!(cloud.provider(&name).await.is_none(), "no provider without a trusted Keystone");
    host.stop().await;
}

/// Glance downloads for a boot use the booting user's token (from the RPC
/// context), as Nova does. Tenant A's private image boots for A on this
/// host. Tenant B's boot of another private image of A, accepted by the
/// API while A shared it, is fetched by the host with B's token after A
/// stopped sharing it: Glance refuses, and the boot fails.
#[tokio::test]
async fn a_tenants_private_image_is_fetched_with_the_tenants_token() {
    let cloud = Cloud::get(Release::Newest);
    let name = host_name("ksimg");
    let mut host = ComputeHost::start(&cloud, &name, "").await;
    let clouds = cloud.var("OS_CLIENT_CONFIG_FILE").to_string();
    let as_a = [("OS_CLOUD", "nd-newest-tenant-a"), ("OS_CLIENT_CONFIG_FILE", clouds.as_str())];
    let (ok, booted, err) = import(&host.conf, &common::unique("nd-private-a"), &as_a).await;
    assert!(ok, "{err}");
    let (ok, shared, err) = import(&host.conf, &common::unique("nd-shared-a"), &as_a).await;
    assert!(ok, "{err}");
    let (token_a, token_b) = (cloud.tenant_token(Tenant::A), cloud.tenant_token(Tenant::B));
    let admin = cloud.var("ND_TOKEN").to_string();
    for id in [&booted, &shared] {
        let (_, img) = glance(&cloud, &admin, reqwest::Method::GET, &format!("/v2/images/{id}"), None).await;
        assert_ne!(img["visibility"], "public", "{img}");
    }

    // A boots its own private image here.
    let id = cloud.create_server_as(&token_a, "ks-own", &booted, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    cloud.delete_server(&id, T).await;

    // A shares the other image with B, B accepts; the host is down.
    let project_b = cloud.project_id("nd-tenant-b");
    let (status, v) = glance(
        &cloud,
        &token_a,
        reqwest::Method::POST,
        &format!("/v2/images/{shared}/members"),
        Some(json!({"member": project_b})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = glance(
        &cloud,
        &token_b,
        reqwest::Method::PUT,
        &format!("/v2/images/{shared}/members/{project_b}"),
        Some(json!({"status": "accepted"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    host.stop().await;
    let id = cloud.create_server_as(&token_b, "ks-other", &shared, &name, "42").await;
    // the API accepted B's boot; A stops sharing before this host runs it
    let (status, v) =
        glance(&cloud, &token_a, reqwest::Method::DELETE, &format!("/v2/images/{shared}/members/{project_b}"), None)
            .await;
    assert_eq!(status, 204, "{v}");
    host.spawn();
    let s = cloud.wait_status(&id, "ERROR", T).await;
    let fault = s["fault"].to_string();
    assert!(fault.contains("404") || fault.to_lowercase().contains("not found"), "{fault}");
    let cached =
        std::process::Command::new("docker").args(["images", "-q", &format!("glance/{shared}")]).output().unwrap();
    assert!(String::from_utf8_lossy(&cached.stdout).trim().is_empty(), "B's boot loaded A's image");
    cloud.delete_server(&id, T).await;
    host.stop().await;
    for img in [&booted, &shared] {
        glance(&cloud, &admin, reqwest::Method::DELETE, &format!("/v2/images/{img}"), None).await;
    }
}

/// Another Keystone of the newest control plane, on the same database and
/// fernet keys, whose tokens live `lifetime` seconds: what it issues every
/// service validates. Stopped on drop (or by `stop`, for an outage).
struct ShortKeystone {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
    conf: PathBuf,
    gunicorn: String,
    pylib: String,
}

impl ShortKeystone {
    fn start(cloud: &Cloud, lifetime: u32) -> ShortKeystone {
        let dir = std::env::temp_dir().join(common::unique("nd-short-keystone"));
        std::fs::create_dir_all(&dir).unwrap();
        let base = std::fs::read_to_string(cloud.var("ND_KEYSTONE_CONF")).unwrap();
        let conf = dir.join("keystone.conf");
        let text = base
            .replace(
                &format!("expiration = {}", base.split("expiration = ").nth(1).and_then(|r| r.lines().next()).unwrap()),
                &format!("expiration = {lifetime}"),
            )
            .replace("log_file = ", &format!("log_file = {}/keystone.log\n# was ", dir.display()));
        std::fs::write(&conf, text).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut k = ShortKeystone {
            dir,
            port,
            child: None,
            conf,
            gunicorn: cloud.var("ND_KEYSTONE_GUNICORN").to_string(),
            pylib: cloud.var("ND_PYLIB").to_string(),
        };
        k.resume();
        k
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.port)
    }

    /// Starts it (again) and waits until it answers.
    fn resume(&mut self) {
        let child = std::process::Command::new(&self.gunicorn)
            .args(["--no-control-socket", "--workers", "1", "--threads", "4", "--bind"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("nd_keystone_wsgi:application")
            .env("OS_KEYSTONE_CONFIG_FILES", &self.conf)
            .env("PYTHONPATH", &self.pylib)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("gunicorn.log")).unwrap())
            .spawn()
            .expect("gunicorn runs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "5", &self.url()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the short-lived Keystone did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A Keystone outage: the process is gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ShortKeystone {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A project-scoped token of `user` from the Keystone at `url`.
async fn token_from(url: &str, user: &str, password: &str, project: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password, "domain": {"id": "default"}}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    let resp = reqwest::Client::new().post(format!("{url}/auth/tokens")).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "token from {url}: {}", resp.status());
    resp.headers()["X-Subject-Token"].to_str().unwrap().to_string()
}

/// Whether Keystone still takes `token` as valid.
async fn valid(cloud: &Cloud, token: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}/auth/tokens", cloud.var("ND_KEYSTONE")))
        .header("X-Auth-Token", cloud.var("ND_TOKEN"))
        .header("X-Subject-Token", token)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// `[service_user] send_service_user_token`: a snapshot whose upload starts
/// after the user's token expired (the host was paused, SIGSTOP, from the
/// user's request until the token's expiry) still completes, because a
/// service token rides along; the same without the service token is
/// refused by Glance.
#[tokio::test]
async fn a_service_token_carries_a_snapshot_past_the_users_token() {
    let cloud = Cloud::get(Release::Newest);
    let short = ShortKeystone::start(&cloud, 20);
    let image = {
        let setup = ComputeHost::configure(&cloud, &host_name("kssetup"), "");
        cloud.public_busybox_image(&setup.conf).await
    };
    let service_user = format!(
        "[service_user]\nsend_service_user_token = true\nauth_url = {}\nusername = nova\npassword = {}\n\
         project_name = service\n",
        cloud.var("ND_KEYSTONE"),
        cloud.var("ND_SERVICE_PASSWORD")
    );
    let (member, project, password) = (
        cloud.var("ND_MEMBER_A").to_string(),
        cloud.var("ND_TENANT_A").to_string(),
        cloud.var("ND_MEMBER_PASSWORD").to_string(),
    );
    for with_service_token in [true, false] {
        let name = host_name(if with_service_token { "kssvc" } else { "ksnosvc" });
        let extra = if with_service_token { service_user.as_str() } else { "" };
        let mut host = ComputeHost::start(&cloud, &name, extra).await;
        let token = token_from(&short.url(), &member, &password, &project).await;
        let id = cloud.create_server_as(&token, "ks-snap", &image, &name, "42").await;
        cloud.wait_status(&id, "ACTIVE", T).await;
        let pid = nix::unistd::Pid::from_raw(host.pid().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // a fresh short token: valid when the API takes the snapshot...
        let token = token_from(&short.url(), &member, &password, &project).await;
        let snap = common::unique("nd-ks-snap");
        let (status, v) = cloud
            .nova_as(
                &token,
                reqwest::Method::POST,
                &format!("/servers/{id}/action"),
                Some(json!({"createImage": {"name": snap}})),
                "2.88",
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let snap_id = v["image_id"].as_str().expect("image_id").to_string();
        // ...expired when the host, back, uploads it
        wait_for("the user's token to expire", Duration::from_secs(60), async || !valid(&cloud, &token).await).await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        let admin = cloud.var("ND_TOKEN").to_string();
        let image_status = async || {
            let (status, img) =
                glance(&cloud, &admin, reqwest::Method::GET, &format!("/v2/images/{snap_id}"), None).await;
            if status == 404 { "deleted".to_string() } else { img["status"].as_str().unwrap_or_default().to_string() }
        };
        // the snapshot ends (task state cleared), with an image or without
        wait_for("the snapshot to end", T, async || {
            cloud.server(&id).await.is_some_and(|s| s["OS-EXT-STS:task_state"].is_null())
        })
        .await;
        let status = image_status().await;
        if with_service_token {
            assert_eq!(status, "active", "the upload with an expired user token and a service token");
        } else {
            assert_ne!(status, "active", "Glance took an expired token without a service token");
            assert!(host.log_text().contains("answered 401"), "the refusal is in the host's log");
        }
        cloud.wait_status(&id, "ACTIVE", T).await;
        cloud.delete_server(&id, T).await;
        host.stop().await;
        glance(&cloud, &admin, reqwest::Method::DELETE, &format!("/v2/images/{snap_id}"), None).await;
    }
}

/// The host's own tokens (Placement, Neutron, the service token) from a
/// Keystone whose tokens live 20 s: renewed before they expire (no 401 in
/// minutes of resource updates; the single retry after a 401 is
/// `auth::tests::a_401_is_answered_by_one_new_login_and_one_retry`: the
/// services' token caches make a revocation invisible here for minutes).
/// Then a Keystone outage: a boot that needs a new token (the service
/// token for Glance) fails with a fault naming Keystone; once Keystone is
/// back the host boots again.
#[tokio::test]
async fn host_tokens_are_renewed_and_a_keystone_outage_fails_a_boot_clearly() {
    let cloud = Cloud::get(Release::Newest);
    let mut short = ShortKeystone::start(&cloud, 20);
    let admin = cloud.var("ND_TOKEN").to_string();
    // a user of the host's own
    let user = common::unique("nd-ks-host");
    let password = "nd-ks-host-secret";
    let (status, v) = keystone(
        &cloud,
        &admin,
        reqwest::Method::POST,
        "/users",
        Some(json!({"user": {"name": user, "password": password, "domain_id": "default"}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let user_id = v["user"]["id"].as_str().unwrap().to_string();
    let (_, v) = keystone(&cloud, &admin, reqwest::Method::GET, "/projects?name=service", None).await;
    let service = v["projects"][0]["id"].as_str().unwrap().to_string();
    for role in ["admin", "service"] {
        let (_, r) = keystone(&cloud, &admin, reqwest::Method::GET, &format!("/roles?name={role}"), None).await;
        let role_id = r["roles"][0]["id"].as_str().unwrap().to_string();
        let (status, v) = keystone(
            &cloud,
            &admin,
            reqwest::Method::PUT,
            &format!("/projects/{service}/users/{user_id}/roles/{role_id}"),
            None,
        )
        .await;
        assert_eq!(status, 204, "{v}");
    }
    let login = |section: &str| {
        format!(
            "[{section}]\nauth_url = {}\nusername = {user}\npassword = {password}\nproject_name = service\n",
            short.url()
        )
    };
    let extra = format!(
        "[DEFAULT]\nupdate_resources_interval = 2\n{}{}{}send_service_user_token = true\n",
        login("placement"),
        login("neutron"),
        login("service_user")
    );
    let name = host_name("ksrenew");
    let mut host = ComputeHost::configure(&cloud, &name, &extra);
    host.spawn();
    host.wait_up(&cloud, Duration::from_secs(60)).await;
    cloud.map_host(&name).await;
    // three lifetimes of resource updates: several logins, never a 401
    wait_for("four Keystone logins", Duration::from_secs(180), async || {
        host.log_text().matches("logged in to Keystone").count() >= 4
    })
    .await;
    assert!(!host.log_text().contains("token refused (401)"), "a token was used past its renewal time");

    let image = cloud.public_busybox_image(&host.conf).await;
    let id = cloud.create_server(&common::unique("ks-renewed"), &image, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    cloud.delete_server(&id, T).await;

    // the outage: once every token issued before it is due (a lifetime
    // later) and the host has met the dead Keystone, a boot that needs
    // Glance (an image this host has not loaded: the service token is
    // needed) fails clearly. (A boot from a loaded image needs no token.)
    let fresh = cloud
        .docker_image_in_glance(
            &host.conf,
            "nd-busybox:latest",
            &common::unique("nd-ks-outage"),
            &["--visibility", "public"],
        )
        .await;
    short.stop();
    let started = std::time::Instant::now();
    let dead = format!("127.0.0.1:{}", short.port);
    wait_for(
        "the host to meet the dead Keystone, a token lifetime into the outage",
        Duration::from_secs(120),
        async || {
            let log = host.log_text();
            started.elapsed() > Duration::from_secs(20)
                && log.lines().any(|l| l.contains(&dead) && l.contains("Connection refused"))
        },
    )
    .await;
    let id = cloud.create_server(&common::unique("ks-outage"), &fresh, &name, "42").await;
    let s = cloud.wait_status(&id, "ERROR", Duration::from_secs(180)).await;
    let details = s["fault"]["details"].as_str().unwrap_or_default().to_string()
        + s["fault"]["message"].as_str().unwrap_or_default();
    assert!(details.to_lowercase().contains("keystone"), "the fault names Keystone: {}", s["fault"]);
    println!("boot failed {:?} into the outage: {}", started.elapsed(), s["fault"]);
    cloud.delete_server(&id, T).await;
    short.resume();
    let id = cloud.create_server(&common::unique("ks-back"), &fresh, &name, "42").await;
    cloud.wait_status(&id, "ACTIVE", T).await;
    cloud.delete_server(&id, T).await;
    host.stop().await;
    glance(&cloud, &admin, reqwest::Method::DELETE, &format!("/v2/images/{fresh}"), None).await;
    keystone(&cloud, &admin, reqwest::Method::DELETE, &format!("/users/{user_id}"), None).await;
}
