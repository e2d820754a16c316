#!/usr/bin/env python3
"""Write the accountant's reference values with Google's dp-accounting.

  python3 -m pip install dp-accounting && python3 tests/bench/dp_reference.py

Writes runtime/src/training/dp_reference.json: ε for Poisson-sampled Gaussian
DP-SGD at the integer Rényi orders 2..=256 that Attune's accountant uses. The
first case is TensorFlow Privacy's MNIST tutorial setting (60,000 examples,
batch 256, noise 1.1, 60 epochs, δ = 1e-5).
"""
import json
from pathlib import Path

import dp_accounting
from dp_accounting import rdp

ORDERS = list(range(2, 257))
CASES = [  # q, sigma, steps, delta
    (256 / 60000, 1.1, 60 * 60000 // 256, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.05, 0.8, 200, 1e-6),
    (0.1, 2.0, 500, 1e-5),
    (1.0, 5.0, 10, 1e-5),
    (0.002, 0.6, 5000, 1e-5),
]

out = []
for q, sigma, steps, delta in CASES:
    accountant = rdp.RdpAccountant(orders=ORDERS)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    accountant.compose(event)
    out.append({"q": q, "sigma": sigma, "steps": steps, "delta": delta,
                "epsilon": accountant.get_epsilon(delta)})
target = Path(__file__).resolve().parents[2] / "runtime/src/training/dp_reference.json"
target.write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
