"""Backbones for the teacher, behind one Protocol.

:class:`ComposedBackbone` is LLaVA-style: any Hugging Face causal LM, a vision
encoder (from scratch here), and a projector whose outputs replace the
placeholder positions of each image in the LM's input embeddings.

The teacher needs four things from a backbone:
- ``prompt_logits(prompts)``: the LM logits at the decision position of each
  prompt, (B, V). Training applies the yes/no LM loss of Eq. 2 on them. The
  composed backbone computes the tokens prompts share (instruction, history)
  once and reuses their KV cache (a prefix tree; ``forward(seqs, prefix)`` is
  the same on segment lists).
- ``score(prompts)``: P(yes) by Eq. 3, a 2-way softmax over the yes/no logits,
  sharing the prefix of prompts that have the same one.
- ``embed(seqs)``: the mean of the last hidden states over all tokens (Eq. 4-5).
- ``count_tokens`` and ``prompt_builder`` for budgeted prompts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from training.teacher.config import TeacherConfig
from training.teacher.prompt import INSTRUCTION, Prompt, PromptBuilder, Segment
from training.teacher.vision import SmallCNN, load_image

Row = tuple[list[int], list[tuple[int, str]]]  # token ids, and (first position, image path) of each image


class Backbone(Protocol):
    yes_id: int
    no_id: int

    def __call__(self, seqs: Sequence[Sequence[Segment]], prefix: Sequence[Segment] | None = None) -> torch.Tensor: ...
    def prompt_logits(self, prompts: Sequence[Prompt]) -> torch.Tensor: ...
    def score(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]: ...
    def held_header(self) -> AbstractContextManager[None]: ...
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
            self.header, self.cue = rendered.split("\x00")
            self.instruction_in_header = True
            self.ask = " Answer yes or no."
            answers = (["yes", " yes"], ["no", " no"])
        else:
            self.header, self.ask, self.cue = "", "", "\nAnswer:"
            answers = ([" yes", "yes"], [" no", "no"])
        self.yes_id, self.no_id = single_token(tokenizer, answers[0]), single_token(tokenizer, answers[1])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._ids: dict[str, list[int]] = {}
        self._pixels: dict[str, torch.Tensor] = {}
        self._held: tuple[list[int], Any, torch.Tensor] | None = None  # held_header: ids, KV cache, mask

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
                             header=self.header, ask=self.ask, cue=self.cue, instruction=not self.instruction_in_header,
                             category_levels=self.cfg.category_levels, title_words=self.cfg.title_words,
                             compact=self.cfg.compact_prompt)

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

    def _tokenize(self, seq: Sequence[Segment]) -> Row:
        ids: list[int] = []
        spans: list[tuple[int, str]] = []
        for s in seq:
            if isinstance(s, str):
                ids += self.ids(s)
            elif self.vision is not None:
                spans.append((len(ids), s.path))
                ids += [self.pad_id] * self.cfg.image_tokens
        return ids, spans

    def _key(self, row: Row) -> list[Any]:
        """Token ids with each image position named by its picture, to compare rows token by token."""
        key: list[Any] = list(row[0])
        for start, path in row[1]:
            key[start: start + self.cfg.image_tokens] = [(path, j) for j in range(self.cfg.image_tokens)]
        return key

    def _split(self, row: Row, at: int) -> tuple[Row, Row]:
        """``row`` cut before token ``at``, moved back to the start of an image it would cut through."""
        ids, spans = row
        for start, _ in spans:
            if start < at < start + self.cfg.image_tokens:
                at = start
        return ((ids[:at], [(s, p) for s, p in spans if s < at]),
                (ids[at:], [(s - at, p) for s, p in spans if s >= at]))

    def _common(self, rows: Sequence[Row]) -> int:
        keys = [self._key(r) for r in rows]
        n = 0
        for column in zip(*keys, strict=False):  # up to the shortest row
            if any(c != column[0] for c in column[1:]):
                break
            n += 1
        return n

    def _embed(self, rows: Sequence[Row], past: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Left-padded ``inputs_embeds`` of the rows, with the ``attention_mask`` over the cached tokens
        (``past``, (B, P)) and these, and ``position_ids`` that continue each row's own positions."""
        use_images = self.vision is not None
        paths = sorted({p for _, spans in rows for _, p in spans}) if use_images else []
        images = self._image_embeds(paths)
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
        full = mask if past is None else torch.cat([past.cpu(), mask], dim=1)
        position_ids = (full.cumsum(1) - 1).clamp(min=0)[:, full.shape[1] - width:]
        return {"inputs_embeds": embeds, "attention_mask": full.to(device), "position_ids": position_ids.to(device)}

    def encode(self, seqs: Sequence[Sequence[Segment]]) -> dict[str, torch.Tensor]:
        """Left-padded ``inputs_embeds``, ``attention_mask`` and ``position_ids`` of whole sequences."""
        return self._embed([self._tokenize(s) for s in seqs])

    # -- the three uses ------------------------------------------------------------
    def _decoder(self) -> Any:
        """The LM's transformer without its output head (LoRA layers sit inside it, so they apply)."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return getattr(base, base.base_model_prefix)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the decision positions, (B, V). One plain 2-D matmul: the model's own head
        over a (B, 1, H) input copied its (tied, bfloat16) weight once per row, the larger part of a step."""
        head = self.lm.get_output_embeddings()
        return torch.nn.functional.linear(hidden, head.weight, getattr(head, "bias", None))

    def forward(self, seqs: Sequence[Sequence[Segment]], prefix: Sequence[Segment] | None = None) -> torch.Tensor:
        """LM logits at the decision position (the last one) of ``prefix + seq`` for each seq, (B, V)."""
        return self.prompt_logits([Prompt(list(prefix or []), list(s)) for s in seqs])

    def prompt_logits(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Decision-position logits of each prompt, (B, V), in order, computing shared tokens once.

        Three passes over a prefix tree: the stem every prompt's prefix starts with (the instruction, and
        the whole history when the candidates share it), once; the distinct rest of each prefix (a
        candidate's own selected history), once per distinct rest; then each prompt's suffix, all in one
        batch, reading the cached keys and values. In training the gradient flows back through the
        caches, so this equals the plain forward of every whole prompt at a fraction of the cost.
        """
        decoder = self._decoder()
        pres = [self._tokenize(p.prefix) for p in prompts]
        sufs = [self._tokenize(p.suffix) for p in prompts]
        stem_len = self._common(pres) if len(prompts) > 1 else 0
        if stem_len == 0:
            rows = [(a[0] + b[0], a[1] + [(s + len(a[0]), q) for s, q in b[1]]) for a, b in zip(pres, sufs, strict=True)]
            return self._head(decoder(**self._embed(rows), use_cache=False).last_hidden_state[:, -1, :])
        stem, _ = self._split(pres[0], stem_len)
        rests = [self._split(r, len(stem[0]))[1] for r in pres]
        cache, past = self._stem(decoder, stem)
        distinct: dict[tuple[Any, ...], int] = {}
        group = [distinct.setdefault(tuple(self._key(r)), len(distinct)) for r in rests]
        if any(r[0] for r in rests):
            firsts = list({g: r for g, r in zip(group, rests, strict=True)}.values())
            cache.batch_repeat_interleave(len(firsts))
            enc = self._embed(firsts, past.expand(len(firsts), -1))
            cache = decoder(**enc, past_key_values=cache, use_cache=True).past_key_values
            index = torch.tensor(group, device=enc["attention_mask"].device)
            cache.batch_select_indices(index)
            past = enc["attention_mask"][index]
        else:
            cache.batch_repeat_interleave(len(prompts))
            past = past.expand(len(prompts), -1)
        enc = self._embed(sufs, past)
        out = decoder(**enc, past_key_values=cache, use_cache=True)
        return self._head(out.last_hidden_state[:, -1, :])

    def _stem(self, decoder: Any, stem: Row) -> tuple[Any, torch.Tensor]:
        """The KV cache and attention mask of a query's stem; within ``held_header``, only the tokens
        after the held instruction are computed."""
        if self._held is not None:
            ids, held_cache, held_mask = self._held
            if len(stem[0]) > len(ids) and stem[0][: len(ids)] == ids and all(s >= len(ids) for s, _ in stem[1]):
                enc = self._embed([self._split(stem, len(ids))[1]], held_mask)
                cache = decoder(**enc, past_key_values=copy.deepcopy(held_cache), use_cache=True).past_key_values
                return cache, enc["attention_mask"]
        enc = self._embed([stem])
        return decoder(**enc, use_cache=True).past_key_values, enc["attention_mask"]

    @contextmanager
    def held_header(self) -> Iterator[None]:
        """Inference only, weights fixed for the duration: the instruction every prompt starts with (about
        60 tokens of a 1,100-token query on Office) is computed once and its KV cache reused by each
        query's stem, instead of once per query. Its last token is left to the stem, so a token that
        BPE would merge across the boundary is never held; a stem that does not start with the held
        tokens is computed whole."""
        text = self.prompt_builder().history_start()
        ids = self.ids(text)[:-1]
        if ids:
            with torch.no_grad():
                enc = self._embed([(ids, [])])
                self._held = (ids, self._decoder()(**enc, use_cache=True).past_key_values, enc["attention_mask"])
        try:
            yield
        finally:
            self._held = None

    def yes_no(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, [self.yes_id, self.no_id]]

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(yes), logit_yes - logit_no) per prompt, by Eq. 3."""
        yes_no = torch.zeros((len(prompts), 2))
        for start in range(0, len(prompts), self.cfg.score_batch):
            logits = self.prompt_logits(prompts[start: start + self.cfg.score_batch])
            yes_no[start: start + len(logits)] = self.yes_no(logits).float().cpu()
        return torch.softmax(yes_no, dim=-1)[:, 0], yes_no[:, 0] - yes_no[:, 1]

    @torch.no_grad()
    def embed(self, seqs: Sequence[Sequence[Segment]]) -> torch.Tensor:
        """Mean of the last layer's hidden states over every token (Eq. 4-5), (B, H)."""
        enc = self.encode(seqs)
        hidden = self._decoder()(**enc, use_cache=False).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).float().cpu()
