"""The native Hugging Face VLM backbone, by path, on a tiny random Idefics3."""

import torch

from training.dataset import load_dataset
from training.teacher.build import build_backbone
from training.teacher.config import load_teacher_config
from training.teacher.prompt import ImageSlot
from training.teacher.tiny_vlm import build_tiny_idefics3


def test_native_vlm_scores_trains_and_embeds_by_path(tmp_path, synthetic_dir):
    path = build_tiny_idefics3(tmp_path / "tiny-idefics3")
    cfg = load_teacher_config("gpu", overrides={"lm": str(path), "max_prompt_tokens": 600, "lora_r": 4, "score_batch": 4})
    bb = build_backbone(cfg)
    ds = load_dataset(synthetic_dir)
    pids = sorted(ds.products)
    item = lambda p: (ds.products[p], str(ds.image_path(p)))  # noqa: E731
    builder = bb.prompt_builder()
    prompts = [builder.build([item(pids[0]), item(pids[1])], "clothing shoes", item(p)) for p in pids[2:5]]
    bare = {"product_id": "X", "title": "X", "brand": "", "category": [], "description": ""}
    prompts.append(builder.build([], "magazine", (bare, None)))  # no image anywhere
    assert any(isinstance(s, ImageSlot) for s in prompts[0].segments)

    probs, margins = bb.score(prompts)
    logits = bb([p.segments for p in prompts]).detach()
    manual = torch.softmax(logits[:, [bb.yes_id, bb.no_id]], dim=-1)[:, 0]
    assert torch.allclose(probs, manual, atol=1e-5)

    names = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert any("vision" in n for n in names), "LoRA reaches the vision tower as in the paper"
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = bb([p.segments for p in prompts[:2]])
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([bb.yes_id, bb.no_id]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(bb.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in names), "base weights frozen"
    assert any(not torch.equal(before[n], after[n]) for n in names if "lora_B" in n)

    emb = bb.embed([p.segments for p in prompts])
    assert emb.shape == (4, 64) and torch.isfinite(emb).all()
