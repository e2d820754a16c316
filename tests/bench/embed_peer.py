#!/usr/bin/env python3
"""Encoder speed: Attune (tract and ort backends) against Python onnxruntime.

Not a test. Runs every engine in this one session on the same model, the same
sentences (tests/data/sentences.txt), the same thread count and the same
batching, and prints a table with ratios to Python onnxruntime.

  python3 tests/bench/embed_peer.py [--threads 1 2] [--rounds 5] [--model DIR] [--compiled DIR] [--int8 DIR]

--compiled adds tract on that model compiled (`attune compile-model DIR`, run
here when DIR holds none yet),
the path attune-ffi's small default build takes (which runs on one thread).
--int8 adds tract on the int8 graph (`attune compile-model --int8 DIR`, run
here when DIR holds none yet) and, as the peer a user would pick instead,
Python onnxruntime on its own dynamic int8 quantisation of the same model
(tests/bench/ort_int8.py, written beside DIR). Attune's rows name the matrix
kernels tract chose.

Builds the CLI (dev profile, dependencies fully optimised), fetches the
default model and installs models/requirements.txt (onnxruntime, tokenizers)
when missing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models"))
import attune_models as am  # noqa: E402
import prerequisites  # noqa: E402  (beside this script)

MODES = ["batch 1", "batch 32, caller order", "all at once, length-bucketed"]


def python_onnxruntime(model_dir: Path, sentences: list[str], threads: int, rounds: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((model_dir / "manifest.json").read_text())
    started = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(model_dir / manifest["tokenizer_file"]))
    tokenizer.enable_truncation(max_length=manifest["max_tokens"])
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / manifest["model_file"]), options,
                                   providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    names = manifest["inputs"]

    def embed(texts):
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {names["input_ids"]: ids, names["attention_mask"]: mask}
        if names.get("token_type_ids"):
            feeds[names["token_type_ids"]] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = session.run([manifest["output"]], feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    embed(["The first call after loading."])
    load_and_first = time.perf_counter() - started
    by_length = sorted(sentences, key=lambda s: len(tokenizer.encode(s).ids))
    calls = {
        "batch 1": [[s] for s in sentences],
        "batch 32, caller order": [sentences[i:i + 32] for i in range(0, len(sentences), 32)],
        "all at once, length-bucketed": [by_length[i:i + 32] for i in range(0, len(by_length), 32)],
    }
    modes = []
    for name in MODES:
        passes, latencies = [], []
        for _ in range(rounds):
            pass_start = time.perf_counter()
            for chunk in calls[name]:
                call_start = time.perf_counter()
                embed(chunk)
                latencies.append(time.perf_counter() - call_start)
            passes.append(time.perf_counter() - pass_start)
            if name.startswith("all at once"):
                # Attune embeds the whole set in one call; time it the same way.
                latencies[-len(calls[name]):] = [passes[-1]]
        latencies.sort()
        modes.append({
            "mode": name,
            "sentences_per_second": len(sentences) / statistics.median(passes),
            "p50_ms": latencies[round((len(latencies) - 1) * 0.50)] * 1e3,
            "p95_ms": latencies[round((len(latencies) - 1) * 0.95)] * 1e3,
        })
    return {"load_ms": load * 1e3, "load_and_first_embedding_ms": load_and_first * 1e3,
            "modes": modes, "peak_rss_mb": None}


def attune(binary: Path, backend: str, model_dir: Path, threads: int, rounds: int, ort_lib: str) -> dict:
    env = dict(os.environ, ORT_DYLIB_PATH=ort_lib)
    out = subprocess.run(
        [str(binary), "--model", str(model_dir), "--backend", backend, "--threads", str(threads),
         "--json", "bench", "embed", "--rounds", str(rounds)],
        check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--compiled", type=Path, default=None)
    parser.add_argument("--int8", type=Path, default=None)
    parser.add_argument("--binary", type=Path, default=None, help="default: target/debug/attune, built if missing")
    args = parser.parse_args()
    prerequisites.python_packages(["numpy", "onnxruntime", "tokenizers", "onnx"], "-r", str(REPO / "models/requirements.txt"))
    args.binary = args.binary or prerequisites.cli()
    model_dir = args.model or am.fetch(None, quiet=True)
    for out, flags in ((args.compiled, []), (args.int8, ["--int8"])):
        if out and not (out / "manifest.json").is_file():
            subprocess.run([str(args.binary), "--model", str(model_dir), "compile-model", *flags, str(out)], check=True)
    ort_int8 = None
    if args.int8:
        import ort_int8 as derived  # noqa: E402  (beside this script)
        _, ort_int8 = derived.derive(model_dir, args.int8.with_name(args.int8.name + "-onnxruntime"))
    ort_lib = subprocess.run([sys.executable, str(REPO / "tests/ort-library")], check=True,
                             capture_output=True, text=True).stdout.strip()
    sentences = (REPO / "tests/data/sentences.txt").read_text().splitlines()
    print(f"{len(sentences)} sentences, median of {args.rounds} rounds, model {model_dir.name}, "
          f"{os.cpu_count()} cores")
    header = f"{'engine':<23} {'threads':>7} {'load+1st ms':>11} {'peak MB':>8} " + \
             " ".join(f"{m:>30}" for m in MODES)
    print(header)
    for threads in args.threads:
        peer = python_onnxruntime(model_dir, sentences, threads, args.rounds)
        results = {"python onnxruntime": peer}
        if ort_int8:
            results["python onnxruntime int8"] = python_onnxruntime(ort_int8, sentences, threads, args.rounds)
        for backend in ("ort", "native"):
            results[f"attune {backend}"] = attune(args.binary, backend, model_dir, threads,
                                                  args.rounds, ort_lib)
        if args.compiled:
            results["attune native compiled"] = attune(args.binary, "native", args.compiled, threads,
                                                      args.rounds, ort_lib)
        if args.int8:
            results["attune native int8"] = attune(args.binary, "native", args.int8, threads, args.rounds, ort_lib)
        for engine, result in results.items():
            cells = []
            for mode, peer_mode in zip(result["modes"], peer["modes"]):
                rate = mode["sentences_per_second"]
                cells.append(f"{rate:>8.1f}/s ({rate / peer_mode['sentences_per_second']:.2f}x) "
                             f"p95 {mode['p95_ms']:>6.1f}ms")
            peak = result.get("peak_rss_mb")
            print(f"{engine:<23} {threads:>7} {result['load_and_first_embedding_ms']:>11.0f} "
                  f"{(f'{peak:.0f}' if peak else '-'):>8} " + " ".join(f"{c:>30}" for c in cells))
            kernels = result.get("matrix_kernels")
            if kernels and threads == args.threads[0]:
                print(f"{'':<23} kernels: " + ", ".join(f"{name} x{count}" for name, count in kernels))


if __name__ == "__main__":
    main()
