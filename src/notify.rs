//! systemd's service notification protocol (`sd_notify`), for a
//! `Type=notify` unit: `READY=1` once the host is registered and consuming,
//! `STOPPING=1` when the drain starts, `WATCHDOG=1` while the service is
//! healthy. A datagram to the `NOTIFY_SOCKET` unix socket per message; without
//! that variable (not started by systemd) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// Why a notification could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` names no unix socket address systemd would use.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract (@) name")]
    BadAddress(String),
    /// The address or the sending socket cannot be set up.
    #[error("NOTIFY_SOCKET={addr:?}: {source}")]
    Socket {
        /// The value of `NOTIFY_SOCKET`.
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// `WATCHDOG_USEC` is not a usable period.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    BadWatchdog(String),
}

/// Sends notifications to the service manager; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<(UnixDatagram, SocketAddr, String)>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("socket", &self.target.as_ref().map(|t| &t.2)).finish()
    }
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; disabled when it is unset or empty.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(addr) if !addr.is_empty() => Notifier::to(&addr),
            _ => Ok(Notifier::default()),
        }
    }

    /// For the socket address `addr` (a path, or `@name` for an abstract one).
    pub fn to(addr: &str) -> Result<Notifier, NotifyError> {
        let sock_err = |source| NotifyError::Socket { addr: addr.to_string(), source };
        let address = if let Some(name) = addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(sock_err)?
        } else if addr.starts_with('/') {
            SocketAddr::from_pathname(addr).map_err(sock_err)?
        } else {
            return Err(NotifyError::BadAddress(addr.to_string()));
        };
        let socket = UnixDatagram::unbound().map_err(sock_err)?;
        // A full socket buffer must never block an async worker: the
        // message is dropped instead (and the error logged).
        socket.set_nonblocking(true).map_err(sock_err)?;
        Ok(Notifier { target: Some(Arc::new((socket, address, addr.to_string()))) })
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (e.g. `READY=1`); logs a failure, which never stops the
    /// service.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.target else { return };
        let (socket, address, shown) = &**target;
        if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
            tracing::warn!(error = %e, socket = %shown, state, "cannot notify the service manager");
        }
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), when it is meant
/// for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_period() -> Result<Option<Duration>, NotifyError> {
    watchdog_period_of(std::env::var("WATCHDOG_USEC").ok(), std::env::var("WATCHDOG_PID").ok(), std::process::id())
}

fn watchdog_period_of(usec: Option<String>, pid: Option<String>, me: u32) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec.filter(|u| !u.is_empty()) else { return Ok(None) };
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(me)) {
        return Ok(None);
    }
    match usec.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(Duration::from_micros(n))),
        _ => Err(NotifyError::BadWatchdog(usec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("nd-notify-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        assert!(n.enabled());
        n.notify("READY=1");
        n.notify("STOPPING=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_sockets_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("nd-notify-{}", uuid::Uuid::new_v4().simple());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::to(&format!("@{name}")).unwrap().notify("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn bad_addresses_are_refused_and_absent_means_off() {
        assert!(matches!(Notifier::to("relative/sock"), Err(NotifyError::BadAddress(_))));
        assert!(!Notifier::default().enabled());
        Notifier::default().notify("READY=1");
    }

    #[test]
    fn watchdog_period_is_for_this_process_only() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(watchdog_period_of(s("2000000"), None, 7).unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_period_of(s("2000000"), s("7"), 7).unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_period_of(s("2000000"), s("8"), 7).unwrap(), None);
        assert_eq!(watchdog_period_of(None, s("7"), 7).unwrap(), None);
        assert!(watchdog_period_of(s("0"), None, 7).is_err());
        assert!(watchdog_period_of(s("abc"), None, 7).is_err());
    }
}
