#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cascade::control::fuzz_control_stream(data));
