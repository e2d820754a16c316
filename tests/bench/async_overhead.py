#!/usr/bin/env python3
"""What an async call of the Python binding costs: each runs on a thread of
its own, so it is compared with a synchronous call in the same run.

Not a test. Builds the binding if needed (bindings/generate) and uses the
default model (models/fetch). Tract backend, one thread per inference.

  python3 tests/bench/async_overhead.py [--calls 200]
"""
import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINDING = REPO / "target/bindings/python"
MODEL = REPO / "models/cache/all-minilm-l6-v2"


def per_call_ms(started, calls):
    return (time.perf_counter() - started) / calls * 1e3


async def measure(calls):
    import attune

    examples = [attune.LabelledText(text="play some jazz", label="music"),
                attune.LabelledText(text="will it rain", label="weather")]
    with tempfile.TemporaryDirectory() as scratch:
        config = attune.Config(database_path=os.path.join(scratch, "bench.db"), model_dir=str(MODEL), threads=1)
        async with await attune.Personalizer.open(config) as p:
            await p.add_examples("t", examples)
            await p.train("t")
            await p.predict_one("t", "warm up")

            started = time.perf_counter()
            for _ in range(calls):
                p.stats("t")
            sync = per_call_ms(started, calls)

            started = time.perf_counter()
            for _ in range(calls):
                await p.predict_one("t", "play some jazz")  # a stored text: its vector is cached
            cached = per_call_ms(started, calls)

            texts = [f"is it raining in city {i}" for i in range(calls)]
            started = time.perf_counter()
            for text in texts:
                await p.predict_one("t", text)
            one_by_one = per_call_ms(started, calls)

            started = time.perf_counter()
            await asyncio.gather(*[p.predict_one("t", f"{text} again") for text in texts])
            gathered = per_call_ms(started, calls)
    print(f"{'call':<52} ms per call")
    print(f"{'stats (synchronous, on the caller thread)':<52} {sync:.3f}")
    print(f"{'predict_one, stored text (async, no model run)':<52} {cached:.3f}")
    print(f"{'predict_one, new text, awaited one by one':<52} {one_by_one:.2f}")
    print(f"{'predict_one, new text, all gathered at once':<52} {gathered:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if not (MODEL / "manifest.json").exists():
        subprocess.run([REPO / "models/fetch"], check=True)
    if not (BINDING / "attune/attune_ffi.py").exists():
        subprocess.run([REPO / "bindings/generate"], check=True)
    sys.path.insert(0, str(BINDING))
    asyncio.run(measure(args.calls))


if __name__ == "__main__":
    main()
