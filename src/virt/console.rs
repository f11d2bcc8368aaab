//! Serial consoles: the TCP ports nova-serialproxy connects to, each
//! bridged to an instance's console (what Nova's libvirt driver gets from
//! a `<serial type='tcp'>` device in bind mode).
//!
//! **What the console is.** A container has no serial port; its console is
//! its main process's terminal. With `[serial_console] enabled = true` the
//! host creates containers with a terminal (Docker `Tty`) and an open stdin
//! (`OpenStdin`, `StdinOnce = false`), and a connection here is a Docker
//! attach to them (stdin, stdout and stderr, merged by the terminal as on a
//! serial line). The terminal is needed for a console to behave like one
//! (line editing, echo, ^C, a shell's prompt); the open stdin so that what
//! the user types reaches the guest, and so that a shell as the image's
//! command waits for input instead of reading end-of-file and exiting. A
//! container created while consoles were disabled keeps neither (Docker
//! cannot add them later): it has no console (`ConsoleTypeUnavailable`),
//! as a libvirt guest without a serial device.
//!
//! **Ports.** One listener per instance whose console was asked for, on
//! `[serial_console] proxyclient_address` only, on the first free port of
//! `port_range` (a port another process holds is skipped). It lives until
//! the instance is deleted from this host ([`SerialConsoles::close`]), which
//! also closes its connections, or the service stops.
//!
//! **Reboot.** A connection outlives the container's runs: when the
//! attachment ends (the guest stopped), the connection waits for the
//! container to run again (Docker start or unpause events, no polling) and attaches to the
//! new run; when the container is removed, the connection closes. What the
//! user types while the guest is down is dropped, as on a serial line.
//!
//! **Restarts.** The consoles live in this process: after a restart of the
//! service the ports are gone, nova-serialproxy's check of an old token's
//! port answers false, and the user asks for a new URL (which opens the
//! port again). A Docker engine that stops answering closes the
//! connections (the attach fails); the port stays.
//!
//! **Bounds.** At most [`MAX_CONNECTIONS`] connections per console (a
//! further one is closed at once); the port range bounds the listeners.
//! Bytes are copied through fixed buffers: nothing is held for a slow peer.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Driver, VirtError};
use crate::config::SerialConsoleSettings;

/// Connections one console accepts at a time (the proxy opens one per
/// websocket client).
pub const MAX_CONNECTIONS: usize = 4;

/// The accept loop's pause after a failed accept (out of descriptors and
/// the like), so that it does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Both directions of an attachment to a console.
pub trait ConsoleStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ConsoleStream for T {}

/// An attachment to a running container's console.
pub type ConsoleIo = Pin<Box<dyn ConsoleStream>>;

/// Where consoles come from: what the bridge needs of a driver.
pub trait ConsoleSource: Send + Sync + 'static {
    /// [`Driver::attach_console`].
    fn attach(&self, uuid: &str) -> impl Future<Output = Result<ConsoleIo, VirtError>> + Send;
    /// [`Driver::wait_running`].
    fn until_running(&self, uuid: &str) -> impl Future<Output = Result<(), VirtError>> + Send;
}

impl<D: Driver> ConsoleSource for D {
    fn attach(&self, uuid: &str) -> impl Future<Output = Result<ConsoleIo, VirtError>> + Send {
        self.attach_console(uuid)
    }

    fn until_running(&self, uuid: &str) -> impl Future<Output = Result<(), VirtError>> + Send {
        self.wait_running(uuid)
    }
}

/// Console failures.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// `proxyclient_address` is not an IP address.
    #[error("[serial_console] proxyclient_address {0:?} is not an IP address")]
    Address(String),
    /// Every port of the range is taken (Nova's SocketPortRangeExhaustedException).
    #[error("no free port in [serial_console] port_range on {0}")]
    PortsExhausted(String),
    /// The listener could not be made for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

struct Console {
    port: u16,
    stop: CancellationToken,
}

/// The open consoles of this host, by instance uuid.
pub struct SerialConsoles {
    settings: SerialConsoleSettings,
    open: Mutex<HashMap<String, Console>>,
    /// Ports closed less than `token_ttl` ago, with the instance that had
    /// them (locked after `open` when both are).
    freed: Mutex<HashMap<u16, (String, Instant)>>,
    stop: CancellationToken,
}

impl SerialConsoles {
    /// No console open yet.
    pub fn new(settings: SerialConsoleSettings) -> Self {
        SerialConsoles {
            settings,
            open: Mutex::new(HashMap::new()),
            freed: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    /// Closes every console and connection (the service stops).
    pub fn close_all(&self) {
        self.stop.cancel();
        self.lock().clear();
    }

    /// The settings they follow.
    pub fn settings(&self) -> &SerialConsoleSettings {
        &self.settings
    }

    /// The port of the instance's console, when one is open.
    pub fn port_of(&self, uuid: &str) -> Option<u16> {
        self.lock().get(uuid).map(|c| c.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Console>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance's console port, listening from now on (the same port
    /// while it stays open). A port another instance's console had less
    /// than `token_ttl` ago is not handed out: a token for it may still be
    /// valid (one the conductor could not clean), and would reach this
    /// instance.
    pub fn open<D: ConsoleSource>(&self, uuid: &str, driver: Arc<D>) -> Result<u16, ConsoleError> {
        let mut open = self.lock();
        if let Some(c) = open.get(uuid) {
            return Ok(c.port);
        }
        let ip: IpAddr = self
            .settings
            .proxyclient_address
            .parse()
            .map_err(|_| ConsoleError::Address(self.settings.proxyclient_address.clone()))?;
        let taken: Vec<u16> = open.values().map(|c| c.port).collect();
        let quarantined: Vec<u16> = {
            let mut freed = self.freed.lock().unwrap_or_else(|p| p.into_inner());
            let ttl = self.settings.token_ttl;
            freed.retain(|_, (_, at)| at.elapsed() < ttl);
            freed.iter().filter(|(_, (owner, _))| owner != uuid).map(|(p, _)| *p).collect()
        };
        let listener = self
            .settings
            .ports
            .clone()
            .filter(|p| !taken.contains(p) && !quarantined.contains(p))
            .find_map(|port| match bind(SocketAddr::new(ip, port)) {
                Ok(l) => Some(Ok((port, l))),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
                Err(source) => Some(Err(ConsoleError::Listen { addr: SocketAddr::new(ip, port), source })),
            })
            .ok_or_else(|| ConsoleError::PortsExhausted(self.settings.proxyclient_address.clone()))??;
        let (port, listener) = listener;
        let stop = self.stop.child_token();
        tokio::spawn(serve(listener, uuid.to_string(), driver, stop.clone()));
        tracing::info!(instance = uuid, "serial console listening on {ip}:{port}");
        open.insert(uuid.to_string(), Console { port, stop });
        Ok(port)
    }

    /// Closes the instance's console and its connections (the instance is
    /// deleted or leaves this host); its port is kept from other instances
    /// for `token_ttl`.
    pub fn close(&self, uuid: &str) {
        let closed = self.lock().remove(uuid);
        if let Some(c) = closed {
            c.stop.cancel();
            self.freed.lock().unwrap_or_else(|p| p.into_inner()).insert(c.port, (uuid.to_string(), Instant::now()));
            tracing::info!(instance = uuid, "serial console on port {} closed", c.port);
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// What the accept loop needs of its listener (a test plays one that fails).
trait Accept: Send + 'static {
    /// The next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    fn accept_one(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }
}

/// Accepts the proxy's connections until `stop`.
async fn serve<D: ConsoleSource>(listener: impl Accept, uuid: String, driver: Arc<D>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept_one() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: a later accept may
                    // work; an immediate one would fail the same way.
                    tracing::warn!(instance = %uuid, "serial console accept failed: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(instance = %uuid, "serial console connection from {peer} refused: {MAX_CONNECTIONS} open");
            continue; // dropping the stream closes it
        };
        let (uuid, driver, stop) = (uuid.clone(), driver.clone(), stop.clone());
        tokio::spawn(async move {
            tracing::info!(instance = %uuid, "serial console connection from {peer}");
            tokio::select! {
                _ = stop.cancelled() => {}
                r = bridge(tcp, &uuid, driver.as_ref()) => {
                    if let Err(e) = r {
                        tracing::warn!(instance = %uuid, "serial console connection from {peer}: {e}");
                    }
                }
            }
            tracing::info!(instance = %uuid, "serial console connection from {peer} closed");
            drop(slot);
        });
    }
}

/// Why one attachment ended.
enum Ended {
    /// The peer closed the connection.
    Peer,
    /// The guest's run ended.
    Guest,
}

/// Copies between the connection and the console, run after run, until the
/// peer leaves or the container is gone.
async fn bridge<D: ConsoleSource>(mut tcp: TcpStream, uuid: &str, driver: &D) -> Result<(), VirtError> {
    let _ = tcp.set_nodelay(true);
    let (mut from_peer, mut to_peer) = tcp.split();
    loop {
        match driver.attach(uuid).await {
            Ok(io) => {
                let (mut from_guest, mut to_guest) = tokio::io::split(io);
                let ended = tokio::select! {
                    r = tokio::io::copy(&mut from_peer, &mut to_guest) => { r.map(|_| Ended::Peer).unwrap_or(Ended::Guest) }
                    r = tokio::io::copy(&mut from_guest, &mut to_peer) => match r {
                        Ok(_) => Ended::Guest,
                        // The peer's side failed when writing to it.
                        Err(_) => Ended::Peer,
                    },
                };
                if let Ended::Peer = ended {
                    return Ok(());
                }
            }
            Err(VirtError::NotRunning(_)) => {}
            Err(VirtError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Between runs: drop what the peer types, notice when it leaves.
        let mut sink = [0u8; 1024];
        let waited = tokio::select! {
            w = driver.until_running(uuid) => w,
            _ = discard_until_closed(&mut from_peer, &mut sink) => return Ok(()),
        };
        match waited {
            Ok(()) => {}
            Err(VirtError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

async fn discard_until_closed(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) {
    use tokio::io::AsyncReadExt;
    while let Ok(n) = r.read(buf).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::Notify;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A console whose runs the test plays: each attach takes the next
    /// prepared answer; with none, the guest is not running until `start`.
    #[derive(Default)]
    struct Guest {
        runs: Mutex<VecDeque<Result<DuplexStream, ()>>>,
        started: Notify,
    }

    impl Guest {
        /// A new run of the guest: the test's end of its terminal.
        fn start(&self) -> DuplexStream {
            let (guest, host) = tokio::io::duplex(64);
            self.runs.lock().unwrap().push_back(Ok(host));
            self.started.notify_waiters();
            guest
        }

        /// The container is removed.
        fn remove(&self) {
            self.runs.lock().unwrap().push_back(Err(()));
            self.started.notify_waiters();
        }
    }

    impl ConsoleSource for Guest {
        async fn attach(&self, uuid: &str) -> Result<ConsoleIo, VirtError> {
            match self.runs.lock().unwrap().pop_front() {
                Some(Ok(io)) => Ok(Box::pin(io) as ConsoleIo),
                Some(Err(())) => Err(VirtError::NotFound(uuid.into())),
                None => Err(VirtError::NotRunning(uuid.into())),
            }
        }

        async fn until_running(&self, _uuid: &str) -> Result<(), VirtError> {
            loop {
                let started = self.started.notified();
                if !self.runs.lock().unwrap().is_empty() {
                    return Ok(());
                }
                started.await;
            }
        }
    }

    fn consoles(ports: std::ops::RangeInclusive<u16>) -> SerialConsoles {
        consoles_with_ttl(ports, Duration::from_secs(600))
    }

    fn consoles_with_ttl(ports: std::ops::RangeInclusive<u16>, token_ttl: Duration) -> SerialConsoles {
        SerialConsoles::new(SerialConsoleSettings {
            enabled: true,
            ports,
            proxyclient_address: "127.0.0.1".into(),
            base_url: "ws://127.0.0.1:6083/".into(),
            token_ttl,
            single_host: true,
        })
    }

    /// A free range of `n` ports on 127.0.0.1 (held by nobody right now).
    fn free_ports(n: u16) -> std::ops::RangeInclusive<u16> {
        for _ in 0..50 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let first = probe.local_addr().unwrap().port();
            drop(probe);
            let Some(last) = first.checked_add(n - 1) else { continue };
            if (first..=last).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                return first..=last;
            }
        }
        panic!("no free port range");
    }

    async fn read_some(r: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(T, r.read(&mut buf)).await.expect("bytes in time").unwrap_or(0);
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_the_connection_outlives_a_reboot() {
        let guest = Arc::new(Guest::default());
        let mut run1 = guest.start();
        let consoles = consoles(free_ports(2));
        let port = consoles.open("u", guest.clone()).unwrap();
        assert_eq!(consoles.open("u", guest.clone()).unwrap(), port, "one port per instance");
        let mut peer = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        peer.write_all(b"ls\n").await.unwrap();
        assert_eq!(read_some(&mut run1).await, b"ls\n");
        run1.write_all(b"bin etc\n").await.unwrap();
        assert_eq!(read_some(&mut peer).await, b"bin etc\n");

        // The run ends (reboot): the connection waits, then reaches the new run.
        drop(run1);
        tokio::task::yield_now().await;
        let mut run2 = guest.start();
        run2.write_all(b"booted again\n").await.unwrap();
        assert_eq!(read_some(&mut peer).await, b"booted again\n");
        peer.write_all(b"id\n").await.unwrap();
        assert_eq!(read_some(&mut run2).await, b"id\n");

        // The container is removed: the connection closes.
        drop(run2);
        guest.remove();
        assert_eq!(read_some(&mut peer).await, b"", "closed once the container is gone");
    }

    #[tokio::test]
    async fn close_ends_the_connections_and_frees_the_port() {
        let guest = Arc::new(Guest::default());
        let _run = guest.start();
        let consoles = consoles(free_ports(1));
        let port = consoles.open("u", guest.clone()).unwrap();
        let mut peer = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        peer.write_all(b"x").await.unwrap();
        consoles.close("u");
        assert_eq!(read_some(&mut peer).await, b"", "closed with the console");
        assert_eq!(consoles.port_of("u"), None);
        // The listener is gone: the port can be had again.
        let again = tokio::time::timeout(T, async {
            loop {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(again.is_ok(), "port {port} still held");
    }

    #[tokio::test]
    async fn listens_on_the_proxy_address_only_and_bounds_connections() {
        let guest = Arc::new(Guest::default());
        let consoles = consoles(free_ports(1));
        let port = consoles.open("u", guest.clone()).unwrap();
        // 127.0.0.2 is this host too, but not proxyclient_address.
        assert!(TcpStream::connect(("127.0.0.2", port)).await.is_err(), "reachable beyond 127.0.0.1");
        let mut open = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            open.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert_eq!(read_some(&mut extra).await, b"", "connection {} closed at once", MAX_CONNECTIONS + 1);
        // The others wait for the guest, still open.
        let mut first = open.remove(0);
        let mut run = guest.start();
        first.write_all(b"hi").await.unwrap();
        let got = read_some(&mut run).await;
        assert!(!got.is_empty(), "an admitted connection reaches the guest");
    }

    #[tokio::test]
    async fn ports_held_elsewhere_are_skipped_until_none_is_left() {
        let guest = Arc::new(Guest::default());
        let range = free_ports(2);
        let _held = std::net::TcpListener::bind(("127.0.0.1", *range.start())).unwrap();
        let consoles = consoles(range.clone());
        assert_eq!(consoles.open("a", guest.clone()).unwrap(), *range.end());
        assert!(matches!(consoles.open("b", guest.clone()), Err(ConsoleError::PortsExhausted(_))));
        let bad = SerialConsoles::new(SerialConsoleSettings {
            proxyclient_address: "proxy.example".into(),
            ..consoles.settings().clone()
        });
        assert!(matches!(bad.open("c", guest), Err(ConsoleError::Address(_))));
    }

    /// Waits until nothing listens on `port` (a closed console's listener
    /// is dropped by its task).
    async fn wait_free(port: u16) {
        let free = tokio::time::timeout(T, async {
            while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(free.is_ok(), "port {port} still held");
    }

    #[tokio::test]
    async fn a_freed_port_goes_to_no_other_instance_for_token_ttl() {
        let guest = Arc::new(Guest::default());
        let range = free_ports(2);
        let consoles = consoles(range.clone());
        assert_eq!(consoles.open("a", guest.clone()).unwrap(), *range.start());
        consoles.close("a");
        wait_free(*range.start()).await;
        // A token of a's may still name the port: b gets the other one.
        assert_eq!(consoles.open("b", guest.clone()).unwrap(), *range.end());
        assert!(matches!(consoles.open("c", guest.clone()), Err(ConsoleError::PortsExhausted(_))));
        // a's own tokens reach a: it may have its port back (once its
        // listener is gone).
        wait_free(*range.start()).await;
        assert_eq!(consoles.open("a", guest.clone()).unwrap(), *range.start());

        // Once token_ttl has passed, the port is anyone's.
        let range = free_ports(1);
        let consoles = consoles_with_ttl(range.clone(), Duration::ZERO);
        assert_eq!(consoles.open("a", guest.clone()).unwrap(), *range.start());
        consoles.close("a");
        wait_free(*range.start()).await;
        assert_eq!(consoles.open("b", guest).unwrap(), *range.start());
    }

    /// A listener whose every accept fails as when out of descriptors.
    struct OutOfDescriptors(Arc<std::sync::atomic::AtomicUsize>);

    impl Accept for OutOfDescriptors {
        async fn accept_one(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            Err(std::io::Error::from_raw_os_error(24)) // EMFILE
        }
    }

    #[tokio::test]
    async fn failing_accepts_pause_instead_of_spinning() {
        let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(serve(OutOfDescriptors(tries.clone()), "u".into(), Arc::new(Guest::default()), stop.clone()));
        // The rate is what is tested: this waits for time to pass.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        tokio::time::timeout(T, task).await.expect("the loop ends on stop").unwrap();
        let n = tries.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=5).contains(&n), "{n} accepts in 300 ms");
    }
}
