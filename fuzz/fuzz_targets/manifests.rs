#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| reflow_crds::fuzzing::manifests(data));
