#!/usr/bin/env python3
"""The report of tools/bench-anchors.sh: medians per setting and server, and the issue-7 verdict
figures, the median over rounds of the per-round ratio of server CPU time per request (each
round measures every server once, back to back, so a ratio within a round compares like with
like), with the per-round ratios beside it so their spread shows.

Usage: tools/anchors_report.py RESULTS.jsonl   (bench-anchors.sh sets the environment: SETTINGS,
ROUNDS, DURATION, WARMUP, CMDLINE, PINNING, LOAD_START, LOAD_END, REDIS_VERSION, BENCH_EXAMPLE;
optional: SERVERS, the servers measured, one a line, in the table's order; BASELINE and
BASELINE_LABEL, the baseline socklab binary measured as "<server> (LABEL)", which adds the
section "Before and after")
"""
import json, os, platform, statistics, subprocess, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
env = os.environ
def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"

servers = ["socklab echo raw", "tokio echo raw", "socklab echo line PING", "redis PING",
           "socklab files ping", "floor echo raw"]
if env.get("SERVERS", "").strip():
    servers = [l for l in env["SERVERS"].splitlines() if l.strip()]
baseline, blabel = env.get("BASELINE", ""), env.get("BASELINE_LABEL", "before")
KINDS = ["socklab echo raw", "socklab echo line PING", "socklab files ping"]
settings = env["SETTINGS"].split()

def med(setting, server, f):
    vals = [f(r["result"]) for r in rows
            if r["setting"] == setting and r["server"] == server and "result" in r]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def fails(setting, server):
    return sum(1 for r in rows if r["setting"] == setting and r["server"] == server and "error" in r)

def fmt(v, spec):
    return "fail" if v is None else format(v, spec)

def label(s):
    c, d = s.split("x")
    return f"{int(c):,} x {d}"

print("### Machine and command\n")
print(f"- Machine: `nproc` = {os.cpu_count()}, {cpu_model()}, Linux {platform.release()}; "
      f"loopback; {env['PINNING']}.")
print(f"- Load average (1, 5, 15 min) at start: {env['LOAD_START']}; at the end: {env['LOAD_END']}.")
print(f"- Command: `{env['CMDLINE']}` ({env['ROUNDS']} round(s) of {env['DURATION']} after a "
      f"{env['WARMUP']} warm-up per setting and server, servers in turn, order rotated each round).")
print(f"- Each measurement: `{env['BENCH_EXAMPLE']}` with MODE one of `--mode raw --size 64` "
      f"(echo), `--mode line --line PING` (socklab echo, redis {env['REDIS_VERSION']}), "
      f"`--mode frame --frame-cmd ping` (files).")
print("- Servers: release `socklab serve` (echo and files only), `tools/tokio-echo` "
      "(tokio current-thread), `redis-server --save '' --appendonly no`, `tools/floor-echo.c` "
      "(`cc -O2`: one thread, edge-triggered epoll, one recv and one send per request, nothing "
      "else).")
if baseline:
    print(f"- Baseline ({blabel}): `{baseline}`, started and measured like this build's socklab, "
          f"its servers named \"<server> ({blabel})\".")
print()
print("### Per setting and server (medians)\n")
print("The user and system columns split the server's CPU per request: system is the kernel's "
      "work in the server's system calls, user the server's own (each the median of its rounds, "
      "so they need not add up to the total exactly; /proc/PID/stat counts in 10 ms ticks).\n")
print("| conns x depth | server | requests/s | p99 (µs) | server CPU/request (µs) | user | system "
      "| load generator CPU |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for s in settings:
    for srv in servers:
        rps = med(s, srv, lambda r: r["requests_per_s"])
        p99 = med(s, srv, lambda r: r["latency_us"]["p99"])
        cpu = med(s, srv, lambda r: r["server_cpu_per_request_us"])
        user = med(s, srv, lambda r: r.get("server_user_cpu_per_request_us"))
        sys_ = med(s, srv, lambda r: r.get("server_sys_cpu_per_request_us"))
        gen = med(s, srv, lambda r: r["cpu_percent"])
        f = fails(s, srv)
        note = f" ({f} failed)" if f else ""
        print(f"| {label(s)} | {srv}{note} | {fmt(rps, ',.0f')} | {fmt(p99, '.0f')} | "
              f"{fmt(cpu, '.2f')} | {fmt(user, '.3f')} | {fmt(sys_, '.2f')} | "
              f"{fmt(gen, '.0f')}{'' if gen is None else ' %'} |")


def value(setting, server, rnd, f):
    for r in rows:
        if (r["setting"] == setting and r["server"] == server and r["round"] == rnd
                and "result" in r):
            return f(r["result"])
    return None


def round_ratio(setting, a, b, f, g=None):
    """The median over rounds of a/b within each round, and the per-round ratios. With `g`,
    each side is first divided by g of the same measurement."""
    per_round = []
    for rnd in range(1, int(env["ROUNDS"]) + 1):
        va, vb = value(setting, a, rnd, f), value(setting, b, rnd, f)
        if g is not None and va is not None and vb:
            ga, gb = value(setting, a, rnd, g), value(setting, b, rnd, g)
            va, vb = (va / ga, vb / gb) if ga and gb else (None, None)
        if va is not None and vb:
            per_round.append(va / vb)
    if not per_round:
        return "fail"
    shown = ", ".join(f"{x:.2f}" for x in per_round)
    return f"{statistics.median(per_round):.2f} [{shown}]"


def table(heading, columns):
    """Prints the heading and a ratio table of the columns (header, a, b, f[, g]) whose servers
    were both measured; nothing when none were."""
    columns = [c for c in columns if c[1] in servers and c[2] in servers]
    if not columns:
        return False
    print()
    print(heading)
    print("| conns x depth | " + " | ".join(c[0] for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for s in settings:
        cells = [round_ratio(s, *c[1:]) for c in columns]
        print(f"| {label(s)} | " + " | ".join(cells) + " |")
    return True


cpu = lambda r: r["server_cpu_per_request_us"]
gen = lambda r: r["cpu_s"] / r["requests"] if r["requests"] else None
p99 = lambda r: r["latency_us"]["p99"]
table("### Ratios (below 1: socklab uses less): median of the per-round ratios [each round]\n", [
    ("CPU/request socklab echo / tokio echo", "socklab echo raw", "tokio echo raw", cpu),
    ("CPU/request socklab echo line / redis PING", "socklab echo line PING", "redis PING", cpu),
    ("CPU/request socklab files ping / redis PING", "socklab files ping", "redis PING", cpu),
    ("p99 socklab echo / tokio", "socklab echo raw", "tokio echo raw", p99),
    ("p99 socklab line / redis", "socklab echo line PING", "redis PING", p99),
])

table("### Against the floor, and normalised by the load generator\n\n"
      "The floor is `tools/floor-echo.c`: what the kernel costs for one recv and one send per "
      "request. The last column divides each server's CPU per request by the load generator's "
      "CPU per request in the same measurement before taking the ratio: the generator does the "
      "same work against both echo servers, so this takes out how fast the machine happened to "
      "be during each measurement (a supplementary figure; the verdict stays the column above).\n",
    [("CPU/request socklab echo / floor", "socklab echo raw", "floor echo raw", cpu),
    ("CPU/request socklab files ping / floor", "socklab files ping", "floor echo raw", cpu),
    ("CPU/request tokio echo / floor", "tokio echo raw", "floor echo raw", cpu),
    ("socklab echo / tokio, each per load-generator CPU/request", "socklab echo raw",
     "tokio echo raw", cpu, gen),
])

if baseline:
    print()
    print(f"### Before and after: this build against {blabel}\n")
    print(f"Both builds measured in the same rounds, in turn, the order rotated each round. The "
          f"ratio is this build / {blabel} of server CPU per request within each round: the "
          f"median of the rounds [each round]; below 1: this build uses less.\n")
    print(f"| conns x depth | server | CPU/request {blabel} (µs) | CPU/request this build (µs) "
          f"| requests/s {blabel} | requests/s this build | CPU/request this build / {blabel} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rps = lambda r: r["requests_per_s"]
    for s in settings:
        for k in KINDS:
            b = f"{k} ({blabel})"
            if k not in servers or b not in servers:
                continue
            print(f"| {label(s)} | {k} | {fmt(med(s, b, cpu), '.2f')} | "
                  f"{fmt(med(s, k, cpu), '.2f')} | {fmt(med(s, b, rps), ',.0f')} | "
                  f"{fmt(med(s, k, rps), ',.0f')} | {round_ratio(s, k, b, cpu)} |")
