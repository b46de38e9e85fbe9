//! Structure-aware target: one connection of any stream service driven through the reactor's
//! connection path (`drive`) over a scripted transport, the input deciding reads, writes,
//! `WouldBlock`, interrupts, the disk and the hang-up. The body lives in `socklab::fuzz`
//! (feature `fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::fuzz::fuzz_conn_path(data));
