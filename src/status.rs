//! The status vocabularies of seqcore's two wires: gRPC's status codes ([`Code`]) and the HTTP
//! statuses the REST API sends ([`http`]).
//!
//! They sit below everything that uses them: `error` maps each domain error onto one of each (the
//! only place that decides a domain error's statuses), `grpc` and `rest` write them on the wire.
//! Here rather than in `grpc::framing`, so the domain mapping names a gRPC code without depending
//! on the transport, and the transport and the mapping share one enum (no integer cast between
//! two). Which protocol condition gets which status (an unknown URL, a malformed HTTP head, a
//! compressed gRPC message) stays with the protocol layer that detects it.

use std::fmt;

/// The 17 gRPC status codes (same numbering as `tensorflow.error.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The numeric code.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code for a number; numbers outside 0..=16 map to `Unknown` (as gRPC does).
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n).ok().and_then(|i| Code::ALL.get(i).copied()).unwrap_or(Code::Unknown)
    }

    /// The canonical upper-case name, e.g. `RESOURCE_EXHAUSTED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The HTTP statuses seqcore sends, by name.
pub mod http {
    pub const OK: u16 = 200;
    pub const CREATED: u16 = 201;
    pub const BAD_REQUEST: u16 = 400;
    pub const NOT_FOUND: u16 = 404;
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    pub const REQUEST_TIMEOUT: u16 = 408;
    pub const CONFLICT: u16 = 409;
    pub const PRECONDITION_FAILED: u16 = 412;
    pub const CONTENT_TOO_LARGE: u16 = 413;
    pub const EXPECTATION_FAILED: u16 = 417;
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: u16 = 431;
    pub const INTERNAL_SERVER_ERROR: u16 = 500;
    pub const NOT_IMPLEMENTED: u16 = 501;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}
