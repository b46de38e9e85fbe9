#!/usr/bin/env python3
"""Measures echo round-trip latency against a socklab echo listener until a duration passes
or a stop file appears: one 32-byte message every --interval, each reply checked.

Usage: tools/echo_probe.py --addr 127.0.0.1:7000 [--duration 60] [--stop-file PATH]
                           [--ready-file PATH]
--ready-file is created once the first round trip is done, so a caller can start its load then.
Prints count, p50, p90, p99, p99.9 and max in milliseconds.
"""
import argparse
import os
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:7000")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=0.001)
    ap.add_argument("--stop-file")
    ap.add_argument("--ready-file")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"probe 0123456789abcdef012345678\n"
    lat = []
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        t0 = time.perf_counter()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = s.recv(len(msg) - len(got))
            if not b:
                sys.exit("echo closed the connection")
            got += b
        lat.append(time.perf_counter() - t0)
        if got != msg:
            sys.exit("wrong echo")
        if args.ready_file and len(lat) == 1:
            open(args.ready_file, "w").close()
        time.sleep(args.interval)
    lat.sort()
    if not lat:
        sys.exit("echo probe: no round trip was measured")

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

    print(f"echo probe: {len(lat)} round trips; p50 {pct(50):.3f} ms, p90 {pct(90):.3f} ms, "
          f"p99 {pct(99):.3f} ms, p99.9 {pct(99.9):.3f} ms, max {lat[-1] * 1000:.3f} ms")


if __name__ == "__main__":
    main()
