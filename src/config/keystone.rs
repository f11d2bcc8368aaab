//! keystoneauth's options of a service section (`[placement]`, `[glance]`,
//! `[neutron]`): who logs in to Keystone, how, scoped to what, and over
//! which TLS settings, read the way nova-compute's keystoneauth reads them.
//!
//! Every keystoneauth option this host does not implement is refused at
//! start-up with its name ([`UNSUPPORTED`]), never silently ignored: a
//! deployment's nova.conf either works as written or says what to change.

use std::path::{Path, PathBuf};

use super::options::Opt;
use super::{ConfigError, Layered};

/// keystoneauth options (of the plugins and of the session/adapter) that
/// this host does not implement, with what to do instead.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("auth_section", "put the auth options in this section itself"),
    ("trust_id", "trust-scoped tokens are not supported"),
    ("tenant_id", "use project_id (Keystone v3)"),
    ("tenant_name", "use project_name (Keystone v3)"),
    ("domain_id", "domain-scoped tokens are not supported: scope to a project or system_scope = all"),
    ("domain_name", "domain-scoped tokens are not supported: scope to a project or system_scope = all"),
    ("interface", "use valid_interfaces"),
    ("service_name", "endpoints are chosen by service type, region and interface"),
    ("version", "the host speaks each API's version itself"),
    ("min_version", "the host speaks each API's version itself"),
    ("max_version", "the host speaks each API's version itself"),
    ("connect_retries", "the host retries idempotent requests itself"),
    ("connect_retry_delay", "the host retries idempotent requests itself"),
    ("status_code_retries", "the host retries idempotent requests itself"),
    ("status_code_retry_delay", "the host retries idempotent requests itself"),
    ("collect_timing", "not supported"),
    ("split_loggers", "not supported"),
    ("passcode", "multi-factor (TOTP) login is not supported"),
    ("access_rules", "not supported"),
];

/// The interfaces keystoneauth accepts in `valid_interfaces`.
const INTERFACES: &[&str] = &["public", "internal", "admin"];

/// A domain, by id or by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// `*_domain_id`: sent as `{"id": ...}`.
    Id(String),
    /// `*_domain_name` (or keystoneauth's fallback "Default"): sent as
    /// `{"name": ...}`.
    Name(String),
}

/// A user, by id or by name within a domain.
#[derive(Debug, Clone, PartialEq)]
pub enum User {
    /// `user_id`: unique on its own, so no domain is sent.
    Id(String),
    /// `username`: only unique within its domain, so the domain goes with it.
    Name {
        /// The `username` option.
        name: String,
        /// `user_domain_id`/`user_domain_name`, else the default domain.
        domain: Domain,
    },
}

/// What the token is scoped to.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// A project by id.
    ProjectId(String),
    /// A project by name within a domain.
    ProjectName {
        /// The `project_name` option.
        name: String,
        /// `project_domain_id`/`project_domain_name`, else the default domain.
        domain: Domain,
    },
    /// The whole deployment (`system_scope = all`).
    System,
    /// An application credential's own scope.
    Credential,
}

/// How the host proves who it is to Keystone.
#[derive(Clone, PartialEq)]
pub enum Method {
    /// `password` / `v3password`.
    Password {
        /// Who logs in.
        user: User,
        /// The user's password (kept out of `Debug`).
        password: String,
    },
    /// `v3applicationcredential`: by id, or by name with its owner.
    ApplicationCredential {
        /// `application_credential_id`: identifies the credential alone.
        id: Option<String>,
        /// `application_credential_name`: only unique per user, so `user`
        /// is required with it.
        name: Option<String>,
        /// The credential's owner, when set (needed with `name`).
        user: Option<User>,
        /// `application_credential_secret` (kept out of `Debug`).
        secret: String,
    },
}

impl std::fmt::Debug for Method {
    // Neither the password nor the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Password { user, .. } => {
                f.debug_struct("Password").field("user", user).field("password", &"***").finish()
            }
            Method::ApplicationCredential { id, name, user, .. } => f
                .debug_struct("ApplicationCredential")
                .field("id", id)
                .field("name", name)
                .field("user", user)
                .field("secret", &"***")
                .finish(),
        }
    }
}

/// A Keystone v3 login: where, how, and for which scope.
#[derive(Debug, Clone, PartialEq)]
pub struct KeystoneAuth {
    /// `auth_url`: Keystone's base URL, with or without `/v3`; tokens are
    /// requested at its `/v3/auth/tokens`.
    pub auth_url: String,
    /// The credentials sent.
    pub method: Method,
    /// The scope asked for; it decides which catalog and roles the token
    /// carries.
    pub scope: Scope,
}

/// TLS towards Keystone and the service (keystoneauth's session options).
#[derive(Clone, PartialEq, Default)]
pub struct TlsSettings {
    /// `cafile`: the only CAs trusted (PEM bundle), instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// `certfile` + `keyfile`, concatenated (PEM): the client identity.
    pub identity_pem: Option<Vec<u8>>,
    /// `insecure`: no verification of the server's certificate.
    pub insecure: bool,
}

impl std::fmt::Debug for TlsSettings {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cafile", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The `[service_user]` login whose token is sent as `X-Service-Token`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceUser {
    /// How the service user logs in to Keystone.
    pub login: KeystoneAuth,
    /// TLS towards `[service_user] auth_url`.
    pub tls: TlsSettings,
    /// `[service_user] timeout`: the limit on each of its Keystone requests.
    pub timeout: std::time::Duration,
}

/// The keystoneauth options of one section: the same option names exist
/// in `[placement]`, `[glance]`, `[neutron]` and `[service_user]`, and the
/// readers here take whichever section's table they are given.
pub struct Opts {
    /// Keystone's URL (`auth_url`).
    pub auth_url: &'static Opt,
    /// The user by name (`username`), with its domain.
    pub username: &'static Opt,
    /// The user by id (`user_id`); wins over `username`.
    pub user_id: &'static Opt,
    /// The password of a `password`/`v3password` login.
    pub password: &'static Opt,
    /// The user's domain by name.
    pub user_domain_name: &'static Opt,
    /// The user's domain by id; wins over the name.
    pub user_domain_id: &'static Opt,
    /// The project scoped to, by name (with its domain).
    pub project_name: &'static Opt,
    /// The project scoped to, by id; wins over the name.
    pub project_id: &'static Opt,
    /// The project's domain by name.
    pub project_domain_name: &'static Opt,
    /// The project's domain by id; wins over the name.
    pub project_domain_id: &'static Opt,
    /// The domain of user and project when neither names its own.
    pub default_domain_id: &'static Opt,
    /// As `default_domain_id`, by name (the id wins).
    pub default_domain_name: &'static Opt,
    /// `all` for a system-scoped token instead of a project.
    pub system_scope: &'static Opt,
    /// The application credential by id.
    pub application_credential_id: &'static Opt,
    /// The application credential by name (needs the user).
    pub application_credential_name: &'static Opt,
    /// The application credential's secret.
    pub application_credential_secret: &'static Opt,
    /// Which catalog interfaces (public, internal, admin) may be used.
    pub valid_interfaces: &'static Opt,
    /// PEM bundle of the only CAs trusted.
    pub cafile: &'static Opt,
    /// Client certificate (PEM), used with `keyfile`.
    pub certfile: &'static Opt,
    /// Private key (PEM) of `certfile`.
    pub keyfile: &'static Opt,
    /// Skip verification of the server's certificate.
    pub insecure: &'static Opt,
}

/// Fails on the first keystoneauth option of `group` this host does not
/// implement.
pub fn refuse_unsupported(l: &Layered, group: &'static str) -> Result<(), ConfigError> {
    for (name, hint) in UNSUPPORTED {
        if l.is_set(group, name) {
            return Err(ConfigError::Unsupported { group, name, hint });
        }
    }
    Ok(())
}

fn unsupported(o: &'static Opt, hint: &'static str) -> ConfigError {
    ConfigError::Unsupported { group: o.group, name: o.name, hint }
}

/// An option's value only when the file (or environment) sets it: the
/// options table's defaults (e.g. `user_domain_name = Default`) must not
/// count as a choice.
fn set(l: &Layered, o: &Opt) -> Option<String> {
    l.is_set(o.group, o.name).then(|| l.string(o)).flatten()
}

/// The domain named by `id_opt` or `name_opt`, else the default domain
/// options, else keystoneauth's fallback: the domain named "Default".
fn domain(l: &Layered, id_opt: &Opt, name_opt: &Opt, o: &Opts) -> Domain {
    if let Some(id) = set(l, id_opt) {
        Domain::Id(id)
    } else if let Some(name) = set(l, name_opt) {
        Domain::Name(name)
    } else if let Some(id) = set(l, o.default_domain_id) {
        Domain::Id(id)
    } else if let Some(name) = set(l, o.default_domain_name) {
        Domain::Name(name)
    } else {
        Domain::Name(l.string(name_opt).unwrap_or_else(|| "Default".into()))
    }
}

fn user(l: &Layered, o: &Opts) -> Option<User> {
    if let Some(id) = set(l, o.user_id) {
        return Some(User::Id(id));
    }
    let name = set(l, o.username)?;
    Some(User::Name { name, domain: domain(l, o.user_domain_id, o.user_domain_name, o) })
}

fn scope(l: &Layered, o: &Opts) -> Result<Scope, ConfigError> {
    if let Some(s) = set(l, o.system_scope) {
        if s != "all" {
            return Err(ConfigError::BadValue {
                group: o.system_scope.group,
                name: o.system_scope.name,
                value: s,
                expected: "system scope (only 'all')",
            });
        }
        if let Some(p) = [o.project_id, o.project_name].into_iter().find(|p| l.is_set(p.group, p.name)) {
            return Err(unsupported(p, "a token has one scope: system_scope = all or a project, not both"));
        }
        return Ok(Scope::System);
    }
    if let Some(id) = set(l, o.project_id) {
        return Ok(Scope::ProjectId(id));
    }
    let name = l.required(o.project_name)?;
    Ok(Scope::ProjectName { name, domain: domain(l, o.project_domain_id, o.project_domain_name, o) })
}

/// The Keystone login of a section whose `auth_type` is `auth_type`
/// (password, v3password or v3applicationcredential).
pub fn keystone_auth(l: &Layered, auth_type: &str, auth_url: String, o: &Opts) -> Result<KeystoneAuth, ConfigError> {
    let (method, scope) = if auth_type == "v3applicationcredential" {
        let secret = l.required(o.application_credential_secret)?;
        let id = set(l, o.application_credential_id);
        let name = set(l, o.application_credential_name);
        let user = user(l, o);
        match (&id, &name, &user) {
            (None, None, _) => {
                return Err(ConfigError::Missing {
                    group: o.application_credential_id.group,
                    name: o.application_credential_id.name,
                });
            }
            (None, Some(_), None) => return Err(ConfigError::Missing { group: o.username.group, name: "username" }),
            _ => {}
        }
        for p in [o.project_id, o.project_name, o.project_domain_id, o.project_domain_name, o.system_scope] {
            if l.is_set(p.group, p.name) {
                return Err(unsupported(p, "an application credential carries its own scope"));
            }
        }
        (Method::ApplicationCredential { id, name, user, secret }, Scope::Credential)
    } else {
        for p in [o.application_credential_id, o.application_credential_name, o.application_credential_secret] {
            if l.is_set(p.group, p.name) {
                return Err(unsupported(p, "set auth_type = v3applicationcredential to log in with it"));
            }
        }
        let Some(user) = user(l, o) else {
            return Err(ConfigError::Missing { group: o.username.group, name: "username" });
        };
        let password = l.required(o.password)?;
        (Method::Password { user, password }, scope(l, o)?)
    };
    Ok(KeystoneAuth { auth_url, method, scope })
}

/// `[service_user]`, when `send_service_user_token` is on: its login is
/// required then (a service token that cannot be had would fail every
/// long operation later, not at start-up).
pub fn service_user(
    l: &Layered,
    send: &'static Opt,
    auth_type: &'static Opt,
    timeout: &'static Opt,
    o: &Opts,
) -> Result<Option<ServiceUser>, ConfigError> {
    if !l.bool(send)? {
        return Ok(None);
    }
    refuse_unsupported(l, send.group)?;
    let kind = l.string(auth_type).unwrap_or_else(|| "password".into());
    if !matches!(kind.as_str(), "password" | "v3password" | "v3applicationcredential") {
        return Err(ConfigError::BadValue {
            group: auth_type.group,
            name: auth_type.name,
            value: kind,
            expected: "auth type (password, v3password, v3applicationcredential)",
        });
    }
    let login = keystone_auth(l, &kind, l.required(o.auth_url)?, o)?;
    interfaces(l, o)?;
    let secs = l.int(timeout)?.unwrap_or(30).max(1) as u64;
    Ok(Some(ServiceUser { login, tls: tls(l, o)?, timeout: std::time::Duration::from_secs(secs) }))
}

/// `valid_interfaces`, each one keystoneauth knows.
pub fn interfaces(l: &Layered, o: &Opts) -> Result<Vec<String>, ConfigError> {
    let list = l.list(o.valid_interfaces);
    for i in &list {
        if !INTERFACES.contains(&i.as_str()) {
            return Err(ConfigError::BadValue {
                group: o.valid_interfaces.group,
                name: o.valid_interfaces.name,
                value: i.clone(),
                expected: "interface (public, internal or admin)",
            });
        }
    }
    Ok(list)
}

fn read_pem(o: &'static Opt, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File { group: o.group, name: o.name, path: path.into(), source })
}

fn bad_pem(o: &'static Opt, path: &Path, what: &'static str) -> ConfigError {
    ConfigError::BadValue { group: o.group, name: o.name, value: path.display().to_string(), expected: what }
}

/// `cafile`, `certfile`/`keyfile` and `insecure`, read and checked now:
/// a file that is missing or is not PEM stops the start, not a boot.
pub fn tls(l: &Layered, o: &Opts) -> Result<TlsSettings, ConfigError> {
    let ca_pem = match l.string(o.cafile).map(PathBuf::from) {
        Some(path) => {
            let pem = read_pem(o.cafile, &path)?;
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => Some(pem),
                _ => return Err(bad_pem(o.cafile, &path, "PEM file of CA certificates")),
            }
        }
        None => None,
    };
    let identity_pem = match (l.string(o.certfile).map(PathBuf::from), l.string(o.keyfile).map(PathBuf::from)) {
        (None, None) => None,
        (Some(_), None) => return Err(ConfigError::Missing { group: o.keyfile.group, name: o.keyfile.name }),
        (None, Some(_)) => return Err(ConfigError::Missing { group: o.certfile.group, name: o.certfile.name }),
        (Some(cert), Some(key)) => {
            let mut pem = read_pem(o.certfile, &cert)?;
            pem.push(b'\n');
            pem.extend(read_pem(o.keyfile, &key)?);
            if reqwest::Identity::from_pem(&pem).is_err() {
                return Err(bad_pem(o.certfile, &cert, "PEM client certificate matching keyfile's PEM private key"));
            }
            Some(pem)
        }
    };
    Ok(TlsSettings { ca_pem, identity_pem, insecure: l.bool(o.insecure)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::auth_request;
    use crate::config::{AuthSettings, Settings};
    use serde_json::json;

    fn settings(placement: &str) -> Result<Settings, ConfigError> {
        let text = format!("[DEFAULT]\ntransport_url = rabbit://h/\n[placement]\nauth_url = http://ks/v3\n{placement}");
        Settings::from_layered(&Layered::from_text(&text)?)
    }

    fn login(placement: &str) -> KeystoneAuth {
        match settings(placement).unwrap().placement.auth {
            AuthSettings::Keystone(k) => k,
            other => panic!("not a Keystone login: {other:?}"),
        }
    }

    #[test]
    fn password_login_by_names_as_keystoneauth_sends_it() {
        let k = login("auth_type = v3password\nusername = nova\npassword = pw\nproject_name = service\n");
        assert_eq!(
            auth_request(&k),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "nova", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "service", "domain": {"name": "Default"}}}}})
        );
    }

    #[test]
    fn domains_and_projects_by_id_win_over_names() {
        let k = login(
            "username = nova\npassword = pw\nuser_domain_id = d1\nuser_domain_name = Ignored\n\
             project_id = p1\nproject_name = also-ignored\n",
        );
        let body = auth_request(&k);
        assert_eq!(body["auth"]["identity"]["password"]["user"]["domain"], json!({"id": "d1"}));
        assert_eq!(body["auth"]["scope"], json!({"project": {"id": "p1"}}));
        // the default domain options fill in for both
        let k = login("username = nova\npassword = pw\nproject_name = service\ndefault_domain_id = dd\n");
        let body = auth_request(&k);
        assert_eq!(body["auth"]["identity"]["password"]["user"]["domain"], json!({"id": "dd"}));
        assert_eq!(body["auth"]["scope"]["project"]["domain"], json!({"id": "dd"}));
        let k = login("user_id = u1\npassword = pw\nproject_name = p\nproject_domain_name = Other\n");
        let body = auth_request(&k);
        assert_eq!(body["auth"]["identity"]["password"]["user"], json!({"id": "u1", "password": "pw"}));
        assert_eq!(body["auth"]["scope"]["project"]["domain"], json!({"name": "Other"}));
    }

    #[test]
    fn system_scope_all() {
        let k = login("username = admin\npassword = pw\nsystem_scope = all\n");
        assert_eq!(auth_request(&k)["auth"]["scope"], json!({"system": {"all": true}}));
        let err = settings("username = a\npassword = pw\nsystem_scope = domain\n").unwrap_err();
        assert!(err.to_string().contains("[placement] system_scope"), "{err}");
        let err = settings("username = a\npassword = pw\nsystem_scope = all\nproject_name = p\n").unwrap_err();
        assert!(err.to_string().contains("[placement] project_name is not supported"), "{err}");
    }

    #[test]
    fn application_credentials_by_id_or_by_name_with_their_user() {
        let k = login(
            "auth_type = v3applicationcredential\napplication_credential_id = ac1\napplication_credential_secret = s\n",
        );
        assert_eq!(
            auth_request(&k),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac1", "secret": "s"}}}})
        );
        let k = login(
            "auth_type = v3applicationcredential\napplication_credential_name = n\n\
             application_credential_secret = s\nusername = nova\nuser_domain_name = D\n",
        );
        assert_eq!(
            auth_request(&k)["auth"]["identity"]["application_credential"],
            json!({"name": "n", "secret": "s", "user": {"name": "nova", "domain": {"name": "D"}}})
        );
        for (conf, needle) in [
            ("application_credential_secret = s\n", "application_credential_id must be set"),
            ("application_credential_id = a\n", "application_credential_secret must be set"),
            ("application_credential_name = n\napplication_credential_secret = s\n", "username must be set"),
            (
                "application_credential_id = a\napplication_credential_secret = s\nproject_name = p\n",
                "[placement] project_name is not supported by nova-docker: an application credential",
            ),
        ] {
            let err = settings(&format!("auth_type = v3applicationcredential\n{conf}")).unwrap_err();
            assert!(err.to_string().contains(needle), "{conf}: {err}");
        }
        // and a password login does not quietly carry a credential
        let err =
            settings("username = a\npassword = p\nproject_name = p\napplication_credential_id = x\n").unwrap_err();
        assert!(err.to_string().contains("application_credential_id is not supported"), "{err}");
    }

    #[test]
    fn unsupported_keystoneauth_options_are_refused_by_name() {
        let base = "username = a\npassword = p\nproject_name = p\n";
        for (name, _) in UNSUPPORTED {
            let err = settings(&format!("{base}{name} = x\n")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("[placement] {name} is not supported")), "{name}: {err}");
        }
        for section in ["glance", "neutron"] {
            let text = format!("[DEFAULT]\ntransport_url = rabbit://h/\n[{section}]\ntrust_id = t\n");
            let err = Settings::from_layered(&Layered::from_text(&text).unwrap()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("[{section}] trust_id is not supported by nova-docker: trust-scoped tokens are not supported")
            );
        }
        let err = settings("auth_type = v3token\n").unwrap_err();
        assert!(err.to_string().contains("auth_type = \"v3token\""), "{err}");
        let err = settings(&format!("{base}valid_interfaces = internal,private\n")).unwrap_err();
        assert!(err.to_string().contains("\"private\" is not a valid interface"), "{err}");
    }

    #[test]
    fn tls_files_are_read_and_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("nd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = settings(&format!("username = a\npassword = p\nproject_name = p\ncafile = {}\n", missing.display()))
            .unwrap_err();
        assert!(err.to_string().starts_with("[placement] cafile: cannot read"), "{err}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = settings(&format!("username = a\npassword = p\nproject_name = p\ncafile = {}\n", junk.display()))
            .unwrap_err();
        assert!(err.to_string().contains("PEM file of CA certificates"), "{err}");
        let err = settings(&format!("username = a\npassword = p\nproject_name = p\ncertfile = {}\n", junk.display()))
            .unwrap_err();
        assert_eq!(err.to_string(), "[placement] keyfile must be set");
        let s = settings("username = a\npassword = p\nproject_name = p\ninsecure = true\n").unwrap();
        assert!(s.placement.tls.insecure && s.placement.tls.ca_pem.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn service_user_only_when_asked_and_then_complete() {
        let base = "[DEFAULT]\ntransport_url = rabbit://h/\n[service_user]\n";
        let load = |t: &str| Settings::from_layered(&Layered::from_text(&format!("{base}{t}")).unwrap());
        // off: nothing read, nothing required
        assert_eq!(load("username = nova\n").unwrap().glance.service_user, None);
        let s = load(
            "send_service_user_token = true\nauth_url = http://ks/v3\nusername = nova\npassword = pw\n\
             project_name = service\n",
        )
        .unwrap();
        let su = s.glance.service_user.expect("service user");
        assert_eq!(auth_request(&su.login)["auth"]["identity"]["password"]["user"]["name"], "nova");
        assert_eq!(s.placement.service_user, None, "only Glance is reached with the user's token");
        for (t, needle) in [
            ("send_service_user_token = true\n", "[service_user] auth_url must be set"),
            (
                "send_service_user_token = true\nauth_url = http://ks/v3\nusername = nova\npassword = p\n",
                "[service_user] project_name must be set",
            ),
            ("send_service_user_token = true\nauth_type = token\n", "[service_user] auth_type"),
            (
                "send_service_user_token = true\nauth_url = u\nusername = n\npassword = p\nproject_name = s\ntrust_id = t\n",
                "[service_user] trust_id is not supported",
            ),
        ] {
            let err = load(t).unwrap_err().to_string();
            assert!(err.contains(needle), "{t}: {err}");
        }
    }
}
