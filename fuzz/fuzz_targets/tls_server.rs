//! Structure-aware target: the reactor's TLS server stream (rustls's unbuffered API over our
//! buffers) against a rustls client over an in-memory socket, records cut, flipped and
//! injected anywhere. The body lives in `socklab::fuzz` (feature `fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| socklab::fuzz::fuzz_tls_server(data));
