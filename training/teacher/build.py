"""Build the teacher's backbone from its config: the composed LM + vision tower, or a native HF VLM, with LoRA.

It sits above both backbone modules, so neither has to import the other.
"""

from __future__ import annotations

from typing import Any

from contract.errors import InputError
from training.teacher.backbone import ComposedBackbone
from training.teacher.config import TeacherConfig


def add_lora(backbone: Any, cfg: TeacherConfig) -> Any:
    """Freeze the LM, add LoRA adapters on all its linear layers; vision and projector stay trainable.

    ``lora_r: 0`` trains the whole LM instead: only sensible for the tiny,
    randomly initialised LM, where there is no pretrained knowledge to protect.
    """
    from peft import LoraConfig, get_peft_model

    if cfg.lora_r <= 0:
        return backbone
    for p in backbone.lm.parameters():
        p.requires_grad_(False)
    # all-linear: every linear layer but the output head; for a native VLM that covers
    # the vision tower, the connector and the language model, as the paper does
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    backbone.lm = get_peft_model(backbone.lm, lora)
    return backbone


def build_backbone(cfg: TeacherConfig, with_lora: bool = True) -> ComposedBackbone:
    import torch as _torch

    from training.pretrained import load_lm

    if cfg.threads:
        _torch.set_num_threads(cfg.threads)
    if cfg.backbone == "hf-vlm":
        from training.teacher.hf_vlm import load_hf_vlm

        return add_lora(load_hf_vlm(cfg), cfg) if with_lora else load_hf_vlm(cfg)  # type: ignore[return-value]
    if cfg.backbone != "composed":
        raise InputError(f"unknown backbone {cfg.backbone!r}; choose 'composed' or 'hf-vlm'")
    lm, tok = load_lm(cfg.lm, cfg.tokenizer, (cfg.tiny_hidden, cfg.tiny_layers, cfg.tiny_heads), cfg.seed)
    _torch.manual_seed(cfg.seed)
    backbone = ComposedBackbone(lm, tok, cfg)
    return add_lora(backbone, cfg) if with_lora else backbone
