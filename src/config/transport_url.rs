//! oslo.messaging's `transport_url`, parsed the way `TransportURL.parse` and the
//! rabbit driver read it: several comma-separated hosts (failover), credentials
//! per host, percent-encoding, IPv6 literals, the default port, and the vhost
//! (`/` when the path is empty, as kombu does).

use std::fmt;

/// One broker endpoint of a transport URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address; an IPv6 literal without its brackets.
    pub host: String,
    /// The port given, else 5672 (5671 with TLS).
    pub port: u16,
    /// Percent-decoded user name; `guest` when the host has no credentials.
    pub username: String,
    /// Percent-decoded password (never shown by `Debug`/`Display`); `guest`
    /// when the host has no credentials, empty for `user@host`.
    pub password: String,
    /// The URL's path, percent-decoded, shared by every host; `/` when empty.
    pub vhost: String,
    /// Whether to connect with TLS: `?ssl=true` in the URL or
    /// `[oslo_messaging_rabbit] ssl = true`.
    pub tls: bool,
}

impl fmt::Debug for BrokerAddress {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let scheme = if self.tls { "amqps" } else { "amqp" };
        write!(f, "{scheme}://{}:***@{host}:{}/{}", self.username, self.port, self.vhost)
    }
}

/// A parsed `transport_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// The hosts in the order written, never empty: the connection fails
    /// over from one to the next.
    pub brokers: Vec<BrokerAddress>,
}

/// Why a transport URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransportUrlError {
    /// The option is blank: there is no broker to connect to.
    #[error("transport_url is empty")]
    Empty,
    /// A driver other than `rabbit://`/`amqp://` (e.g. `kafka://`), which
    /// this service does not speak; carries the scheme written.
    #[error("transport_url scheme `{0}` is not supported: this service speaks AMQP to RabbitMQ only (use rabbit://)")]
    UnsupportedScheme(String),
    /// Not a URL at all: no `scheme://`.
    #[error("transport_url has no `://` after the scheme")]
    NoScheme,
    /// The URL lists no host, or a host part is only credentials.
    #[error("transport_url names no host")]
    NoHost,
    /// A port that is not a number in 0..=65535, or text after an IPv6
    /// literal's `]` that is not `:port`; carries the host part written.
    #[error("transport_url host `{0}` has an invalid port")]
    BadPort(String),
    /// A `[` with no closing `]`; carries the host part written.
    #[error("transport_url host `{0}` has an unterminated IPv6 literal")]
    BadIpv6(String),
    /// A `%` escape in the credentials or vhost that is malformed or does
    /// not decode to UTF-8.
    #[error("transport_url contains invalid percent-encoding")]
    BadEncoding,
}

const DEFAULT_PORT: u16 = 5672;
const DEFAULT_TLS_PORT: u16 = 5671;

impl TransportUrl {
    /// Parses `rabbit://user:pass@host1:5672,user:pass@host2/vhost?opts`.
    /// `force_tls` reflects `[oslo_messaging_rabbit] ssl = true`.
    pub fn parse(url: &str, force_tls: bool) -> Result<Self, TransportUrlError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(TransportUrlError::Empty);
        }
        let (scheme, rest) = url.split_once("://").ok_or(TransportUrlError::NoScheme)?;
        // oslo accepts "rabbit" and "kombu+..."-style aliases map to rabbit too;
        // we accept the two spellings a nova.conf actually uses.
        // amqps:// is rabbit:// over TLS (as ?ssl=1 is).
        if !matches!(scheme, "rabbit" | "amqp" | "amqps") {
            return Err(TransportUrlError::UnsupportedScheme(scheme.to_string()));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let tls = force_tls
            || scheme == "amqps"
            || query.is_some_and(|q| {
                q.split('&')
                    .any(|kv| matches!(kv.split_once('='), Some(("ssl", v)) if matches!(v, "1" | "true" | "True")))
            });
        let (netloc, path) = match rest.find('/') {
            // '/' may appear in a password only when percent-encoded, so the first
            // '/' after the last '@' starts the path.
            Some(_) => split_netloc_path(rest),
            None => (rest, ""),
        };
        let vhost = if path.is_empty() { "/".to_string() } else { decode(path)? };
        let mut brokers = Vec::new();
        for part in netloc.split(',').filter(|p| !p.is_empty()) {
            let (creds, hostport) = match part.rsplit_once('@') {
                Some((c, h)) => (Some(c), h),
                None => (None, part),
            };
            let (username, password) = match creds {
                Some(c) => match c.split_once(':') {
                    Some((u, p)) => (decode(u)?, decode(p)?),
                    None => (decode(c)?, String::new()),
                },
                None => ("guest".to_string(), "guest".to_string()),
            };
            let (host, port) = split_host_port(hostport, if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT })?;
            if host.is_empty() {
                return Err(TransportUrlError::NoHost);
            }
            brokers.push(BrokerAddress { host, port, username, password, vhost: vhost.clone(), tls });
        }
        if brokers.is_empty() {
            return Err(TransportUrlError::NoHost);
        }
        Ok(TransportUrl { brokers })
    }
}

/// Splits `netloc/path` where the netloc may itself contain '@' and ','.
fn split_netloc_path(rest: &str) -> (&str, &str) {
    let search_from = rest.rfind('@').map(|i| i + 1).unwrap_or(0);
    match rest[search_from..].find('/') {
        Some(i) => {
            let at = search_from + i;
            (&rest[..at], &rest[at + 1..])
        }
        None => (rest, ""),
    }
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), TransportUrlError> {
    if let Some(stripped) = hostport.strip_prefix('[') {
        let (host, after) = stripped.split_once(']').ok_or_else(|| TransportUrlError::BadIpv6(hostport.to_string()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| TransportUrlError::BadPort(hostport.to_string()))?,
            None if after.is_empty() => default_port,
            None => return Err(TransportUrlError::BadPort(hostport.to_string())),
        };
        return Ok((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => {
            let port = if port.is_empty() {
                default_port
            } else {
                port.parse().map_err(|_| TransportUrlError::BadPort(hostport.to_string()))?
            };
            Ok((host.to_string(), port))
        }
        None => Ok((hostport.to_string(), default_port)),
    }
}

/// Percent-decodes a URL component.
fn decode(s: &str) -> Result<String, TransportUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(TransportUrlError::BadEncoding)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| TransportUrlError::BadEncoding)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TransportUrlError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> BrokerAddress {
        let t = TransportUrl::parse(url, false).unwrap();
        assert_eq!(t.brokers.len(), 1);
        t.brokers[0].clone()
    }

    #[test]
    fn plain_url_with_empty_vhost_means_slash() {
        let b = one("rabbit://guest:guest@127.0.0.1:5672/");
        assert_eq!((b.host.as_str(), b.port, b.vhost.as_str()), ("127.0.0.1", 5672, "/"));
        assert_eq!(one("rabbit://guest:guest@127.0.0.1").vhost, "/");
    }

    #[test]
    fn named_vhost_and_default_port() {
        let b = one("rabbit://u:p@rabbit.example.org/nova34");
        assert_eq!((b.port, b.vhost.as_str()), (5672, "nova34"));
        assert_eq!(one("rabbit://u:p@h:5672/%2F").vhost, "/");
    }

    #[test]
    fn percent_encoded_credentials_and_at_in_password() {
        let b = one("rabbit://nova%40svc:p%3Ass@w@host:5673/");
        assert_eq!(b.username, "nova@svc");
        assert_eq!(b.password, "p:ss@w");
        assert_eq!(b.port, 5673);
    }

    #[test]
    fn several_hosts_each_with_credentials() {
        let t = TransportUrl::parse("rabbit://a:1@h1:5672,b:2@h2:5673,c:3@[fd00::5]/vh", false).unwrap();
        let hosts: Vec<_> = t.brokers.iter().map(|b| (b.host.as_str(), b.port, b.username.as_str())).collect();
        assert_eq!(hosts, [("h1", 5672, "a"), ("h2", 5673, "b"), ("fd00::5", 5672, "c")]);
        assert!(t.brokers.iter().all(|b| b.vhost == "vh"));
    }

    #[test]
    fn ipv6_with_port() {
        let b = one("rabbit://u:p@[::1]:5700/");
        assert_eq!((b.host.as_str(), b.port), ("::1", 5700));
    }

    #[test]
    fn other_schemes_are_refused_with_a_clear_message() {
        let err = TransportUrl::parse("kafka://h:9092/", false).unwrap_err();
        assert_eq!(err, TransportUrlError::UnsupportedScheme("kafka".into()));
        assert!(err.to_string().contains("rabbit://"));
        assert_eq!(TransportUrl::parse("", false).unwrap_err(), TransportUrlError::Empty);
        assert_eq!(
            TransportUrl::parse("rabbit://u:p@h:notaport/", false).unwrap_err(),
            TransportUrlError::BadPort("h:notaport".into())
        );
    }

    #[test]
    fn tls_from_query_or_config_changes_default_port() {
        let t = TransportUrl::parse("rabbit://u:p@h/?ssl=1", false).unwrap();
        assert!(t.brokers[0].tls);
        assert_eq!(t.brokers[0].port, 5671);
        assert!(TransportUrl::parse("rabbit://u:p@h/", true).unwrap().brokers[0].tls);
        let t = TransportUrl::parse("amqps://u:p@h1,u:p@h2:5687/", false).unwrap();
        assert!(t.brokers.iter().all(|b| b.tls));
        assert_eq!((t.brokers[0].port, t.brokers[1].port), (5671, 5687));
    }

    #[test]
    fn display_hides_the_password() {
        let b = one("rabbit://nova:s3cret@h/");
        assert!(!format!("{b} {b:?}").contains("s3cret"));
    }
}
