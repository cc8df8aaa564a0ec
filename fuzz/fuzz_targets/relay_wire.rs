#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cascade::wire::fuzz_roundtrip(data));
