"""The shared model between Attune's records and Flower's records."""

import typing

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

import attune

# In a round with central noise every device weighs the same (Flower's
# accountant needs uniform FedAvg: one device then moves the average by at
# most clip / devices).
UNIFORM_WEIGHT = "device-weight"


# A round's config asks devices for float16 updates with this key.
UPDATE_DTYPE = "update-dtype"


def arrays_of(model: attune.SharedModel, dtype=np.float32) -> ArrayRecord:
    """The model's weights (``labels × dim``) and bias as an ``ArrayRecord``."""
    weights = np.asarray(model.weights, dtype=dtype).reshape(len(model.labels), -1)
    return ArrayRecord(numpy_ndarrays=[weights, np.asarray(model.bias, dtype=dtype)])


def model_of(arrays: ArrayRecord, config: ConfigRecord) -> attune.SharedModel:
    """The shared model a round sends: arrays, and the label list and
    backbone fingerprint from the round's configuration. Attune checks the
    shapes and values (NaN, size) when it uses it."""
    weights, bias = arrays.to_numpy_ndarrays()
    return attune.SharedModel(
        fingerprint=str(config["fingerprint"]),
        labels=[str(label) for label in typing.cast(typing.List[str], config["labels"])],
        weights=np.asarray(weights, dtype=np.float32).ravel().tolist(),
        bias=np.asarray(bias, dtype=np.float32).ravel().tolist(),
    )


def round_config(labels, fingerprint: str) -> ConfigRecord:
    """What every round's message carries beside the arrays."""
    return ConfigRecord({"labels": list(labels), "fingerprint": fingerprint})
