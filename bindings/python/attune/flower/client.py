"""The device's half of a round, as a Flower ``ClientApp``."""

import asyncio

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import attune

from .shared import arrays_of, model_of

app = ClientApp()


def _open(context: Context):
    config = attune.Config(
        database_path=str(context.node_config["database"]), model_dir=str(context.node_config["model-dir"])
    )
    return attune.Personalizer.open(config)


def _task(context: Context) -> str:
    return str(context.run_config.get("task", "intents"))


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    shared = model_of(msg.content["arrays"], config)
    settings = attune.FederatedSettings(seed=int(config.get("server-round", 0)))

    async def fit():
        async with await _open(context) as p:
            return await p.federated_fit(_task(context), shared, settings)

    update = asyncio.run(fit())
    content = RecordDict({
        "arrays": arrays_of(update.model),
        "metrics": MetricRecord({"num-examples": int(update.examples)}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    shared = model_of(msg.content["arrays"], msg.content["config"])

    async def score():
        async with await _open(context) as p:
            return await p.federated_evaluate(_task(context), shared)

    metrics = asyncio.run(score())
    record = MetricRecord({"num-examples": int(metrics.examples), "accuracy": float(metrics.accuracy)})
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
