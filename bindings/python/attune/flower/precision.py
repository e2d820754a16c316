"""Float16 updates: devices send half the bytes, and the server widens the
replies to float32 before Flower's strategy sums them (FedAvg sums in the
arrays' own type, and in float16 small changes vanish)."""

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy


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
