//! placeholder, owned by the gRPC helper
