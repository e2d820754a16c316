"""Federated personalization on Flower: every device starts from what all
devices learned, and no text leaves any of them.

``attune.flower.client.app`` is a Flower ``ClientApp`` (Message API): it
receives the shared model as an ``ArrayRecord`` (weights ``labels × dim``,
bias), trains it on the device's own examples with
``Personalizer.federated_fit`` and replies with the new arrays and a
``MetricRecord`` holding ``num-examples``; on evaluation it scores the shared
model with ``federated_evaluate``. ``attune.flower.server.app`` is a
``ServerApp`` that runs Flower's own ``FedAvg`` over them. Only weights for
the app's label list and example counts travel.

Node configuration of a SuperNode: ``database`` (the device's Attune
database) and ``model-dir``. Run configuration: ``task``, ``labels``
(comma-separated), ``fingerprint`` and ``dimension`` of the backbone,
``num-server-rounds``, and optionally ``fraction-train``,
``min-nodes`` and ``output`` (a directory the server writes the final model
and a summary to). Differential privacy: ``dp-noise`` (noise multiplier),
``dp-clip`` (default 1), ``dp-at`` (``server``, the default: central noise
through Flower's DP wrapper and RDP accountant, which needs ``population``,
the number of devices; or ``device``: local noise, which needs
``dp-budget``, each device's ε), ``dp-budget`` and ``dp-delta``. Also
``strategy`` (``fedavg``, ``fedavgm``, ``fedadam``), ``fraction-evaluate``
and ``update-dtype`` (``float16`` halves every update).

Install with the ``flower`` extra: ``pip install 'attune-….whl[flower]'``.
"""
