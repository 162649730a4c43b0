//! gRPC message framing and status, independent of any I/O.
//!
//! - Length-prefixed messages: 1 byte compressed flag + 4 bytes big-endian length + message.
//!   [`MessageDecoder`] reassembles the single request message of a unary call from DATA chunks,
//!   enforcing the size limit as soon as the prefix is seen (nothing over the limit is buffered);
//!   [`FramedMessage`] is the response side, a `Buf` that yields prefix then message without
//!   copying the message.
//! - [`Status`]: a [`Code`] (the 17 gRPC status codes, defined in `crate::status`) and a message,
//!   and their `grpc-status` / `grpc-message` header values (the message percent-encoded per the
//!   gRPC HTTP/2 spec).
//!
//! Compression is not supported: a message with the compressed flag set is answered with
//! UNIMPLEMENTED "compression is not supported" (what the gRPC compression spec prescribes for an
//! encoding the server does not support), and our responses always advertise
//! `grpc-accept-encoding: identity`.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use std::fmt;
use std::io::IoSlice;

/// Length of the gRPC message prefix.
pub const PREFIX_LEN: usize = 5;

/// HTTP/2 flow-control window per stream for gRPC (h2's default, 64 KiB, makes large tensors
/// crawl); public so that clients of this crate (the loadgen) advertise the same windows.
pub const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// HTTP/2 flow-control window per connection for gRPC.
pub const CONNECTION_WINDOW_BYTES: u32 = 4 << 20;

// The code enum is `crate::status::Code`, shared with the domain's error mapping (`error::Kind`)
// so that no cast joins two enums; only its HTTP/2 header form is this layer's business.
pub use crate::status::Code;

impl Code {
    /// The `grpc-status` header value (static, no allocation).
    pub fn header_value(self) -> HeaderValue {
        const DIGITS: [&str; 17] =
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        HeaderValue::from_static(DIGITS[self as usize])
    }
}

/// A gRPC status: a code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
    /// Set only by [`Status::compression_unsupported`]: the answer must then also say which
    /// encodings we accept. A flag, so the server need not recognise the status by its text.
    refuses_compression: bool,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into(), refuses_compression: false }
    }

    /// UNIMPLEMENTED for a compressed message (what the gRPC compression spec prescribes for an
    /// encoding the server does not support); its answer carries `grpc-accept-encoding: identity`.
    pub fn compression_unsupported() -> Status {
        Status { refuses_compression: true, ..Status::unimplemented("compression is not supported") }
    }

    /// True for [`Status::compression_unsupported`].
    pub fn refuses_compression(&self) -> bool {
        self.refuses_compression
    }

    pub fn invalid_argument(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Status {
        Status::new(Code::NotFound, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> Status {
        Status::new(Code::ResourceExhausted, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, message)
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(Code::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, message)
    }

    /// UNIMPLEMENTED for a `:path` no service serves, naming it.
    pub fn unknown_method(method: &str) -> Status {
        Status::new(Code::Unimplemented, format!("unknown method {method}"))
    }

    /// `grpc-status` and (if the message is not empty) percent-encoded `grpc-message`, appended to
    /// `headers` (response headers of a trailers-only response, or trailers).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", self.code.header_value());
        if !self.message.is_empty() {
            let encoded = percent_encode(&self.message);
            // Percent-encoding leaves only visible ASCII and spaces, always a valid value.
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                headers.insert("grpc-message", v);
            }
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// Percent-encodes a `grpc-message` value: bytes outside 0x20..=0x7E, and `%` itself, become
/// `%XX` (upper-case hex) of the UTF-8 encoding; everything else is kept.
pub fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let needs = |b: u8| !(0x20..=0x7E).contains(&b) || b == b'%';
    if !message.bytes().any(needs) {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 16);
    for b in message.bytes() {
        if needs(b) {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xF) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Inverse of [`percent_encode`], lenient as the spec asks: a `%` not followed by two hex
/// digits is kept literally; invalid UTF-8 is replaced.
pub fn percent_decode(value: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            if let (Some(h), Some(l)) = (hex(value[i + 1]), hex(value[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 5-byte prefix for an uncompressed message of `len` bytes.
pub fn encode_prefix(len: u32) -> [u8; PREFIX_LEN] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// Reassembles the one request message of a unary call from the request body's DATA chunks.
///
/// Push every chunk with [`push`](Self::push) and call [`finish`](Self::finish) at end of
/// stream. Errors come as early as they are knowable:
/// - the compressed flag is set → UNIMPLEMENTED (compression is not supported);
/// - the declared length is over `message_bytes_max` → RESOURCE_EXHAUSTED, before any of the
///   message is buffered;
/// - bytes after the first message (a second message) → INVALID_ARGUMENT;
/// - end of stream without a complete message → INVALID_ARGUMENT.
///
/// When the whole message arrives in one chunk (the common case), the message is a slice of that
/// chunk and nothing is copied.
#[derive(Debug)]
pub struct MessageDecoder {
    message_bytes_max: usize,
    /// Prefix bytes seen so far (only used when the prefix is split across chunks).
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Declared message length, once the prefix is complete.
    len: Option<usize>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Empty,
    /// The message so far is one slice of one chunk (no copy).
    Slice(Bytes),
    /// Reassembled from several chunks.
    Buffer(BytesMut),
}

impl MessageDecoder {
    pub fn new(message_bytes_max: usize) -> MessageDecoder {
        MessageDecoder { message_bytes_max, prefix: [0; PREFIX_LEN], prefix_len: 0, len: None, body: Body::Empty }
    }

    fn have(&self) -> usize {
        match &self.body {
            Body::Empty => 0,
            Body::Slice(b) => b.len(),
            Body::Buffer(b) => b.len(),
        }
    }

    /// Feeds the next DATA chunk.
    pub fn push(&mut self, mut chunk: Bytes) -> Result<(), Status> {
        if self.len.is_none() {
            let take = (PREFIX_LEN - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk.advance(take);
            if self.prefix_len < PREFIX_LEN {
                return Ok(());
            }
            let len = check_prefix(&self.prefix, self.message_bytes_max)?;
            self.len = Some(len);
        }
        let len = self.len.unwrap_or(0);
        if chunk.is_empty() {
            return Ok(());
        }
        let have = self.have();
        if have + chunk.len() > len {
            return Err(Status::invalid_argument("more than one request message on a unary call"));
        }
        match &mut self.body {
            Body::Empty if chunk.len() == len => self.body = Body::Slice(chunk),
            Body::Empty => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(&chunk);
                self.body = Body::Buffer(buf);
            }
            Body::Slice(first) => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(first);
                buf.extend_from_slice(&chunk);
                self.body = Body::Buffer(buf);
            }
            Body::Buffer(buf) => buf.extend_from_slice(&chunk),
        }
        Ok(())
    }

    /// True once a whole message has been received.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.len.is_some_and(|len| self.have() == len)
    }

    /// At end of stream: the message.
    pub fn finish(self) -> Result<Bytes, Status> {
        let Some(len) = self.len else {
            return Err(Status::invalid_argument(if self.prefix_len == 0 {
                "missing request message"
            } else {
                "truncated gRPC message prefix"
            }));
        };
        if self.have() != len {
            return Err(Status::invalid_argument(format!("request message truncated: {} of {len} bytes", self.have())));
        }
        Ok(match self.body {
            Body::Empty => Bytes::new(),
            Body::Slice(b) => b,
            Body::Buffer(b) => b.freeze(),
        })
    }
}

/// Checks a complete 5-byte prefix: not compressed, length within `message_bytes_max`.
fn check_prefix(prefix: &[u8; PREFIX_LEN], message_bytes_max: usize) -> Result<usize, Status> {
    match prefix[0] {
        0 => {}
        1 => return Err(Status::compression_unsupported()),
        f => return Err(Status::internal(format!("invalid gRPC message prefix: compressed flag is {f}"))),
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > message_bytes_max {
        return Err(Status::resource_exhausted(format!(
            "request message is {len} bytes, over the limit message_bytes_max = {message_bytes_max} bytes"
        )));
    }
    Ok(len)
}

/// Splits a streaming call's request body into messages. It holds what the client sent and we
/// have not handled yet: the caller reads the next DATA chunk only once every message of the
/// previous one is handled, so flow control bounds it (plus one partial message, itself bounded
/// by `message_bytes_max`, checked as soon as its prefix is complete).
#[derive(Debug)]
pub struct StreamDecoder {
    message_bytes_max: usize,
    buf: BytesMut,
}

impl StreamDecoder {
    pub fn new(message_bytes_max: usize) -> StreamDecoder {
        StreamDecoder { message_bytes_max, buf: BytesMut::new() }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(prefix) = self.buf.first_chunk::<PREFIX_LEN>() else { return Ok(None) };
        let len = check_prefix(prefix, self.message_bytes_max)?;
        if self.buf.len() < PREFIX_LEN + len {
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// At end of stream: an error if a partial message is left.
    pub fn finish(&self) -> Result<(), Status> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(Status::invalid_argument(format!("request stream ended inside a message ({n} bytes left)"))),
        }
    }
}

/// A response message with its 5-byte prefix, as a `Buf` that does not copy the message.
#[derive(Debug)]
pub struct FramedMessage {
    prefix: [u8; PREFIX_LEN],
    /// How much of the prefix has been consumed.
    pos: usize,
    message: Bytes,
}

impl FramedMessage {
    /// Fails (INTERNAL) only for a message of 4 GiB or more, which the prefix cannot express.
    pub fn new(message: Bytes) -> Result<FramedMessage, Status> {
        let len = u32::try_from(message.len()).map_err(|_| {
            Status::internal(format!("response message of {} bytes is too large for gRPC", message.len()))
        })?;
        Ok(FramedMessage { prefix: encode_prefix(len), pos: 0, message })
    }
}

impl Buf for FramedMessage {
    fn remaining(&self) -> usize {
        PREFIX_LEN - self.pos + self.message.len()
    }

    fn chunk(&self) -> &[u8] {
        if self.pos < PREFIX_LEN {
            &self.prefix[self.pos..]
        } else {
            &self.message
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        if self.pos < PREFIX_LEN {
            let n = cnt.min(PREFIX_LEN - self.pos);
            self.pos += n;
            cnt -= n;
        }
        if cnt > 0 {
            self.message.advance(cnt);
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if n < dst.len() && self.pos < PREFIX_LEN {
            dst[n] = IoSlice::new(&self.prefix[self.pos..]);
            n += 1;
        }
        if n < dst.len() && !self.message.is_empty() {
            dst[n] = IoSlice::new(&self.message);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, msg: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn prefix_encoding() {
        assert_eq!(encode_prefix(0), [0, 0, 0, 0, 0]);
        assert_eq!(encode_prefix(0x01020304), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn whole_message_in_one_chunk_is_not_copied() {
        let wire = Bytes::from(framed(0, b"hello"));
        let mut d = MessageDecoder::new(1024);
        d.push(wire.clone()).unwrap();
        assert!(d.is_complete());
        let msg = d.finish().unwrap();
        assert_eq!(&msg[..], b"hello");
        // Same allocation as the input chunk.
        assert_eq!(msg.as_ptr(), wire[5..].as_ptr());
    }

    #[test]
    fn message_split_at_every_byte() {
        let wire = framed(0, b"split message");
        for cut in 0..=wire.len() {
            let mut d = MessageDecoder::new(1024);
            d.push(Bytes::copy_from_slice(&wire[..cut])).unwrap();
            assert_eq!(d.is_complete(), cut == wire.len(), "cut {cut}");
            d.push(Bytes::copy_from_slice(&wire[cut..])).unwrap();
            assert_eq!(&d.finish().unwrap()[..], b"split message", "cut {cut}");
        }
        // One byte at a time.
        let mut d = MessageDecoder::new(1024);
        for b in &wire {
            d.push(Bytes::copy_from_slice(&[*b])).unwrap();
        }
        assert_eq!(&d.finish().unwrap()[..], b"split message");
    }

    #[test]
    fn empty_message() {
        let mut d = MessageDecoder::new(0);
        d.push(Bytes::from(framed(0, b""))).unwrap();
        assert!(d.is_complete());
        assert_eq!(d.finish().unwrap().len(), 0);
    }

    #[test]
    fn partial_is_an_error_at_end_of_stream() {
        let d = MessageDecoder::new(1024);
        assert_eq!(d.finish().unwrap_err().code, Code::InvalidArgument);

        let mut d = MessageDecoder::new(1024);
        d.push(Bytes::from_static(&[0, 0, 0])).unwrap();
        let e = d.finish().unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.contains("prefix"), "{e}");

        let mut d = MessageDecoder::new(1024);
        let wire = framed(0, b"0123456789");
        d.push(Bytes::copy_from_slice(&wire[..9])).unwrap();
        let e = d.finish().unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.contains("4 of 10"), "{e}");
    }

    #[test]
    fn oversized_is_rejected_from_the_prefix_alone() {
        let mut d = MessageDecoder::new(100);
        // Only the prefix declaring 101 bytes: rejected before any body arrives.
        let e = d.push(Bytes::copy_from_slice(&[0, 0, 0, 0, 101])).unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(e.message.contains("message_bytes_max = 100 bytes"), "{e}");
        assert!(e.message.contains("101 bytes"), "{e}");

        // Exactly at the limit is fine.
        let mut d = MessageDecoder::new(100);
        d.push(Bytes::from(framed(0, &[7; 100]))).unwrap();
        assert_eq!(d.finish().unwrap().len(), 100);

        // A 4 GiB - 1 declaration does not allocate.
        let mut d = MessageDecoder::new(64 << 20);
        let e = d.push(Bytes::copy_from_slice(&[0, 0xFF, 0xFF, 0xFF, 0xFF])).unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
    }

    #[test]
    fn stream_decoder_splits_messages_across_chunks() {
        let mut wire = Vec::new();
        for m in [&b"abc"[..], b"", b"defgh"] {
            wire.extend_from_slice(&encode_prefix(m.len() as u32));
            wire.extend_from_slice(m);
        }
        for cut in 0..wire.len() {
            let mut d = StreamDecoder::new(100);
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                d.push(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, vec![Bytes::from_static(b"abc"), Bytes::new(), Bytes::from_static(b"defgh")], "cut {cut}");
            assert!(d.finish().is_ok());
        }
        let mut d = StreamDecoder::new(4);
        d.push(&encode_prefix(5));
        assert_eq!(d.next_message().unwrap_err().code, Code::ResourceExhausted);
        let mut d = StreamDecoder::new(100);
        d.push(&encode_prefix(5)[..3]);
        assert!(d.next_message().unwrap().is_none());
        assert_eq!(d.finish().unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn compressed_flag_is_unimplemented() {
        let mut d = MessageDecoder::new(1024);
        let e = d.push(Bytes::from(framed(1, b"zz"))).unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
        assert_eq!(e.message, "compression is not supported");
        assert!(e.refuses_compression());

        let mut d = MessageDecoder::new(1024);
        assert_eq!(d.push(Bytes::from(framed(2, b"zz"))).unwrap_err().code, Code::Internal);
    }

    #[test]
    fn second_message_is_rejected() {
        let mut wire = framed(0, b"one");
        wire.extend(framed(0, b"two"));
        let mut d = MessageDecoder::new(1024);
        assert_eq!(d.push(Bytes::from(wire)).unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn framed_message_buf() {
        let mut f = FramedMessage::new(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(f.remaining(), 8);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(f.chunks_vectored(&mut slices), 2);
        assert_eq!(&*slices[0], &[0, 0, 0, 0, 3]);
        assert_eq!(&*slices[1], b"abc");
        f.advance(3);
        assert_eq!(f.chunk(), &[0, 3]);
        f.advance(3);
        assert_eq!(f.chunk(), b"bc");
        let mut all = FramedMessage::new(Bytes::from_static(b"xyz")).unwrap();
        let v = all.copy_to_bytes(8);
        assert_eq!(&v[..], b"\0\0\0\0\x03xyz");
        assert_eq!(all.remaining(), 0);
    }

    #[test]
    fn percent_encoding_of_grpc_message() {
        assert_eq!(percent_encode("plain text: ok!"), "plain text: ok!");
        assert_eq!(percent_encode("50%"), "50%25");
        assert_eq!(percent_encode("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(percent_encode("\x7f"), "%7F");
        // Non-ASCII: the UTF-8 bytes, upper-case hex.
        assert_eq!(percent_encode("µs ☺"), "%C2%B5s %E2%98%BA");
        for s in ["", "50%", "µs ☺\r\n", "%zz", "100% done\u{0}"] {
            assert_eq!(percent_decode(percent_encode(s).as_bytes()), s);
        }
        // Lenient decoding of malformed escapes.
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
        assert_eq!(percent_decode(b"%41%"), "A%");
    }

    #[test]
    fn status_headers() {
        let mut h = HeaderMap::new();
        Status::new(Code::ResourceExhausted, "too big: 5% over\n").append_to(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "too big: 5%25 over%0A");

        let mut h = HeaderMap::new();
        Status::new(Code::Ok, "").append_to(&mut h);
        assert_eq!(h["grpc-status"], "0");
        assert!(h.get("grpc-message").is_none());

        for i in 0..17 {
            assert_eq!(Code::from_i32(i).as_i32(), i);
            assert_eq!(Code::from_i32(i).header_value(), i.to_string().as_str());
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Status::unknown_method("/x.Y/Z").code, Code::Unimplemented);
    }
}
