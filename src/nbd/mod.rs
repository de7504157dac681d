//! The read-only NBD export: every image a client may download, served block by block over
//! the Network Block Device protocol (fixed newstyle, structured replies, `base:allocation`),
//! so that QEMU, `qemu-img` and `nbdcopy` read it without a full download first.
//!
//! It runs over the same store as HTTP: a connection opens the image's blob once
//! (`Store::open_data`: the first store that has it, pinned against removal), and each read
//! (`Store::read_open`) takes a download slot and checks every byte against the blob's
//! verification tree, on the transfer pool, before anything is sent; a read that fails
//! verification is answered `EIO` and nothing of it leaves. Block status answers from the
//! extent map recorded at upload (`kv::Extents`), or, for the raw view of a qcow2 image, from
//! its L2 tables.
//!
//! Bounds: `nbd_max_connections` connections (more are closed at once); `nbd_idle_timeout`
//! without a request closes a connection; a handshake has 30 s and [`MAX_OPTIONS`] options;
//! each connection has at most [`IN_FLIGHT`] requests being served (it stops reading requests
//! meanwhile) and a quarter of [`READ_BUDGET`], the buffer memory of all reads together; a
//! reply not written within a minute (the client stopped reading) ends the connection; and
//! every [`ACCESS_RECHECK`] of requests the connection checks that its key, its image and
//! the rules still let it read.
//!
//! Choices where the protocol leaves room: reads of zero length and requests past the end
//! answer `EINVAL`; reads above the 32 MiB maximum answer `EINVAL` (`EOVERFLOW` with
//! `NBD_CMD_FLAG_DF`); block status may describe less than was asked (a bounded walk of a raw
//! view's tables, at most 1024 descriptors); `NBD_CMD_FLUSH` succeeds (there is nothing to
//! flush); writes, trims and write-zeroes answer `EPERM`; extended headers are not offered
//! (`NBD_REP_ERR_UNSUP`), and `NBD_OPT_EXPORT_NAME` of an unknown name closes the
//! connection, as it must. `NBD_OPT_LIST` lists exports only in lab mode; with keys it
//! answers `NBD_REP_ERR_POLICY`.

pub mod export;
pub mod names;
pub mod proto;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

use crate::config::AuthMode;
use crate::http::AppState;
use export::Export;
use proto::*;

/// Requests served at once per connection.
pub const IN_FLIGHT: usize = 16;
/// Bytes of read buffers all connections together may hold.
pub const READ_BUDGET: usize = 256 << 20;
/// Time allowed for the whole handshake, from the greeting to the export.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often (at most, as requests come) a connection checks that it may still read its
/// image: the key behind its capability still live, the image still there and readable.
pub const ACCESS_RECHECK: Duration = Duration::from_secs(2);
/// The most exports `NBD_OPT_LIST` names (lab mode).
const LIST_LIMIT: usize = 1000;
/// Most options one handshake may send (each may open an export).
pub const MAX_OPTIONS: usize = 64;
/// How long one reply may take to write before the client is deemed gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The share of `READ_BUDGET` one connection may hold.
const CONNECTION_BUDGET: usize = READ_BUDGET / 4;
/// Most block status descriptors in one reply.
const STATUS_LIMIT: usize = 1024;

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// Serves NBD on `listener` until `shutdown` completes; open connections are then closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let _ = state.nbd_address.set(address);
    tracing::info!(%address, "NBD export is serving");
    let slots = Arc::new(Semaphore::new(state.config.nbd.max_connections));
    let budget = Arc::new(Semaphore::new(READ_BUDGET >> 10));
    let tls = state.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "NBD accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "NBD connection refused: nbd_max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let budget = budget.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            state.metrics.nbd.connections.inc();
            if let Err(error) = connection(stream, peer, &state, budget, tls).await {
                tracing::debug!(%peer, %error, "NBD connection ended with an error");
            }
            state.metrics.nbd.connections.dec();
        });
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The negotiated state of a connection.
struct Negotiated {
    export: Export,
    structured: bool,
    /// `base:allocation` was selected for this export.
    allocation: bool,
}

impl Negotiated {
    /// The export `name` opened; `base:allocation` applies if it was set for this name, with
    /// structured replies (block status needs them).
    fn new(
        export: Export,
        name: &str,
        structured: bool,
        allocation_for: &Option<String>,
    ) -> Negotiated {
        Negotiated {
            export,
            structured,
            allocation: structured && allocation_for.as_deref() == Some(name),
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: &AppState,
    budget: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(Box::new(stream), state, tls));
    let Ok(outcome) = handshake.await else {
        tracing::debug!(%peer, "NBD handshake timed out");
        return Ok(());
    };
    let Some((stream, negotiated)) = outcome? else {
        return Ok(());
    };
    tracing::info!(%peer, image = %negotiated.export.image, size = negotiated.export.size(), "NBD export opened");
    transmission(stream, state, budget, negotiated).await
}

/// Reads one option: its number and payload. `Ok(None)`: the client went away or broke the
/// protocol, and the connection is to be closed. Options too long to be real are skipped
/// with `NBD_REP_ERR_TOO_BIG` (or end the connection if too long to skip).
async fn read_option(stream: &mut Stream) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    loop {
        let mut head = [0u8; 16];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let magic = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(head[12..].try_into().expect("4 bytes"));
        if magic != IHAVEOPT {
            return Ok(None);
        }
        if length <= MAX_OPTION_LEN {
            let mut payload = vec![0u8; length as usize];
            if stream.read_exact(&mut payload).await.is_err() {
                return Ok(None);
            }
            return Ok(Some((option, payload)));
        }
        if length > 16 * MAX_OPTION_LEN {
            return Ok(None);
        }
        let mut rest = (&mut *stream).take(u64::from(length));
        tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
        send(
            stream,
            &option_reply(option, REP_ERR_TOO_BIG, b"option payload too long"),
        )
        .await?;
    }
}

/// Writes and flushes (under TLS, bytes written may otherwise wait in the session's buffer).
async fn send(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// The handshake: greeting, client flags, then options until the client picks an export
/// (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
async fn negotiate(
    mut stream: Stream,
    state: &AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<Option<(Stream, Negotiated)>> {
    send(&mut stream, &greeting()).await?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags).await?;
    let flags = u32::from_be_bytes(flags);
    if flags & FLAG_C_FIXED_NEWSTYLE == 0
        || flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0
    {
        return Ok(None);
    }
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
    let mut secured = false;
    let mut structured = false;
    // The export `NBD_OPT_SET_META_CONTEXT` selected `base:allocation` for.
    let mut allocation_for: Option<String> = None;
    for _ in 0..MAX_OPTIONS {
        // Replies are written as they come; whatever is buffered goes out before waiting.
        stream.flush().await?;
        let Some((option, payload)) = read_option(&mut stream).await? else {
            return Ok(None);
        };
        let reply = |kind: u32, data: &[u8]| option_reply(option, kind, data);
        if tls.is_some() && !secured && option != OPT_STARTTLS && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Ok(None);
            }
            stream
                .write_all(&reply(
                    REP_ERR_TLS_REQD,
                    b"this server requires TLS: use NBD_OPT_STARTTLS",
                ))
                .await?;
            continue;
        }
        match option {
            OPT_EXPORT_NAME => {
                let Some(export) = std::str::from_utf8(&payload).ok().map(str::to_owned) else {
                    return Ok(None);
                };
                let Some(opened) = export::open(state, &export).await else {
                    return Ok(None);
                };
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&opened.size().to_be_bytes());
                out.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0; 124]);
                }
                send(&mut stream, &out).await?;
                let negotiated = Negotiated::new(opened, &export, structured, &allocation_for);
                return Ok(Some((stream, negotiated)));
            }
            OPT_ABORT => {
                let _ = stream.write_all(&reply(REP_ACK, &[])).await;
                return Ok(None);
            }
            OPT_LIST => {
                if !payload.is_empty() {
                    stream
                        .write_all(&reply(REP_ERR_INVALID, b"NBD_OPT_LIST takes no data"))
                        .await?;
                    continue;
                }
                if state.config.auth == AuthMode::Keys {
                    stream
                        .write_all(&reply(
                            REP_ERR_POLICY,
                            b"exports are not listed; ask POST /ocellus/v1/images/{id}/nbd for one",
                        ))
                        .await?;
                    continue;
                }
                for name in list_exports(state).await {
                    stream
                        .write_all(&reply(REP_SERVER, &server_entry(&name)))
                        .await?;
                }
                stream.write_all(&reply(REP_ACK, &[])).await?;
            }
            OPT_STARTTLS => {
                let Some(acceptor) = tls.as_ref() else {
                    stream
                        .write_all(&reply(
                            REP_ERR_POLICY,
                            b"TLS is not configured on this server",
                        ))
                        .await?;
                    continue;
                };
                if !payload.is_empty() || secured {
                    stream
                        .write_all(&reply(
                            REP_ERR_INVALID,
                            b"TLS is already negotiated or the option has data",
                        ))
                        .await?;
                    continue;
                }
                send(&mut stream, &reply(REP_ACK, &[])).await?;
                stream = Box::new(acceptor.accept(stream).await?);
                secured = true;
                // Whatever was negotiated in the clear does not count.
                structured = false;
                allocation_for = None;
            }
            OPT_INFO | OPT_GO => {
                let Some(request) = parse_info_request(&payload) else {
                    stream
                        .write_all(&reply(REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO"))
                        .await?;
                    continue;
                };
                let Some(opened) = export::open(state, &request.name).await else {
                    stream
                        .write_all(&reply(REP_ERR_UNKNOWN, b"no such export"))
                        .await?;
                    continue;
                };
                stream
                    .write_all(&reply(REP_INFO, &info_export(opened.size())))
                    .await?;
                if request.requests.contains(&INFO_BLOCK_SIZE) {
                    stream
                        .write_all(&reply(REP_INFO, &info_block_size()))
                        .await?;
                }
                send(&mut stream, &reply(REP_ACK, &[])).await?;
                if option == OPT_GO {
                    let negotiated =
                        Negotiated::new(opened, &request.name, structured, &allocation_for);
                    return Ok(Some((stream, negotiated)));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !payload.is_empty() {
                    stream
                        .write_all(&reply(
                            REP_ERR_INVALID,
                            b"NBD_OPT_STRUCTURED_REPLY takes no data",
                        ))
                        .await?;
                    continue;
                }
                structured = true;
                stream.write_all(&reply(REP_ACK, &[])).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let listing = option == OPT_LIST_META_CONTEXT;
                if !listing {
                    // A SET replaces the selection, even when it fails.
                    allocation_for = None;
                }
                let Some(request) = parse_meta_request(&payload).filter(|_| structured) else {
                    stream
                        .write_all(&reply(
                            REP_ERR_INVALID,
                            b"malformed request, or structured replies not negotiated",
                        ))
                        .await?;
                    continue;
                };
                if !listing && export::open(state, &request.name).await.is_none() {
                    stream
                        .write_all(&reply(REP_ERR_UNKNOWN, b"no such export"))
                        .await?;
                    continue;
                }
                let selected = (listing && request.queries.is_empty())
                    || request
                        .queries
                        .iter()
                        .any(|query| selects_base_allocation(query, listing));
                if selected {
                    // A listing's context ids mean nothing; the protocol asks for 0 there.
                    let id = if listing { 0 } else { BASE_ALLOCATION_ID };
                    stream
                        .write_all(&reply(REP_META_CONTEXT, &meta_context(id, BASE_ALLOCATION)))
                        .await?;
                }
                if !listing {
                    allocation_for = selected.then_some(request.name);
                }
                stream.write_all(&reply(REP_ACK, &[])).await?;
            }
            _ => {
                stream
                    .write_all(&reply(REP_ERR_UNSUP, b"option not supported"))
                    .await?;
            }
        }
    }
    tracing::debug!("NBD client sent {MAX_OPTIONS} options without choosing an export");
    Ok(None)
}

/// The exports `NBD_OPT_LIST` names in lab mode: images the lab's caller may read, and the
/// raw view of each qcow2 one.
async fn list_exports(state: &AppState) -> Vec<String> {
    let store = state.store.clone();
    let caller = crate::http::auth::lab_default_caller(&state.config.default_project);
    let listed = tokio::task::spawn_blocking(move || {
        use crate::kv::{Direction, ListOutcome, ListRequest, SortKey};
        let sort = [(SortKey::CreatedAt, Direction::Desc)];
        let request = ListRequest {
            sort: &sort,
            tiebreak: Direction::Desc,
            marker: None,
            limit: LIST_LIMIT,
            candidates: Vec::new(),
        };
        let readable = |record: &crate::kv::ImageRecord| export::readable(&caller, record);
        match store.list_images(&request, &|_| true, &readable) {
            Ok(ListOutcome::Page { images, .. }) => images,
            _ => Vec::new(),
        }
    })
    .await
    .unwrap_or_default();
    let mut names = Vec::new();
    for record in listed {
        names.push(export::export_name(record.id, false, None));
        if record.disk_format.as_deref() == Some("qcow2") {
            names.push(export::export_name(record.id, true, None));
        }
    }
    names
}

/// The reply side of a connection, shared by the tasks serving its requests.
type Writer = Arc<Mutex<WriteHalf<Stream>>>;

/// What a connection's request tasks share: the reply side, and a signal that a reply could
/// not be written (the client stopped reading), which ends the connection.
#[derive(Clone)]
struct Replies {
    writer: Writer,
    broken: Arc<tokio::sync::Notify>,
}

impl Replies {
    /// Writes one whole reply (the lock keeps replies from interleaving) and flushes it,
    /// within `WRITE_TIMEOUT`; a failure marks the connection broken.
    async fn send(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut writer = self.writer.lock().await;
            for part in parts {
                writer.write_all(part).await?;
            }
            writer.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no reply bytes",
            ))
        });
        if written.is_err() {
            self.broken.notify_one();
        }
        written
    }

    /// The reply to a successful read: one final `OFFSET_DATA` chunk, or a simple reply.
    async fn data(
        &self,
        request: &Request,
        pieces: &[bytes::Bytes],
        structured: bool,
    ) -> std::io::Result<()> {
        let header;
        let offset = request.offset.to_be_bytes();
        let simple;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(pieces.len() + 2);
        if structured {
            header = chunk_header(
                request.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + request.length,
            );
            parts.push(&header);
            parts.push(&offset);
        } else {
            simple = simple_reply(request.cookie, 0);
            parts.push(&simple);
        }
        parts.extend(pieces.iter().map(|piece| &piece[..]));
        self.send(&parts).await
    }

    /// An error reply: a final `NBD_REPLY_TYPE_ERROR` chunk for reads and block status under
    /// structured replies, a simple reply otherwise.
    async fn error(
        &self,
        request: &Request,
        errno: u32,
        structured: bool,
        message: &str,
    ) -> std::io::Result<()> {
        if structured && matches!(request.kind, CMD_READ | CMD_BLOCK_STATUS) {
            self.send(&[&error_chunk(request.cookie, errno, message)])
                .await
        } else {
            self.send(&[&simple_reply(request.cookie, errno)]).await
        }
    }
}

/// The transmission phase: requests until the client disconnects, breaks the protocol,
/// idles too long, stops taking replies, or loses its access (the key revoked, the image
/// gone or no longer readable for it).
async fn transmission(
    stream: Stream,
    state: &AppState,
    budget: Arc<Semaphore>,
    negotiated: Negotiated,
) -> std::io::Result<()> {
    let (mut reader, writer): (ReadHalf<Stream>, _) = tokio::io::split(stream);
    let replies = Replies {
        writer: Arc::new(Mutex::new(writer)),
        broken: Arc::new(tokio::sync::Notify::new()),
    };
    let export = Arc::new(negotiated.export);
    let structured = negotiated.structured;
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let own_budget = Arc::new(Semaphore::new(CONNECTION_BUDGET >> 10));
    let mut tasks = tokio::task::JoinSet::new();
    let mut access_checked = Instant::now();
    let idle = state.config.nbd.idle_timeout;
    'requests: loop {
        while let Some(joined) = tasks.try_join_next() {
            if joined.is_err() {
                // A request task that panicked left its request without an answer.
                break 'requests;
            }
        }
        let mut head = [0u8; 28];
        tokio::select! {
            read = tokio::time::timeout(idle, reader.read_exact(&mut head)) => match read {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::info!(image = %export.image, "NBD connection idle too long; closing it");
                    break;
                }
            },
            () = replies.broken.notified() => {
                tracing::info!(image = %export.image, "NBD client stopped taking replies; closing it");
                break;
            }
        }
        let Some(request) = parse_request(&head) else {
            tracing::debug!("NBD request with a bad magic; closing the connection");
            break;
        };
        if access_checked.elapsed() >= ACCESS_RECHECK {
            if !export.still_readable(state).await {
                tracing::info!(image = %export.image, "NBD connection lost its access to the image; closing it");
                break;
            }
            access_checked = Instant::now();
        }
        match request.kind {
            CMD_DISC => break,
            CMD_READ => {
                if let Err(errno) = check_range(&request, export.size(), true) {
                    replies
                        .error(&request, errno, structured, "read outside the export")
                        .await?;
                    continue;
                }
                let slot = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                // Memory: the read's buffers (a raw view may inflate a compressed cluster for
                // a few bytes of it), from this connection's share and from the whole budget.
                let kib = (export.read_cost(u64::from(request.length)).div_ceil(1024) as u32)
                    .min((CONNECTION_BUDGET >> 10) as u32);
                let own = own_budget
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .expect("never closed");
                let memory = budget
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .expect("never closed");
                let (replies, export, state) = (replies.clone(), export.clone(), state.clone());
                tasks.spawn(async move {
                    let _held = (slot, own, memory);
                    let read = export
                        .read(&state.store, request.offset, u64::from(request.length))
                        .await
                        .and_then(|pieces| {
                            let total: usize = pieces.iter().map(|piece| piece.len()).sum();
                            if total == request.length as usize {
                                Ok(pieces)
                            } else {
                                Err(std::io::Error::other("the read came back short"))
                            }
                        });
                    let sent = match read {
                        Ok(pieces) => {
                            state.metrics.nbd.read_bytes.inc_by(u64::from(request.length));
                            replies.data(&request, &pieces, structured).await
                        }
                        Err(error) => {
                            state.metrics.nbd.read_failures.inc();
                            tracing::error!(image = %export.image, offset = request.offset, length = request.length, %error, "NBD read failed; answered EIO");
                            replies.error(&request, EIO, structured, "the stored bytes could not be read or failed verification").await
                        }
                    };
                    if let Err(error) = sent {
                        tracing::debug!(%error, "NBD reply could not be sent");
                    }
                });
            }
            CMD_BLOCK_STATUS => {
                if !negotiated.allocation {
                    replies
                        .error(
                            &request,
                            EINVAL,
                            structured,
                            "no metadata context negotiated",
                        )
                        .await?;
                    continue;
                }
                if let Err(errno) = check_range(&request, export.size(), false) {
                    replies
                        .error(
                            &request,
                            errno,
                            structured,
                            "block status outside the export",
                        )
                        .await?;
                    continue;
                }
                let limit = if request.flags & CMD_FLAG_REQ_ONE != 0 {
                    1
                } else {
                    STATUS_LIMIT
                };
                let length = u64::from(request.length);
                match export
                    .describe(&state.store, request.offset, length, limit)
                    .await
                {
                    Ok(stretches) => {
                        let mut descriptors: Vec<(u32, u32)> = stretches
                            .iter()
                            .filter(|stretch| stretch.length > 0)
                            .map(|stretch| {
                                let flags = if stretch.zero {
                                    STATE_HOLE | STATE_ZERO
                                } else {
                                    0
                                };
                                // Within the request, so within its u32 length.
                                (stretch.length.min(length) as u32, flags)
                            })
                            .collect();
                        if descriptors.is_empty() {
                            // At least one descriptor is required; data is always true.
                            descriptors.push((request.length, 0));
                        }
                        replies
                            .send(&[&block_status_chunk(request.cookie, &descriptors)])
                            .await?;
                    }
                    Err(error) => {
                        tracing::error!(image = %export.image, %error, "NBD block status failed; answered EIO");
                        replies
                            .error(
                                &request,
                                EIO,
                                structured,
                                "the image's mapping could not be read",
                            )
                            .await?;
                    }
                }
            }
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {
                if request.kind == CMD_WRITE {
                    // The payload must be read off the wire to keep the stream in step.
                    if request.length > MAX_BLOCK {
                        break;
                    }
                    let mut skip = (&mut reader).take(u64::from(request.length));
                    let skipped = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        tokio::io::copy(&mut skip, &mut tokio::io::sink()),
                    )
                    .await;
                    if !matches!(skipped, Ok(Ok(count)) if count == u64::from(request.length)) {
                        break;
                    }
                }
                replies
                    .error(&request, EPERM, structured, "the export is read-only")
                    .await?;
            }
            CMD_FLUSH => {
                replies.send(&[&simple_reply(request.cookie, 0)]).await?;
            }
            _ => {
                replies
                    .error(&request, EINVAL, structured, "unknown command")
                    .await?;
            }
        }
    }
    // Replies already being prepared are sent before the connection closes (`NBD_CMD_DISC`
    // asks for that); each write is bounded by `WRITE_TIMEOUT`, and a task still running
    // after that is cut.
    let drained = tokio::time::timeout(WRITE_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    let _ = replies.writer.lock().await.shutdown().await;
    Ok(())
}
