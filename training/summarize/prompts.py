"""The summarization prompts (HMPPS Sec. 4.2 and Table 5), built from editable per-dataset demonstrations.

- ``perspective`` extraction: guided by the search query, one-shot;
- ``perspective`` summary: the core perspectives, an explicit reasoning request, one-shot;
- ``direct``: summarize, no demonstration, no reasoning (Table 5's "Direct");
- ``reasoning``: reason first, one-shot, but no perspectives (Table 5's "Reasoning-based").

``prompt_version`` hashes the templates and the demonstration, so editing either invalidates the cache.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from contract.errors import InputError
from training.config import read_yaml_mapping
from training.summarize.llm import Messages

DEMOS_DIR = Path(__file__).parent / "demos"
MODES = ("perspective", "direct", "reasoning", "none")
TEMPLATE_REVISION = "1"

SYSTEM = "You are a careful assistant for a product search engine. You only state facts found in the given text."

PERSPECTIVE_EXTRACTION = """\
A customer searched for a product. Read the product description and list the perspectives \
(aspects such as brand, colour, material, topic, audience, size) of the description that matter to this customer.
Answer with one line that starts with "Perspectives:" and lists 2 to 5 short noun phrases separated by semicolons.

Example
Query: {demo_query}
Description: {demo_description}
Perspectives: {demo_perspectives}

Now the real one
Query: {query}
Description: {description}
Perspectives:"""

_REASON_THEN_SUMMARY = """\
First reason in one sentence about which facts matter, then write the summary.
Answer in two lines, "Reasoning: ..." and "Summary: ...".

Example
Title: {demo_title}
Description: {demo_description}
Reasoning: {demo_reasoning}
Summary: {demo_summary}

Now the real one
Title: {title}
Description: {description}"""

SUMMARY_PERSPECTIVE = """\
Summarize the product description for a product search engine in at most {budget} words.
Keep only facts about these perspectives: {perspectives}.
Leave out shipping, returns, store notices, formatting code and lists of search keywords. Do not add facts.
""" + _REASON_THEN_SUMMARY

# Table 5's "reasoning-based" prompt: the same reasoning request and demonstration, no perspectives
SUMMARY_REASONING = """\
Summarize the product description for a product search engine in at most {budget} words.
""" + _REASON_THEN_SUMMARY

SUMMARY_DIRECT = """\
Summarize this product description in at most {budget} words.

Title: {title}
Description: {description}
Summary:"""


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def demo_path(dataset_name: str) -> Path:
    """The dataset's demonstration file: its own, its family's (synthetic-s3 -> synthetic,
    Magazine_Subscriptions -> magazine), or the default."""
    slug = _slug(dataset_name)
    for cand in (slug, re.sub(r"_s\d+$", "", slug), slug.split("_")[0], "default"):
        if (DEMOS_DIR / f"{cand}.yaml").exists():
            return DEMOS_DIR / f"{cand}.yaml"
    raise InputError(f"no demonstration file in {DEMOS_DIR}")  # pragma: no cover - default.yaml ships


def load_demo(path: Path) -> dict[str, Any]:
    demo = read_yaml_mapping(path)
    need = {"perspective": ("query", "description", "perspectives"),
            "summary": ("title", "description", "reasoning", "summary")}
    for part, keys in need.items():
        missing = [k for k in keys if k not in (demo.get(part) or {})]
        if missing:
            raise InputError(f"{path}: '{part}' needs {', '.join(missing)}")
    return demo


def prompt_version(mode: str, demo: dict[str, Any]) -> str:
    text = "\n".join([TEMPLATE_REVISION, SYSTEM, PERSPECTIVE_EXTRACTION, SUMMARY_PERSPECTIVE, SUMMARY_REASONING,
                      SUMMARY_DIRECT, mode, repr(sorted(demo.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _chat(user: str) -> Messages:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def perspective_prompt(demo: dict[str, Any], query: str, description: str) -> Messages:
    d = demo["perspective"]
    return _chat(PERSPECTIVE_EXTRACTION.format(
        demo_query=d["query"], demo_description=d["description"], demo_perspectives="; ".join(d["perspectives"]),
        query=query, description=description))


def summary_prompt(mode: str, demo: dict[str, Any], title: str, description: str, budget: int,
                   perspectives: list[str] | None = None) -> Messages:
    d = demo["summary"]
    fields = {"demo_title": d["title"], "demo_description": d["description"], "demo_reasoning": d["reasoning"],
              "demo_summary": d["summary"], "title": title, "description": description, "budget": budget}
    if mode == "perspective":
        if not perspectives:
            raise InputError("perspective summaries need core perspectives; none were extracted")
        return _chat(SUMMARY_PERSPECTIVE.format(perspectives="; ".join(perspectives), **fields))
    if mode == "reasoning":
        return _chat(SUMMARY_REASONING.format(**fields))
    if mode == "direct":
        return _chat(SUMMARY_DIRECT.format(**fields))
    raise InputError(f"--mode {mode!r} has no LLM prompt; choose one of {', '.join(MODES)}")
