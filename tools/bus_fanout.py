#!/usr/bin/env python3
"""Chat fan-out with and without the Redis bus: server CPU per delivered line (issue 19's target).

Three set-ups, side by side in one run, servers (and Redis) pinned to one CPU, this load
generator to the other:

  single   one socklab host; 1 publisher and N members on it
  bus      two socklab hosts on one Redis (--chat-bus); the publisher and N/2 members on the
           first, N/2 members on the second. Server CPU = both hosts; Redis's reported apart
  redis    no socklab: the N members SUBSCRIBE to Redis directly and the publisher PUBLISHes;
           Redis's CPU per delivery

The publisher sends L lines of a fixed size at once; every member reads until it has all of
them (counted in bytes); that --batches times. CPU is read from /proc/PID/stat (10 ms ticks)
around those phases only.

Usage: tools/bus_fanout.py [--members 1000] [--lines 2000] [--batches 10] [--rounds 3] [--bin PATH]
                           [--server-cpu 0] [--load-cpu 1] [--json]
"""

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bus_fanout: nothing listens on port {port} after {timeout} s")


def start(cmd, cpu):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_redis(cpu):
    port = free_port()
    p = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0",
               "--maxclients", "10000"], cpu)
    wait_port(port)
    return p, port


def start_host(binary, cpu, bus_port, node):
    port = free_port()
    args = [binary, "serve", "--chat", f"127.0.0.1:{port}", "--max-conns", "20000",
            "--max-conns-per-ip", "0", "--chat-max-pending", "64MiB"]
    for s in ["echo", "upper", "udp-echo", "udp-upper", "time", "udp-chat", "files",
              "discovery", "metrics"]:
        args.append(f"--no-{s}")
    if bus_port:
        args += ["--chat-bus", f"127.0.0.1:{bus_port}", "--chat-bus-node", node]
    p = start(args, cpu)
    wait_port(port)
    return p, port


def drain(socks, quiet=0.3):
    """Reads whatever the sockets hold until none has had anything for `quiet` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while True:
        events = sel.select(quiet)
        if not events:
            break
        for key, _ in events:
            try:
                key.fileobj.recv(1 << 16)
            except BlockingIOError:
                pass
    sel.close()


def receive_all(socks, want_bytes, timeout):
    """Reads until every socket got `want_bytes` more; returns when done (or raises)."""
    sel = selectors.DefaultSelector()
    got = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        got[s] = 0
    left = len(socks)
    deadline = time.time() + timeout
    while left:
        if time.time() > deadline:
            short = sum(1 for v in got.values() if v < want_bytes)
            raise SystemExit(f"bus_fanout: {short} members short of their lines after {timeout} s")
        for key, _ in sel.select(1.0):
            s = key.fileobj
            try:
                data = s.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("bus_fanout: a member was disconnected")
            before = got[s]
            got[s] = before + len(data)
            if before < want_bytes <= got[s]:
                left -= 1
    sel.close()


def chat_members(ports, n):
    """n members spread over the hosts' ports, round robin; each has read its welcome."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", ports[i % len(ports)]))
        socks.append(s)
    return socks


def run_chat(binary, args, bus):
    procs = []
    redis = None
    try:
        bus_port = None
        if bus:
            redis, bus_port = start_redis(args.server_cpu)
            procs.append(redis)
        hosts = [start_host(binary, args.server_cpu, bus_port, f"n{i}") for i in range(2 if bus else 1)]
        procs += [p for p, _ in hosts]
        ports = [port for _, port in hosts]
        publisher = socket.create_connection(("127.0.0.1", ports[0]))
        publisher.sendall(b"/nick pub\n")
        members = chat_members(ports, args.members)
        time.sleep(0.5 if bus else 0.1)  # joins and heartbeats settle; drained below
        drain(members + [publisher])
        payload = b"x" * 40
        line_len = len(b"pub ") + 6 + 1 + len(payload) + 1
        lines = b"".join(b"%06d %s\n" % (i, payload) for i in range(args.lines))
        pids = [p.pid for p, _ in hosts]
        before = [cpu_seconds(p) for p in pids]
        rbefore = cpu_seconds(redis.pid) if redis else 0.0
        t0 = time.time()
        for _ in range(args.batches):
            publisher.sendall(lines)
            receive_all(members, args.lines * line_len, timeout=120)
        wall = time.time() - t0
        server_cpu = sum(cpu_seconds(p) - b for p, b in zip(pids, before))
        redis_cpu = (cpu_seconds(redis.pid) - rbefore) if redis else 0.0
        deliveries = args.lines * args.members * args.batches
        for s in members + [publisher]:
            s.close()
        return {
            "setup": "bus" if bus else "single",
            "deliveries": deliveries,
            "wall_s": wall,
            "server_cpu_s": server_cpu,
            "server_ns_per_delivery": server_cpu / deliveries * 1e9,
            "redis_cpu_s": redis_cpu,
            "redis_ns_per_delivery": redis_cpu / deliveries * 1e9,
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()


def resp(*parts):
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def run_redis(args):
    redis, port = start_redis(args.server_cpu)
    try:
        members = []
        for _ in range(args.members):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(resp(b"SUBSCRIBE", b"socklab:chat"))
            members.append(s)
        time.sleep(0.2)
        drain(members)
        pub = socket.create_connection(("127.0.0.1", port))
        payload = b"x" * 40
        # The same bytes a chat member reads: "pub NNNNNN xxxx…".
        msgs = [b"pub %06d %s" % (i, payload) for i in range(args.lines)]
        msg_len = len(b"*3\r\n$7\r\nmessage\r\n$12\r\nsocklab:chat\r\n") + len(b"$%d\r\n" % len(msgs[0])) + len(msgs[0]) + 2
        before = cpu_seconds(redis.pid)
        batch = b"".join(resp(b"PUBLISH", b"socklab:chat", m) for m in msgs)
        t0 = time.time()
        for _ in range(args.batches):
            pub.sendall(batch)
            receive_all(members, args.lines * msg_len, timeout=120)
        wall = time.time() - t0
        cpu = cpu_seconds(redis.pid) - before
        deliveries = args.lines * args.members * args.batches
        for s in members + [pub]:
            s.close()
        return {
            "setup": "redis",
            "deliveries": deliveries,
            "wall_s": wall,
            "server_cpu_s": 0.0,
            "server_ns_per_delivery": 0.0,
            "redis_cpu_s": cpu,
            "redis_ns_per_delivery": cpu / deliveries * 1e9,
        }
    finally:
        redis.kill()
        redis.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=10,
                    help="the publisher sends --lines this many times, each once all arrived")
    ap.add_argument("--bin", default="target/release/socklab")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.load_cpu})
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    for r in range(args.rounds):
        for setup in ("single", "bus", "redis"):
            res = run_redis(args) if setup == "redis" else run_chat(args.bin, args, setup == "bus")
            res["round"] = r + 1
            results.append(res)
            print(f"round {r + 1} {setup:6}: server {res['server_ns_per_delivery']:7.1f} ns/delivery "
                  f"redis {res['redis_ns_per_delivery']:7.1f} ns/delivery  ({res['wall_s']:.2f} s wall)",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    by = {}
    for r in results:
        by.setdefault(r["round"], {})[r["setup"]] = r
    print("| round | single: socklab ns/delivery | bus: socklab (both hosts) ns/delivery | bus / single | bus: redis ns/delivery | redis direct: redis ns/delivery | bus socklab / redis direct |")
    print("|---|---|---|---|---|---|---|")
    for rnd, s in sorted(by.items()):
        single, bus, red = s["single"], s["bus"], s["redis"]
        ratio = bus["server_ns_per_delivery"] / single["server_ns_per_delivery"] if single["server_ns_per_delivery"] else float("nan")
        vs = bus["server_ns_per_delivery"] / red["redis_ns_per_delivery"] if red["redis_ns_per_delivery"] else float("nan")
        print(f"| {rnd} | {single['server_ns_per_delivery']:.1f} | {bus['server_ns_per_delivery']:.1f} | {ratio:.2f} | "
              f"{bus['redis_ns_per_delivery']:.1f} | {red['redis_ns_per_delivery']:.1f} | {vs:.2f} |")


if __name__ == "__main__":
    main()
