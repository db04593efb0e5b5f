#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| omnikv_fuzz::peer_frame(data));
