//! cargo-fuzz target for the lines decoder. The body lives in
//! `socklab::frame::fuzz`, which `tests/frame_fuzz.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::frame::fuzz::fuzz_lines(data));
