//! The chat bus's input from Redis (RESP3 frames, then socklab's payloads) through a worker's
//! Redis session into a room on the bus. The body lives in `socklab::fuzz` (feature `fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::fuzz::fuzz_chat_bus(data));
