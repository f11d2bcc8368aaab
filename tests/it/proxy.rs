//! A TCP relay in front of a real service, which a test can cut at will: how
//! "the service stops in the middle of a transfer" is injected without
//! stopping the shared service itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A relay to `upstream`.
pub struct Relay {
    pub url: String,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
    /// Client-to-upstream bytes relayed so far.
    pub sent: Arc<AtomicU64>,
    /// Connections accepted so far (held or not): a client reached it.
    pub accepted: Arc<AtomicU64>,
}

impl Relay {
    /// Relays 127.0.0.1:<random port> to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let cut_now = Arc::new(Notify::new());
        let sent = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let hold = Arc::new(tokio::sync::watch::channel(false).0);
        let upstream = upstream.to_string();
        let (c, n, s, h, a) = (cut.clone(), cut_now.clone(), sent.clone(), hold.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                a.fetch_add(1, Ordering::SeqCst);
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(relay(client, server, c.clone(), n.clone(), s.clone(), h.subscribe()));
            }
        });
        Relay { url, hold, cut, cut_now, sent, accepted }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cut_now.notify_waiters();
    }

    /// Drops every open connection; new ones are relayed (Glance went
    /// away in the middle of a transfer and came back).
    pub fn reset(&self) {
        self.cut_now.notify_waiters();
    }

    /// Stops moving bytes (connections stay open, transfers stall).
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Moves bytes again after `hold`.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    cut: Arc<AtomicBool>,
    cut_now: Arc<Notify>,
    sent: Arc<AtomicU64>,
    hold: tokio::sync::watch::Receiver<bool>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut hold_up = hold.clone();
    let mut hold_down = hold;
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let _ = hold_up.wait_for(|h| !*h).await;
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            sent.fetch_add(n as u64, Ordering::SeqCst);
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let _ = hold_down.wait_for(|h| !*h).await;
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    if cut.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut_now.notified() => {}
    }
}
