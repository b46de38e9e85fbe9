#!/usr/bin/env python3
"""A slow sender for the files service: one `put` spoken in the framing itself (PROTOCOL.md,
"Frames": a 4-byte little-endian header length, a JSON header, the body), the body sent at a
limited rate, then the response frame read and its md5 checked against the bytes sent.
The length prefix and the header go out in separate pieces a moment apart, so the server sees
a frame arrive in parts.

Usage: tools/slow_put.py FILE --as NAME [--addr HOST:PORT|unix:PATH] [--rate BYTES_PER_S]
                         [--timeout SECS]
  --rate     body bytes per second: 8388608, 8MiB, 512KiB, 2M (default 8MiB)
  --timeout  how long to wait for the server to take bytes or to answer (default 60)
Prints `stored NAME: SIZE bytes, md5 HEX` (as `socklab put` does) when the upload was stored
with the md5 of the bytes sent. Exit status: 0 stored; 1 answered, but with an error or a
wrong md5; 2 bad usage or an unreadable file; 3 not answered (timeout, connection refused or
closed).
"""
import argparse
import hashlib
import json
import os
import re
import socket
import struct
import sys
import time

UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def rate(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?(?:ib)?)\s*(?:/s)?\s*", text.lower())
    if not m or m.group(2) not in UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a rate in bytes per second: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


class NoAnswer(Exception):
    """The server did not take the request or did not answer."""


def connect(addr, timeout):
    try:
        if addr.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(addr[len("unix:"):])
        else:
            host, port = addr.rsplit(":", 1)
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:
        raise NoAnswer(f"cannot connect to {addr}: {e}") from e
    return s


def send(s, data, what, sent):
    try:
        s.sendall(data)
    except socket.timeout as e:
        raise NoAnswer(f"the server did not take {what} ({sent} bytes sent)") from e
    except OSError as e:
        raise NoAnswer(f"sending {what} failed after {sent} bytes: {e}") from e


def recv_exact(s, n, what, timeout):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(min(n - len(buf), 1 << 20))
        except socket.timeout as e:
            raise NoAnswer(f"the server did not answer within {timeout:g} s ({what})") from e
        except OSError as e:
            raise NoAnswer(f"reading {what} failed: {e}") from e
        if not chunk:
            raise NoAnswer(f"the server closed the connection ({what}: {len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def upload(args):
    size = os.path.getsize(args.file)
    s = connect(args.addr, args.timeout)
    header = json.dumps({"cmd": "put", "filename": args.name, "size": size}).encode()
    # The frame in pieces: length prefix, a pause, the header, then the body at the rate.
    send(s, struct.pack("<I", len(header)), "the header length", 0)
    time.sleep(0.01)
    send(s, header, "the header", 4)
    piece = int(min(256 * 1024, max(1024, args.rate / 50)))
    md5 = hashlib.md5()
    sent = 0
    t0 = time.monotonic()
    with open(args.file, "rb") as f:
        while sent < size:
            data = f.read(min(piece, size - sent))
            if not data:
                raise OSError(f"{args.file} shrank while being uploaded")
            md5.update(data)
            send(s, data, "the body", 4 + len(header) + sent)
            sent += len(data)
            ahead = t0 + sent / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    h = struct.unpack("<I", recv_exact(s, 4, "the response length", args.timeout))[0]
    resp = json.loads(recv_exact(s, h, "the response header", args.timeout))
    body = resp.get("size", 0)
    if body:
        recv_exact(s, body, "the response body", args.timeout)
    s.close()
    return resp, md5.hexdigest(), size


def main():
    ap = argparse.ArgumentParser(description="one put over the files framing, sent slowly")
    ap.add_argument("file")
    ap.add_argument("--as", dest="name")
    ap.add_argument("--addr", default="127.0.0.1:7080")
    ap.add_argument("--rate", type=rate, default=rate("8MiB"))
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    args.name = args.name or os.path.basename(args.file)
    try:
        resp, ours, size = upload(args)
    except NoAnswer as e:
        print(f"slow_put: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        print(f"slow_put: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # the response header is not JSON
        print(f"slow_put: the server answered with a malformed header: {e}", file=sys.stderr)
        return 1
    if not resp.get("ok"):
        err = resp.get("error") or {}
        print(f"slow_put: server error {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    theirs = resp.get("md5")
    if theirs != ours or resp.get("filesize") != size:
        print(
            f"slow_put: the server stored {resp.get('filesize')} bytes with md5 {theirs}, "
            f"but {size} bytes with md5 {ours} were sent",
            file=sys.stderr,
        )
        return 1
    print(f"stored {args.name}: {size} bytes, md5 {theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
