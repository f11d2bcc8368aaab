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
//! container to run again (Docker events, no polling) and attaches to the
//! new run; when the container is removed, the connection closes. What the
//! user types while the guest is down is dropped, as on a serial line.
//!
//! **Bounds.** At most [`MAX_CONNECTIONS`] connections per console (a
//! further one is closed at once); the port range bounds the listeners.
//! Bytes are copied through fixed buffers: nothing is held for a slow peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Driver, VirtError};
use crate::config::SerialConsoleSettings;

/// Connections one console accepts at a time (the proxy opens one per
/// websocket client).
pub const MAX_CONNECTIONS: usize = 4;

/// Both directions of an attachment to a console.
pub trait ConsoleStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ConsoleStream for T {}

/// An attachment to a running container's console.
pub type ConsoleIo = Pin<Box<dyn ConsoleStream>>;

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
    stop: CancellationToken,
}

impl SerialConsoles {
    /// No console open yet.
    pub fn new(settings: SerialConsoleSettings) -> Self {
        SerialConsoles { settings, open: Mutex::new(HashMap::new()), stop: CancellationToken::new() }
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
    /// while it stays open).
    pub fn open<D: Driver>(&self, uuid: &str, driver: Arc<D>) -> Result<u16, ConsoleError> {
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
        let listener = self
            .settings
            .ports
            .clone()
            .filter(|p| !taken.contains(p))
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

    /// Closes the instance's console and its connections (instance deleted).
    pub fn close(&self, uuid: &str) {
        if let Some(c) = self.lock().remove(uuid) {
            c.stop.cancel();
            tracing::info!(instance = uuid, "serial console on port {} closed", c.port);
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// Accepts the proxy's connections until `stop`.
async fn serve<D: Driver>(listener: TcpListener, uuid: String, driver: Arc<D>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: the next accept may work.
                    tracing::warn!(instance = %uuid, "serial console accept failed: {e}");
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
async fn bridge<D: Driver>(mut tcp: TcpStream, uuid: &str, driver: &D) -> Result<(), VirtError> {
    let _ = tcp.set_nodelay(true);
    let (mut from_peer, mut to_peer) = tcp.split();
    loop {
        match driver.attach_console(uuid).await {
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
            w = driver.wait_running(uuid) => w,
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
