//! The exporter's HTTP/1.1 server (hyper), on the same tokio runtime as the event loop.
//!
//! The socket table lives in the event loop and is not shared: a handler sends a [`Request`]
//! over a channel and the loop answers it between batches of events, so every answer reflects
//! the table as of the request.
//!
//! Hostile or broken clients cannot hurt the host: request heads are capped at 16 KiB (hyper
//! answers 431 or 400 past that or on garbage), a client has 5 s to send its head, bodies are
//! never read, and at most `max_connections` connections are open at once (more are closed on
//! accept).
//!
//! With `--web.config.file` (see [`super::web_config`]) connections are TLS only (a client has
//! the same 5 s to finish its handshake), and every path but `/healthz` needs the basic
//! authentication of a configured user: 401 otherwise. `/healthz` answers only `ok`, and stays
//! open so that liveness probes need no credentials.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode, body::Incoming, header, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::auth::{self, Verified};
use super::exposition::CONTENT_TYPE;
use super::web_config::{WebConfig, WebConfigSource};

/// What a handler asks the event loop for.
#[derive(Debug)]
pub enum Request {
    /// The Prometheus text document.
    Metrics(oneshot::Sender<String>),
    /// The `report --json` document.
    Report(oneshot::Sender<String>),
    /// Proof that the event loop is turning.
    Health(oneshot::Sender<()>),
}

/// Largest request head hyper buffers (its minimum is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the event loop may take to answer before the handler gives up with 503.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the task is dropped. `web` is the `--web.config.file`, if given.
pub async fn serve(
    listener: TcpListener,
    loop_tx: mpsc::Sender<Request>,
    max_connections: usize,
    web: Option<WebConfigSource>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let verified = Arc::new(Verified::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("accept on the metrics listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::warn!("closing connection from {peer}: {max_connections} already open");
            drop(stream);
            continue;
        };
        let config = match web.as_ref().map(WebConfigSource::current).transpose() {
            Ok(c) => c,
            // Logged when the file was read; nothing is served until it is fixed.
            Err(_) => continue,
        };
        let tx = loop_tx.clone();
        let verified = verified.clone();
        tokio::spawn(async move {
            let tls = config.as_ref().and_then(|c| c.tls.clone());
            let result = match tls {
                None => connection(stream, tx, config, verified).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, tx, config, verified).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake: timed out".into()),
                    }
                }
            };
            if let Err(e) = result {
                log::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 on one connection, plain or TLS.
async fn connection<S>(
    stream: S,
    tx: mpsc::Sender<Request>,
    config: Option<Arc<WebConfig>>,
    verified: Arc<Verified>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (tx, config, verified) = (tx.clone(), config.clone(), verified.clone());
        async move {
            if let Some(c) = &config
                && req.uri().path() != "/healthz"
                && !auth::allowed(c, &verified, req.headers().get(header::AUTHORIZATION)).await
            {
                return Ok(unauthorized());
            }
            handle(req, tx).await
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| e.to_string())
}

fn unauthorized() -> Reply {
    let mut r = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"tcptrace\""),
    );
    r
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    req: hyper::Request<Incoming>,
    tx: mpsc::Sender<Request>,
) -> Result<Reply, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => match ask(&tx, Request::Metrics).await {
            Some(text) => with_type(StatusCode::OK, CONTENT_TYPE, text),
            None => unavailable(),
        },
        "/report.json" => match ask(&tx, Request::Report).await {
            Some(json) => with_type(StatusCode::OK, "application/json", json),
            None => unavailable(),
        },
        "/healthz" => match ask(&tx, Request::Health).await {
            Some(()) => plain(StatusCode::OK, "ok\n"),
            None => unavailable(),
        },
        "/" => plain(
            StatusCode::OK,
            "tcptrace exporter: /metrics (Prometheus), /report.json (report --json), /healthz\n",
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    })
}

/// Sends a request to the event loop and waits for its answer.
async fn ask<T>(
    tx: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    tokio::time::timeout(ANSWER_TIMEOUT, async {
        tx.send(make(reply)).await.ok()?;
        answer.await.ok()
    })
    .await
    .ok()
    .flatten()
}

fn unavailable() -> Reply {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the event loop did not answer\n",
    )
}

fn plain(status: StatusCode, body: &'static str) -> Reply {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
