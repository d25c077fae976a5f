"""The request-time baseline the student must beat: a MiniLM-L6 cross-encoder over (query, summary).

all-MiniLM-L6-v2 (the only MiniLM on these machines) gets a linear head and a
short fine-tune on the same training candidates as the student (hard labels),
then ONNX export and dynamic int8 quantization, as a team would ship it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

MAX_TOKENS = 64


class CrossEncoder(nn.Module):
    def __init__(self, bert: nn.Module, hidden: int):
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(hidden, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        return self.head(h[:, 0]).squeeze(-1)


def load_cross_encoder() -> tuple[CrossEncoder, Any]:
    from transformers import AutoModel, AutoTokenizer

    from training.pretrained import LOAD_KWARGS, hub_free, minilm_dir, offline

    offline()
    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    bert = hub_free(AutoModel.from_pretrained(minilm_dir(), **LOAD_KWARGS))
    return CrossEncoder(bert, int(bert.config.hidden_size)), tok


def fine_tune(model: CrossEncoder, tok: Any, pairs: list[tuple[str, str]], labels: list[int], steps: int = 150,
              batch: int = 16, lr: float = 3e-5, seed: int = 0) -> list[float]:
    """Pointwise BCE on (query, summary) pairs, positives up-weighted to the negatives' count."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    y = torch.tensor(labels, dtype=torch.float32)
    pos_weight = torch.tensor(max(1.0, float((y == 0).sum()) / max(1.0, float(y.sum()))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    curve = []
    for _ in tqdm(range(steps), desc="cross-encoder fine-tune", unit="step"):
        idx = rng.choice(len(pairs), size=min(batch, len(pairs)), replace=False)
        enc = tok([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True, truncation=True,
                  max_length=MAX_TOKENS, return_tensors="pt")
        loss = nn.functional.binary_cross_entropy_with_logits(model(**enc), y[idx], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss))
    model.eval()
    return curve


def export(model: CrossEncoder, tok: Any, path: Path) -> Path:
    """fp32 ONNX at ``path`` and the int8 variant next to it; returns the int8 path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    enc = tok(["query"], ["summary"], return_tensors="pt")
    dyn = {k: {0: "b", 1: "t"} for k in ("input_ids", "attention_mask", "token_type_ids")} | {"score": {0: "b"}}
    torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), str(path),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["score"],
                      dynamic_axes=dyn, opset_version=17, dynamo=False)
    int8 = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(int8), weight_type=QuantType.QInt8)
    return int8
