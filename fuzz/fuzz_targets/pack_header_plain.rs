#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapback_fuzz::pack_header_plain(data));
