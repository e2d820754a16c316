"""The server's half, as a Flower ``ServerApp`` running Flower's ``FedAvg``."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import attune

from .shared import arrays_of, model_of, round_config


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
    # Differential privacy on every update, added on the devices (see
    # FederatedSettings.dp_*): clip norm, noise multiplier, each device's budget.
    dp_clip: Optional[float] = None
    dp_noise: Optional[float] = None
    dp_epsilon: Optional[float] = None


def count_devices(records, weighted_by_key: str) -> MetricRecord:
    """Train metrics of a round: how many devices replied, with how many
    examples, and the largest ε a device has spent (private updates)."""
    examples = sum(int(r["metrics"][weighted_by_key]) for r in records)
    metrics = {"devices": len(records), weighted_by_key: examples}
    spent = [float(r["metrics"]["epsilon"]) for r in records if "epsilon" in r["metrics"]]
    if spent:
        metrics["max-epsilon"] = max(spent)
    return MetricRecord(metrics)


def weighted_accuracy(records, weighted_by_key: str) -> MetricRecord:
    """Evaluate metrics of a round: accuracy over all devices' examples."""
    examples = sum(int(r["metrics"][weighted_by_key]) for r in records)
    correct = sum(float(r["metrics"]["accuracy"]) * int(r["metrics"][weighted_by_key]) for r in records)
    return MetricRecord({"devices": len(records), weighted_by_key: examples, "accuracy": correct / max(examples, 1)})


def run_rounds(grid: Grid, settings: Rounds) -> None:
    start = attune.shared_model_zeros(settings.fingerprint, settings.labels, settings.dimension)
    strategy = FedAvg(
        fraction_train=settings.fraction,
        fraction_evaluate=settings.fraction,
        min_train_nodes=settings.min_nodes,
        min_evaluate_nodes=settings.min_nodes,
        min_available_nodes=settings.min_nodes,
        train_metrics_aggr_fn=count_devices,
        evaluate_metrics_aggr_fn=weighted_accuracy,
    )
    config = round_config(settings.labels, settings.fingerprint)
    if settings.dp_noise is not None:
        config["dp-clip"] = float(settings.dp_clip)
        config["dp-noise"] = float(settings.dp_noise)
        config["dp-epsilon"] = float(settings.dp_epsilon)
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
        min_nodes=int(run.get("min-nodes", 2)),
        output=str(run["output"]) if "output" in run else None,
    )
    run_rounds(grid, settings)
