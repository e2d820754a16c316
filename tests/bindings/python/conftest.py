"""Finds the Python binding and picks the model.

By default the tests import the package bindings/generate writes to
target/bindings/python; with ATTUNE_PYTHON_BINDINGS=installed they import the
`attune` package installed from the wheel (tests/run does that).
"""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
if os.environ.get("ATTUNE_PYTHON_BINDINGS") != "installed":
    GENERATED = REPO / "target/bindings/python"
    if not (GENERATED / "attune/attune_ffi.py").exists():
        raise pytest.UsageError(f"no generated binding in {GENERATED}: run bindings/generate first")
    sys.path.insert(0, str(GENERATED))


def pytest_report_header():
    import attune

    return f"attune binding: {pathlib.Path(attune.__file__).parent}"


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
