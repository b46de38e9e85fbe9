#!/usr/bin/env python3
"""C100K: hold N concurrent TCP connections to one socklab echo reactor from several client
processes and several 127.0.0.x source addresses, measure what they cost at that scale, and
check that every one of them is still open at the end.

Usage: tools/c100k.py --addr 127.0.0.1:PORT --pid SERVER_PID [--conns 100000] [--procs K]
                      [--sources S] [--sample 1000] [--echoes 5000] [--timeout 600]

--procs 0 (the default) uses as many client processes as this process's open-file hard limit
requires (each holds at most hard - 64 sockets); --sources 0 uses as many source addresses
(127.0.0.2, 127.0.0.3, ...) as net.ipv4.ip_local_port_range requires at about 45% of the
range per source (at least 2 sources). Connection i of N comes from source i mod S, bound
with IP_BIND_ADDRESS_NO_PORT so that the kernel picks the port at connect(); process k holds
a contiguous share of the N.

In order: the server's VmRSS, the kernel's TCP memory (/proc/net/sockstat) and its socket slab
objects (/proc/slabinfo) before connecting; all N connected, then one echo on every connection
(which proves the server accepted each); the same figures with all N idle (RSS per connection
= delta / N); --echoes echoes, one at a time, through --sample connections picked at random
from all N (p50/p99/max latency, each reply checked byte for byte); a last echo on every
connection; the count of ESTABLISHED sockets on the server's port (ss) and of the server's
descriptors; the server still alive. Every wait is bounded; any lost or wrong reply, failed
connection or missing socket exits non-zero.

The socket helpers are tools/c10k.py's.
"""
import argparse
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import resource
import selectors
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from c10k import (  # noqa: E402
    echo_latencies,
    latency_summary,
    one_round,
    open_conns,
    raise_nofile,
    rss_kib,
    sockstat_tcp_mem_kib,
)

CLIENT_FD_RESERVE = 64  # descriptors a client process keeps for itself (selector, pipes, ...)
SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "eventpoll_epi")


def port_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    return lo, hi


def slab_kib(names=SOCKET_SLABS):
    """KiB in use in the given slab caches (active objects x object size)."""
    total = 0
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in names:
                    total += int(fields[1]) * int(fields[3])
    except OSError:
        return None
    return total // 1024


def sockstat_tcp_line():
    with open("/proc/net/sockstat") as f:
        return next((line.strip() for line in f if line.startswith("TCP:")), "TCP: ?")


def established_on(port):
    """ESTABLISHED TCP sockets whose local port is port (the server's ends)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def server_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_nofile(pid):
    """The server's soft open-file limit."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return 1 << 30 if soft == "unlimited" else int(soft)
    raise RuntimeError("no open-file limit")


def server_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def client(k, host, port, first, count, sources, window, timeout, pipe):
    """One client process: opens connections first … first+count-1, says so, then obeys the
    coordinator's commands until told to close."""
    try:
        raise_nofile(count + CLIENT_FD_RESERVE)
        t0 = time.monotonic()
        socks = open_conns(host, port, count, sources, t0 + timeout, first, window)
        pipe.send(("connected", time.monotonic() - t0))
        sel = selectors.DefaultSelector()
        while True:
            cmd = pipe.recv()
            if cmd[0] == "round":
                t0 = time.monotonic()
                one_round(socks, sel, cmd[1], t0 + timeout)
                pipe.send(("done", time.monotonic() - t0))
            elif cmd[0] == "probe":
                _, picked, reps = cmd
                pipe.send(("lat", echo_latencies([socks[i - first] for i in picked], reps, f"{k}.")))
            elif cmd[0] == "close":
                for s in socks:
                    s.close()
                pipe.send(("closed",))
                return
    except SystemExit as e:  # the c10k helpers exit with a message
        pipe.send(("error", f"client process {k}: {e.code}"))
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - reported to the coordinator, which exits non-zero
        pipe.send(("error", f"client process {k}: {type(e).__name__}: {e}"))
        sys.exit(1)


class Clients:
    def __init__(self, procs):
        self.procs = procs  # [(Process, Connection)]

    def ask(self, cmd, timeout, which=None):
        """Sends cmd to the chosen clients (all by default) and returns their answers in
        order; exits if one fails, dies or does not answer within timeout seconds."""
        chosen = self.procs if which is None else [self.procs[k] for k in which]
        if cmd is not None:
            for _, pipe in chosen:
                pipe.send(cmd)
        return [self.answer(p, pipe, time.monotonic() + timeout) for p, pipe in chosen]

    def answer(self, proc, pipe, deadline):
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            self.fail(f"{proc.name} did not answer in time")
        try:
            msg = pipe.recv()
        except EOFError:
            proc.join(5)
            self.fail(f"{proc.name} died (exit code {proc.exitcode})")
        if msg[0] == "error":
            self.fail(msg[1])
        return msg

    def fail(self, why):
        print(f"FAILED: {why}", flush=True)
        for p, _ in self.procs:
            if p.is_alive():
                p.terminate()
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=100_000)
    ap.add_argument("--procs", type=int, default=0)
    ap.add_argument("--sources", type=int, default=0)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--echoes", type=int, default=5000)
    ap.add_argument("--window", type=int, default=1000, help="connects under way per process")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound on each stage, seconds")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    n = args.conns

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_proc = (1 << 30 if hard == resource.RLIM_INFINITY else hard) - CLIENT_FD_RESERVE
    procs = args.procs or math.ceil(n / per_proc)
    lo, hi = port_range()
    # connect() picks a port of one parity first and only then scans the other half, so a
    # source stays fast up to about half the range: measured here, 12,500 connections from
    # one source took 0.3 s and the next 5,000 took 2.5 s. A tenth is left to everyone else.
    per_source = (hi - lo + 1) // 2 * 9 // 10
    sources = args.sources or max(2, math.ceil(n / per_source))
    if sources > 253:
        sys.exit(f"{n} connections would need {sources} source addresses, more than 127.0.0.2-254")
    if math.ceil(n / sources) > hi - lo + 1:
        sys.exit(f"{sources} source addresses are too few for {n} connections with ports {lo}-{hi}")
    shares = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
    firsts = [sum(shares[:k]) for k in range(procs)]
    if max(shares) > per_proc:
        sys.exit(f"{procs} client processes are too few: the open-file hard limit is {hard}")
    print(f"client: {procs} process(es) holding {', '.join(map(str, shares))} connections "
          f"(open-file hard limit {hard}); sources 127.0.0.2-127.0.0.{sources + 1} "
          f"(ephemeral ports {lo}-{hi}, about {math.ceil(n / sources)} per source)", flush=True)

    if server_fds(args.pid) + n > server_nofile(args.pid):
        sys.exit(f"the server's open-file limit {server_nofile(args.pid)} is too low for {n} "
                 f"connections and its {server_fds(args.pid)} other descriptors")
    base = rss_kib(args.pid)
    kbase = sockstat_tcp_mem_kib()
    slab_base = slab_kib()
    print(f"before: server RSS {base} KiB, {server_fds(args.pid)} descriptors; {sockstat_tcp_line()}",
          flush=True)

    ctx = mp.get_context("fork")
    started = []
    for k in range(procs):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=client, name=f"client process {k}",
                        args=(k, host, port, firsts[k], shares[k], sources, args.window,
                              args.timeout, theirs))
        p.start()
        theirs.close()
        started.append((p, mine))
    clients = Clients(started)
    t0 = time.monotonic()
    connected = clients.ask(None, args.timeout)
    print(f"{n} connections opened by {procs} process(es) in {time.monotonic() - t0:.2f} s "
          f"(slowest process {max(c[1] for c in connected):.2f} s)", flush=True)
    t0 = time.monotonic()
    clients.ask(("round", b"hello\n"), args.timeout)
    print(f"one echo on each of the {n} connections, every reply checked: "
          f"{time.monotonic() - t0:.2f} s (so the server has accepted all of them)", flush=True)

    idle = rss_kib(args.pid)
    print(f"server RSS with {n} idle connections: {idle} KiB (+{idle - base} KiB, "
          f"{(idle - base) * 1024 / n:.0f} bytes per connection); "
          f"{server_fds(args.pid)} descriptors")
    page = os.sysconf("SC_PAGE_SIZE")
    kmem = sockstat_tcp_mem_kib()
    print(f"kernel TCP buffer memory (/proc/net/sockstat mem x {page} B pages, both ends): "
          f"{kmem} KiB ({kmem - kbase:+} KiB); {sockstat_tcp_line()}")
    slab = slab_kib()
    if slab is not None and slab_base is not None:
        print(f"kernel socket objects (/proc/slabinfo {', '.join(SOCKET_SLABS)}; both ends, "
              f"machine-wide): +{slab - slab_base} KiB, "
              f"{(slab - slab_base) * 1024 / n:.0f} bytes per connection")
    ss = subprocess.run(["ss", "-s"], capture_output=True, text=True, timeout=60).stdout
    print("ss -s: " + " | ".join(line.strip() for line in ss.splitlines()[:2]), flush=True)

    sample = sorted(random.Random(1).sample(range(n), min(args.sample, n)))
    reps = max(1, math.ceil(args.echoes / max(1, len(sample))))
    lat = []
    t0 = time.monotonic()
    for k in range(procs):  # one echo in flight at a time, across all processes
        picked = [i for i in sample if firsts[k] <= i < firsts[k] + shares[k]]
        if picked:
            lat += clients.ask(("probe", picked, reps), args.timeout, [k])[0][1]
    dt = time.monotonic() - t0
    print(f"echo load: {len(lat)} echoes, one at a time, through {len(sample)} connections "
          f"sampled from all {n} open ({dt:.2f} s, every reply checked): {latency_summary(lat)}",
          flush=True)

    t0 = time.monotonic()
    clients.ask(("round", b"still open?\n"), args.timeout)
    print(f"a last echo on each of the {n} connections, every reply checked: "
          f"{time.monotonic() - t0:.2f} s")
    est = established_on(port)
    fds = server_fds(args.pid)
    alive = server_alive(args.pid)
    print(f"at the end: {est} ESTABLISHED on the server's port {port} (ss), server holds {fds} "
          f"descriptors, server {'alive' if alive else 'NOT ALIVE'}; "
          f"RSS {rss_kib(args.pid) if alive else 0} KiB", flush=True)
    clients.ask(("close",), args.timeout)
    for p, _ in started:
        p.join(30)
    if est != n or fds < n or not alive:
        sys.exit(f"FAILED: expected {n} established connections and a live server")
    print(f"OK: all {n} connections held open to one reactor and checked")


if __name__ == "__main__":
    main()
