//! The server loop of mailpipe's internet-facing listeners (the tracker, the
//! tenant API and dashboard). Every client is treated as hostile:
//!
//! - at most `max_connections` are open; further clients wait in the
//!   kernel's accept queue instead of costing a task and buffers each;
//! - the request head must arrive within `header_read_timeout` (slowloris);
//! - a whole request, body and answer included, within `request_timeout`,
//!   else a 408 and the connection is closed;
//! - on shutdown, no new connection is accepted and the requests in flight
//!   get `shutdown_grace` to finish.
//!
//! Every request carries its peer address as axum's `ConnectInfo`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The limits of one listener, from its service's configuration section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// A request (head, body and answer) must be done within this time.
    pub request_timeout: Duration,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// How long shutdown waits for the requests in flight.
    pub shutdown_grace: Duration,
}

/// Accepts connections on a listener, at most `max` open at once: a slot
/// is taken before accepting, so that further clients wait in the
/// kernel's accept queue instead of costing a task and buffers each. The
/// HTTP listeners and `mailpipe inbound`'s SMTP listener share it.
pub struct CappedAcceptor {
    listener: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

/// An accepted connection and the slot it holds until dropped.
pub type Accepted = (tokio::net::TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit);

impl CappedAcceptor {
    pub fn new(listener: TcpListener, max: usize) -> Self {
        Self { listener, slots: Arc::new(tokio::sync::Semaphore::new(max.max(1))) }
    }

    /// The next connection, or `None` once `shutdown` fires. An accept
    /// that fails (out of file descriptors and the like) is logged and
    /// retried after a pause.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Accepted> {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return None,
            s = self.slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) => return Some((stream, peer, slot)),
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` fires, then
/// drains. `service` labels the metrics (`tracker`, `api`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    service: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    // HTTP/1 only: an auto (HTTP/1 or 2) connection first reads to tell the
    // versions apart, with no timer, so a client that connects and says
    // nothing would hold its slot for ever. Here the head timer runs from
    // the first read, and between requests on a kept-alive connection.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = CappedAcceptor::new(listener, limits.max_connections);
    let request_timeout = limits.request_timeout;
    while let Some((stream, peer, slot)) = acceptor.next(&shutdown).await {
        let open = metrics::gauge!("mailpipe_http_connections", "service" => service);
        open.increment(1.0);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let call = app.clone().oneshot(req.map(Body::new));
            async move {
                match tokio::time::timeout(request_timeout, call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        metrics::counter!("mailpipe_http_request_timeouts_total", "service" => service)
                            .increment(1);
                        Ok((
                            StatusCode::REQUEST_TIMEOUT,
                            [(header::CONNECTION, "close")],
                            "request took too long\n",
                        )
                            .into_response())
                    }
                }
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection ended with an error");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(acceptor);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        warn!(service, "requests still in flight after the grace period");
    }
    Ok(())
}
