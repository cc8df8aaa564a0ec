#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    media_core::harness::fuzz::datagrams(data, std::time::Instant::now())
});
