//! nova.conf-compatible settings.
//!
//! Files are read with an oslo.config-compatible parser ([`ini`]) and layered
//! with the `config` crate: later `--config-file`s override earlier ones, and
//! `OS_<GROUP>__<OPTION>` environment variables override files (oslo.config's
//! environment source). Values are interpolated as oslo.config does
//! ([`interpolate`]: `$option`, `${group.option}`, `$$`). Options this service
//! does not read are listed ([`Layered::unused`]), not refused, so the
//! nova.conf of a Python compute host can be used as it is.

pub mod certificate;
pub mod ini;
pub mod interpolate;
pub mod keystone;
pub mod options;
pub mod transport_url;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use options::{Kind, Opt};
pub use transport_url::{BrokerAddress, TransportUrl};

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--config-file` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file given.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A `--config-file` is not valid INI.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file given.
        path: PathBuf,
        /// The line and what is wrong with it.
        source: ini::IniError,
    },
    /// An option's value is not of its kind or is out of its range.
    #[error("[{group}] {name} = {value:?} is not a valid {expected}")]
    BadValue {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
        /// The value as written.
        value: String,
        /// What a valid value looks like, for the message.
        expected: &'static str,
    },
    /// A choice option holds a value outside its choices.
    #[error("[{group}] {name} = {value:?} is not one of {choices}")]
    NotAChoice {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
        /// The value as written.
        value: String,
        /// The accepted values, comma-separated.
        choices: String,
    },
    /// A required option (no default) is unset.
    #[error("[{group}] {name} must be set")]
    Missing {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
    },
    /// `[serial_console] proxyclient_address` is an address every host has
    /// (loopback, or unspecified: 0.0.0.0, ::) while consoles are on and
    /// the operator did not say the cloud has one host: a token issued by
    /// another host would reach this host's console on the same port.
    #[error(
        "[serial_console] proxyclient_address = {address:?} is an address every compute host has: \
         nova-serialproxy connects to the host:port of a token after asking only the instance's host about the port, \
         so a token issued by another host whose proxy runs here would reach this host's console on the same port \
         (another tenant's). Set it to this host's own address on the management network, or, on a one-host cloud only, \
         set [docker] serial_console_single_host = true"
    )]
    SharedConsoleAddress {
        /// The value as written.
        address: String,
    },
    /// An option is set to something this host cannot honour (refused, not ignored).
    #[error("[{group}] {name} is not supported by nova-docker: {hint}")]
    Unsupported {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
        /// What to set instead.
        hint: &'static str,
    },
    /// A file an option names (e.g. a CA bundle) could not be read.
    #[error("[{group}] {name}: cannot read {path}: {source}")]
    File {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
        /// The file the option names.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A certificate an option names is expired or not yet valid.
    #[error("[{group}] {name}: the certificate is valid from {not_before} to {not_after} only, not now")]
    CertificateNotValid {
        /// The option's group.
        group: &'static str,
        /// The option's name.
        name: &'static str,
        /// Start of its validity.
        not_before: String,
        /// End of its validity.
        not_after: String,
    },
    /// `[DEFAULT] transport_url` is not a RabbitMQ URL this host can use.
    #[error("[DEFAULT] transport_url: {0}")]
    TransportUrl(#[from] transport_url::TransportUrlError),
    /// A `$option` / `${group.option}` reference in an option's value
    /// cannot be resolved (oslo.config's template substitution).
    #[error("[{group}] {name}: {source}")]
    Interpolation {
        /// The option whose value holds the reference.
        group: &'static str,
        /// Its name.
        name: &'static str,
        /// Which reference, and why it cannot be resolved.
        source: interpolate::InterpolationError,
    },
    /// The `config` crate failed to merge or read the layered sources.
    #[error("configuration: {0}")]
    Layering(#[from] config::ConfigError),
}

/// One INI file as a `config` source: keys are `group.option`.
#[derive(Clone)]
struct IniSource {
    origin: String,
    file: ini::IniFile,
}

impl std::fmt::Debug for IniSource {
    // The file holds passwords and tokens: only where it came from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IniSource").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl config::Source for IniSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut map = config::Map::new();
        for (group, key, value) in self.file.entries() {
            // Keys with dots cannot be addressed as paths and are never ours.
            if key.contains('.') || group.contains('.') {
                continue;
            }
            map.insert(
                format!("{group}.{key}"),
                config::Value::new(Some(&self.origin), config::ValueKind::String(value.to_string())),
            );
        }
        Ok(map)
    }
}

/// `OS_<GROUP>__<OPTION>` variables for the options we know.
#[derive(Clone)]
struct EnvSource {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for EnvSource {
    // Values may be secrets: only which options are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSource").field("options", &self.vars.keys().collect::<Vec<_>>()).finish()
    }
}

impl EnvSource {
    fn from_env() -> Self {
        let mut vars = BTreeMap::new();
        for opt in options::ALL {
            let name = format!("OS_{}__{}", opt.group.to_uppercase(), opt.name.to_uppercase());
            if let Ok(value) = std::env::var(&name) {
                vars.insert(format!("{}.{}", opt.group, opt.name), value);
            }
        }
        EnvSource { vars }
    }
}

impl config::Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let origin = "environment".to_string();
        Ok(self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), config::Value::new(Some(&origin), config::ValueKind::String(v.clone()))))
            .collect())
    }
}

/// The layered option values, read through the option table.
#[derive(Clone)]
pub struct Layered {
    cfg: config::Config,
    /// The values of the table's options holding `$` references, interpolated
    /// once at load (so a bad reference is an error at start, not later).
    interpolated: BTreeMap<(&'static str, &'static str), String>,
}

impl std::fmt::Debug for Layered {
    // Every value of every file, secrets included: none of them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered").finish_non_exhaustive()
    }
}

impl Layered {
    /// Reads the files in order (later ones win) plus the environment.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        for path in paths {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let file =
                ini::IniFile::parse(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?;
            builder = builder.add_source(IniSource { origin: path.display().to_string(), file });
        }
        builder = builder.add_source(EnvSource::from_env());
        Layered::interpolated(builder.build()?)
    }

    /// Builds from INI text (tests, and `check` on an in-memory file).
    pub fn from_text(text: &str) -> Result<Self, ConfigError> {
        let file =
            ini::IniFile::parse(text).map_err(|source| ConfigError::Parse { path: PathBuf::from("<text>"), source })?;
        let cfg = config::Config::builder().add_source(IniSource { origin: "<text>".into(), file }).build()?;
        Layered::interpolated(cfg)
    }

    /// Interpolates every option of the table that holds a `$` (its set
    /// value, or its default), as oslo.config does on access. Options the
    /// host does not read are left alone: a reference in one of those is
    /// Nova's business.
    fn interpolated(cfg: config::Config) -> Result<Self, ConfigError> {
        let mut layered = Layered { cfg, interpolated: BTreeMap::new() };
        let mut interpolated = BTreeMap::new();
        for opt in options::ALL {
            let Some(raw) = layered.uninterpolated(opt) else { continue };
            if !interpolate::has_template(&raw) {
                continue;
            }
            let value = interpolate::interpolate(&layered, opt.group, opt.name, &raw)
                .map_err(|source| ConfigError::Interpolation { group: opt.group, name: opt.name, source })?;
            interpolated.insert((opt.group, opt.name), value);
        }
        layered.interpolated = interpolated;
        Ok(layered)
    }

    fn uninterpolated(&self, opt: &Opt) -> Option<String> {
        self.cfg.get_string(&format!("{}.{}", opt.group, opt.name)).ok().or_else(|| opt.default.map(str::to_string))
    }

    /// Options set in the groups only nova-docker reads (`[docker]`) that
    /// the option table does not know, as `[group] name`: a typo, or an
    /// option of the old Python nova-docker driver. `check` and `serve`
    /// warn about each, so none is ignored silently.
    pub fn unknown(&self) -> Vec<String> {
        let mut unknown = Vec::new();
        for group in options::OWN_GROUPS {
            let Ok(table) = self.cfg.get_table(group) else { continue };
            let mut names: Vec<&String> = table.keys().collect();
            names.sort();
            for name in names {
                if !options::ALL.iter().any(|o| o.group == *group && o.name == name.as_str()) {
                    unknown.push(format!("[{group}] {name}"));
                }
            }
        }
        unknown
    }

    /// Options set in the files (or environment) in groups other than our
    /// own that the host does not read (most of a Python compute host's
    /// nova.conf), one line per group: `[group] not used by this host: a, b`.
    /// `check` and `serve` list them, so nothing in a file is dropped
    /// without a word. (Keys containing a dot cannot be ours and are not
    /// listed.)
    pub fn unused(&self) -> Vec<String> {
        let groups: BTreeMap<String, config::Map<String, config::Value>> =
            self.cfg.clone().try_deserialize().unwrap_or_default();
        let mut lines = Vec::new();
        for (group, table) in groups {
            if options::OWN_GROUPS.contains(&group.as_str()) {
                continue;
            }
            let mut names: Vec<&String> = table
                .keys()
                .filter(|name| !options::ALL.iter().any(|o| o.group == group && o.name == name.as_str()))
                .collect();
            if names.is_empty() {
                continue;
            }
            names.sort();
            let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
            lines.push(format!("[{group}] not used by this host: {}", names.join(", ")));
        }
        lines
    }

    /// The raw text of an option (set value, else its default).
    /// References (`$option`, `${group.option}`) are already substituted.
    pub fn raw(&self, opt: &Opt) -> Option<String> {
        if let Some(value) = self.interpolated.get(&(opt.group, opt.name)) {
            return Some(value.clone());
        }
        self.uninterpolated(opt)
    }

    /// Whether `[group] name` is set by a file or the environment (any
    /// option, known to the options table or not).
    pub fn is_set(&self, group: &str, name: &str) -> bool {
        self.cfg.get_string(&format!("{group}.{name}")).is_ok()
    }

    /// A string option; `None` when unset and without default, or set empty.
    pub fn string(&self, opt: &Opt) -> Option<String> {
        debug_assert!(matches!(opt.kind, Kind::Str | Kind::Secret));
        self.raw(opt).filter(|s| !s.is_empty())
    }

    /// A choice option: its value (its default when unset or empty), one of
    /// the table's `choices`, else an error listing them.
    pub fn choice(&self, opt: &Opt) -> Result<String, ConfigError> {
        debug_assert!(!opt.choices.is_empty());
        let value = self.string(opt).or_else(|| opt.default.map(str::to_string)).unwrap_or_default();
        if opt.choices.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(ConfigError::NotAChoice { group: opt.group, name: opt.name, value, choices: opt.choices.join(", ") })
        }
    }

    /// A required string option.
    pub fn required(&self, opt: &Opt) -> Result<String, ConfigError> {
        self.string(opt).ok_or(ConfigError::Missing { group: opt.group, name: opt.name })
    }

    /// An integer option.
    pub fn int(&self, opt: &Opt) -> Result<Option<i64>, ConfigError> {
        debug_assert_eq!(opt.kind, Kind::Int);
        self.parsed(opt, "integer", |s| s.parse::<i64>().ok())
    }

    /// A floating-point option.
    pub fn float(&self, opt: &Opt) -> Result<Option<f64>, ConfigError> {
        debug_assert_eq!(opt.kind, Kind::Float);
        self.parsed(opt, "number", |s| s.parse::<f64>().ok())
    }

    /// A boolean option, spelled as oslo.config accepts.
    pub fn bool(&self, opt: &Opt) -> Result<bool, ConfigError> {
        debug_assert_eq!(opt.kind, Kind::Bool);
        Ok(self.parsed(opt, "boolean", parse_bool)?.unwrap_or(false))
    }

    /// A comma-separated list option whose items are each one of the
    /// table's `choices`, else an error listing them.
    pub fn choice_list(&self, opt: &Opt) -> Result<Vec<String>, ConfigError> {
        debug_assert!(!opt.choices.is_empty());
        let items = self.list(opt);
        match items.iter().find(|v| !opt.choices.contains(&v.as_str())) {
            None => Ok(items),
            Some(value) => Err(ConfigError::NotAChoice {
                group: opt.group,
                name: opt.name,
                value: value.clone(),
                choices: opt.choices.join(", "),
            }),
        }
    }

    /// A comma-separated list option.
    pub fn list(&self, opt: &Opt) -> Vec<String> {
        debug_assert_eq!(opt.kind, Kind::List);
        self.raw(opt)
            .map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
            .unwrap_or_default()
    }

    fn parsed<T>(
        &self,
        opt: &Opt,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(opt) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => parse(s.trim()).map(Some).ok_or(ConfigError::BadValue {
                group: opt.group,
                name: opt.name,
                value: s,
                expected,
            }),
        }
    }
}

impl interpolate::Lookup for Layered {
    fn find(&self, group: &str, name: &str) -> Option<interpolate::Found> {
        use interpolate::Found;
        if name.contains('.') || group.contains('.') {
            return None;
        }
        if let Ok(value) = self.cfg.get_string(&format!("{group}.{name}")) {
            return Some(Found::Value(value));
        }
        let opt = options::ALL.iter().find(|o| o.group == group && o.name == name)?;
        Some(match (opt.default, opt.name) {
            (Some(default), _) => Found::Value(default.to_string()),
            // Nova's own computed defaults that are known without probing the host.
            (None, "host") if group == "DEFAULT" => Found::Value(system_hostname()),
            (None, "instances_path") if group == "DEFAULT" => Found::Value("$state_path/instances".into()),
            (None, _) if opt.dynamic_default.is_some() => Found::Computed,
            // A known option without a value: oslo substitutes "".
            (None, _) => Found::Value(String::new()),
        })
    }
}

/// oslo.config's boolean spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// How a service authenticates an HTTP client (keystoneauth's `auth_type`).
/// `Debug` shows neither the password nor the token.
#[derive(Clone, PartialEq)]
pub enum AuthSettings {
    /// Use the token of the request being served (Glance, as Nova does).
    User,
    /// No token at all.
    None,
    /// A static token sent to a fixed endpoint.
    AdminToken {
        /// `[group] endpoint`: the service URL, unless `endpoint_override` is set.
        endpoint: Option<String>,
        /// `[group] token`: sent as `X-Auth-Token`.
        token: String,
    },
    /// A Keystone v3 login (password or application credential); endpoints
    /// come from the token's catalog unless overridden.
    Keystone(keystone::KeystoneAuth),
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthSettings::User => f.write_str("User"),
            AuthSettings::None => f.write_str("None"),
            AuthSettings::AdminToken { endpoint, .. } => {
                f.debug_struct("AdminToken").field("endpoint", endpoint).field("token", &"***").finish()
            }
            AuthSettings::Keystone(k) => f.debug_tuple("Keystone").field(k).finish(),
        }
    }
}

/// Settings of one HTTP peer (Placement, Glance, Neutron).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    /// Catalog type looked up in the token's catalog (`placement`, `image`, `network`).
    pub service_type: &'static str,
    /// `[group] auth_type` and its credentials: how requests are authenticated.
    pub auth: AuthSettings,
    /// `[group] endpoint_override` (Glance: else the first `api_servers`): URL used instead of the catalog's.
    pub endpoint_override: Option<String>,
    /// `[group] region_name`: region of the catalog endpoint.
    pub region_name: Option<String>,
    /// `[group] valid_interfaces`: catalog interfaces tried, in order.
    pub valid_interfaces: Vec<String>,
    /// `[group] timeout`: bound on each HTTP request (Glance: on headers and between body chunks).
    pub timeout: Duration,
    /// How often an idempotent request (GET, PUT, DELETE) is tried again.
    pub retries: Retries,
    /// `[group] cafile`, `certfile`, `keyfile`, `insecure`: TLS to Keystone and the service.
    pub tls: keystone::TlsSettings,
    /// `[service_user]` when `send_service_user_token` is on (Glance only:
    /// the one service reached with the user's token).
    pub service_user: Option<keystone::ServiceUser>,
}

/// When an idempotent request is tried again, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Further attempts after the first.
    pub attempts: u32,
    /// Also after a server error (500, 502, 503, 504), not only after a
    /// request that could not be sent or answered.
    pub server_errors: bool,
}

impl Retries {
    /// Placement's and Neutron's: twice, on connection errors only.
    pub const CONNECTION: Retries = Retries { attempts: 2, server_errors: false };
}

/// Which RabbitMQ entities look like what the rest of the deployment declared.
#[derive(Debug, Clone, PartialEq)]
pub struct RabbitSettings {
    /// `[oslo_messaging_rabbit] heartbeat_timeout_threshold`: AMQP heartbeat timeout negotiated with the broker (0: none).
    pub heartbeat_timeout_threshold: u16,
    /// `[oslo_messaging_rabbit] amqp_durable_queues`: declare the exchange and topic queues durable.
    pub durable_queues: bool,
    /// `[oslo_messaging_rabbit] amqp_auto_delete`: declare the exchange and topic queues auto-delete.
    pub auto_delete: bool,
    /// `[oslo_messaging_rabbit] rabbit_ha_queues`: add `x-ha-policy: all` to declared queues.
    pub ha_queues: bool,
    /// `[oslo_messaging_rabbit] rabbit_quorum_queue`: declare topic queues as quorum queues.
    pub quorum_queue: bool,
    /// `[oslo_messaging_rabbit] rabbit_quorum_delivery_limit`: `x-delivery-limit` of quorum queues (0: not set).
    pub quorum_delivery_limit: i64,
    /// `[oslo_messaging_rabbit] rabbit_quorum_max_memory_length`: `x-max-in-memory-length` (0: not set).
    pub quorum_max_memory_length: i64,
    /// `[oslo_messaging_rabbit] rabbit_quorum_max_memory_bytes`: `x-max-in-memory-bytes` (0: not set).
    pub quorum_max_memory_bytes: i64,
    /// `[oslo_messaging_rabbit] rabbit_transient_queues_ttl`: `x-expires` of reply and fanout queues (zero: none).
    pub transient_queues_ttl: Duration,
    /// `[oslo_messaging_rabbit] rabbit_qos_prefetch_count`: AMQP prefetch per consumer, as written (the transport takes 0 as 16).
    pub prefetch_count: u16,
    /// `[oslo_messaging_rabbit] rabbit_retry_interval`: delay before the first reconnection attempt.
    pub retry_interval: Duration,
    /// `[oslo_messaging_rabbit] rabbit_retry_backoff`: added to the reconnection delay after each failed attempt.
    pub retry_backoff: Duration,
    /// `[oslo_messaging_rabbit] rabbit_interval_max`: longest delay between reconnection attempts.
    pub interval_max: Duration,
    /// `[oslo_messaging_rabbit] kombu_missing_consumer_retry_timeout`: how long a reply is retried while the caller's reply queue is missing.
    pub missing_consumer_retry_timeout: Duration,
    /// `[oslo_messaging_rabbit] rabbit_transient_quorum_queue`: reply and fanout queues are durable quorum queues too.
    pub transient_quorum_queue: bool,
    /// `[oslo_messaging_rabbit] rabbit_login_method`: the SASL mechanism.
    pub login_method: LoginMethod,
    /// `[oslo_messaging_rabbit] ssl_ca_file`, `ssl_cert_file`, `ssl_key_file`: used by every TLS broker connection.
    pub tls: RabbitTls,
}

/// How the host logs in to RabbitMQ (`rabbit_login_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// User and password in an AMQP table (oslo.messaging's default).
    AmqPlain,
    /// User and password, SASL PLAIN.
    Plain,
    /// The TLS client certificate; the broker derives the user from it.
    External,
}

/// The TLS material read from `[oslo_messaging_rabbit] ssl_*_file` at start-up.
#[derive(Clone, Default, PartialEq)]
pub struct RabbitTls {
    /// PEM CA certificates trusted besides the system's roots.
    pub ca_pem: Option<String>,
    /// PEM client certificate (chain) and its PEM private key.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RabbitTls {
    // The private key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_identity.is_some())
            .finish()
    }
}

/// Reads the `ssl_*_file` options and refuses TLS settings this host cannot
/// honour (instead of silently connecting with weaker ones).
fn rabbit_tls(l: &Layered, any_tls: bool, login: LoginMethod) -> Result<RabbitTls, ConfigError> {
    use options::*;
    let read = |opt: &'static Opt, marker: &str, expected: &'static str| -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = l.string(opt) else { return Ok(None) };
        let data = std::fs::read(&path).map_err(|source| ConfigError::File {
            group: opt.group,
            name: opt.name,
            path: PathBuf::from(&path),
            source,
        })?;
        if !String::from_utf8_lossy(&data).contains(marker) {
            return Err(ConfigError::BadValue { group: opt.group, name: opt.name, value: path, expected });
        }
        Ok(Some(data))
    };
    if let Some(v) = l.string(&RABBIT_SSL_VERSION)
        && !matches!(v.to_ascii_lowercase().as_str(), "sslv23" | "tls" | "tls_client")
    {
        return Err(ConfigError::Unsupported {
            group: RABBIT_SSL_VERSION.group,
            name: RABBIT_SSL_VERSION.name,
            hint: "TLS 1.2 or 1.3 is negotiated and one version cannot be pinned; leave ssl_version unset",
        });
    }
    if l.bool(&RABBIT_SSL_ENFORCE_FIPS_MODE)? {
        return Err(ConfigError::Unsupported {
            group: RABBIT_SSL_ENFORCE_FIPS_MODE.group,
            name: RABBIT_SSL_ENFORCE_FIPS_MODE.name,
            hint: "the TLS library (rustls) does not run in a FIPS-validated mode here; set it to false",
        });
    }
    let ca = read(&RABBIT_SSL_CA_FILE, "-----BEGIN CERTIFICATE-----", "PEM file of CA certificates")?;
    let cert = read(&RABBIT_SSL_CERT_FILE, "-----BEGIN CERTIFICATE-----", "PEM certificate file")?;
    let key = read(&RABBIT_SSL_KEY_FILE, "PRIVATE KEY-----", "PEM private key file")?;
    if let Some((not_before, not_after)) = cert.as_deref().and_then(certificate::validity) {
        let now = chrono::Utc::now();
        if now > not_after || now < not_before {
            return Err(ConfigError::CertificateNotValid {
                group: RABBIT_SSL_CERT_FILE.group,
                name: RABBIT_SSL_CERT_FILE.name,
                not_before: not_before.to_rfc3339(),
                not_after: not_after.to_rfc3339(),
            });
        }
    }
    let client_identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Missing { group: RABBIT_SSL_KEY_FILE.group, name: RABBIT_SSL_KEY_FILE.name });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing { group: RABBIT_SSL_CERT_FILE.group, name: RABBIT_SSL_CERT_FILE.name });
        }
    };
    if login == LoginMethod::External && (!any_tls || client_identity.is_none()) {
        return Err(ConfigError::Unsupported {
            group: RABBIT_LOGIN_METHOD.group,
            name: RABBIT_LOGIN_METHOD.name,
            hint: "EXTERNAL logs in with the TLS client certificate: set ssl = true (or amqps://), ssl_cert_file and ssl_key_file",
        });
    }
    let ca_pem = ca.map(|c| String::from_utf8_lossy(&c).into_owned());
    Ok(RabbitTls { ca_pem, client_identity })
}

/// How vCPUs limit a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLimit {
    /// `shares`: a relative CPU weight (vcpus x 1024).
    Shares,
    /// `quota`: a hard cap of vcpus CPUs, plus the weight.
    Quota,
}

/// What to do with containers whose instance Nova no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletedInstanceAction {
    /// `noop`: leave them alone.
    Noop,
    /// `log`: log each one.
    Log,
    /// `shutdown`: stop them.
    Shutdown,
    /// `reap`: remove them.
    Reap,
}

/// How the flavor's `root_gb` limits an instance's root filesystem
/// (`[docker] root_disk_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootDiskLimit {
    /// Quota when the storage driver can enforce one, else measure.
    Auto,
    /// The storage driver enforces a size per container (`StorageOpt size`).
    Quota,
    /// The writable layer is measured periodically.
    Measure,
    /// No limit.
    Off,
}

/// What happens to an instance measured over its root disk limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimitAction {
    /// Stop it, as Nova's power sync would, with a fault saying why.
    Stop,
    /// Only log it.
    Log,
}

/// Docker-side settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSettings {
    /// `[docker] host_url`: the engine's unix socket (TCP is refused).
    pub socket_path: PathBuf,
    /// `[docker] api_timeout`: wait for the engine's response headers on each API call (at least 1 s).
    pub api_timeout: Duration,
    /// `[docker] pids_limit`: most processes in one instance (flavor `quota:pids_limit` overrides; 0: unlimited).
    pub pids_limit: i64,
    /// `[docker] cpu_limit`: how vCPUs limit a container.
    pub cpu_limit: CpuLimit,
    /// `[docker] cpuset_cpus`: host CPUs instances may run on (`None`: any).
    pub cpuset_cpus: Option<String>,
    /// `[docker] capabilities`: Linux capabilities an instance keeps (upper-cased); all others are dropped.
    pub capabilities: Vec<String>,
    /// `[docker] seccomp_profile`: seccomp profile (JSON) applied to instances (`None`: the engine's default).
    pub seccomp_profile: Option<PathBuf>,
    /// `[docker] userns_mode`: user namespace mode passed to the engine (`None`: the daemon's setting).
    pub userns_mode: Option<String>,
    /// `[docker] read_only_rootfs`: mount instances' root filesystems read-only (image property `os_read_only_rootfs` overrides).
    pub read_only_rootfs: bool,
    /// `[docker] inject_key`: write the key pair's public key to
    /// `/root/.ssh/authorized_keys` in the container before its first start.
    pub inject_key: bool,
    /// `[docker] metadata_route` (or `isolated_metadata_route = true`, its
    /// older spelling of `dhcp_port`): the route to the metadata address each
    /// container gets, as the network's DHCP would give a VM.
    pub metadata_route: crate::net::MetadataRoute,
    /// `[docker] snapshot_pause`: pause the container while it is committed for a snapshot.
    pub snapshot_pause: bool,
    /// `[docker] keep_snapshot_images`: keep the committed image after its upload to Glance.
    pub keep_snapshot_images: bool,
    /// `[docker] max_image_manifest_bytes`: largest manifest.json or image config accepted in an image archive (at least 4096).
    pub max_image_manifest_bytes: u64,
    /// `[docker] max_image_unpacked_mb`, in bytes.
    pub max_image_unpacked_bytes: u64,
    /// Nova's `instances_path`: where the driver keeps each instance's
    /// generated resolv.conf and hosts (bind-mounted into its container).
    pub instances_path: PathBuf,
    /// `[docker] root_disk_limit`: how the flavor's `root_gb` limits the root filesystem.
    pub root_disk_limit: RootDiskLimit,
    /// `[docker] root_disk_measure_interval`: time between measurements of writable layers (`measure`).
    pub root_disk_measure_interval: Duration,
    /// `[docker] root_disk_over_limit_action`: what happens to an instance measured over its limit.
    pub root_disk_over_limit_action: OverLimitAction,
    /// Root disk limit in GiB for flavors with `root_gb = 0` (0: none).
    pub zero_disk_flavor_root_gb: u64,
    /// Bytes of console output kept per instance (all rotated files).
    pub console_log_max_bytes: u64,
    /// `[serial_console] enabled`: new containers get a terminal and an
    /// open stdin for the serial console (see `virt::console`).
    pub interactive_console: bool,
}

/// The smallest console log cap accepted.
pub const MIN_CONSOLE_LOG_BYTES: i64 = 65536;

/// Everything the service reads from its configuration, typed and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[DEFAULT] host`: names the RPC queue `compute.<host>` and the Service and ComputeNode records (default: the hostname).
    pub host: String,
    /// Options set in `[docker]` that this service does not have.
    pub unknown_options: Vec<String>,
    /// Options of other groups set in the files that this host does not
    /// read, one line per group (see [`Layered::unused`]).
    pub unused_options: Vec<String>,
    /// `[DEFAULT] transport_url`: the RabbitMQ broker(s) to connect to.
    pub transport_url: TransportUrl,
    /// `[DEFAULT] control_exchange`: AMQP exchange carrying Nova's RPC.
    pub control_exchange: String,
    /// `[DEFAULT] rpc_response_timeout`: wait for a reply to an RPC call.
    pub rpc_response_timeout: Duration,
    /// `[DEFAULT] executor_thread_pool_size`: RPC requests handled at once (at least 1).
    pub executor_pool_size: usize,
    /// `[DEFAULT] report_interval`: time between service heartbeats (at least 1 s).
    pub report_interval: Duration,
    /// `[DEFAULT] my_ip`: reported as the compute node's `host_ip` (`None`: the default route's interface address).
    pub my_ip: Option<IpAddr>,
    /// `[DEFAULT] state_path`: directory of persistent state (holds `compute_id`).
    pub state_path: PathBuf,
    /// The directories of the configuration files read, in order (Nova
    /// reads `compute_id` there too); empty when built from text.
    pub config_dirs: Vec<PathBuf>,
    /// `[DEFAULT] debug`: log at debug level.
    pub debug: bool,
    /// `[DEFAULT] max_concurrent_builds`: instance builds run at once (0: unlimited).
    pub max_concurrent_builds: usize,
    /// `[DEFAULT] max_concurrent_snapshots`: snapshots and backups run at once (0: unlimited).
    pub max_concurrent_snapshots: usize,
    /// `[DEFAULT] reserved_host_cpus`: placement VCPU `reserved`.
    pub reserved_host_cpus: u64,
    /// `[DEFAULT] reserved_host_memory_mb`: placement MEMORY_MB `reserved`.
    pub reserved_host_memory_mb: u64,
    /// `[DEFAULT] reserved_host_disk_mb`: placement DISK_GB `reserved` (rounded up to GiB).
    pub reserved_host_disk_mb: u64,
    /// `[DEFAULT] cpu_allocation_ratio`: VCPU overcommit (`None`, or 0 or less: keep placement's value, else the initial one).
    pub cpu_allocation_ratio: Option<f64>,
    /// `[DEFAULT] ram_allocation_ratio`: MEMORY_MB overcommit (`None`, or 0 or less: keep placement's value, else the initial one).
    pub ram_allocation_ratio: Option<f64>,
    /// `[DEFAULT] disk_allocation_ratio`: DISK_GB overcommit (`None`, or 0 or less: keep placement's value, else the initial one).
    pub disk_allocation_ratio: Option<f64>,
    /// `[DEFAULT] initial_cpu_allocation_ratio`: VCPU ratio of a new provider (`None`: the release's default, as Nova).
    pub initial_cpu_allocation_ratio: Option<f64>,
    /// `[DEFAULT] initial_ram_allocation_ratio`: MEMORY_MB ratio of a new provider (`None`: the release's default, as Nova).
    pub initial_ram_allocation_ratio: Option<f64>,
    /// `[DEFAULT] initial_disk_allocation_ratio`: DISK_GB ratio of a new provider.
    pub initial_disk_allocation_ratio: f64,
    /// `[DEFAULT] update_resources_interval`: time between refreshes of the compute node and placement inventory (0 or less: 60 s).
    pub update_resources_interval: Duration,
    /// `[DEFAULT] sync_power_state_interval`: time between full power-state reconciliations (`None` when 0 or less: off).
    pub sync_power_state_interval: Option<Duration>,
    /// `[DEFAULT] force_config_drive`: every new instance gets a config drive.
    pub force_config_drive: bool,
    /// `[api] dhcp_domain`: appended to the hostname in the config drive.
    pub dhcp_domain: Option<String>,
    /// `[DEFAULT] shutdown_timeout`: time a container gets after SIGTERM before it is killed.
    pub shutdown_timeout: Duration,
    /// `[DEFAULT] running_deleted_instance_action`: what to do with containers whose instance is gone.
    pub running_deleted_instance_action: DeletedInstanceAction,
    /// `[DEFAULT] running_deleted_instance_poll_interval`: time between those checks (`None` when 0 or less: off).
    pub running_deleted_instance_poll_interval: Option<Duration>,
    /// `[DEFAULT] vif_plugging_timeout`: wait for Neutron's `network-vif-plugged` (0: no wait).
    pub vif_plugging_timeout: Duration,
    /// `[DEFAULT] vif_plugging_is_fatal`: fail the build when `network-vif-plugged` is late.
    pub vif_plugging_is_fatal: bool,
    /// `[DEFAULT] resume_guests_state_on_host_boot`: at start-up, start the containers of instances Nova believes running.
    pub resume_guests_state_on_host_boot: bool,
    /// `reclaim_instance_interval`; `None` when 0 (no soft delete).
    pub reclaim_instance_interval: Option<Duration>,
    /// `[DEFAULT] resize_confirm_window`; `None` when 0 or less (resizes are never confirmed automatically).
    pub resize_confirm_window: Option<Duration>,
    /// `[DEFAULT] service_down_time`: a service silent this long is down.
    pub service_down_time: Duration,
    /// `[DEFAULT] graceful_shutdown_timeout`: time in-flight requests get after SIGTERM before the service exits.
    pub graceful_shutdown_timeout: Duration,
    /// `[workarounds] wait_for_vif_plugged_event_during_hard_reboot`: the
    /// VNIC types whose ports a hard reboot unplugs and plugs waiting for
    /// Neutron's events (empty: no wait).
    pub hard_reboot_vif_wait: Vec<String>,
    /// `[docker] rpc_max_message_bytes`: largest RPC message accepted (at least 1024); bigger ones are logged and dropped.
    pub rpc_max_message_bytes: usize,
    /// `[docker] nova_release`: `auto`, `zed` or `2026.2`; sets the service version, object versions and RPC topics.
    pub nova_release: String,
    /// `[docker] metrics_listen`: host:port serving /healthz, /readyz and /metrics (`None`: no endpoint).
    pub metrics_listen: Option<String>,
    /// `[DEFAULT] use_json` or `[docker] log_format` = json: log lines as oslo.log JSON instead of text.
    pub log_json: bool,
    /// `[DEFAULT] log_file` (under `log_dir`), or `<log_dir>/nova-docker.log`: where the log is appended (`None`: stderr).
    pub log_file: Option<PathBuf>,
    /// `[DEFAULT] log_dir`: the directory of a relative `--log-file`.
    pub log_dir: Option<PathBuf>,
    /// `[DEFAULT] use_journal`: log to journald's native socket.
    pub use_journal: bool,
    /// `[oslo_messaging_rabbit]`: how RabbitMQ entities are declared and reconnected.
    pub rabbit: RabbitSettings,
    /// `[placement]`: how to reach and authenticate to Placement.
    pub placement: ServiceSettings,
    /// `[glance]` (and `[service_user]`): how to reach and authenticate to Glance; retries `num_retries` times, also after server errors.
    pub glance: ServiceSettings,
    /// `[neutron]`: how to reach and authenticate to Neutron.
    pub neutron: ServiceSettings,
    /// `[neutron] ovs_bridge`: integration bridge for ovs VIFs when the port names none.
    pub neutron_ovs_bridge: String,
    /// `[docker]` and `instances_path`: the engine and how instances are confined.
    pub docker: DockerSettings,
    /// `[image_cache] manager_interval`: time between image cache passes (`None` when 0 or less: off).
    pub image_cache_interval: Option<Duration>,
    /// `[image_cache] remove_unused_base_images`: remove Glance-loaded images nothing uses.
    pub image_cache_remove_unused: bool,
    /// `[image_cache] remove_unused_original_minimum_age_seconds`: how long an image must be unused before it is removed.
    pub image_cache_minimum_age: Duration,
    /// `[serial_console]` and `[consoleauth] token_ttl`: interactive consoles.
    pub serial_console: SerialConsoleSettings,
}

/// `[serial_console]`: the consoles nova-serialproxy connects to.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialConsoleSettings {
    /// `[serial_console] enabled`.
    pub enabled: bool,
    /// `[serial_console] port_range`: the first and last port to listen on.
    pub ports: std::ops::RangeInclusive<u16>,
    /// `[serial_console] proxyclient_address`: where the ports listen.
    pub proxyclient_address: String,
    /// `[serial_console] base_url`: the proxy's URL given to users.
    pub base_url: String,
    /// `[consoleauth] token_ttl`.
    pub token_ttl: Duration,
    /// `[docker] serial_console_single_host`: the operator says no other
    /// compute host's serial proxy can reach this host's loopback, which
    /// allows a loopback or unspecified `proxyclient_address`.
    pub single_host: bool,
}

/// Whether `address` is one every host has (loopback, or unspecified):
/// the host:port of a console token then names no host at all.
pub fn is_shared_address(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
        || address.eq_ignore_ascii_case("localhost")
}

/// `MIN:MAX`, as Nova's `port_range` (both inclusive, MIN <= MAX, MIN > 0).
fn port_range(text: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (a, b) = text.trim().split_once(':')?;
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a > 0 && a <= b).then_some(a..=b)
}

/// `[docker] metadata_route`, or its older spelling `isolated_metadata_route
/// = true`; both set to different modes is refused rather than one ignored.
fn metadata_route(l: &Layered) -> Result<crate::net::MetadataRoute, ConfigError> {
    use crate::net::MetadataRoute;
    use options::*;
    let isolated = l.bool(&DOCKER_ISOLATED_METADATA_ROUTE)?;
    if !l.is_set(DOCKER_METADATA_ROUTE.group, DOCKER_METADATA_ROUTE.name) {
        return Ok(if isolated { MetadataRoute::DhcpPort } else { MetadataRoute::Router });
    }
    let mode = match l.choice(&DOCKER_METADATA_ROUTE)?.as_str() {
        "dhcp_port" => MetadataRoute::DhcpPort,
        "metadata_port" => MetadataRoute::MetadataPort,
        _ => MetadataRoute::Router,
    };
    if isolated && mode != MetadataRoute::DhcpPort {
        return Err(ConfigError::BadValue {
            group: DOCKER_ISOLATED_METADATA_ROUTE.group,
            name: DOCKER_ISOLATED_METADATA_ROUTE.name,
            value: "true".into(),
            expected: "false (or unset) when [docker] metadata_route names another route",
        });
    }
    Ok(mode)
}

fn secs(v: i64) -> Duration {
    Duration::from_secs(v.max(0) as u64)
}

fn secs_f(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0))
}

/// Positive seconds, or `None` when the option disables the task (0 or negative).
fn interval(v: i64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_secs(v as u64))
}

impl Settings {
    /// Loads and validates the settings from `--config-file`s in order.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut s = Self::from_layered(&Layered::load(paths)?)?;
        s.config_dirs = Vec::new();
        for dir in paths.iter().filter_map(|p| p.parent()) {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            if !s.config_dirs.iter().any(|d| d == dir) {
                s.config_dirs.push(dir.to_path_buf());
            }
        }
        Ok(s)
    }

    /// Validates settings from already layered values.
    pub fn from_layered(l: &Layered) -> Result<Self, ConfigError> {
        use options::*;
        let int = |o: &Opt| -> Result<i64, ConfigError> {
            l.int(o)?.ok_or(ConfigError::Missing { group: o.group, name: o.name })
        };
        let float = |o: &Opt| -> Result<f64, ConfigError> {
            l.float(o)?.ok_or(ConfigError::Missing { group: o.group, name: o.name })
        };
        let ssl = l.bool(&RABBIT_SSL)?;
        let transport_url = TransportUrl::parse(&l.required(&TRANSPORT_URL)?, ssl)?;
        let login_method = match l.choice(&RABBIT_LOGIN_METHOD)?.as_str() {
            "PLAIN" => LoginMethod::Plain,
            "EXTERNAL" => LoginMethod::External,
            _ => LoginMethod::AmqPlain,
        };
        let rabbit_tls_settings = rabbit_tls(l, transport_url.brokers.iter().any(|b| b.tls), login_method)?;
        for (opt, hint) in [
            (
                &RABBIT_STREAM_FANOUT,
                "fanout stream queues are not implemented; set it to false (and on the other services)",
            ),
            (&USE_QUEUE_MANAGER, "stable queue names (QManager) are not implemented; set it to false"),
        ] {
            if l.bool(opt)? {
                return Err(ConfigError::Unsupported { group: opt.group, name: opt.name, hint });
            }
        }
        if (l.bool(&RABBIT_QUORUM_QUEUE)? || l.bool(&RABBIT_TRANSIENT_QUORUM_QUEUE)?) && l.bool(&RABBIT_HA_QUEUES)? {
            return Err(ConfigError::Unsupported {
                group: RABBIT_HA_QUEUES.group,
                name: RABBIT_HA_QUEUES.name,
                hint: "quorum queues (rabbit_quorum_queue, rabbit_transient_quorum_queue) and rabbit_ha_queues exclude each other (oslo.messaging refuses both too); keep one",
            });
        }
        let my_ip = match l.string(&MY_IP) {
            Some(s) => Some(s.parse().map_err(|_| ConfigError::BadValue {
                group: MY_IP.group,
                name: MY_IP.name,
                value: s,
                expected: "IP address",
            })?),
            None => None,
        };
        // The table allows only its choices; each maps to its setting.
        let cpu_limit = match l.choice(&DOCKER_CPU_LIMIT)?.as_str() {
            "quota" => CpuLimit::Quota,
            _ => CpuLimit::Shares,
        };
        let deleted_action = match l.choice(&RUNNING_DELETED_INSTANCE_ACTION)?.as_str() {
            "noop" => DeletedInstanceAction::Noop,
            "log" => DeletedInstanceAction::Log,
            "shutdown" => DeletedInstanceAction::Shutdown,
            _ => DeletedInstanceAction::Reap,
        };
        let root_disk_limit = match l.choice(&DOCKER_ROOT_DISK_LIMIT)?.as_str() {
            "quota" => RootDiskLimit::Quota,
            "measure" => RootDiskLimit::Measure,
            "off" => RootDiskLimit::Off,
            _ => RootDiskLimit::Auto,
        };
        let metadata_route = metadata_route(l)?;
        let over_limit_action = match l.choice(&DOCKER_ROOT_DISK_OVER_LIMIT_ACTION)?.as_str() {
            "log" => OverLimitAction::Log,
            _ => OverLimitAction::Stop,
        };
        let positive = |o: &'static Opt, min: i64, expected: &'static str| -> Result<i64, ConfigError> {
            let v = int(o)?;
            if v < min {
                return Err(ConfigError::BadValue { group: o.group, name: o.name, value: v.to_string(), expected });
            }
            Ok(v)
        };
        let measure_interval = positive(&DOCKER_ROOT_DISK_MEASURE_INTERVAL, 1, "number of seconds (at least 1)")?;
        let zero_disk_root_gb = positive(&DOCKER_ZERO_DISK_FLAVOR_ROOT_GB, 0, "number of GiB (0 or more)")?;
        let console_log_max_bytes =
            positive(&DOCKER_CONSOLE_LOG_MAX_BYTES, MIN_CONSOLE_LOG_BYTES, "number of bytes (at least 65536)")?;
        let serial_enabled = l.bool(&SERIAL_CONSOLE_ENABLED)?;
        let serial_range = l.string(&SERIAL_CONSOLE_PORT_RANGE).unwrap_or_else(|| "10000:20000".into());
        let serial_ports = port_range(&serial_range).ok_or(ConfigError::BadValue {
            group: SERIAL_CONSOLE_PORT_RANGE.group,
            name: SERIAL_CONSOLE_PORT_RANGE.name,
            value: serial_range.clone(),
            expected: "port range MIN:MAX (1-65535, MIN <= MAX)",
        })?;
        let proxyclient_address = l.string(&SERIAL_CONSOLE_PROXYCLIENT_ADDRESS).unwrap_or_else(|| "127.0.0.1".into());
        let serial_single_host = l.bool(&DOCKER_SERIAL_CONSOLE_SINGLE_HOST)?;
        if serial_enabled && !serial_single_host && is_shared_address(&proxyclient_address) {
            return Err(ConfigError::SharedConsoleAddress { address: proxyclient_address });
        }
        let socket_path = docker_socket_path(&l.string(&DOCKER_HOST_URL).unwrap_or_default())?;
        let release = l.choice(&DOCKER_NOVA_RELEASE)?;
        let log_format = l.choice(&DOCKER_LOG_FORMAT)?;
        let glance_endpoint =
            l.string(&GLANCE_ENDPOINT_OVERRIDE).or_else(|| l.list(&GLANCE_API_SERVERS).into_iter().next());

        let state_path = PathBuf::from(l.string(&STATE_PATH).unwrap_or_else(|| "/var/lib/nova".into()));
        let instances_path =
            l.string(&INSTANCES_PATH).map(PathBuf::from).unwrap_or_else(|| state_path.join("instances"));
        let mut glance = service_settings(
            l,
            "image",
            ServiceOpts {
                auth_type: &GLANCE_AUTH_TYPE,
                token: &GLANCE_TOKEN,
                endpoint: &GLANCE_ENDPOINT,
                region_name: &GLANCE_REGION_NAME,
                timeout: &GLANCE_TIMEOUT,
                ks: keystone::Opts {
                    auth_url: &GLANCE_AUTH_URL,
                    username: &GLANCE_USERNAME,
                    user_id: &GLANCE_USER_ID,
                    password: &GLANCE_PASSWORD,
                    user_domain_name: &GLANCE_USER_DOMAIN_NAME,
                    user_domain_id: &GLANCE_USER_DOMAIN_ID,
                    project_name: &GLANCE_PROJECT_NAME,
                    project_id: &GLANCE_PROJECT_ID,
                    project_domain_name: &GLANCE_PROJECT_DOMAIN_NAME,
                    project_domain_id: &GLANCE_PROJECT_DOMAIN_ID,
                    default_domain_id: &GLANCE_DEFAULT_DOMAIN_ID,
                    default_domain_name: &GLANCE_DEFAULT_DOMAIN_NAME,
                    system_scope: &GLANCE_SYSTEM_SCOPE,
                    application_credential_id: &GLANCE_APPLICATION_CREDENTIAL_ID,
                    application_credential_name: &GLANCE_APPLICATION_CREDENTIAL_NAME,
                    application_credential_secret: &GLANCE_APPLICATION_CREDENTIAL_SECRET,
                    valid_interfaces: &GLANCE_VALID_INTERFACES,
                    cafile: &GLANCE_CAFILE,
                    certfile: &GLANCE_CERTFILE,
                    keyfile: &GLANCE_KEYFILE,
                    insecure: &GLANCE_INSECURE,
                },
            },
            glance_endpoint,
        )?;
        // [service_user]: a service token rides along with the user's (Glance).
        glance.service_user = keystone::service_user(
            l,
            &SERVICE_USER_SEND_SERVICE_USER_TOKEN,
            &SERVICE_USER_AUTH_TYPE,
            &SERVICE_USER_TIMEOUT,
            &keystone::Opts {
                auth_url: &SERVICE_USER_AUTH_URL,
                username: &SERVICE_USER_USERNAME,
                user_id: &SERVICE_USER_USER_ID,
                password: &SERVICE_USER_PASSWORD,
                user_domain_name: &SERVICE_USER_USER_DOMAIN_NAME,
                user_domain_id: &SERVICE_USER_USER_DOMAIN_ID,
                project_name: &SERVICE_USER_PROJECT_NAME,
                project_id: &SERVICE_USER_PROJECT_ID,
                project_domain_name: &SERVICE_USER_PROJECT_DOMAIN_NAME,
                project_domain_id: &SERVICE_USER_PROJECT_DOMAIN_ID,
                default_domain_id: &SERVICE_USER_DEFAULT_DOMAIN_ID,
                default_domain_name: &SERVICE_USER_DEFAULT_DOMAIN_NAME,
                system_scope: &SERVICE_USER_SYSTEM_SCOPE,
                application_credential_id: &SERVICE_USER_APPLICATION_CREDENTIAL_ID,
                application_credential_name: &SERVICE_USER_APPLICATION_CREDENTIAL_NAME,
                application_credential_secret: &SERVICE_USER_APPLICATION_CREDENTIAL_SECRET,
                valid_interfaces: &SERVICE_USER_VALID_INTERFACES,
                cafile: &SERVICE_USER_CAFILE,
                certfile: &SERVICE_USER_CERTFILE,
                keyfile: &SERVICE_USER_KEYFILE,
                insecure: &SERVICE_USER_INSECURE,
            },
        )?;
        Ok(Settings {
            unknown_options: l.unknown(),
            unused_options: l.unused(),
            host: l.string(&HOST).unwrap_or_else(system_hostname),
            transport_url,
            control_exchange: l.string(&CONTROL_EXCHANGE).unwrap_or_else(|| "nova".into()),
            rpc_response_timeout: secs(int(&RPC_RESPONSE_TIMEOUT)?),
            executor_pool_size: int(&EXECUTOR_THREAD_POOL_SIZE)?.max(1) as usize,
            report_interval: secs(int(&REPORT_INTERVAL)?.max(1)),
            my_ip,
            state_path,
            config_dirs: Vec::new(),
            debug: l.bool(&DEBUG)?,
            max_concurrent_builds: int(&MAX_CONCURRENT_BUILDS)?.max(0) as usize,
            max_concurrent_snapshots: int(&MAX_CONCURRENT_SNAPSHOTS)?.max(0) as usize,
            reserved_host_cpus: int(&RESERVED_HOST_CPUS)?.max(0) as u64,
            reserved_host_memory_mb: int(&RESERVED_HOST_MEMORY_MB)?.max(0) as u64,
            reserved_host_disk_mb: int(&RESERVED_HOST_DISK_MB)?.max(0) as u64,
            cpu_allocation_ratio: l.float(&CPU_ALLOCATION_RATIO)?.filter(|r| *r > 0.0),
            ram_allocation_ratio: l.float(&RAM_ALLOCATION_RATIO)?.filter(|r| *r > 0.0),
            disk_allocation_ratio: l.float(&DISK_ALLOCATION_RATIO)?.filter(|r| *r > 0.0),
            initial_cpu_allocation_ratio: l.float(&INITIAL_CPU_ALLOCATION_RATIO)?,
            initial_ram_allocation_ratio: l.float(&INITIAL_RAM_ALLOCATION_RATIO)?,
            initial_disk_allocation_ratio: float(&INITIAL_DISK_ALLOCATION_RATIO)?,
            update_resources_interval: interval(int(&UPDATE_RESOURCES_INTERVAL)?).unwrap_or(Duration::from_secs(60)),
            sync_power_state_interval: interval(int(&SYNC_POWER_STATE_INTERVAL)?),
            force_config_drive: l.bool(&FORCE_CONFIG_DRIVE)?,
            dhcp_domain: l.string(&API_DHCP_DOMAIN).filter(|d| !d.is_empty()),
            shutdown_timeout: secs(int(&SHUTDOWN_TIMEOUT)?),
            running_deleted_instance_action: deleted_action,
            running_deleted_instance_poll_interval: interval(int(&RUNNING_DELETED_INSTANCE_POLL_INTERVAL)?),
            vif_plugging_timeout: secs(int(&VIF_PLUGGING_TIMEOUT)?),
            vif_plugging_is_fatal: l.bool(&VIF_PLUGGING_IS_FATAL)?,
            resume_guests_state_on_host_boot: l.bool(&RESUME_GUESTS_STATE_ON_HOST_BOOT)?,
            reclaim_instance_interval: interval(int(&RECLAIM_INSTANCE_INTERVAL)?),
            resize_confirm_window: interval(int(&RESIZE_CONFIRM_WINDOW)?),
            service_down_time: secs(int(&SERVICE_DOWN_TIME)?.max(1)),
            graceful_shutdown_timeout: secs(int(&GRACEFUL_SHUTDOWN_TIMEOUT)?),
            hard_reboot_vif_wait: l.choice_list(&WAIT_FOR_VIF_PLUGGED_EVENT_DURING_HARD_REBOOT)?,
            rpc_max_message_bytes: int(&DOCKER_RPC_MAX_MESSAGE_BYTES)?.max(1024) as usize,
            nova_release: release,
            metrics_listen: l.string(&DOCKER_METRICS_LISTEN),
            log_json: log_format == "json" || l.bool(&USE_JSON)?,
            log_file: crate::logging::log_file_path(
                l.string(&LOG_FILE).as_deref().map(Path::new),
                l.string(&LOG_DIR).as_deref().map(Path::new),
            ),
            log_dir: l.string(&LOG_DIR).map(PathBuf::from),
            use_journal: l.bool(&USE_JOURNAL)?,
            rabbit: RabbitSettings {
                heartbeat_timeout_threshold: int(&HEARTBEAT_TIMEOUT_THRESHOLD)?.clamp(0, u16::MAX as i64) as u16,
                durable_queues: l.bool(&AMQP_DURABLE_QUEUES)?,
                auto_delete: l.bool(&AMQP_AUTO_DELETE)?,
                ha_queues: l.bool(&RABBIT_HA_QUEUES)?,
                quorum_queue: l.bool(&RABBIT_QUORUM_QUEUE)?,
                quorum_delivery_limit: int(&RABBIT_QUORUM_DELIVERY_LIMIT)?,
                quorum_max_memory_length: int(&RABBIT_QUORUM_MAX_MEMORY_LENGTH)?,
                quorum_max_memory_bytes: int(&RABBIT_QUORUM_MAX_MEMORY_BYTES)?,
                transient_queues_ttl: secs(int(&RABBIT_TRANSIENT_QUEUES_TTL)?),
                prefetch_count: int(&RABBIT_QOS_PREFETCH_COUNT)?.clamp(0, u16::MAX as i64) as u16,
                retry_interval: secs_f(float(&RABBIT_RETRY_INTERVAL)?),
                retry_backoff: secs_f(float(&RABBIT_RETRY_BACKOFF)?),
                interval_max: secs_f(float(&RABBIT_INTERVAL_MAX)?),
                missing_consumer_retry_timeout: secs(int(&KOMBU_MISSING_CONSUMER_RETRY_TIMEOUT)?),
                transient_quorum_queue: l.bool(&RABBIT_TRANSIENT_QUORUM_QUEUE)?,
                login_method,
                tls: rabbit_tls_settings,
            },
            placement: service_settings(
                l,
                "placement",
                ServiceOpts {
                    auth_type: &PLACEMENT_AUTH_TYPE,
                    token: &PLACEMENT_TOKEN,
                    endpoint: &PLACEMENT_ENDPOINT,
                    region_name: &PLACEMENT_REGION_NAME,
                    timeout: &PLACEMENT_TIMEOUT,
                    ks: keystone::Opts {
                        auth_url: &PLACEMENT_AUTH_URL,
                        username: &PLACEMENT_USERNAME,
                        user_id: &PLACEMENT_USER_ID,
                        password: &PLACEMENT_PASSWORD,
                        user_domain_name: &PLACEMENT_USER_DOMAIN_NAME,
                        user_domain_id: &PLACEMENT_USER_DOMAIN_ID,
                        project_name: &PLACEMENT_PROJECT_NAME,
                        project_id: &PLACEMENT_PROJECT_ID,
                        project_domain_name: &PLACEMENT_PROJECT_DOMAIN_NAME,
                        project_domain_id: &PLACEMENT_PROJECT_DOMAIN_ID,
                        default_domain_id: &PLACEMENT_DEFAULT_DOMAIN_ID,
                        default_domain_name: &PLACEMENT_DEFAULT_DOMAIN_NAME,
                        system_scope: &PLACEMENT_SYSTEM_SCOPE,
                        application_credential_id: &PLACEMENT_APPLICATION_CREDENTIAL_ID,
                        application_credential_name: &PLACEMENT_APPLICATION_CREDENTIAL_NAME,
                        application_credential_secret: &PLACEMENT_APPLICATION_CREDENTIAL_SECRET,
                        valid_interfaces: &PLACEMENT_VALID_INTERFACES,
                        cafile: &PLACEMENT_CAFILE,
                        certfile: &PLACEMENT_CERTFILE,
                        keyfile: &PLACEMENT_KEYFILE,
                        insecure: &PLACEMENT_INSECURE,
                    },
                },
                l.string(&PLACEMENT_ENDPOINT_OVERRIDE),
            )?,
            glance: glance
                .with_retries(Retries { attempts: int(&GLANCE_NUM_RETRIES)?.clamp(0, 20) as u32, server_errors: true }),
            neutron: service_settings(
                l,
                "network",
                ServiceOpts {
                    auth_type: &NEUTRON_AUTH_TYPE,
                    token: &NEUTRON_TOKEN,
                    endpoint: &NEUTRON_ENDPOINT,
                    region_name: &NEUTRON_REGION_NAME,
                    timeout: &NEUTRON_TIMEOUT,
                    ks: keystone::Opts {
                        auth_url: &NEUTRON_AUTH_URL,
                        username: &NEUTRON_USERNAME,
                        user_id: &NEUTRON_USER_ID,
                        password: &NEUTRON_PASSWORD,
                        user_domain_name: &NEUTRON_USER_DOMAIN_NAME,
                        user_domain_id: &NEUTRON_USER_DOMAIN_ID,
                        project_name: &NEUTRON_PROJECT_NAME,
                        project_id: &NEUTRON_PROJECT_ID,
                        project_domain_name: &NEUTRON_PROJECT_DOMAIN_NAME,
                        project_domain_id: &NEUTRON_PROJECT_DOMAIN_ID,
                        default_domain_id: &NEUTRON_DEFAULT_DOMAIN_ID,
                        default_domain_name: &NEUTRON_DEFAULT_DOMAIN_NAME,
                        system_scope: &NEUTRON_SYSTEM_SCOPE,
                        application_credential_id: &NEUTRON_APPLICATION_CREDENTIAL_ID,
                        application_credential_name: &NEUTRON_APPLICATION_CREDENTIAL_NAME,
                        application_credential_secret: &NEUTRON_APPLICATION_CREDENTIAL_SECRET,
                        valid_interfaces: &NEUTRON_VALID_INTERFACES,
                        cafile: &NEUTRON_CAFILE,
                        certfile: &NEUTRON_CERTFILE,
                        keyfile: &NEUTRON_KEYFILE,
                        insecure: &NEUTRON_INSECURE,
                    },
                },
                l.string(&NEUTRON_ENDPOINT_OVERRIDE),
            )?,
            neutron_ovs_bridge: l.string(&NEUTRON_OVS_BRIDGE).unwrap_or_else(|| "br-int".into()),
            docker: DockerSettings {
                socket_path,
                api_timeout: secs(int(&DOCKER_API_TIMEOUT)?.max(1)),
                pids_limit: int(&DOCKER_PIDS_LIMIT)?,
                cpu_limit,
                cpuset_cpus: l.string(&DOCKER_CPUSET_CPUS),
                capabilities: l.list(&DOCKER_CAPABILITIES).into_iter().map(|c| c.to_uppercase()).collect(),
                seccomp_profile: l.string(&DOCKER_SECCOMP_PROFILE).map(PathBuf::from),
                userns_mode: l.string(&DOCKER_USERNS_MODE),
                read_only_rootfs: l.bool(&DOCKER_READ_ONLY_ROOTFS)?,
                inject_key: l.bool(&DOCKER_INJECT_KEY)?,
                metadata_route,
                snapshot_pause: l.bool(&DOCKER_SNAPSHOT_PAUSE)?,
                keep_snapshot_images: l.bool(&DOCKER_KEEP_SNAPSHOT_IMAGES)?,
                max_image_manifest_bytes: int(&DOCKER_MAX_IMAGE_MANIFEST_BYTES)?.max(4096) as u64,
                max_image_unpacked_bytes: (int(&DOCKER_MAX_IMAGE_UNPACKED_MB)?.max(1) as u64).saturating_mul(1 << 20),
                instances_path,
                root_disk_limit,
                root_disk_measure_interval: Duration::from_secs(measure_interval as u64),
                root_disk_over_limit_action: over_limit_action,
                zero_disk_flavor_root_gb: zero_disk_root_gb as u64,
                console_log_max_bytes: console_log_max_bytes as u64,
                interactive_console: serial_enabled,
            },
            image_cache_interval: interval(int(&IMAGE_CACHE_MANAGER_INTERVAL)?),
            image_cache_remove_unused: l.bool(&IMAGE_CACHE_REMOVE_UNUSED)?,
            image_cache_minimum_age: secs(int(&IMAGE_CACHE_MINIMUM_AGE)?),
            serial_console: SerialConsoleSettings {
                enabled: serial_enabled,
                ports: serial_ports,
                proxyclient_address,
                base_url: l.string(&SERIAL_CONSOLE_BASE_URL).unwrap_or_else(|| "ws://127.0.0.1:6083/".into()),
                token_ttl: secs(int(&CONSOLEAUTH_TOKEN_TTL)?.max(1)),
                single_host: serial_single_host,
            },
        })
    }

    /// Where the node identity is kept (`$state_path/compute_id`, as Nova):
    /// the only place it is written.
    pub fn compute_id_path(&self) -> PathBuf {
        self.state_path.join("compute_id")
    }

    /// Where Nova (2023.1+, `nova.virt.node.read_local_node_uuid`) reads
    /// the node identity, in order: `compute_id` next to each configuration
    /// file (where deployment tools provision it), then in `state_path`.
    /// Every one found must hold the same uuid.
    pub fn compute_id_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.config_dirs.iter().map(|d| d.join("compute_id")).collect();
        let own = self.compute_id_path();
        if !paths.contains(&own) {
            paths.push(own);
        }
        paths
    }
}

struct ServiceOpts {
    auth_type: &'static Opt,
    token: &'static Opt,
    endpoint: &'static Opt,
    region_name: &'static Opt,
    timeout: &'static Opt,
    ks: keystone::Opts,
}

fn service_settings(
    l: &Layered,
    service_type: &'static str,
    o: ServiceOpts,
    endpoint_override: Option<String>,
) -> Result<ServiceSettings, ConfigError> {
    keystone::refuse_unsupported(l, o.auth_type.group)?;
    let auth_type = l.string(o.auth_type).unwrap_or_else(|| "password".into());
    let auth = match auth_type.as_str() {
        "user" => AuthSettings::User,
        "none" | "noauth" => AuthSettings::None,
        "admin_token" | "token" => {
            AuthSettings::AdminToken { endpoint: l.string(o.endpoint), token: l.required(o.token)? }
        }
        "password" | "v3password" | "v3applicationcredential" => {
            // Without credentials, a password section cannot authenticate; allow it
            // only when there is nothing to authenticate to (no auth_url): the
            // service then runs without that peer and `check` says so.
            match l.string(o.ks.auth_url) {
                Some(auth_url) => AuthSettings::Keystone(keystone::keystone_auth(l, &auth_type, auth_url, &o.ks)?),
                None if auth_type == "v3applicationcredential" => {
                    return Err(ConfigError::Missing { group: o.ks.auth_url.group, name: o.ks.auth_url.name });
                }
                None => AuthSettings::None,
            }
        }
        other => {
            return Err(ConfigError::BadValue {
                group: o.auth_type.group,
                name: o.auth_type.name,
                value: other.into(),
                expected: "auth type (password, v3password, v3applicationcredential, admin_token, none, user)",
            });
        }
    };
    let timeout = l.int(o.timeout)?.unwrap_or(30).max(1);
    Ok(ServiceSettings {
        service_type,
        auth,
        endpoint_override,
        region_name: l.string(o.region_name),
        valid_interfaces: keystone::interfaces(l, &o.ks)?,
        timeout: Duration::from_secs(timeout as u64),
        retries: Retries::CONNECTION,
        tls: keystone::tls(l, &o.ks)?,
        service_user: None,
    })
}

impl ServiceSettings {
    /// The same settings with other retries.
    pub fn with_retries(self, retries: Retries) -> Self {
        ServiceSettings { retries, ..self }
    }
}

fn docker_socket_path(url: &str) -> Result<PathBuf, ConfigError> {
    let bad = |expected| ConfigError::BadValue {
        group: options::DOCKER_HOST_URL.group,
        name: options::DOCKER_HOST_URL.name,
        value: url.to_string(),
        expected,
    };
    if url.is_empty() {
        return Ok(PathBuf::from("/var/run/docker.sock"));
    }
    match url.strip_prefix("unix://") {
        Some(path) if Path::new(path).is_absolute() => Ok(PathBuf::from(path)),
        Some(_) => Err(bad("unix socket URL with an absolute path")),
        None => Err(bad("unix:// URL (TCP is refused: the Docker API is root-equivalent)")),
    }
}

/// The machine's hostname, Nova's default for `[DEFAULT] host`.
pub fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON_COMPUTE_CONF: &str = "\
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:5672/nova34
host = newhost1
compute_driver = fake.FakeDriverWithoutFakeNodes
state_path = /tmp/state-compute
instances_path = /tmp/state-compute/instances
my_ip = 127.0.0.1

[glance]
endpoint_override = http://127.0.0.1:19292

[placement]
auth_type = admin_token
endpoint = http://127.0.0.1:18778
token = admin
region_name = RegionOne

[neutron]
auth_type = admin_token
endpoint = http://127.0.0.1:19696
token = admin
endpoint_override = http://127.0.0.1:19696
region_name = RegionOne

[oslo_concurrency]
lock_path = /tmp/lock

[oslo_messaging_notifications]
driver = noop
";

    #[test]
    fn reads_a_python_compute_nova_conf() {
        let s = Settings::from_layered(&Layered::from_text(PYTHON_COMPUTE_CONF).unwrap()).unwrap();
        assert_eq!(s.host, "newhost1");
        assert_eq!(s.transport_url.brokers[0].vhost, "nova34");
        assert_eq!(s.my_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(s.report_interval, Duration::from_secs(10));
        assert_eq!(s.rpc_response_timeout, Duration::from_secs(60));
        assert_eq!(
            s.placement.auth,
            AuthSettings::AdminToken { endpoint: Some("http://127.0.0.1:18778".into()), token: "admin".into() }
        );
        assert_eq!(s.glance.endpoint_override.as_deref(), Some("http://127.0.0.1:19292"));
        assert_eq!(s.glance.auth, AuthSettings::User);
        assert_eq!(s.docker.socket_path, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(s.docker.instances_path, PathBuf::from("/tmp/state-compute/instances"));
        assert!(!s.rabbit.durable_queues);
        assert_eq!(s.compute_id_path(), PathBuf::from("/tmp/state-compute/compute_id"));
    }

    #[test]
    fn compute_id_is_looked_for_next_to_each_file_then_in_state_path() {
        let dir = std::env::temp_dir().join(format!("nd-conf-cid-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let (a, b, c) = (dir.join("nova.conf"), dir.join("d/10.conf"), dir.join("d/20.conf"));
        std::fs::write(&a, "[DEFAULT]\ntransport_url = rabbit://h/\nstate_path = /var/lib/nova\n").unwrap();
        std::fs::write(&b, "").unwrap();
        std::fs::write(&c, "").unwrap();
        let s = Settings::load(&[a, b, c]).unwrap();
        assert_eq!(
            s.compute_id_paths(),
            [dir.join("compute_id"), dir.join("d/compute_id"), PathBuf::from("/var/lib/nova/compute_id")]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let dir = std::env::temp_dir().join(format!("nd-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.conf");
        let b = dir.join("b.conf");
        std::fs::write(&a, "[DEFAULT]\ntransport_url = rabbit://u:p@h1/\nhost = one\nreport_interval = 5\n").unwrap();
        std::fs::write(&b, "[DEFAULT]\nhost = two\n").unwrap();
        let s = Settings::load(&[a, b]).unwrap();
        assert_eq!(s.host, "two");
        assert_eq!(s.report_interval, Duration::from_secs(5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn serial_console_options_are_read() {
        let base = "[DEFAULT]\ntransport_url = rabbit://h/\n";
        let s = Settings::from_layered(&Layered::from_text(base).unwrap()).unwrap();
        assert!(!s.serial_console.enabled && !s.docker.interactive_console);
        assert_eq!(s.serial_console.ports, 10000..=20000);
        assert_eq!(s.serial_console.proxyclient_address, "127.0.0.1");
        assert_eq!(s.serial_console.token_ttl, Duration::from_secs(600));
        let s = Settings::from_layered(
            &Layered::from_text(&format!(
                "{base}[serial_console]\nenabled = true\nport_range = 16000:16010\nproxyclient_address = 10.0.0.5\n\
                 base_url = ws://proxy:6083/\n[consoleauth]\ntoken_ttl = 30\n"
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(s.serial_console.enabled && s.docker.interactive_console);
        assert_eq!(s.serial_console.ports, 16000..=16010);
        assert_eq!(s.serial_console.proxyclient_address, "10.0.0.5");
        assert_eq!(s.serial_console.base_url, "ws://proxy:6083/");
        assert_eq!(s.serial_console.token_ttl, Duration::from_secs(30));
        // An address every host has: refused with consoles on, unless the
        // operator says the cloud has one host.
        for shared in ["127.0.0.1", "127.0.1.1", "::1", "0.0.0.0", "::", "localhost"] {
            let text = format!("{base}[serial_console]\nenabled = true\nproxyclient_address = {shared}\n");
            let err = Settings::from_layered(&Layered::from_text(&text).unwrap()).unwrap_err();
            assert!(matches!(err, ConfigError::SharedConsoleAddress { .. }), "{shared}: {err}");
            assert!(err.to_string().contains("serial_console_single_host"), "{err}");
            let one_host = format!("{text}[docker]\nserial_console_single_host = true\n");
            let s = Settings::from_layered(&Layered::from_text(&one_host).unwrap()).unwrap();
            assert!(s.serial_console.single_host && s.serial_console.proxyclient_address == shared);
            let off = format!("{base}[serial_console]\nproxyclient_address = {shared}\n");
            assert!(Settings::from_layered(&Layered::from_text(&off).unwrap()).is_ok(), "{shared} with consoles off");
        }
        for bad in ["20000:10000", "0:10", "10000", "a:b", "1:70000"] {
            let err = Settings::from_layered(
                &Layered::from_text(&format!("{base}[serial_console]\nport_range = {bad}\n")).unwrap(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("port_range"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        let err = Settings::from_layered(
            &Layered::from_text("[DEFAULT]\ntransport_url = rabbit://h/\nreport_interval = often\n").unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "[DEFAULT] report_interval = \"often\" is not a valid integer");
        let err = Settings::from_layered(&Layered::from_text("[DEFAULT]\nhost = x\n").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "[DEFAULT] transport_url must be set");
        let err = Settings::from_layered(
            &Layered::from_text("[DEFAULT]\ntransport_url = rabbit://h/\n[docker]\nhost_url = tcp://1.2.3.4:2375\n")
                .unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("TCP is refused"));
    }

    #[test]
    fn the_metadata_route_follows_either_spelling_and_refuses_both_disagreeing() {
        use crate::net::MetadataRoute;
        let route = |docker: &str| {
            let text = format!("[DEFAULT]\ntransport_url = rabbit://h/\n[docker]\n{docker}");
            Settings::from_layered(&Layered::from_text(&text).unwrap()).map(|s| s.docker.metadata_route)
        };
        assert_eq!(route("").unwrap(), MetadataRoute::Router);
        assert_eq!(route("isolated_metadata_route = true\n").unwrap(), MetadataRoute::DhcpPort);
        assert_eq!(route("metadata_route = metadata_port\n").unwrap(), MetadataRoute::MetadataPort);
        assert_eq!(route("metadata_route = dhcp_port\n").unwrap(), MetadataRoute::DhcpPort);
        assert_eq!(route("metadata_route = router\n").unwrap(), MetadataRoute::Router);
        assert_eq!(
            route("metadata_route = dhcp_port\nisolated_metadata_route = true\n").unwrap(),
            MetadataRoute::DhcpPort
        );
        let e = route("metadata_route = metadata_port\nisolated_metadata_route = true\n").unwrap_err().to_string();
        assert!(e.contains("isolated_metadata_route") && e.contains("metadata_route names another"), "{e}");
        let e = route("metadata_route = ovn\n").unwrap_err().to_string();
        assert!(e.contains("metadata_port"), "{e}");
    }

    #[test]
    fn host_resource_options_are_read_and_checked() {
        let base = "[DEFAULT]\ntransport_url = rabbit://h/\n[docker]\n";
        let s = Settings::from_layered(&Layered::from_text(base).unwrap()).unwrap();
        assert_eq!(s.docker.root_disk_limit, RootDiskLimit::Auto);
        assert_eq!(s.docker.root_disk_over_limit_action, OverLimitAction::Stop);
        assert_eq!(s.docker.root_disk_measure_interval, Duration::from_secs(60));
        assert_eq!(s.docker.zero_disk_flavor_root_gb, 0);
        assert_eq!(s.docker.console_log_max_bytes, 2 * 1024 * 1024);
        let text = format!(
            "{base}root_disk_limit = measure\nroot_disk_over_limit_action = log\nroot_disk_measure_interval = 2\n\
             zero_disk_flavor_root_gb = 10\nconsole_log_max_bytes = 65536\n"
        );
        let s = Settings::from_layered(&Layered::from_text(&text).unwrap()).unwrap();
        assert_eq!(s.docker.root_disk_limit, RootDiskLimit::Measure);
        assert_eq!(s.docker.root_disk_over_limit_action, OverLimitAction::Log);
        assert_eq!(s.docker.root_disk_measure_interval, Duration::from_secs(2));
        assert_eq!(s.docker.zero_disk_flavor_root_gb, 10);
        for bad in [
            "root_disk_limit = maybe",
            "root_disk_over_limit_action = delete",
            "root_disk_measure_interval = 0",
            "zero_disk_flavor_root_gb = -1",
            "console_log_max_bytes = 0",
            "console_log_max_bytes = 1000",
        ] {
            let err = Settings::from_layered(&Layered::from_text(&format!("{base}{bad}\n")).unwrap()).unwrap_err();
            let name = bad.split(' ').next().unwrap();
            assert!(err.to_string().contains(name), "{bad}: {err}");
        }
    }

    #[test]
    fn oslo_booleans_and_durability_flags() {
        let s = Settings::from_layered(
            &Layered::from_text(
                "[DEFAULT]\ntransport_url = rabbit://h/\n[oslo_messaging_rabbit]\namqp_durable_queues = True\nrabbit_quorum_queue = yes\n",
            )
            .unwrap(),
        )
        .unwrap();
        assert!(s.rabbit.durable_queues && s.rabbit.quorum_queue);
    }

    #[test]
    fn glance_retries_follow_num_retries_and_the_others_keep_theirs() {
        let s = Settings::from_layered(&Layered::from_text(PYTHON_COMPUTE_CONF).unwrap()).unwrap();
        assert_eq!(s.glance.retries, Retries { attempts: 3, server_errors: true });
        assert_eq!((s.placement.retries, s.neutron.retries), (Retries::CONNECTION, Retries::CONNECTION));
        let conf = format!("{PYTHON_COMPUTE_CONF}\n[glance]\nnum_retries = 0\n");
        let s = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap();
        assert_eq!(s.glance.retries.attempts, 0);
    }

    #[test]
    fn image_cache_options_are_read() {
        let s = Settings::from_layered(&Layered::from_text(PYTHON_COMPUTE_CONF).unwrap()).unwrap();
        assert_eq!(s.image_cache_interval, Some(Duration::from_secs(2400)));
        assert!(s.image_cache_remove_unused);
        assert_eq!(s.image_cache_minimum_age, Duration::from_secs(86400));
        let conf = format!(
            "{PYTHON_COMPUTE_CONF}\n[image_cache]\nmanager_interval = 0\nremove_unused_original_minimum_age_seconds = 5\n"
        );
        let s = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap();
        assert_eq!((s.image_cache_interval, s.image_cache_minimum_age), (None, Duration::from_secs(5)));
    }

    #[test]
    fn every_choice_of_the_table_is_read_and_nothing_else() {
        for opt in options::ALL.iter().filter(|o| !o.choices.is_empty()) {
            for choice in opt.choices {
                let conf =
                    format!("[DEFAULT]\ntransport_url = rabbit://h/\n[{}]\n{} = {choice}\n", opt.group, opt.name);
                let s = Settings::from_layered(&Layered::from_text(&conf).unwrap());
                // EXTERNAL is read, then refused without TLS and a client certificate.
                let refused = opt.name == "rabbit_login_method" && matches!(s, Err(ConfigError::Unsupported { .. }));
                assert!(s.is_ok() || refused, "{}.{} = {choice}: {:?}", opt.group, opt.name, s.err());
            }
            let conf = format!("[DEFAULT]\ntransport_url = rabbit://h/\n[{}]\n{} = bogus\n", opt.group, opt.name);
            let err = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap_err();
            let want = format!("[{}] {} = \"bogus\" is not one of {}", opt.group, opt.name, opt.choices.join(", "));
            assert_eq!(err.to_string(), want);
        }
        let conf = "[DEFAULT]\ntransport_url = rabbit://h/\n[docker]\ncpu_limit = quota\nroot_disk_limit = off\n";
        let s = Settings::from_layered(&Layered::from_text(conf).unwrap()).unwrap();
        assert_eq!((s.docker.cpu_limit, s.docker.root_disk_limit), (CpuLimit::Quota, RootDiskLimit::Off));
    }

    #[test]
    fn rabbit_tls_options_are_read_or_refused() {
        let dir = std::env::temp_dir().join(format!("nd-rabbit-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.join("ca.pem"), cert).unwrap();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("c.key"), "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n").unwrap();
        let d = dir.display();
        let load = |url: &str, extra: &str| {
            let conf = format!("[DEFAULT]\ntransport_url = {url}\n[oslo_messaging_rabbit]\n{extra}\n");
            Settings::from_layered(&Layered::from_text(&conf).unwrap())
        };
        let files = format!("ssl_ca_file = {d}/ca.pem\nssl_cert_file = {d}/c.pem\nssl_key_file = {d}/c.key");
        let s = load("amqps://h/", &format!("{files}\nrabbit_login_method = EXTERNAL")).unwrap();
        assert_eq!(s.rabbit.login_method, LoginMethod::External);
        assert_eq!(s.rabbit.tls.ca_pem.as_deref(), Some(cert));
        assert!(s.rabbit.tls.client_identity.is_some());
        assert!(!format!("{:?}", s.rabbit).contains("PRIVATE KEY"), "the key is not shown");
        assert_eq!(load("rabbit://h/", "").unwrap().rabbit.login_method, LoginMethod::AmqPlain);
        let refused = |url: &str, extra: &str, what: &str| {
            let e = load(url, extra).unwrap_err().to_string();
            assert!(e.contains(what), "{extra}: {e}");
        };
        refused("rabbit://h/", &format!("{files}\nrabbit_login_method = EXTERNAL"), "rabbit_login_method");
        refused("amqps://h/", "rabbit_login_method = EXTERNAL", "rabbit_login_method");
        refused("amqps://h/", &format!("ssl_cert_file = {d}/c.pem"), "ssl_key_file must be set");
        refused("amqps://h/", &format!("ssl_ca_file = {d}/c.key"), "not a valid PEM file of CA certificates");
        refused("amqps://h/", &format!("ssl_ca_file = {d}/missing.pem"), "cannot read");
        refused("amqps://h/", "ssl_version = tlsv1_2", "ssl_version is not supported");
        assert!(load("amqps://h/", "ssl_version = sslv23").is_ok());
        refused("amqps://h/", "ssl_enforce_fips_mode = true", "ssl_enforce_fips_mode is not supported");
        refused("rabbit://h/", "rabbit_stream_fanout = true", "rabbit_stream_fanout is not supported");
        refused("rabbit://h/", "use_queue_manager = true", "use_queue_manager is not supported");
        refused("rabbit://h/", "rabbit_transient_quorum_queue = true\nrabbit_ha_queues = true", "rabbit_ha_queues");
        let s = load("rabbit://h/", "rabbit_transient_quorum_queue = true\nrabbit_transient_queues_ttl = 0").unwrap();
        assert!(s.rabbit.transient_quorum_queue);
        assert_eq!(s.rabbit.transient_queues_ttl, Duration::ZERO);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_options_of_our_own_group_are_reported() {
        let conf =
            format!("{PYTHON_COMPUTE_CONF}\n[docker]\nvif_driver = x\npids_limit = 10\nsnapshot_pauze = false\n");
        let s = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap();
        assert_eq!(s.unknown_options, ["[docker] snapshot_pauze", "[docker] vif_driver"]);
        // Nova's own groups hold many options this service does not read.
        let s = Settings::from_layered(&Layered::from_text(PYTHON_COMPUTE_CONF).unwrap()).unwrap();
        assert!(s.unknown_options.is_empty(), "{:?}", s.unknown_options);
    }

    #[test]
    fn options_the_host_does_not_use_are_listed_per_group() {
        let conf = "[DEFAULT]\ntransport_url = rabbit://h/\ncompute_driver = libvirt.LibvirtDriver\nhost = h1\n\
                    use_syslog = true\n[libvirt]\nvirt_type = kvm\n[docker]\nvif_driver = x\n";
        let s = Settings::from_layered(&Layered::from_text(conf).unwrap()).unwrap();
        assert_eq!(
            s.unused_options,
            [
                "[DEFAULT] not used by this host: compute_driver, use_syslog",
                "[libvirt] not used by this host: virt_type"
            ]
        );
    }

    #[test]
    fn instances_path_defaults_under_state_path() {
        let conf = "[DEFAULT]\ntransport_url = rabbit://h/\nstate_path = /srv/nova\n";
        let s = Settings::from_layered(&Layered::from_text(conf).unwrap()).unwrap();
        assert_eq!(s.docker.instances_path, PathBuf::from("/srv/nova/instances"));
    }

    #[test]
    fn values_are_interpolated_as_oslo_config_does() {
        let conf = "[DEFAULT]\nbase = /srv\nstate_path = $base/nova\ninstances_path = ${state_path}/inst\n\
                    transport_url = rabbit://nova:pa$$s@h/\nhost = ${docker.node}-x\n\
                    [docker]\nnode = cmp1\n[glance]\nendpoint_override = http://img.$host:9292\n";
        let s = Settings::from_layered(&Layered::from_text(conf).unwrap()).unwrap();
        assert_eq!(s.state_path, PathBuf::from("/srv/nova"));
        assert_eq!(s.docker.instances_path, PathBuf::from("/srv/nova/inst"));
        assert_eq!(s.compute_id_path(), PathBuf::from("/srv/nova/compute_id"));
        assert_eq!(s.transport_url.brokers[0].password, "pa$s");
        assert_eq!(s.host, "cmp1-x");
        assert_eq!(s.glance.endpoint_override.as_deref(), Some("http://img.cmp1-x:9292"));
        // A default holding a reference (instances_path) follows state_path.
        let s = Settings::from_layered(
            &Layered::from_text("[DEFAULT]\ntransport_url = rabbit://h/\nstate_path = /data\n").unwrap(),
        )
        .unwrap();
        assert_eq!(s.docker.instances_path, PathBuf::from("/data/instances"));
    }

    #[test]
    fn bad_references_are_errors_naming_the_option() {
        let err =
            Layered::from_text("[DEFAULT]\ntransport_url = rabbit://h/\nstate_path = $pybasedir/x\n").unwrap_err();
        assert_eq!(err.to_string(), "[DEFAULT] state_path: $pybasedir: no such option in [DEFAULT]");
        let err = Layered::from_text("[DEFAULT]\nstate_path = $instances_path\ninstances_path = $state_path/i\n")
            .unwrap_err();
        assert!(err.to_string().contains("the references loop"), "{err}");
        let err = Layered::from_text("[glance]\nregion_name = $my_ip\n").unwrap_err();
        assert!(err.to_string().starts_with("[glance] region_name: $my_ip: its value is computed"), "{err}");
        // References in options the host does not read are Nova's business.
        assert!(Layered::from_text("[vnc]\nserver_listen = $my_ip\n[DEFAULT]\nx = $nothing\n").is_ok());
    }

    #[test]
    fn logging_options_are_read_as_oslo_log() {
        let base = "[DEFAULT]\ntransport_url = rabbit://h/\n";
        let s = Settings::from_layered(&Layered::from_text(base).unwrap()).unwrap();
        assert_eq!((s.log_file.clone(), s.log_json, s.use_journal, s.debug), (None, false, false, false));
        let conf = format!(
            "{base}log_dir = /var/log/nova\nlog_file = c.log\nuse_json = true\nuse_journal = yes\ndebug = on\n"
        );
        let s = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap();
        assert_eq!(s.log_file, Some(PathBuf::from("/var/log/nova/c.log")));
        assert!(s.log_json && s.use_journal && s.debug);
        let conf = format!("{base}log_dir = /var/log/nova\n");
        let s = Settings::from_layered(&Layered::from_text(&conf).unwrap()).unwrap();
        assert_eq!(s.log_file, Some(PathBuf::from("/var/log/nova/nova-docker.log")));
        let s = Settings::from_layered(&Layered::from_text(&format!("{base}[docker]\nlog_format = json\n")).unwrap());
        assert!(s.unwrap().log_json);
    }
}
