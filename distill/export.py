"""ONNX export of the student and the query encoder, parity checks, int8 quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract.spec import ENCODER_OUTPUT, OUTPUT_NAME, PRODUCT_ENCODER_INPUTS, QUERY_ENCODER_INPUTS
from distill.features import masked_mean

OPSET = 17


def export_student(model: nn.Module, example: dict[str, np.ndarray], path: Path) -> None:
    model.eval()
    names = list(model.spec.input_names)  # type: ignore[union-attr]
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dynamic = {n: {0: "n"} for n in names} | {OUTPUT_NAME: {0: "n"}}
    torch.onnx.export(model, args, str(path), input_names=names, output_names=[OUTPUT_NAME],
                      dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def onnx_logits(path: Path, inputs: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    from service.core.bundle import OnnxScorer

    return OnnxScorer(path, threads=threads).logits(inputs)


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def _text(bert: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
          token_type_ids: torch.Tensor) -> torch.Tensor:
    """MiniLM-L6, pooled as the offline text features are (``masked_mean``), unit length."""
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
    return _unit(masked_mean(hidden, attention_mask), 1e-12)


class QueryEncoderModule(nn.Module):
    """MiniLM-L6 mean pooling, then a projection into the stage-1 space: output = [text | sel], both unit."""

    def __init__(self, bert: nn.Module, text_dim: int, sel_dim: int):
        super().__init__()
        self.bert = bert
        self.proj = nn.Linear(text_dim, sel_dim)

    def project(self, text: torch.Tensor) -> torch.Tensor:
        return _unit(self.proj(text), 1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        text = _text(self.bert, input_ids, attention_mask, token_type_ids)
        return torch.cat([text, self.project(text)], dim=-1)


class ProductEncoderModule(nn.Module):
    """A new product's features in the student's layout, by the recipe of the offline ones:
    ``[text (MiniLM-L6, unit) | image (the teacher's vision tower, unit or 0) | has_image | sel]``,
    with ``sel`` a projection of the rest regressed onto the teacher's stage-1 product space."""

    def __init__(self, bert: nn.Module, text_dim: int, cnn: nn.Module | None, image_dim: int, sel_dim: int):
        super().__init__()
        self.bert, self.cnn, self.image_dim = bert, cnn, image_dim
        self.proj = nn.Linear(text_dim + image_dim + 1, sel_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return _unit(self.proj(x), 1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                pixels: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        text = _text(self.bert, input_ids, attention_mask, token_type_ids)
        if self.cnn is not None:
            image = _unit(self.cnn(pixels).flatten(1), 1e-12) * has_image
        else:
            image = text[:, :0]
        rest = torch.cat([text, image, has_image], dim=-1)
        return torch.cat([rest, self.project(rest)], dim=-1)


def export_product_encoder(module: ProductEncoderModule, tokenizer: object, image_size: int, path: Path) -> None:
    module.eval()
    enc = tokenizer(["an example product. brand. a > path"], return_tensors="pt")  # type: ignore[operator]
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], torch.zeros(1, 3, image_size, image_size),
            torch.ones(1, 1))
    torch.onnx.export(module, args, str(path), input_names=list(PRODUCT_ENCODER_INPUTS), output_names=[ENCODER_OUTPUT],
                      dynamic_axes=_encoder_axes(PRODUCT_ENCODER_INPUTS), opset_version=OPSET, dynamo=False)


def _encoder_axes(inputs: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """A batch axis on every input and the output, a token axis on the token inputs."""
    return {n: ({0: "b", 1: "t"} if n in QUERY_ENCODER_INPUTS else {0: "b"}) for n in inputs} | {ENCODER_OUTPUT: {0: "b"}}


def fit_projection(module: QueryEncoderModule | ProductEncoderModule, text: np.ndarray, target: np.ndarray,
                   epochs: int = 300, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Regress the projection onto stage-1 embeddings (cosine loss); MiniLM and the vision tower stay frozen."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(text), torch.from_numpy(target)
    opt = torch.optim.AdamW(module.proj.parameters(), lr=lr, weight_decay=1e-4)
    curve = []
    for _ in range(epochs):
        loss = (1 - (module.project(x) * y).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss))
    return curve


def export_query_encoder(module: QueryEncoderModule, tokenizer: object, path: Path) -> None:
    module.eval()
    enc = tokenizer(["example query"], return_tensors="pt")  # type: ignore[operator]
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    torch.onnx.export(module, args, str(path), input_names=list(QUERY_ENCODER_INPUTS), output_names=[ENCODER_OUTPUT],
                      dynamic_axes=_encoder_axes(QUERY_ENCODER_INPUTS), opset_version=OPSET, dynamo=False)
