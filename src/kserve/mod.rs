//! The KServe v2 front end (`inference.GRPCInferenceService`). `sequence` holds the
//! protocol-neutral sequence parsing shared with the REST front end.

pub mod sequence;
