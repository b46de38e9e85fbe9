#!/usr/bin/env python3
"""Pools the rounds of several tools/bench-anchors.sh runs and prints each ratio with a
bootstrap 95 % interval for its median.

Usage: tools/anchors_pool.py RAW.json [RAW.json ...]   (files written by --raw-json)

One run's median of 7-9 per-round ratios moves by 10-20 % from run to run on a VM whose speed
drifts between measurements, so "above 1" or "below 0.9" in one run says little on its own.
Pooling the rounds of runs of the same build and giving the interval says how sure a verdict
is. Besides the issue's ratios it prints the floor ratios (what a C epoll echo costs) and the
same ratios normalised by the load generator's CPU per request in each measurement, and, for
runs with --baseline, each socklab server against its baseline ("<server> (LABEL)").
"""

import json
import random
import statistics
import sys

SETTINGS = ["1x1", "1x16", "50x1", "50x16", "1000x1", "1000x16"]
PAIRS = [
    ("socklab echo raw", "tokio echo raw"),
    ("socklab echo raw", "floor echo raw"),
    ("tokio echo raw", "floor echo raw"),
    ("socklab echo line PING", "redis PING"),
    ("floor echo raw", "redis PING"),
    ("socklab files ping", "redis PING"),
]
BOOTSTRAP = 2000


def load(paths):
    by = {}
    for run, path in enumerate(paths):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "result" in row:
                    key = (row["setting"], (run, row["round"]), row["server"])
                    by[key] = row["result"]
    return by


def interval(values, rng):
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP)
    )
    return medians[int(BOOTSTRAP * 0.025)], medians[int(BOOTSTRAP * 0.975) - 1]


def fmt(values, rng):
    low, high = interval(values, rng)
    return f"{statistics.median(values):.2f} ({low:.2f}–{high:.2f})"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__.strip().splitlines()[3])
    by = load(sys.argv[1:])
    rounds = sorted({key[1] for key in by})
    rng = random.Random(1)
    print(f"Pooled over {len(sys.argv) - 1} run(s): median of the per-round ratios "
          "(bootstrap 95 % interval of the median)\n")
    print("| conns x depth | ratio | rounds | CPU/request | CPU/request, each per load-generator "
          "CPU/request | p99 |")
    print("|---|---|---:|---:|---:|---:|")
    names = {key[2] for key in by}
    kinds = ["socklab echo raw", "socklab echo line PING", "socklab files ping"]
    baseline_pairs = sorted(
        (k, n) for n in names for k in kinds if n.startswith(k + " (") and n.endswith(")")
    )
    for setting in SETTINGS:
        for a, b in PAIRS + baseline_pairs:
            raw, normalised, p99 = [], [], []
            for r in rounds:
                x, y = by.get((setting, r, a)), by.get((setting, r, b))
                if not x or not y or not x["requests"] or not y["requests"]:
                    continue
                cx, cy = x["server_cpu_per_request_us"], y["server_cpu_per_request_us"]
                gx = x["cpu_s"] / x["requests"]
                gy = y["cpu_s"] / y["requests"]
                raw.append(cx / cy)
                normalised.append((cx / gx) / (cy / gy))
                p99.append(x["latency_us"]["p99"] / y["latency_us"]["p99"])
            if not raw:
                continue
            c, d = setting.split("x")
            print(f"| {int(c):,} x {d} | {a} / {b} | {len(raw)} | {fmt(raw, rng)} | "
                  f"{fmt(normalised, rng)} | {fmt(p99, rng)} |")


if __name__ == "__main__":
    main()
