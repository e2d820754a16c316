"""Federated personalization at scale on Flower's simulation engine.

  python -m attune.flower simulate --data FILE.csv --users 100 --rounds 20 \\
      --alpha 0.5 --seed 1 [--fraction 0.2] [--dp-noise Z --clip C [--dp-at server|device]] \\
      [--strategy fedavg|fedavgm|fedadam] [--f16-updates] [--score-users K] [--model DIR] --json

Splits the rows into users with a Dirichlet(alpha) over labels (non-IID),
each user's rows into their own train and held-out halves, and compares on
every user's held-out half: ``local`` (each user alone), ``shared`` (the
federated model), ``personalized`` (each user's head trained from the shared
model) and ``centralized`` (one head on all train halves pooled). Users are
tasks of one simulation database, so every text is embedded once; each
simulated device sees only its own task. With ``--score-users K`` the four
arms are scored on K users drawn at random (the federation and the
centralized head still use every user). Progress goes to stderr.
"""

import argparse
import asyncio
import csv
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

import attune
import attune.sync

from .client import make_client_app
from .privacy import Privacy
from .server import Rounds, make_server_app, strategy_for

# A user needs a few rows for a train and a held-out half.
MIN_ROWS_PER_USER = 4


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_rows(path: str, text_col: str, label_col: str):
    with open(path, newline="", encoding="utf-8") as f:
        return [(row[text_col], row[label_col]) for row in csv.DictReader(f) if row[text_col].strip()]


def dirichlet_users(labels, users: int, alpha: float, rng):
    """Row indices per user: each label's rows split over users by a
    Dirichlet(alpha) draw (small alpha: each user sees few labels), drawn
    again until every user has `MIN_ROWS_PER_USER` rows."""
    by_label: Dict[str, List[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for _ in range(1000):
        parts: List[List[int]] = [[] for _ in range(users)]
        for rows in by_label.values():
            rows = list(rng.permutation(rows))
            shares = rng.dirichlet([alpha] * users)
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for user, chunk in enumerate(np.split(np.array(rows), cuts)):
                parts[user].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= MIN_ROWS_PER_USER:
            return parts
    raise SystemExit(f"could not give every one of {users} users {MIN_ROWS_PER_USER} rows: use fewer users")


def halves(rows, labels, rng):
    """A user's train and held-out halves, stratified by label where a
    label has two rows or more (a single row goes to train)."""
    by_label: Dict[str, List[int]] = {}
    for i in rows:
        by_label.setdefault(labels[i], []).append(i)
    train: List[int] = []
    held_out: List[int] = []
    for members in by_label.values():
        members = list(rng.permutation(members))
        cut = (len(members) + 1) // 2
        train.extend(int(i) for i in members[:cut])
        held_out.extend(int(i) for i in members[cut:])
    return train, held_out


def summary(values):
    values = np.array(values, dtype=float)
    return {"mean": round(float(values.mean()), 4), "p10": round(float(np.percentile(values, 10)), 4)}


def labelled(rows, indices):
    return [attune.LabelledText(text=rows[i][0], label=rows[i][1]) for i in indices]


async def accuracy(p, task, examples):
    return (await p.evaluate(task, examples)).accuracy


def user_task(user: int) -> str:
    return f"user-{user}"


def held_out_task(user: int) -> str:
    return f"user-{user}-held-out"


def federated_task(user: int) -> str:
    """The train half as the simulated device's rounds see it (a task of its
    own, so private rounds leave the `local` arm public)."""
    return f"user-{user}-federated"


def personal_task(user: int) -> str:
    """The same train half, for the arm that starts from the shared model
    (the `local` arm's head would otherwise stand in its way)."""
    return f"user-{user}-personal"


# Models loaded in this process (a Ray worker), by directory: Flower hands
# each message a fresh copy of the ClientApp, so the model lives here.
_LOADED: Dict[str, "attune.sync.Model"] = {}


class SimulatedDevices:
    """The simulation's ClientApp side: each Ray worker loads the model once
    and opens the simulation database for each message; a device's task is
    its partition's."""

    def __init__(self, database: str, model_dir: str):
        self.database = database
        self.model_dir = model_dir

    def open(self, context) -> attune.sync.Personalizer:
        if self.model_dir not in _LOADED:
            _LOADED[self.model_dir] = attune.sync.Model.load(self.model_dir, threads=1)
        return attune.sync.Personalizer.open_with_model(self.database, _LOADED[self.model_dir])

    @staticmethod
    def task(context):
        return federated_task(int(context.node_config["partition-id"]))


async def prepare(p, rows, users_train, users_held, central, scored):
    """All train halves pooled for `centralized`, first: one large call
    embeds them in length-sorted batches, and every later task finds its
    texts' vectors in the feature cache. Then every user's train half as
    its device's federated task; for the scored users also the tasks of
    the `local` and `personalized` arms and the held-out half."""
    say(f"embedding {len(central)} train texts")
    await p.add_examples("central", labelled(rows, central))
    for u, train in enumerate(users_train):
        await p.add_examples(federated_task(u), labelled(rows, train))
    say(f"embedding the held-out halves of {len(scored)} users")
    for u in scored:
        await p.add_examples(user_task(u), labelled(rows, users_train[u]))
        await p.add_examples(personal_task(u), labelled(rows, users_train[u]))
        await p.add_examples(held_out_task(u), labelled(rows, users_held[u]))


async def evaluate_all(p, rows, users_held, scored, shared):
    local, shared_acc, personal, central = [], [], [], []
    await p.train("central")
    for u in scored:
        held = labelled(rows, users_held[u])
        await p.train(user_task(u))
        local.append(await accuracy(p, user_task(u), held))
        shared_acc.append((await p.federated_evaluate(held_out_task(u), shared)).accuracy)
        central.append(await accuracy(p, "central", held))
    reasons: "Counter[Tuple[bool, str]]" = Counter()
    for u in scored:
        held = labelled(rows, users_held[u])
        await p.adopt_shared(personal_task(u), shared)
        trained = await p.train(personal_task(u))
        reasons[(trained.promoted, re.sub(r"\d+", "N", trained.promotion_reason))] += 1
        personal.append(await accuracy(p, personal_task(u), held))
    for (promoted, reason), count in reasons.most_common(5):
        say(f"personal head {'promoted' if promoted else 'kept back'} for {count} users: {reason}")
    promoted_users = sum(count for (was, _), count in reasons.items() if was)
    return local, shared_acc, personal, central, promoted_users


def privacy_from_args(args):
    if args.dp_noise is None:
        return None
    if args.dp_at == "device" and args.dp_budget is None:
        raise SystemExit("--dp-at device needs --dp-budget (each device's ε budget)")
    return Privacy(at=args.dp_at, noise=args.dp_noise, clip=args.clip, budget=args.dp_budget, delta=args.dp_delta)


def spent_epsilon(summary_json, privacy):
    """The run's ε: the population's (Flower's accountant) for central
    noise, the most any device spent for local noise."""
    if privacy is None:
        return None, None
    if privacy.at == "server":
        return summary_json["privacy"]["epsilon"], summary_json["privacy"]["delta"]
    spent = [float(r["max-epsilon"]) for r in summary_json["train"].values() if "max-epsilon" in r]
    return (max(spent) if spent else None), (privacy.delta or 1e-5)


def rounds_of(args, label_list, workdir: Path) -> Rounds:
    """The server's settings (the backbone is filled in once loaded);
    settings the server would refuse (a central budget the rounds would
    pass, float16 with privacy) are refused before anything runs."""
    settings = Rounds(
        labels=label_list,
        fingerprint="",
        dimension=0,
        rounds=args.rounds,
        fraction=args.fraction,
        min_nodes=max(1, int(args.users * args.fraction)),
        output=str(workdir / "server"),
        privacy=privacy_from_args(args),
        population=args.users,
        f16_updates=args.f16_updates,
        strategy=args.strategy,
        fraction_evaluate=args.evaluate_fraction,
    )
    try:
        strategy_for(settings, {})  # the server's own checks, before anything is embedded
    except ValueError as refused:
        raise SystemExit(f"refused: {refused}") from None
    return settings


def simulate(args) -> dict:
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = read_rows(args.data, args.text_col, args.label_col)
    labels = [label for _, label in rows]
    label_list = sorted(set(labels))
    parts = dirichlet_users(labels, args.users, args.alpha, rng)
    split = [halves(part, labels, rng) for part in parts]
    users_train = [train for train, _ in split]
    users_held = [held for _, held in split]
    central = [i for train in users_train for i in train]
    with_held_out = [u for u, held in enumerate(users_held) if held]
    count = min(args.score_users or len(with_held_out), len(with_held_out))
    scored = sorted(int(u) for u in rng.choice(with_held_out, size=count, replace=False))
    say(f"{len(rows)} rows, {len(label_list)} labels, {args.users} users (alpha {args.alpha})")

    workdir = Path(tempfile.mkdtemp(prefix="attune-simulate-"))
    settings = rounds_of(args, label_list, workdir)
    database = str(workdir / "simulation.db")

    async def setup():
        model = await attune.Model.load(args.model)
        p = await attune.Personalizer.open_with_model(database, model)
        await prepare(p, rows, users_train, users_held, central, scored)
        return p

    p = asyncio.run(setup())
    prepared = time.perf_counter()
    settings = replace(settings, fingerprint=p.model_fingerprint(), dimension=p.dimension())
    devices = SimulatedDevices(database, args.model)
    from flwr.simulation import run_simulation

    say(f"{args.rounds} rounds on Flower's simulation engine")
    run_simulation(
        server_app=make_server_app(settings),
        client_app=make_client_app(devices.open, SimulatedDevices.task),
        num_supernodes=args.users,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    federated = time.perf_counter()
    blob = (workdir / "server/shared-model.bin").read_bytes()
    epsilon, delta = spent_epsilon(json.loads((workdir / "server/summary.json").read_text()), settings.privacy)
    shared = attune.shared_model_from_bytes(blob, settings.fingerprint)
    say("evaluating local, shared, personalized and centralized heads")
    local, shared_acc, personal, central_acc, promoted = asyncio.run(
        evaluate_all(p, rows, users_held, scored, shared)
    )
    p.close()
    shutil.rmtree(workdir, ignore_errors=True)  # the simulation database holds a copy of every text
    return {
        "users": args.users,
        "scored_users": len(scored),
        "rounds": args.rounds,
        "local": summary(local),
        "shared": summary(shared_acc),
        "personalized": summary(personal),
        "centralized": summary(central_acc),
        # Users whose personal head replaced the shared one.
        "personal_promoted": promoted,
        # What one device sends per round: the weights and bias in f32 (or f16).
        "bytes_per_update": (2 if args.f16_updates else 4) * (len(shared.weights) + len(shared.bias)),
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_embedding": round(prepared - started, 1),
        "seconds_per_round": round((federated - prepared) / args.rounds, 2),
        "epsilon": round(epsilon, 3) if epsilon is not None else None,
        "delta": delta,
        "dp_at": settings.privacy.at if settings.privacy else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m attune.flower simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV with a text and a label column")
    parser.add_argument("--text-col", default="text")
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of users sampled per round")
    parser.add_argument("--dp-noise", type=float, help="noise multiplier (differential privacy)")
    parser.add_argument("--clip", type=float, default=1.0, help="L2 clip of each update's change")
    parser.add_argument(
        "--dp-at",
        choices=["server", "device"],
        default="server",
        help="server: central noise on the average, the population's ε; device: local noise on each update",
    )
    parser.add_argument("--dp-budget", type=float, help="ε budget: the population's (server) or each device's")
    parser.add_argument("--dp-delta", type=float, help="δ (default 1/users at the server, 1e-5 on a device)")
    parser.add_argument("--evaluate-fraction", type=float, help="share of users scoring the model each round")
    parser.add_argument("--strategy", choices=["fedavg", "fedavgm", "fedadam"], default="fedavg", help="Flower's strategy")
    parser.add_argument("--f16-updates", action="store_true", help="devices send float16 weights (half the bytes)")
    parser.add_argument("--score-users", type=int, help="score the arms on this many users drawn at random")
    parser.add_argument("--model", default="models/cache/all-minilm-l6-v2", help="model directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    args = parser.parse_args(argv)
    print(json.dumps(simulate(args)))
