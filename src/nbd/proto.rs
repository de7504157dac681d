//! The NBD wire format: magics, option and command numbers, and the encoders and decoders of
//! the fixed-newstyle handshake and the transmission phase, as NetworkBlockDevice's `proto.md`
//! defines them. Everything here is pure: bytes in, values out, so that it is tested without
//! a socket. All integers on the wire are big-endian.

/// `NBDMAGIC`, the first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the magic before every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic before every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server): fixed newstyle, and no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags: what the export supports. Read-only exports are safe to share across
/// connections, so `CAN_MULTI_CONN` is set (nbdcopy then opens several).
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERROR + 1;
pub const REP_ERR_POLICY: u32 = REP_ERROR + 2;
pub const REP_ERR_INVALID: u32 = REP_ERROR + 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERROR + 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERROR + 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERROR + 9;

/// `NBD_REP_INFO` types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply chunk flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// `base:allocation` states.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The only metadata context served, and the id it gets.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Error values (Linux errno numbers, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;

/// Block sizes advertised with `NBD_INFO_BLOCK_SIZE`: any alignment works, 64 KiB reads are
/// the cheapest (whole verification groups, whole extent blocks), and a request may be as
/// large as the protocol's customary 32 MiB maximum.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 64 * 1024;
pub const MAX_BLOCK: u32 = 32 * 1024 * 1024;

/// The longest option payload read: names are at most 4096 bytes, and a query list of
/// reasonable length fits well within this.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, the handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut out = [0; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// An option reply's bytes.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size() -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for size in [MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK] {
        out.extend_from_slice(&size.to_be_bytes());
    }
    out
}

/// `NBD_REP_SERVER` data: one export name.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` data: a context id and its name.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// A reader over an option's payload that fails (`None`) instead of running past the end.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes }
    }

    pub fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|bytes| u32::from_be_bytes(bytes.try_into().expect("four bytes")))
    }

    /// A length-prefixed (u32) string; `None` if it runs past the end or is not UTF-8.
    pub fn string(&mut self) -> Option<&'a str> {
        let length = self.u32()? as usize;
        std::str::from_utf8(self.take(length)?).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`: the export name and the information types
/// asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn parse_info_request(payload: &[u8]) -> Option<InfoRequest> {
    let mut cursor = Cursor::new(payload);
    let name = cursor.string()?.to_owned();
    let count = cursor.u16()?;
    let requests = (0..count)
        .map(|_| cursor.u16())
        .collect::<Option<Vec<_>>>()?;
    cursor.is_empty().then_some(InfoRequest { name, requests })
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_request(payload: &[u8]) -> Option<MetaRequest> {
    let mut cursor = Cursor::new(payload);
    let name = cursor.string()?.to_owned();
    let count = cursor.u32()?;
    // Each query takes at least its four length bytes: a count beyond that is a lie.
    if count as usize > payload.len() / 4 {
        return None;
    }
    let queries = (0..count)
        .map(|_| cursor.string().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    cursor.is_empty().then_some(MetaRequest { name, queries })
}

/// Whether a metadata context query selects `base:allocation`: the exact name, or `base:`
/// (every context of the namespace). Only `LIST` may use the namespace form.
pub fn selects_base_allocation(query: &str, listing: bool) -> bool {
    query == BASE_ALLOCATION || (listing && query == "base:")
}

/// One transmission request's header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Decodes a request header; `None` if its magic is wrong (the connection cannot continue).
pub fn parse_request(bytes: &[u8; 28]) -> Option<Request> {
    let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    (u32_at(0) == REQUEST_MAGIC).then(|| Request {
        flags: u16_at(4),
        kind: u16_at(6),
        cookie: u64_at(8),
        offset: u64_at(16),
        length: u32_at(24),
    })
}

/// A simple reply's header (data follows for a successful read).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk's header; `length` bytes of payload follow.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, length: u32) -> [u8; 20] {
    let mut out = [0; 20];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&length.to_be_bytes());
    out
}

/// `NBD_REPLY_TYPE_ERROR` as a final chunk: the error and a message for the client's log.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(4096)];
    let mut out = Vec::with_capacity(26 + message.len());
    out.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + message.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS` as a final chunk: `(length, flags)` descriptors for the
/// `base:allocation` context.
pub fn block_status_chunk(cookie: u64, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let length = 4 + 8 * descriptors.len();
    let mut out = Vec::with_capacity(20 + length);
    out.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        length as u32,
    ));
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (length, flags) in descriptors {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

/// Checks a read or block-status request against the export: `Err(errno)` when it must be
/// refused. Zero-length requests and ranges past the end get `EINVAL`; reads over the
/// maximum block size get `EOVERFLOW` with `NBD_CMD_FLAG_DF` and `EINVAL` without, as the
/// protocol asks.
pub fn check_range(request: &Request, size: u64, is_read: bool) -> Result<(), u32> {
    if request.length == 0
        || request
            .offset
            .checked_add(u64::from(request.length))
            .is_none_or(|end| end > size)
    {
        return Err(EINVAL);
    }
    if is_read && request.length > MAX_BLOCK {
        return Err(if request.flags & CMD_FLAG_DF != 0 {
            EOVERFLOW
        } else {
            EINVAL
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_the_documented_bytes() {
        let bytes = greeting();
        assert_eq!(&bytes[..8], b"NBDMAGIC");
        assert_eq!(&bytes[8..16], b"IHAVEOPT");
        assert_eq!(&bytes[16..], &[0, 3]);
    }

    #[test]
    fn option_replies_carry_magic_option_type_and_length() {
        let reply = option_reply(OPT_GO, REP_ERR_UNKNOWN, b"no");
        assert_eq!(&reply[..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&reply[8..12], &7u32.to_be_bytes());
        assert_eq!(&reply[12..16], &0x8000_0006u32.to_be_bytes());
        assert_eq!(&reply[16..20], &2u32.to_be_bytes());
        assert_eq!(&reply[20..], b"no");
    }

    #[test]
    fn info_requests_parse_and_refuse_short_or_trailing_payloads() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&3u32.to_be_bytes());
        payload.extend_from_slice(b"abc");
        payload.extend_from_slice(&2u16.to_be_bytes());
        payload.extend_from_slice(&3u16.to_be_bytes());
        payload.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            parse_info_request(&payload),
            Some(InfoRequest {
                name: "abc".into(),
                requests: vec![3, 1]
            })
        );
        assert_eq!(parse_info_request(&payload[..payload.len() - 1]), None);
        let mut trailing = payload.clone();
        trailing.push(0);
        assert_eq!(parse_info_request(&trailing), None);
        // A name length past the payload.
        assert_eq!(parse_info_request(&u32::MAX.to_be_bytes()), None);
    }

    #[test]
    fn meta_requests_parse_and_bound_their_query_count() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&1u32.to_be_bytes());
        payload.extend_from_slice(&15u32.to_be_bytes());
        payload.extend_from_slice(BASE_ALLOCATION.as_bytes());
        assert_eq!(
            parse_meta_request(&payload),
            Some(MetaRequest {
                name: String::new(),
                queries: vec![BASE_ALLOCATION.into()]
            })
        );
        let mut lying = Vec::new();
        lying.extend_from_slice(&0u32.to_be_bytes());
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_request(&lying), None);
        assert!(selects_base_allocation("base:", true));
        assert!(!selects_base_allocation("base:", false));
        assert!(!selects_base_allocation("qemu:dirty-bitmap:x", true));
    }

    #[test]
    fn requests_decode_and_bad_magic_is_refused() {
        let mut bytes = [0u8; 28];
        bytes[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        bytes[4..6].copy_from_slice(&CMD_FLAG_DF.to_be_bytes());
        bytes[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        bytes[8..16].copy_from_slice(&7u64.to_be_bytes());
        bytes[16..24].copy_from_slice(&4096u64.to_be_bytes());
        bytes[24..].copy_from_slice(&512u32.to_be_bytes());
        let request = parse_request(&bytes).unwrap();
        assert_eq!(
            request,
            Request {
                flags: CMD_FLAG_DF,
                kind: CMD_READ,
                cookie: 7,
                offset: 4096,
                length: 512
            }
        );
        bytes[0] ^= 1;
        assert_eq!(parse_request(&bytes), None);
    }

    #[test]
    fn ranges_are_checked_against_the_export_and_the_block_limit() {
        let read = |offset, length, flags| Request {
            flags,
            kind: CMD_READ,
            cookie: 1,
            offset,
            length,
        };
        assert_eq!(check_range(&read(0, 512, 0), 1024, true), Ok(()));
        assert_eq!(check_range(&read(512, 512, 0), 1024, true), Ok(()));
        assert_eq!(check_range(&read(513, 512, 0), 1024, true), Err(EINVAL));
        assert_eq!(check_range(&read(0, 0, 0), 1024, true), Err(EINVAL));
        assert_eq!(check_range(&read(u64::MAX, 1, 0), 1024, true), Err(EINVAL));
        let big = 1 << 40;
        assert_eq!(
            check_range(&read(0, MAX_BLOCK + 1, 0), big, true),
            Err(EINVAL)
        );
        assert_eq!(
            check_range(&read(0, MAX_BLOCK + 1, CMD_FLAG_DF), big, true),
            Err(EOVERFLOW)
        );
        // Block status may ask about any length: the reply describes what it covers.
        assert_eq!(check_range(&read(0, u32::MAX, 0), big, false), Ok(()));
    }

    #[test]
    fn error_and_block_status_chunks_are_final() {
        let error = error_chunk(9, EIO, "bad");
        assert_eq!(&error[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&error[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&error[16..20], &9u32.to_be_bytes());
        assert_eq!(&error[20..24], &EIO.to_be_bytes());
        assert_eq!(&error[26..], b"bad");
        let status = block_status_chunk(9, &[(4096, 0), (8192, STATE_HOLE | STATE_ZERO)]);
        assert_eq!(&status[16..20], &20u32.to_be_bytes());
        assert_eq!(status.len(), 40);
    }
}
