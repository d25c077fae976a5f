"""A native Hugging Face vision-language model as the teacher backbone.

Loads any model that ``AutoModelForImageTextToText`` and ``AutoProcessor``
read from a local directory (Qwen2-VL, SmolVLM/Idefics3, InternVL2 converted
to transformers format, LLaVA variants). The prompt's segments become one chat
turn whose content interleaves text and image entries; the processor's chat
template and image processing do the rest. The HMPPS instruction is the system
turn. On these CPU machines it is tested with a tiny randomly initialised
Idefics3 (SmolVLM's architecture) built locally; Qwen2-VL's processor needs
torchvision, which has no CPU build here, so it runs on GPU machines only.

No prefix KV sharing here: processors expand image tokens differently per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from contract.errors import InputError
from training.teacher.backbone import TrainableStateMixin, single_token
from training.teacher.config import TeacherConfig
from training.teacher.prompt import INSTRUCTION, ImageSlot, Prompt, PromptBuilder, Segment


class HFVLMBackbone(TrainableStateMixin):
    def __init__(self, model: Any, processor: Any, cfg: TeacherConfig):
        super().__init__()
        self.lm, self.processor, self.cfg = model, processor, cfg  # ``lm`` so add_lora wraps it
        self.tok = processor.tokenizer
        self.tok.padding_side = "left"
        self.yes_id = single_token(self.tok, [" yes", "yes", "Yes"])
        self.no_id = single_token(self.tok, [" no", "no", "No"])
        self.image_tokens = int(getattr(processor, "image_seq_len", 0) or cfg.image_tokens)

    def count_tokens(self, segments: Sequence[Segment]) -> int:
        return sum(len(self.tok(s, add_special_tokens=False)["input_ids"]) if isinstance(s, str) else self.image_tokens
                   for s in segments)

    def prompt_builder(self) -> PromptBuilder:
        return PromptBuilder(self.count_tokens, self.cfg.max_prompt_tokens, self.cfg.description_words,
                             header="", ask=" Answer yes or no.", cue="", instruction=False,
                             category_levels=self.cfg.category_levels, title_words=self.cfg.title_words,
                             compact=self.cfg.compact_prompt)

    def _inputs(self, seqs: Sequence[Sequence[Segment]]) -> dict[str, torch.Tensor]:
        from PIL import Image

        texts, images = [], []
        for seq in seqs:
            content, imgs = [], []
            for s in seq:
                if isinstance(s, ImageSlot):
                    content.append({"type": "image"})
                    with Image.open(s.path) as im:
                        imgs.append(im.convert("RGB"))
                else:
                    content.append({"type": "text", "text": s})
            msgs = [{"role": "system", "content": [{"type": "text", "text": INSTRUCTION}]},
                    {"role": "user", "content": content}]
            texts.append(self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
            images.append(imgs)
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(images):
            kwargs["images"] = images
        enc = self.processor(**kwargs)
        enc.pop("token_type_ids", None)
        device = next(self.lm.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def forward(self, seqs: Sequence[Sequence[Segment]], prefix: Sequence[Segment] | None = None) -> torch.Tensor:
        full = [list(prefix or []) + list(s) for s in seqs]  # no KV sharing here, see the module docstring
        return self.lm(**self._inputs(full), logits_to_keep=1, use_cache=False).logits[:, -1, :]

    def prompt_logits(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        return self.forward([p.segments for p in prompts])

    def held_header(self) -> AbstractContextManager[None]:
        """The processor builds whole prompts: no cache is held across queries."""
        return nullcontext()

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        yes_no = []
        for start in range(0, len(prompts), self.cfg.score_batch):
            logits = self.prompt_logits(prompts[start: start + self.cfg.score_batch])
            yes_no.append(logits[:, [self.yes_id, self.no_id]].float().cpu())
        both = torch.cat(yes_no)
        return torch.softmax(both, dim=-1)[:, 0], both[:, 0] - both[:, 1]

    @torch.no_grad()
    def embed(self, seqs: Sequence[Sequence[Segment]]) -> torch.Tensor:
        enc = self._inputs(seqs)
        hidden = self.lm(**enc, output_hidden_states=True, use_cache=False, logits_to_keep=1).hidden_states[-1]
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).float().cpu()


def load_hf_vlm(cfg: TeacherConfig) -> HFVLMBackbone:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.pretrained import LOAD_KWARGS, hub_free, offline

    offline()
    path = Path(cfg.lm).expanduser()
    if not path.is_dir():
        raise InputError(f"hf-vlm backbone needs a local model directory; {cfg.lm!r} is not one "
                         "(nothing is downloaded from a model hub)")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = hub_free(AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **LOAD_KWARGS))
    if torch.cuda.is_available():
        model = model.to("cuda")
    torch.manual_seed(cfg.seed)
    return HFVLMBackbone(model, AutoProcessor.from_pretrained(path, local_files_only=True), cfg)
