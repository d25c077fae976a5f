"""The HMPPS instruction prompt (paper Sec. 4.1, Fig. 6): [Inst; H_u; q; p_i].

A product is rendered as its id, title, brand, category, description and
image. An image is an :class:`ImageSlot` segment; the backbone turns it into
image-token embeddings spliced into the LM input (LLaVA style). Products
without metadata or image still render (fields say "unknown"/"none").

The prompt is split into a prefix [Inst; H_u; q] and a suffix [p_i; answer
cue], so the backbone can share the prefix's KV cache across the K candidates
of a query when their history is the same.

``compact``: the question goes once into the shared prefix, before the
candidate ("... the candidate product below? Answer yes or no."), so each
candidate's suffix is its product and the answer cue alone; and fields with
nothing to say ("Description: none", "Image: none") are left out. The same
information in about a fifth fewer tokens per query, which is what a CPU
teacher pays for (docs/benchmarks.md).

Token budget, applied in this order until the prompt fits:
1. trim history descriptions (halving their word budget, down to none);
2. trim the candidate's description the same way;
3. drop history items, oldest first.
The candidate's id, title, brand, category and image are never cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

INSTRUCTION = (
    "You are a shopping assistant for a product search engine. Given the products a user "
    "purchased before, the user's search query and a candidate product, judge whether the "
    "user will purchase the candidate product. Answer yes or no."
)
PROMPT_VERSION = "fig6-v1"


@dataclass(frozen=True)
class ImageSlot:
    """Where a product image's tokens go. ``path`` is absolute."""

    path: str


Segment = str | ImageSlot
# A product to render: (fields, image path or None[, first-stage rank for a candidate[, bought before]])
Item = (tuple[dict[str, Any], str | None] | tuple[dict[str, Any], str | None, int | None]
        | tuple[dict[str, Any], str | None, int | None, bool | None])


@dataclass
class Prompt:
    prefix: list[Segment]
    suffix: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def segments(self) -> list[Segment]:
        return self.prefix + self.suffix


def render_product(p: dict[str, Any], description_words: int, image: str | None,
                   rank: int | None = None, category_levels: int = 0, title_words: int = 0,
                   omit_empty: bool = False, bought: bool | None = None) -> list[Segment]:
    """A product as prompt text. ``rank``: the candidate's position in the first stage's list (1 = top),
    0 for a product the first stage did not list, None to leave it out (history items, or a teacher
    configured without it). ``category_levels``: keep only the last n levels of the path (0: all); a
    path given as one string is split at ", " (the Amazon 2014 form). ``title_words``: cut titles to n
    words (0: whole); tokens are what a CPU teacher pays for, and long Amazon titles repeat the brand.
    ``omit_empty``: leave out the description and image fields when there is none. ``bought``: whether the
    user bought this candidate before the query ("Bought before: yes"), None to leave it out."""
    desc_words = (p.get("summary") or p.get("description") or "").split()
    desc = " ".join(desc_words[:description_words]) if description_words > 0 else ""
    if len(desc_words) > description_words > 0:
        desc += " ..."
    path = list(p.get("category") or [])
    if category_levels > 0 and len(path) == 1:
        path = path[0].split(", ")
    title = p.get("title") or "unknown"
    if title_words > 0 and len(title.split()) > title_words:
        title = " ".join(title.split()[:title_words]) + " ..."
    category = " > ".join(path[-category_levels:] if category_levels > 0 else path) or "unknown"
    ranked = "" if rank is None else f"Search rank: {rank if rank > 0 else 'not listed'}; "
    if bought is not None:
        ranked += f"Bought before: {'yes' if bought else 'no'}; "
    text = f"ID: {p['product_id']}; {ranked}Title: {title}; Brand: {p.get('brand') or 'unknown'}; Category: {category}"
    if desc or not omit_empty:
        text += f"; Description: {desc or 'none'}"
    if image:
        return [text + "; Image: ", ImageSlot(image), "\n"]
    return [text + ("\n" if omit_empty else "; Image: none\n")]


class PromptBuilder:
    """Builds budgeted prompts. ``count`` returns the token count of a segment list."""

    def __init__(self, count: Callable[[list[Segment]], int], max_tokens: int, description_words: int,
                 header: str = "", ask: str = "", cue: str = "\nAnswer:", instruction: bool = True,
                 category_levels: int = 0, title_words: int = 0, compact: bool = False):
        """``ask`` follows the question (" Answer yes or no."); ``cue`` ends every prompt, just before the
        decision position (a chat template's assistant turn, or "\nAnswer:")."""
        self.count, self.max_tokens, self.description_words = count, max_tokens, description_words
        self.fields: dict[str, Any] = {"category_levels": category_levels, "title_words": title_words,
                                       "omit_empty": compact}
        self.header, self.ask, self.cue, self.compact = header, ask, cue, compact
        self.instruction = INSTRUCTION + "\n" if instruction else ""  # chat templates carry it as the system turn

    def history_start(self) -> str:
        """The text every prompt starts with, up to its history: the same for every query."""
        return self.header + self.instruction + "User purchase history:\n"

    def _assemble(self, history: Sequence[Item], query: str, candidate: Item, hist_words: int, cand_words: int) -> Prompt:
        prefix: list[Segment] = [self.history_start()]
        if not history:
            prefix.append("none\n")
        for i, (p, img) in enumerate(history, 1):
            prefix.append(f"({i}) ")
            prefix += render_product(p, hist_words, img, **self.fields)
        prefix.append(f"Search query: {query}\n")
        if self.compact:
            prefix.append(f"Will the user purchase the candidate product below?{self.ask}\n")
        suffix: list[Segment] = ["Candidate product: "]
        suffix += render_product(candidate[0], cand_words, candidate[1], rank=candidate[2] if len(candidate) > 2 else None,
                                 bought=candidate[3] if len(candidate) > 3 else None, **self.fields)
        suffix.append(self.cue if self.compact else "Will the user purchase the candidate product?" + self.ask + self.cue)
        return Prompt(_merge(prefix), _merge(suffix))

    def build(self, history: Sequence[Item], query: str, candidate: Item) -> Prompt:
        hist, hist_words, cand_words = list(history), self.description_words, self.description_words
        while True:
            prompt = self._assemble(hist, query, candidate, hist_words, cand_words)
            n = self.count(prompt.segments)
            if n <= self.max_tokens:
                prompt.meta.update(tokens=n, history=len(hist), history_words=hist_words, candidate_words=cand_words)
                return prompt
            if hist and hist_words > 0:
                hist_words //= 2
            elif cand_words > 0:
                cand_words //= 2
            elif hist:
                hist = hist[1:]
            else:  # the bare candidate alone is over budget: keep it whole, never cut it
                prompt.meta.update(tokens=n, history=0, history_words=0, candidate_words=0, over_budget=True)
                return prompt

    def build_group(self, history: Sequence[Item], query: str, candidates: Sequence[Item]) -> list[Prompt]:
        """Prompts for candidates sharing one history, with one identical prefix.

        The history is trimmed as much as the most demanding candidate needs, so
        the backbone can compute the prefix once and share its KV cache.
        """
        single = [self.build(history, query, c) for c in candidates]
        if len(single) < 2:
            return single
        n_hist = min(p.meta["history"] for p in single)
        hist_words = min(p.meta["history_words"] for p in single)
        hist = list(history)[len(history) - n_hist:] if n_hist else []
        out = []
        for c, p in zip(candidates, single, strict=True):
            prompt = self._assemble(hist, query, c, hist_words, p.meta["candidate_words"])
            prompt.meta.update(p.meta, tokens=self.count(prompt.segments), history=n_hist, history_words=hist_words)
            out.append(prompt)
        return out


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join adjacent text segments (fewer tokenizer calls, stable token boundaries)."""
    out: list[Segment] = []
    for s in segments:
        if isinstance(s, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + s
        else:
            out.append(s)
    return out
