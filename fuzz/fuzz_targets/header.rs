//! cargo-fuzz target for the header+body (`files` frames) decoder. The body lives in
//! `socklab::frame::fuzz`, which `tests/frame_fuzz.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::frame::fuzz::fuzz_header(data));
