#!/usr/bin/env python3
"""Writes the seed corpora of the structure-aware fuzz targets (fuzz/seeds/<target>/) from the
protocol's examples, encoded the way `arbitrary` 1.x decodes them, so that libFuzzer starts
from inputs that reach deep into each service instead of from nothing.

The encoding (arbitrary 1.x, as the targets' derives read it): an enum variant is a u32
(little-endian) scaled into the variant count; integers are little-endian; a bool is the low
bit of one byte; a `Vec<T>` is each element preceded by a byte whose low bit is 1, then a 0
byte. Keep the variant lists below in step with src/fuzz/*.rs and src/reactor/stream/fuzz.rs.

Usage: tools/fuzz_seeds.py   (rewrites fuzz/seeds/{svc_*,conn_path}/)
"""

import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")


def variant(index, count):
    """The u32 that `arbitrary` scales to `index` of `count` variants (the middle of its range)."""
    return struct.pack("<I", ((2 * index + 1) << 32) // (2 * count))


def vec(items):
    return b"".join(b"\x01" + item for item in items) + b"\x00"


def vec_u8(data):
    return vec([bytes([b]) for b in data])


def u8(n):
    return struct.pack("<B", n)


def u16(n):
    return struct.pack("<H", n)


def frame(header, body=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(h)) + h + body


# The service targets: `auth: bool`, then `Vec<Op>`, Op = Input(Vec<u8>) | WouldBlock | Close.
def svc(ops, auth=False):
    return u8(1 if auth else 0) + vec(ops)


def inp(data):
    return variant(0, 3) + vec_u8(data)


WOULD_BLOCK = variant(1, 3)
CLOSE = variant(2, 3)

# udp: Kind (Echo, Upper, Chat, Time, Discovery), then Vec<Datagram { sender, after_ms, payload }>.
DGRAM_KINDS = ["echo", "upper", "chat", "time", "discovery"]


def dgram(kind, grams):
    items = [u8(s) + u16(ms) + vec_u8(p) for s, ms, p in grams]
    return variant(DGRAM_KINDS.index(kind), 5) + vec(items)


# conn_path: Setup, then Vec<Op>.
CONN_KINDS = ["echo", "upper", "chat", "metrics", "files"]
CONN_OPS = ["arrive", "read_sizes", "write_sizes", "interrupts", "room", "disk", "turn",
            "settle", "fin"]


def setup(kind, scratch=15, read_budget=63, pause=127, max_pending=1024, max_input=4095,
          write_cap=6, room=40, in_flight=7):
    return (variant(CONN_KINDS.index(kind), 5) + u8(scratch) + u16(read_budget) + u16(pause)
            + u16(max_pending) + u16(max_input) + u8(write_cap) + u16(room) + u16(in_flight))


def op(name, arg=None):
    head = variant(CONN_OPS.index(name), len(CONN_OPS))
    if name in ("arrive", "read_sizes", "write_sizes"):
        return head + vec_u8(arg)
    if name == "interrupts":
        return head + vec([u8(1 if b else 0) for b in arg])
    if name == "room":
        return head + u16(arg)
    if name == "disk":
        return head + u8(arg)
    return head


def conn(kind, ops, **limits):
    return setup(kind, **limits) + vec(ops)


# tls_server: Vec<Op>, the ops of src/fuzz/tls.rs in order.
TLS_OPS = ["client_sends", "server_reads", "client_receives", "client_writes", "server_writes",
           "socket_room", "server_sends_pending", "client_key_update", "client_close_notify",
           "client_fin", "server_close_notify", "flip", "inject"]


def tls(name, arg=None):
    head = variant(TLS_OPS.index(name), len(TLS_OPS))
    if name in ("client_sends", "server_reads", "socket_room"):
        return head + u16(arg)
    if name in ("client_writes", "server_writes", "inject"):
        return head + vec_u8(arg)
    if name == "flip":
        return head + u16(arg[0]) + u8(arg[1])
    return head


def tls_round(cut=65535, cap=65535):
    """The client's records reach the server (cut at `cut` bytes a go), the server reads, the
    client hears the answer."""
    return [tls("client_sends", cut), tls("server_reads", cap), tls("client_sends", cut),
            tls("server_reads", cap), tls("client_receives")]


HTTP_GET = b"GET /metrics HTTP/1.1\r\nHost: seed\r\n\r\n"
PUT = frame({"cmd": "put", "id": 1, "filename": "a.txt", "size": 5}, b"hello")
GET = frame({"cmd": "get", "id": 2, "filename": "a.txt"})

SEEDS = {
    "svc_echo": {"hello": svc([inp(b"hello, "), WOULD_BLOCK, inp(b"world\n"), CLOSE])},
    "svc_upper": {"hello": svc([inp(b"hello, "), WOULD_BLOCK, inp(b"World \xc3\xa9\n")])},
    "svc_chat": {
        "nick": svc([inp(b"/nick alice\n"), inp(b"hi all\r\n/who\n/me waves\n"), WOULD_BLOCK]),
        "quit": svc([inp(b"hello\n/quit\n"), inp(b"after quit\n")]),
    },
    "svc_metrics": {
        "get": svc([inp(HTTP_GET), WOULD_BLOCK]),
        "head": svc([inp(b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), WOULD_BLOCK]),
        "page": svc([inp(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /stats.json HTTP/1.0\r\n\r\n"),
                     WOULD_BLOCK, WOULD_BLOCK]),
        "events": svc([inp(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n"), WOULD_BLOCK,
                       inp(b"GET / HTTP/1.1\r\n\r\n"), WOULD_BLOCK]),
        "chat": svc([inp(b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x80"),
                     WOULD_BLOCK], auth=True),
    },
    "svc_files": {
        "putget": svc([inp(frame({"cmd": "ping", "id": 0})), inp(PUT), WOULD_BLOCK,
                       inp(GET + frame({"cmd": "list"}) + frame({"cmd": "stat", "filename": "a.txt"})),
                       WOULD_BLOCK]),
        "exec": svc([inp(frame({"cmd": "exec", "argv": ["true"], "timeout_ms": 100})),
                     WOULD_BLOCK], auth=True),
        "echo": svc([inp(frame({"cmd": "echo", "size": 3}, b"abc")),
                     inp(frame({"cmd": "stats"})), WOULD_BLOCK]),
    },
    "tls_server": {
        "echo": vec(tls_round() + tls_round() + tls_round()
                    + [tls("client_writes", b"hello"), *tls_round(),
                       tls("server_writes", b"hello"), tls("client_receives"),
                       tls("client_key_update"), tls("client_writes", b"again"), *tls_round(),
                       tls("client_close_notify"), *tls_round(100, 7),
                       tls("server_close_notify"), tls("client_receives")]),
        "cut": vec(tls_round(3, 1) * 4 + tls_round(100) * 4
                   + [tls("socket_room", 10), tls("client_writes", b"x" * 300), *tls_round(7, 5),
                      tls("server_writes", b"y" * 300), tls("server_sends_pending"),
                      tls("socket_room", 65535), tls("server_sends_pending"),
                      tls("client_receives"), tls("client_fin"), tls("server_reads", 10)]),
        "tampered": vec(tls_round() * 2 + [tls("client_writes", b"data"),
                                           tls("client_sends", 65535), tls("flip", (8, 1)),
                                           tls("server_reads", 100),
                                           tls("inject", b"\x17\x03\x03\x00\x05abcde"),
                                           tls("server_reads", 100), tls("server_close_notify")]),
    },
    "svc_datagram": {
        "echo": dgram("echo", [(0, 0, b"ping"), (1, 5, b"")]),
        "chat": dgram("chat", [(0, 0, b"hi"), (1, 10, b"hello"), (0, 10, b"\xff")]),
        "time": dgram("time", [(0, 0, b"%Y-%m-%d %X"), (1, 1, b"%-d %q")]),
        "discovery": dgram("discovery", [(0, 0, b"SOCKLAB?"), (1, 0, b"SOCKLAB?"), (0, 1, b"x")]),
    },
    "conn_path": {
        "echo": conn("echo", [op("arrive", b"hello, world\n"), op("read_sizes", b"\x03\x01"),
                              op("interrupts", [True, False, True]), op("settle"),
                              op("room", 5), op("write_sizes", b"\x01\x02"), op("turn"),
                              op("arrive", b"more"), op("fin")]),
        "upper": conn("upper", [op("arrive", b"abc def"), op("settle"), op("room", 100),
                                op("settle")], room=0),
        "chat": conn("chat", [op("arrive", b"/nick bob\nhi\n/who\n"), op("settle"),
                              op("arrive", b"/quit\n"), op("settle")]),
        "metrics": conn("metrics", [op("arrive", HTTP_GET[:10]), op("turn"),
                                    op("arrive", HTTP_GET[10:]), op("settle"),
                                    op("room", 65535), op("settle")]),
        "files": conn("files", [op("arrive", PUT[:20]), op("settle"), op("arrive", PUT[20:]),
                                op("settle"), op("disk", 8), op("arrive", GET),
                                op("settle"), op("room", 65535), op("disk", 8), op("settle")],
                      room=1000),
    },
}


def main():
    for target, seeds in SEEDS.items():
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(d):
            os.remove(os.path.join(d, name))
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
