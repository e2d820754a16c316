"""Federated rounds for real: a Flower SuperLink and four SuperNodes on
127.0.0.1 (gRPC, insecure on loopback only), each SuperNode one device with
its own Attune database, running attune.flower's ClientApp and ServerApp
for two rounds of Flower's FedAvg."""

import asyncio
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

import attune

if os.environ.get("ATTUNE_REQUIRE_FLOWER") != "1":
    pytest.importorskip("flwr")

REPO = pathlib.Path(__file__).resolve().parents[3]
INTENTS = json.loads((REPO / "tests/data/intents.json").read_text())["intents"]
# Each device has examples of only some intents (non-IID); the last one has
# none of the federation's intents (it replies, weighing nothing).
SHARES = [[0, 1, 2, 3], [3, 4, 5], [5, 6, 7, 0], []]
ROUNDS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds=120):
    """Until something listens on 127.0.0.1:`port` (a loaded machine starts SuperLink slowly)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def flower(command, *args, env, log):
    """Starts one of Flower's console programs with the Python running the tests."""
    modules = {
        "flower-superlink": "from flwr.superlink.cli import flower_superlink as main",
        "flower-supernode": "from flwr.supernode.cli import flower_supernode as main",
        "flwr": "from flwr.cli.app import app as main",
    }
    code = f"import sys; sys.argv[0] = {command!r}; {modules[command]}; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


async def prepare_device(path, model_dir, share):
    async with await attune.Personalizer.open(attune.Config(database_path=str(path), model_dir=model_dir)) as p:
        examples = [attune.LabelledText(text=t, label=INTENTS[i]["label"]) for i in share for t in INTENTS[i]["train"]]
        unrelated = [attune.LabelledText(text="a note to self about nothing", label="not-federated")]
        await p.add_examples("intents", examples or unrelated)
        return p.model_fingerprint(), p.dimension(), p.stats("intents").examples


async def prepare_device_count(path, model_dir):
    async with await attune.Personalizer.open(attune.Config(database_path=str(path), model_dir=model_dir)) as p:
        return p.stats("intents").examples


async def accuracy_of(model, path, model_dir):
    held_out = [attune.LabelledText(text=t, label=i["label"]) for i in INTENTS for t in i["held_out"]]
    async with await attune.Personalizer.open(attune.Config(database_path=str(path), model_dir=model_dir)) as p:
        await p.adopt_shared("intents", model)
        return (await p.evaluate("intents", held_out)).accuracy


def app_dir(root):
    """The repository's Flower app (bindings/python/flower-app), as a user runs it."""
    app = root / "app"
    shutil.copytree(REPO / "bindings/python/flower-app", app)
    return app


def run_config(labels, fingerprint, dimension, output):
    """The settings this run overrides, as `flwr run --run-config` takes them."""
    return (
        f"labels='{','.join(labels)}' fingerprint='{fingerprint}' dimension={dimension} "
        f"num-server-rounds={ROUNDS} min-nodes=4 output='{output}'"
    )


def test_four_supernodes_two_rounds(tmp_path, tiny_model_dir):
    labels = [i["label"] for i in INTENTS]
    devices = [tmp_path / f"device-{d}.db" for d in range(len(SHARES))]
    prepared = [asyncio.run(prepare_device(db, tiny_model_dir, share)) for db, share in zip(devices, SHARES)]
    fingerprint, dimension, _ = prepared[0]

    env = dict(os.environ)
    # Flower's own subprocesses (ServerApp, ClientApp) import attune as the tests do.
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(attune.__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    # SuperLink serves its Fleet, Control and runtime APIs on one HTTP port.
    superlink = free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home/config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{superlink}"\ninsecure = true\n'
    )
    output = tmp_path / "output"
    app = app_dir(tmp_path)
    log = open(tmp_path / "flower.log", "wb")
    processes = [flower("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(superlink),
                        "--disable-runtime-dependency-installation", env=env, log=log)]
    try:
        wait_for_port(superlink)
        for d, db in enumerate(devices):
            node_config = f'database="{db}" model-dir="{tiny_model_dir}"'
            processes.append(flower("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{superlink}",
                                    "--host", "127.0.0.1", "--port", str(free_port()),
                                    "--node-config", node_config, env=env, log=log))
        overrides = run_config(labels, fingerprint, dimension, output)
        run = flower("flwr", "run", str(app), "test", "--stream", "--run-config", overrides, env=env, log=log)
        deadline = time.time() + 300
        while not (output / "summary.json").exists() and time.time() < deadline and run.poll() in (None, 0):
            time.sleep(1)
        run.terminate()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        log.close()
    assert (output / "summary.json").exists(), (tmp_path / "flower.log").read_text()[-4000:]

    summary = json.loads((output / "summary.json").read_text())
    examples = sum(p[2] for p in prepared[:-1])
    assert [summary["train"][str(r)]["devices"] for r in range(1, ROUNDS + 1)] == [4] * ROUNDS
    assert [summary["train"][str(r)]["num-examples"] for r in range(1, ROUNDS + 1)] == [examples] * ROUNDS

    final = attune.shared_model_from_bytes((output / "shared-model.bin").read_bytes(), fingerprint)
    zero = attune.shared_model_zeros(fingerprint, labels, dimension)
    trained = asyncio.run(accuracy_of(final, tmp_path / "check-final.db", tiny_model_dir))
    untrained = asyncio.run(accuracy_of(zero, tmp_path / "check-zero.db", tiny_model_dir))
    assert trained > untrained, (trained, untrained)

    # No device's database holds a text it did not have: nothing came in but weights.
    for d, db in enumerate(devices):
        content = db.read_bytes()
        foreign = [t for i, intent in enumerate(INTENTS) if i not in SHARES[d] for t in intent["train"]]
        assert not [t for t in foreign if t.encode() in content], f"device {d} holds another device's text"
        assert asyncio.run(prepare_device_count(db, tiny_model_dir)) == prepared[d][2]


def test_float16_updates_are_averaged_in_float32():
    import numpy as np
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from attune.flower.precision import widen

    def replies():
        values = [1.0 + 2.0**-10, 1.0, 1.0, 1.0]  # each exact in float16; their mean is not
        arrays = [ArrayRecord(numpy_ndarrays=[np.full((2, 3), v, dtype=np.float16)]) for v in values]
        return [RecordDict({"arrays": a, "metrics": MetricRecord({"num-examples": 1})}) for a in arrays]

    # Flower's FedAvg sums in the arrays' own type: in float16 the small change is lost.
    assert aggregate_arrayrecords(replies(), "num-examples").to_numpy_ndarrays()[0][0, 0] == 1.0
    widened = replies()
    for content in widened:
        widen(content)
    mean = aggregate_arrayrecords(widened, "num-examples").to_numpy_ndarrays()[0]
    assert mean.dtype == np.float32 and (mean == np.float32(1.0 + 2.0**-12)).all()


def simulate(tmp_path, model_dir, *extra):
    done = simulate_raw(tmp_path, model_dir, *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def simulate_raw(tmp_path, model_dir, *extra):
    data = tmp_path / "intents.csv"
    lines = ["text,label"] + [f'"{t}",{i["label"]}' for i in INTENTS for t in i["train"] + i["held_out"]]
    data.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(attune.__file__).parents[1]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "attune.flower", "simulate", "--data", str(data), "--users", "4",
               "--rounds", "2", "--fraction", "1.0", "--alpha", "1.0", "--seed", "3",
               "--model", model_dir, "--json", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_the_simulate_command(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")  # Flower's simulation engine: the flwr[simulation] extra
    result, stderr = simulate(tmp_path, tiny_model_dir)
    assert (result["users"], result["rounds"], result["epsilon"]) == (4, 2, None)
    assert 0 <= result["personal_promoted"] <= result["scored_users"] <= 4
    for arm in ("local", "shared", "personalized", "centralized"):
        assert 0.0 <= result[arm]["p10"] <= result[arm]["mean"] <= 1.0, (arm, result)
    dimension = asyncio.run(prepare_device(tmp_path / "probe.db", tiny_model_dir, [0]))[1]
    assert result["bytes_per_update"] == 4 * len(INTENTS) * (dimension + 1)
    assert "rounds on Flower's simulation engine" in stderr

    # Float16 updates: half the bytes, widened at the server before FedAvg sums them.
    half, _ = simulate(tmp_path, tiny_model_dir, "--f16-updates")
    assert half["bytes_per_update"] == result["bytes_per_update"] // 2
    assert abs(half["shared"]["mean"] - result["shared"]["mean"]) <= 0.1, (half, result)

    # Local noise on every update: each device's ε is reported (and bounded by its budget).
    local = ["--dp-noise", "1.0", "--clip", "1.0", "--dp-at", "device", "--dp-budget", "50"]
    private, _ = simulate(tmp_path, tiny_model_dir, *local)
    assert private["dp_at"] == "device" and 0.0 < private["epsilon"] <= 50.0 and private["delta"] == 1e-5


def test_central_noise_reports_the_populations_epsilon_and_refuses_a_budget_it_would_pass(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    pytest.importorskip("dp_accounting")  # Flower's RDP accountant: the flwr[dp] extra
    central, stderr = simulate(tmp_path, tiny_model_dir, "--dp-noise", "2.0", "--clip", "0.5")
    # 2 releases of the Gaussian mechanism at noise multiplier 2, no amplification, δ = 1/users.
    # RDP of one release at order a is a / (2 z²): ε ≤ 2a/8 + log(1/δ)/(a − 1), least near a = 4.
    bound = min(2 * a / 8 + math.log(4) / (a - 1) for a in (2, 3, 4, 5, 6, 8))
    assert central["dp_at"] == "server" and central["delta"] == 0.25
    assert 0.0 < central["epsilon"] <= bound + 1e-9, (central, bound)
    # Flower's wrapper added noise of z · clip / devices = 2 · 0.5 / 4 to the average.
    assert "central DP noise with 0.2500 stdev added" in stderr, stderr[-3000:]

    refused = simulate_raw(tmp_path, tiny_model_dir, "--dp-noise", "2.0", "--dp-budget", "0.1")
    assert refused.returncode != 0 and "would pass the budget" in refused.stderr, refused.stderr[-2000:]
    assert "embedding" not in refused.stderr  # refused before any text was embedded
