"""Text cleanup and the HEM-style query rule.

Query rule (Van Gysel et al. 2016; Ai et al. 2017, HEM), applied to the
category path of the purchased product:

1. Take the product's most specific category path: the longest of its paths
   (2014 meta has several, 2018 and 2023 have one); ties go to the first.
2. Clean every level (HTML entities and tags removed) and drop levels that are
   empty or markup junk.
3. If no level survives, fall back to the product's main category
   (``main_cat`` / ``main_category``), and then to the dataset's most common
   root category. Products without metadata get that root too. The fallback
   used is recorded in ``query_source``.
4. Lower-case, split into ``[a-z0-9]+`` terms, drop stopwords, and drop repeated
   terms keeping the first occurrence. Concatenate with spaces.

Every purchase gets the query of its product, so one query string is shared by
many users, which is what makes the task personal: the query alone cannot tell
apart the products of one category.
"""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^<>]*(?:>|$)")  # also catches unterminated tags such as '<span class="a'
_WS = re.compile(r"\s+")
_SPACE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_TERM = re.compile(r"[a-z0-9]+")
_CODEY = re.compile(r"[{}<>=;\"\\]|\b(?:var|function|class|div|span|href|getTime)\b")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with you your yours yourself yourselves s t""".split()
)


def clean_text(raw: object) -> str:
    """HTML entities decoded (twice, for double-escaped catalogs), tags removed, whitespace collapsed."""
    if raw is None:
        return ""
    if isinstance(raw, (list, tuple)):
        raw = "\n".join(str(x) for x in raw if x is not None)
    text = html.unescape(html.unescape(str(raw)))
    text = _TAG.sub(" ", text)
    return _SPACE_PUNCT.sub(r"\1", _WS.sub(" ", text)).strip()


def is_markup_junk(raw: object) -> bool:
    """True when a title is markup or code rather than words (common in 2018 meta)."""
    cleaned = clean_text(raw)
    letters = sum(ch.isalpha() for ch in cleaned)
    if letters < 2:
        return True
    codey = len(_CODEY.findall(cleaned))
    words = max(1, len(cleaned.split()))
    return codey / words > 0.3


def terms(text: str) -> list[str]:
    return _TERM.findall(text.lower())


def content_terms(text: str) -> list[str]:
    """Terms without stopwords, repeated terms dropped, order kept."""
    seen: set[str] = set()
    out = []
    for t in terms(text):
        if t in STOPWORDS or t in seen:
            continue
        seen.add(t)
        out.append(t)
    return out


def clean_category_path(path: list[object] | None) -> list[str]:
    """Levels cleaned; empty and junk levels dropped."""
    out = []
    for level in path or []:
        if is_markup_junk(level):
            continue
        out.append(clean_text(level))
    return out


def query_from_path(path: list[str]) -> str:
    return " ".join(content_terms(" ".join(path)))
