"""The device's half of a round, as a Flower ``ClientApp``."""

import typing
from typing import Dict, Mapping, Optional, Union

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

import attune
import attune.sync

from .shared import UNIFORM_WEIGHT, UPDATE_DTYPE, arrays_of, model_of

# A device with no example of the round's labels, or no task at all. uniffi
# defines the error's cases at import, where a type checker cannot see them.
NOTHING_TO_LEARN_FROM = (attune.AttuneError.NotTrained, attune.AttuneError.UnknownTask)  # type: ignore[attr-defined]


def make_client_app(
    open_personalizer: typing.Callable[[Context], attune.sync.Personalizer],
    task_of: typing.Callable[[Context], str],
) -> ClientApp:
    """A ClientApp whose device is ``open_personalizer(context)`` (closed
    after each message) and whose examples are those of task
    ``task_of(context)``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records["config"]
        arrays = msg.content.array_records["arrays"]
        shared = model_of(arrays, config)
        settings = attune.FederatedSettings(seed=int(number(config, "server-round")))
        if "dp-noise" in config:
            settings.dp_clip = number(config, "dp-clip")
            settings.dp_noise = number(config, "dp-noise")
            settings.dp_epsilon = number(config, "dp-epsilon")
        if KEY_CLIPPING_NORM in config:
            # Flower's DP wrapper adds the noise at the server; the device bounds its change.
            settings.clip_norm = number(config, KEY_CLIPPING_NORM)

        try:
            with open_personalizer(context) as p:
                update = p.federated_fit(task_of(context), shared, settings)
        except NOTHING_TO_LEARN_FROM:
            # Nothing to learn from: the model back unchanged, weighing nothing in
            # FedAvg (and a zero change in a private round, which counts every device).
            return reply(msg, arrays, {"num-examples": 0, UNIFORM_WEIGHT: 1})
        metrics: Dict[str, Union[int, float]] = {"num-examples": int(update.examples), UNIFORM_WEIGHT: 1}
        if update.privacy_epsilon is not None:
            metrics["epsilon"] = float(update.privacy_epsilon)
        dtype = np.float16 if config.get(UPDATE_DTYPE) == "float16" else np.float32
        return reply(msg, arrays_of(update.model, dtype), metrics)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        shared = model_of(msg.content.array_records["arrays"], msg.content.config_records["config"])

        try:
            with open_personalizer(context) as p:
                metrics = p.federated_evaluate(task_of(context), shared)
        except NOTHING_TO_LEARN_FROM:
            return reply(msg, None, {"num-examples": 0, UNIFORM_WEIGHT: 1, "accuracy": 0.0})
        scores = {"num-examples": int(metrics.examples), UNIFORM_WEIGHT: 1, "accuracy": float(metrics.accuracy)}
        return reply(msg, None, scores)

    return app


def number(config: ConfigRecord, key: str) -> float:
    """A number of the round's configuration (0 when absent)."""
    return float(typing.cast(float, config.get(key, 0)))


def reply(msg: Message, arrays: Optional[ArrayRecord], metrics: Mapping[str, Union[int, float]]) -> Message:
    content = RecordDict({"metrics": MetricRecord(dict(metrics))})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _node_database(context: Context) -> attune.sync.Personalizer:
    """A SuperNode's device: node config ``database`` and ``model-dir``."""
    config = attune.Config(
        database_path=str(context.node_config["database"]), model_dir=str(context.node_config["model-dir"])
    )
    return attune.sync.Personalizer.open(config)


def _run_task(context: Context) -> str:
    return str(context.run_config.get("task", "intents"))


app = make_client_app(_node_database, _run_task)
