//! The optional HTTP endpoint (`[docker] metrics_listen`): `/healthz`
//! (the process serves), `/readyz` (broker connected, Docker reachable, host
//! registered) and `/metrics` (Prometheus text). It answers GET only and
//! reads at most one small request per connection; a hand-written responder
//! is enough for three read-only paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A readiness probe: `Ok` when ready, else what is missing.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves until `stop`.
pub async fn serve(listen: &str, ready: ReadyCheck, stop: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoint listening");
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = stop.cancelled() => return Ok(()),
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let method = request.split_whitespace().next().unwrap_or("");
            let (status, ctype, body) = if method != "GET" {
                ("405 Method Not Allowed", "text/plain", "GET only\n".to_string())
            } else {
                match path {
                    "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                    "/readyz" => match ready().await {
                        Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
                        Err(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
                    },
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics::global().render()),
                    _ => ("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n".to_string()),
                }
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(response.as_bytes())).await;
        });
    }
}
