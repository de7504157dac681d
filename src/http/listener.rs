//! The accept loop: TCP (and TLS) connections handed to hyper, with the limits `axum::serve`
//! lacks.
//!
//! - At most `max_connections` connections are served at once; further ones wait in the
//!   kernel's listen backlog until a slot frees.
//! - A TLS handshake must finish within `HANDSHAKE_TIMEOUT`, and request headers must arrive
//!   within `HEADER_READ_TIMEOUT` (hyper only enforces this with a timer installed, which is
//!   done here).
//! - A request head (request line and headers) larger than `MAX_HEAD_BYTES` gets 431.
//! - On shutdown, the listener closes and open connections finish their current request,
//!   for at most the configured `shutdown_timeout`; what is still open then is cut, and
//!   uploads it cut are put back to `queued` with their temp files removed before `serve`
//!   returns.
//!
//! Each request carries a `Connection` extension with the peer address (for the
//! authentication failure limiter) and whether it came over TLS (for absolute links).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{AppState, router};
use crate::config::TlsFiles;

/// Time allowed for a client to send a request's headers (and between keep-alive requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line plus headers) accepted; larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Reads a PEM certificate chain and private key into a rustls server configuration (TLS 1.2
/// and 1.3, ring provider, HTTP/1.1 over ALPN).
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let read_error =
        |path: &Path, error: rustls::pki_types::pem::Error| format!("{}: {error}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|error| read_error(&files.cert, error))?
        .collect::<Result<_, _>>()
        .map_err(|error| read_error(&files.cert, error))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", files.cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|error| read_error(&files.key, error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| format!("{}: {error}", files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How often the upkeep task looks at the store.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
/// How often quarantined blobs past their grace are collected.
const COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// The server's own housekeeping: after a failed metadata write, reopens the database as soon
/// as that can work (checked every second); every hour, removes quarantined blobs past their
/// grace period, tasks past their expiry and web UI sessions past their limits.
async fn upkeep(store: Arc<crate::store::Store>) {
    let mut ticks = tokio::time::interval(UPKEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_collect = tokio::time::Instant::now();
    let mut last_sweep = tokio::time::Instant::now();
    let sweep_every = store.sweep_interval();
    loop {
        ticks.tick().await;
        if let Some(every) = sweep_every
            && last_sweep.elapsed() >= every
        {
            last_sweep = tokio::time::Instant::now();
            let store = store.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || store.sweep()).await {
                tracing::warn!(%error, "the sweep of unreferenced copies failed; it runs again later");
            }
        }
        if !store.healthy() {
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.recover()).await;
        }
        if last_collect.elapsed() >= COLLECT_EVERY {
            last_collect = tokio::time::Instant::now();
            let store = store.clone();
            let collected = tokio::task::spawn_blocking(move || {
                store.collect_quarantine()?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
                store.expire_sessions(now.div_euclid(1_000_000))?;
                store.expire_tasks(now)
            })
            .await;
            if let Ok(Err(error)) = collected {
                tracing::warn!(%error, "could not collect quarantined blobs or expired tasks");
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then drains open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = state.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let drain_timeout = state.config.shutdown_timeout;
    let store = state.store.clone();
    let importer = state.importer.clone();
    let upkeep = tokio::spawn(upkeep(state.store.clone()));
    let scrub = crate::scrub::Scrub::start(state.store.clone(), state.config.scrub)?;
    let refresher = state
        .mirror
        .clone()
        .filter(|_| state.config.mirror_refresher)
        .map(|mirror| tokio::spawn(mirror.refresh_forever(state.metrics.clone())));
    let mut connections = tokio::task::JoinSet::new();
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // `max_buf_size` alone does not bound the head: one read may fill the buffer past it,
        // and a head that arrived whole in that read is accepted. `max_header_size` checks the
        // parsed head itself.
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);

    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            tls: acceptor.is_some(),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(connection);
            app.clone()
                .oneshot(super::negotiate_version(request.map(Body::new)))
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _permit = permit;
            let result =
                match acceptor {
                    None => {
                        let served = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(served).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let served = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(served).await
                    }
                };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    upkeep.abort();
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "open connections did not finish in time; closing them"
        );
    }
    // Cut what is left while the runtime still runs, so that each cut request's cleanup runs
    // now rather than never (a runtime being dropped refuses new blocking work).
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    importer.shutdown().await;
    // A sync cut here keeps nothing: its bytes were never published.
    if let Some(refresher) = refresher {
        refresher.abort();
        let _ = refresher.await;
    }
    match tokio::task::spawn_blocking(move || {
        scrub.stop();
        store.settle_interrupted()
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not settle interrupted uploads"),
        Err(error) => tracing::warn!(%error, "could not settle interrupted uploads"),
    }
    Ok(())
}
