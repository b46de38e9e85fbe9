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

The helpers (open_conns, one_round, echo_latencies, ...) are shared with tools/c100k.py, which
spreads the same work over several client processes.
"""
import argparse
import os
import resource
import selectors
import socket
import sys
import time

# Linux: bind() only fixes the source address; the port is picked at connect() time, so that
# a port only has to be unique per 4-tuple (not in Python's socket module before 3.12).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
EINPROGRESS = 115


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


def raise_nofile(need):
    """Raises the soft RLIMIT_NOFILE to the hard one; exits if that is below need."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {need} descriptors")


def source_addr(i, sources):
    """The client address of connection i: 127.0.0.2 … 127.0.0.(sources+1) in turn."""
    return f"127.0.0.{2 + i % sources}"


def open_conns(host, port, count, sources, deadline, first=0, window=2000):
    """Opens count connections (numbered first … first+count-1, which picks their source
    address), at most window connects under way at once; returns the connected sockets."""
    sel = selectors.DefaultSelector()
    socks = []
    pending = 0
    i = 0
    while i < count or pending:
        if time.monotonic() > deadline:
            sys.exit(f"{count - len(socks) + pending} connections did not complete in time")
        while i < count and pending < window:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if sources:
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((source_addr(first + i, sources), 0))
            s.setblocking(False)
            err = s.connect_ex((host, port))
            if err not in (0, EINPROGRESS):
                sys.exit(f"connect {first + i}: {os.strerror(err)}")
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE, first + i)
            pending += 1
            i += 1
        for key, _ in sel.select(1.0):
            err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sys.exit(f"connection {key.data} failed: {os.strerror(err)}")
            sel.unregister(key.fileobj)
            pending -= 1
    sel.close()
    return socks


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


def echo_latencies(socks, reps=1, tag="", timeout=10.0):
    """Echoes one line at a time, reps times over socks in turn; returns the round-trip times
    in seconds. Each reply is checked byte for byte; a lost or wrong reply exits."""
    lat = []
    for s in socks:
        s.settimeout(timeout)
    for r in range(reps):
        for j, s in enumerate(socks):
            msg = f"latency probe {tag}{j:06d}.{r:03d}\n".encode()
            t = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                try:
                    b = s.recv(len(msg) - len(got))
                except socket.timeout:
                    sys.exit(f"no echo within {timeout} s during the latency sample")
                if not b:
                    sys.exit("closed during the latency sample")
                got += b
            lat.append(time.perf_counter() - t)
            if got != msg:
                sys.exit(f"wrong echo during the latency sample: {got!r}")
    for s in socks:
        s.setblocking(False)
    return lat


def latency_summary(lat):
    lat = sorted(lat)
    pick = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000
    return f"p50 {pick(50):.3f} ms, p99 {pick(99):.3f} ms, max {lat[-1] * 1000:.3f} ms"


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
    raise_nofile(args.conns + 64)

    base = rss_kib(args.pid)
    kbase = sockstat_tcp_mem_kib()
    print(f"server RSS before: {base} KiB")
    deadline = time.monotonic() + args.timeout
    socks = open_conns(host, port, args.conns, args.sources, deadline)
    sel = selectors.DefaultSelector()
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
    lat = echo_latencies(socks[: args.sample])
    if lat:
        print(f"echo latency over {len(lat)} sampled connections with all {args.conns} open: "
              f"{latency_summary(lat)}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
