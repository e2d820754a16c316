"""The server's half, as a Flower ``ServerApp`` running Flower's ``FedAvg``."""

import json
from pathlib import Path

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import attune

from .shared import arrays_of, model_of, round_config

app = ServerApp()


def count_devices(records, weighted_by_key: str) -> MetricRecord:
    """Train metrics of a round: how many devices replied and with how many examples."""
    examples = sum(int(r["metrics"][weighted_by_key]) for r in records)
    return MetricRecord({"devices": len(records), weighted_by_key: examples})


def weighted_accuracy(records, weighted_by_key: str) -> MetricRecord:
    """Evaluate metrics of a round: accuracy over all devices' examples."""
    examples = sum(int(r["metrics"][weighted_by_key]) for r in records)
    correct = sum(float(r["metrics"]["accuracy"]) * int(r["metrics"][weighted_by_key]) for r in records)
    return MetricRecord({"devices": len(records), weighted_by_key: examples, "accuracy": correct / max(examples, 1)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = context.run_config
    labels = [label.strip() for label in str(run["labels"]).split(",") if label.strip()]
    fingerprint = str(run["fingerprint"])
    start = attune.shared_model_zeros(fingerprint, labels, int(run["dimension"]))
    nodes = int(run.get("min-nodes", 2))
    strategy = FedAvg(
        fraction_train=float(run.get("fraction-train", 1.0)),
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
        train_metrics_aggr_fn=count_devices,
        evaluate_metrics_aggr_fn=weighted_accuracy,
    )
    config = round_config(labels, fingerprint)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays_of(start),
        num_rounds=int(run["num-server-rounds"]),
        train_config=config,
        evaluate_config=config,
    )
    if "output" in run:
        out = Path(str(run["output"]))
        out.mkdir(parents=True, exist_ok=True)
        final = model_of(result.arrays, config)
        (out / "shared-model.bin").write_bytes(attune.shared_model_to_bytes(final))
        summary = {
            "train": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
            "evaluate": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
        }
        (out / "summary.json").write_text(json.dumps(summary))
