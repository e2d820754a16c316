#!/usr/bin/env python3
"""Federated personalization on CLINC150, beside its peers in the same run:
each user alone (`local`), the federated model (`shared`), each user's head
trained from it (`personalized`) and one head on all users' data pooled
(`centralized`, the upper bound).

Not a test. Uses ../shared/datasets/clinc150 (150 intents, train + val +
test in scope: 22,500 rows) when present and says so when absent. Installs
Flower's simulation engine and RDP accountant (`flwr[simulation,dp]`) if missing, builds the
binding (bindings/generate) and fetches the default model if needed.

  python3 tests/bench/federated_peer.py [--seeds 1 2 3] [--users 100] [--rounds 20] [--alpha 0.5] [--fraction 0.2]
      [--dp-noise Z --clip C [--dp-at server|device] [--dp-budget E]] [--score-users K]

Central privacy at 1,000 users (population ε ≤ 8 at δ = 1/1000), and the same rounds without it:
  python3 tests/bench/federated_peer.py --seeds 1 --users 1000 --fraction 1.0 --rounds 10 --dp-noise 1.8 --clip 5 \
      --dp-budget 8 --evaluate-fraction 0.05 --score-users 100
  python3 tests/bench/federated_peer.py --seeds 1 --users 1000 --fraction 1.0 --rounds 10 \
      --evaluate-fraction 0.05 --score-users 100
"""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import prerequisites

REPO = Path(__file__).resolve().parents[2]
CLINC = REPO.parent / "shared/datasets/clinc150/data_full.json"
WORK = REPO / "target/bench-federated"
ARMS = ["local", "shared", "personalized", "centralized"]


def ensure_tools():
    prerequisites.python_packages(["ray", "flwr", "dp_accounting"], "flwr[simulation,dp]==1.42.0")
    prerequisites.default_model()
    prerequisites.python_binding()


def clinc_csv() -> Path:
    rows = json.loads(CLINC.read_text())
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "clinc150.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for split in ("train", "val", "test"):
            writer.writerows(rows[split])
    return path


def simulate(data: Path, seed: int, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "target/bindings/python"))
    command = [sys.executable, "-m", "attune.flower", "simulate", "--data", str(data), "--users", str(args.users),
               "--rounds", str(args.rounds), "--alpha", str(args.alpha), "--fraction", str(args.fraction),
               "--seed", str(seed), "--model", str(REPO / "models/cache/all-minilm-l6-v2"), "--json"]
    if args.dp_noise is not None:
        command += ["--dp-noise", str(args.dp_noise), "--clip", str(args.clip), "--dp-at", args.dp_at]
    if args.dp_budget is not None:
        command += ["--dp-budget", str(args.dp_budget)]
    if args.strategy != "fedavg":
        command += ["--strategy", args.strategy]
    if args.evaluate_fraction is not None:
        command += ["--evaluate-fraction", str(args.evaluate_fraction)]
    if args.f16_updates:
        command.append("--f16-updates")
    if args.score_users is not None:
        command += ["--score-users", str(args.score_users)]
    log = open(WORK / f"seed-{seed}-users-{args.users}-{args.strategy}{'-dp-' + args.dp_at if args.dp_noise is not None else ''}.log", "w")
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--dp-noise", type=float, help="differential privacy: noise multiplier")
    parser.add_argument("--clip", type=float, default=1.0, help="differential privacy: L2 clip of every update's change")
    parser.add_argument("--dp-at", choices=["server", "device"], default="server", help="central or local noise")
    parser.add_argument("--dp-budget", type=float, help="ε budget (the population's, or each device's)")
    parser.add_argument("--strategy", choices=["fedavg", "fedavgm", "fedadam"], default="fedavg")
    parser.add_argument("--f16-updates", action="store_true", help="devices send float16 weights")
    parser.add_argument("--evaluate-fraction", type=float, help="share of users scoring the model each round")
    parser.add_argument("--score-users", type=int, help="score the arms on this many users drawn at random")
    args = parser.parse_args()
    if not CLINC.exists():
        print(f"CLINC150 is not at {CLINC}: nothing to measure (the benchmark needs ../shared/datasets)")
        return
    ensure_tools()
    data = clinc_csv()
    runs = []
    for seed in args.seeds:
        run = simulate(data, seed, args)
        runs.append(run)
        print(json.dumps({"seed": seed, **run}), flush=True)
    print(f"\nCLINC150, {args.users} users, alpha {args.alpha}, {args.rounds} rounds, fraction {args.fraction}, "
          f"seeds {args.seeds}: accuracy on each user's held-out half, mean over seeds")
    print(f"{'arm':<14} {'mean':>7} {'p10':>7}")
    for arm in ARMS:
        mean = sum(r[arm]["mean"] for r in runs) / len(runs)
        p10 = sum(r[arm]["p10"] for r in runs) / len(runs)
        print(f"{arm:<14} {mean:7.4f} {p10:7.4f}")
    per_round = sum(r["seconds_per_round"] for r in runs) / len(runs)
    promoted = [r.get("personal_promoted") for r in runs]
    print(f"personal heads that replaced the shared one, per seed: {promoted} of {runs[0]['scored_users']} users")
    if runs[0]["epsilon"] is not None:
        whose = "the population's" if runs[0]["dp_at"] == "server" else "the largest per-device"
        print(f"{whose} epsilon: {max(r['epsilon'] for r in runs)} at delta {runs[0]['delta']}")
    print(f"bytes per update {runs[0]['bytes_per_update']}, {per_round:.1f} s per round, "
          f"{sum(r['seconds'] for r in runs) / len(runs):.0f} s per run")


if __name__ == "__main__":
    main()
