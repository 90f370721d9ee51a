#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| reflow_dataplane::fuzzing::sse(data));
