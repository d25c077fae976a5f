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
    targets: str | list[str] = "all-linear"
    layers = None
    if cfg.lora_layers > 0:
        import torch as _torch

        n = int(backbone.lm.config.num_hidden_layers)
        if cfg.lora_layers > n:
            raise InputError(f"lora_layers={cfg.lora_layers}: the LM has {n} layers")
        layers = list(range(n - cfg.lora_layers, n))
        # peft takes layers_to_transform only with named targets: every linear layer's name but the head
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in backbone.lm.named_modules()
                          if isinstance(m, _torch.nn.Linear) and "lm_head" not in name})
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", layers_to_transform=layers,
                      layers_pattern="layers" if layers else None)
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
    if cfg.dtype == "bfloat16":
        lm = lm.to(_torch.bfloat16)  # LoRA adapters are added after, in float32 (peft's autocast_adapter_dtype)
    _torch.manual_seed(cfg.seed)
    backbone = ComposedBackbone(lm, tok, cfg)
    return add_lora(backbone, cfg) if with_lora else backbone
