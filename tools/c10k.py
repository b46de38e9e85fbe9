#!/usr/bin/env python3
"""Hold N concurrent TCP connections to a socklab echo listener, measure the server's resident
memory per idle connection, then keep every connection echoing and check each reply.

Usage: tools/c10k.py --addr 127.0.0.1:7000 --pid SERVER_PID [--conns 10000] [--rounds 20]
                     [--sources K] [--sample M]

With --sources K the client side binds its sockets to 127.0.0.2 … 127.0.0.(K+1) in turn, so
that more than one ephemeral port range's worth of connections (about 28,000 here) can be open
to one server port. --sample M measures the echo latency of M connections, one at a time,
while all N stay open (p50/p99/max).

Prints the server's VmRSS before connecting, with N idle connections, and while all N echo;
the per-connection figure is (idle RSS - baseline RSS) / N. Raises its own RLIMIT_NOFILE.
Every wait is bounded; the script exits non-zero on any lost or wrong reply.
"""
import argparse
import os
import resource
import selectors
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sockstat_tcp_mem_kib():
    """The kernel's memory for all TCP sockets (pages in /proc/net/sockstat), in KiB."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:7000")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--sources", type=int, default=0)
    ap.add_argument("--sample", type=int, default=1000)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.conns + 64:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.conns} connections")

    base = rss_kib(args.pid)
    kbase = sockstat_tcp_mem_kib()
    print(f"server RSS before: {base} KiB")
    sel = selectors.DefaultSelector()
    socks = []
    deadline = time.monotonic() + args.timeout
    for i in range(args.conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if args.sources:
            s.bind((f"127.0.0.{2 + i % args.sources}", 0))
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, 115):  # EINPROGRESS
            sys.exit(f"connect {i}: errno {err}")
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE, i)
    pending = set(range(args.conns))
    while pending:
        if time.monotonic() > deadline:
            sys.exit(f"{len(pending)} connections did not complete")
        for key, _ in sel.select(1.0):
            i = key.data
            err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sys.exit(f"connection {i} failed: errno {err}")
            pending.discard(i)
            sel.unregister(key.fileobj)
    # Let the server accept everything: one echo on each connection proves it has.
    t0 = time.monotonic()
    one_round(socks, sel, b"hello\n", deadline)
    print(f"{args.conns} connections open and echoing ({time.monotonic() - t0:.2f} s for the first round)")
    idle = rss_kib(args.pid)
    per = (idle - base) * 1024 / args.conns
    print(f"server RSS with {args.conns} idle connections: {idle} KiB "
          f"(+{idle - base} KiB, {per:.0f} bytes per connection)")
    print(f"kernel TCP socket memory (both ends, /proc/net/sockstat): {sockstat_tcp_mem_kib() - kbase} KiB more")

    total = 0
    t0 = time.monotonic()
    peak = idle
    for r in range(args.rounds):
        msg = f"round {r:05d} payload 0123456789abcdef\n".encode()
        one_round(socks, sel, msg, time.monotonic() + args.timeout)
        total += len(socks)
        peak = max(peak, rss_kib(args.pid))
    dt = time.monotonic() - t0
    print(f"{args.rounds} rounds: {total} echoes in {dt:.2f} s ({total / dt:.0f} echoes/s, "
          f"every reply checked); server RSS peak while echoing: {peak} KiB")
    lat = []
    for s in socks[: args.sample]:
        s.setblocking(True)
        s.settimeout(10)
        t = time.perf_counter()
        s.sendall(b"latency probe\n")
        got = b""
        while len(got) < 14:
            b = s.recv(64)
            if not b:
                sys.exit("closed during the latency sample")
            got += b
        lat.append(time.perf_counter() - t)
    if lat:
        lat.sort()
        pick = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000
        print(f"echo latency over {len(lat)} sampled connections with all {args.conns} open: "
              f"p50 {pick(50):.3f} ms, p99 {pick(99):.3f} ms, max {lat[-1] * 1000:.3f} ms")
    for s in socks:
        s.close()


def one_round(socks, sel, msg, deadline):
    """Sends msg on every connection and waits until each has its whole echo back."""
    want = {}
    for i, s in enumerate(socks):
        s.send(msg)  # small; fits the empty send buffer
        want[i] = bytearray()
        sel.register(s, selectors.EVENT_READ, i)
    left = len(socks)
    while left:
        if time.monotonic() > deadline:
            sys.exit(f"{left} replies missing")
        for key, _ in sel.select(1.0):
            i = key.data
            b = key.fileobj.recv(4096)
            if not b:
                sys.exit(f"connection {i} closed by the server")
            want[i] += b
            if len(want[i]) >= len(msg):
                if bytes(want[i]) != msg:
                    sys.exit(f"connection {i}: wrong echo {bytes(want[i])!r}")
                sel.unregister(key.fileobj)
                left -= 1


if __name__ == "__main__":
    main()
