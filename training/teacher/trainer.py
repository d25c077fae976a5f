"""The teacher's training loop: yes/no LM loss (Eq. 2), LoRA, AdamW, resume.

The same code runs in one process and under ``accelerate launch`` (torchrun)
in several (``training/teacher/dist.py``): each process takes an equal shard
of each epoch's query groups (the remainder is dropped, so no rank waits on a
step the others never take), one all-reduce per optimizer step averages the
gradients (``_average_gradients``), and after every step the ranks compare a
checksum of their trainable weights (``sync_check``). N processes with ``grad_accum=1``
take the same steps as one process with ``grad_accum=N``. Rank 0 writes a
checkpoint (trainable tensors, optimizer, step, config) every
``checkpoint_every`` optimizer steps; a rerun with the same output directory
resumes from it on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from contract.errors import ArtifactMismatch
from training.artifacts import atomic_dir, read_json, write_json
from training.teacher.backbone import ComposedBackbone
from training.teacher.config import TeacherConfig
from training.teacher.examples import Group
from training.teacher.prompt import Prompt


def _optimizer(backbone: ComposedBackbone, cfg: TeacherConfig) -> torch.optim.Optimizer:
    vision, lm = [], []
    for name, p in backbone.named_parameters():
        if p.requires_grad:
            (vision if name.startswith(("vision.", "projector.")) else lm).append(p)
    groups = [{"params": lm, "lr": cfg.lr}]
    if vision:
        groups.append({"params": vision, "lr": cfg.vision_lr})
    return torch.optim.AdamW(groups, weight_decay=0.0)


# Runtime knobs that do not change what is trained; a resume may change them.
_RUNTIME_FIELDS = ("threads", "score_batch", "score_processes", "test_fraction", "score_train_fraction", "sync_check",
                   "group_batch")
# Fields stage 1 never reads: changing them keeps a trained stage 1 (and its embeddings).
_STAGE2_ONLY = ("k_s2", "stage2_epochs")
# Fields that reach only the vision tower and projector: a text-only model (vision=none) is the same without them.
_VISION_ONLY = ("image_size", "image_tokens", "vision_lr", "align_epochs", "align_batch", "align_lr", "align_contrast",
                "align_tower_steps", "align_caption")
# How long to train: a checkpoint that agrees on everything else continues to a longer schedule.
_SCHEDULE = ("epochs", "stage2_epochs", "max_steps")


def training_fields(config: dict[str, Any], stage: str | None = None, schedule: bool = True) -> dict[str, Any]:
    """What a trained stage must agree on; fields added since it was saved take their defaults."""
    full = asdict(TeacherConfig()) | config
    skip = (_RUNTIME_FIELDS + (_STAGE2_ONLY if stage == "stage1" else ()) + (() if schedule else _SCHEDULE)
            + (_VISION_ONLY if full["vision"] == "none" else ()))
    return {k: v for k, v in full.items() if k not in skip}


def stage_epochs(cfg: TeacherConfig, stage: str) -> int:
    return cfg.stage2_epochs if stage == "stage2" and cfg.stage2_epochs > 0 else cfg.epochs


def decision_logits(model: Any, prompts: Sequence[Prompt]) -> torch.Tensor:
    """Decision-position logits of each prompt, (B, V), in order; the backbone computes tokens that the
    prompts share (the instruction, a common history) once, and the gradient flows back through them."""
    return model.prompt_logits(prompts)


def _save_checkpoint(path: Path, backbone: ComposedBackbone, opt: torch.optim.Optimizer, step: int,
                     cfg: TeacherConfig, stage: str) -> None:
    with atomic_dir(path) as tmp:
        torch.save({"trainable": backbone.trainable_state(), "optimizer": opt.state_dict(), "step": step}, tmp / "state.pt")
        write_json(tmp / "checkpoint.json", {"stage": stage, "step": step, "config": asdict(cfg)})


def _average_gradients(params: list[torch.nn.Parameter], procs: int) -> None:
    """Mean of every trainable gradient over the ranks: one all-reduce of one flat tensor per step.

    Explicit rather than DDP's hooks: a teacher step runs several forward passes (one per shared
    history prefix) and may leave parameters unused (no image in a group), which DDP's reducer does
    not support without extra modes; the trainable LoRA and projector tensors are small.
    """
    import torch.distributed as dist

    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= procs
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n


def train(backbone: ComposedBackbone, groups_for_epoch: Callable[[int], list[Group]], cfg: TeacherConfig,
          ckpt_dir: Path, stage: str) -> dict[str, Any]:
    """Train on query groups (1 positive + negatives each); returns a log."""
    from training.teacher.dist import state as dist_state

    dist = dist_state()  # joins the process group (under accelerate launch) with the run's timeout
    procs, rank, main = int(dist.num_processes), int(dist.process_index), bool(dist.is_main_process)
    backbone.to(dist.device)
    if torch.device(dist.device).type == "cpu":
        # the same run twice gives the same teacher: without deterministic kernels stage 2 (per-candidate
        # histories sharing cached rows) drifted between two runs of the same commit from its first 50
        # groups, and the demo's outputs with it; stage 1 did not. CUDA keeps its fast kernels.
        torch.use_deterministic_algorithms(True)
    opt = _optimizer(backbone, cfg)
    params = [p for p in backbone.parameters() if p.requires_grad]
    step = 0
    if (ckpt_dir / "state.pt").exists():
        info = read_json(ckpt_dir / "checkpoint.json")
        if (training_fields(info["config"], stage, schedule=False) != training_fields(asdict(cfg), stage, schedule=False)
                or info["stage"] != stage):
            raise ArtifactMismatch(f"{ckpt_dir} holds a checkpoint of another config or stage; remove it or use a new --out")
        state = torch.load(ckpt_dir / "state.pt", weights_only=False, map_location="cpu")  # copied onto the params
        backbone.load_trainable_state(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
    resumed_from = step
    checks = 0
    log: list[dict[str, Any]] = []
    t0 = time.time()
    groups_done = step * cfg.grad_accum
    opt.zero_grad()
    for epoch in range(stage_epochs(cfg, stage)):
        every = groups_for_epoch(epoch)
        groups = every[: len(every) // procs * procs][rank::procs]
        if groups_done >= len(groups) * (epoch + 1):
            continue  # finished before the resume
        start_group = max(0, groups_done - len(groups) * epoch)  # resume mid-epoch
        bar = tqdm(total=len(groups), initial=start_group, desc=f"teacher {stage} epoch {epoch + 1}", unit="q",
                   disable=not main)
        running: list[float] = []
        gi = start_group
        while gi < len(groups):
            if cfg.max_steps and step >= cfg.max_steps:
                break
            # group_batch query groups in one pass (a GPU wants them; the shared instruction is computed once),
            # never across an optimizer step, so the steps are those of one group at a time
            n = min(cfg.group_batch, cfg.grad_accum - groups_done % cfg.grad_accum, len(groups) - gi)
            batch = groups[gi: gi + n]
            logits = decision_logits(backbone, [p for g in batch for p in g.prompts])
            labels = [y for g in batch for y in g.labels]
            if cfg.loss == "yes_no":
                logits = logits[:, [backbone.yes_id, backbone.no_id]]
                target = torch.tensor([0 if y else 1 for y in labels], device=logits.device)
            else:
                target = torch.tensor([backbone.yes_id if y else backbone.no_id for y in labels], device=logits.device)
            per_prompt = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
            losses = torch.stack([part.mean() for part in per_prompt.split([len(g.labels) for g in batch])])
            (losses.sum() / cfg.grad_accum).backward()
            running += losses.detach().cpu().tolist()
            groups_done += n
            gi += n
            bar.update(n)
            if groups_done % cfg.grad_accum == 0:  # an optimizer step: grad_accum groups per rank
                if procs > 1:
                    _average_gradients(params, procs)
                opt.step()
                opt.zero_grad()
                step += 1
                if procs > 1 and cfg.sync_check:
                    _check_in_sync(params, procs, step)
                    checks += 1
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and main:
                    _save_checkpoint(ckpt_dir, backbone, opt, step, cfg, stage)
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            if len(running) >= 50 or gi == len(groups):
                log.append({"epoch": epoch + 1, "groups": groups_done, "loss": round(sum(running) / len(running), 4),
                            "seconds": round(time.time() - t0, 1)})
                bar.set_postfix(loss=log[-1]["loss"])
                running = []
        bar.close()
        if cfg.max_steps and step >= cfg.max_steps:
            break
    if main:
        _save_checkpoint(ckpt_dir, backbone, opt, step, cfg, stage)
    return {"steps": step, "groups": groups_done, "seconds": round(time.time() - t0, 1), "loss_curve": log,
            "processes": procs, "resumed_from": resumed_from, "sync_checks": checks}


def _check_in_sync(params: list[torch.nn.Parameter], procs: int, step: int) -> None:
    """Every rank holds the same trainable weights after a step, or the run stops here, saying so."""
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in params])
    gathered = [torch.zeros_like(sums) for _ in range(procs)]
    dist.all_gather(gathered, sums)
    spread = (torch.stack(gathered).max(0).values - torch.stack(gathered).min(0).values).abs().max()
    if float(spread) != 0.0:
        raise RuntimeError(f"after optimizer step {step} the ranks' trainable weights differ (max checksum gap "
                           f"{float(spread):.3g}): data-parallel training is out of sync")
