//! The optional HTTP endpoint (`[docker] metrics_listen`): `/healthz`
//! (the process serves), `/readyz` (broker connected, Docker reachable, host
//! registered) and `/metrics` (Prometheus, OpenMetrics text), for GET and
//! HEAD; any other method is answered 405 with `Allow: GET, HEAD`.
//!
//! Served by hyper's HTTP/1 server (a real HTTP stack: keep-alive,
//! pipelining, chunked requests, HEAD and malformed requests handled as the
//! protocol says), with a bound on the time to read a request's headers,
//! on each connection's life and on the connections served at once, so a
//! slow or hostile client cannot hold the endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A readiness probe: `Ok` when ready, else what is missing.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Run before each `/metrics` answer: refreshes the gauges that are
/// measured rather than counted (broker and Docker connected).
pub type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// Time a client gets to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (keep-alive included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds `listen` and serves until `stop`.
pub async fn serve(
    listen: &str,
    ready: ReadyCheck,
    scrape: ScrapeHook,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    serve_on(listener, ready, scrape, stop).await
}

/// Serves on a bound listener until `stop` (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    ready: ReadyCheck,
    scrape: ScrapeHook,
    stop: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoint listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(()) },
            _ = stop.cancelled() => return Ok(()),
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = stop.cancelled() => return Ok(()),
        };
        let (ready, scrape) = (ready.clone(), scrape.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (ready, scrape) = (ready.clone(), scrape.clone());
                async move { Ok::<_, Infallible>(answer(&req, &ready, &scrape).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// The answer to one request. For HEAD, hyper sends the headers of the
/// GET answer (its Content-Length included) without the body.
async fn answer(req: &Request<Incoming>, ready: &ReadyCheck, scrape: &ScrapeHook) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD only\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match ready().await {
            Ok(()) => response(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            scrape().await;
            response(StatusCode::OK, metrics::CONTENT_TYPE, metrics::global().render())
        }
        _ => response(StatusCode::NOT_FOUND, TEXT, "try /healthz, /readyz or /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(ready: Result<(), String>) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let ready: ReadyCheck = Arc::new(move || {
            let r = ready.clone();
            Box::pin(async move { r })
        });
        let scrape: ScrapeHook =
            Arc::new(|| Box::pin(async { metrics::global().set("nova_docker_docker_connected", &[], 1.0) }));
        tokio::spawn(serve_on(listener, ready, scrape, stop.clone()));
        (addr, stop)
    }

    /// Sends `request` as is and reads the whole answer (the request asks
    /// the server to close).
    async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        String::from_utf8_lossy(&out).to_string()
    }

    fn get(path: &str, method: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn get_head_and_other_methods() {
        let (addr, stop) = start(Ok(())).await;
        let ok = raw(addr, &get("/healthz", "GET")).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"), "{ok}");

        let metrics = raw(addr, &get("/metrics", "GET")).await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("content-type: application/openmetrics-text"), "{metrics}");
        assert!(metrics.contains("\nnova_docker_docker_connected 1"), "the scrape hook ran: {metrics}");
        assert!(metrics.contains("\nnova_docker_build_info{version="), "{metrics}");

        // HEAD: the GET's headers, no body.
        let head = raw(addr, &get("/healthz", "HEAD")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-length: 3\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body after HEAD: {head:?}");
        let head = raw(addr, &get("/metrics", "HEAD")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head:?}");

        let post =
            raw(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
        assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
        let missing = raw(addr, &get("/nope", "GET")).await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        let garbage = raw(addr, "\u{1}\u{2} not http\r\n\r\n").await;
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        stop.cancel();
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_and_readyz_says_why() {
        let (addr, stop) = start(Err("no RabbitMQ connection".into())).await;
        let two =
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let out = raw(addr, two).await;
        assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
        assert!(out.contains("HTTP/1.1 503 Service Unavailable\r\n"), "{out}");
        assert!(out.ends_with("not ready: no RabbitMQ connection\n"), "{out}");
        stop.cancel();
    }
}
