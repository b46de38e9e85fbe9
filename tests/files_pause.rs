//! Uploads that pause and resume, over real sockets. `--upload-in-flight` set tiny and
//! `--read-budget` set small make every read of an upload body stop the connection until the
//! disk thread has written it, so a few-MiB upload pauses and resumes hundreds of times: every
//! `put` is answered with the right md5, over TCP and over a Unix socket, several at once, on one
//! worker and on two, with the next request pipelined right behind the body. And the bad
//! senders: one that stops mid-body (the idle timeout closes it and nothing is left), one that
//! closes right after the last byte (the file is stored, as PROTOCOL.md says), one that sends
//! more than it announced, and a disk that fills during the commit.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use files_support::*;
use serde_json::json;

/// Flags that make an upload pause at every read: at most 4 KiB read per turn, and reading
/// stops while more than 1 KiB is waiting for the disk.
const PAUSING: &[&str] = &["--upload-in-flight", "1KiB", "--read-budget", "4KiB"];

/// A few MiB of bytes that differ per seed.
fn body(seed: u64, mib: usize) -> Vec<u8> {
    util::Rng::new(seed).bytes(mib << 20)
}

/// Uploads `data` as `name` over `s` and checks the answer names it with the right md5.
fn put_checked<S: util::Stream + ?Sized>(s: &mut S, name: &str, data: &[u8]) {
    let r = call(s, json!({"cmd": "put", "filename": name, "id": name}), data);
    r.assert_ok("put");
    assert_eq!(r.get("md5"), &json!(md5_hex(data)), "md5 of {name}");
    assert_eq!(r.get("filesize"), &json!(data.len()), "size of {name}");
    assert_eq!(r.get("id"), &json!(name));
}

/// The file `name` in the data directory holds exactly `data`.
fn assert_stored(scratch: &Scratch, name: &str, data: &[u8]) {
    let on_disk = std::fs::read(scratch.data().join(name)).expect("the stored file");
    if on_disk != data {
        util::assert_bytes_eq(&on_disk, data, name);
    }
}

#[test]
fn a_paused_upload_over_tcp_is_answered() {
    let scratch = Scratch::new("pause-tcp");
    let mut server = start(&scratch, PAUSING);
    let mut s = connect(&server);
    for (i, mib) in [1usize, 4].into_iter().enumerate() {
        let data = body(i as u64, mib);
        let name = format!("tcp-{mib}");
        put_checked(&mut s, &name, &data);
        assert_stored(&scratch, &name, &data);
    }
    assert!(temporaries(&scratch.data()).is_empty());
    server.assert_alive("after paused uploads");
}

#[test]
fn a_paused_upload_over_a_unix_socket_is_answered() {
    let scratch = Scratch::new("pause-unix");
    let path = scratch.root.path().join("files.sock");
    let listener = format!("unix:{}", path.display());
    let cmd = files_cmd(&[listener.as_str()], &scratch.data(), PAUSING);
    let mut server = util::Server::start_cmd(cmd);
    let mut s = UnixStream::connect(server.unix("files")).expect("connect to the unix listener");
    let data = body(7, 4);
    put_checked(&mut s, "unix-4", &data);
    assert_stored(&scratch, "unix-4", &data);
    server.assert_alive("after a paused upload over a unix socket");
}

/// Several uploads at once from their own connections, each answered with its own md5.
fn uploads_at_once(server: &util::Server, scratch: &Scratch, n: u64) {
    let addr = server.tcp("files");
    let senders: Vec<_> = (0..n)
        .map(|i| {
            thread::spawn(move || {
                let data = body(100 + i, 2);
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                put_checked(&mut s, &format!("at-once-{i}"), &data);
                data
            })
        })
        .collect();
    for (i, t) in senders.into_iter().enumerate() {
        let data = t.join().expect("an upload thread failed");
        assert_stored(scratch, &format!("at-once-{i}"), &data);
    }
}

#[test]
fn paused_uploads_at_once_on_one_worker_are_all_answered() {
    let scratch = Scratch::new("pause-many");
    let mut server = start(&scratch, PAUSING);
    uploads_at_once(&server, &scratch, 4);
    server.assert_alive("after uploads at once");
}

#[test]
fn paused_uploads_at_once_across_two_workers_are_all_answered() {
    let scratch = Scratch::new("pause-workers");
    let mut extra = PAUSING.to_vec();
    extra.extend(["--workers", "2"]);
    let mut server = start(&scratch, &extra);
    uploads_at_once(&server, &scratch, 6);
    server.assert_alive("after uploads at once on two workers");
}

#[test]
fn a_request_pipelined_behind_a_paused_body_is_answered_in_order() {
    let scratch = Scratch::new("pause-pipe");
    let mut server = start(&scratch, PAUSING);
    let mut s = connect(&server);
    let data = body(3, 3);
    let mut bytes = request(json!({"cmd": "put", "filename": "piped", "id": 1}), &data);
    bytes.extend(request(json!({"cmd": "ping", "id": 2}), b""));
    bytes.extend(request(
        json!({"cmd": "stat", "filename": "piped", "id": 3}),
        b"",
    ));
    send(&mut s, &bytes);
    let put = read_response(&mut s);
    put.assert_ok("put");
    assert_eq!(put.get("id"), &json!(1));
    assert_eq!(put.get("md5"), &json!(md5_hex(&data)));
    let ping = read_response(&mut s);
    ping.assert_ok("ping");
    assert_eq!(ping.get("id"), &json!(2));
    let stat = read_response(&mut s);
    stat.assert_ok("stat");
    assert_eq!(stat.get("id"), &json!(3));
    assert_eq!(stat.get("filesize"), &json!(data.len()));
    server.assert_alive("after a pipelined upload");
}

#[test]
fn an_upload_whose_sender_closes_after_the_last_byte_is_stored() {
    let scratch = Scratch::new("pause-close");
    let mut server = start(&scratch, PAUSING);
    for (i, how) in [Shutdown::Write, Shutdown::Both].into_iter().enumerate() {
        let data = body(20 + i as u64, 2);
        let name = format!("closed-{i}");
        let mut s = connect(&server);
        send(
            &mut s,
            &request(json!({"cmd": "put", "filename": name}), &data),
        );
        s.flush().unwrap();
        s.shutdown(how).unwrap();
        drop(s);
        // PROTOCOL.md: a body received whole is stored, whether or not its answer is read.
        let stored = util::wait_until(Duration::from_secs(20), || {
            std::fs::read(scratch.data().join(&name)).is_ok_and(|d| d == data)
        });
        assert!(
            stored,
            "{name} ({how:?}) was not stored: {:?}",
            scratch.data_names()
        );
        assert!(
            util::wait_until(Duration::from_secs(10), || temporaries(&scratch.data())
                .is_empty()),
            "temporaries left: {:?}",
            scratch.data_names()
        );
    }
    let mut s = connect(&server);
    let r = call(&mut s, json!({"cmd": "stat", "filename": "closed-0"}), b"");
    r.assert_ok("stat");
    server.assert_alive("after senders that left");
}

#[test]
fn a_sender_that_stops_mid_body_is_closed_by_the_idle_timeout_and_leaves_nothing() {
    let scratch = Scratch::new("pause-stall");
    let mut extra = PAUSING.to_vec();
    extra.extend(["--idle-timeout", "1s"]);
    let mut server = start(&scratch, &extra);
    let mut s = connect(&server);
    let data = body(30, 1);
    let frame = request(json!({"cmd": "put", "filename": "stalled"}), &data);
    // The header and half the body, then silence.
    send(&mut s, &frame[..frame.len() / 2]);
    assert!(
        util::wait_until(Duration::from_secs(10), || !temporaries(&scratch.data())
            .is_empty()),
        "the upload never started"
    );
    match util::read_to_end_timeout(&mut s, Duration::from_secs(15)) {
        (got, util::End::Eof | util::End::Reset) => {
            assert!(got.is_empty(), "no answer is due: {got:?}")
        }
        (got, end) => panic!("the idle timeout did not close the stalled sender: {end:?} {got:?}"),
    }
    wait_dir_empty(&scratch.data(), Duration::from_secs(10), "a stalled upload");
    // Another client is served all along.
    let mut other = connect(&server);
    put_checked(&mut other, "after", b"after a stalled sender");
    server.assert_alive("after a stalled sender");
}

#[test]
fn a_body_longer_than_announced_is_a_bad_frame_after_the_put_is_answered() {
    let scratch = Scratch::new("pause-long");
    let mut server = start(&scratch, PAUSING);
    let mut s = connect(&server);
    let data = body(40, 2);
    let mut bytes = request(json!({"cmd": "put", "filename": "long", "id": 1}), &data);
    // Bytes past the announced size are the next frame's length prefix: 'XXXX' announces a
    // header far over --max-header.
    bytes.extend_from_slice(&[b'X'; 4096]);
    send(&mut s, &bytes);
    let r = read_response(&mut s);
    r.assert_ok("put");
    assert_eq!(r.get("md5"), &json!(md5_hex(&data)));
    let r = read_response(&mut s);
    r.assert_error("bad_frame", None);
    assert_closed(&mut s, "a bad frame after the body");
    assert_stored(&scratch, "long", &data);
    let mut other = connect(&server);
    put_checked(&mut other, "other", b"served");
    server.assert_alive("after a body longer than announced");
}

#[test]
fn a_disk_that_fills_during_the_commit_is_an_io_error_that_leaves_nothing() {
    if !util::root_or_skip(
        "a_disk_that_fills_during_the_commit_is_an_io_error_that_leaves_nothing",
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let scratch = Scratch::new("pause-commit-full");
    // Room for the bytes, but not for one more inode's worth of metadata: tmpfs charges the md5
    // the commit records (an extended attribute) to the same space as inodes, so the writes
    // succeed and the commit fails with ENOSPC.
    let tmpfs = Tmpfs::mount_with(&scratch.data(), "size=16m,nr_inodes=2")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut server = start(&scratch, PAUSING);
    let mut s = connect(&server);
    let data = body(50, 2);
    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "nospace", "id": "c"}),
        &data,
    );
    r.assert_error("io", Some("put"));
    assert_eq!(r.get("id"), &json!("c"));
    let msg = r.message().to_ascii_lowercase();
    assert!(
        msg.contains("full"),
        "the message says the disk is full: {msg}"
    );
    wait_dir_empty(&scratch.data(), Duration::from_secs(10), "a failed commit");
    assert_usable(&mut s, "a failed commit");
    server.assert_alive("after a failed commit");
    drop(s);
    drop(server);
    drop(tmpfs);
}

#[test]
fn the_put_client_without_verification_sends_by_sendfile_and_is_answered() {
    let scratch = Scratch::new("pause-client");
    let path = scratch.root.path().join("files.sock");
    let unix = format!("unix:{}", path.display());
    let cmd = files_cmd(&["127.0.0.1:0", unix.as_str()], &scratch.data(), PAUSING);
    let mut server = util::Server::start_cmd(cmd);
    // Over 4 MiB, so the client's sendfile loop takes more than one turn.
    let data = body(60, 9);
    let local = scratch.root.path().join("local.bin");
    std::fs::write(&local, &data).unwrap();
    let tcp = server.tcp("files").to_string();
    for (name, addr) in [("nv-tcp", tcp.as_str()), ("nv-unix", unix.as_str())] {
        let out = util::run_socklab(
            [
                "put",
                local.to_str().unwrap(),
                "--as",
                name,
                "--no-verify",
                "--addr",
                addr,
            ],
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "put --no-verify over {addr}: {:?} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&md5_hex(&data)),
            "the answer names the md5: {stdout}"
        );
        assert_stored(&scratch, name, &data);
    }
    server.assert_alive("after put --no-verify");
}
