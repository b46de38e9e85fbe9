//! cargo-fuzz target for the length-prefixed decoder (every width, order and inclusivity). The body lives in
//! `socklab::frame::fuzz`, which `tests/frame_fuzz.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::frame::fuzz::fuzz_length(data));
