"""Training and scoring inputs for the teacher: negatives, history modes, prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.history import select_history, select_latest, select_random
from training.artifacts import read_json, write_json
from training.dataset import Dataset
from training.teacher.config import TeacherConfig
from training.teacher.prompt import Item, Prompt, PromptBuilder, Segment, render_product

HISTORY_MODES = ("random", "latest", "selected")


@dataclass
class Embeddings:
    """Stage-1 mean-pooled embeddings of products and query strings (Eq. 4-5)."""

    product_ids: list[str]
    products: np.ndarray
    queries: list[str]
    query_vectors: np.ndarray

    def __post_init__(self) -> None:
        self._p = {pid: i for i, pid in enumerate(self.product_ids)}
        self._q = {q: i for i, q in enumerate(self.queries)}

    def product(self, pids: list[str]) -> np.ndarray:
        return self.products[[self._p[p] for p in pids]]

    def query(self, q: str) -> np.ndarray:
        return self.query_vectors[self._q[q]]


def save_embeddings(emb: Embeddings, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "products.npy", emb.products.astype(np.float32))
    np.save(out / "queries.npy", emb.query_vectors.astype(np.float32))
    write_json(out / "index.json", {"products": emb.product_ids, "queries": emb.queries})


def load_embeddings(path: Path) -> Embeddings:
    idx = read_json(path / "index.json")
    return Embeddings(idx["products"], np.load(path / "products.npy"), idx["queries"], np.load(path / "queries.npy"))


@dataclass
class Group:
    """One query's candidates with labels (1 = target) and one prompt each."""

    row: dict[str, Any]
    product_ids: list[str]
    labels: list[int]
    prompts: list[Prompt]


class ExampleFactory:
    def __init__(self, ds: Dataset, cfg: TeacherConfig, builder: PromptBuilder, emb: Embeddings | None = None):
        self.ds, self.cfg, self.builder, self.emb = ds, cfg, builder, emb
        self.catalog = sorted(ds.products)

    def _image(self, pid: str) -> str | None:
        if self.cfg.vision == "none":
            return None
        path = self.ds.image_path(pid)
        return str(path) if path is not None and path.is_file() else None

    def _item(self, pid: str) -> Item:
        return self.ds.products[pid], self._image(pid)

    def _candidate(self, pid: str, listed: list[str], owned: set[str] | None) -> Item:
        """A candidate with its first-stage rank (1 = top, 0 = not listed) and whether the user bought it
        before (``owned``: the user's whole history), each when the config shows it."""
        rank = (listed.index(pid) + 1 if pid in listed else 0) if self.cfg.first_stage_rank else None
        return self.ds.products[pid], self._image(pid), rank, None if owned is None else pid in owned

    def product_segments(self, pid: str) -> list[Segment]:
        """A product on its own, [t_p; v_p], as Eq. 4 embeds it."""
        return render_product(self.ds.products[pid], self.cfg.description_words, self._image(pid),
                              category_levels=self.cfg.category_levels, title_words=self.cfg.title_words,
                              omit_empty=self.cfg.compact_prompt)

    def histories(self, row: dict[str, Any], candidates: list[str], mode: str, rng: np.random.Generator) -> list[list[str]]:
        """History (product ids, oldest first) for each candidate under a selection mode."""
        full = self.ds.history(row)
        if mode == "random":
            chosen = [full[i] for i in select_random(len(full), self.cfg.k_s1, rng)]
            return [chosen] * len(candidates)
        if mode == "latest":
            chosen = [full[i] for i in select_latest(len(full), self.cfg.k_s1)]
            return [chosen] * len(candidates)
        if mode == "selected":
            if self.emb is None:
                raise ValueError("history mode 'selected' needs stage-1 embeddings")
            if not full:
                return [[] for _ in candidates]
            idx = select_history(self.emb.product(full), self.emb.query(row["query"]), self.emb.product(candidates), self.cfg.k_s2)
            return [[full[i] for i in r] for r in idx]
        raise ValueError(f"unknown history mode {mode!r}; choose one of {', '.join(HISTORY_MODES)}")

    def prompts(self, row: dict[str, Any], candidates: list[str], mode: str, rng: np.random.Generator,
                listed: list[str] | None = None) -> list[Prompt]:
        """One prompt per candidate; ``listed`` is the first stage's list the ranks are read from."""
        hists = self.histories(row, candidates, mode, rng)
        # the whole history, not only the items the prompt shows
        owned = set(self.ds.history(row)) if self.cfg.bought_before else None
        items = [self._candidate(c, listed if listed is not None else candidates, owned) for c in candidates]
        if mode != "selected":  # one history for all candidates: share the prefix
            return self.builder.build_group([self._item(h) for h in hists[0]], row["query"], items)
        return [self.builder.build([self._item(h) for h in hist], row["query"], item)
                for hist, item in zip(hists, items, strict=True)]

    def training_group(self, row: dict[str, Any], first_stage: list[str], mode: str, rng: np.random.Generator) -> Group:
        """The target, K_h^n hard negatives (best-scored first-stage candidates) and K_s^n random ones.

        With ``first_stage_rank`` the hard negatives are drawn at random from the whole list instead: the
        best-scored ones would always show ranks 1-3 while the target shows any rank, teaching the teacher
        that a top rank means "no" (an Office run trained so scored its test lists at AUC 0.43).
        """
        target = row["product_id"]
        others = [p for p in first_stage if p != target]
        if self.cfg.first_stage_rank:
            picked = sorted(rng.choice(len(others), size=min(self.cfg.hard_negatives, len(others)), replace=False))
            hard = [others[i] for i in picked]
        else:
            hard = others[: self.cfg.hard_negatives]
        taken = {target, *hard}
        pool = [p for p in self.catalog if p not in taken]
        n_rand = min(self.cfg.random_negatives, len(pool))
        rand = [pool[i] for i in rng.choice(len(pool), size=n_rand, replace=False)] if n_rand else []
        pids = [target] + hard + rand
        return Group(row, pids, [1] + [0] * (len(pids) - 1), self.prompts(row, pids, mode, rng, list(first_stage)))

    def scoring_group(self, row: dict[str, Any], first_stage: list[str], mode: str, rng: np.random.Generator) -> Group:
        labels = [int(p == row["product_id"]) for p in first_stage]
        return Group(row, list(first_stage), labels, self.prompts(row, list(first_stage), mode, rng))
