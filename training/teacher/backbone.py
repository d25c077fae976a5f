"""Backbones for the teacher, behind one Protocol.

:class:`ComposedBackbone` is LLaVA-style: any Hugging Face causal LM, a vision
encoder (from scratch here), and a projector whose outputs replace the
placeholder positions of each image in the LM's input embeddings.

The teacher needs four things from a backbone:
- ``forward(seqs, prefix=None)``: the LM logits at the decision position of
  ``prefix + seq``, (B, V). Training applies the yes/no LM loss of Eq. 2 on
  them. A backbone may compute a shared prefix once and reuse its KV cache.
- ``score(prompts)``: P(yes) by Eq. 3, a 2-way softmax over the yes/no logits,
  sharing the prefix of prompts that have the same one.
- ``embed(seqs)``: the mean of the last hidden states over all tokens (Eq. 4-5).
- ``count_tokens`` and ``prompt_builder`` for budgeted prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from training.teacher.config import TeacherConfig
from training.teacher.prompt import INSTRUCTION, ImageSlot, Prompt, PromptBuilder, Segment, group_by_prefix
from training.teacher.vision import SmallCNN, load_image


class Backbone(Protocol):
    yes_id: int
    no_id: int

    def __call__(self, seqs: Sequence[Sequence[Segment]], prefix: Sequence[Segment] | None = None) -> torch.Tensor: ...
    def score(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]: ...
    def embed(self, seqs: Sequence[Sequence[Segment]]) -> torch.Tensor: ...
    def count_tokens(self, segments: Sequence[Segment]) -> int: ...
    def prompt_builder(self) -> PromptBuilder: ...
    def trainable_state(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...


def single_token(tokenizer: Any, words: Sequence[str]) -> int:
    """The id of the first spelling that is one token (' yes' for BPE, 'yes' for WordPiece)."""
    for w in words:
        ids = tokenizer.encode(w, add_special_tokens=False)
        if len(ids) == 1:
            return int(ids[0])
    raise ValueError(f"none of {list(words)} is a single token for this tokenizer")


class TrainableStateMixin(nn.Module):
    """Checkpoint only what training changes (adapters, vision tower, projector).

    The vision tower and projector are always kept, trainable or not: after feature alignment the
    tower is frozen, and a checkpoint must still carry the aligned weights.
    """

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.named_parameters()
                if v.requires_grad or k.startswith(("vision.", "projector."))}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k, v in self.named_parameters() if v.requires_grad and k not in state]
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
        own = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)


class ComposedBackbone(TrainableStateMixin):
    def __init__(self, lm: Any, tokenizer: Any, cfg: TeacherConfig):
        super().__init__()
        self.lm, self.tok, self.cfg = lm, tokenizer, cfg
        hidden = lm.config.hidden_size
        self.vision: SmallCNN | None = None
        self.projector: nn.Module | None = None
        if cfg.vision == "cnn":
            self.vision = SmallCNN(cfg.image_tokens)
            self.projector = nn.Sequential(nn.Linear(self.vision.width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        elif cfg.vision != "none":
            raise ValueError(f"vision must be 'cnn' or 'none', got {cfg.vision!r}")
        self.instruction_in_header = False
        if cfg.chat_template and getattr(tokenizer, "chat_template", None):
            # the HMPPS instruction takes the system slot (replacing any default system prompt)
            msgs = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "\x00"}]
            rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            self.header, chat_footer = rendered.split("\x00")
            self.instruction_in_header = True
            self.footer = " Answer yes or no." + chat_footer
            answers = (["yes", " yes"], ["no", " no"])
        else:
            self.header, self.footer = "", "\nAnswer:"
            answers = ([" yes", "yes"], [" no", "no"])
        self.yes_id, self.no_id = single_token(tokenizer, answers[0]), single_token(tokenizer, answers[1])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._ids: dict[str, list[int]] = {}
        self._pixels: dict[str, torch.Tensor] = {}

    # -- tokens and embeddings -----------------------------------------------------
    def ids(self, text: str) -> list[int]:
        out = self._ids.get(text)
        if out is None:
            out = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(self._ids) < 500_000:
                self._ids[text] = out
        return out

    def count_tokens(self, segments: Sequence[Segment]) -> int:
        n_img = self.cfg.image_tokens if self.vision is not None else 0
        return sum(len(self.ids(s)) if isinstance(s, str) else n_img for s in segments)

    def prompt_builder(self) -> PromptBuilder:
        return PromptBuilder(self.count_tokens, self.cfg.max_prompt_tokens, self.cfg.description_words,
                             header=self.header, footer=self.footer, instruction=not self.instruction_in_header)

    def _image_embeds(self, paths: list[str]) -> dict[str, torch.Tensor]:
        if not paths or self.vision is None or self.projector is None:
            return {}
        pixels = []
        for p in paths:
            if p not in self._pixels:
                self._pixels[p] = load_image(p, self.cfg.image_size)
            pixels.append(self._pixels[p])
        device = next(self.projector.parameters()).device
        feats = self.projector(self.vision(torch.stack(pixels).to(device)))  # (N, tokens, H)
        return dict(zip(paths, feats, strict=True))

    def encode(self, seqs: Sequence[Sequence[Segment]], position_offset: int = 0) -> dict[str, torch.Tensor]:
        """Left-padded ``inputs_embeds``, ``attention_mask`` and ``position_ids``."""
        use_images = self.vision is not None
        paths = sorted({s.path for seq in seqs for s in seq if isinstance(s, ImageSlot)}) if use_images else []
        images = self._image_embeds(paths)
        rows = []
        for seq in seqs:
            ids: list[int] = []
            spans: list[tuple[int, str]] = []
            for s in seq:
                if isinstance(s, str):
                    ids += self.ids(s)
                elif use_images:
                    spans.append((len(ids), s.path))
                    ids += [self.pad_id] * self.cfg.image_tokens
            rows.append((ids, spans))
        width = max(len(ids) for ids, _ in rows)
        device = self.lm.get_input_embeddings().weight.device
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (ids, _) in enumerate(rows):
            if ids:
                input_ids[b, width - len(ids):] = torch.tensor(ids)
                mask[b, width - len(ids):] = 1
        embeds = self.lm.get_input_embeddings()(input_ids.to(device))
        if images:
            embeds = embeds.clone()
            for b, (ids, spans) in enumerate(rows):
                pad = width - len(ids)
                for start, path in spans:
                    embeds[b, pad + start: pad + start + self.cfg.image_tokens] = images[path]
        position_ids = (mask.cumsum(1) - 1).clamp(min=0) + position_offset
        return {"inputs_embeds": embeds, "attention_mask": mask.to(device), "position_ids": position_ids.to(device)}

    # -- the three uses ------------------------------------------------------------
    def forward(self, seqs: Sequence[Sequence[Segment]], prefix: Sequence[Segment] | None = None) -> torch.Tensor:
        """LM logits at the decision position (the last one) of ``prefix + seq`` for each seq, (B, V).

        A shared prefix is computed once and its KV cache repeated for every seq; in training the
        gradient flows back through that cache, so this equals the plain forward at a fraction of the cost.
        """
        if prefix is None or len(seqs) < 2:
            full = [list(prefix or []) + list(s) for s in seqs]
            return self.lm(**self.encode(full), logits_to_keep=1, use_cache=False).logits[:, -1, :]
        pre = self.encode([prefix])
        cache = self.lm(**pre, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(len(seqs))
        suf = self.encode(seqs, position_offset=pre["inputs_embeds"].shape[1])
        mask = torch.cat([pre["attention_mask"].expand(len(seqs), -1), suf["attention_mask"]], dim=1)
        out = self.lm(inputs_embeds=suf["inputs_embeds"], attention_mask=mask, position_ids=suf["position_ids"],
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def yes_no(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, [self.yes_id, self.no_id]]

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(yes), logit_yes - logit_no) per prompt, by Eq. 3."""
        yes_no = torch.zeros((len(prompts), 2))
        for idx in group_by_prefix(prompts).values():
            for start in range(0, len(idx), self.cfg.score_batch):
                chunk = idx[start: start + self.cfg.score_batch]
                logits = self.forward([prompts[i].suffix for i in chunk], prefix=prompts[chunk[0]].prefix)
                yes_no[chunk] = self.yes_no(logits).float().cpu()
        return torch.softmax(yes_no, dim=-1)[:, 0], yes_no[:, 0] - yes_no[:, 1]

    @torch.no_grad()
    def embed(self, seqs: Sequence[Sequence[Segment]]) -> torch.Tensor:
        """Mean of the last layer's hidden states over every token (Eq. 4-5), (B, H)."""
        enc = self.encode(seqs)
        out = self.lm(**enc, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hidden = out.hidden_states[-1]
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).float().cpu()
