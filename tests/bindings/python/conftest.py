"""Loads the generated Python binding (run bindings/generate first) and picks the model."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BINDINGS = pathlib.Path(os.environ.get("ATTUNE_PYTHON_BINDINGS", REPO / "target/bindings/python"))

if not (BINDINGS / "attune_ffi.py").exists():
    raise pytest.UsageError(f"no generated binding in {BINDINGS}: run bindings/generate first")
sys.path.insert(0, str(BINDINGS))


@pytest.fixture(scope="session")
def model_dir():
    """The default model when fetched (tests/run always fetches it), else the tiny one."""
    default = REPO / "models/cache/all-minilm-l6-v2"
    if (default / "manifest.json").exists():
        return str(default)
    if os.environ.get("ATTUNE_REQUIRE_DEFAULT_MODEL") == "1":
        raise RuntimeError("the default model is required: run models/fetch")
    pytest.skip("the default model is not fetched: run models/fetch")


@pytest.fixture(scope="session")
def tiny_model_dir():
    return str(REPO / "models/tiny")
