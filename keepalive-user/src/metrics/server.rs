//! The HTTP endpoint: `GET /metrics` answers with the registry in OpenMetrics text.
//!
//! It runs as tasks on the daemon's runtime, beside the ring-buffer reader. Nothing in it
//! waits on a client while holding the thread: reads and writes are asynchronous, a scrape's
//! encoding is bounded (the label sets are), a connection that does not send its request
//! head within [`HEADER_TIMEOUT`] or is not done within [`CONNECTION_TIMEOUT`] is dropped,
//! and at most [`MAX_CONNECTIONS`] are served at once (the others are closed at once).

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A client has this long to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("--metrics {addr}: cannot listen there")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What bind said.
        #[source]
        source: io::Error,
    },
}

/// A bound, not yet serving, metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr`; serving starts with [`MetricsServer::serve`].
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// Serves `registry` until the runtime stops.
    pub async fn serve(self, registry: Arc<Registry>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: give the others time to close.
                    tracing::warn!("metrics endpoint: accept failed: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!("metrics endpoint: {MAX_CONNECTIONS} connections busy, closing");
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(|request| {
                    let response = respond(&request, &registry);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!("metrics endpoint: {error}"),
                    Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
                }
            });
        }
    }
}

/// Waited after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `GET /metrics` (or `HEAD`): the registry; anything else: an error status that says why.
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    route(request.method(), request.uri().path(), registry)
}

fn route(method: &Method, path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
    }
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!("metrics endpoint: encoding failed: {error}");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(text)
    };
    response(StatusCode::OK, CONTENT_TYPE, body)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;
    use crate::metrics::Metrics;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.expect("infallible");
        String::from_utf8(bytes.to_bytes().to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = taken.local_addr().expect("its address");
        let error = MetricsServer::bind(addr).await.expect_err("in use");
        assert!(
            error
                .to_string()
                .starts_with(&format!("--metrics {addr}: cannot listen there")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn only_get_metrics_is_served() {
        let registry = Metrics::new(4).registry();
        let ok = route(&Method::GET, "/metrics", &registry);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let text = body(ok).await;
        assert!(
            text.contains("# TYPE keepalive_observer_events_lost counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        let head = route(&Method::HEAD, "/metrics", &registry);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(body(head).await, "");
        let missing = route(&Method::GET, "/", &registry);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(body(missing).await.contains("/metrics"));
        let post = route(&Method::POST, "/metrics", &registry);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
