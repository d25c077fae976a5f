"""The teacher's hand-off to distillation: one scored first-stage list per query (``scores.jsonl``).

The JSON shape is defined here once: the teacher writes ``ScoredList.to_json()`` lines,
distillation reads them back with ``ScoredList.from_json``. The student also trains on
lists the teacher did not score (the first stage's holdout lists): there a candidate's
``teacher_logit`` is None, and the loss uses its hard label only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# resumable scores of a run in progress: one process's file, or one per spawned scoring process
PARTIAL = "scores.partial.jsonl"


def partial_file(teacher: Path, process: int | None = None) -> Path:
    return Path(teacher) / (PARTIAL if process is None else f"scores.partial.{process}.jsonl")


def partial_files(teacher: Path) -> list[Path]:
    """The resumable score files of a teacher directory: one process's, and each spawned process's."""
    return sorted(Path(teacher).glob("scores.partial*.jsonl"))


@dataclass(frozen=True)
class ScoredCandidate:
    product_id: str
    label: int  # 1 for the product the user bought
    first_stage_score: float | None = None
    teacher_score: float | None = None  # P("yes")
    teacher_logit: float | None = None  # the yes-no margin; None where the teacher did not score the pair

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"product_id": self.product_id, "first_stage_score": self.first_stage_score}
        if self.teacher_score is not None:
            out["teacher_score"] = self.teacher_score
        out["teacher_logit"] = self.teacher_logit
        out["label"] = self.label
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScoredCandidate:
        return cls(str(d["product_id"]), int(d["label"]), d.get("first_stage_score"), d.get("teacher_score"),
                   d.get("teacher_logit"))


@dataclass(frozen=True)
class ScoredList:
    query_id: str
    split: str  # "train" or "test"
    target: str
    candidates: tuple[ScoredCandidate, ...]
    user_id: str | None = None
    query: str | None = None
    fold: int | None = None  # the cross-fitting fold of a holdout list (None: in-sample)
    prompt_tokens: tuple[int, ...] = ()

    @property
    def product_ids(self) -> list[str]:
        return [c.product_id for c in self.candidates]

    @property
    def teacher_scored(self) -> int:
        return sum(c.teacher_logit is not None for c in self.candidates)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query_id": self.query_id}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.query is not None:
            out["query"] = self.query
        out |= {"split": self.split, "target": self.target, "candidates": [c.to_json() for c in self.candidates]}
        if self.prompt_tokens:
            out["prompt_tokens"] = list(self.prompt_tokens)
        if self.fold is not None:
            out["fold"] = self.fold
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScoredList:
        return cls(str(d["query_id"]), str(d["split"]), str(d["target"]),
                   tuple(ScoredCandidate.from_json(c) for c in d["candidates"]), d.get("user_id"), d.get("query"),
                   d.get("fold"), tuple(d.get("prompt_tokens", ())))
