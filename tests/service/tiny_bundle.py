"""A small, complete bundle built without torch, for the service tests.

Everything the service loads is here and real: a verified manifest, a WordLevel tokenizer
(``tokenizers``), three ONNX graphs written with ``onnx.helper`` (the student, the query encoder,
the product encoder, with the contract's input and output names), and the features files that
``hmpps publish`` writes to Redis. The weights are not trained; they are chosen so that the
scores mean something a test can check: a candidate whose text shares words with the query
scores higher, and so does one close to the user's history.

    python -m tests.service.tiny_bundle OUT   # build one by hand
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.bundle import PRODUCT_ENCODER, QUERY_ENCODER, STUDENT, TOKENIZER, write_manifest
from contract.products import product_text
from contract.signals import GROUPS
from contract.spec import ENCODER_OUTPUT, OUTPUT_NAME, SIGNALS, FeatureSpec

OPSET = 17
IMAGE_SIZE = 8
HISTORY_CAP = 50
COLOURS = ["red", "blue", "green", "black", "white", "grey"]
KINDS = ["running shoes", "rain jacket", "wool socks", "trail backpack", "water bottle", "yoga mat", "desk lamp"]
BRANDS = ["Northpeak", "Riverstone", "Alto"]


@dataclass(frozen=True)
class TinyCatalog:
    products: dict[str, dict[str, object]]  # own-data product records (parse_product's fields)
    queries: list[str]
    histories: list[dict[str, object]]  # histories.jsonl rows, newest first


def catalog(seed: int = 0, n_products: int = 42, n_users: int = 24) -> TinyCatalog:
    rng = np.random.default_rng(seed)
    products: dict[str, dict[str, object]] = {}
    for i in range(n_products):
        colour, kind = COLOURS[i % len(COLOURS)], KINDS[i % len(KINDS)]
        products[f"TP{i:03d}"] = {"product_id": f"TP{i:03d}", "title": f"{colour} {kind}",
                                  "brand": BRANDS[i % len(BRANDS)], "category": ["Outdoor", kind],
                                  "description": f"A {colour} {kind} for every day."}
    queries = [f"{c} {k}" for c, k in zip(COLOURS * 3, KINDS * 3, strict=False)][:15]
    ids = list(products)
    histories = []
    for u in range(n_users):
        n = int(rng.integers(2, 9))
        items = [ids[j] for j in rng.choice(len(ids), size=n, replace=False)]
        times = sorted((1_700_000_000 - int(x) for x in rng.integers(0, 10_000_000, size=n)), reverse=True)
        histories.append({"user_id": f"TU{u:03d}", "history": items, "timestamps": times})
    return TinyCatalog(products, queries, histories)


def spec() -> FeatureSpec:
    return FeatureSpec(text_dim=16, image_dim=4, sel_dim=8, k_s2=2, pop_dim=1, cf_dim=4, signals=tuple(GROUPS), seq_dim=4)


def _tokenizer(texts: list[str], path: Path) -> None:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    words = sorted({w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())})
    vocab = {"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def _const(name: str, value: np.ndarray):  # noqa: ANN202 - an onnx TensorProto
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def _text_pool(nodes: list, prefix: str, table: str) -> str:
    """Masked mean of the token embeddings (``table``: vocab x d), then L2-normalized: name of the (B, d) result."""
    from onnx import helper

    p = prefix
    nodes += [
        helper.make_node("Gather", [table, "input_ids"], [f"{p}emb"]),  # (B, L, d)
        helper.make_node("Cast", ["attention_mask"], [f"{p}m"], to=1),
        helper.make_node("Unsqueeze", [f"{p}m", "axis2"], [f"{p}m3"]),
        helper.make_node("Mul", [f"{p}emb", f"{p}m3"], [f"{p}masked"]),
        helper.make_node("ReduceSum", [f"{p}masked", "axis1"], [f"{p}sum"], keepdims=0),
        helper.make_node("ReduceSum", [f"{p}m", "axis1"], [f"{p}n"], keepdims=1),
        helper.make_node("Max", [f"{p}n", "one"], [f"{p}n1"]),
        helper.make_node("Div", [f"{p}sum", f"{p}n1"], [f"{p}mean"]),
        helper.make_node("LpNormalization", [f"{p}mean"], [f"{p}out"], axis=-1, p=2),
    ]
    return f"{p}out"


def _text_inputs():  # noqa: ANN202
    from onnx import TensorProto, helper

    return [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "L"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "L"])]


def _shared_consts() -> list:
    return [_const("axis1", np.array([1], np.int64)), _const("axis2", np.array([2], np.int64)),
            _const("one", np.array([[1.0]], np.float32))]


def _save(graph, path: Path) -> None:  # noqa: ANN001
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny_bundle")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _query_encoder(sp: FeatureSpec, text_table: np.ndarray, sel_proj: np.ndarray, path: Path) -> None:
    """(input_ids, attention_mask) -> (1, text_dim + sel_dim): the pooled text and its normalized selection part."""
    from onnx import TensorProto, helper

    nodes: list = []
    text = _text_pool(nodes, "t_", "E")
    nodes += [helper.make_node("MatMul", [text, "P"], ["sel_raw"]),
              helper.make_node("LpNormalization", ["sel_raw"], ["sel"], axis=-1, p=2),
              helper.make_node("Concat", [text, "sel"], [ENCODER_OUTPUT], axis=1)]
    graph = helper.make_graph(nodes, "tiny_query_encoder", _text_inputs(),
                              [helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, ["B", sp.query_dim])],
                              _shared_consts() + [_const("E", text_table), _const("P", sel_proj)])
    _save(graph, path)


def _product_encoder(sp: FeatureSpec, text_table: np.ndarray, sel_proj: np.ndarray, path: Path) -> None:
    """Text, pixels and has_image -> the product's content features: text | image | has_image | sel."""
    from onnx import TensorProto, helper

    nodes: list = []
    text = _text_pool(nodes, "t_", "E")
    nodes += [
        helper.make_node("ReduceMean", ["pixels"], ["pix_mean"], axes=[2, 3], keepdims=0),  # (B, 3); axes: an attribute to opset 17
        helper.make_node("MatMul", ["pix_mean", "V"], ["img_raw"]),  # (B, image_dim)
        helper.make_node("Mul", ["img_raw", "has_image"], ["img"]),
        helper.make_node("MatMul", [text, "P"], ["sel_raw"]),
        helper.make_node("LpNormalization", ["sel_raw"], ["sel"], axis=-1, p=2),
        helper.make_node("Concat", [text, "img", "has_image", "sel"], [ENCODER_OUTPUT], axis=1),
    ]
    inputs = _text_inputs() + [
        helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["B", 3, IMAGE_SIZE, IMAGE_SIZE]),
        helper.make_tensor_value_info("has_image", TensorProto.FLOAT, ["B", 1])]
    vision = np.random.default_rng(1).normal(size=(3, sp.image_dim)).astype(np.float32)
    graph = helper.make_graph(nodes, "tiny_product_encoder", inputs,
                              [helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, ["B", sp.content_dim])],
                              _shared_consts() + [_const("E", text_table), _const("P", sel_proj), _const("V", vision)])
    _save(graph, path)


def _student(sp: FeatureSpec, path: Path) -> None:
    """yes = query.text . candidate.text + 0.5 query.sel . candidate.sel + 0.5 mean selected history.sel . candidate.sel
    + w . signals; logits = (yes, -yes)."""
    from onnx import TensorProto, helper

    qmap = np.zeros((sp.query_dim, sp.product_dim), np.float32)
    qmap[np.arange(sp.text_dim), np.arange(sp.text_dim)] = 1.0
    sel = np.arange(sp.product_sel.start, sp.product_sel.stop)
    qmap[sp.text_dim + np.arange(sp.sel_dim), sel] = 0.5
    hmap = np.zeros((sp.product_dim, sp.product_dim), np.float32)
    hmap[sel, sel] = 0.5
    w = np.random.default_rng(2).normal(scale=0.1, size=(sp.signal_dim, 1)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["query", "Q"], ["q_in_p"]),
        helper.make_node("Mul", ["q_in_p", "candidate"], ["qc"]),
        helper.make_node("ReduceSum", ["qc", "axis1"], ["s_query"], keepdims=1),
        helper.make_node("Unsqueeze", ["history_mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["history", "mask3"], ["hist_masked"]),
        helper.make_node("ReduceSum", ["hist_masked", "axis1"], ["hist_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["history_mask", "axis1"], ["hist_n"], keepdims=1),
        helper.make_node("Max", ["hist_n", "one"], ["hist_n1"]),
        helper.make_node("Div", ["hist_sum", "hist_n1"], ["hist_mean"]),
        helper.make_node("MatMul", ["hist_mean", "H"], ["h_in_p"]),
        helper.make_node("Mul", ["h_in_p", "candidate"], ["hc"]),
        helper.make_node("ReduceSum", ["hc", "axis1"], ["s_hist"], keepdims=1),
        helper.make_node("MatMul", [SIGNALS, "W"], ["s_sig"]),
        helper.make_node("Sum", ["s_query", "s_hist", "s_sig"], ["yes"]),
        helper.make_node("Neg", ["yes"], ["no"]),
        helper.make_node("Concat", ["yes", "no"], [OUTPUT_NAME], axis=1),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("query", f, ["K", sp.query_dim]),
              helper.make_tensor_value_info("candidate", f, ["K", sp.product_dim]),
              helper.make_tensor_value_info("history", f, ["K", sp.k_s2, sp.product_dim]),
              helper.make_tensor_value_info("history_mask", f, ["K", sp.k_s2]),
              helper.make_tensor_value_info(SIGNALS, f, ["K", sp.signal_dim])]
    graph = helper.make_graph(nodes, "tiny_student", inputs, [helper.make_tensor_value_info(OUTPUT_NAME, f, ["K", 2])],
                              _shared_consts() + [_const("Q", qmap), _const("H", hmap), _const("W", w)])
    _save(graph, path)


def build(out: Path, seed: int = 0) -> Path:
    """Write the bundle into ``out`` (which must not exist) and return it; also ``out/../images``, one PNG."""
    from PIL import Image

    from contract.events import parse_product
    from service.core.bundle import OnnxProductEncoder, OnnxQueryEncoder

    out = Path(out)
    out.mkdir(parents=True)
    sp, cat = spec(), catalog(seed)
    texts = {pid: product_text(p.title, p.brand, p.category, p.description)
             for pid, p in ((pid, parse_product(r)) for pid, r in cat.products.items())}
    _tokenizer(list(texts.values()) + cat.queries, out / "tokenizer" / "tokenizer.json")
    with open(out / "tokenizer" / "tokenizer.json", encoding="utf-8") as f:
        vocab_size = len(json.load(f)["model"]["vocab"])
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(vocab_size, sp.text_dim)).astype(np.float32)
    table[0] = 0.0  # padding contributes nothing (it is masked anyway)
    sel_proj = rng.normal(size=(sp.text_dim, sp.sel_dim)).astype(np.float32)
    _query_encoder(sp, table, sel_proj, out / "query_encoder.onnx")
    _product_encoder(sp, table, sel_proj, out / "product_encoder.onnx")
    _student(sp, out / "student.onnx")

    # features exactly as the encoders compute them, so that an upserted product lands where an offline one is
    pids = list(cat.products)
    content = OnnxProductEncoder(out / "product_encoder.onnx", out / "tokenizer" / "tokenizer.json", IMAGE_SIZE,
                                 product_dim=sp.product_dim).encode([(texts[p], None) for p in pids])
    counts = {p: 0 for p in pids}
    for h in cat.histories:
        for p in h["history"]:  # type: ignore[union-attr]
            counts[str(p)] += 1
    top = max(counts.values()) or 1
    content[:, sp.product_pop] = np.array([[np.log1p(counts[p]) / np.log1p(top)] for p in pids], np.float32)
    cf = rng.normal(size=(len(pids), sp.cf_dim)).astype(np.float32)
    content[:, sp.product_cf] = cf / np.linalg.norm(cf, axis=1, keepdims=True)
    # transition vectors from their own generator, so the draws above stay what they were
    content[:, sp.product_seq] = np.random.default_rng(seed + 11).normal(size=(len(pids), sp.seq_dim))
    qenc = OnnxQueryEncoder(out / "query_encoder.onnx", out / "tokenizer" / "tokenizer.json")
    queries = np.stack([qenc.encode(q) for q in cat.queries]).astype(np.float32)
    feats = out / "features"
    feats.mkdir()
    np.save(feats / "products.npy", content.astype(np.float32))
    np.save(feats / "queries.npy", queries)
    (feats / "index.json").write_text(json.dumps({"products": pids, "queries": cat.queries}))
    (feats / "summaries.jsonl").write_text("".join(
        json.dumps({"product_id": p, "summary": str(r["description"])}) + "\n" for p, r in cat.products.items()))
    (feats / "histories.jsonl").write_text("".join(json.dumps(h) + "\n" for h in cat.histories))
    models = {STUDENT: "student.onnx", QUERY_ENCODER: "query_encoder.onnx", PRODUCT_ENCODER: "product_encoder.onnx",
              TOKENIZER: "tokenizer/tokenizer.json"}
    features = {"products": "features/products.npy", "queries": "features/queries.npy", "index": "features/index.json",
                "summaries": "features/summaries.jsonl", "histories": "features/histories.jsonl",
                "history_cap": HISTORY_CAP, "image_size": IMAGE_SIZE}
    write_manifest(out, "tiny", "tiny-torch-free", f"tiny{seed:012d}", sp, models, features,
                   {"built_by": "tests/service/tiny_bundle.py (untrained weights, for tests)"})
    images = out.parent / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(images / "sample.png")
    return out


def request_catalog(bundle_dir: Path) -> dict[str, object]:
    """What tests draw requests from: a bundle's products and queries, and a user with 3+ purchases."""
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    hist = [json.loads(x) for x in (bundle_dir / "features" / "histories.jsonl").read_text().splitlines()]
    user = next(h for h in hist if len(h["history"]) >= 3)
    return {"products": index["products"], "queries": index["queries"], "user": user["user_id"],
            "history": user["history"]}


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
