#!/usr/bin/env python3
"""The models a user would reach for instead of Attune's int8 path.

Not a test. From a model directory whose ONNX stores its weights as int8
times a scale (Cast + Mul on an initializer, as the default model does), this
writes two sibling model directories:

  <out>/fp32   the same graph with those weights dequantised to float32
               initializers (what the int8 storage stands for);
  <out>/qdyn   ONNX Runtime's own dynamic int8 quantisation of that fp32
               graph (onnxruntime.quantization.quantize_dynamic: int8
               weights, activations quantised per call to uint8).

Each gets the tokenizer and a manifest with its own file's sha256 and size
(the fingerprint is the source model's: both compute the same features up to
rounding). Usable as a script or imported (`derive(model_dir, out)`).

  python3 tests/bench/ort_int8.py OUT [--model DIR]
"""

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models"))


def dequantised(model):
    """The graph with every `Cast(int8 initializer) * scale` folded into a float32 initializer."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    folded, dropped_nodes = {}, set()
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        cast = producers.get(node.input[0])
        scale = initializers.get(node.input[1])
        if cast is None or cast.op_type != "Cast" or scale is None or cast.input[0] not in initializers:
            continue
        q = numpy_helper.to_array(initializers[cast.input[0]])
        if q.dtype != np.int8:
            continue
        weight = q.astype(np.float32) * numpy_helper.to_array(scale).astype(np.float32)
        folded[node.output[0]] = numpy_helper.from_array(weight, node.output[0])
        dropped_nodes.update([id(node), id(cast)])
    kept = [n for n in graph.node if id(n) not in dropped_nodes]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    remaining = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining + list(folded.values()))
    return model, len(folded)


def write_model_dir(source: Path, manifest: dict, out: Path) -> None:
    """The tokenizer and a manifest beside `out/model.onnx`."""
    data = (out / "model.onnx").read_bytes()
    shutil.copy(source / manifest["tokenizer_file"], out / manifest["tokenizer_file"])
    derived = dict(manifest, model_file="model.onnx", model_sha256=hashlib.sha256(data).hexdigest(),
                   model_bytes=len(data))
    derived.pop("source", None)
    (out / "manifest.json").write_text(json.dumps(derived, indent=2) + "\n")


def derive(model_dir: Path, out: Path) -> tuple[Path, Path]:
    """Writes `out/fp32` and `out/qdyn` (unless present) and returns them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, qdyn = out / "fp32", out / "qdyn"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    if not (fp32 / "manifest.json").is_file():
        model, count = dequantised(onnx.load(model_dir / manifest["model_file"]))
        if count == 0:
            raise SystemExit(f"{model_dir}: no int8-stored weights to dequantise")
        fp32.mkdir(parents=True, exist_ok=True)
        onnx.save(model, fp32 / "model.onnx")
        write_model_dir(model_dir, manifest, fp32)
    if not (qdyn / "manifest.json").is_file():
        qdyn.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(fp32 / "model.onnx", qdyn / "model.onnx", weight_type=QuantType.QInt8)
        write_model_dir(model_dir, manifest, qdyn)
    return fp32, qdyn


def main() -> None:
    import attune_models as am

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    for path in derive(args.model or am.fetch(None, quiet=True), args.out):
        print(path)


if __name__ == "__main__":
    main()
