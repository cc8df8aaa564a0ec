#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    testkit::fuzz::sdp_offer(data, std::time::Instant::now())
});
