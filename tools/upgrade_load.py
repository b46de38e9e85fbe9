#!/usr/bin/env python3
"""Load through one `socklab serve` while it is upgraded N times in a row (issue 18, deliverable 5).

Run by tools/upgrade-under-load.sh (read its header for the options); standard library only.

It starts `BIN serve` with echo, files (loopback, no auth) and chat on 127.0.0.1:0 and a control
socket, learns the ports from its `listening` lines, and runs, until the last upgrade is done:
  probes    new connections at --rate per second: connect, one echo line, its reply, close
  echo      --kept connections, each sending batches of --window echo lines and reading them back
  files     --kept connections, each sending batches of --window `ping`/`stat` frames, each with
            its `id`, and checking every response (in order, same id, stat's size and md5)
  uploads   --uploads clients, each one `put` of --upload-mib MiB (random bytes, md5 in the
            header) per connection, back to back; the answer must carry the same md5
  chat      --members members, each sending numbered lines, each line followed by `/who`
meanwhile it runs `BIN reload --control PATH` --upgrades times, --interval seconds apart, each
waiting for `reloaded: pid=NEW`; then it stops the load, `stat`s every uploaded name, sends
SIGTERM to the last server and waits for every server process to exit. It prints a table and
exits 0 only when every failure count is 0.

What is counted (the definitions the table's figures follow):
- refused: a connect() refused (ECONNREFUSED) or not completed within --timeout.
- reset: a connection that ended with ECONNRESET/EPIPE, at any point.
- no reply: a request that got no complete reply: its connection timed out (--timeout), or it
  ended cleanly (EOF) before the reply both on its connection and on the one it was re-sent on.
- re-sent (not a failure): requests outstanding when their connection ended cleanly. The drain
  contract (PROTOCOL.md "Shutdown") answers every byte that had reached the old server when it
  started draining and reads nothing after it, then closes cleanly; a client that pipelines
  across that moment re-sends what was not answered, once, on a new connection (which lands on
  the new server). The count shows how often that happened.
- wrong: a reply that is not the request's (echo bytes that differ, a frame with another id,
  `ok: false`, a stat whose size or md5 is not the uploaded file's).
- uploads failed: a put answered with an error or a wrong md5, reset, or without an answer
  after its one re-send; corrupted: a stored name whose final `stat` md5 is not the last upload's.
- chat lines lost: the old and the new server do NOT share a room: a member connected to the
  old process stays there until it drains (`* server shutting down`, then EOF) and then
  reconnects, landing on the new one. A line is owed once the server has read it: each line is
  followed by `/who`, and the `* members: …` answer (lines are handled in order) proves that
  the line was read and handed to every member listed, all on the same process. A line is lost
  for each listed member (other than its sender, and other than members not yet renamed from
  `guest-N`) that never received it before its own connection ended. Lines without that answer
  when the sender's connection ended were not read by the old server and are re-sent on the
  new one (counted in re-sent).
- servers not exited / exited non-zero: each server process (the first and every successor)
  must exit, with status 0, within --timeout of its drain (the script makes itself the
  child subreaper, so it can collect successors' statuses).
"""
import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

FAILURES = ["refused", "reset", "no reply", "wrong", "uploads failed", "uploads corrupted",
            "chat lines lost", "servers not exited", "servers exited non-zero"]


class Stats:
    """Thread-safe counters, per kind of client."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows = {}

    def add(self, who, what, n=1):
        with self.lock:
            row = self.rows.setdefault(who, {})
            row[what] = row.get(what, 0) + n


STATS = Stats()
STOP = threading.Event()


class Ended(Exception):
    """The connection ended: `how` is `eof`, `reset` or `timeout`."""

    def __init__(self, how):
        super().__init__(how)
        self.how = how


def classify(e):
    if isinstance(e, Ended):
        return e.how
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    return "reset"


def connect(addr, timeout, who):
    """A connected socket, or None after counting the refusal."""
    try:
        s = socket.create_connection(addr, timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    except (ConnectionRefusedError, socket.timeout) as e:
        STATS.add(who, "refused")
        print(f"{who}: connect refused: {e}", file=sys.stderr)
        return None


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except socket.timeout as e:
            raise Ended("timeout") from e
        except OSError as e:
            raise Ended("reset") from e
        if not chunk:
            raise Ended("eof")
        buf += chunk
    return bytes(buf)


def frame(header, body=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(h)) + h + body


def read_frame(s):
    (hlen,) = struct.unpack("<I", recv_exact(s, 4))
    header = json.loads(recv_exact(s, hlen))
    size = header.get("size", 0)
    return header, recv_exact(s, size) if size else b""


def failed(who, how, outstanding):
    """Counts a connection that ended by a reset or a timeout with `outstanding` unanswered."""
    if how == "reset":
        STATS.add(who, "reset")
    STATS.add(who, "no reply", outstanding)


# ---------------------------------------------------------------- probes: one request a connection

def probe_once(addr, timeout, n, resend):
    msg = b"probe-%09d\n" % n
    s = connect(addr, timeout, "probes")
    if s is None:
        return
    try:
        with s:
            s.sendall(msg)
            got = recv_exact(s, len(msg))
        STATS.add("probes", "answered")
        if got != msg:
            STATS.add("probes", "wrong")
    except (Ended, OSError) as e:
        how = classify(e)
        if how == "eof" and resend:
            STATS.add("probes", "re-sent")
            probe_once(addr, timeout, n, False)
        else:
            failed("probes", how, 1)


def probes(addr, rate, timeout):
    n, start = 0, time.monotonic()
    while not STOP.is_set():
        probe_once(addr, timeout, n, True)
        n += 1
        STOP.wait(max(0.0, start + n / rate - time.monotonic()))


# ---------------------------------------------------------------- kept pipelined connections

def kept(who, addr, timeout, window, make, check):
    """Batches of `window` requests on one connection; what a clean end left unanswered is
    re-sent once on a new connection. `make(seq)` gives (bytes, expected), `check(s, expected)`
    reads one reply and says whether it is right."""
    seq, pending, resent = 0, [], set()  # pending: (seq, request bytes, expected)
    while not (STOP.is_set() and not pending):
        s = connect(addr, timeout, who)
        if s is None:
            if STOP.wait(0.1):
                STATS.add(who, "no reply", len(pending))
                return
            continue
        with s:
            while True:
                if not pending:
                    if STOP.is_set():
                        return
                    pending = [(seq + i,) + make(seq + i) for i in range(window)]
                    seq += window
                try:
                    s.sendall(b"".join(p[1] for p in pending))
                    while pending:
                        if not check(s, pending[0][2]):
                            STATS.add(who, "wrong")
                        STATS.add(who, "answered")
                        pending.pop(0)
                except (Ended, OSError) as e:
                    how = classify(e)
                    if how == "eof":
                        twice = [p for p in pending if p[0] in resent]
                        STATS.add(who, "no reply", len(twice))
                        pending = [p for p in pending if p[0] not in resent]
                        STATS.add(who, "re-sent", len(pending))
                        resent.update(p[0] for p in pending)
                    else:
                        failed(who, how, len(pending))
                        pending = []
                    break


def echo_make(c):
    def make(seq):
        msg = b"kept-%03d-%09d\n" % (c, seq)
        return msg, msg
    return make


def echo_check(s, expected):
    return recv_exact(s, len(expected)) == expected


def files_make(fixture):
    name, size, md5 = fixture

    def make(seq):
        if seq % 2:
            return frame({"cmd": "stat", "filename": name, "id": seq}), ("stat", seq)
        return frame({"cmd": "ping", "id": seq}), ("ping", seq)

    def check(s, expected):
        header, _ = read_frame(s)
        cmd, seq = expected
        good = header.get("ok") is True and header.get("id") == seq and header.get("cmd") == cmd
        if cmd == "stat":
            good = good and header.get("filesize") == size and header.get("md5") == md5
        if not good:
            print(f"files: wrong reply {header} for {expected}", file=sys.stderr)
        return good
    return make, check


# ---------------------------------------------------------------- uploads

def put(addr, timeout, name, body, md5):
    """`ok`, `wrong` or the way the connection ended."""
    s = connect(addr, timeout, "uploads")
    if s is None:
        return "refused"
    try:
        with s:
            s.sendall(frame({"cmd": "put", "filename": name, "size": len(body), "md5": md5}))
            s.sendall(body)
            header, _ = read_frame(s)
    except (Ended, OSError) as e:
        return classify(e)
    if header.get("ok") is True and header.get("md5") == md5 and header.get("filesize") == len(body):
        return "ok"
    print(f"uploads: {name}: answered {header}", file=sys.stderr)
    return "wrong"


def uploads(addr, timeout, mib, t, stored, pause):
    n = 0
    while not STOP.is_set():
        name = f"up-{t}-{n % 3}"
        body = os.urandom(mib * 1024 * 1024)
        md5 = hashlib.md5(body).hexdigest()
        outcome = put(addr, timeout, name, body, md5)
        if outcome == "eof":
            STATS.add("uploads", "re-sent")
            outcome = put(addr, timeout, name, body, md5)
        if outcome == "ok":
            STATS.add("uploads", "answered")
            stored[name] = (len(body), md5)
        else:
            # refused was counted by connect(); eof is after the one re-send
            STATS.add("uploads", "uploads failed")
            if outcome == "reset":
                STATS.add("uploads", "reset")
        n += 1
        STOP.wait(pause)


def verify_stored(addr, timeout, stored):
    s = connect(addr, timeout, "uploads")
    if s is None:
        return
    with s:
        for name, (size, md5) in sorted(stored.items()):
            try:
                s.sendall(frame({"cmd": "stat", "filename": name}))
                header, _ = read_frame(s)
            except (Ended, OSError) as e:
                print(f"stat {name}: {classify(e)}", file=sys.stderr)
                STATS.add("uploads", "uploads corrupted")
                continue
            if header.get("filesize") != size or header.get("md5") != md5:
                print(f"stat {name}: {header}, uploaded {size} {md5}", file=sys.stderr)
                STATS.add("uploads", "uploads corrupted")


# ---------------------------------------------------------------- chat

class Chat:
    """Every member's record: what each nick received, and every line the server confirmed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = {}  # nick -> set of texts
        self.acked = []  # (sender nick, text, [member nicks])


def read_line(s, buf):
    while b"\n" not in buf:
        try:
            chunk = s.recv(65536)
        except socket.timeout as e:
            raise Ended("timeout") from e
        except OSError as e:
            raise Ended("reset") from e
        if not chunk:
            raise Ended("eof")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def member_session(addr, timeout, chat, i, k, backlog, rate):
    """One connection of member i (its k-th). Returns the lines still to send, or None when the
    member is done (the server's end after STOP)."""
    nick = f"m{i}x{k}"
    s = connect(addr, timeout, "chat")
    if s is None:
        STOP.wait(0.1)
        return backlog
    got, buf, seq = set(), bytearray(), 0
    with chat.lock:
        chat.received[nick] = got
    try:
        with s:
            line = read_line(s, buf)
            if not line.startswith("* welcome "):
                STATS.add("chat", "wrong")
            s.sendall(f"/nick {nick}\n".encode())
            while not line.endswith(f" is now {nick}"):
                line = read_line(s, buf)
                note(line, got)
            while True:
                if STOP.is_set() and not backlog:
                    s.settimeout(timeout * 3)
                    while True:
                        line = read_line(s, buf)
                        note(line, got)
                text = backlog[0] if backlog else f"m{i} {time.monotonic_ns()}-{seq}"
                seq += 1
                if not backlog:
                    backlog.append(text)
                s.sendall(f"{text}\n/who\n".encode())
                while True:
                    line = read_line(s, buf)
                    if line.startswith("* members: "):
                        with chat.lock:
                            chat.acked.append((nick, text, line[len("* members: "):].split(", ")))
                        backlog.pop(0)
                        STATS.add("chat", "answered")
                        break
                    note(line, got)
                STOP.wait(1.0 / rate)
    except (Ended, OSError) as e:
        how = classify(e)
        if how != "eof":
            STATS.add("chat", how if how == "reset" else "no reply")
        if STOP.is_set() and not backlog:
            return None
        STATS.add("chat", "re-sent", len(backlog))
        return backlog


def note(line, got):
    if line == "* server shutting down":
        STATS.add("chat", "drain notices")
    elif line.startswith("* error"):
        STATS.add("chat", "wrong")
        print(f"chat: {line}", file=sys.stderr)
    elif not line.startswith("* "):
        got.add(line.partition(" ")[2])


def member(addr, timeout, chat, i, rate):
    backlog, k = [], 0
    deadline = None
    while backlog is not None:
        backlog = member_session(addr, timeout, chat, i, k, backlog, rate)
        k += 1
        if STOP.is_set():
            deadline = deadline or time.monotonic() + timeout
            if time.monotonic() > deadline:
                STATS.add("chat", "no reply", len(backlog or []))
                return


def chat_lost(chat):
    lost = 0
    for sender, text, members in chat.acked:
        for nick in members:
            if nick == sender or nick.startswith("guest-"):
                continue
            if text not in chat.received.get(nick, ()):
                lost += 1
                print(f"chat: {sender}'s {text!r} never reached {nick}", file=sys.stderr)
    STATS.add("chat", "chat lines lost", lost)
    STATS.add("chat", "lines owed", sum(len(m) - 1 for _, _, m in chat.acked))


# ---------------------------------------------------------------- the servers

class Servers:
    """The first server (our child) and every successor (our children too, as child subreaper)."""

    def __init__(self, args, workdir):
        self.bin = args.bin
        self.control = os.path.join(workdir, "control.sock")
        off = [f"--no-{s}" for s in services(args.bin) if s not in ("echo", "files", "chat")]
        cmd = [args.bin, "serve", "--echo", "127.0.0.1:0", "--files", "127.0.0.1:0",
               "--chat", "127.0.0.1:0", "--data-dir", os.path.join(workdir, "data"),
               "--control", self.control, *off, *args.server_arg]
        os.makedirs(os.path.join(workdir, "data"))
        self.log = open(os.path.join(workdir, "server.log"), "w")
        self.lines, self.cond = [], threading.Condition()
        self.first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.pids, self.status = [self.first.pid], {}
        threading.Thread(target=self.read_stdout, daemon=True).start()

    def read_stdout(self):
        for raw in self.first.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_ready(self, timeout):
        with self.cond:
            if not self.cond.wait_for(lambda: "ready" in self.lines, timeout):
                sys.exit(f"the server printed no `ready` within {timeout} s: {self.lines}")
            ports = {}
            for line in self.lines:
                w = line.split()
                if len(w) >= 4 and w[0] == "listening" and w[2] == "tcp":
                    host, port = w[3].rsplit(":", 1)
                    ports[w[1]] = (host, int(port))
            return ports

    def reload(self, timeout):
        out = subprocess.run([self.bin, "reload", "--control", self.control], timeout=timeout,
                             capture_output=True, text=True)
        words = out.stdout.split()
        pid = next((int(w[4:]) for w in words if w.startswith("pid=") and w[4:].isdigit()), None)
        if out.returncode != 0 or not out.stdout.startswith("reloaded:") or pid is None:
            sys.exit(f"reload failed ({out.returncode}): {out.stdout}{out.stderr}")
        self.pids.append(pid)
        return pid

    def reap(self):
        """Collects every exited child's status (the first through Popen)."""
        if self.first.poll() is not None:
            self.status[self.first.pid] = self.first.returncode
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.status[pid] = os.waitstatus_to_exitcode(st)

    def stop(self, timeout):
        os.kill(self.pids[-1], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if all(p in self.status for p in self.pids):
                break
            time.sleep(0.05)

    def kill_all(self):
        for pid in self.pids:
            if pid not in self.status:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)
        self.reap()


def services(binary):
    """Every service `serve --help` offers as `--NAME <ADDR>` with a `--no-NAME`."""
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True,
                          timeout=30).stdout
    words = text.replace(",", " ").replace("=", " ").split()
    found = []
    for flag, value in zip(words, words[1:]):
        name = flag[2:]
        if flag.startswith("--") and value.startswith("<") and f"--no-{name}" in words:
            found.append(name)
    return found


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--upgrades", type=int, default=10)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--kept", type=int, default=4)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--uploads", type=int, default=2)
    p.add_argument("--upload-mib", type=int, default=10)
    p.add_argument("--upload-pause", type=float, default=0.2)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--chat-rate", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args()

    # SIGTERM (a test's bound, a ^C'd wrapper) still runs the `finally` that kills the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: successors become our children
    workdir = tempfile.mkdtemp(prefix="upgrade-load-")
    servers = Servers(args, workdir)
    code = 1
    try:
        code = run(args, servers, workdir)
        return code
    finally:
        servers.kill_all()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept for a look: {workdir} (server.log, data/)", file=sys.stderr)


def run(args, servers, workdir):
    ports = servers.wait_ready(args.timeout)
    echo, files, chat_addr = ports["echo"], ports["files"], ports["chat"]
    fixture_body = os.urandom(100_000)
    fixture = ("fixture", len(fixture_body), hashlib.md5(fixture_body).hexdigest())
    if put(files, args.timeout, fixture[0], fixture_body, fixture[2]) != "ok":
        sys.exit("could not upload the fixture")
    stored, chat = {}, Chat()
    make, check = files_make(fixture)
    threads = [threading.Thread(target=probes, args=(echo, args.rate, args.timeout))]
    for c in range(args.kept):
        threads.append(threading.Thread(target=kept, args=(
            "echo", echo, args.timeout, args.window, echo_make(c), echo_check)))
        threads.append(threading.Thread(target=kept, args=(
            "files", files, args.timeout, args.window, make, check)))
    for t in range(args.uploads):
        threads.append(threading.Thread(target=uploads, args=(
            files, args.timeout, args.upload_mib, t, stored, args.upload_pause)))
    members = [threading.Thread(target=member, args=(chat_addr, args.timeout, chat, i,
                                                     args.chat_rate))
               for i in range(args.members)]
    for t in threads + members:
        t.daemon = True
        t.start()
    started = time.monotonic()
    for n in range(args.upgrades):
        time.sleep(args.interval)
        pid = servers.reload(args.timeout * 3)
        print(f"upgrade {n + 1}/{args.upgrades}: reloaded: pid={pid} "
              f"at {time.monotonic() - started:.1f} s", flush=True)
    time.sleep(args.interval)
    STOP.set()
    for t in threads:
        t.join(args.timeout * 3)
    verify_stored(files, args.timeout, stored)
    servers.stop(args.timeout)
    for t in members:
        t.join(args.timeout * 3)
    chat_lost(chat)
    servers.reap()
    missing = [p for p in servers.pids if p not in servers.status]
    bad = {p: s for p, s in servers.status.items() if p in servers.pids and s != 0}
    STATS.add("servers", "servers not exited", len(missing))
    STATS.add("servers", "servers exited non-zero", len(bad))
    STATS.add("servers", "answered", len(servers.pids))
    if missing or bad:
        print(f"servers: not exited {missing}, non-zero {bad}; log {workdir}/server.log",
              file=sys.stderr)
    alive = [t.name for t in threads + members if t.is_alive()]
    if alive:
        print(f"clients still running after the bound: {alive}", file=sys.stderr)
        STATS.add("clients", "no reply", len(alive))
    return report(args, time.monotonic() - started, os.path.join(workdir, "server.log"))


def drains(log):
    """The servers' own count of drained and cut connections (their `shutdown:` log lines)."""
    drained = cut = 0
    with open(log, errors="replace") as f:
        for line in f:
            m = re.search(r"shutdown: (\d+) connection\(s\) drained, (\d+) cut", line)
            if m:
                drained, cut = drained + int(m.group(1)), cut + int(m.group(2))
    return drained, cut


def report(args, elapsed, log):
    cols = ["answered", "re-sent"] + FAILURES
    print(f"\n{args.upgrades} upgrades in {elapsed:.1f} s; load: {args.rate:g} new connections/s, "
          f"{args.kept}+{args.kept} kept connections (window {args.window}), {args.uploads} "
          f"uploaders of {args.upload_mib} MiB, {args.members} chat members")
    rows = sorted(STATS.rows.items())
    print(f"{'':10}" + "".join(f"{c:>{max(len(c), 6) + 2}}" for c in cols))
    total = dict.fromkeys(cols, 0)
    for who, row in rows:
        print(f"{who:10}" + "".join(f"{row.get(c, 0):>{max(len(c), 6) + 2}}" for c in cols))
        for c in cols:
            total[c] += row.get(c, 0)
    print(f"{'total':10}" + "".join(f"{total[c]:>{max(len(c), 6) + 2}}" for c in cols))
    owed = STATS.rows.get("chat", {}).get("lines owed", 0)
    notices = STATS.rows.get("chat", {}).get("drain notices", 0)
    print(f"chat: {owed} line deliveries owed, {notices} drain notices received")
    drained, cut = drains(log)
    print(f"servers' logs: {drained} connection(s) drained, {cut} cut at the grace")
    failed = sum(total[c] for c in FAILURES)
    print(f"result: {'PASS' if failed == 0 else 'FAIL'} ({failed} failures)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
