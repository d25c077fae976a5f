"""How good a summary is, measured against its source.

- hallucination: the share of numbers and brand names in a summary that are absent from the
  product's source text (title, brand, description);
- on synthetic data, where the generator records the injected noise and the true attributes:
  the share of noise removed and the share of decisive in-text attributes kept.
"""

from __future__ import annotations

import re
from typing import Any

from training.text import content_terms

_NUM = re.compile(r"\d+(?:[.,]\d+)?")


def numbers(text: str) -> set[str]:
    return {n.replace(",", ".") for n in _NUM.findall(text)}


def source_text(p: dict[str, Any]) -> str:
    return " ".join([p.get("title") or "", p.get("brand") or "", " ".join(p.get("category") or []),
                     p.get("description") or ""])


def hallucinations(summary: str, p: dict[str, Any], brands: set[str]) -> tuple[int, int]:
    """(unsupported, checked) numbers and brand names in ``summary``."""
    src = source_text(p).lower()
    nums = numbers(summary)
    bad = len(nums - numbers(src))
    low = summary.lower()
    named = {b for b in brands if re.search(rf"\b{re.escape(b)}\b", low)}
    bad += sum(1 for b in named if not re.search(rf"\b{re.escape(b)}\b", src))
    return bad, len(nums) + len(named)


def known_brands(products: dict[str, dict[str, Any]]) -> set[str]:
    """Brand names of the catalogue (and the synthetic ground truth), lower case, 3+ characters."""
    out = set()
    for p in products.values():
        for b in (p.get("brand"), ((p.get("extra") or {}).get("truth") or {}).get("brand")):
            if b and len(b) >= 3:
                out.add(b.lower())
    return out


def noise_and_attributes(summary: str, p: dict[str, Any]) -> dict[str, int] | None:
    """Noise terms kept and decisive attributes kept, from the generator's record; None without one."""
    extra = p.get("extra") or {}
    if "noise" not in extra or "truth" not in extra:
        return None
    truth = extra["truth"]
    clean = p.get("description") or ""
    for n in extra["noise"]:
        clean = clean.replace(n, " ")
    useful = set(content_terms(" ".join([p.get("title") or "", p.get("brand") or "",
                                          " ".join(p.get("category") or []), clean])))
    attrs = [truth["material"]] + [truth[k] for k in ("brand", "colour", "style") if truth.get(f"{k}_in_text")]
    # terms only the noise strings bring: font settings, shop boilerplate, keyword stuffing
    noise_terms = set(content_terms(" ".join(extra["noise"]))) - useful
    said = set(content_terms(summary))
    low = summary.lower()
    return {"noise_terms": len(noise_terms), "noise_kept": len(noise_terms & said),
            "attributes": len(attrs), "attributes_kept": sum(1 for a in attrs if a.lower() in low)}


def support(summary: str, p: dict[str, Any]) -> float:
    """Share of the summary's content terms that occur in the product's source text."""
    said = content_terms(summary)
    if not said:
        return 0.0
    src = set(content_terms(source_text(p)))
    return sum(1 for t in said if t in src) / len(said)
