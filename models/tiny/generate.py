#!/usr/bin/env python3
"""Generate the tiny BERT-shaped test models, their tokenizer and golden embeddings.

Two models: `models/tiny` (width 32) and `models/tiny-next` (width 24, other
weights, the same tokenizer), so that model upgrades are tested in every run
without the default model. Output per model (committed, checked by `SHA256SUMS`):
  model.onnx      one transformer layer, width 32, same inputs/output as a
                  sentence-transformers export; its word-embedding table is
                  stored as int8 + scale behind Cast/Mul, like the default model
  tokenizer.json  a BERT WordPiece tokenizer over a small vocabulary; like the
                  default model's, it carries a fixed padding and truncation
                  that the runtime must override
  manifest.json   the runtime's manifest (written by models/attune_models.py)
  golden.json     embeddings computed by Python onnxruntime, one text at a time

Requires: numpy, onnx, onnxruntime, tokenizers (see .ci/python-requirements.txt).
Deterministic: rerunning it reproduces the same bytes.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import attune_models as am  # noqa: E402

WIDTH = 32
FFN = 64
# The second model: what an app upgrading its backbone would ship next.
NEXT_DIR = HERE.parent / "tiny-next"
NEXT_WIDTH = 24
NEXT_FFN = 48
MAX_POSITIONS = 64
MAX_TOKENS = 48
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """the a an and or but if of to in on at for with from by about as into
is are was were be been being have has had do does did will would can could
should may might must i you he she it we they me him her us them my your our
their this that these those what which who when where why how not no yes all
any some many much more most other new good great small big first last long
little own right old high low next early young important few public bad same
able time year people way day man thing woman life child world school state
family student group country problem hand part place case week company system
program question work government number night point home water room mother area
money story fact month lot study book eye job word business issue side kind head
house service friend father power hour game line end member law car city name
team minute idea kid body information back parent face others level office door
health person art war history party result change morning reason research girl
guy moment air teacher force education meeting email message reply call photo
music movie flight hotel train bus ticket pay bill bank card account transfer
weather rain sun cold hot play stop start open close send read write buy sell
book cancel order food dinner lunch breakfast coffee tea restaurant recipe
remind alarm timer calendar schedule note list song playlist volume light
please thanks hello hi sorry help need want like love know think say get make go
see come take give find tell ask use feel try leave put mean keep let begin seem
show hear run move live believe bring happen sit stand lose meet include continue
set learn lead understand watch follow create speak spend grow walk win offer
remember consider appear wait serve die expect build stay fall cut reach kill
remain suggest raise pass report decide pull today tomorrow yesterday""".split()


def build_vocab() -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punct = list(".,!?;:'\"()-/&@#$%*+=<>[]{}_~`|\\^")
    vocab = SPECIALS + chars + punct + ["##" + c for c in chars]
    seen = set(vocab)
    for word in WORDS:
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    return vocab


def build_tokenizer(vocab: list[str]):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                    max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    tokenizer.decoder = decoders.WordPiece()
    # The default model's tokenizer.json ships a fixed padding and truncation;
    # the tiny one does too, so tests prove the runtime overrides them.
    tokenizer.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=16)
    return tokenizer


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def build_model(vocab_size: int, rng: np.random.Generator, width: int = WIDTH, ffn: int = FFN) -> onnx.ModelProto:

    def weight(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    word = weight(vocab_size, width, scale=1.0)
    word_scale = np.float32(np.abs(word).max() / 127.0)
    word_q = np.clip(np.round(word / word_scale), -127, 127).astype(np.int8)
    inits = [
        const("word_q", word_q), const("word_scale", word_scale),
        const("position", weight(MAX_POSITIONS, width, scale=0.5)),
        const("token_type", weight(2, width, scale=0.5)),
        const("ln0_g", np.ones(width, np.float32)), const("ln0_b", np.zeros(width, np.float32)),
        const("wq", weight(width, width)), const("wk", weight(width, width)),
        const("wv", weight(width, width)), const("wo", weight(width, width)),
        const("ln1_g", weight(width, scale=0.1) + 1), const("ln1_b", weight(width, scale=0.1)),
        const("w1", weight(width, ffn)), const("b1", weight(ffn, scale=0.1)),
        const("w2", weight(ffn, width)), const("b2", weight(width, scale=0.1)),
        const("ln2_g", weight(width, scale=0.1) + 1), const("ln2_b", weight(width, scale=0.1)),
        const("one", np.float32(1.0)), const("neg_big", np.float32(-10000.0)),
        const("inv_sqrt_d", np.float32(1.0 / np.sqrt(width))),
        const("half", np.float32(0.5)), const("sqrt2", np.float32(np.sqrt(2.0))),
        const("axis1", np.array([1], np.int64)), const("idx1", np.array(1, np.int64)),
        const("zero_i", np.array(0, np.int64)), const("one_i", np.array(1, np.int64)),
    ]
    n = helper.make_node
    nodes = [
        # Embeddings: int8 table dequantised in-graph, as in the default model.
        n("Cast", ["word_q"], ["word_f"], to=TensorProto.FLOAT),
        n("Mul", ["word_f", "word_scale"], ["word"]),
        n("Gather", ["word", "input_ids"], ["e_word"]),
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Gather", ["ids_shape", "idx1"], ["seq_len"]),
        n("Range", ["zero_i", "seq_len", "one_i"], ["positions"]),
        n("Gather", ["position", "positions"], ["e_pos"]),
        n("Gather", ["token_type", "token_type_ids"], ["e_type"]),
        n("Add", ["e_word", "e_pos"], ["e_wp"]),
        n("Add", ["e_wp", "e_type"], ["e_sum"]),
        n("LayerNormalization", ["e_sum", "ln0_g", "ln0_b"], ["h0"], axis=-1, epsilon=1e-12),
        # Single-head self-attention with the padding mask.
        n("MatMul", ["h0", "wq"], ["q"]), n("MatMul", ["h0", "wk"], ["k"]),
        n("MatMul", ["h0", "wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["scores_raw"]),
        n("Mul", ["scores_raw", "inv_sqrt_d"], ["scores_scaled"]),
        n("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        n("Sub", ["one", "mask_f"], ["mask_inv"]),
        n("Mul", ["mask_inv", "neg_big"], ["mask_add2"]),
        n("Unsqueeze", ["mask_add2", "axis1"], ["mask_add"]),
        n("Add", ["scores_scaled", "mask_add"], ["scores"]),
        n("Softmax", ["scores"], ["probs"], axis=-1),
        n("MatMul", ["probs", "v"], ["ctx"]),
        n("MatMul", ["ctx", "wo"], ["attn"]),
        n("Add", ["h0", "attn"], ["r1"]),
        n("LayerNormalization", ["r1", "ln1_g", "ln1_b"], ["h1"], axis=-1, epsilon=1e-12),
        # Feed-forward with erf GELU, in the order torch's exporter writes it:
        # x * (0.5 * (1 + erf(x / sqrt 2))).
        n("MatMul", ["h1", "w1"], ["f1"]), n("Add", ["f1", "b1"], ["f1b"]),
        n("Div", ["f1b", "sqrt2"], ["g_in"]), n("Erf", ["g_in"], ["g_erf"]),
        n("Add", ["g_erf", "one"], ["g_1p"]), n("Mul", ["half", "g_1p"], ["g_half"]),
        n("Mul", ["f1b", "g_half"], ["gelu"]),
        n("MatMul", ["gelu", "w2"], ["f2"]), n("Add", ["f2", "b2"], ["f2b"]),
        n("Add", ["h1", "f2b"], ["r2"]),
        n("LayerNormalization", ["r2", "ln2_g", "ln2_b"], ["last_hidden_state"],
          axis=-1, epsilon=1e-12),
    ]
    ids = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes, "attune_tiny_encoder",
        [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "sequence", width])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="attune-tiny-generator")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(directory: Path, model_id: str, seed: int, width: int, ffn: int) -> None:
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = build_vocab()
    tokenizer = build_tokenizer(vocab)
    tokenizer.save(str(directory / am.TOKENIZER_FILE), pretty=True)
    (directory / am.MODEL_FILE).write_bytes(build_model(len(vocab), rng, width, ffn).SerializeToString())
    spec = {
        "dim": width, "pooling": "mean", "normalize": True, "max_tokens": MAX_TOKENS,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "token_type_ids": "token_type_ids"},
        "output": "last_hidden_state", "prompts": {},
    }
    am.write_manifest(directory, model_id, spec, {"generated_by": "models/tiny/generate.py"})
    am.write_golden(directory, directory / "golden.json")
    names = [am.MODEL_FILE, am.TOKENIZER_FILE, am.MANIFEST_FILE, "golden.json"]
    sums = "".join(f"{hashlib.sha256((directory / f).read_bytes()).hexdigest()}  {f}\n" for f in names)
    (directory / "SHA256SUMS").write_text(sums)
    size = sum((directory / f).stat().st_size for f in names)
    print(f"wrote {', '.join(names)} ({size} bytes) and SHA256SUMS in {directory}")


def main() -> None:
    write_model(HERE, "attune-tiny-test", 20261129, WIDTH, FFN)
    write_model(NEXT_DIR, "attune-tiny-next", 20261201, NEXT_WIDTH, NEXT_FFN)


if __name__ == "__main__":
    main()
