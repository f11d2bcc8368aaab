//! Authenticated HTTP access to OpenStack services (Placement, Glance,
//! Neutron), configured as keystoneauth sections of nova.conf are.
//!
//! A [`ServiceClient`] knows how to get a token (`admin_token`, Keystone v3
//! `password`, the request's own token, or none) and where the service lives
//! (`endpoint_override`, the static endpoint, or the catalog), and builds
//! requests carrying `X-Auth-Token` and the request id. Tokens are cached
//! until shortly before they expire and renewed once on a 401.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::keystone::{Domain, KeystoneAuth, Method, Scope, TlsSettings, User};
use crate::config::{AuthSettings, ServiceSettings};
use crate::rpc::RequestContext;

/// Percent-encodes a value for one URL path segment or query value.
///
/// Ids come from RPC arguments, other services and tenants; put into a URL
/// as they are, `../` or `?` in one would address a different resource
/// (URL parsing resolves dot segments), so every id goes through here.
pub fn url_part(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP-level failure talking to a service.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Neither `endpoint_override`, a static endpoint nor the Keystone
    /// catalog names a URL for the service, so no request can be sent.
    #[error("{service}: no endpoint configured or found in the catalog (set [{section}] endpoint_override)")]
    NoEndpoint {
        /// The service the request was for (`placement`, `glance`, `neutron`).
        service: &'static str,
        /// The nova.conf group where the operator sets the endpoint.
        section: &'static str,
    },
    /// No token could be had: Keystone refused the login or answered
    /// without `X-Subject-Token`, or the section is not configured for
    /// Keystone when a catalog or token was needed.
    #[error("{service}: authentication failed: {detail}")]
    Auth {
        /// The service the token was for.
        service: &'static str,
        /// What Keystone answered (status, user, URL, start of the body),
        /// or why the section cannot log in.
        detail: String,
    },
    /// The request got no HTTP answer (connection refused, TLS, timeout) or
    /// its body could not be read.
    #[error("{service}: {method} {url} failed: {}", error_chain(source))]
    Transport {
        /// The service called (`keystone` for a login).
        service: &'static str,
        /// The HTTP method sent.
        method: String,
        /// The URL called, without credentials (see [`shown_url`]).
        url: String,
        /// reqwest's error; its causes are shown by [`error_chain`].
        source: reqwest::Error,
    },
    /// The service answered with a non-success status; callers match on
    /// [`HttpError::status`] (e.g. 404 or 409) to decide what it means.
    #[error("{service}: {method} {url} answered {status}: {body}")]
    Status {
        /// The service called.
        service: &'static str,
        /// The HTTP method sent.
        method: String,
        /// The URL called, without credentials.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (about 500 bytes), which
        /// carries the service's own explanation.
        body: String,
    },
    /// A success answer whose body is not the JSON expected.
    #[error("{service}: unexpected response to {method} {url}: {detail}")]
    Decode {
        /// The service called.
        service: &'static str,
        /// The HTTP method sent.
        method: String,
        /// The URL called, without credentials.
        url: String,
        /// Why the body could not be decoded.
        detail: String,
    },
}

/// An error and its causes, `outer: inner: root`: reqwest's own message
/// ("error sending request") says nothing of why; the root cause does
/// ("connection refused", "connection closed before message completed").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A URL as errors show it: without a user name or password (an endpoint
/// configured as `http://user:secret@host/` keeps its credentials out of
/// logs and faults).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.cannot_be_a_base() => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                return u.to_string();
            }
            url.to_string()
        }
        // Not a URL with a host: shown as written, less anything before an `@`.
        _ => match url.rsplit_once('@') {
            Some((_, host)) => format!("<credentials>@{host}"),
            None => url.to_string(),
        },
    }
}

impl HttpError {
    /// The HTTP status, when the service answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    /// When to log in again: a minute before the token expires, or after
    /// three quarters of its lifetime when that is shorter than 4 minutes.
    renew_at: Option<DateTime<Utc>>,
    catalog: Vec<Value>,
}

/// When a token issued at `issued` and expiring at `expires` is renewed.
fn renew_at(issued: Option<DateTime<Utc>>, expires: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    let expires = expires?;
    let margin = match issued {
        Some(i) if expires > i => ((expires - i) / 4).min(chrono::Duration::seconds(60)),
        _ => chrono::Duration::seconds(60),
    };
    Some(expires - margin)
}

/// A client for one OpenStack service.
#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    settings: ServiceSettings,
    name: &'static str,
    section: &'static str,
    token: Arc<Mutex<Option<CachedToken>>>,
    /// `[service_user]`'s client (its own TLS settings) and token.
    service_http: Option<reqwest::Client>,
    service_user_token: Arc<Mutex<Option<CachedToken>>>,
}

/// A token of `login`, from `cache` while it has more than a minute left
/// (or a fresh one when `force`, e.g. after a 401).
async fn login_token(
    http: &reqwest::Client,
    login: &KeystoneAuth,
    cache: &Mutex<Option<CachedToken>>,
    timeout: Duration,
    service: &'static str,
    force: bool,
) -> Result<CachedToken, HttpError> {
    let mut cached = cache.lock().await;
    if let Some(t) = cached.as_ref() {
        let fresh = t.renew_at.is_none_or(|r| r > Utc::now());
        if fresh && !force {
            return Ok(t.clone());
        }
    }
    let base = login.auth_url.trim_end_matches('/');
    let url = if base.ends_with("/v3") { format!("{base}/auth/tokens") } else { format!("{base}/v3/auth/tokens") };
    let body = auth_request(login);
    let resp = http.post(&url).json(&body).timeout(timeout).send().await.map_err(|source| HttpError::Transport {
        service: "keystone",
        method: "POST".into(),
        url: shown_url(&url),
        source,
    })?;
    let status = resp.status();
    let token = resp.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let (Some(token), true) = (token, status.is_success()) else {
        return Err(HttpError::Auth {
            service,
            detail: format!(
                "Keystone answered {status} for {} at {}: {}",
                login_name(login),
                shown_url(&url),
                truncate(&text, 300)
            ),
        });
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let time = |k: &str| v["token"][k].as_str().and_then(crate::objects::time::parse);
    let (issued_at, expires_at) = (time("issued_at"), time("expires_at"));
    tracing::debug!(service, login = %login_name(login), expires_at = ?expires_at, "logged in to Keystone");
    let catalog = v["token"]["catalog"].as_array().cloned().unwrap_or_default();
    let t = CachedToken { token, renew_at: renew_at(issued_at, expires_at), catalog };
    *cached = Some(t.clone());
    Ok(t)
}

/// Builds the process's HTTP client: rustls, bounded connect time, pooled.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    client_builder(timeout).build().unwrap_or_else(|_| reqwest::Client::new())
}

/// The HTTP client of a service section, with its TLS settings (`cafile`,
/// `certfile`/`keyfile`, `insecure`). The configuration checked the files
/// already; should the client still not build, it trusts no certificate at
/// all (every TLS request fails, naming the problem) rather than the system's.
pub fn service_http_client(timeout: Duration, tls: &TlsSettings) -> reqwest::Client {
    let mut b = client_builder(timeout);
    if let Some(pem) = &tls.ca_pem {
        b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default());
    }
    if let Some(pem) = &tls.identity_pem
        && let Ok(id) = reqwest::Identity::from_pem(pem)
    {
        b = b.identity(id);
    }
    if tls.insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().unwrap_or_else(|e| {
        tracing::error!(error = %error_chain(&e), "TLS settings unusable: this client trusts no certificate");
        client_builder(timeout).tls_certs_only(Vec::new()).build().unwrap_or_else(|_| reqwest::Client::new())
    })
}

fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(timeout)
        // Below the keep-alive timeouts of the servers OpenStack APIs run
        // under (gunicorn 2 s, Apache 5 s): reusing a connection the server is
        // closing at that moment fails the request.
        .pool_idle_timeout(Duration::from_millis(1500))
        .user_agent(concat!("nova-docker/", env!("CARGO_PKG_VERSION")))
}

fn domain_json(d: &Domain) -> Value {
    match d {
        Domain::Id(id) => json!({"id": id}),
        Domain::Name(name) => json!({"name": name}),
    }
}

fn user_json(u: &User) -> Value {
    match u {
        User::Id(id) => json!({"id": id}),
        User::Name { name, domain } => json!({"name": name, "domain": domain_json(domain)}),
    }
}

/// The body of `POST /v3/auth/tokens` for a login, as keystoneauth sends it.
pub fn auth_request(k: &KeystoneAuth) -> Value {
    let identity = match &k.method {
        Method::Password { user, password } => {
            let mut u = user_json(user);
            u["password"] = json!(password);
            json!({"methods": ["password"], "password": {"user": u}})
        }
        Method::ApplicationCredential { id, name, user, secret } => {
            let mut c = json!({"secret": secret});
            if let Some(id) = id {
                c["id"] = json!(id);
            } else if let Some(name) = name {
                c["name"] = json!(name);
                if let Some(u) = user {
                    c["user"] = user_json(u);
                }
            }
            json!({"methods": ["application_credential"], "application_credential": c})
        }
    };
    let mut auth = json!({"identity": identity});
    match &k.scope {
        Scope::ProjectId(id) => auth["scope"] = json!({"project": {"id": id}}),
        Scope::ProjectName { name, domain } => {
            auth["scope"] = json!({"project": {"name": name, "domain": domain_json(domain)}})
        }
        Scope::System => auth["scope"] = json!({"system": {"all": true}}),
        Scope::Credential => {}
    }
    json!({ "auth": auth })
}

/// Who a login is for, in errors (never the secret).
fn login_name(k: &KeystoneAuth) -> String {
    let user = |u: &User| match u {
        User::Id(id) => format!("user id {id}"),
        User::Name { name, .. } => format!("user {name:?}"),
    };
    match &k.method {
        Method::Password { user: u, .. } => user(u),
        Method::ApplicationCredential { id: Some(id), .. } => format!("application credential {id}"),
        Method::ApplicationCredential { name, .. } => {
            format!("application credential {:?}", name.as_deref().unwrap_or_default())
        }
    }
}

impl ServiceClient {
    /// A client for the service described by `settings` (`name` for messages,
    /// `section` the nova.conf group to point operators to).
    pub fn new(settings: ServiceSettings, name: &'static str, section: &'static str) -> Self {
        let http = service_http_client(settings.timeout, &settings.tls);
        let service_http = settings.service_user.as_ref().map(|su| service_http_client(su.timeout, &su.tls));
        ServiceClient {
            http,
            settings,
            name,
            section,
            token: Default::default(),
            service_http,
            service_user_token: Default::default(),
        }
    }

    /// The service's display name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Per-request timeout from the configuration.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// The underlying HTTP client (for streaming bodies).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn keystone_token(&self, force: bool) -> Result<CachedToken, HttpError> {
        let AuthSettings::Keystone(login) = &self.settings.auth else {
            return Err(HttpError::Auth { service: self.name, detail: "not a Keystone section".into() });
        };
        login_token(&self.http, login, &self.token, self.settings.timeout, self.name, force).await
    }

    /// The `[service_user]` token (X-Service-Token), when configured.
    async fn service_token(&self) -> Result<Option<String>, HttpError> {
        let Some(su) = &self.settings.service_user else { return Ok(None) };
        let http = self.service_http.as_ref().unwrap_or(&self.http);
        Ok(Some(login_token(http, &su.login, &self.service_user_token, su.timeout, "service_user", false).await?.token))
    }

    /// The token to send, if any.
    pub async fn token(&self, ctx: Option<&RequestContext>) -> Result<Option<String>, HttpError> {
        self.token_inner(ctx, false).await
    }

    async fn token_inner(&self, ctx: Option<&RequestContext>, force: bool) -> Result<Option<String>, HttpError> {
        match &self.settings.auth {
            AuthSettings::None => Ok(None),
            AuthSettings::AdminToken { token, .. } => Ok(Some(token.clone())),
            AuthSettings::Keystone(_) => Ok(Some(self.keystone_token(force).await?.token)),
            AuthSettings::User => Ok(ctx.and_then(|c| c.auth_token()).map(str::to_string)),
        }
    }

    /// The service's base URL.
    pub async fn endpoint(&self, ctx: Option<&RequestContext>) -> Result<String, HttpError> {
        if let Some(e) = &self.settings.endpoint_override {
            return Ok(e.trim_end_matches('/').to_string());
        }
        if let AuthSettings::AdminToken { endpoint: Some(e), .. } = &self.settings.auth {
            return Ok(e.trim_end_matches('/').to_string());
        }
        let catalog = match &self.settings.auth {
            AuthSettings::Keystone(_) => self.keystone_token(false).await?.catalog,
            _ => ctx.map(|c| c.service_catalog().to_vec()).unwrap_or_default(),
        };
        find_endpoint(
            &catalog,
            self.settings.service_type,
            &self.settings.valid_interfaces,
            self.settings.region_name.as_deref(),
        )
        .ok_or(HttpError::NoEndpoint { service: self.name, section: self.section })
    }

    /// Sends a request built by `build` (given the base URL), with auth and
    /// request-id headers; retries once with a new token on 401. A request
    /// sending twice is harmless for (GET, PUT, DELETE) is tried again as
    /// the service's [`Retries`](crate::config::Retries) say: a pooled
    /// connection the service closed meanwhile, or a moment of overload, is
    /// not a failure. Returns the response when its status is a success, an
    /// error otherwise.
    pub async fn send(
        &self,
        ctx: Option<&RequestContext>,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HttpError> {
        let url = format!("{}{path}", self.endpoint(ctx).await?);
        let renewable = matches!(self.settings.auth, AuthSettings::Keystone(_));
        let idempotent = matches!(method, reqwest::Method::GET | reqwest::Method::PUT | reqwest::Method::DELETE);
        let retries = self.settings.retries;
        let mut attempt = 0;
        loop {
            let again = idempotent && attempt < retries.attempts;
            let resp = match self.send_with(ctx, &method, &url, false, &build).await {
                Err(e @ HttpError::Transport { .. }) if again => {
                    tracing::info!(error = %e, attempt = attempt + 1, "retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                    continue;
                }
                other => other?,
            };
            let resp = match resp.status().as_u16() {
                401 if renewable => {
                    tracing::info!(service = self.name, url = %shown_url(&url), "token refused (401): logging in again, retrying once");
                    self.send_with(ctx, &method, &url, true, &build).await?
                }
                _ => resp,
            };
            let status = resp.status().as_u16();
            if again && retries.server_errors && matches!(status, 500 | 502 | 503 | 504) {
                tracing::info!(service = self.name, %method, url = %shown_url(&url), status, attempt = attempt + 1, "retrying");
                tokio::time::sleep(retry_delay(attempt)).await;
                attempt += 1;
                continue;
            }
            return self.success(&method, url, resp).await;
        }
    }

    /// Sends a request whose body cannot be replayed (a stream): no retry on
    /// 401. Returns the response when its status is a success.
    pub async fn send_once(
        &self,
        ctx: Option<&RequestContext>,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HttpError> {
        let url = format!("{}{path}", self.endpoint(ctx).await?);
        let resp = self.send_with(ctx, &method, &url, false, build).await?;
        self.success(&method, url, resp).await
    }

    /// One request with the token (a fresh one when `renew`) and request id.
    async fn send_with(
        &self,
        ctx: Option<&RequestContext>,
        method: &reqwest::Method,
        url: &str,
        renew: bool,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HttpError> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(token) = self.token_inner(ctx, renew).await? {
            req = req.header("X-Auth-Token", token);
            // With the user's token, the service token too ([service_user]):
            // the service then accepts the user's even once it has expired.
            if self.settings.auth == AuthSettings::User
                && let Some(service) = self.service_token().await?
            {
                req = req.header("X-Service-Token", service);
            }
        }
        if let Some(id) = ctx.and_then(|c| c.global_request_id().or(c.request_id())) {
            req = req.header("X-OpenStack-Request-ID", id);
        }
        build(req).send().await.map_err(|source| HttpError::Transport {
            service: self.name,
            method: method.to_string(),
            url: shown_url(url),
            source,
        })
    }

    /// The response when its status is a success, else the error with the
    /// start of its body.
    async fn success(
        &self,
        method: &reqwest::Method,
        url: String,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, HttpError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(HttpError::Status {
            service: self.name,
            method: method.to_string(),
            url: shown_url(&url),
            status: status.as_u16(),
            body: truncate(&body, 500),
        })
    }

    /// Sends and decodes a JSON response.
    pub async fn json(
        &self,
        ctx: Option<&RequestContext>,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Value, HttpError> {
        let resp = self.send(ctx, method.clone(), path, build).await?;
        let url = shown_url(resp.url().as_str());
        let text = resp.text().await.map_err(|source| HttpError::Transport {
            service: self.name,
            method: method.to_string(),
            url: url.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| HttpError::Decode {
            service: self.name,
            method: method.to_string(),
            url,
            detail: e.to_string(),
        })
    }
}

/// The pause before retry number `attempt + 1`: 200 ms, doubling, at most 3.2 s.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(200 << attempt.min(4))
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// Finds an endpoint of `service_type` in a Keystone v3 catalog (or the
/// trimmed catalog Nova puts in the request context).
pub fn find_endpoint(
    catalog: &[Value],
    service_type: &str,
    interfaces: &[String],
    region: Option<&str>,
) -> Option<String> {
    let service = catalog.iter().find(|s| s["type"].as_str() == Some(service_type))?;
    let endpoints = service["endpoints"].as_array()?;
    let wanted: Vec<&str> = if interfaces.is_empty() {
        vec!["internal", "public"]
    } else {
        interfaces.iter().map(String::as_str).collect()
    };
    for interface in wanted {
        for e in endpoints {
            let iface = e["interface"].as_str().unwrap_or("public");
            let ep_region = e["region_id"].as_str().or(e["region"].as_str());
            if iface == interface
                && region.is_none_or(|r| ep_region == Some(r))
                && let Some(url) = e["url"].as_str()
            {
                return Some(url.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local HTTP server answering `failures` times 503, then 200 `{}`;
    /// returns its URL and the count of requests it got.
    async fn flaky_server(failures: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = if n < failures { "503 Service Unavailable" } else { "200 OK" };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (url, count)
    }

    fn client(url: &str, retries: crate::config::Retries) -> ServiceClient {
        let settings = ServiceSettings {
            service_type: "image",
            auth: AuthSettings::None,
            endpoint_override: Some(url.to_string()),
            region_name: None,
            valid_interfaces: vec![],
            timeout: Duration::from_secs(5),
            retries,
            tls: Default::default(),
            service_user: None,
        };
        ServiceClient::new(settings, "glance", "glance")
    }

    #[tokio::test]
    async fn idempotent_requests_are_retried_as_configured() {
        use crate::config::Retries;
        use std::sync::atomic::Ordering;
        let glance = |n| Retries { attempts: n, server_errors: true };
        // Two server errors, three retries allowed: the third try answers.
        let (url, count) = flaky_server(2).await;
        client(&url, glance(3)).json(None, reqwest::Method::GET, "/v2/images/x", |r| r).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
        // num_retries = 0: the first 503 is the answer.
        let (url, count) = flaky_server(2).await;
        let e = client(&url, glance(0)).json(None, reqwest::Method::GET, "/v2/images/x", |r| r).await.unwrap_err();
        assert_eq!((e.status(), count.load(Ordering::SeqCst)), (Some(503), 1));
        // Fewer retries than failures: the last 503 is the answer.
        let (url, count) = flaky_server(5).await;
        let e = client(&url, glance(2)).json(None, reqwest::Method::DELETE, "/v2/images/x", |r| r).await.unwrap_err();
        assert_eq!((e.status(), count.load(Ordering::SeqCst)), (Some(503), 3));
        // A POST is never sent twice.
        let (url, count) = flaky_server(2).await;
        let e = client(&url, glance(3)).json(None, reqwest::Method::POST, "/v2/images", |r| r).await.unwrap_err();
        assert_eq!((e.status(), count.load(Ordering::SeqCst)), (Some(503), 1));
        // Placement's and Neutron's retries leave a server error as it is.
        let (url, count) = flaky_server(1).await;
        let e = client(&url, Retries::CONNECTION).json(None, reqwest::Method::GET, "/x", |r| r).await.unwrap_err();
        assert_eq!((e.status(), count.load(Ordering::SeqCst)), (Some(503), 1));
    }

    /// A fake Keystone + service on one port: logins hand out tok-1,
    /// tok-2, ...; GET /thing accepts only `accepted`. Counts both.
    async fn fake_cloud(accepted: &'static str) -> (String, Arc<std::sync::Mutex<(u32, u32)>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(std::sync::Mutex::new((0u32, 0u32)));
        let c = counts.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_lowercase();
                let token =
                    head.lines().find_map(|l| l.strip_prefix("x-auth-token: ")).map(str::trim).map(str::to_string);
                let resp = if head.starts_with("post /v3/auth/tokens") {
                    let n = {
                        let mut c = c.lock().unwrap();
                        c.0 += 1;
                        c.0
                    };
                    let body = r#"{"token": {"issued_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z", "catalog": []}}"#;
                    format!(
                        "HTTP/1.1 201 Created\r\nX-Subject-Token: tok-{n}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    c.lock().unwrap().1 += 1;
                    if token.as_deref() == Some(accepted) {
                        "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"ok\": true}".to_string()
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    }
                };
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        (url, counts)
    }

    fn client_of(url: &str) -> ServiceClient {
        use crate::config::keystone::{Domain, KeystoneAuth, Method, Scope, User};
        let login = KeystoneAuth {
            auth_url: format!("{url}/v3"),
            method: Method::Password {
                user: User::Name { name: "nova".into(), domain: Domain::Name("Default".into()) },
                password: "pw".into(),
            },
            scope: Scope::ProjectName { name: "service".into(), domain: Domain::Name("Default".into()) },
        };
        ServiceClient::new(
            ServiceSettings {
                service_type: "placement",
                auth: AuthSettings::Keystone(login),
                endpoint_override: Some(url.to_string()),
                region_name: None,
                valid_interfaces: Vec::new(),
                timeout: Duration::from_secs(10),
                retries: crate::config::Retries::CONNECTION,
                tls: Default::default(),
                service_user: None,
            },
            "placement",
            "placement",
        )
    }

    #[tokio::test]
    async fn a_401_is_answered_by_one_new_login_and_one_retry() {
        // the first token is refused (revoked), the second accepted
        let (url, counts) = fake_cloud("tok-2").await;
        let v = client_of(&url).json(None, reqwest::Method::GET, "/thing", |b| b).await.unwrap();
        assert_eq!(v, json!({"ok": true}));
        assert_eq!(*counts.lock().unwrap(), (2, 2), "(logins, requests)");
        // refused again after the new login: the 401 is the answer, no loop
        let (url, counts) = fake_cloud("never").await;
        let err = client_of(&url).json(None, reqwest::Method::GET, "/thing", |b| b).await.unwrap_err();
        assert_eq!(err.status(), Some(401), "{err}");
        assert_eq!(*counts.lock().unwrap(), (2, 2), "(logins, requests)");
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0);
        // an hour's token: a minute before; a 20 s one: 5 s before
        assert_eq!(renew_at(t(0), t(3600)), t(3540));
        assert_eq!(renew_at(t(0), t(20)), t(15));
        assert_eq!(renew_at(None, t(3600)), t(3540));
        assert_eq!(renew_at(t(0), None), None);
    }

    #[test]
    fn endpoint_credentials_never_reach_an_error() {
        assert_eq!(shown_url("http://nova:s3cret@glance:9292/v2/images"), "http://glance:9292/v2/images");
        assert_eq!(shown_url("http://glance:9292/v2"), "http://glance:9292/v2");
        assert_eq!(shown_url("glance:9292/x"), "glance:9292/x");
        assert_eq!(shown_url("nova:s3cret@glance/x"), "<credentials>@glance/x");
    }

    #[test]
    fn catalog_lookup_prefers_configured_interfaces_and_region() {
        let catalog = vec![json!({"type": "placement", "endpoints": [
            {"interface": "public", "region_id": "R1", "url": "http://pub/"},
            {"interface": "internal", "region_id": "R2", "url": "http://int2"},
            {"interface": "internal", "region_id": "R1", "url": "http://int1"}]})];
        let ifs = vec!["internal".to_string(), "public".to_string()];
        assert_eq!(find_endpoint(&catalog, "placement", &ifs, Some("R1")).as_deref(), Some("http://int1"));
        assert_eq!(find_endpoint(&catalog, "placement", &["public".into()], None).as_deref(), Some("http://pub"));
        assert_eq!(find_endpoint(&catalog, "image", &ifs, None), None);
    }

    #[test]
    fn ids_cannot_leave_their_url_segment() {
        assert_eq!(url_part("6f1b2c1e-0000-4000-8000-000000000001"), "6f1b2c1e-0000-4000-8000-000000000001");
        assert_eq!(url_part("../../v2/x?y=1&z#"), "%2E%2E%2F%2E%2E%2Fv2%2Fx%3Fy%3D1%26z%23");
        assert_eq!(url_part("CUSTOM_TRAIT"), "CUSTOM_TRAIT");
        let url = reqwest::Url::parse(&format!("http://h/v2/images/{}", url_part("../.."))).unwrap();
        assert_eq!(url.path(), "/v2/images/%2E%2E%2F%2E%2E");
    }
}
