//! Structure-aware target: the datagram service driven through its sans-IO interface. The body
//! lives in `socklab::fuzz` (feature `fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::fuzz::fuzz_datagram(data));
