//! placeholder, owned by the OpenVINO helper
