//! A small HTTP/2 client for unary gRPC calls (`--http2 lite`, the default): what a unary call
//! needs of RFC 9113 and RFC 7541, and nothing of a general client.
//!
//! Why: at one request in flight the h2 crate's client path (its connection task, stream
//! bookkeeping, HPACK encoder and frame codec, a wake of the connection task per request) cost
//! three times h2load's user-space instructions per request, and the loadgen's p50 was ~25 %
//! above h2load's on the same server (docs/loadgen.md, "Is the loadgen an honest measuring
//! stick?"). Here a call writes its own frames and the socket's reader delivers the answer
//! straight to it:
//!
//! - **Requests.** A call takes a stream slot (the server's MAX_CONCURRENT_STREAMS, and ours,
//!   [`STREAMS_MAX`]), then appends HEADERS (a per-path HPACK block built once: static-table
//!   indices and literals without indexing or Huffman) and as much DATA as the send windows
//!   allow. A lone call sends from its own task (one `send`); with other calls in flight the
//!   writer task sends, after the tasks of the executor's turn have queued theirs, so that
//!   requests answered by one read go out in one `send`. What the socket does not take is left
//!   to the writer task too; what the windows do not allow waits for WINDOW_UPDATE.
//! - **Answers.** One reader task per connection reads into a reusable buffer (no zero-filling
//!   per read), parses frames in place and decodes HPACK (static and dynamic tables, Huffman;
//!   header values are only decoded when they matter: `:status`, `grpc-status`,
//!   `grpc-message`; names are compared in their encoded form), and hands each stream's
//!   outcome to its call, waking it. Control frames (SETTINGS ACK, PING ACK, WINDOW_UPDATE) go
//!   out from the reader.
//! - **Bounds.** Frames up to [`FRAME_BYTES_MAX`], header blocks up to [`HEADER_BLOCK_BYTES_MAX`],
//!   an HPACK table of at most [`HPACK_TABLE_BYTES_MAX`], answers up to `MESSAGE_BYTES_MAX`
//!   (checked by the message decoder as soon as a prefix is in), the unsent backlog up to
//!   [`WRITE_BACKLOG_MAX`]. A peer that breaks the protocol gets GOAWAY and every call on the
//!   connection fails with `CallError::Transport`; nothing from the wire reaches a panic.
//! - **Cancellation.** A call whose future is dropped (its timeout) frees its slot and resets
//!   its stream (RST_STREAM CANCEL); frames that still come for it are ignored.
//!
//! Single-threaded (Rc, RefCell, Cell): a connection lives on one client thread's executor.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable))]

use crate::grpc::{answer_framing, CallError, Turnaround, MESSAGE_BYTES_MAX};
use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use seqcore::grpc::{StreamDecoder, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Largest frame we accept (our SETTINGS_MAX_FRAME_SIZE): big tensors in few frames.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Largest header block (HEADERS + CONTINUATION) we accept.
pub const HEADER_BLOCK_BYTES_MAX: usize = 64 << 10;
/// Most streams in flight on one connection, whatever the server allows.
pub const STREAMS_MAX: usize = 1 << 14;
/// Largest HPACK dynamic table we tolerate. We advertise SETTINGS_HEADER_TABLE_SIZE = 0, so a
/// compliant server's encoder adds no entries; until it has seen that setting the protocol's
/// default (4096) applies, so that much is accepted rather than failing.
pub const HPACK_TABLE_BYTES_MAX: usize = 4096;
/// Most bytes queued for a socket that does not take them (e.g. a server that stopped reading
/// while it sends PINGs): past it the connection fails.
pub const WRITE_BACKLOG_MAX: usize = 64 << 20;
const READ_BUFFER_BYTES: usize = 64 << 10;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;
const WINDOW_MAX: i64 = (1 << 31) - 1;
const STREAM_ID_MAX: u32 = (1 << 31) - 1;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
// Error codes (§7).
const PROTOCOL_ERROR: u32 = 1;
const FLOW_CONTROL_ERROR: u32 = 3;
const FRAME_SIZE_ERROR: u32 = 6;
const CANCEL: u32 = 8;
const COMPRESSION_ERROR: u32 = 9;
// Settings (§6.5.2).
const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;
const SETTINGS_ENABLE_PUSH: u16 = 2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
/// Streams opened before the server's first SETTINGS say its limit.
const STREAMS_BEFORE_SETTINGS: usize = 100;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 5;

fn error_name(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("unknown error code")
}

// ---------------------------------------------------------------------------------------------
// Frames

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_head(b: &[u8; FRAME_HEAD]) -> FrameHead {
    FrameHead {
        len: (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize,
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & STREAM_ID_MAX,
    }
}

fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&(stream & STREAM_ID_MAX).to_be_bytes());
}

fn put_u32_frame(out: &mut Vec<u8>, kind: u8, stream: u32, value: u32) {
    put_head(out, 4, kind, 0, stream);
    out.extend_from_slice(&value.to_be_bytes());
}

/// The client preface: the magic, our SETTINGS, and the connection window raised to ours.
fn preface(out: &mut Vec<u8>) {
    out.extend_from_slice(PREFACE);
    let settings: [(u16, u32); 4] = [
        (SETTINGS_HEADER_TABLE_SIZE, 0),
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES),
        (SETTINGS_MAX_FRAME_SIZE, FRAME_BYTES_MAX as u32),
    ];
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, v) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
    let raise = i64::from(CONNECTION_WINDOW_BYTES) - DEFAULT_WINDOW;
    if raise > 0 {
        put_u32_frame(out, WINDOW_UPDATE, 0, raise as u32);
    }
}

/// A frame's payload without its padding (and, for HEADERS, the priority fields).
fn unpad<'p>(head: &FrameHead, payload: &'p [u8]) -> Result<&'p [u8], ConnError> {
    let mut p = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or_else(|| ConnError::protocol("padded frame without a pad length"))?;
        pad = n as usize;
        p = rest;
    }
    if head.kind == HEADERS && head.flags & PRIORITY_FLAG != 0 {
        p = p.get(5..).ok_or_else(|| ConnError::protocol("HEADERS too short for its priority"))?;
    }
    if pad > p.len() {
        return Err(ConnError::protocol("padding longer than the frame"));
    }
    Ok(&p[..p.len() - pad])
}

/// The server broke the protocol: the connection goes (GOAWAY with `code`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnError {
    code: u32,
    message: String,
}

impl ConnError {
    fn new(code: u32, message: impl Into<String>) -> ConnError {
        ConnError { code, message: message.into() }
    }
    fn protocol(message: impl Into<String>) -> ConnError {
        ConnError::new(PROTOCOL_ERROR, message)
    }
}

// ---------------------------------------------------------------------------------------------
// HPACK (RFC 7541)

/// The static table (Appendix A), 1-based in the protocol.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];
const STATIC_PATH: usize = 4;
const STATIC_AUTHORITY: usize = 1;
const STATIC_CONTENT_TYPE: usize = 31;

/// Code lengths of the Huffman code (Appendix B, column "len"), symbols 0..=256 (256 is EOS).
/// The code is canonical (codes of one length are consecutive, in symbol order, and shorter
/// codes come first), so the lengths determine the codes; [`Huffman::new`] rebuilds them.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];
const HUFFMAN_LEN_MAX: usize = 30;
const EOS: u16 = 256;

/// The canonical Huffman code rebuilt from [`HUFFMAN_LENGTHS`].
struct Huffman {
    /// Per symbol: its code, right-aligned.
    codes: [u32; 257],
    /// Per length: the first code of that length, how many codes have it, and where its
    /// symbols start in `symbols`.
    first: [u32; HUFFMAN_LEN_MAX + 1],
    count: [u16; HUFFMAN_LEN_MAX + 1],
    offset: [u16; HUFFMAN_LEN_MAX + 1],
    /// Symbols ordered by (length, symbol).
    symbols: [u16; 257],
}

impl Huffman {
    fn new() -> Huffman {
        let mut h = Huffman {
            codes: [0; 257],
            first: [0; HUFFMAN_LEN_MAX + 1],
            count: [0; HUFFMAN_LEN_MAX + 1],
            offset: [0; HUFFMAN_LEN_MAX + 1],
            symbols: [0; 257],
        };
        for &l in &HUFFMAN_LENGTHS {
            h.count[l as usize] += 1;
        }
        let (mut code, mut at) = (0u32, 0u16);
        for len in 1..=HUFFMAN_LEN_MAX {
            h.first[len] = code;
            h.offset[len] = at;
            code = (code + h.count[len] as u32) << 1;
            at += h.count[len];
        }
        let mut next = h.first;
        let mut slot = h.offset;
        for (sym, &l) in HUFFMAN_LENGTHS.iter().enumerate() {
            let l = l as usize;
            h.codes[sym] = next[l];
            next[l] += 1;
            h.symbols[slot[l] as usize] = sym as u16;
            slot[l] += 1;
        }
        h
    }

    fn encode(&self, s: &[u8], out: &mut Vec<u8>) {
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in s {
            let len = HUFFMAN_LENGTHS[b as usize] as u32;
            acc = acc << len | self.codes[b as usize] as u64;
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
            acc &= (1u64 << bits) - 1;
        }
        if bits > 0 {
            // Padded with the most significant bits of EOS (all ones).
            out.push((acc << (8 - bits) | (0xff >> bits)) as u8);
        }
    }

    fn encoded(&self, s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(s, &mut v);
        v
    }

    fn decode(&self, src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let (mut code, mut len) = (0u32, 0usize);
        for &byte in src {
            for shift in (0..8).rev() {
                code = code << 1 | (byte >> shift & 1) as u32;
                len += 1;
                if len > HUFFMAN_LEN_MAX {
                    return Err("bad Huffman code".into());
                }
                let i = code.wrapping_sub(self.first[len]);
                if i < self.count[len] as u32 {
                    let sym = self.symbols[(self.offset[len] as u32 + i) as usize];
                    if sym == EOS {
                        return Err("EOS inside a Huffman string".into());
                    }
                    out.push(sym as u8);
                    code = 0;
                    len = 0;
                }
            }
        }
        // Padding: fewer than 8 bits, all ones (a prefix of EOS).
        if len > 7 || code != (1u32 << len) - 1 {
            return Err("bad Huffman padding".into());
        }
        Ok(())
    }
}

thread_local! {
    static HUFFMAN: Rc<Huffman> = Rc::new(Huffman::new());
}

fn huffman() -> Rc<Huffman> {
    HUFFMAN.with(Rc::clone)
}

/// An HPACK integer with an `n`-bit prefix (§5.1); `flags` are the first byte's other bits.
fn put_int(out: &mut Vec<u8>, n: u32, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Reads an integer with an `n`-bit prefix from `b` at `*at`.
fn get_int(b: &[u8], at: &mut usize, n: u32) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = *b.get(*at).ok_or("truncated integer")?;
    *at += 1;
    let mut v = first as usize & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at).ok_or("truncated integer")?;
        *at += 1;
        v += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

/// A string literal without Huffman (our requests never use it: it saves the server nothing
/// on a loopback connection and costs us encoding).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// The HPACK block of a unary gRPC request: `:method POST` and `:scheme http` indexed, `:path`,
/// `:authority` and `content-type` as literals with indexed names, `te: trailers` as a literal,
/// all "without indexing", so it is the same bytes for every call to `path`.
pub fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + authority.len() + path.len());
    b.push(0x80 | 3); // :method POST
    b.push(0x80 | 6); // :scheme http
    put_int(&mut b, 4, 0, STATIC_PATH);
    put_str(&mut b, path.as_bytes());
    put_int(&mut b, 4, 0, STATIC_AUTHORITY);
    put_str(&mut b, authority.as_bytes());
    put_int(&mut b, 4, 0, STATIC_CONTENT_TYPE);
    put_str(&mut b, b"application/grpc");
    b.push(0);
    put_str(&mut b, b"te");
    put_str(&mut b, b"trailers");
    b
}

/// A header name or value as it came: raw, or Huffman-coded (decoded only when needed).
#[derive(Clone, Copy, Debug)]
struct Lit<'a> {
    bytes: &'a [u8],
    huffman: bool,
}

impl<'a> Lit<'a> {
    fn raw(bytes: &'a [u8]) -> Lit<'a> {
        Lit { bytes, huffman: false }
    }

    fn decode(&self, h: &Huffman) -> Result<Cow<'a, [u8]>, String> {
        if !self.huffman || self.bytes.is_empty() {
            return Ok(Cow::Borrowed(self.bytes));
        }
        let mut v = Vec::with_capacity(self.bytes.len() * 8 / 5 + 1);
        h.decode(self.bytes, &mut v)?;
        Ok(Cow::Owned(v))
    }
}

/// A name (or value) we look for, in both of its encodings: comparing the encoded bytes spares
/// decoding every name (a string has exactly one valid Huffman encoding).
struct Name {
    raw: &'static [u8],
    huffman: Vec<u8>,
}

impl Name {
    fn new(h: &Huffman, raw: &'static [u8]) -> Name {
        Name { raw, huffman: h.encoded(raw) }
    }

    fn is(&self, l: &Lit) -> bool {
        l.bytes == if l.huffman { &self.huffman[..] } else { self.raw }
    }
}

/// The HPACK decoder of one connection.
struct Decoder {
    huffman: Rc<Huffman>,
    /// Newest first; entries decoded.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
    status: Name,
    grpc_status: Name,
    grpc_message: Name,
    /// The values of every answer, recognised without decoding them.
    ok_200: Name,
    ok_0: Name,
}

impl Decoder {
    fn new() -> Decoder {
        let huffman = huffman();
        Decoder {
            status: Name::new(&huffman, b":status"),
            grpc_status: Name::new(&huffman, b"grpc-status"),
            grpc_message: Name::new(&huffman, b"grpc-message"),
            ok_200: Name::new(&huffman, b"200"),
            ok_0: Name::new(&huffman, b"0"),
            huffman,
            table: VecDeque::new(),
            size: 0,
            // Until the server's encoder signals our SETTINGS_HEADER_TABLE_SIZE (0) with a
            // size update, the protocol's initial 4096 applies.
            max: HPACK_TABLE_BYTES_MAX,
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => self.size = 0,
            }
        }
    }

    fn entry(&self, index: usize) -> Result<(Lit<'_>, Lit<'_>), String> {
        if index == 0 {
            return Err("header index 0".into());
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok((Lit::raw(n.as_bytes()), Lit::raw(v.as_bytes())));
        }
        match self.table.get(index - 1 - STATIC_TABLE.len()) {
            Some((n, v)) => Ok((Lit::raw(n), Lit::raw(v))),
            None => Err(format!("header index {index} beyond the tables")),
        }
    }

    fn literal<'b>(b: &'b [u8], at: &mut usize) -> Result<Lit<'b>, String> {
        let huffman = b.get(*at).is_some_and(|&x| x & 0x80 != 0);
        let len = get_int(b, at, 7)?;
        let end = at.checked_add(len).filter(|&e| e <= b.len()).ok_or("string literal beyond the block")?;
        let bytes = &b[*at..end];
        *at = end;
        Ok(Lit { bytes, huffman })
    }

    /// Decodes a whole header block, handing every field to `field`. An error is a
    /// COMPRESSION_ERROR: the table may be out of step with the server's from then on.
    fn decode(&mut self, b: &[u8], field: &mut dyn FnMut(&Decoder, Lit, Lit)) -> Result<(), String> {
        let mut at = 0;
        let mut fields = 0usize;
        while let Some(&first) = b.get(at) {
            if first & 0x80 != 0 {
                // Indexed field.
                let i = get_int(b, &mut at, 7)?;
                let (n, v) = self.entry(i)?;
                field(self, n, v);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update: only at the start of a block.
                if fields > 0 {
                    return Err("table size update after a header field".into());
                }
                let max = get_int(b, &mut at, 5)?;
                if max > HPACK_TABLE_BYTES_MAX {
                    return Err(format!("table size update to {max} bytes (at most {HPACK_TABLE_BYTES_MAX})"));
                }
                self.max = max;
                self.evict();
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = first & 0xc0 == 0x40;
                let i = get_int(b, &mut at, if indexing { 6 } else { 4 })?;
                let name = if i == 0 { Self::literal(b, &mut at)? } else { self.entry(i)?.0 };
                let value = Self::literal(b, &mut at)?;
                field(self, name, value);
                if indexing {
                    // Decoded only if it can fit: a table of 0 (what we ask for) takes nothing.
                    let entry = if self.max >= 32 {
                        let h = &self.huffman;
                        Some((name.decode(h)?.into_owned(), value.decode(h)?.into_owned()))
                    } else {
                        None
                    };
                    let size = entry.as_ref().map_or(usize::MAX, |(n, v)| n.len() + v.len() + 32);
                    if let (Some((n, v)), true) = (entry, size <= self.max) {
                        self.size += size;
                        self.table.push_front((n, v));
                        self.evict();
                    } else {
                        // An entry larger than the table empties it (§4.4).
                        self.table.clear();
                        self.size = 0;
                    }
                }
            }
            fields += 1;
        }
        Ok(())
    }
}

/// What a response's header block says that matters to a gRPC call.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    /// `:status`, as it was sent.
    status: Option<Cow<'static, str>>,
    grpc_status: Option<i32>,
    grpc_message: Option<String>,
    /// A value we needed could not be decoded.
    bad: Option<String>,
}

impl Head {
    fn take(&mut self, d: &Decoder, name: Lit, value: Lit) {
        let h = &d.huffman;
        let decoded = |v: &Lit, bad: &mut Option<String>| match v.decode(h) {
            Ok(v) => Some(v.into_owned()),
            Err(e) => {
                *bad = Some(e);
                None
            }
        };
        if d.status.is(&name) {
            self.status = if d.ok_200.is(&value) {
                Some(Cow::Borrowed("200"))
            } else {
                decoded(&value, &mut self.bad).map(|v| Cow::Owned(String::from_utf8_lossy(&v).into_owned()))
            };
        } else if d.grpc_status.is(&name) {
            if d.ok_0.is(&value) {
                self.grpc_status = Some(0);
            } else if let Some(v) = decoded(&value, &mut self.bad) {
                // As grpc.rs reads it: a code that does not parse is UNKNOWN.
                let code = std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(2);
                self.grpc_status = Some(code);
            }
        } else if d.grpc_message.is(&name) {
            if let Some(v) = decoded(&value, &mut self.bad) {
                self.grpc_message = Some(seqcore::grpc::percent_decode(&v));
            }
        }
    }

    /// The call's error if grpc-status says one.
    fn error(&mut self) -> Option<CallError> {
        match self.grpc_status {
            Some(code) if code != 0 => {
                Some(CallError::Status { code, message: self.grpc_message.take().unwrap_or_default() })
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection state (no I/O: the reader feeds it frames, calls take their outcomes)

/// Stream ids are odd and increasing: multiplying spreads them over the hash's high bits.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Stream {
    waker: Option<Waker>,
    send_window: i64,
    /// Received DATA not yet given back with WINDOW_UPDATE.
    recv_unacked: u32,
    headers_seen: bool,
    /// grpc-status came with the response headers (an OK status there: the answer may still
    /// end without trailers).
    status_in_headers: bool,
    messages: StreamDecoder,
    message: Option<Bytes>,
    outcome: Option<Result<Bytes, CallError>>,
    end_sent: bool,
    /// END_STREAM or RST_STREAM came from the server.
    remote_closed: bool,
}

impl Stream {
    fn new(send_window: i64) -> Stream {
        Stream {
            waker: None,
            send_window,
            recv_unacked: 0,
            headers_seen: false,
            status_in_headers: false,
            messages: StreamDecoder::new(MESSAGE_BYTES_MAX),
            message: None,
            outcome: None,
            end_sent: false,
            remote_closed: false,
        }
    }

    fn settle(&mut self, r: Result<Bytes, CallError>, wakes: &mut Vec<Waker>) {
        if self.outcome.is_none() {
            self.outcome = Some(r);
            wakes.extend(self.waker.take());
        }
    }

    /// The answer is complete (END_STREAM): the message, or why there is none.
    fn finish(&mut self, status_seen: bool) -> Result<Bytes, CallError> {
        if !status_seen && !self.status_in_headers {
            return Err(CallError::Protocol("response without grpc-status".into()));
        }
        self.messages.finish().map_err(answer_framing)?;
        self.message.take().ok_or_else(|| CallError::Protocol("response has no message".into()))
    }
}

struct State {
    wbuf: Vec<u8>,
    wpos: usize,
    /// The writer task owns the socket's send side until it has written everything (it took
    /// over because the socket was full).
    writer_active: bool,
    writer_waker: Option<Waker>,
    reader_waker: Option<Waker>,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    next_id: u32,
    /// The server's settings.
    max_frame: usize,
    max_concurrent: usize,
    /// The server's first SETTINGS frame has arrived (its limits are known).
    settings_seen: bool,
    initial_window: i64,
    /// The connection's send window.
    send_window: i64,
    /// Received DATA on the connection not yet given back.
    recv_unacked: u32,
    /// Calls waiting for a stream slot (or for the backlog to drain), first come first served,
    /// each under a ticket; every ticket below `popped_upto` has been woken. A freed slot wakes
    /// one waiter, not all of them: with 10⁶ calls queued on 4 connections (`bench_matrix`'s
    /// P3) waking every waiter per freed slot, and scanning the queue for duplicates per
    /// registration, was quadratic.
    slot_waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    popped_upto: u64,
    /// Streams waiting for send window.
    send_blocked: Vec<u32>,
    /// Set once the connection is unusable: new and pending calls fail with it.
    failed: Option<String>,
    /// GOAWAY's last stream id: no new streams.
    goaway: Option<u32>,
    /// The channel let go of the connection: it closes once its last call is done.
    retired: bool,
    /// A header block split over CONTINUATION frames: its stream, END_STREAM, the fragments.
    continuation: Option<(u32, bool)>,
    hblock: Vec<u8>,
    hpack: Decoder,
}

impl State {
    fn new() -> State {
        let mut wbuf = Vec::with_capacity(16 << 10);
        preface(&mut wbuf);
        State {
            wbuf,
            wpos: 0,
            writer_active: false,
            writer_waker: None,
            reader_waker: None,
            streams: HashMap::default(),
            next_id: 1,
            max_frame: DEFAULT_MAX_FRAME,
            // Until the server's first SETTINGS arrive, at most the 100 streams RFC 9113 (§6.5.2)
            // recommends every server allow: opening thousands before the server could say its
            // limit got them refused, and the resets made the server close the connection.
            max_concurrent: STREAMS_BEFORE_SETTINGS,
            settings_seen: false,
            initial_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            recv_unacked: 0,
            slot_waiters: VecDeque::new(),
            next_ticket: 0,
            popped_upto: 0,
            send_blocked: Vec::new(),
            failed: None,
            goaway: None,
            retired: false,
            continuation: None,
            hblock: Vec::new(),
            hpack: Decoder::new(),
        }
    }

    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn consume(&mut self, n: usize) {
        self.wpos += n;
        if self.wpos >= self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
    }

    fn accepts_streams(&self) -> bool {
        self.failed.is_none() && self.goaway.is_none() && !self.retired && self.next_id <= STREAM_ID_MAX
    }

    /// The reader and writer tasks end: nothing can happen on the connection any more.
    fn closing(&self) -> bool {
        self.failed.is_some() || (self.retired && self.streams.is_empty())
    }

    fn wake_tasks(&mut self, wakes: &mut Vec<Waker>) {
        wakes.extend(self.reader_waker.take());
        wakes.extend(self.writer_waker.take());
    }

    /// Whether a call may open a stream now.
    fn has_slot(&self) -> bool {
        self.streams.len() < self.max_concurrent.min(STREAMS_MAX) && self.pending() <= WRITE_BACKLOG_MAX / 2
    }

    /// Wakes as many waiting calls as there are free slots (a woken call that no longer wants
    /// its slot, e.g. one given up at its timeout, passes the wake on when dropped).
    fn wake_slots(&mut self, wakes: &mut Vec<Waker>) {
        if self.pending() > WRITE_BACKLOG_MAX / 2 {
            return;
        }
        let free = self.max_concurrent.min(STREAMS_MAX).saturating_sub(self.streams.len());
        for _ in 0..free.min(self.slot_waiters.len()) {
            if let Some((t, w)) = self.slot_waiters.pop_front() {
                self.popped_upto = t + 1;
                wakes.push(w);
            }
        }
    }

    /// Wakes every waiting call (the connection failed or takes no new streams).
    fn wake_all_slots(&mut self, wakes: &mut Vec<Waker>) {
        wakes.extend(self.slot_waiters.drain(..).map(|(_, w)| w));
        self.popped_upto = self.next_ticket;
    }

    /// Queues a call for a slot, unless its ticket is still queued; returns its ticket.
    fn wait_slot(&mut self, ticket: Option<u64>, waker: &Waker) -> u64 {
        match ticket {
            Some(t) if t >= self.popped_upto => t,
            _ => {
                let t = self.next_ticket;
                self.next_ticket += 1;
                self.slot_waiters.push_back((t, waker.clone()));
                t
            }
        }
    }

    fn wake_senders(&mut self, wakes: &mut Vec<Waker>) {
        for id in self.send_blocked.drain(..) {
            if let Some(w) = self.streams.get_mut(&id).and_then(|s| s.waker.take()) {
                wakes.push(w);
            }
        }
    }

    /// The connection is gone: every call still waiting fails with `message`; `goaway` tells
    /// the server why, if it broke the protocol.
    fn fail(&mut self, message: String, goaway: Option<u32>, wakes: &mut Vec<Waker>) {
        if self.failed.is_some() {
            return;
        }
        if let Some(code) = goaway {
            put_head(&mut self.wbuf, 8, GOAWAY, 0, 0);
            self.wbuf.extend_from_slice(&0u32.to_be_bytes());
            self.wbuf.extend_from_slice(&code.to_be_bytes());
        }
        for s in self.streams.values_mut() {
            s.settle(Err(CallError::Transport(message.clone())), wakes);
        }
        self.failed = Some(message);
        self.wake_all_slots(wakes);
        self.send_blocked.clear();
        self.wake_tasks(wakes);
    }

    /// Opens stream `id` with HEADERS and as much of `framed` as the windows allow; returns
    /// how much of it went into frames.
    fn open_stream(&mut self, block: &[u8], framed: &[u8]) -> Result<(u32, usize), CallError> {
        if block.len() > self.max_frame {
            return Err(CallError::Protocol(format!(
                "request header block of {} bytes exceeds the server's frame size {}",
                block.len(),
                self.max_frame
            )));
        }
        let id = self.next_id;
        self.next_id += 2;
        let mut s = Stream::new(self.initial_window);
        let flags = END_HEADERS | if framed.is_empty() { END_STREAM } else { 0 };
        put_head(&mut self.wbuf, block.len(), HEADERS, flags, id);
        self.wbuf.extend_from_slice(block);
        s.end_sent = framed.is_empty();
        let sent = self.put_data(&mut s, id, framed, 0);
        self.streams.insert(id, s);
        Ok((id, sent))
    }

    /// Appends DATA frames for `framed[sent..]` as far as the windows and the frame size allow.
    fn put_data(&mut self, s: &mut Stream, id: u32, framed: &[u8], mut sent: usize) -> usize {
        while sent < framed.len() {
            let n = (framed.len() - sent).min(self.max_frame) as i64;
            let n = n.min(self.send_window).min(s.send_window);
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let end = sent + n == framed.len();
            put_head(&mut self.wbuf, n, DATA, if end { END_STREAM } else { 0 }, id);
            self.wbuf.extend_from_slice(&framed[sent..sent + n]);
            self.send_window -= n as i64;
            s.send_window -= n as i64;
            sent += n;
            s.end_sent = end;
        }
        sent
    }

    fn reset(&mut self, id: u32, code: u32) {
        put_u32_frame(&mut self.wbuf, RST_STREAM, id, code);
    }

    /// Takes a stream out (its call is done or gone): resets it if it is still open.
    fn remove(&mut self, id: u32, wakes: &mut Vec<Waker>) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if (!s.end_sent || !s.remote_closed) && self.failed.is_none() {
            self.reset(id, CANCEL);
        }
        self.wake_slots(wakes);
        if self.retired && self.streams.is_empty() {
            self.wake_tasks(wakes);
        }
        Some(s)
    }

    fn on_frame(&mut self, head: FrameHead, payload: &[u8], wakes: &mut Vec<Waker>) -> Result<(), ConnError> {
        if let Some((id, _)) = self.continuation {
            if head.kind != CONTINUATION || head.stream != id {
                return Err(ConnError::protocol("header block interrupted (CONTINUATION expected)"));
            }
        }
        match head.kind {
            DATA => self.on_data(head, payload, wakes),
            HEADERS => {
                if head.stream == 0 {
                    return Err(ConnError::protocol("HEADERS on stream 0"));
                }
                if head.stream % 2 == 0 {
                    return Err(ConnError::protocol("HEADERS on a server-initiated stream"));
                }
                let block = unpad(&head, payload)?;
                let end_stream = head.flags & END_STREAM != 0;
                if head.flags & END_HEADERS != 0 {
                    return self.on_header_block(head.stream, end_stream, block, wakes);
                }
                if block.len() > HEADER_BLOCK_BYTES_MAX {
                    return Err(ConnError::protocol("header block too large"));
                }
                self.hblock.clear();
                self.hblock.extend_from_slice(block);
                self.continuation = Some((head.stream, end_stream));
                Ok(())
            }
            CONTINUATION => {
                let Some((id, end_stream)) = self.continuation else {
                    return Err(ConnError::protocol("CONTINUATION without HEADERS"));
                };
                if self.hblock.len() + payload.len() > HEADER_BLOCK_BYTES_MAX {
                    return Err(ConnError::protocol(format!("header block over {HEADER_BLOCK_BYTES_MAX} bytes")));
                }
                self.hblock.extend_from_slice(payload);
                if head.flags & END_HEADERS != 0 {
                    self.continuation = None;
                    let block = std::mem::take(&mut self.hblock);
                    let r = self.on_header_block(id, end_stream, &block, wakes);
                    self.hblock = block;
                    self.hblock.clear();
                    return r;
                }
                Ok(())
            }
            PRIORITY => Ok(()),
            RST_STREAM => {
                if head.stream == 0 {
                    return Err(ConnError::protocol("RST_STREAM on stream 0"));
                }
                let code = be_u32(payload).ok_or_else(|| ConnError::new(FRAME_SIZE_ERROR, "RST_STREAM size"))?;
                if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.remote_closed = true;
                    s.end_sent = true; // nothing more may be sent on it
                    let msg = format!("stream reset by the server ({})", error_name(code));
                    s.settle(Err(CallError::Transport(msg)), wakes);
                }
                Ok(())
            }
            SETTINGS => self.on_settings(head, payload, wakes),
            PUSH_PROMISE => Err(ConnError::protocol("PUSH_PROMISE although push is disabled")),
            PING => {
                if head.stream != 0 || payload.len() != 8 {
                    return Err(ConnError::new(FRAME_SIZE_ERROR, "bad PING"));
                }
                if head.flags & ACK == 0 {
                    put_head(&mut self.wbuf, 8, PING, ACK, 0);
                    self.wbuf.extend_from_slice(payload);
                }
                Ok(())
            }
            GOAWAY => {
                let (Some(last), Some(code)) =
                    (be_u32(payload.get(..4).unwrap_or(&[])), payload.get(4..8).and_then(be_u32))
                else {
                    return Err(ConnError::new(FRAME_SIZE_ERROR, "GOAWAY size"));
                };
                let last = last & STREAM_ID_MAX;
                let debug = payload.get(8..).unwrap_or(&[]);
                let debug = String::from_utf8_lossy(&debug[..debug.len().min(200)]);
                self.goaway = Some(self.goaway.map_or(last, |g| g.min(last)));
                for (&id, s) in self.streams.iter_mut() {
                    if id > last {
                        // Not processed: nothing to reset.
                        s.remote_closed = true;
                        s.end_sent = true;
                        let msg =
                            format!("GOAWAY from the server ({}, {debug:?}): stream not processed", error_name(code));
                        s.settle(Err(CallError::Transport(msg)), wakes);
                    }
                }
                self.wake_all_slots(wakes);
                Ok(())
            }
            WINDOW_UPDATE => {
                let inc = be_u32(payload).ok_or_else(|| ConnError::new(FRAME_SIZE_ERROR, "WINDOW_UPDATE size"))?
                    & STREAM_ID_MAX;
                if head.stream == 0 {
                    if inc == 0 {
                        return Err(ConnError::protocol("connection WINDOW_UPDATE of 0"));
                    }
                    self.send_window += inc as i64;
                    if self.send_window > WINDOW_MAX {
                        return Err(ConnError::new(FLOW_CONTROL_ERROR, "connection send window over 2^31-1"));
                    }
                    self.wake_senders(wakes);
                } else if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += inc as i64;
                    if inc == 0 || s.send_window > WINDOW_MAX {
                        let msg = "bad stream WINDOW_UPDATE from the server".to_string();
                        s.settle(Err(CallError::Transport(msg)), wakes);
                        s.remote_closed = true;
                        s.end_sent = true;
                        let code = if inc == 0 { PROTOCOL_ERROR } else { FLOW_CONTROL_ERROR };
                        self.reset(head.stream, code);
                    } else if !s.end_sent {
                        wakes.extend(s.waker.take());
                    }
                }
                Ok(())
            }
            _ => Ok(()), // unknown frame types are ignored (§5.5)
        }
    }

    fn on_settings(&mut self, head: FrameHead, payload: &[u8], wakes: &mut Vec<Waker>) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError::protocol("SETTINGS on a stream"));
        }
        if head.flags & ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(ConnError::new(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"))
            };
        }
        if payload.len() % 6 != 0 {
            return Err(ConnError::new(FRAME_SIZE_ERROR, "SETTINGS size"));
        }
        if !std::mem::replace(&mut self.settings_seen, true) {
            // The server's first SETTINGS: without MAX_CONCURRENT_STREAMS it sets no limit.
            self.max_concurrent = usize::MAX;
        }
        for e in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([e[0], e[1]]);
            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            match id {
                SETTINGS_MAX_CONCURRENT_STREAMS => {
                    self.max_concurrent = v as usize;
                    self.wake_slots(wakes);
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if v as i64 > WINDOW_MAX {
                        return Err(ConnError::new(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1"));
                    }
                    let delta = v as i64 - self.initial_window;
                    self.initial_window = v as i64;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > WINDOW_MAX {
                            return Err(ConnError::new(FLOW_CONTROL_ERROR, "stream send window over 2^31-1"));
                        }
                    }
                    if delta > 0 {
                        for s in self.streams.values_mut().filter(|s| !s.end_sent) {
                            wakes.extend(s.waker.take());
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(ConnError::protocol(format!("SETTINGS_MAX_FRAME_SIZE {v}")));
                    }
                    self.max_frame = v as usize;
                }
                SETTINGS_ENABLE_PUSH if v > 1 => return Err(ConnError::protocol("SETTINGS_ENABLE_PUSH > 1")),
                // HEADER_TABLE_SIZE bounds the server's decoder: we index nothing.
                // MAX_HEADER_LIST_SIZE is advisory; our heads are small. Others are ignored.
                _ => {}
            }
        }
        put_head(&mut self.wbuf, 0, SETTINGS, ACK, 0);
        // The limit may have grown (from the 100 assumed before the first SETTINGS).
        self.wake_slots(wakes);
        Ok(())
    }

    fn on_data(&mut self, head: FrameHead, payload: &[u8], wakes: &mut Vec<Waker>) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError::protocol("DATA on stream 0"));
        }
        let data = unpad(&head, payload)?;
        // Flow control counts the whole payload, padding included.
        let len = payload.len() as u32;
        self.recv_unacked += len;
        if self.recv_unacked > CONNECTION_WINDOW_BYTES {
            return Err(ConnError::new(FLOW_CONTROL_ERROR, "the server overran the connection window"));
        }
        if self.recv_unacked >= CONNECTION_WINDOW_BYTES / 2 {
            put_u32_frame(&mut self.wbuf, WINDOW_UPDATE, 0, self.recv_unacked);
            self.recv_unacked = 0;
        }
        let end_stream = head.flags & END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&head.stream) else { return Ok(()) };
        if end_stream {
            s.remote_closed = true;
        }
        if s.outcome.is_some() {
            return Ok(());
        }
        s.recv_unacked += len;
        if s.recv_unacked > STREAM_WINDOW_BYTES {
            return Err(ConnError::new(FLOW_CONTROL_ERROR, "the server overran a stream window"));
        }
        if !s.headers_seen {
            s.settle(Err(CallError::Protocol("DATA before the response headers".into())), wakes);
            return Ok(());
        }
        s.messages.push(data);
        loop {
            match s.messages.next_message() {
                Err(e) => {
                    s.settle(Err(answer_framing(e)), wakes);
                    return Ok(());
                }
                Ok(None) => break,
                Ok(Some(m)) => {
                    if s.message.replace(m).is_some() {
                        s.settle(Err(CallError::Protocol("more than one message in a unary answer".into())), wakes);
                        return Ok(());
                    }
                }
            }
        }
        if end_stream {
            // No trailers: the status must have come with the headers.
            let r = s.finish(false);
            s.settle(r, wakes);
        } else if s.recv_unacked >= STREAM_WINDOW_BYTES / 2 {
            let n = s.recv_unacked;
            s.recv_unacked = 0;
            put_u32_frame(&mut self.wbuf, WINDOW_UPDATE, head.stream, n);
        }
        Ok(())
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        wakes: &mut Vec<Waker>,
    ) -> Result<(), ConnError> {
        // Decoded whatever the stream: the HPACK table must follow the server's.
        let mut h = Head::default();
        self.hpack
            .decode(block, &mut |d, n, v| h.take(d, n, v))
            .map_err(|e| ConnError::new(COMPRESSION_ERROR, format!("HPACK: {e}")))?;
        let Some(s) = self.streams.get_mut(&id) else { return Ok(()) };
        if end_stream {
            s.remote_closed = true;
        }
        if s.outcome.is_some() {
            return Ok(());
        }
        let r = if let Some(e) = h.bad.take() {
            Some(Err(CallError::Protocol(format!("response header: {e}"))))
        } else if !s.headers_seen {
            s.headers_seen = true;
            if h.status.as_deref() != Some("200") {
                Some(Err(CallError::Protocol(format!("HTTP status {}", h.status.as_deref().unwrap_or("missing")))))
            } else if let Some(e) = h.error() {
                Some(Err(e))
            } else if end_stream {
                // Trailers-only with an OK status: no message can follow.
                Some(s.finish(h.grpc_status.is_some()))
            } else {
                s.status_in_headers = h.grpc_status.is_some();
                None
            }
        } else if !end_stream {
            Some(Err(CallError::Protocol("trailers without END_STREAM".into())))
        } else if let Some(e) = h.error() {
            Some(Err(e))
        } else {
            Some(s.finish(h.grpc_status.is_some()))
        };
        if let Some(r) = r {
            s.settle(r, wakes);
        }
        Ok(())
    }
}

fn be_u32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

// ---------------------------------------------------------------------------------------------
// The connection: socket, reader and writer tasks, calls

/// One HTTP/2 connection for unary calls.
pub struct Connection {
    io: RefCell<TcpStream>,
    st: RefCell<State>,
    /// Ids of calls dropped while the state was borrowed (not expected; handled anyway).
    orphans: RefCell<Vec<u32>>,
    clock: Rc<Turnaround>,
}

/// Connects to `addr`: the TCP connection and the client preface (sent at once; the server's
/// SETTINGS are not awaited, as RFC 9113 §3.4 allows, so that a server that accepts and never
/// answers shows as a call timeout, as with h2).
pub async fn connect(addr: &str, clock: Rc<Turnaround>) -> Result<Rc<Connection>, CallError> {
    let stream = crate::grpc::tcp_connect(addr).await?;
    let conn = Rc::new(Connection {
        io: RefCell::new(stream),
        st: RefCell::new(State::new()),
        orphans: RefCell::new(Vec::new()),
        clock,
    });
    let mut wakes = Vec::new();
    conn.flush(&mut conn.st.borrow_mut(), &mut wakes);
    wakes.drain(..).for_each(Waker::wake);
    glommio::spawn_local(read_loop(conn.clone())).detach();
    glommio::spawn_local(write_loop(conn.clone())).detach();
    let failed = conn.st.borrow().failed.clone();
    match failed {
        Some(e) => Err(CallError::Transport(e)),
        None => Ok(conn),
    }
}

impl Connection {
    /// New calls may go on this connection (not failed, no GOAWAY, stream ids left).
    pub fn usable(&self) -> bool {
        self.st.try_borrow().is_ok_and(|s| s.accepts_streams())
    }

    pub fn clock(&self) -> &Rc<Turnaround> {
        &self.clock
    }

    /// The channel lets go: no new calls; the connection closes after its last one.
    pub fn retire(&self) {
        let mut wakes = Vec::new();
        if let Ok(mut st) = self.st.try_borrow_mut() {
            st.retired = true;
            if st.streams.is_empty() {
                st.wake_tasks(&mut wakes);
            }
        }
        wakes.into_iter().for_each(Waker::wake);
    }

    /// Sends what is queued, from the calling task: `send` right away; if the socket is full,
    /// the writer task takes over (it waits for writability with its own waker, so a call that
    /// is dropped meanwhile leaves nothing behind).
    fn flush(&self, st: &mut State, wakes: &mut Vec<Waker>) {
        if st.writer_active {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        while st.pending() > 0 {
            let r = match self.io.try_borrow_mut() {
                Ok(mut io) => Pin::new(&mut *io).poll_write(&mut cx, &st.wbuf[st.wpos..]),
                Err(_) => Poll::Pending,
            };
            match r {
                Poll::Ready(Ok(n)) if n > 0 => st.consume(n),
                Poll::Ready(Ok(_)) => return st.fail("connection closed while writing".into(), None, wakes),
                Poll::Ready(Err(e)) => return st.fail(format!("write: {e}"), None, wakes),
                Poll::Pending => {
                    st.writer_active = true;
                    wakes.extend(st.writer_waker.take());
                    if st.pending() > WRITE_BACKLOG_MAX {
                        st.fail(
                            format!("the server does not read: over {WRITE_BACKLOG_MAX} bytes unsent"),
                            None,
                            wakes,
                        );
                    }
                    return;
                }
            }
        }
    }

    fn sweep_orphans(&self, st: &mut State, wakes: &mut Vec<Waker>) {
        if let Ok(mut o) = self.orphans.try_borrow_mut() {
            for id in o.drain(..) {
                st.remove(id, wakes);
            }
        }
    }

    /// One unary call: `block` is the request's HPACK block ([`request_block`]), `framed` the
    /// prefixed message.
    pub async fn unary(self: &Rc<Self>, block: &[u8], framed: &[u8]) -> Result<Bytes, CallError> {
        let mut wakes = Vec::new();
        let mut waiting = SlotWait { conn: self, ticket: None };
        let (id, mut sent) = poll_fn(|cx| {
            let Ok(mut st) = self.st.try_borrow_mut() else {
                return Poll::Ready(Err(CallError::Transport("connection state busy".into())));
            };
            let st = &mut *st;
            if !self.orphans.try_borrow().is_ok_and(|o| o.is_empty()) {
                self.sweep_orphans(st, &mut wakes);
            }
            // Refused before a stream is opened: nothing of the call was sent.
            if let Some(e) = &st.failed {
                return Poll::Ready(Err(CallError::NotSent(e.clone())));
            }
            if !st.accepts_streams() {
                return Poll::Ready(Err(CallError::NotSent("the connection takes no new streams".into())));
            }
            // First come, first served: a call woken for a slot takes it; a new call queues
            // behind the calls already waiting (otherwise the calls answered first, which run
            // before the woken ones, would take every freed slot and starve the queue: with
            // 10⁶ sequences, the 512 started first kept all the slots to themselves).
            let woken = waiting.ticket.is_some_and(|t| t < st.popped_upto);
            if !st.has_slot() || (!woken && !st.slot_waiters.is_empty()) {
                waiting.ticket = Some(st.wait_slot(waiting.ticket, cx.waker()));
                return Poll::Pending;
            }
            waiting.ticket = None;
            let r = st.open_stream(block, framed);
            if r.is_ok() {
                self.clock.write();
                if st.streams.len() == 1 {
                    // A lone call: out at once, from this task.
                    self.flush(st, &mut wakes);
                } else if !st.writer_active {
                    // Other calls are in flight: the writer task sends, once the tasks that
                    // run in this turn of the executor (e.g. those just answered by one read)
                    // have queued theirs, all in one `send` (as h2's connection task does).
                    st.writer_active = true;
                    wakes.extend(st.writer_waker.take());
                }
            }
            Poll::Ready(r)
        })
        .await?;
        drop(waiting);
        let guard = Guard { conn: self, id };
        wakes.drain(..).for_each(Waker::wake);
        while sent < framed.len() {
            sent = poll_fn(|cx| self.poll_send(cx, id, framed, sent)).await?;
        }
        let r = poll_fn(|cx| self.poll_outcome(cx, id)).await;
        drop(guard);
        r
    }

    /// Sends more of a request the windows held back.
    fn poll_send(&self, cx: &mut Context<'_>, id: u32, framed: &[u8], sent: usize) -> Poll<Result<usize, CallError>> {
        let mut wakes = Vec::new();
        let r = {
            let Ok(mut st) = self.st.try_borrow_mut() else {
                return Poll::Ready(Err(CallError::Transport("connection state busy".into())));
            };
            let st = &mut *st;
            let Some(mut s) = st.streams.remove(&id) else {
                return Poll::Ready(Err(CallError::Transport("stream lost".into())));
            };
            let r = if s.outcome.is_some() || s.end_sent {
                // Answered (or failed) before the request was all out: stop sending.
                Poll::Ready(Ok(framed.len()))
            } else {
                let now = st.put_data(&mut s, id, framed, sent);
                if now > sent {
                    st.flush_from(self, &mut wakes);
                }
                if now > sent {
                    Poll::Ready(Ok(now))
                } else {
                    s.waker = Some(cx.waker().clone());
                    if !st.send_blocked.contains(&id) {
                        st.send_blocked.push(id);
                    }
                    Poll::Pending
                }
            };
            st.streams.insert(id, s);
            r
        };
        wakes.into_iter().for_each(Waker::wake);
        r
    }

    fn poll_outcome(&self, cx: &mut Context<'_>, id: u32) -> Poll<Result<Bytes, CallError>> {
        let mut wakes = Vec::new();
        let r = {
            let Ok(mut st) = self.st.try_borrow_mut() else {
                return Poll::Ready(Err(CallError::Transport("connection state busy".into())));
            };
            let st = &mut *st;
            match st.streams.get_mut(&id) {
                None => Poll::Ready(Err(CallError::Transport("stream lost".into()))),
                Some(s) if s.outcome.is_some() => {
                    let out = s.outcome.take();
                    st.remove(id, &mut wakes);
                    st.flush_from(self, &mut wakes);
                    Poll::Ready(out.unwrap_or_else(|| Err(CallError::Transport("stream lost".into()))))
                }
                Some(s) => {
                    if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        };
        wakes.into_iter().for_each(Waker::wake);
        r
    }
}

impl State {
    fn flush_from(&mut self, conn: &Connection, wakes: &mut Vec<Waker>) {
        if self.pending() > 0 {
            conn.flush(self, wakes);
        }
    }
}

/// A call waiting for a stream slot. If its future is dropped (a timeout) while queued, it
/// leaves the queue; if it was already woken for a slot it will not take, it wakes the next.
struct SlotWait<'a> {
    conn: &'a Rc<Connection>,
    ticket: Option<u64>,
}

impl Drop for SlotWait<'_> {
    fn drop(&mut self) {
        let Some(t) = self.ticket else { return };
        let mut wakes = Vec::new();
        if let Ok(mut st) = self.conn.st.try_borrow_mut() {
            if t >= st.popped_upto {
                // Tickets are queued in increasing order.
                if let Ok(i) = st.slot_waiters.binary_search_by_key(&t, |(k, _)| *k) {
                    st.slot_waiters.remove(i);
                }
            } else {
                st.wake_slots(&mut wakes);
            }
        }
        wakes.into_iter().for_each(Waker::wake);
    }
}

/// Frees a call's stream however the call ends (its future may be dropped at a timeout).
struct Guard<'a> {
    conn: &'a Rc<Connection>,
    id: u32,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let mut wakes = Vec::new();
        match self.conn.st.try_borrow_mut() {
            Ok(mut st) => {
                if st.remove(self.id, &mut wakes).is_some() {
                    st.flush_from(self.conn, &mut wakes);
                }
            }
            Err(_) => {
                if let Ok(mut o) = self.conn.orphans.try_borrow_mut() {
                    o.push(self.id);
                }
            }
        }
        wakes.into_iter().for_each(Waker::wake);
    }
}

/// Reads and dispatches frames until the connection fails or closes.
async fn read_loop(conn: Rc<Connection>) {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut wakes: Vec<Waker> = Vec::new();
    loop {
        let r = poll_fn(|cx| {
            {
                let Ok(mut st) = conn.st.try_borrow_mut() else { return Poll::Ready(None) };
                if st.closing() {
                    return Poll::Ready(None);
                }
                if !st.reader_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.reader_waker = Some(cx.waker().clone());
                }
            }
            let Ok(mut io) = conn.io.try_borrow_mut() else { return Poll::Pending };
            Pin::new(&mut *io).poll_read(cx, &mut buf[end..]).map(Some)
        })
        .await;
        let Some(r) = r else { break };
        let Ok(mut guard) = conn.st.try_borrow_mut() else { break };
        let st = &mut *guard;
        match r {
            Ok(0) => st.fail("connection closed by the server".into(), None, &mut wakes),
            Err(e) => st.fail(format!("read: {e}"), None, &mut wakes),
            Ok(n) => {
                conn.clock.read();
                end += n;
                // Bytes the frame at `start` needs in all (its head, then its payload).
                let mut need = FRAME_HEAD;
                while let Some(h) = buf[..end].get(start..start + FRAME_HEAD) {
                    let Ok(h) = <&[u8; FRAME_HEAD]>::try_from(h) else { break };
                    let head = parse_head(h);
                    if head.len > FRAME_BYTES_MAX {
                        let msg = format!("frame of {} bytes (at most {FRAME_BYTES_MAX})", head.len);
                        st.fail(format!("protocol error from the server: {msg}"), Some(FRAME_SIZE_ERROR), &mut wakes);
                        break;
                    }
                    need = FRAME_HEAD + head.len;
                    let frame_end = start + need;
                    if frame_end > end {
                        break;
                    }
                    let payload = &buf[start + FRAME_HEAD..frame_end];
                    start = frame_end;
                    need = FRAME_HEAD;
                    if let Err(e) = st.on_frame(head, payload, &mut wakes) {
                        let msg = format!("protocol error from the server: {} ({})", e.message, error_name(e.code));
                        st.fail(msg, Some(e.code), &mut wakes);
                        break;
                    }
                }
                if start == end {
                    start = 0;
                    end = 0;
                } else if start + need > buf.len() {
                    // The partial frame would not fit where it is: move it to the front, and
                    // grow the buffer (once, zero-filled) for a frame larger than it.
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                    if need > buf.len() {
                        buf.resize(need, 0);
                    }
                }
            }
        }
        st.flush_from(&conn, &mut wakes);
        if st.failed.is_some() {
            wakes.extend(st.writer_waker.take());
        }
        drop(guard);
        wakes.drain(..).for_each(Waker::wake);
    }
}

/// Sends what calls could not send at once (the socket was full), then waits for more.
async fn write_loop(conn: Rc<Connection>) {
    let mut wakes: Vec<Waker> = Vec::new();
    poll_fn(|cx| {
        let Ok(mut st) = conn.st.try_borrow_mut() else { return Poll::Ready(()) };
        let st = &mut *st;
        let r = loop {
            if st.pending() == 0 {
                if st.writer_active {
                    st.writer_active = false;
                    st.wake_slots(&mut wakes);
                }
                if st.closing() {
                    break Poll::Ready(());
                }
                if !st.writer_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.writer_waker = Some(cx.waker().clone());
                }
                break Poll::Pending;
            }
            if !st.writer_active {
                // A lone call sends itself; this task sends for concurrent calls and a full socket.
                st.writer_waker = Some(cx.waker().clone());
                break Poll::Pending;
            }
            let r = match conn.io.try_borrow_mut() {
                Ok(mut io) => Pin::new(&mut *io).poll_write(cx, &st.wbuf[st.wpos..]),
                Err(_) => break Poll::Pending,
            };
            match r {
                Poll::Ready(Ok(n)) if n > 0 => st.consume(n),
                Poll::Ready(Ok(_)) => {
                    st.fail("connection closed while writing".into(), None, &mut wakes);
                    break Poll::Ready(());
                }
                Poll::Ready(Err(e)) => {
                    st.fail(format!("write: {e}"), None, &mut wakes);
                    break Poll::Ready(());
                }
                Poll::Pending => break Poll::Pending,
            }
        };
        wakes.drain(..).for_each(Waker::wake);
        r
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn huff_decode(b: &[u8]) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        Huffman::new().decode(b, &mut v).map(|_| v)
    }

    #[test]
    fn integers_as_in_rfc_7541_c1() {
        let mut v = Vec::new();
        put_int(&mut v, 5, 0, 10);
        assert_eq!(v, [0x0a]);
        v.clear();
        put_int(&mut v, 5, 0, 1337);
        assert_eq!(v, [0x1f, 0x9a, 0x0a]);
        assert_eq!(get_int(&v, &mut 0, 5).unwrap(), 1337);
        v.clear();
        put_int(&mut v, 8, 0, 42);
        assert_eq!(v, [42]);
        assert!(get_int(&[0x1f, 0x9a], &mut 0, 5).is_err(), "truncated");
        assert!(get_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut 0, 5).is_err(), "too large");
    }

    #[test]
    fn huffman_code_as_in_rfc_7541() {
        let h = Huffman::new();
        // The rebuilt canonical code is a complete prefix code (Kraft sum exactly 1).
        let kraft: u64 = HUFFMAN_LENGTHS.iter().map(|&l| 1u64 << (30 - l as u32)).sum();
        assert_eq!(kraft, 1 << 30);
        // Appendix B: a few codes.
        assert_eq!((h.codes[0], HUFFMAN_LENGTHS[0]), (0x1ff8, 13));
        assert_eq!((h.codes[b'0' as usize], HUFFMAN_LENGTHS[b'0' as usize]), (0x0, 5));
        assert_eq!((h.codes[b'a' as usize], HUFFMAN_LENGTHS[b'a' as usize]), (0x3, 5));
        assert_eq!((h.codes[256], HUFFMAN_LENGTHS[256]), (0x3fffffff, 30));
        // Appendix C.4 examples.
        for (s, code) in [
            ("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
            ("no-cache", "a8eb10649cbf"),
            ("custom-key", "25a849e95ba97d7f"),
            ("custom-value", "25a849e95bb8e8b4bf"),
        ] {
            assert_eq!(h.encoded(s.as_bytes()), hex(code), "{s}");
            assert_eq!(huff_decode(&hex(code)).unwrap(), s.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huff_decode(&h.encoded(&all)).unwrap(), all);
        // Padding longer than 7 bits, padding that is not ones, EOS inside: errors.
        let mut long_pad = h.encoded(b"a");
        long_pad.push(0xff);
        assert!(huff_decode(&long_pad).is_err());
        assert!(huff_decode(&[0x00]).is_err(), "'0' then three zero bits");
        assert!(huff_decode(&[0xff, 0xff, 0xff, 0xff]).is_err(), "EOS");
    }

    fn decode_block(d: &mut Decoder, b: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        d.decode(b, &mut |d, n, v| {
            let s = |l: Lit| String::from_utf8_lossy(&l.decode(&d.huffman).unwrap_or_default()).into_owned();
            out.push((s(n), s(v)));
        })?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn hpack_blocks_with_huffman_and_a_dynamic_table() {
        // Encoded by another HPACK implementation (Huffman on, incremental indexing into a
        // 4096-byte table): the second block is all references to the dynamic table.
        let mut d = Decoder::new();
        let head =
            pairs(&[(":status", "200"), ("content-type", "application/grpc"), ("grpc-accept-encoding", "identity")]);
        let b1 = hex("885f8b1d75d0620d263d4c4d6564408e9acac8b0c842d6958b510f21aa9b863485a9264faf");
        assert_eq!(decode_block(&mut d, &b1).unwrap(), head);
        assert_eq!(d.table.len(), 2);
        assert_eq!(decode_block(&mut d, &hex("88bfbe")).unwrap(), head);
        let b3 = hex("40889acac8b21234da8f816f40899acac8b5254207317f8fa8ea8808b493dc5083955bccab0bff");
        let mut h = Head::default();
        d.decode(&b3, &mut |d, n, v| h.take(d, n, v)).unwrap();
        assert_eq!(h.error(), Some(CallError::Status { code: 5, message: "no such: café".into() }));
        // A size update to 0 (what we ask for) empties the table; literals are not kept.
        let b4 = hex("208840889acac8b21234da8f8107");
        assert_eq!(decode_block(&mut d, &b4).unwrap(), pairs(&[(":status", "200"), ("grpc-status", "0")]));
        assert!(d.table.is_empty());
        assert!(decode_block(&mut d, &hex("be")).is_err(), "no dynamic entry left");
        // A size update after a field, or above what we tolerate: errors.
        assert!(decode_block(&mut d, &hex("8820")).is_err());
        assert!(decode_block(&mut d, &hex("3f8120")).is_err(), "4128 > 4096");
        assert!(decode_block(&mut d, &hex("80")).is_err(), "index 0");
        assert!(decode_block(&mut d, &hex("0085")).is_err(), "literal beyond the block");
    }

    #[test]
    fn the_request_block_decodes_to_a_grpc_request() {
        let b = request_block("127.0.0.1:9000", "/tensorflow.serving.PredictionService/Predict");
        let mut d = Decoder::new();
        assert_eq!(
            decode_block(&mut d, &b).unwrap(),
            pairs(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/tensorflow.serving.PredictionService/Predict"),
                (":authority", "127.0.0.1:9000"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ])
        );
        assert!(d.table.is_empty(), "nothing indexed");
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> (FrameHead, Vec<u8>) {
        let mut v = Vec::new();
        put_head(&mut v, payload.len(), kind, flags, stream);
        let head = parse_head(v[..9].try_into().unwrap());
        assert_eq!(head, FrameHead { len: payload.len(), kind, flags, stream });
        (head, payload.to_vec())
    }

    fn feed(st: &mut State, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<(), ConnError> {
        let (h, p) = frame(kind, flags, stream, payload);
        st.on_frame(h, &p, &mut Vec::new())
    }

    /// The frames in `b` (after the preface, if there).
    fn frames(b: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
        let mut b = b.strip_prefix(PREFACE).unwrap_or(b);
        let mut out = Vec::new();
        while !b.is_empty() {
            let h = parse_head(b[..9].try_into().unwrap());
            out.push((h, b[9..9 + h.len].to_vec()));
            b = &b[9 + h.len..];
        }
        out
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let h = Huffman::new();
        let mut b = Vec::new();
        for (n, v) in fields {
            b.push(0); // literal without indexing, new name, Huffman strings as h2 sends them
            for s in [n, v] {
                let e = h.encoded(s.as_bytes());
                put_int(&mut b, 7, 0x80, e.len());
                b.extend_from_slice(&e);
            }
        }
        b
    }

    fn outcome(st: &mut State, id: u32) -> Option<Result<Bytes, CallError>> {
        st.streams.get_mut(&id).and_then(|s| s.outcome.take())
    }

    #[test]
    fn preface_settings_and_control_frames() {
        let mut st = State::new();
        let f = frames(&st.wbuf);
        assert!(st.wbuf.starts_with(PREFACE));
        assert_eq!(f[0].0.kind, SETTINGS);
        assert_eq!(f[0].1, hex("000100000000000200000000000400100000000500100000"));
        assert_eq!((f[1].0.kind, be_u32(&f[1].1)), (WINDOW_UPDATE, Some(CONNECTION_WINDOW_BYTES - 65_535)));
        st.wbuf.clear();
        // The server's SETTINGS: a small concurrency, bigger frames, a small initial window.
        let mut s = Vec::new();
        for (id, v) in [(3u16, 2u32), (5, 32_768), (4, 10)] {
            s.extend_from_slice(&id.to_be_bytes());
            s.extend_from_slice(&v.to_be_bytes());
        }
        feed(&mut st, SETTINGS, 0, 0, &s).unwrap();
        assert_eq!((st.max_concurrent, st.max_frame, st.initial_window), (2, 32_768, 10));
        assert_eq!(frames(&st.wbuf)[0].0, FrameHead { len: 0, kind: SETTINGS, flags: ACK, stream: 0 });
        st.wbuf.clear();
        feed(&mut st, PING, 0, 0, b"12345678").unwrap();
        let f = frames(&st.wbuf);
        assert_eq!((f[0].0.kind, f[0].0.flags, &f[0].1[..]), (PING, ACK, &b"12345678"[..]));
        // Errors that end the connection.
        assert!(feed(&mut st, SETTINGS, 0, 0, &[0; 5]).is_err());
        assert!(feed(&mut st, SETTINGS, 0, 0, &hex("000500000010")).is_err(), "max frame 16");
        assert!(feed(&mut st, PING, 0, 0, b"1234").is_err());
        assert!(feed(&mut st, PUSH_PROMISE, 0, 1, &[0; 4]).is_err());
        assert!(feed(&mut st, WINDOW_UPDATE, 0, 0, &[0; 4]).is_err());
        assert!(feed(&mut st, WINDOW_UPDATE, 0, 0, &[0x7f, 0xff, 0xff, 0xff]).is_err(), "window over 2^31-1");
        assert!(feed(&mut st, CONTINUATION, END_HEADERS, 1, &[]).is_err());
        feed(&mut st, 0xee, 0, 0, b"unknown types are ignored").unwrap();
    }

    #[test]
    fn data_is_split_by_windows_and_frame_size() {
        let mut st = State::new();
        st.wbuf.clear();
        st.send_window = 40_000;
        let framed = vec![7u8; 100_000];
        let (id, sent) = st.open_stream(b"\x83", &framed).unwrap();
        assert_eq!((id, sent), (1, 40_000), "connection window");
        let f = frames(&st.wbuf);
        assert_eq!((f[0].0.kind, f[0].0.flags), (HEADERS, END_HEADERS));
        let data: Vec<usize> = f[1..].iter().map(|(h, _)| h.len).collect();
        assert_eq!(data, [16_384, 16_384, 7_232], "frames of the default maximum size");
        assert!(f[1..].iter().all(|(h, _)| h.flags == 0));
        st.wbuf.clear();
        // The stream window (65535) is the limit now.
        feed(&mut st, WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes()).unwrap();
        let mut s = st.streams.remove(&id).unwrap();
        let sent = st.put_data(&mut s, id, &framed, sent);
        assert_eq!(sent, 65_535);
        st.streams.insert(id, s);
        st.wbuf.clear();
        feed(&mut st, WINDOW_UPDATE, 0, id, &50_000u32.to_be_bytes()).unwrap();
        let mut s = st.streams.remove(&id).unwrap();
        assert_eq!(st.put_data(&mut s, id, &framed, sent), 100_000);
        assert!(s.end_sent);
        assert_eq!(frames(&st.wbuf).last().unwrap().0.flags, END_STREAM);
        // A smaller SETTINGS_INITIAL_WINDOW_SIZE can make a window negative.
        st.streams.insert(id, s);
        feed(&mut st, SETTINGS, 0, 0, &hex("000400000000")).unwrap();
        assert_eq!(st.streams[&id].send_window, 50_000 - 65_535 - 34_465);
    }

    fn open(st: &mut State) -> u32 {
        st.open_stream(b"\x83", b"\0\0\0\0\x01x").unwrap().0
    }

    #[test]
    fn answers_statuses_and_their_errors() {
        let mut st = State::new();
        let ok = block(&[(":status", "200"), ("content-type", "application/grpc")]);
        let trailers = block(&[("grpc-status", "0")]);
        // A message and OK trailers; padding on DATA.
        let id = open(&mut st);
        feed(&mut st, HEADERS, END_HEADERS, id, &ok).unwrap();
        feed(&mut st, DATA, PADDED, id, b"\x02\0\0\0\0\x02hi\0\0").unwrap();
        assert!(outcome(&mut st, id).is_none());
        feed(&mut st, HEADERS, END_HEADERS | END_STREAM, id, &trailers).unwrap();
        assert_eq!(outcome(&mut st, id).unwrap().unwrap(), &b"hi"[..]);
        // Trailers-only with an error, the message percent-decoded.
        let id = open(&mut st);
        let err = block(&[(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no%20model")]);
        feed(&mut st, HEADERS, END_HEADERS | END_STREAM, id, &err).unwrap();
        assert_eq!(outcome(&mut st, id).unwrap(), Err(CallError::Status { code: 5, message: "no model".into() }));
        // A header block over CONTINUATION frames.
        let id = open(&mut st);
        let (a, b) = err.split_at(7);
        feed(&mut st, HEADERS, END_STREAM, id, a).unwrap();
        assert!(feed(&mut st, PING, 0, 0, b"12345678").is_err(), "nothing between the fragments");
        feed(&mut st, CONTINUATION, END_HEADERS, id, b).unwrap();
        assert!(matches!(outcome(&mut st, id), Some(Err(CallError::Status { code: 5, .. }))));
        // Not 200; two messages; no grpc-status; no message; a message cut short.
        let cases: [(&[u8], &[u8], &str); 5] = [
            (&[], &[], "HTTP status 503"),
            (b"\0\0\0\0\x01a\0\0\0\0\x01b", &trailers, "more than one message"),
            (b"\0\0\0\0\x01a", &block(&[("x", "y")]), "without grpc-status"),
            (&[], &trailers, "has no message"),
            (b"\0\0\0\0\x05abc", &trailers, "answer framing"),
        ];
        for (i, (data, trailers, want)) in cases.iter().enumerate() {
            let id = open(&mut st);
            let status = if i == 0 { "503" } else { "200" };
            feed(&mut st, HEADERS, END_HEADERS, id, &block(&[(":status", status)])).unwrap();
            if !data.is_empty() {
                feed(&mut st, DATA, 0, id, data).unwrap();
            }
            if outcome_is_none(&st, id) {
                feed(&mut st, HEADERS, END_HEADERS | END_STREAM, id, trailers).unwrap();
            }
            let got = outcome(&mut st, id).unwrap().unwrap_err().to_string();
            assert!(got.contains(want), "case {i}: {got}");
        }
        // RST_STREAM and GOAWAY fail the affected calls.
        let (a, b, c) = (open(&mut st), open(&mut st), open(&mut st));
        feed(&mut st, RST_STREAM, 0, a, &CANCEL.to_be_bytes()).unwrap();
        assert!(matches!(outcome(&mut st, a), Some(Err(CallError::Transport(m))) if m.contains("CANCEL")));
        let mut g = b.to_be_bytes().to_vec();
        g.extend_from_slice(&0u32.to_be_bytes());
        feed(&mut st, GOAWAY, 0, 0, &g).unwrap();
        assert!(outcome(&mut st, b).is_none(), "at or below last-stream-id: carries on");
        assert!(matches!(outcome(&mut st, c), Some(Err(CallError::Transport(m))) if m.contains("GOAWAY")));
        assert!(!st.accepts_streams());
    }

    fn outcome_is_none(st: &State, id: u32) -> bool {
        st.streams.get(&id).is_some_and(|s| s.outcome.is_none())
    }

    #[test]
    fn windows_are_given_back_at_half() {
        let mut st = State::new();
        let id = open(&mut st);
        feed(&mut st, HEADERS, END_HEADERS, id, &block(&[(":status", "200")])).unwrap();
        st.wbuf.clear();
        let mut prefix = vec![0, 0, 0x20, 0, 0]; // one 2 MiB message
        prefix.extend_from_slice(&[1; 16_379]);
        feed(&mut st, DATA, 0, id, &prefix).unwrap();
        let chunk = vec![1u8; 16_384];
        for _ in 0..31 {
            feed(&mut st, DATA, 0, id, &chunk).unwrap();
        }
        let f = frames(&st.wbuf);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].0.kind, f[0].0.stream, be_u32(&f[0].1)), (WINDOW_UPDATE, id, Some(STREAM_WINDOW_BYTES / 2)));
        // Late frames for a stream that is gone are ignored (and still counted).
        let mut st = State::new();
        let before = st.recv_unacked;
        feed(&mut st, DATA, 0, 99, &chunk).unwrap();
        feed(&mut st, HEADERS, END_HEADERS, 99, &block(&[(":status", "200")])).unwrap();
        assert_eq!(st.recv_unacked, before + 16_384);
    }

    #[test]
    fn a_gone_call_resets_its_stream_and_frees_its_slot() {
        let mut st = State::new();
        let id = open(&mut st);
        st.wbuf.clear();
        let mut wakes = Vec::new();
        st.remove(id, &mut wakes);
        let f = frames(&st.wbuf);
        assert_eq!((f[0].0.kind, f[0].0.stream, be_u32(&f[0].1)), (RST_STREAM, id, Some(CANCEL)));
        assert!(st.streams.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..20_000 {
            let mut st = State::new();
            let id = open(&mut st);
            if round % 2 == 0 {
                feed(&mut st, HEADERS, END_HEADERS, id, &block(&[(":status", "200")])).unwrap();
            }
            for _ in 0..4 {
                let kind = rng.u8(0..11);
                let flags = rng.u8(..);
                let len = rng.usize(0..40);
                let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                let stream = if rng.bool() { id } else { rng.u32(0..4) };
                let _ = feed(&mut st, kind, flags, stream, &payload);
            }
            let mut d = Decoder::new();
            let b: Vec<u8> = (0..rng.usize(0..30)).map(|_| rng.u8(..)).collect();
            let _ = decode_block(&mut d, &b);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Against the h2 crate's server, over a real socket.

    use glommio::net::TcpListener;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Duration;

    async fn handle(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
        let path = req.uri().path().to_string();
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(c) = body.data().await {
            let c = c.unwrap();
            let _ = body.flow_control().release_capacity(c.len());
            got.extend_from_slice(&c);
        }
        let head = |status: Option<&str>| {
            let mut r = http::Response::builder().status(200).header("content-type", "application/grpc");
            if let Some(s) = status {
                r = r.header("grpc-status", s).header("grpc-message", "caf%C3%A9%20%28not%20here%29");
            }
            r.body(()).unwrap()
        };
        match path.as_str() {
            "/err" => {
                respond.send_response(head(Some("5")), true).unwrap();
            }
            _ => {
                if path == "/slow" {
                    glommio::timer::sleep(Duration::from_millis(300)).await;
                }
                let mut send = respond.send_response(head(None), false).unwrap();
                send.send_data(Bytes::from(got), false).unwrap();
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                send.send_trailers(t).unwrap();
            }
        }
    }

    async fn serve(listener: TcpListener) {
        loop {
            let stream = listener.accept().await.unwrap();
            glommio::spawn_local(async move {
                let (io, _flusher) = seqcore::grpc::Io::new(stream).unwrap();
                let mut conn =
                    h2::server::Builder::new().max_concurrent_streams(2).handshake::<_, Bytes>(io).await.unwrap();
                while let Some(r) = conn.accept().await {
                    let (req, respond) = r.unwrap();
                    glommio::spawn_local(handle(req, respond)).detach();
                }
            })
            .detach();
        }
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut v = seqcore::grpc::encode_prefix(msg.len() as u32).to_vec();
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn calls_against_an_h2_server() {
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(|| async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                glommio::spawn_local(serve(listener)).detach();
                let conn = connect(&addr, Rc::new(Turnaround::default())).await.unwrap();
                let echo = request_block(&addr, "/echo");
                // One small call, then large ones both ways (flow control on both sides: h2's
                // server starts with 64 KiB windows).
                assert_eq!(conn.unary(&echo, &framed(b"hello")).await.unwrap(), &b"hello"[..]);
                let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
                assert_eq!(conn.unary(&echo, &framed(&big)).await.unwrap(), &big[..]);
                // A trailers-only error, h2's Huffman-coded percent-encoded message.
                let err = conn.unary(&request_block(&addr, "/err"), &framed(b"x")).await.unwrap_err();
                assert_eq!(err, CallError::Status { code: 5, message: "café (not here)".into() });
                // More calls than the server's 2 concurrent streams.
                let tasks: Vec<_> = (0..8u8)
                    .map(|i| {
                        let (conn, echo) = (conn.clone(), echo.clone());
                        glommio::spawn_local(async move {
                            let m = vec![i; 1000 * i as usize + 1];
                            assert_eq!(conn.unary(&echo, &framed(&m)).await.unwrap(), &m[..]);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
                // A call given up (its future dropped) frees its slot; the connection goes on.
                let slow = request_block(&addr, "/slow");
                let gave_up = futures_lite::future::or(async { Some(conn.unary(&slow, &framed(b"s")).await) }, async {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    None
                })
                .await;
                assert!(gave_up.is_none());
                assert!(conn.st.borrow().streams.is_empty());
                assert_eq!(conn.unary(&echo, &framed(b"again")).await.unwrap(), &b"again"[..]);
                assert!(conn.usable());
                conn.retire();
                assert!(!conn.usable());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
