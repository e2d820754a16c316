#!/usr/bin/env python3
"""Head training: Attune against scikit-learn's LogisticRegression on the same vectors.

Not a test. Embeds CLINC150 (../shared/datasets/clinc150, when present) once
with `attune-bench heads`, which also trains Attune's heads and writes the
vectors; then fits scikit-learn on exactly those vectors, with C chosen by
3-fold cross-validation on the training examples (grid 1, 10, 100), for the
full training split and for k = 5, 10, 20 examples per intent (same seeds and
samples as Attune). Prints accuracy, macro-F1 and training time side by side;
Attune's full-data row is the mean over as many training seeds (scikit-learn's
lbfgs fit has no seed).

  python3 tests/bench/train_peer.py [--seeds 5] [--backend ort] [--model DIR]

--model embeds with another model directory, e.g. an int8 compiled one
(`attune compile-model --int8 DIR`, with `--backend native`), to compare its
features' accuracy with the default model's.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import prerequisites

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"


def sample_k(labels, classes, k, seed):
    """The same draw as tests/bench/src/heads.rs (xorshift shuffle)."""
    mask = (1 << 64) - 1
    by_class = [[] for _ in range(classes)]
    for i, label in enumerate(labels):
        by_class[label].append(i)
    state = ((seed * 0x9E3779B97F4A7C15) & mask) | 1
    picked = []
    for members in by_class:
        members = list(members)
        for i in range(len(members) - 1, 0, -1):
            state ^= (state << 13) & mask
            state ^= state >> 7
            state ^= (state << 17) & mask
            j = state % (i + 1)
            members[i], members[j] = members[j], members[i]
        picked.extend(members[:k])
    return picked


def fit_sklearn(x, y, folds):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    started = time.perf_counter()
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": [1.0, 10.0, 100.0]}, cv=folds, n_jobs=1)
    search.fit(x, y)
    return search.best_estimator_, time.perf_counter() - started, search.best_params_["C"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="CLINC150's data_full.json (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--model", type=Path, default=None, help="default: the default model")
    parser.add_argument("--binary", type=Path, default=None, help="default: target/debug/attune-bench, built if missing")
    parser.add_argument("--adapt", default="", metavar="K,K,...",
                        help="also train through Personalizer.train with the top layers adapted (automatic "
                             "choice) at these k (100 = the full set), beside a frozen head: minutes per seed")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"CLINC150 is not present at {args.data}: pass --data (the default is ../shared/datasets)")
    prerequisites.python_packages(["sklearn"], "scikit-learn")
    args.binary = args.binary or prerequisites.bench()
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    env = dict(os.environ)
    if args.backend == "ort" and "ORT_DYLIB_PATH" not in env:
        env["ORT_DYLIB_PATH"] = subprocess.run([sys.executable, str(REPO / "tests/ort-library")], check=True,
                                               capture_output=True, text=True).stdout.strip()
    cache = REPO / "target" / ("bench-clinc" if args.model is None else f"bench-clinc-{args.model.name}")
    model = ["--model", str(args.model)] if args.model else []
    out = subprocess.run([str(args.binary), *model, "--backend", args.backend, "--json", "heads",
                          "--data", str(args.data), "--cache", str(cache), "--seeds", str(args.seeds)],
                         check=True, capture_output=True, text=True, env=env)
    attune = json.loads(out.stdout)
    index = json.loads((cache / "index.json").read_text())
    features = np.fromfile(cache / "features.f32", dtype="<f4").reshape(-1, index["dim"])
    split = lambda name: (features[index["splits"][name]["rows"]], np.array(index["splits"][name]["labels"]))
    (train_x, train_y), (test_x, test_y) = split("train"), split("test")
    classes = len(index["intents"])

    rows = []
    model, seconds, c = fit_sklearn(train_x, train_y, 3)
    predicted = model.predict(test_x)
    rows.append(("full", accuracy_score(test_y, predicted), f1_score(test_y, predicted, average="macro"), seconds, c))
    for k in (5, 10, 20):
        accuracy, f1, times = [], [], []
        for seed in range(args.seeds):
            picked = sample_k(train_y.tolist(), classes, k, seed)
            model, seconds, c = fit_sklearn(train_x[picked], train_y[picked], min(3, k))
            predicted = model.predict(test_x)
            accuracy.append(accuracy_score(test_y, predicted))
            f1.append(f1_score(test_y, predicted, average="macro"))
            times.append(seconds)
        rows.append((f"k={k}", np.mean(accuracy), np.mean(f1), np.mean(times), c))

    ours = {r["setting"]: r for r in attune["results"]}
    print(f"CLINC150 test split ({len(test_y)} utterances, {classes} intents), vectors from "
          f"{attune['model']} on {attune['backend']}; {args.seeds} seeds per k; {os.cpu_count()} cores")
    print(f"zero-shot (intent names as descriptions): accuracy {attune['zero_shot']['accuracy']:.4f}")
    print(f"{'setting':<8} {'sklearn acc':>11} {'attune acc':>10} {'sklearn F1':>10} {'attune F1':>9} "
          f"{'sklearn s':>9} {'attune s':>8} {'time ratio':>10}")
    for setting, acc, f1, seconds, _ in rows:
        mine = ours[setting]
        print(f"{setting:<8} {acc:>11.4f} {mine['accuracy']:>10.4f} {f1:>10.4f} {mine['macro_f1']:>9.4f} "
              f"{seconds:>9.2f} {mine['train_ms'] / 1000:>8.2f} {mine['train_ms'] / 1000 / seconds:>10.2f}")
    full = ours["full"]
    seeds = full["accuracy_per_seed"]
    print(f"attune full: mean of {len(seeds)} training seeds, accuracy {min(seeds):.4f}-{max(seeds):.4f}; "
          f"chose {', '.join(sorted(set(full['chosen_per_seed'])))}")
    print(f"attune full, seed 0: chose {full['chosen']} by {full['validation']}; out of scope at its own threshold "
          f"{full['out_of_scope']['probability_threshold']:.3f}: in-scope accuracy {full['out_of_scope']['in_scope_accuracy']:.4f}, "
          f"out-of-scope recall {full['out_of_scope']['out_of_scope_recall']:.4f}")
    if args.adapt:
        print_adapted(args, env)


def print_adapted(args, env):
    """Adapted rows: `attune-bench adapt`, same draws and seeds."""
    model = ["--model", str(args.model)] if args.model else []
    out = subprocess.run([str(args.binary), *model, "--backend", args.backend, "adapt",
                          "--data", str(args.data), "--shots", args.adapt, "--seeds", str(args.seeds)],
                         check=True, capture_output=True, text=True, env=env)
    adapted = json.loads(out.stdout)
    print("through Personalizer.train (automatic choice; 100 = the full set): frozen head against adapted top layers")
    print(f"{'setting':<8} {'frozen acc':>10} {'adapted acc':>11} {'adapted runs':>12} {'frozen s':>8} "
          f"{'adapted s':>9} {'head bytes':>10} {'cache B/ex':>10} {'predict ms 1/64':>16}")
    for row in adapted["results"]:
        f, a = row["frozen"], row["adapted"]
        latency = f"{f['predict_batch_1_ms']:.1f}/{f['predict_batched_ms']:.1f} vs {a['predict_batch_1_ms']:.1f}/{a['predict_batched_ms']:.1f}"
        print(f"{row['setting']:<8} {f['accuracy']:>10.4f} {a['accuracy']:>11.4f} {a['adapted_runs']:>12} "
              f"{f['train_s']:>8.1f} {a['train_s']:>9.1f} {a['head_bytes']:>10.0f} "
              f"{a['trunk_cache_bytes_per_example']:>10.0f} {latency:>16}")


if __name__ == "__main__":
    main()
