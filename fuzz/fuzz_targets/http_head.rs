#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| seqcore::fuzzing::http_head(data));
