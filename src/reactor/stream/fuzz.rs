//! The body of the `conn_path` fuzz target (feature `fuzzing`): one connection of any stream
//! service driven through `drive` by the loop's simulation (`sim.rs`) over a scripted
//! transport, where the input decides everything the network would: the limits, the read
//! buffer, when the peer's bytes arrive and how each read cuts them, where reads and writes
//! are interrupted, how much each write takes and when the peer makes room (so where
//! `WouldBlock` falls on both sides), when the disk thread finishes and when the peer hangs up.
//! Modelled on h2's `fuzz_e2e` and quinn's `Arbitrary` operation lists.
//!
//! Checked, besides no panic: output pending and input held stay within the configured bounds
//! (plus one reply), nothing is read or written after the close (the script panics), a peer
//! that has finished and read everything has its connection closed (nothing wedges), and for
//! echo and upper what the client received is what it sent (upper-cased), all of it unless the
//! connection was closed as a slow reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Arbitrary, Unstructured};

use super::PRODUCE_CHUNK;
use super::sim::Sim;
use crate::config::Limits;
use crate::frame::Decoded;
use crate::frame::header::{HeaderBodyConfig, HeaderBodyDecoder};
use crate::kind::ServiceKind;
use crate::reactor::transport::script::Script;
use crate::service::files::{FilesConfig, FilesShared};
use crate::service::store::Store;
use crate::service::{Shared, StreamService};

/// Output one drive may add past `--max-pending` before the check that closes the connection:
/// one produced chunk of a long response, or one response to a request.
const ONE_REPLY: usize = 2 * PRODUCE_CHUNK;

/// The service behind the connection.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Kind {
    Echo,
    Upper,
    Chat,
    Metrics,
    Files,
}

/// The connection's configuration; each size is small so that every limit can be hit.
#[derive(Debug, Arbitrary)]
struct Setup {
    kind: Kind,
    /// The read buffer: 1 + this many bytes.
    scratch: u8,
    /// `--read-budget` less 1.
    read_budget: u16,
    /// `--pending-pause` less 1.
    pending_pause: u16,
    /// `--max-pending` above the pause mark.
    max_pending: u16,
    /// `--max-input` less 1.
    max_input: u16,
    /// The most bytes a write takes when no `WriteSizes` applies (1 + this).
    write_cap: u8,
    /// Room the peer leaves for writes at the start.
    room: u16,
    /// `files`: bytes an upload may have in flight to the disk (1 + this).
    in_flight: u16,
}

/// One thing that happens to the connection.
#[derive(Debug, Arbitrary)]
enum Op {
    /// The peer's bytes arrive (one readable event if the connection is reading).
    Arrive(Vec<u8>),
    /// The coming reads return at most these many bytes each.
    ReadSizes(Vec<u8>),
    /// The coming writes take at most these many bytes each (partial writes).
    WriteSizes(Vec<u8>),
    /// The coming calls, read or write, fail with `Interrupted` first where `true`.
    Interrupts(Vec<bool>),
    /// The peer reads this many bytes: room for writes, and a writable event if one blocked.
    Room(u16),
    /// The disk thread finishes this many of the queued jobs.
    Disk(u8),
    /// One turn of the loop.
    Turn,
    /// Turns until no event is pending and the ready list is empty.
    Settle,
    /// The peer shuts down its sending side.
    Fin,
}

/// Runs one input; panics on a broken invariant.
pub fn fuzz_conn_path(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(setup), Ok(ops)) = (Setup::arbitrary(&mut u), Vec::<Op>::arbitrary(&mut u)) else {
        return;
    };
    let limits = limits(&setup);
    let dir = matches!(setup.kind, Kind::Files).then(data_dir).flatten();
    let Some((service, kind)) = service(&setup, dir.as_deref()) else {
        return;
    };
    let mut script = Script::new(usize::from(setup.write_cap) + 1);
    script.room = usize::from(setup.room);
    let scratch = usize::from(setup.scratch) + 1;
    let mut sim = Sim::with_limits(service, kind, script, scratch, limits.clone());
    let mut arrived = Vec::new();
    for op in &ops {
        if sim.closed.is_some() {
            break;
        }
        apply(&mut sim, op, &mut arrived);
    }
    // The peer finishes and reads everything; the disk catches up.
    sim.fin();
    sim.finish();
    check(&mut sim, kind, &limits, &arrived);
    if let Some(dir) = dir {
        // The connection is gone; the disk thread still runs what it was handed.
        let jobs: Vec<_> = sim.disk.drain(..).collect();
        drop(sim);
        for job in jobs {
            drop(job()());
        }
        let temporaries = leftover_temporaries(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(temporaries.is_empty(), "temporaries left: {temporaries:?}");
    }
}

/// Upload temporaries in the data directory (an upload cut short must leave none).
fn leftover_temporaries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".socklab-tmp-"))
        .collect()
}

/// Whether `bytes` are whole `files` response frames and nothing else.
fn whole_frames(bytes: &[u8]) -> bool {
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    let mut pos = 0;
    // Every item but a body's end uses a byte: this many calls decode everything.
    for _ in 0..=2 * bytes.len() + 2 {
        match d.decode(bytes.get(pos..).unwrap_or_default()) {
            Ok(Decoded::Item { consumed, .. } | Decoded::Skipped { consumed }) => pos += consumed,
            Ok(Decoded::Incomplete) => return pos == bytes.len() && d.body_remaining() == 0,
            Err(_) => return false,
        }
    }
    false
}

fn apply(sim: &mut Sim, op: &Op, arrived: &mut Vec<u8>) {
    match op {
        Op::Arrive(bytes) => {
            if !sim.script().fin {
                arrived.extend_from_slice(bytes);
                sim.arrive(bytes);
            }
        }
        Op::ReadSizes(sizes) => {
            let s = sim.script();
            s.read_caps.extend(sizes.iter().map(|&n| usize::from(n)));
        }
        Op::WriteSizes(sizes) => {
            let s = sim.script();
            s.write_caps.extend(sizes.iter().map(|&n| usize::from(n)));
        }
        Op::Interrupts(calls) => sim.script().interrupts.extend(calls),
        Op::Room(n) => sim.make_room(usize::from(*n)),
        Op::Disk(n) => sim.disk_done(usize::from(*n)),
        Op::Turn => sim.turn(),
        Op::Settle => sim.settle(),
        Op::Fin => sim.fin(),
    }
}

fn check(sim: &mut Sim, kind: ServiceKind, limits: &Limits, arrived: &[u8]) {
    assert!(
        sim.max_pending <= limits.max_pending + ONE_REPLY,
        "{} bytes of output pending, --max-pending {}",
        sim.max_pending,
        limits.max_pending
    );
    assert!(
        sim.max_input <= limits.max_input,
        "{} bytes of input held, --max-input {}",
        sim.max_input,
        limits.max_input
    );
    let reason = sim.closed.clone();
    assert!(
        reason.is_some(),
        "the peer finished and read everything, the connection is still open"
    );
    let reason = reason.unwrap_or_default();
    let sent = sim.sent();
    if kind == ServiceKind::Files && reason == "Finished" {
        assert!(whole_frames(&sent), "the client received a torn response");
    }
    let map: fn(&[u8]) -> Vec<u8> = match kind {
        ServiceKind::Echo => <[u8]>::to_vec,
        ServiceKind::Upper => <[u8]>::to_ascii_uppercase,
        _ => return,
    };
    let want = map(arrived);
    if reason.starts_with("SlowReader") {
        assert!(want.starts_with(&sent), "the client received other bytes");
    } else {
        assert_eq!(reason, "Finished");
        assert!(sent == want, "the client received other bytes");
    }
}

fn limits(setup: &Setup) -> Limits {
    let pending_pause = usize::from(setup.pending_pause) + 1;
    Limits {
        read_budget: usize::from(setup.read_budget) + 1,
        pending_pause,
        max_pending: pending_pause + usize::from(setup.max_pending),
        max_input: usize::from(setup.max_input) + 1,
        ..Limits::default()
    }
}

/// A fresh data directory for a `files` connection.
fn data_dir() -> Option<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "socklab-fuzz-conn-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).ok().map(|()| dir)
}

fn service(setup: &Setup, dir: Option<&Path>) -> Option<(StreamService, ServiceKind)> {
    let kind = match setup.kind {
        Kind::Echo => ServiceKind::Echo,
        Kind::Upper => ServiceKind::Upper,
        Kind::Chat => ServiceKind::Chat,
        Kind::Metrics => ServiceKind::Metrics,
        Kind::Files => ServiceKind::Files,
    };
    let mut shared = Shared::default();
    if kind == ServiceKind::Files {
        let (store, _) = Store::open(dir?).ok()?;
        let config = FilesConfig {
            upload_in_flight: u64::from(setup.in_flight) + 1,
            max_upload: Some(64 * 1024),
            ..FilesConfig::default()
        };
        shared.files = Some(Arc::new(FilesShared::new(store, config)));
    }
    Some((StreamService::for_kind(kind, &shared)?, kind))
}
