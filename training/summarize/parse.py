"""Reading what an LLM wrote: perspective lists and summaries, tolerant of the usual malformations."""

from __future__ import annotations

import json
import re
from collections import Counter

# list glue an LLM leaves around a perspective ("and price", "including its brand", "materials used")
_LEADING = re.compile(r"^(?:the|a|an|its|their|product|and|or|also|including|include|incl|such as|like|with|plus|e g)\s+")
_TRAILING = re.compile(r"\s+(?:used|etc|and|or)$")
_FUNCTION_WORDS = {"and", "or", "also", "including", "include", "such", "as", "like", "with", "plus", "etc", "the", "a",
                   "an", "its", "their", "of", "for", "to", "in", "on", "is", "are"}
_CUT_MARKERS = ("now the real one", "title:", "description:", "query:", "perspectives:", "reasoning:")


def normalize_perspective(p: str) -> str | None:
    """Lower case, no punctuation or leading article, simple plural -> singular; None when not a short phrase."""
    p = re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 &-]+", " ", p.lower())).strip()
    while True:  # peel glue until stable: "and also the price" -> "price"
        peeled = _TRAILING.sub("", _LEADING.sub("", p))
        if peeled == p:
            break
        p = peeled
    words = p.split()
    if (not words or len(words) > 4 or p in {"none", "n a", "perspective", "perspectives"}
            or all(w in _FUNCTION_WORDS for w in words)):
        return None
    last = words[-1]
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        words[-1] = last[:-1]
    return " ".join(words)


def parse_perspectives(text: str | None) -> list[str]:
    """Perspectives from "Perspectives: a; b", a JSON list, bullets or numbered lines; normalized, deduplicated."""
    if not text:
        return []
    body = text.strip()
    m = re.search(r"perspectives?\s*:\s*(.*)", body, flags=re.I | re.S)
    if m:
        body = m.group(1)
    items: list[str] = []
    try:
        loaded = json.loads(body[body.index("["): body.rindex("]") + 1]) if "[" in body else None
        if isinstance(loaded, list):
            items = [str(x) for x in loaded]
    except ValueError:
        items = []
    if not items:
        first = [ln for ln in body.splitlines() if ln.strip()]
        lines = [re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", ln) for ln in first]
        if len(lines) > 1 and all(len(ln.split()) <= 4 for ln in lines[:5]):
            items = lines
        else:
            items = re.split(r"[;,]", lines[0] if lines else "")
    out: list[str] = []
    for it in items:
        n = normalize_perspective(it)
        if n and n not in out:
            out.append(n)
    return out[:8]


_SPELLING = {"color": "colour", "colors": "colour", "colours": "colour"}


def core_perspectives(lists: list[list[str]], k: int) -> list[tuple[str, int]]:
    """The top-``k`` most frequent perspectives (ties by name) with their counts.

    A perspective that is an aspect plus a value ("brand acme", "colour blue") counts for the aspect
    when the aspect also occurs alone, so values do not crowd out the perspectives themselves.
    """
    lists = [[" ".join(_SPELLING.get(w, w) for w in p.split()) for p in ps] for ps in lists]
    single = {p for ps in lists for p in ps if " " not in p}
    counts = Counter(x for ps in lists for x in {p.split()[0] if p.split()[0] in single else p for p in ps})
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def _repetitive(words: list[str]) -> bool:
    """A degenerate loop: a 3-gram that covers a third of a longer text."""
    if len(words) < 12:
        return False
    grams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    return grams.most_common(1)[0][1] * 3 >= len(words) / 3


def parse_summary(text: str | None, budget: int, reasoning: bool) -> tuple[str | None, str]:
    """(summary or None, reason). With ``reasoning``, the text after "Summary:" is the summary."""
    if text is None:
        return None, "no reply"
    body = text.strip().strip("`").strip()
    m = re.search(r"summary\s*:\s*(.*)", body, flags=re.I | re.S)
    if m:
        body = m.group(1)
    elif reasoning and re.match(r"\s*reasoning\s*:", body, flags=re.I):
        return None, "reasoning without a summary"
    # the model running on into a new example or echoing the prompt
    low = body.lower()
    cut = min((low.find(mk) for mk in _CUT_MARKERS if low.find(mk) > 0), default=len(body))
    body = re.sub(r"\s+", " ", body[:cut]).strip().strip('"').strip()
    words = body.split()
    if len(words) < 3:
        return None, "empty or too short"
    if _repetitive(words):
        return None, "repetition loop"
    if len(words) > budget:
        words = words[:budget]
    return " ".join(words), "ok"
