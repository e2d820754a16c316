"""The server's half, as a Flower ``ServerApp`` running Flower's ``FedAvg``,
wrapped in Flower's differential-privacy strategy for central noise."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    Strategy,
)

import attune

from .shared import UNIFORM_WEIGHT, UPDATE_DTYPE, arrays_of, model_of, round_config


@dataclass
class Privacy:
    """User-level differential privacy of the rounds. ``at="server"``
    (central): each device clips its update's change to ``clip``, Flower's
    DP wrapper adds Gaussian noise of ``noise · clip / sampled`` to the
    average, and Flower's RDP accountant counts the population's ε at
    ``delta`` (default 1 / population); a round that would pass ``budget``
    is not run. ``at="device"`` (local): each device adds noise of
    ``noise · clip`` to its own update and charges its ledger, whose ε may
    not pass ``budget``."""

    at: str
    noise: float
    clip: float
    budget: Optional[float] = None
    delta: Optional[float] = None


@dataclass
class Rounds:
    """What the server runs: the label list and backbone of the shared
    model, rounds, the share of devices sampled per round, and where the
    final model and a summary go."""

    labels: List[str]
    fingerprint: str
    dimension: int
    rounds: int
    fraction: float = 1.0
    min_nodes: int = 2
    output: Optional[str] = None
    privacy: Optional[Privacy] = None
    # Devices in the federation: central privacy waits for all of them and
    # samples `fraction` of them each round.
    population: Optional[int] = None
    # Devices send float16 weights (half the bytes); the server widens them
    # to float32 before averaging. Not with privacy: rounding would move a
    # clipped update past its clip norm.
    f16_updates: bool = False
    # Share of devices that score the model each round (default: fraction).
    fraction_evaluate: Optional[float] = None
    # Flower's strategy: "fedavg" (the only one central privacy accounts
    # for), "fedavgm" (server momentum 0.9) or "fedadam".
    strategy: str = "fedavg"


def count_devices(records, _weighted_by_key: str) -> MetricRecord:
    """Train metrics of a round: how many devices replied, with how many
    examples, and the largest ε a device has spent (private updates)."""
    examples = sum(int(r["metrics"]["num-examples"]) for r in records)
    metrics = {"devices": len(records), "num-examples": examples}
    spent = [float(r["metrics"]["epsilon"]) for r in records if "epsilon" in r["metrics"]]
    if spent:
        metrics["max-epsilon"] = max(spent)
    return MetricRecord(metrics)


def weighted_accuracy(records, _weighted_by_key: str) -> MetricRecord:
    """Evaluate metrics of a round: accuracy over all devices' examples."""
    examples = sum(int(r["metrics"]["num-examples"]) for r in records)
    correct = sum(float(r["metrics"]["accuracy"]) * int(r["metrics"]["num-examples"]) for r in records)
    return MetricRecord({"devices": len(records), "num-examples": examples, "accuracy": correct / max(examples, 1)})


class WidenedReplies(Strategy):
    """`strategy` on replies whose float16 arrays are widened to float32
    first, so that Flower's FedAvg sums in float32."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def configure_train(self, server_round, arrays, config, grid):
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.strategy.aggregate_train(server_round, [widened(reply) for reply in replies])

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def widened(reply):
    if not reply.has_error():
        widen(reply.content)
    return reply


def widen(content) -> None:
    """Every array of a reply's ``RecordDict`` as float32."""
    for key, record in list(content.array_records.items()):
        content[key] = ArrayRecord({k: Array(a.numpy().astype(np.float32)) for k, a in record.items()})


STRATEGIES = {
    "fedavg": lambda **common: FedAvg(**common),
    "fedavgm": lambda **common: FedAvgM(server_momentum=0.9, **common),
    "fedadam": lambda **common: FedAdam(**common),
}


def averaging(settings: Rounds, weighted_by_key: str, min_available: int) -> FedAvg:
    """The settings' Flower strategy (FedAvg or one built on it)."""
    if settings.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {settings.strategy!r}: one of {', '.join(STRATEGIES)}")
    return STRATEGIES[settings.strategy](
        fraction_train=settings.fraction,
        fraction_evaluate=settings.fraction if settings.fraction_evaluate is None else settings.fraction_evaluate,
        min_train_nodes=settings.min_nodes,
        # A share of its own scores with however many devices it comes to.
        min_evaluate_nodes=settings.min_nodes if settings.fraction_evaluate is None else 1,
        min_available_nodes=min_available,
        weighted_by_key=weighted_by_key,
        train_metrics_aggr_fn=count_devices,
        evaluate_metrics_aggr_fn=weighted_accuracy,
    )


class PrivacyBudgetTooSmall(ValueError):
    """The rounds asked for would spend more ε than the budget allows."""


def central_privacy(settings: Rounds):
    """FedAvg in Flower's DP wrapper (devices clip, the server adds the
    noise), and the RDP accountant that counts the population's ε. Flower
    accounts these rounds without amplification by sampling."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    privacy, population = settings.privacy, settings.population
    if population is None:
        raise ValueError("central privacy needs the population (the number of devices)")
    if settings.strategy != "fedavg":
        raise ValueError("Flower accounts central privacy for FedAvg only")
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=privacy.delta if privacy.delta is not None else 1.0 / population,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=privacy.budget,
        )
    )
    sampled = max(int(population * settings.fraction), settings.min_nodes)
    round_release = GaussianPrivacyEvent(noise_multiplier=privacy.noise, sample_size=sampled, population_size=population)
    if privacy.budget is not None and accountant.would_exceed(round_release, count=settings.rounds):
        # Refused before the first round, not stopped halfway by Flower.
        raise PrivacyBudgetTooSmall(
            f"{settings.rounds} rounds at noise multiplier {privacy.noise} would pass the budget "
            f"ε = {privacy.budget}: fewer rounds or more noise"
        )
    strategy = DifferentialPrivacyClientSideFixedClipping(
        averaging(settings, UNIFORM_WEIGHT, population),
        noise_multiplier=privacy.noise,
        clipping_norm=privacy.clip,
        num_sampled_clients=sampled,
        accountant=accountant,
    )
    return strategy, accountant


def device_privacy_config(privacy: Privacy) -> dict:
    """What a round tells devices that add the noise themselves."""
    if privacy.budget is None:
        raise ValueError("noise on the devices needs each device's ε budget")
    return {"dp-clip": float(privacy.clip), "dp-noise": float(privacy.noise), "dp-epsilon": float(privacy.budget)}


def run_rounds(grid: Grid, settings: Rounds) -> None:
    start = attune.shared_model_zeros(settings.fingerprint, settings.labels, settings.dimension)
    config = round_config(settings.labels, settings.fingerprint)
    privacy, accountant = settings.privacy, None
    if privacy is not None and settings.f16_updates:
        raise ValueError("float16 updates and differential privacy do not go together")
    if privacy is not None and privacy.at == "server":
        strategy, accountant = central_privacy(settings)
    else:
        strategy = averaging(settings, "num-examples", settings.min_nodes)
        if privacy is not None:
            config.update(device_privacy_config(privacy))
    if settings.f16_updates:
        config[UPDATE_DTYPE] = "float16"
        strategy = WidenedReplies(strategy)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays_of(start),
        num_rounds=settings.rounds,
        train_config=config,
        evaluate_config=config,
    )
    if settings.output is not None:
        out = Path(settings.output)
        out.mkdir(parents=True, exist_ok=True)
        final = model_of(result.arrays, config)
        (out / "shared-model.bin").write_bytes(attune.shared_model_to_bytes(final))
        summary = {
            "train": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
            "evaluate": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
        }
        if accountant is not None:
            spent = accountant.get_privacy_spent()
            summary["privacy"] = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
        (out / "summary.json").write_text(json.dumps(summary))


def make_server_app(settings: Rounds) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, settings)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed server: settings from the run configuration."""
    run = context.run_config
    settings = Rounds(
        labels=[label.strip() for label in str(run["labels"]).split(",") if label.strip()],
        fingerprint=str(run["fingerprint"]),
        dimension=int(run["dimension"]),
        rounds=int(run["num-server-rounds"]),
        fraction=float(run.get("fraction-train", 1.0)),
        fraction_evaluate=float(run["fraction-evaluate"]) if "fraction-evaluate" in run else None,
        min_nodes=int(run.get("min-nodes", 2)),
        output=str(run["output"]) if "output" in run else None,
        privacy=privacy_of(run),
        population=int(run["population"]) if "population" in run else None,
        f16_updates=str(run.get("update-dtype", "float32")) == "float16",
        strategy=str(run.get("strategy", "fedavg")),
    )
    run_rounds(grid, settings)


def privacy_of(run) -> Optional[Privacy]:
    """Run config ``dp-at`` (server or device), ``dp-noise``, ``dp-clip``,
    ``dp-budget``, ``dp-delta``; none without ``dp-noise``."""
    if "dp-noise" not in run:
        return None
    return Privacy(
        at=str(run.get("dp-at", "server")),
        noise=float(run["dp-noise"]),
        clip=float(run.get("dp-clip", 1.0)),
        budget=float(run["dp-budget"]) if "dp-budget" in run else None,
        delta=float(run["dp-delta"]) if "dp-delta" in run else None,
    )
