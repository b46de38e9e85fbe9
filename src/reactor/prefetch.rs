//! Cache hints for the event walk. Serving one connection takes microseconds, most of them in
//! its `recv` and `send`; meanwhile the next event's connection, whose state the walk is about
//! to touch, is brought into the cache, so that its first touches do not each wait on memory.
//! It matters when many connections take turns: with a thousand of them, a connection's state
//! has left the caches by its next turn, and a TLS connection's (rustls's state, about 1 KiB)
//! cost a wait on memory at nearly every step of its first record (BENCHMARKS.md, TLS).
//!
//! In two stages, because finding what to fetch is itself a read: two events ahead a
//! connection's slot is fetched by its remembered address (`Sources::prefetch`, no read of the
//! slot), one event ahead the state it points to (by then the slot is in the cache). Fetched
//! one stage only, the read that found the pointer waited on memory itself, in the event walk.

use crate::service::StreamService;

/// The size of a cache line on the machines this runs on.
const LINE: usize = 64;

/// Asks for every cache line of `value` (not what it points to) to be brought into the cache.
#[inline]
pub(crate) fn object<T>(value: &T) {
    lines(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>());
}

/// Asks for the state a stream service keeps behind a pointer (a `files` or chat session: its
/// first touches, whether it takes input and whether it has output, are each a wait on memory
/// otherwise).
#[inline]
pub(crate) fn service(service: &StreamService) {
    match service {
        StreamService::Files(s) => object(&**s),
        StreamService::Chat(s) => object(&**s),
        StreamService::WsChat(s) => object(&**s),
        StreamService::Echo(_) | StreamService::Upper(_) | StreamService::Metrics(_) => {}
    }
}

/// Asks for the cache lines of `len` bytes at `address`, a place remembered as a number (a
/// slab slot's, `token.rs`): nothing is read to find it, so the hint costs no wait on memory.
#[inline]
pub(crate) fn place(address: usize, len: usize) {
    lines(std::ptr::without_provenance(address), len);
}

/// Asks for the cache lines of `len` bytes from `start`.
#[inline]
fn lines(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len.saturating_add(LINE - 1)).step_by(LINE) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is only a hint: it cannot fault and changes nothing the program
        // can observe, whatever the address (`wrapping_add` makes no claim about it either);
        // SSE, which it needs, is part of every x86_64 processor.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}
