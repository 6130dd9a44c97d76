//! The NBD protocol, sans-IO: the wire values, the decoders of what a client sends (its
//! handshake flags, option haggling, transmission requests) and the encoders of what a
//! server answers. It follows the protocol document of the NBD project
//! (`doc/proto.md`, "The NBD protocol"), whose section names the doc comments cite;
//! only the fixed newstyle handshake is spoken.
//!
//! Nothing here reads or writes a socket: a server reads the fixed-size parts itself
//! and hands the bytes to these functions. Every decoder takes any bytes and returns a
//! clear [`ProtoError`], never panics (a property test feeds arbitrary and mutated
//! streams).
//!
//! Ground floor. Imports nothing of the crate; must not do I/O.

#[cfg(test)]
mod tests;

/// "Newstyle negotiation": the first 8 bytes a server sends (`NBDMAGIC`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "Newstyle negotiation": the next 8 bytes (`IHAVEOPT`), also the magic of every
/// option a client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// "Option haggling": the magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// "Request message": the magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// "Simple reply message".
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// "Structured reply chunk message".
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// "Handshake flags": the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// "Handshake flags": the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// "Client flags": the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// "Client flags": the client wants no 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// "Transmission flags".
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// "Option types".
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// "Option reply types" (the error types have bit 31 set).
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// "Option reply types", `NBD_REP_INFO`: the information types.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// "Request types".
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// "Command flags".
pub mod cflag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// "Structured reply types" and "Structured reply flags".
pub mod reply {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// "Error values": the errno values the protocol carries.
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// "Metadata querying", `base:allocation`: the only metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation`: the extent reads as a hole.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// "Block size constraints": the largest payload a request may carry (the default
/// maximum a client assumes).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The longest option data accepted ("Option haggling": a server may reject long
/// options; a name is at most 4096 bytes by "Metadata querying" and
/// `NBD_OPT_EXPORT_NAME`, and a few queries fit easily).
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Length of a client's option header ([`OptionHeader`]).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header ([`Request`]).
pub const REQUEST_LEN: usize = 28;
/// Longest string (export name, query) accepted, per "String" in "Conventions".
pub const MAX_STRING: usize = 4096;

/// A violation of the protocol by the client: the connection is closed (after an
/// error reply where the protocol has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A magic number is wrong: the peer does not speak this protocol (or lost sync).
    #[error("bad {what} magic {found:#x}: the client does not speak NBD fixed newstyle")]
    BadMagic { what: &'static str, found: u64 },
    /// The client flags set an unknown bit, or miss `NBD_FLAG_C_FIXED_NEWSTYLE`.
    #[error(
        "client flags {0:#x}: unknown bits set or fixed newstyle missing (only fixed newstyle is served)"
    )]
    ClientFlags(u32),
    /// Option data longer than [`MAX_OPTION_LEN`].
    #[error("option {option} carries {len} bytes, more than the {max} accepted")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    /// Option data that does not parse (the reply is `NBD_REP_ERR_INVALID`).
    #[error("option {option}: {detail}")]
    BadOption { option: u32, detail: String },
    /// Fewer bytes than a fixed-size structure needs.
    #[error("{what} needs {needed} bytes, got {got}")]
    Short {
        what: &'static str,
        needed: usize,
        got: usize,
    },
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn need(what: &'static str, b: &[u8], needed: usize) -> Result<(), ProtoError> {
    if b.len() < needed {
        return Err(ProtoError::Short {
            what,
            needed,
            got: b.len(),
        });
    }
    Ok(())
}

/// "Fixed newstyle negotiation": what the server sends first (`NBDMAGIC`, `IHAVEOPT`,
/// the handshake flags), 18 bytes.
pub fn server_greeting() -> [u8; 18] {
    let mut g = [0; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// The client flags, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// "Client flags": the 32-bit word the client answers the greeting with.
    ///
    /// # Errors
    /// [`ProtoError::ClientFlags`] for an unknown bit ("the server MUST close the
    /// connection") or a client that is not fixed newstyle.
    pub fn decode(b: &[u8]) -> Result<ClientFlags, ProtoError> {
        need("client flags", b, 4)?;
        let flags = be_u32(b, 0);
        if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0
            || flags & FLAG_C_FIXED_NEWSTYLE == 0
        {
            return Err(ProtoError::ClientFlags(flags));
        }
        Ok(ClientFlags {
            no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
        })
    }
}

/// "Option haggling": the 16-byte header of an option (`IHAVEOPT`, option, length);
/// `len` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Decodes an option header.
    ///
    /// # Errors
    /// [`ProtoError::BadMagic`], [`ProtoError::OptionTooLong`] (the server cannot
    /// skip data it will not read: it closes), [`ProtoError::Short`].
    pub fn decode(b: &[u8]) -> Result<OptionHeader, ProtoError> {
        need("option header", b, OPTION_HEADER_LEN)?;
        let magic = be_u64(b, 0);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic {
                what: "option",
                found: magic,
            });
        }
        let (option, len) = (be_u32(b, 8), be_u32(b, 12));
        if len > MAX_OPTION_LEN {
            return Err(ProtoError::OptionTooLong {
                option,
                len,
                max: MAX_OPTION_LEN,
            });
        }
        Ok(OptionHeader { option, len })
    }
}

/// An option a client sent, with its data parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    /// `NBD_OPT_EXPORT_NAME`: the export, then transmission (no reply header).
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO` (`go: false`) or `NBD_OPT_GO`: the export name and the
    /// information types asked for.
    Info {
        go: bool,
        name: String,
        requests: Vec<u16>,
    },
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT` (`set: false`) or `NBD_OPT_SET_META_CONTEXT`.
    MetaContext {
        set: bool,
        name: String,
        queries: Vec<String>,
    },
    /// Any other option (`NBD_OPT_STARTTLS` included): answered `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

/// A cursor over option data.
struct Data<'a> {
    option: u32,
    b: &'a [u8],
}

impl Data<'_> {
    fn bad(&self, detail: impl Into<String>) -> ProtoError {
        ProtoError::BadOption {
            option: self.option,
            detail: detail.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], ProtoError> {
        if self.b.len() < n {
            return Err(self.bad(format!(
                "{what} needs {n} bytes, {} left in the option",
                self.b.len()
            )));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u16(&mut self, what: &str) -> Result<u16, ProtoError> {
        Ok(be_u16(self.take(2, what)?, 0))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ProtoError> {
        Ok(be_u32(self.take(4, what)?, 0))
    }

    /// A 32-bit length, then that many bytes of UTF-8 ("Conventions": strings are
    /// UTF-8, not NUL-terminated, at most 4096 bytes).
    fn string(&mut self, what: &str) -> Result<String, ProtoError> {
        let len = self.u32(what)? as usize;
        if len > MAX_STRING {
            return Err(self.bad(format!("{what} is {len} bytes, more than {MAX_STRING}")));
        }
        self.utf8(len, what)
    }

    fn utf8(&mut self, len: usize, what: &str) -> Result<String, ProtoError> {
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    fn end(&self) -> Result<(), ProtoError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.bad(format!("{} bytes after the option's data", self.b.len())))
        }
    }
}

impl Opt {
    /// Parses the data of option `option` ("Option types", one paragraph per option).
    ///
    /// # Errors
    /// [`ProtoError::BadOption`]: data of the wrong length or shape; the server
    /// answers `NBD_REP_ERR_INVALID` (for `NBD_OPT_EXPORT_NAME`, which has no error
    /// reply, it closes).
    pub fn decode(option: u32, data: &[u8]) -> Result<Opt, ProtoError> {
        let mut d = Data { option, b: data };
        let o = match option {
            opt::EXPORT_NAME => {
                if data.len() > MAX_STRING {
                    return Err(d.bad("export name longer than 4096 bytes"));
                }
                Opt::ExportName(d.utf8(data.len(), "export name")?)
            }
            // "NBD_OPT_ABORT": the client MAY send data, which the server ignores.
            opt::ABORT => return Ok(Opt::Abort),
            opt::LIST => Opt::List,
            opt::INFO | opt::GO => {
                let name = d.string("export name")?;
                let n = d.u16("number of information requests")?;
                let requests = (0..n)
                    .map(|_| d.u16("information request"))
                    .collect::<Result<_, _>>()?;
                Opt::Info {
                    go: option == opt::GO,
                    name,
                    requests,
                }
            }
            opt::STRUCTURED_REPLY => Opt::StructuredReply,
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let name = d.string("export name")?;
                let n = d.u32("number of queries")?;
                // Each query takes at least its 4-byte length: more than fit is a lie.
                if n as usize > d.b.len() / 4 {
                    return Err(d.bad(format!("{n} queries do not fit in the option")));
                }
                let queries = (0..n)
                    .map(|_| d.string("query"))
                    .collect::<Result<_, _>>()?;
                Opt::MetaContext {
                    set: option == opt::SET_META_CONTEXT,
                    name,
                    queries,
                }
            }
            other => return Ok(Opt::Unsupported(other)),
        };
        d.end()?;
        Ok(o)
    }
}

/// "Option haggling": an option reply (magic, option, reply type, length, data).
pub fn option_reply(option: u32, reply_type: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// An error reply to `option` with a human-readable message (its data).
pub fn option_error(option: u32, reply_type: u32, message: &str, out: &mut Vec<u8>) {
    option_reply(option, reply_type, message.as_bytes(), out);
}

/// `NBD_REP_SERVER` data: one export name ("NBD_OPT_LIST").
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

/// `NBD_REP_INFO` data of `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = info::EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d
}

/// `NBD_REP_INFO` data of `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, preferred, max] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

/// `NBD_REP_META_CONTEXT` data: the context id and its name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

/// "NBD_OPT_EXPORT_NAME": the server's answer (size, transmission flags, then 124 zero
/// bytes unless both sides set `NO_ZEROES`).
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0; 124]);
    }
}

/// "Request message": a transmission request (its 28-byte header; a write's payload
/// of `length` bytes follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Decodes a request header.
    ///
    /// # Errors
    /// [`ProtoError::BadMagic`] (the stream lost sync: the server closes),
    /// [`ProtoError::Short`].
    pub fn decode(b: &[u8]) -> Result<Request, ProtoError> {
        need("request", b, REQUEST_LEN)?;
        let magic = be_u32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request",
                found: u64::from(magic),
            });
        }
        Ok(Request {
            flags: be_u16(b, 4),
            kind: be_u16(b, 6),
            cookie: be_u64(b, 8),
            offset: be_u64(b, 16),
            length: be_u32(b, 24),
        })
    }

    /// Encodes the header (for clients and tests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    /// Whether the request carries a payload of `length` bytes ("NBD_CMD_WRITE").
    pub fn has_payload(&self) -> bool {
        self.kind == cmd::WRITE
    }

    /// The byte range asked for, if it lies inside an export of `size` bytes.
    pub fn range_within(&self, size: u64) -> Option<std::ops::Range<u64>> {
        let end = self.offset.checked_add(u64::from(self.length))?;
        (end <= size).then_some(self.offset..end)
    }
}

/// "Simple reply message": the header (data follows for a successful read).
pub fn simple_reply(cookie: u64, error: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// "Structured reply chunk message": the header of one chunk of `len` payload bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// "NBD_REPLY_TYPE_OFFSET_DATA": the chunk header and the offset; `data_len` bytes of
/// data follow.
pub fn offset_data_header(cookie: u64, offset: u64, data_len: u32, done: bool, out: &mut Vec<u8>) {
    let flags = if done { reply::FLAG_DONE } else { 0 };
    chunk_header(flags, reply::OFFSET_DATA, cookie, data_len + 8, out);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// "NBD_REPLY_TYPE_ERROR": the final chunk of a failed request, with a message.
pub fn error_chunk(cookie: u64, error: u32, message: &str, out: &mut Vec<u8>) {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    chunk_header(
        reply::FLAG_DONE,
        reply::ERROR,
        cookie,
        6 + msg.len() as u32,
        out,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// "NBD_REPLY_TYPE_NONE": the final chunk of a request done.
pub fn none_chunk(cookie: u64, out: &mut Vec<u8>) {
    chunk_header(reply::FLAG_DONE, reply::NONE, cookie, 0, out);
}

/// "NBD_REPLY_TYPE_BLOCK_STATUS": the final chunk answering `NBD_CMD_BLOCK_STATUS` for
/// context `context`, one (length, status flags) descriptor per extent.
pub fn block_status_chunk(cookie: u64, context: u32, extents: &[(u32, u32)], out: &mut Vec<u8>) {
    let len = 4 + 8 * extents.len() as u32;
    chunk_header(reply::FLAG_DONE, reply::BLOCK_STATUS, cookie, len, out);
    out.extend_from_slice(&context.to_be_bytes());
    for (length, flags) in extents {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
}
