//! How `nova-docker image import` / `fetch` authenticate when `[glance]`
//! uses the caller's token (Nova's default): like every OpenStack CLI, from
//! `OS_CLOUD` and clouds.yaml, from `OS_AUTH_URL` / `OS_USERNAME` /
//! `OS_PASSWORD` / `OS_PROJECT_NAME` and the domain variables, or from
//! `OS_TOKEN`. A login also brings the catalog, so Glance is found there
//! unless nova.conf names it. clouds.yaml is read with `yaml-rust2` (the
//! YAML parser the `config` crate itself uses), directly: through `config`
//! every key is lowercased, and openstacksdk's cloud names keep their case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::auth::{auth_request, error_chain, service_http_client, shown_url};
use crate::config::keystone::{Domain, KeystoneAuth, Method, Scope, TlsSettings, User};

/// What to set when nothing usable is given: one sentence.
pub const NO_CREDENTIALS: &str = "no OpenStack credentials: set OS_CLOUD (a cloud of clouds.yaml), or OS_AUTH_URL, \
     OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME (and the domain variables if not Default), or OS_TOKEN";

/// A CLI authentication problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CliAuthError {
    /// No `OS_CLOUD`, `OS_AUTH_URL` or `OS_TOKEN`: the message lists what
    /// to set ([`NO_CREDENTIALS`]).
    #[error("{NO_CREDENTIALS}")]
    Nothing,
    /// Some credentials are given but not enough or not usable (a missing
    /// variable, an unsupported auth type, an unreadable or unpaired TLS
    /// file); the message names what to set or fix.
    #[error("{0}")]
    Incomplete(String),
    /// `OS_CLOUD` is set but clouds.yaml is absent, unreadable, not YAML, or
    /// has no such cloud.
    #[error("clouds.yaml: {0}")]
    CloudsYaml(String),
    /// Keystone could not be reached, refused the login, or did not accept
    /// the given token.
    #[error("Keystone at {url}: {detail}")]
    Keystone {
        /// The Keystone URL called, without credentials.
        url: String,
        /// Why it failed (the connection error, or the status and
        /// Keystone's message).
        detail: String,
    },
}

/// Where and how the CLI logs in, as read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub enum CliAuth {
    /// A token given as it is (`OS_TOKEN`); with `OS_AUTH_URL`, the catalog
    /// is read from Keystone with it.
    Token {
        /// The token sent as `X-Auth-Token`.
        token: String,
        /// Keystone's URL, to read the catalog with the token; without it
        /// Glance must be named in nova.conf.
        auth_url: Option<String>,
    },
    /// A Keystone login (password or application credential).
    Login(KeystoneAuth),
}

/// Where endpoints are looked up, and over which TLS settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CliCloud {
    /// `OS_REGION_NAME` or the cloud's `region_name`: replaces `[glance]
    /// region_name` for the catalog lookup.
    pub region_name: Option<String>,
    /// `OS_INTERFACE` or the cloud's `interface` (`public`, `internalURL`
    /// ...): replaces `[glance] valid_interfaces`.
    pub interface: Option<String>,
    /// `OS_CACERT`/`OS_CERT`/`OS_KEY`/`OS_INSECURE` or the cloud's
    /// `cacert`/`cert`/`key`/`verify`: used towards Keystone, and towards
    /// Glance when any is set.
    pub tls: TlsSettings,
}

/// A token and the service catalog that goes with it (empty when unknown).
pub struct Session {
    /// The token Glance is called with, as the caller's own.
    pub token: String,
    /// Keystone's catalog entries, where Glance's endpoint is looked up.
    pub catalog: Vec<Value>,
}

/// keystoneauth-style options (`auth_url`, `username`, ...) to a login.
fn login_from(opts: &BTreeMap<String, String>, auth_type: &str) -> Result<CliAuth, CliAuthError> {
    let get = |k: &str| opts.get(k).filter(|v| !v.is_empty()).cloned();
    let missing = |what: &str| CliAuthError::Incomplete(format!("{what} must be set as well ({NO_CREDENTIALS})"));
    if matches!(auth_type, "token" | "v3token" | "admin_token") {
        let token = get("token").ok_or_else(|| missing("the token (OS_TOKEN)"))?;
        return Ok(CliAuth::Token { token, auth_url: get("auth_url") });
    }
    let auth_url = get("auth_url").ok_or_else(|| missing("OS_AUTH_URL (auth_url)"))?;
    let default_domain = || match (get("default_domain_id"), get("default_domain_name")) {
        (Some(id), _) => Domain::Id(id),
        (None, Some(name)) => Domain::Name(name),
        // openstackclient's OS_DEFAULT_DOMAIN default: the domain with id "default"
        (None, None) => Domain::Id("default".into()),
    };
    let domain = |id: &str, name: &str| match (get(id), get(name)) {
        (Some(id), _) => Domain::Id(id),
        (None, Some(name)) => Domain::Name(name),
        (None, None) => default_domain(),
    };
    let user = match (get("user_id"), get("username")) {
        (Some(id), _) => Some(User::Id(id)),
        (None, Some(name)) => Some(User::Name { name, domain: domain("user_domain_id", "user_domain_name") }),
        (None, None) => None,
    };
    let (method, scope) = match auth_type {
        "v3applicationcredential" => {
            let secret = get("application_credential_secret")
                .ok_or_else(|| missing("OS_APPLICATION_CREDENTIAL_SECRET (application_credential_secret)"))?;
            let (id, name) = (get("application_credential_id"), get("application_credential_name"));
            if id.is_none() && (name.is_none() || user.is_none()) {
                return Err(missing("OS_APPLICATION_CREDENTIAL_ID, or its name with OS_USERNAME,"));
            }
            (Method::ApplicationCredential { id, name, user, secret }, Scope::Credential)
        }
        "password" | "v3password" => {
            let user = user.ok_or_else(|| missing("OS_USERNAME (username)"))?;
            let password = get("password").ok_or_else(|| missing("OS_PASSWORD (password)"))?;
            let scope = if get("system_scope").is_some_and(|s| s == "all") {
                Scope::System
            } else if let Some(id) = get("project_id") {
                Scope::ProjectId(id)
            } else if let Some(name) = get("project_name").or_else(|| get("tenant_name")) {
                Scope::ProjectName { name, domain: domain("project_domain_id", "project_domain_name") }
            } else {
                return Err(missing("OS_PROJECT_NAME (project_name)"));
            };
            (Method::Password { user, password }, scope)
        }
        other => {
            return Err(CliAuthError::Incomplete(format!(
                "auth type {other:?} is not supported (password, v3password, v3applicationcredential or token)"
            )));
        }
    };
    Ok(CliAuth::Login(KeystoneAuth { auth_url, method, scope }))
}

fn tls_from(
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    insecure: bool,
) -> Result<TlsSettings, CliAuthError> {
    let read = |what: &str, p: &str| {
        std::fs::read(p).map_err(|e| CliAuthError::Incomplete(format!("cannot read {what} {p}: {e}")))
    };
    let ca_pem = cacert.map(|p| read("the CA file", &p)).transpose()?;
    let identity_pem = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let mut pem = read("the client certificate", &c)?;
            pem.push(b'\n');
            pem.extend(read("the client key", &k)?);
            Some(pem)
        }
        (Some(_), None) => return Err(CliAuthError::Incomplete("a client certificate needs its key (OS_KEY)".into())),
        (None, Some(_)) => return Err(CliAuthError::Incomplete("a client key needs its certificate (OS_CERT)".into())),
    };
    Ok(TlsSettings { ca_pem, identity_pem, insecure })
}

fn truthy(v: &str) -> bool {
    crate::config::parse_bool(v).unwrap_or(false)
}

/// Reads the CLI's authentication from environment variables (`var`), in
/// the order every OpenStack CLI uses: `OS_CLOUD`, else `OS_AUTH_URL` and
/// the login variables, else `OS_TOKEN` (`OS_AUTH_TOKEN`).
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<(CliAuth, CliCloud), CliAuthError> {
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    if let Some(cloud) = var("OS_CLOUD") {
        return from_clouds_yaml(&cloud, var("OS_CLIENT_CONFIG_FILE").map(PathBuf::from));
    }
    let cloud = CliCloud {
        region_name: var("OS_REGION_NAME"),
        interface: var("OS_INTERFACE"),
        tls: tls_from(var("OS_CACERT"), var("OS_CERT"), var("OS_KEY"), var("OS_INSECURE").is_some_and(|v| truthy(&v)))?,
    };
    let token = var("OS_TOKEN").or_else(|| var("OS_AUTH_TOKEN"));
    let auth_type = var("OS_AUTH_TYPE");
    if var("OS_AUTH_URL").is_none() || auth_type.as_deref().is_some_and(|t| t.ends_with("token")) {
        let Some(token) = token else {
            return Err(if var("OS_AUTH_URL").is_some() {
                CliAuthError::Incomplete(format!("OS_TOKEN must be set as well ({NO_CREDENTIALS})"))
            } else {
                CliAuthError::Nothing
            });
        };
        return Ok((CliAuth::Token { token, auth_url: var("OS_AUTH_URL") }, cloud));
    }
    let mut opts = BTreeMap::new();
    for name in [
        "auth_url",
        "username",
        "user_id",
        "password",
        "project_name",
        "project_id",
        "tenant_name",
        "user_domain_name",
        "user_domain_id",
        "project_domain_name",
        "project_domain_id",
        "system_scope",
        "application_credential_id",
        "application_credential_name",
        "application_credential_secret",
    ] {
        if let Some(v) = var(&format!("OS_{}", name.to_uppercase())) {
            opts.insert(name.to_string(), v);
        }
    }
    if let Some(d) = var("OS_DEFAULT_DOMAIN").or_else(|| var("OS_DEFAULT_DOMAIN_ID")) {
        opts.insert("default_domain_id".into(), d);
    }
    if let Some(d) = var("OS_DEFAULT_DOMAIN_NAME") {
        opts.insert("default_domain_name".into(), d);
    }
    let auth_type = match auth_type {
        Some(t) => t,
        // a token with an auth URL and no user: read the catalog with it
        None if token.is_some() && !opts.contains_key("username") && !opts.contains_key("user_id") => {
            return Ok((CliAuth::Token { token: token.unwrap_or_default(), auth_url: var("OS_AUTH_URL") }, cloud));
        }
        None if opts.contains_key("application_credential_secret") => "v3applicationcredential".into(),
        None => "password".into(),
    };
    Ok((login_from(&opts, &auth_type)?, cloud))
}

/// The files openstacksdk reads clouds.yaml from, in order.
fn clouds_yaml_paths(explicit: Option<PathBuf>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p];
    }
    let mut out = vec![PathBuf::from("clouds.yaml")];
    if let Some(home) = std::env::var_os("HOME") {
        out.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    out.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    out
}

fn yaml_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first document of a YAML text as JSON values, keys exactly as
/// written (cloud names are case-sensitive for openstacksdk; the `config`
/// crate would lowercase them).
fn parse_yaml(text: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.first().map(yaml_to_json).unwrap_or(Value::Null))
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) | Yaml::Real(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((key, yaml_to_json(v)))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Cloud `name` of clouds.yaml (`OS_CLIENT_CONFIG_FILE`, else the usual places).
pub fn from_clouds_yaml(name: &str, explicit: Option<PathBuf>) -> Result<(CliAuth, CliCloud), CliAuthError> {
    let paths = clouds_yaml_paths(explicit);
    let Some(path) = paths.iter().find(|p| p.is_file()) else {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(CliAuthError::CloudsYaml(format!("OS_CLOUD={name} but no clouds.yaml in {}", list.join(", "))));
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| CliAuthError::CloudsYaml(format!("{}: {e}", path.display())))?;
    let doc = parse_yaml(&text).map_err(|e| CliAuthError::CloudsYaml(format!("{}: {e}", path.display())))?;
    let Some(cloud) = doc.get("clouds").and_then(|c| c.get(name)) else {
        return Err(CliAuthError::CloudsYaml(format!("{} has no cloud {name:?} (OS_CLOUD)", path.display())));
    };
    let mut opts = BTreeMap::new();
    if let Some(Value::Object(auth)) = cloud.get("auth") {
        for (k, v) in auth {
            if let Some(s) = yaml_string(v) {
                opts.insert(k.clone(), s);
            }
        }
    }
    let field = |k: &str| cloud.get(k).and_then(yaml_string);
    let auth_type = field("auth_type").unwrap_or_else(|| {
        if opts.contains_key("application_credential_secret") {
            "v3applicationcredential".into()
        } else {
            "password".into()
        }
    });
    let insecure = field("insecure").is_some_and(|v| truthy(&v)) || field("verify").is_some_and(|v| !truthy(&v));
    let cloud_settings = CliCloud {
        region_name: field("region_name"),
        interface: field("interface"),
        tls: tls_from(field("cacert"), field("cert"), field("key"), insecure)?,
    };
    Ok((login_from(&opts, &auth_type)?, cloud_settings))
}

impl CliAuth {
    /// The token, and the catalog when Keystone can give it.
    pub async fn session(&self, cloud: &CliCloud, timeout: Duration) -> Result<Session, CliAuthError> {
        let http = service_http_client(timeout, &cloud.tls);
        match self {
            CliAuth::Token { token, auth_url: None } => Ok(Session { token: token.clone(), catalog: Vec::new() }),
            CliAuth::Token { token, auth_url: Some(base) } => {
                let url = format!("{}/auth/catalog", v3(base));
                let fail = |detail: String| CliAuthError::Keystone { url: shown_url(&url), detail };
                let resp = http
                    .get(&url)
                    .header("X-Auth-Token", token)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| fail(error_chain(&e)))?;
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    return Err(fail(format!("the token is not valid ({status})")));
                }
                let catalog = v["catalog"].as_array().cloned().unwrap_or_default();
                Ok(Session { token: token.clone(), catalog })
            }
            CliAuth::Login(login) => {
                let url = format!("{}/auth/tokens", v3(&login.auth_url));
                let fail = |detail: String| CliAuthError::Keystone { url: shown_url(&url), detail };
                let resp = http
                    .post(&url)
                    .json(&auth_request(login))
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| fail(error_chain(&e)))?;
                let status = resp.status();
                let token = resp.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                match token {
                    Some(token) if status.is_success() => {
                        let catalog = v["token"]["catalog"].as_array().cloned().unwrap_or_default();
                        Ok(Session { token, catalog })
                    }
                    _ => {
                        Err(fail(format!("login refused ({status}): {}", v["error"]["message"].as_str().unwrap_or(""))))
                    }
                }
            }
        }
    }
}

/// The v3 base of an auth URL, with or without its `/v3`.
fn v3(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") { base.to_string() } else { format!("{base}/v3") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn nothing_usable_says_what_to_set_in_one_sentence() {
        let err = from_env(env(&[])).unwrap_err().to_string();
        assert_eq!(err, NO_CREDENTIALS);
        assert!(err.contains("OS_CLOUD") && err.contains("OS_TOKEN") && !err.contains(". "), "{err}");
        let err = from_env(env(&[("OS_AUTH_URL", "http://ks/v3"), ("OS_USERNAME", "u")])).unwrap_err().to_string();
        assert!(err.starts_with("OS_PASSWORD (password) must be set as well"), "{err}");
    }

    #[test]
    fn os_variables_make_a_password_login() {
        let (auth, cloud) = from_env(env(&[
            ("OS_AUTH_URL", "http://ks:5000/v3"),
            ("OS_USERNAME", "demo"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "demo"),
            ("OS_USER_DOMAIN_ID", "default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "RegionOne"),
        ]))
        .unwrap();
        let CliAuth::Login(k) = auth else { panic!("{auth:?}") };
        assert_eq!(k.auth_url, "http://ks:5000/v3");
        assert_eq!(
            k.method,
            Method::Password {
                user: User::Name { name: "demo".into(), domain: Domain::Id("default".into()) },
                password: "pw".into()
            }
        );
        assert_eq!(k.scope, Scope::ProjectName { name: "demo".into(), domain: Domain::Name("Default".into()) });
        assert_eq!(cloud.region_name.as_deref(), Some("RegionOne"));
    }

    #[test]
    fn a_token_alone_or_with_the_auth_url() {
        let (auth, _) = from_env(env(&[("OS_TOKEN", "t")])).unwrap();
        assert_eq!(auth, CliAuth::Token { token: "t".into(), auth_url: None });
        let (auth, _) = from_env(env(&[("OS_AUTH_TOKEN", "t"), ("OS_AUTH_URL", "http://ks/v3")])).unwrap();
        assert_eq!(auth, CliAuth::Token { token: "t".into(), auth_url: Some("http://ks/v3".into()) });
        assert_eq!(v3("http://ks:5000/"), "http://ks:5000/v3");
    }

    #[test]
    fn clouds_yaml_cloud_by_name() {
        let dir = std::env::temp_dir().join(format!("nd-clouds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("clouds.yaml");
        std::fs::write(
            &file,
            "clouds:\n  mine:\n    auth:\n      auth_url: http://ks/v3\n      username: u\n      password: p\n      \
             project_id: p1\n      user_domain_name: D\n    region_name: R\n    interface: internal\n    verify: false\n  \
             App:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://ks/v3\n      \
             application_credential_id: a1\n      application_credential_secret: s\n",
        )
        .unwrap();
        let (auth, cloud) =
            from_env(env(&[("OS_CLOUD", "mine"), ("OS_CLIENT_CONFIG_FILE", file.to_str().unwrap())])).unwrap();
        let CliAuth::Login(k) = auth else { panic!("{auth:?}") };
        assert_eq!(k.scope, Scope::ProjectId("p1".into()));
        assert_eq!(
            k.method,
            Method::Password {
                user: User::Name { name: "u".into(), domain: Domain::Name("D".into()) },
                password: "p".into()
            }
        );
        assert_eq!((cloud.region_name.as_deref(), cloud.interface.as_deref()), (Some("R"), Some("internal")));
        assert!(cloud.tls.insecure);
        // Cloud names keep their case, as openstacksdk reads them.
        let (auth, _) = from_clouds_yaml("App", Some(file.clone())).unwrap();
        let CliAuth::Login(k) = auth else { panic!("{auth:?}") };
        assert_eq!(k.scope, Scope::Credential);
        let err = from_clouds_yaml("nope", Some(file.clone())).unwrap_err().to_string();
        assert!(err.contains("has no cloud \"nope\""), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
