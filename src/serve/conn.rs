//! One NBD connection: the fixed newstyle handshake, then transmission ("Fixed
//! newstyle negotiation" and "Transmission" in the protocol document), bytes decoded
//! and encoded by [`crate::nbd`].
//!
//! Requests are served concurrently (up to [`IN_FLIGHT`] at a time, holding at most
//! [`IN_FLIGHT_BYTES`] of data, until their replies are sent) and each reply is
//! written whole under the writer's lock, so replies of different requests never
//! interleave. A client that goes away mid-reply ends its connection, nothing else.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use super::{Export, OverlayError};
use crate::nbd::{
    self, BASE_ALLOCATION, ClientFlags, MAX_PAYLOAD, OPTION_HEADER_LEN, Opt, OptionHeader,
    ProtoError, REQUEST_LEN, Request, STATE_HOLE, STATE_ZERO, cflag, cmd, errno, info, opt, rep,
    tflag,
};
use crate::point::{RandomError, ReadStream};

/// Requests served at once on one connection.
const IN_FLIGHT: usize = 16;
/// Bytes of read and write data in flight on one connection; a larger request waits
/// until it is alone.
const IN_FLIGHT_BYTES: u32 = 4 << 20;
/// The id of `base:allocation` ("Metadata querying": chosen by the server).
const ALLOCATION_ID: u32 = 1;
/// Most extents in one block status reply.
const MAX_EXTENTS: usize = 1024;

/// A client connection's byte stream.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// What the handshake settled.
struct Session {
    structured: bool,
    allocation: bool,
    /// The size the client was told: the export's, or for the kernel the export's
    /// rounded up to whole sectors ([`Export::device_size`]), the padding read as
    /// zeros.
    size: u64,
}

/// Serves one connection until the client disconnects.
pub(super) async fn handle(stream: Box<dyn Io>, export: Arc<Export>) -> Result<(), ConnError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let Some(session) = handshake(&mut rd, &mut wr, &export).await? else {
        return Ok(());
    };
    transmission(rd, wr, export, session).await
}

/// Serves the kernel's NBD client on a socket it was handed with `NBD_SET_SOCK`: the
/// ioctl interface skips the handshake (the size and flags were set by ioctls) and
/// expects simple replies.
pub(super) async fn handle_kernel(
    stream: Box<dyn Io>,
    export: Arc<Export>,
) -> Result<(), ConnError> {
    let (rd, wr) = tokio::io::split(stream);
    let session = Session {
        structured: false,
        allocation: false,
        size: export.device_size(),
    };
    transmission(rd, wr, export, session).await
}

/// "Fixed newstyle negotiation": the greeting, then options until one starts
/// transmission (`Some`) or the client aborts (`None`).
async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    export: &Export,
) -> Result<Option<Session>, ConnError> {
    wr.write_all(&nbd::server_greeting()).await?;
    let mut flags = [0; 4];
    rd.read_exact(&mut flags).await?;
    let client = ClientFlags::decode(&flags)?;
    let mut s = Session {
        structured: false,
        allocation: false,
        size: export.size(),
    };
    loop {
        let mut head = [0; OPTION_HEADER_LEN];
        rd.read_exact(&mut head).await?;
        let h = OptionHeader::decode(&head)?;
        let mut data = vec![0; h.len as usize];
        rd.read_exact(&mut data).await?;
        let mut out = Vec::new();
        let o = match Opt::decode(h.option, &data) {
            Ok(o) => o,
            Err(e) if h.option == opt::EXPORT_NAME => return Err(e.into()),
            Err(e) => {
                nbd::option_error(h.option, rep::ERR_INVALID, &e.to_string(), &mut out);
                wr.write_all(&out).await?;
                continue;
            }
        };
        match o {
            Opt::ExportName(name) => {
                if !export.is_named(&name) {
                    // "NBD_OPT_EXPORT_NAME" has no error reply: the server closes.
                    return Err(ConnError::Refused(format!(
                        "unknown export {name:?} (this server exports {:?})",
                        export.name
                    )));
                }
                let flags = transmission_flags(export);
                nbd::export_name_reply(export.size(), flags, client.no_zeroes, &mut out);
                wr.write_all(&out).await?;
                return Ok(Some(s));
            }
            Opt::Abort => {
                nbd::option_reply(h.option, rep::ACK, &[], &mut out);
                // The client may already have closed: its abort stands either way.
                let _ = wr.write_all(&out).await;
                return Ok(None);
            }
            Opt::List => {
                nbd::option_reply(
                    h.option,
                    rep::SERVER,
                    &nbd::rep_server(&export.name),
                    &mut out,
                );
                nbd::option_reply(h.option, rep::ACK, &[], &mut out);
            }
            Opt::Info { go, name, requests } => {
                if !export.is_named(&name) {
                    let msg = format!(
                        "unknown export {name:?} (this server exports {:?})",
                        export.name
                    );
                    nbd::option_error(h.option, rep::ERR_UNKNOWN, &msg, &mut out);
                } else {
                    let flags = transmission_flags(export);
                    nbd::option_reply(
                        h.option,
                        rep::INFO,
                        &nbd::info_export(export.size(), flags),
                        &mut out,
                    );
                    if requests.contains(&info::NAME) {
                        let mut d = info::NAME.to_be_bytes().to_vec();
                        d.extend_from_slice(export.name.as_bytes());
                        nbd::option_reply(h.option, rep::INFO, &d, &mut out);
                    }
                    if requests.contains(&info::BLOCK_SIZE) {
                        let d = nbd::info_block_size(
                            1,
                            export.block_size().min(MAX_PAYLOAD),
                            MAX_PAYLOAD,
                        );
                        nbd::option_reply(h.option, rep::INFO, &d, &mut out);
                    }
                    nbd::option_reply(h.option, rep::ACK, &[], &mut out);
                    if go {
                        wr.write_all(&out).await?;
                        return Ok(Some(s));
                    }
                }
            }
            Opt::StructuredReply => {
                s.structured = true;
                nbd::option_reply(h.option, rep::ACK, &[], &mut out);
            }
            Opt::MetaContext { set, name, queries } => {
                if !s.structured {
                    nbd::option_error(
                        h.option,
                        rep::ERR_INVALID,
                        "negotiate NBD_OPT_STRUCTURED_REPLY first",
                        &mut out,
                    );
                } else if !export.is_named(&name) {
                    let msg = format!("unknown export {name:?}");
                    nbd::option_error(h.option, rep::ERR_UNKNOWN, &msg, &mut out);
                } else {
                    // "Metadata querying": a list with no queries lists every
                    // context; `base:` names the whole namespace in a list.
                    let chosen = queries
                        .iter()
                        .any(|q| q == BASE_ALLOCATION || (!set && q == "base:"))
                        || (!set && queries.is_empty());
                    if set {
                        s.allocation = chosen;
                    }
                    if chosen {
                        nbd::option_reply(
                            h.option,
                            rep::META_CONTEXT,
                            &nbd::rep_meta_context(ALLOCATION_ID, BASE_ALLOCATION),
                            &mut out,
                        );
                    }
                    nbd::option_reply(h.option, rep::ACK, &[], &mut out);
                }
            }
            Opt::Unsupported(o) => {
                let msg = format!("option {o} is not supported by this server");
                nbd::option_error(o, rep::ERR_UNSUP, &msg, &mut out);
            }
        }
        wr.write_all(&out).await?;
    }
}

/// "Transmission flags" of the export: read-only, or with an overlay, writes, trims,
/// zeroes and flushes. Every connection sees one overlay and a flush syncs all of it,
/// so several connections are consistent either way.
pub(super) fn transmission_flags(export: &Export) -> u16 {
    let base = tflag::HAS_FLAGS | tflag::CAN_MULTI_CONN;
    if export.writable() {
        base | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES
    } else {
        base | tflag::READ_ONLY
    }
}

/// "Transmission": requests until `NBD_CMD_DISC` or the client goes away.
async fn transmission<R: AsyncRead + Unpin>(
    mut rd: R,
    wr: WriteHalf<Box<dyn Io>>,
    export: Arc<Export>,
    session: Session,
) -> Result<(), ConnError> {
    let wr = Arc::new(Mutex::new(wr));
    let session = Arc::new(session);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize));
    let mut tasks = JoinSet::new();
    let mut stream = ReadStream::default();
    let result = loop {
        let mut head = [0; REQUEST_LEN];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            // A client that closes without NBD_CMD_DISC: common, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        let r = match Request::decode(&head) {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        let data = if r.kind == cmd::READ || r.has_payload() {
            r.length.min(IN_FLIGHT_BYTES)
        } else {
            0
        };
        let held = bytes.clone().acquire_many_owned(data).await;
        let held = held.expect("semaphore open");
        let mut payload = Vec::new();
        if r.has_payload() {
            // The payload is read whatever the answer, to stay in sync; one larger
            // than the maximum ends the connection.
            if r.length > MAX_PAYLOAD {
                break Err(ConnError::Refused(format!(
                    "write of {} bytes is larger than the {MAX_PAYLOAD} accepted",
                    r.length
                )));
            }
            payload.resize(r.length as usize, 0);
            if let Err(e) = rd.read_exact(&mut payload).await {
                break Err(e.into());
            }
        }
        if r.kind == cmd::DISC {
            break Ok(());
        }
        if r.kind == cmd::READ
            && let Some(range) = r.range_within(session.size)
        {
            export.read_ahead(&mut stream, range);
        }
        while tasks.try_join_next().is_some() {}
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let (export, session, wr) = (export.clone(), session.clone(), wr.clone());
        tasks.spawn(async move {
            let (head, data) = answer(&export, &session, r, payload).await;
            // A client gone mid-reply: its reader sees the end too.
            let mut wr = wr.lock().await;
            if wr.write_all(&head).await.is_ok() && !data.is_empty() {
                let _ = wr.write_all(&data).await;
            }
            // Held until the reply is sent: a reply waiting for the writer counts
            // against the requests in flight, so their buffers stay bounded.
            drop((permit, held));
        });
    };
    while tasks.join_next().await.is_some() {}
    let _ = wr.lock().await.shutdown().await;
    result
}

/// The reply to request `r` (with its payload), whole: its header, and the data of
/// a read (sent as is, not copied behind the header).
async fn answer(export: &Export, s: &Session, r: Request, payload: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    let out = reply(export, s, r, payload, &mut data).await;
    (out, data)
}

/// The reply to `r` without a read's data, which goes to `data`.
async fn reply(
    export: &Export,
    s: &Session,
    r: Request,
    payload: Vec<u8>,
    data: &mut Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let fail = |out: &mut Vec<u8>, error: u32, msg: &str| {
        if s.structured {
            nbd::error_chunk(r.cookie, error, msg, out);
        } else {
            nbd::simple_reply(r.cookie, error, out);
        }
    };
    let ok = |out: &mut Vec<u8>| {
        if s.structured {
            nbd::none_chunk(r.cookie, out);
        } else {
            nbd::simple_reply(r.cookie, 0, out);
        }
    };
    let Some(range) = r.range_within(s.size) else {
        let msg = format!(
            "bytes {}..{} lie past the end of the {}-byte export",
            r.offset,
            u128::from(r.offset) + u128::from(r.length),
            s.size
        );
        fail(&mut out, errno::EINVAL, &msg);
        return out;
    };
    match r.kind {
        cmd::READ => {
            if r.length > MAX_PAYLOAD {
                fail(&mut out, errno::EINVAL, "read longer than 32 MiB");
                return out;
            }
            data.resize(r.length as usize, 0);
            // Past the export's end (the kernel's last sector): zeros.
            let within = range.end.min(export.size()).saturating_sub(r.offset) as usize;
            let read = match within {
                0 => Ok(()),
                n => export.read(r.offset, &mut data[..n]).await,
            };
            match read {
                Ok(()) => {
                    if s.structured {
                        nbd::offset_data_header(r.cookie, r.offset, r.length, true, &mut out);
                    } else {
                        nbd::simple_reply(r.cookie, 0, &mut out);
                    }
                }
                Err(e) => {
                    // Never bytes after an error reply.
                    data.clear();
                    let msg = read_error(export, &range, &e).await;
                    fail(&mut out, errno::EIO, &msg);
                }
            }
        }
        cmd::BLOCK_STATUS if s.allocation && r.length > 0 => {
            let max = if r.flags & cflag::REQ_ONE != 0 {
                1
            } else {
                MAX_EXTENTS
            };
            match export.extents(range.clone(), max).await {
                Ok(runs) => {
                    let extents: Vec<(u32, u32)> = runs
                        .iter()
                        .map(|&(len, zero)| {
                            // Each run lies inside the request: its length fits.
                            (len as u32, if zero { STATE_HOLE | STATE_ZERO } else { 0 })
                        })
                        .collect();
                    nbd::block_status_chunk(r.cookie, ALLOCATION_ID, &extents, &mut out);
                }
                Err(e) => {
                    let msg = read_error(export, &range, &e).await;
                    fail(&mut out, errno::EIO, &msg);
                }
            }
        }
        cmd::BLOCK_STATUS => fail(
            &mut out,
            errno::EINVAL,
            "block status needs the base:allocation context and a length",
        ),
        cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES | cmd::FLUSH => {
            let Some(overlay) = &export.overlay else {
                let msg = "the export is read-only (serve it with --overlay FILE to accept writes)";
                fail(&mut out, errno::EPERM, msg);
                return out;
            };
            if range.end > export.size() {
                let msg = format!(
                    "bytes {}..{} lie past the end of the {}-byte volume",
                    range.start,
                    range.end,
                    export.size()
                );
                fail(&mut out, errno::EINVAL, &msg);
                return out;
            }
            let sync = r.flags & cflag::FUA != 0;
            let done = match r.kind {
                cmd::WRITE => {
                    overlay
                        .write(
                            &export.reader,
                            r.offset,
                            u64::from(r.length),
                            Some(&payload),
                            sync,
                        )
                        .await
                }
                cmd::FLUSH => export.flush().await,
                _ => {
                    overlay
                        .write(&export.reader, r.offset, u64::from(r.length), None, sync)
                        .await
                }
            };
            match done {
                Ok(()) => ok(&mut out),
                Err(e) => {
                    tracing::error!(volume = %export.name, "overlay: {e}");
                    fail(&mut out, errno::EIO, &e.to_string());
                }
            }
        }
        // A hint that the range is read soon: loaded on other tasks.
        cmd::CACHE => {
            export.reader.prefetch(range);
            ok(&mut out)
        }
        other => fail(&mut out, errno::EINVAL, &format!("unknown command {other}")),
    }
    out
}

/// Logs a failed read and returns what the client is told: a damaged block names
/// archive and block; a store error of a point pruned since serving began says so.
async fn read_error(export: &Export, range: &std::ops::Range<u64>, e: &OverlayError) -> String {
    let pruned = match e {
        OverlayError::Read(RandomError::Read(_)) => export.pruned().await,
        _ => None,
    };
    let msg = pruned.unwrap_or_else(|| e.to_string());
    tracing::error!(
        volume = %export.name,
        seq = export.seq,
        "read of bytes {}..{} failed: {msg}",
        range.start,
        range.end
    );
    msg
}
