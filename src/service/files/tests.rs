//! The `files` session without sockets: requests in, responses decoded back.

use super::*;
use crate::frame::header::HeaderBodyDecoder;
use crate::service::store::Hasher;
use outgoing::Produced;
use serde_json::{Value, json};

fn session(tag: &str, max_upload: Option<u64>) -> (Files, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("socklab-files-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::open(&dir).unwrap();
    let shared = Arc::new(FilesShared::new(
        store,
        FilesConfig {
            max_upload,
            ..FilesConfig::default()
        },
    ));
    (Files::new(shared), dir)
}

fn frame(header: Value, body: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(&header).unwrap();
    let mut v = (h.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&h);
    v.extend_from_slice(body);
    v
}

/// A decoded response: header fields and body.
type Response = (serde_json::Map<String, Value>, Vec<u8>);

/// The next disk job the session asks for (none of these tests asks for a command).
fn disk_job(s: &mut Files) -> Option<DiskJob> {
    match s.poll_action()? {
        Action::Disk(job) => Some(job),
        other => panic!("an unexpected action: {other:?}"),
    }
}

/// Runs input through a session (producing everything) and decodes the responses.
fn run(s: &mut Files, input: &[u8]) -> (Vec<Response>, bool) {
    let mut counters = Counters::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut close = false;
    loop {
        let step = s.on_input(&input[pos..], &mut out, &mut counters, &Peers::default());
        pos += step.consumed;
        close |= step.close;
        // The disk thread's part, done inline.
        while let Some(job) = disk_job(s) {
            s.on_disk_done(job()(), &mut out, &mut counters);
        }
        while s.has_output() {
            assert_eq!(s.produce(&mut out, 1000, &mut counters), Produced::Ok);
        }
        if step.consumed == 0 || close {
            break;
        }
    }
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    let mut responses = Vec::new();
    let mut p = 0;
    while let Ok(Decoded::Item { item, consumed }) = d.decode(&out[p..]) {
        p += consumed;
        match item {
            Part::Header(h) => responses.push((h.map().into_owned(), Vec::new())),
            Part::BodyChunk(c) => responses.last_mut().unwrap().1.extend_from_slice(c),
            Part::BodyEnd => {}
        }
    }
    assert_eq!(p, out.len(), "every response decodes");
    (responses, close)
}

#[test]
fn with_other_workers_stats_waits_for_their_counters_and_keeps_order() {
    let (mut s, dir) = session("stats-wait", None);
    let peers = Peers {
        worker: 0,
        workers: 2,
    };
    let stats = frame(json!({"cmd": "stats", "id": 9}), b"");
    let input = [stats.clone(), frame(json!({"cmd": "ping"}), b"")].concat();
    let (mut counters, mut out) = (Counters::default(), Vec::new());
    let step = s.on_input(&input, &mut out, &mut counters, &peers);
    assert_eq!(
        step.consumed,
        stats.len(),
        "the ping waits for the stats answer"
    );
    assert!(out.is_empty() && !s.accepts_input());
    assert!(matches!(s.poll_action(), Some(Action::Counters)));
    assert!(s.poll_action().is_none(), "asked once");
    assert_eq!(s.awaiting(), Awaiting::Counters);
    let gathered = Gathered {
        workers: 2,
        answered: vec![(0, counters.clone())],
        missing: vec![1],
        process: Default::default(),
    };
    s.on_event(Event::Counters(&gathered), &mut out, &mut counters);
    assert!(s.accepts_input() && s.awaiting() == Awaiting::Nothing);
    let step = s.on_input(&input[stats.len()..], &mut out, &mut counters, &peers);
    assert_eq!(step.consumed, input.len() - stats.len());
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    let Ok(Decoded::Item {
        item: Part::Header(h),
        consumed,
    }) = d.decode(&out)
    else {
        panic!("a stats response first");
    };
    assert_eq!(
        (h.map()["cmd"].clone(), h.map()["id"].clone()),
        (json!("stats"), json!(9))
    );
    let Ok(Decoded::Item {
        item: Part::BodyChunk(body),
        ..
    }) = d.decode(&out[consumed..])
    else {
        panic!("a body");
    };
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (&body["workers"], &body["missing_workers"]),
        (&json!(2), &json!([1]))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pipelined_requests_are_answered_in_order_with_ids() {
    let (mut s, dir) = session("pipe", None);
    let mut input = frame(json!({"cmd": "ping", "id": 1}), b"");
    input.extend(frame(
        json!({"cmd": "echo", "id": "two", "size": 3}),
        b"abc",
    ));
    input.extend(frame(
        json!({"cmd": "put", "filename": "f", "filesize": 5, "id": [3]}),
        b"hello",
    ));
    input.extend(frame(json!({"cmd": "get", "filename": "f"}), b""));
    input.extend(frame(json!({"cmd": "stat", "filename": "f"}), b""));
    input.extend(frame(json!({"cmd": "list"}), b""));
    let (r, close) = run(&mut s, &input);
    assert!(!close);
    assert_eq!(r.len(), 6);
    assert_eq!(r[0].0["id"], json!(1));
    assert_eq!(r[1].1, b"abc");
    assert_eq!(r[1].0["id"], json!("two"));
    assert_eq!(r[2].0["md5"], json!("5d41402abc4b2a76b9719d911017c592"));
    assert_eq!(r[2].0["filesize"], json!(5));
    assert_eq!(r[2].0["id"], json!([3]));
    assert_eq!(r[3].1, b"hello");
    assert_eq!(r[3].0["md5"], json!("5d41402abc4b2a76b9719d911017c592"));
    assert_eq!(r[4].0["filesize"], json!(5));
    let list: Value = serde_json::from_slice(&r[5].1).unwrap();
    assert_eq!(
        list,
        json!([{"name": "f", "size": 5, "md5": "5d41402abc4b2a76b9719d911017c592"}])
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_requests_keep_the_connection_and_bad_frames_close_it() {
    let (mut s, dir) = session("bad", Some(10));
    let mut input = frame(json!({"cmd": "nope", "id": 9}), b"");
    input.extend(frame(json!({"id": 1}), b""));
    input.extend(frame(
        json!({"cmd": "put", "filename": "../x", "size": 2}),
        b"zz",
    ));
    input.extend(frame(
        json!({"cmd": "put", "filename": "big", "size": 11}),
        b"01234567890",
    ));
    input.extend(frame(json!({"cmd": "put", "filename": "m", "size": 1, "md5": "00000000000000000000000000000000"}), b"x"));
    input.extend(frame(json!({"cmd": "get", "filename": "missing"}), b""));
    input.extend(frame(json!({"cmd": "exec", "argv": ["ls"]}), b""));
    input.extend(frame(json!({"cmd": "ping", "id": "x".repeat(2000)}), b""));
    input.extend(frame(json!({"cmd": "ping", "id": 5, "size": -1}), b""));
    input.extend(frame(json!({"cmd": "ping"}), b""));
    let (r, close) = run(&mut s, &input);
    let codes: Vec<&str> = r
        .iter()
        .map(|(h, _)| h["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "unknown_cmd",
            "bad_request",
            "bad_filename",
            "too_large",
            "md5_mismatch",
            "not_found",
            "exec_disabled",
            "bad_request",
            "bad_frame"
        ]
    );
    assert_eq!(r[0].0["cmd"], Value::Null);
    assert_eq!(r[0].0["id"], json!(9));
    assert_eq!(
        r[8].0["id"],
        json!(5),
        "a bad_frame copies the id of an object header"
    );
    assert!(close, "after a bad frame nothing more is read");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing stored, no temporaries"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_abandoned_upload_leaves_nothing() {
    let (mut s, dir) = session("abandon", None);
    let input = frame(
        json!({"cmd": "put", "filename": "f", "size": 1u64 << 40}),
        &[1; 5000],
    );
    let mut counters = Counters::default();
    let mut out = Vec::new();
    let step = s.on_input(&input, &mut out, &mut counters, &Peers::default());
    while let Some(job) = disk_job(&mut s) {
        s.on_disk_done(job()(), &mut out, &mut counters);
    }
    assert_eq!(step.consumed, input.len());
    assert!(out.is_empty());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the temporary");
    drop(s);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_body_that_fills_the_in_flight_window_ends_on_the_next_call_without_new_bytes() {
    let dir = std::env::temp_dir().join(format!("socklab-files-window-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::open(&dir).unwrap();
    let config = FilesConfig {
        upload_in_flight: 4,
        ..FilesConfig::default()
    };
    let mut s = Files::new(Arc::new(FilesShared::new(store, config)));
    let (mut counters, mut out) = (Counters::default(), Vec::new());
    let input = frame(
        json!({"cmd": "put", "filename": "f", "size": 10}),
        b"0123456789",
    );
    let step = s.on_input(&input, &mut out, &mut counters, &Peers::default());
    assert_eq!(step.consumed, input.len(), "the whole body is taken");
    assert_eq!(
        s.disk.len(),
        1,
        "one write, and no commit yet: the window is full"
    );
    assert!(!s.accepts_input() && s.awaiting() == Awaiting::Disk);
    let done = disk_job(&mut s).unwrap()()();
    s.on_disk_done(done, &mut out, &mut counters);
    assert!(s.accepts_input() && s.awaiting() == Awaiting::Nothing);
    assert!(out.is_empty(), "no answer before the commit");
    // The reactor's resumption: no new bytes, but the decoder owes the body's end.
    let step = s.on_input(&[], &mut out, &mut counters, &Peers::default());
    assert_eq!(step.consumed, 0);
    assert_eq!(s.disk.len(), 1, "the commit is queued");
    assert!(
        s.awaiting() == Awaiting::Disk,
        "a commit under way keeps the connection open"
    );
    let done = disk_job(&mut s).unwrap()()();
    s.on_disk_done(done, &mut out, &mut counters);
    let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
    match d.decode(&out) {
        Ok(Decoded::Item {
            item: Part::Header(h),
            ..
        }) => assert_eq!(h.map()["md5"], json!("781e5e245d69b566979b86e28d23f2c7")),
        other => panic!("no put response: {other:?}"),
    }
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"0123456789");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn files_stored_by_hand_are_hashed_before_answering() {
    let (mut s, dir) = session("hand", None);
    std::fs::write(dir.join("hand"), vec![b'a'; 2500]).unwrap();
    let input = frame(json!({"cmd": "get", "filename": "hand"}), b"");
    let (r, _) = run(&mut s, &input);
    let want = {
        let mut h = Hasher::default();
        h.update(&[b'a'; 2500]);
        h.finish()
    };
    assert_eq!(r[0].0["md5"], json!(want));
    assert_eq!(r[0].1.len(), 2500);
    std::fs::remove_dir_all(dir).unwrap();
}
