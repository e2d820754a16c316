#!/usr/bin/env python3
"""Search latency: Attune's exact top-k against NumPy brute force, same run.

Not a test. Both score every one of N unit vectors of width 384 against each
query and keep the best 10 (NumPy: one matrix-vector product and
argpartition, on its BLAS, which may use every core; Attune: ranges of rows
claimed by up to 4 threads from 2,000 rows, an 8-bit first pass from 1,024).

  python3 tests/bench/search_peer.py [--docs 10000 100000] [--queries 200]
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import prerequisites

prerequisites.python_packages(["numpy"], "numpy")
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def numpy_latency(n, dim, queries, k):
    rng = np.random.default_rng(1)
    x = rng.random((n, dim), dtype=np.float32) - 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.random((queries, dim), dtype=np.float32) - 0.5
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    times = []
    for row in q:
        started = time.perf_counter()
        scores = x @ row
        top = np.argpartition(-scores, k)[:k]
        top[np.argsort(-scores[top])]
        times.append((time.perf_counter() - started) * 1e3)
    return np.percentile(times, 50), np.percentile(times, 95)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--binary", type=Path, default=None, help="default: target/debug/attune-bench, built if missing")
    args = parser.parse_args()
    args.binary = args.binary or prerequisites.bench()
    out = subprocess.run([str(args.binary), "--json", "search", "--docs", ",".join(map(str, args.docs)),
                          "--queries", str(args.queries)], check=True, capture_output=True, text=True)
    attune = {r["docs"]: r for r in json.loads(out.stdout)["results"]}
    print(f"{'docs':>8} {'numpy p50':>10} {'numpy p95':>10} {'attune p50':>11} {'attune p95':>11}   (ms, top-10 of 384-d)")
    for n in args.docs:
        p50, p95 = numpy_latency(n, 384, args.queries, 10)
        print(f"{n:>8} {p50:>10.2f} {p95:>10.2f} {attune[n]['p50_ms']:>11.2f} {attune[n]['p95_ms']:>11.2f}")


if __name__ == "__main__":
    main()
