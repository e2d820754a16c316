#!/usr/bin/env python3
"""Store speed: Attune's import against Python's sqlite3 doing the same work.

Not a test. Both import the same 100,000 examples into the same table layout
(text, sha256 of the text, label, weight, source, time; unique on task, hash
and label; the same indexes) with the same pragmas (WAL, synchronous NORMAL,
secure_delete, foreign keys, 16 MiB page cache) in transactions of 10,000 rows, in this one run.

  python3 tests/bench/store_peer.py [--rows 100000] [--binary target/debug/attune-bench]
"""

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import prerequisites

REPO = Path(__file__).resolve().parents[2]
LABELS = ["work", "family", "travel", "bills", "health", "shopping", "friends", "news"]
WORDS = ["meeting", "dinner", "flight", "invoice", "doctor", "order", "party", "update", "tomorrow",
         "tonight", "please", "confirm", "reminder", "weekend", "receipt", "photos"]


def text(i: int) -> str:
    """Same texts as `attune-bench store` (tests/bench/src/store.rs)."""
    w = lambda k: WORDS[(i // 16 ** k) % len(WORDS)]
    return f"{w(0)} {w(1)} {w(2)} note number {i}"


def python_import(path: Path, rows: int, batch: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "secure_delete=ON", "foreign_keys=ON",
                   "cache_size=-16384"):
        db.execute(f"PRAGMA {pragma}")
    db.executescript("""
        CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE examples (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL REFERENCES tasks(id),
            text TEXT NOT NULL, text_hash BLOB NOT NULL, label TEXT NOT NULL, weight REAL NOT NULL,
            source TEXT NOT NULL, created_at INTEGER NOT NULL, UNIQUE (text_hash, task_id, label));
        CREATE INDEX examples_by_task_label ON examples(task_id, label);
        CREATE INDEX examples_by_task_time ON examples(task_id, created_at);
        INSERT INTO tasks (name) VALUES ('bench');
    """)
    started = time.perf_counter()
    for start in range(0, rows, batch):
        now = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO examples (task_id, text, text_hash, label, weight, source, created_at) "
            "VALUES (1, ?, ?, ?, 1.0, 'user', ?) ON CONFLICT DO NOTHING",
            ((t, hashlib.sha256(t.encode()).digest(), LABELS[i % len(LABELS)], now)
             for i in range(start, min(start + batch, rows)) for t in (text(i),)))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    assert db.execute("SELECT count(*) FROM examples").fetchone()[0] == rows
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--binary", type=Path, default=None, help="default: target/debug/attune-bench, built if missing")
    args = parser.parse_args()
    args.binary = args.binary or prerequisites.bench()
    with tempfile.TemporaryDirectory(prefix="attune-store-peer-") as tmp:
        peer_s = python_import(Path(tmp) / "peer.db", args.rows, args.batch)
        out = subprocess.run([str(args.binary), "--json", "store", "--rows", str(args.rows),
                              "--batch", str(args.batch), "--dir", tmp],
                             check=True, capture_output=True, text=True)
    attune = json.loads(out.stdout)
    peer_rate = args.rows / peer_s
    print(f"{args.rows} rows in transactions of {args.batch}, sqlite {sqlite3.sqlite_version} in Python, "
          f"{os.cpu_count()} cores")
    print(f"{'engine':<22} {'rows/s':>10} {'ratio':>7}")
    print(f"{'python sqlite3':<22} {peer_rate:>10.0f} {1.0:>7.2f}")
    print(f"{'attune store':<22} {attune['import_rows_per_s']:>10.0f} {attune['import_rows_per_s'] / peer_rate:>7.2f}")
    print(f"attune feature cache: {attune['cache_hits_per_s']:.0f} hits/s, {attune['cache_misses_per_s']:.0f} misses/s, "
          f"{attune['cache_writes_per_s']:.0f} writes/s; {attune['mb_per_10k_f32']:.1f} MB per 10,000 examples "
          f"with f32 vectors, {attune['mb_per_10k_f16']:.1f} MB with f16 (worst cosine {attune['f16_worst_cosine']:.6f}); "
          f"peak RSS {attune['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
