//! Bodies of the structure-aware fuzz targets in `fuzz/` (feature `fuzzing`): each decodes an
//! `arbitrary` list of operations and replays it against a sans-IO service, checking the
//! invariants the reactor relies on, not only that nothing panics.

mod bus;
mod conn;
mod dgram;
mod tls;

pub use crate::reactor::fuzz_conn_path;
pub use bus::fuzz_chat_bus;
use conn::{Conn, Op};
pub use dgram::fuzz_datagram;
pub use tls::fuzz_tls_server;

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};

use crate::kind::ServiceKind;
use crate::service::files::{FilesConfig, FilesShared};
use crate::service::store::Store;
use crate::service::{Shared, StreamService};

fn ops(data: &[u8]) -> Option<(bool, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let auth = bool::arbitrary(&mut u).ok()?;
    let ops = Vec::<Op>::arbitrary(&mut u).ok()?;
    Some((auth, ops))
}

/// echo: every byte comes back, in order, at once.
pub fn fuzz_echo(data: &[u8]) {
    byte_stream(data, ServiceKind::Echo, |b| b.to_vec());
}

/// upper: every byte comes back upper-cased (ASCII), in order, at once.
pub fn fuzz_upper(data: &[u8]) {
    byte_stream(data, ServiceKind::Upper, |b| b.to_ascii_uppercase());
}

fn byte_stream(data: &[u8], kind: ServiceKind, map: fn(&[u8]) -> Vec<u8>) {
    let Some((_, ops)) = ops(data) else { return };
    let Some(svc) = StreamService::for_kind(kind, &Shared::default()) else {
        return;
    };
    let mut conn = Conn::new(svc);
    let mut sent = Vec::new();
    for op in &ops {
        if conn.closed {
            break;
        }
        if let Op::Input(b) = op {
            sent.extend_from_slice(b);
        }
        conn.run(std::slice::from_ref(op));
        assert!(
            conn.held.is_empty(),
            "a byte stream service held input back"
        );
    }
    assert_eq!(conn.out, map(&sent));
}

/// chat: a member's session under any input; after a quit nothing more is read.
pub fn fuzz_chat(data: &[u8]) {
    let Some((_, ops)) = ops(data) else { return };
    let Some(svc) = StreamService::for_kind(ServiceKind::Chat, &Shared::default()) else {
        return;
    };
    let mut conn = Conn::new(svc);
    conn.open(false);
    for op in &ops {
        if conn.closed {
            break;
        }
        let quit = !conn.service.accepts_input();
        let before = conn.out.len();
        conn.run(std::slice::from_ref(op));
        if quit {
            assert_eq!(conn.out.len(), before, "chat replied after quit");
        }
        // Bounded: every line the member sent is in the room's output at most once,
        // plus a fixed-size notice.
        assert!(conn.others.len() <= 4 * (data.len() + 64) + 4096);
    }
}

/// metrics HTTP: answers requests; nothing is written after the response that closes (or the
/// WebSocket upgrade's 101), while a scrape that waits for counters and an `/events` stream may
/// write without reading.
pub fn fuzz_metrics(data: &[u8]) {
    let Some((_, ops)) = ops(data) else { return };
    let Some(svc) = StreamService::for_kind(ServiceKind::Metrics, &Shared::default()) else {
        return;
    };
    let mut conn = Conn::new(svc);
    for op in &ops {
        if conn.closed {
            break;
        }
        let done = match &conn.service {
            StreamService::Metrics(m) => m.finished(),
            _ => true,
        };
        let before = conn.out.len();
        conn.run(std::slice::from_ref(op));
        if done {
            assert_eq!(
                conn.out.len(),
                before,
                "metrics wrote after its closing response"
            );
        }
    }
}

/// files (with auth and exec request parsing; commands are never run): every response is a
/// well-formed header frame, and none follows a closing one.
pub fn fuzz_files(data: &[u8]) {
    let Some((auth, ops)) = ops(data) else { return };
    let Ok(dir) = tempdir() else { return };
    let Ok((store, _)) = Store::open(&dir) else {
        return;
    };
    let config = FilesConfig {
        max_header: 4096,
        max_upload: Some(64 * 1024),
        ..FilesConfig::default()
    };
    let shared = Shared {
        files: Some(Arc::new(FilesShared::new(store, config))),
        listeners: Default::default(),
    };
    if let Some(svc) = StreamService::for_kind(ServiceKind::Files, &shared) {
        let mut conn = Conn::new(svc);
        conn.open(auth);
        conn.run(&ops);
        conn.would_block();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "socklab-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
