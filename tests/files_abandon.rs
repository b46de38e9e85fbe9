//! `files` uploads that never finish, over real sockets: a client that goes away mid-upload
//! (closing or resetting its socket) leaves no file and no temporary; a `put` announcing a
//! terabyte is streamed with constant server memory (VmRSS from /proc) and leaves nothing
//! when abandoned; SIGTERM during an upload exits 0 and leaves no temporary.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use files_support::*;
use serde_json::json;

/// How long the server may take to notice a client is gone and clean up.
const CLEANUP: Duration = Duration::from_secs(10);

/// Starts an upload of `announced` bytes as `name` and sends `send` bytes of it; waits
/// (bounded) until the server's temporary shows up in the data directory.
fn start_upload(
    server: &util::Server,
    scratch: &Scratch,
    name: &str,
    announced: u64,
    send_n: usize,
) -> TcpStream {
    let mut s = connect(server);
    send(
        &mut s,
        &frame(
            &json!({"cmd": "put", "filename": name, "size": announced}),
            b"",
        ),
    );
    let chunk = util::Rng::new(announced).bytes(1 << 20);
    let mut sent = 0;
    while sent < send_n {
        let n = (send_n - sent).min(chunk.len());
        send(&mut s, &chunk[..n]);
        sent += n;
    }
    assert!(
        util::wait_until(CLEANUP, || !temporaries(&scratch.data()).is_empty()),
        "no temporary appeared in {:?} during an upload: {:?}",
        scratch.data(),
        scratch.data_names()
    );
    s
}

/// Makes the next close of `s` send a reset instead of a FIN (SO_LINGER with a zero timeout).
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

#[test]
fn a_client_gone_mid_upload_leaves_no_file_and_no_temporary() {
    let scratch = Scratch::new("gone");
    let mut server = start(&scratch, &[]);

    // Closed (FIN) after 5 MiB of an announced 100 MiB.
    let s = start_upload(&server, &scratch, "closed", 100 << 20, 5 << 20);
    drop(s);
    wait_dir_empty(&scratch.data(), CLEANUP, "after a client closed mid-upload");

    // Reset (RST) after 5 MiB.
    let s = start_upload(&server, &scratch, "reset", 100 << 20, 5 << 20);
    set_linger_zero(&s);
    drop(s);
    wait_dir_empty(&scratch.data(), CLEANUP, "after a client reset mid-upload");

    // Half-closed: the client shuts down its side with the body incomplete.
    let s = start_upload(&server, &scratch, "half", 100 << 20, 1 << 20);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wait_dir_empty(
        &scratch.data(),
        CLEANUP,
        "after a client half-closed mid-upload",
    );
    drop(s);

    server.assert_alive("after abandoned uploads");
    let mut s = connect(&server);
    assert_usable(&mut s, "abandoned uploads on other connections");
    let r = call(&mut s, json!({"cmd": "list"}), b"");
    assert_eq!(r.body, b"[]", "nothing listed after abandoned uploads");
}

#[test]
fn a_terabyte_put_streams_in_constant_memory_and_leaves_nothing() {
    const STREAM: u64 = 200 << 20;
    const MAX_GROWTH_KIB: u64 = 16 * 1024;
    let scratch = Scratch::new("terabyte");
    let mut server = start(&scratch, &[]);
    let pid = server.pid();

    let mut s = start_upload(&server, &scratch, "tb", 1 << 40, 8 << 20);
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // After 8 MiB the server's buffers are as large as they will get, if it streams.
    let base = rss_kib(pid);
    let hwm_base = vm_kib(pid, "VmHWM");
    let chunk = util::Rng::new(40).bytes(1 << 20);
    let mut peak = base;
    let start = Instant::now();
    let mut sent = 8u64 << 20;
    while sent < STREAM {
        s.write_all(&chunk).unwrap_or_else(|e| {
            panic!(
                "write failed after {sent} bytes: {e}\n--- stderr ---\n{}",
                server.stderr()
            )
        });
        sent += chunk.len() as u64;
        if sent.is_multiple_of(4 << 20) {
            peak = peak.max(rss_kib(pid));
        }
    }
    // Everything sent has reached the temporary (bounded): the server really read it all.
    let tmp_len = || {
        temporaries(&scratch.data())
            .first()
            .and_then(|t| std::fs::metadata(scratch.data().join(t)).ok())
            .map_or(0, |m| m.len())
    };
    let got_all = util::wait_until(Duration::from_secs(30), || {
        peak = peak.max(rss_kib(pid));
        tmp_len() >= sent
    });
    assert!(
        got_all,
        "the temporary holds {} of the {sent} bytes sent",
        tmp_len()
    );
    let hwm = vm_kib(pid, "VmHWM");
    eprintln!(
        "streamed {} MiB in {:?}; VmRSS {base} KiB before, peak {peak} KiB; VmHWM {hwm_base} -> {hwm} KiB",
        sent >> 20,
        start.elapsed()
    );
    assert!(
        peak.saturating_sub(base) < MAX_GROWTH_KIB,
        "server VmRSS grew from {base} KiB to {peak} KiB while streaming {} MiB",
        sent >> 20
    );
    assert!(
        hwm.saturating_sub(hwm_base.max(base)) < MAX_GROWTH_KIB,
        "server VmHWM grew from {hwm_base} KiB to {hwm} KiB while streaming"
    );

    drop(s);
    wait_dir_empty(&scratch.data(), CLEANUP, "after abandoning a terabyte put");
    server.assert_alive("after a terabyte put");
}

#[test]
fn sigterm_during_an_upload_exits_0_and_leaves_no_temporary() {
    let scratch = Scratch::new("sigterm");
    let mut server = start(&scratch, &["--shutdown-grace", "2s"]);
    let mut done = connect(&server);
    put_ok(&mut done, "finished", b"a finished upload stays");
    let s = start_upload(&server, &scratch, "unfinished", 100 << 20, 4 << 20);

    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the server did not exit within 10 s of SIGTERM\n--- stderr ---\n{}",
                server.stderr()
            )
        });
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n--- stderr ---\n{}",
        server.stderr()
    );
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());
    assert_eq!(
        scratch.data_names(),
        ["finished"],
        "after SIGTERM mid-upload only the finished file may remain"
    );
    drop(s);
}
