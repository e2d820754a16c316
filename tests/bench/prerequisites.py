"""What a benchmark needs on a fresh machine, fetched or built when missing:
Python packages from PyPI, the `attune` CLI and the `attune-bench` binary
(the dev profile the tests use, so nothing is built twice), the generated
Python binding, the default model."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "target/debug/attune"
BENCH = REPO / "target/debug/attune-bench"
BINDING = REPO / "target/bindings/python"
DEFAULT_MODEL = REPO / "models/cache/all-minilm-l6-v2"


def python_packages(modules, *pip_args) -> None:
    """`pip install pip_args` unless every module in `modules` imports."""
    if any(importlib.util.find_spec(m) is None for m in modules):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *pip_args], check=True)


def cli() -> Path:
    """The CLI with both inference backends (built with the features tests/run uses)."""
    return _built(CLI)


def bench() -> Path:
    """`attune-bench`, the benchmarks' binary (tests/bench/src), built like the CLI."""
    return _built(BENCH)


def _built(binary: Path) -> Path:
    if not binary.is_file():
        features = "attune/ort,attune/encryption"
        subprocess.run(["cargo", "build", "--workspace", "--features", features], cwd=REPO, check=True)
    return binary


def python_binding() -> Path:
    if not (BINDING / "attune/flower/simulate.py").is_file():
        subprocess.run([REPO / "bindings/generate"], check=True)
    return BINDING


def default_model() -> Path:
    if not (DEFAULT_MODEL / "manifest.json").is_file():
        subprocess.run([REPO / "models/fetch"], check=True)
    return DEFAULT_MODEL
