"""The server's half, as a Flower ``ServerApp`` running Flower's ``FedAvg``,
wrapped in Flower's differential-privacy strategy for central noise."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, FedAvgM

import attune

from .precision import WidenedReplies
from .privacy import Privacy, device_privacy_config, population_accountant, privacy_of, set_number
from .shared import UNIFORM_WEIGHT, UPDATE_DTYPE, arrays_of, model_of, round_config


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
    metrics: Dict[str, Union[int, float, List[int], List[float]]] = {"devices": len(records), "num-examples": examples}
    spent = [float(r["metrics"]["epsilon"]) for r in records if "epsilon" in r["metrics"]]
    if spent:
        metrics["max-epsilon"] = max(spent)
    return MetricRecord(metrics)


def weighted_accuracy(records, _weighted_by_key: str) -> MetricRecord:
    """Evaluate metrics of a round: accuracy over all devices' examples."""
    examples = sum(int(r["metrics"]["num-examples"]) for r in records)
    correct = sum(float(r["metrics"]["accuracy"]) * int(r["metrics"]["num-examples"]) for r in records)
    return MetricRecord({"devices": len(records), "num-examples": examples, "accuracy": correct / max(examples, 1)})


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


def central_privacy(settings: Rounds):
    """FedAvg in Flower's DP wrapper (devices clip, the server adds the
    noise), and the accountant that counts the population's ε."""
    population = settings.population
    if population is None:
        raise ValueError("central privacy needs the population (the number of devices)")
    if settings.strategy != "fedavg":
        raise ValueError("Flower accounts central privacy for FedAvg only")
    privacy = settings.privacy
    if privacy is None:
        raise ValueError("central privacy needs its noise settings (dp-noise)")
    sampled = max(int(population * settings.fraction), settings.min_nodes)
    accountant = population_accountant(privacy, population, sampled, settings.rounds)
    strategy = DifferentialPrivacyClientSideFixedClipping(
        averaging(settings, UNIFORM_WEIGHT, population),
        noise_multiplier=privacy.noise,
        clipping_norm=privacy.clip,
        num_sampled_clients=sampled,
        accountant=accountant,
    )
    return strategy, accountant


def strategy_for(settings: Rounds, config):
    """The rounds' Flower strategy, the accountant of central privacy (or
    None), and what it adds to every round's config."""
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
    return strategy, accountant


def run_rounds(grid: Grid, settings: Rounds) -> None:
    start = attune.shared_model_zeros(settings.fingerprint, settings.labels, settings.dimension)
    config = round_config(settings.labels, settings.fingerprint)
    strategy, accountant = strategy_for(settings, config)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays_of(start),
        num_rounds=settings.rounds,
        train_config=config,
        evaluate_config=config,
    )
    if settings.output is not None:
        write_output(Path(settings.output), model_of(result.arrays, config), result, accountant)


def write_output(out: Path, final: attune.SharedModel, result, accountant) -> None:
    """The final model's bytes and a summary of every round (and the ε spent)."""
    out.mkdir(parents=True, exist_ok=True)
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
        fraction_evaluate=set_number(run, "fraction-evaluate"),
        min_nodes=int(run.get("min-nodes", 2)),
        output=str(run["output"]) if run.get("output") else None,
        privacy=privacy_of(run),
        population=int(set_number(run, "population") or 0) or None,
        f16_updates=str(run.get("update-dtype", "float32")) == "float16",
        strategy=str(run.get("strategy", "fedavg")),
    )
    run_rounds(grid, settings)

