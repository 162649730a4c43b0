//! The one error type of the request path, and its mapping to gRPC and HTTP statuses.
//!
//! Every message is OVMS's exact text (OVMS `src/status.cpp`), so that clients written against
//! OVMS see the same errors. Where OVMS appends details, `Display` gives `"<message> - <details>"`.
//! The mapping to wire statuses lives here and nowhere else ([`Kind::statuses`]); the status
//! vocabularies themselves are `crate::status`'s, shared with the protocol layers.

use crate::status::{http, Code};
use std::fmt;

/// What went wrong, grouped by who is at fault. Each kind carries OVMS's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    // The client named something that does not exist.
    ModelNameMissing,
    ModelVersionMissing,
    /// The version was served and has been retired (OVMS's MODEL_VERSION_NOT_LOADED_ANYMORE).
    ModelVersionNotLoadedAnymore,
    /// The version is known but still loading (OVMS's MODEL_VERSION_NOT_LOADED_YET).
    ModelVersionNotLoadedYet,
    /// seqcore's own: the version is unloading; it serves its live sequences but takes no new one.
    ModelVersionUnloading,
    SequenceMissing,
    // The client's sequence request conflicts with the sequence table.
    SequenceAlreadyExists,
    MaxSequenceNumberReached,
    // The client sent a malformed special input.
    SequenceIdNotProvided,
    InvalidSequenceControlInput,
    SequenceIdBadType,
    SequenceControlInputBadType,
    SpecialInputNoTensorShape,
    /// KServe: malformed Triton sequence parameters, or both sequence conventions at once.
    InvalidSequenceParameters,
    // The client sent malformed model inputs (these carry details).
    InvalidNoOfInputs,
    InvalidMissingInput,
    InvalidNoOfShapeDimensions,
    InvalidShape,
    InvalidPrecision,
    InvalidValueCount,
    InvalidContentSize,
    InvalidMessage,
    // The client sent a malformed REST body (OVMS's REST parser, `src/status.cpp`).
    JsonInvalid,
    RestBodyIsNotAnObject,
    RestPredictUnknownOrder,
    RestInstancesNotAnArray,
    RestNamedInstanceNotAnObject,
    RestNoInstancesFound,
    RestInstancesNotNamedOrNonamed,
    RestCouldNotParseInstance,
    RestInstancesBatchSizeDiffer,
    RestInputsNotAnObject,
    RestNoInputsFound,
    RestCouldNotParseInput,
    RestCouldNotParseParameters,
    RestCouldNotParseVersion,
    // The client sent malformed KServe binary tensor data: OVMS's kinds, plus Triton's check that
    // the binary data holds nothing beyond the inputs (OVMS ignores such bytes).
    RestInferenceHeaderContentLengthInvalid,
    RestBinaryDataSizeInvalid,
    RestBinaryBufferExceeded,
    RestContentsFieldNotEmpty,
    RestBinaryDataExcess,
    // The server is out of a bounded resource; the client may retry.
    ResourceExhausted,
    /// seqcore's own: the server is shutting down (SIGTERM); the client retries elsewhere or later.
    ServerShuttingDown,
    // The server or the model failed.
    Internal,
}

impl Kind {
    pub fn message(self) -> &'static str {
        match self {
            Kind::ModelNameMissing => "Model with requested name is not found",
            Kind::ModelVersionMissing => "Model with requested version is not found",
            Kind::ModelVersionNotLoadedAnymore => "Model with requested version is retired",
            Kind::ModelVersionNotLoadedYet => "Model with requested version is not loaded yet",
            Kind::ModelVersionUnloading => {
                "Model version is unloading: it serves its live sequences but starts no new one"
            }
            Kind::SequenceMissing => "Sequence with provided ID does not exist",
            Kind::SequenceAlreadyExists => "Sequence with provided ID already exists",
            Kind::MaxSequenceNumberReached => "Max sequence number has been reached. Could not create new sequence.",
            Kind::SequenceIdNotProvided => "Sequence ID has not been provided in request inputs",
            Kind::InvalidSequenceControlInput => "Unexpected value of sequence control input",
            Kind::SequenceIdBadType => "Could not find sequence id in expected tensor proto field uint64_val",
            Kind::SequenceControlInputBadType => {
                "Could not find sequence control input in expected tensor proto field uint32_val"
            }
            Kind::SpecialInputNoTensorShape => "Special input proto does not contain tensor shape information",
            Kind::InvalidSequenceParameters => "Invalid sequence parameters",
            Kind::InvalidNoOfInputs => "Invalid number of inputs",
            Kind::InvalidMissingInput => "Missing input with specific name",
            Kind::InvalidNoOfShapeDimensions => "Invalid number of shape dimensions",
            Kind::InvalidShape => "Invalid input shape",
            Kind::InvalidPrecision => "Invalid input precision",
            Kind::InvalidValueCount => "Invalid number of values in tensor proto container",
            Kind::InvalidContentSize => "Invalid content size of tensor proto",
            Kind::InvalidMessage => "Invalid message structure",
            Kind::JsonInvalid => "The file is not valid json",
            Kind::RestBodyIsNotAnObject => "Request body should be JSON object",
            Kind::RestPredictUnknownOrder => "Invalid JSON structure. Could not detect row or column format",
            Kind::RestInstancesNotAnArray => "Invalid JSON structure. Nonamed instance is not an array.",
            Kind::RestNamedInstanceNotAnObject => {
                "Invalid JSON structure. One of named instances is not a JSON object."
            }
            Kind::RestNoInstancesFound => "Invalid JSON structure. Missing instances in row format",
            Kind::RestInstancesNotNamedOrNonamed => "Could not detect neither named or nonamed format",
            Kind::RestCouldNotParseInstance => "Could not parse instance content. Not valid ndarray detected",
            Kind::RestInstancesBatchSizeDiffer => "Invalid JSON structure. Request inputs have different batch sizes",
            Kind::RestInputsNotAnObject => "Invalid JSON structure. One of inputs is not a JSON object.",
            Kind::RestNoInputsFound => "Invalid JSON structure, missing inputs",
            Kind::RestCouldNotParseInput => "Could not parse input content. Not valid ndarray detected",
            Kind::RestCouldNotParseParameters => "Could not parse request parameters",
            Kind::RestCouldNotParseVersion => "Could not parse model version in request",
            Kind::RestInferenceHeaderContentLengthInvalid => {
                "Inference-Header-Content-Length header is invalid and couldn't be parsed"
            }
            Kind::RestBinaryDataSizeInvalid => "binary_data_size parameter is invalid and cannot be parsed",
            Kind::RestBinaryBufferExceeded => {
                "Received buffer size is smaller than binary_data_size parameter indicates"
            }
            Kind::RestContentsFieldNotEmpty => "Request contains values both in binary data and in content value",
            Kind::RestBinaryDataExcess => "Unexpected additional input data",
            Kind::ResourceExhausted => "Server is overloaded",
            Kind::ServerShuttingDown => "Server is shutting down; retry once it is back",
            Kind::Internal => "Internal server error",
        }
    }

    /// The one mapping of domain errors to wire statuses: (gRPC code, HTTP status), as OVMS
    /// answers them. Every kind is listed, so a new kind cannot fall into a default by accident.
    pub fn statuses(self) -> (Code, u16) {
        match self {
            Kind::ModelNameMissing
            | Kind::ModelVersionMissing
            | Kind::ModelVersionNotLoadedAnymore
            | Kind::SequenceMissing => (Code::NotFound, http::NOT_FOUND),
            Kind::ModelVersionNotLoadedYet => (Code::Unavailable, http::NOT_FOUND),
            Kind::ModelVersionUnloading => (Code::Unavailable, http::SERVICE_UNAVAILABLE),
            Kind::SequenceAlreadyExists => (Code::AlreadyExists, http::CONFLICT),
            Kind::MaxSequenceNumberReached => (Code::Unavailable, http::SERVICE_UNAVAILABLE),
            Kind::ResourceExhausted => (Code::ResourceExhausted, http::SERVICE_UNAVAILABLE),
            Kind::ServerShuttingDown => (Code::Unavailable, http::SERVICE_UNAVAILABLE),
            Kind::Internal => (Code::Internal, http::INTERNAL_SERVER_ERROR),
            Kind::SequenceIdNotProvided
            | Kind::InvalidSequenceControlInput
            | Kind::SequenceIdBadType
            | Kind::SequenceControlInputBadType
            | Kind::SpecialInputNoTensorShape
            | Kind::InvalidSequenceParameters
            | Kind::InvalidNoOfInputs
            | Kind::InvalidMissingInput
            | Kind::InvalidNoOfShapeDimensions
            | Kind::InvalidShape
            | Kind::InvalidPrecision
            | Kind::InvalidValueCount
            | Kind::InvalidContentSize
            | Kind::InvalidMessage
            | Kind::JsonInvalid
            | Kind::RestBodyIsNotAnObject
            | Kind::RestPredictUnknownOrder
            | Kind::RestInstancesNotAnArray
            | Kind::RestNamedInstanceNotAnObject
            | Kind::RestNoInstancesFound
            | Kind::RestInstancesNotNamedOrNonamed
            | Kind::RestCouldNotParseInstance
            | Kind::RestInstancesBatchSizeDiffer
            | Kind::RestInputsNotAnObject
            | Kind::RestNoInputsFound
            | Kind::RestCouldNotParseInput
            | Kind::RestCouldNotParseParameters
            | Kind::RestCouldNotParseVersion
            | Kind::RestInferenceHeaderContentLengthInvalid
            | Kind::RestBinaryDataSizeInvalid
            | Kind::RestBinaryBufferExceeded
            | Kind::RestContentsFieldNotEmpty
            | Kind::RestBinaryDataExcess => (Code::InvalidArgument, http::BAD_REQUEST),
        }
    }

    pub fn grpc_code(self) -> Code {
        self.statuses().0
    }

    pub fn http_status(self) -> u16 {
        self.statuses().1
    }
}

/// An error on the request path: a kind plus OVMS-style details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub details: Option<String>,
}

impl Error {
    pub fn new(kind: Kind) -> Error {
        Error { kind, details: None }
    }

    pub fn with(kind: Kind, details: impl Into<String>) -> Error {
        Error { kind, details: Some(details.into()) }
    }
}

impl From<Kind> for Error {
    fn from(kind: Kind) -> Error {
        Error::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.details {
            Some(d) => write!(f, "{} - {}", self.kind.message(), d),
            None => f.write_str(self.kind.message()),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_follow_the_message_after_a_dash() {
        let e = Error::with(Kind::InvalidShape, "Required shape for sequence_id is: (1)");
        assert_eq!(e.to_string(), "Invalid input shape - Required shape for sequence_id is: (1)");
        assert_eq!(e.kind.grpc_code(), Code::InvalidArgument);
    }

    #[test]
    fn sequence_errors_map_like_ovms() {
        let cases = [
            (Kind::SequenceMissing, 5, 404),
            (Kind::SequenceAlreadyExists, 6, 409),
            (Kind::MaxSequenceNumberReached, 14, 503),
            (Kind::SequenceIdNotProvided, 3, 400),
            (Kind::Internal, 13, 500),
            (Kind::ModelNameMissing, 5, 404),
            (Kind::ModelVersionMissing, 5, 404),
            (Kind::ModelVersionNotLoadedAnymore, 5, 404),
            (Kind::ModelVersionNotLoadedYet, 14, 404),
            (Kind::ModelVersionUnloading, 14, 503),
            (Kind::ResourceExhausted, 8, 503),
            (Kind::RestBinaryDataExcess, 3, 400),
            (Kind::JsonInvalid, 3, 400),
        ];
        for (kind, grpc, http) in cases {
            assert_eq!(kind.grpc_code().as_i32(), grpc, "{kind:?}");
            assert_eq!(kind.http_status(), http, "{kind:?}");
        }
    }
}
