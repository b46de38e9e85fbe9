//! `files` error answers over real sockets: every error code a client can reach without
//! `exec` configured (`unknown_cmd`, `bad_request`, `bad_filename`, `not_found`, `too_large`,
//! `md5_mismatch`, `io` from a vanished data directory and from a full disk, `exec_disabled`,
//! `bad_frame`), with the connection still usable after each request error and closed after
//! each malformed frame; and file-name attacks that must not reach outside the data directory.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use files_support::*;
use serde_json::{Value, json};

#[test]
fn request_errors_answer_a_code_and_keep_the_connection() {
    let scratch = Scratch::new("errors");
    let server = start(&scratch, &["--max-upload", "10KiB"]);
    let mut s = connect(&server);

    let r = call(&mut s, json!({"cmd": "nope", "id": 9}), b"");
    r.assert_error("unknown_cmd", None);
    assert_eq!(r.get("id"), &json!(9), "the id is copied into an error");
    assert_usable(&mut s, "unknown_cmd");

    // An unknown command with a body: the body is skipped, not taken for a frame.
    let r = call(
        &mut s,
        json!({"cmd": "frobnicate"}),
        &frame(&json!({"cmd": "ping"}), b""),
    );
    r.assert_error("unknown_cmd", None);
    assert_usable(&mut s, "unknown_cmd with a body");

    for (header, what) in [
        (json!({"id": 1}), "missing cmd"),
        (json!({"cmd": 5, "id": 1}), "numeric cmd"),
        (json!({"cmd": null, "id": 1}), "null cmd"),
        (json!({"cmd": ["ping"], "id": 1}), "array cmd"),
    ] {
        let r = call(&mut s, header, b"");
        r.assert_error("bad_request", None);
        assert_eq!(r.get("id"), &json!(1), "{what}");
        assert_usable(&mut s, what);
    }

    // `id` at most 1024 bytes as compact JSON.
    let at_limit = "i".repeat(1022); // 1024 bytes with its quotes
    let r = call(&mut s, json!({"cmd": "ping", "id": at_limit}), b"");
    r.assert_ok("ping");
    assert_eq!(r.get("id"), &json!(at_limit));
    let r = call(&mut s, json!({"cmd": "ping", "id": "i".repeat(1023)}), b"");
    r.assert_error("bad_request", None);
    assert_usable(&mut s, "an id of 1025 bytes");
    let r = call(
        &mut s,
        json!({"cmd": "ping", "id": {"k": "v".repeat(2000)}}),
        b"",
    );
    r.assert_error("bad_request", None);
    assert_usable(&mut s, "an id of 2000 bytes");

    // Missing filename: bad_request, and a put's body is skipped.
    let r = call(&mut s, json!({"cmd": "put", "id": "p"}), b"abc");
    r.assert_error("bad_request", Some("put"));
    assert_eq!(r.get("id"), &json!("p"));
    assert_usable(&mut s, "a put without filename");
    for cmd in ["get", "stat"] {
        call(&mut s, json!({"cmd": cmd}), b"").assert_error("bad_request", Some(cmd));
        assert_usable(&mut s, &format!("a {cmd} without filename"));
    }
    // A filename that is not a string.
    let r = call(&mut s, json!({"cmd": "put", "filename": 42}), b"xyz");
    r.assert_error("bad_filename", Some("put"));
    assert_usable(&mut s, "a numeric filename");

    for cmd in ["get", "stat"] {
        let r = call(
            &mut s,
            json!({"cmd": cmd, "filename": "missing", "id": cmd}),
            b"",
        );
        r.assert_error("not_found", Some(cmd));
        assert_eq!(r.get("id"), &json!(cmd));
        assert_usable(&mut s, &format!("{cmd} of a missing file"));
    }

    // --max-upload 10KiB: exactly the limit is fine, one byte more is too_large, decided from
    // the announced size; the body is skipped and nothing is stored.
    put_ok(&mut s, "limit", &[b'l'; 10 * 1024]);
    let big = util::Rng::new(3).bytes(10 * 1024 + 1);
    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "big", "id": "tl"}),
        &big,
    );
    r.assert_error("too_large", Some("put"));
    assert_eq!(r.get("id"), &json!("tl"));
    assert_usable(&mut s, "too_large");
    // The body of a refused upload may be larger than any buffer: still skipped.
    let huge = util::Rng::new(4).bytes(3 << 20);
    let r = call(&mut s, json!({"cmd": "put", "filename": "big"}), &huge);
    r.assert_error("too_large", Some("put"));
    assert_usable(&mut s, "too_large with 3 MiB of body");
    assert!(
        !scratch.data().join("big").exists(),
        "a too_large upload was stored"
    );

    // md5 given and wrong: nothing stored, and an older file of that name is untouched.
    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "m", "md5": md5_hex(b"something else")}),
        b"content",
    );
    r.assert_error("md5_mismatch", Some("put"));
    assert_usable(&mut s, "md5_mismatch");
    assert!(
        !scratch.data().join("m").exists(),
        "md5_mismatch stored a file"
    );
    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "limit", "md5": "0".repeat(32)}),
        b"replacement",
    );
    r.assert_error("md5_mismatch", Some("put"));
    assert_eq!(
        std::fs::read(scratch.data().join("limit")).unwrap(),
        vec![b'l'; 10 * 1024],
        "md5_mismatch replaced an existing file"
    );

    let r = call(
        &mut s,
        json!({"cmd": "exec", "argv": ["true"], "id": "x"}),
        b"",
    );
    r.assert_error("exec_disabled", Some("exec"));
    assert_eq!(r.get("id"), &json!("x"));
    assert_usable(&mut s, "exec_disabled");

    assert_eq!(
        scratch.data_names(),
        ["limit"],
        "only the one good upload is stored, no temporaries"
    );
}

/// What a malformed frame looks like on the wire.
fn malformed_frames() -> Vec<(&'static str, Vec<u8>, Option<Value>)> {
    let obj = |v: Value| serde_json::to_vec(&v).unwrap();
    vec![
        ("H = 0", 0u32.to_le_bytes().to_vec(), None),
        // Only H: the server must not wait for a header it will never accept.
        ("H = max + 1", 1025u32.to_le_bytes().to_vec(), None),
        (
            "H = -1 as struct.pack('i')",
            (-1i32).to_le_bytes().to_vec(),
            None,
        ),
        ("header not UTF-8", frame_raw(b"\xff\xfe{}", b""), None),
        ("header not JSON", frame_raw(b"{cmd: ping}", b""), None),
        (
            "header truncated JSON",
            frame_raw(b"{\"cmd\":\"ping\"", b""),
            None,
        ),
        ("header a JSON array", frame_raw(b"[\"ping\"]", b""), None),
        ("header a JSON string", frame_raw(b"\"ping\"", b""), None),
        ("header a JSON number", frame_raw(b"42", b""), None),
        ("header JSON null", frame_raw(b"null", b""), None),
        (
            "negative size",
            frame_raw(&obj(json!({"cmd": "ping", "size": -1, "id": 5})), b""),
            Some(json!(5)),
        ),
        (
            "size a string",
            frame_raw(&obj(json!({"cmd": "echo", "size": "3", "id": "s"})), b"abc"),
            Some(json!("s")),
        ),
        (
            "size a fraction",
            frame_raw(&obj(json!({"cmd": "echo", "size": 1.5})), b"a"),
            None,
        ),
        (
            "negative filesize",
            frame_raw(
                &obj(json!({"cmd": "put", "filename": "f", "filesize": -2})),
                b"",
            ),
            None,
        ),
        (
            "size and filesize differ",
            frame_raw(
                &obj(json!({"cmd": "put", "filename": "f", "size": 2, "filesize": 3, "id": [1]})),
                b"abc",
            ),
            Some(json!([1])),
        ),
    ]
}

#[test]
fn malformed_frames_get_bad_frame_and_a_close() {
    let scratch = Scratch::new("bad-frame");
    let server = start(&scratch, &["--max-header", "1KiB"]);
    for (what, bytes, id) in malformed_frames() {
        let mut s = connect(&server);
        send(&mut s, &bytes);
        let r = try_read_response(&mut s, T).unwrap_or_else(|e| panic!("{what}: {e}"));
        r.assert_error("bad_frame", None);
        if let Some(id) = id {
            assert_eq!(
                r.get("id"),
                &id,
                "{what}: the id of an object header is copied"
            );
        }
        assert_closed(&mut s, what);
    }

    // The limit itself: a header of exactly --max-header bytes is accepted.
    let mut s = connect(&server);
    send(&mut s, &frame_raw(&ping_header_of_len(1024), b""));
    read_response(&mut s).assert_ok("ping");

    // Requests before a malformed frame in the same write are answered first.
    let mut batch = request(json!({"cmd": "ping", "id": "before"}), b"");
    batch.extend(0u32.to_le_bytes());
    send(&mut s, &batch);
    let r = read_response(&mut s);
    r.assert_ok("ping");
    assert_eq!(r.get("id"), &json!("before"));
    read_response(&mut s).assert_error("bad_frame", None);
    assert_closed(&mut s, "a bad frame after a good one");

    // And the server still serves others.
    let mut s = connect(&server);
    assert_usable(&mut s, "many malformed frames on other connections");
    assert!(
        scratch.data_names().is_empty(),
        "{:?}",
        scratch.data_names()
    );
}

#[test]
fn the_default_header_limit_is_64_kib() {
    let scratch = Scratch::new("max-header-default");
    let server = start(&scratch, &[]);
    let mut s = connect(&server);
    send(&mut s, &frame_raw(&ping_header_of_len(65536), b""));
    read_response(&mut s).assert_ok("ping");
    send(&mut s, &(65537u32).to_le_bytes());
    read_response(&mut s).assert_error("bad_frame", None);
    assert_closed(&mut s, "H = 64 KiB + 1");
}

#[test]
fn file_name_attacks_are_bad_filename_and_reach_nothing() {
    let scratch = Scratch::new("names");
    let server = start(&scratch, &[]);
    let mut s = connect(&server);
    let root = scratch.root.path().to_str().unwrap().to_string();
    let passwd_before = std::fs::read("/etc/passwd").ok();
    // `../../x` from the data directory is `x` beside the scratch root.
    let beside = scratch.root.path().parent().unwrap().join("x");
    let beside_before = beside.exists();
    let long = "x".repeat(256);
    let abs_in_root = format!("{root}/abs");
    let bad: Vec<&str> = vec![
        "../x",
        "../../x",
        "/etc/passwd",
        &abs_in_root,
        "a/b",
        "x/",
        "/",
        "..",
        ".",
        "",
        "a\0b",
        "\0",
        &long,
        "a\\b",
        "..\\x",
        ".socklab-x",
        ".socklab-tmp-1-1",
    ];
    for name in &bad {
        let what = format!("filename {name:?}");
        // The wrong md5 makes sure that even a server that let the name through could not
        // overwrite anything (this test may run as root).
        let r = call(
            &mut s,
            json!({"cmd": "put", "filename": name, "md5": "0".repeat(32), "id": name}),
            b"attack",
        );
        r.assert_error("bad_filename", Some("put"));
        assert_eq!(r.get("id"), &json!(name), "{what}");
        assert_usable(&mut s, &what);
        for cmd in ["get", "stat"] {
            call(&mut s, json!({"cmd": cmd, "filename": name}), b"")
                .assert_error("bad_filename", Some(cmd));
            assert_usable(&mut s, &format!("{cmd} of {what}"));
        }
    }
    // Relative escapes and the absolute path into the scratch root, with no md5 to stop them.
    for name in ["../x", "../../x", &abs_in_root, "a/b", "a\\b", ".socklab-x"] {
        call(&mut s, json!({"cmd": "put", "filename": name}), b"attack")
            .assert_error("bad_filename", Some("put"));
    }
    assert_usable(&mut s, "every attack");
    assert_eq!(
        scratch.root_names(),
        ["data"],
        "nothing created beside the data directory"
    );
    assert!(
        scratch.data_names().is_empty(),
        "{:?}",
        scratch.data_names()
    );
    assert_eq!(beside.exists(), beside_before, "{beside:?} was created");
    assert_eq!(std::fs::read("/etc/passwd").ok(), passwd_before);
}

#[test]
fn a_vanished_data_directory_is_an_io_error_not_a_crash() {
    let scratch = Scratch::new("io");
    let mut server = start(&scratch, &[]);
    let mut s = connect(&server);
    put_ok(&mut s, "before", b"stored before");
    std::fs::remove_dir_all(scratch.data()).unwrap();

    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "after", "id": 1}),
        b"lost",
    );
    r.assert_error("io", Some("put"));
    assert_eq!(r.get("id"), &json!(1));
    assert_usable(&mut s, "io on put");
    let r = call(&mut s, json!({"cmd": "list"}), b"");
    r.assert_error("io", Some("list"));
    assert_usable(&mut s, "io on list");
    server.assert_alive("after io errors");

    // Once the directory is back, the server works again.
    std::fs::create_dir_all(scratch.data()).unwrap();
    put_ok(&mut s, "again", b"works again");
}

#[test]
fn a_full_disk_is_an_io_error_that_leaves_nothing() {
    if !util::root_or_skip(
        "a_full_disk_is_an_io_error_that_leaves_nothing",
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let scratch = Scratch::new("enospc");
    let tmpfs = Tmpfs::mount(&scratch.data(), "1m").unwrap_or_else(|e| panic!("{e}"));
    let mut server = start(&scratch, &[]);
    let mut s = connect(&server);

    let data = util::Rng::new(2).bytes(2 << 20);
    let r = call(
        &mut s,
        json!({"cmd": "put", "filename": "big", "id": "full"}),
        &data,
    );
    r.assert_error("io", Some("put"));
    assert_eq!(r.get("id"), &json!("full"));
    let msg = r.message().to_ascii_lowercase();
    assert!(
        msg.contains("full") || msg.contains("no space"),
        "the message should say the disk is full: {:?}",
        r.message()
    );
    assert!(
        scratch.data_names().is_empty(),
        "a failed upload left {:?}",
        scratch.data_names()
    );

    // Still serving, and the space is free again for a file that fits.
    assert_usable(&mut s, "ENOSPC");
    put_ok(&mut s, "fits", &data[..512 * 1024]);
    let r = call(&mut s, json!({"cmd": "get", "filename": "fits"}), b"");
    r.assert_ok("get");
    assert!(
        r.body == data[..512 * 1024],
        "the file after ENOSPC differs"
    );
    server.assert_alive("after ENOSPC");

    drop(s);
    drop(server);
    drop(tmpfs);
    // Unmounted: the mount point is an ordinary empty directory again.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(scratch.data().to_str().unwrap()),
        "the tmpfs is still mounted"
    );
}
