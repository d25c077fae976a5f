"""``hmpps summarize``: product descriptions -> summaries.jsonl, perspectives.json, summarize.json, report.md.

perspective mode (HMPPS Sec. 4.2):
  1. extraction: for a sample of (query, purchased product) pairs of the train split, the LLM lists
     the perspectives of the description that matter for that query (one-shot, per-dataset demo);
  2. the perspectives are normalized and counted; the top K_d are the core perspectives;
  3. every product is summarized around them, reasoning first (one-shot).
direct and reasoning modes skip 1-2 (Table 5's other prompts); none keeps the descriptions.

Every LLM reply is cached (append-only JSONL under ``--cache``, keyed by product or sample, prompt
version and model), so an interrupted run resumes and a rerun skips what is done. Shards
(``--shard I/N``) summarize a stable hash partition of the catalogue into a shared cache; a run
without ``--shard`` then assembles the whole catalogue from it. A reply that cannot be parsed falls
back to the cleaned description trimmed to the word budget, and is counted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contract.errors import InputError
from contract.reports import markdown_table
from training.artifacts import atomic_dir, read_json, write_json, write_jsonl
from training.dataset import Dataset, load_dataset
from training.summarize.llm import LLM
from training.summarize.parse import core_perspectives, parse_perspectives, parse_summary
from training.summarize.prompts import (
    MODES,
    demo_path,
    load_demo,
    perspective_prompt,
    prompt_version,
    summary_prompt,
)
from training.summarize.quality import hallucinations, known_brands, noise_and_attributes, support


@dataclass
class SummarizeConfig:
    mode: str = "perspective"
    k_d: int = 20  # core perspectives kept
    perspective_samples: int = 200  # (query, product) pairs the perspectives are extracted from
    budget_words: int = 40  # a summary's word budget (and the fallback's)
    input_words: int = 200  # description words shown to the LLM
    history_items: int = 5  # K_s1: items in one user-history sample for the WC_h column
    # the faithfulness guard: a summary is replaced by the fallback when fewer of its content words
    # than this occur in the source, or when it names a number or brand the source does not
    min_support: float = 0.6
    batch: int = 8
    seed: int = 0


class ReplyCache:
    """Append-only JSONL of LLM replies; a torn last line (a crash mid-write) is ignored on read."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, str | None] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with path.open("rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # end a torn line, or the next reply would be glued onto it and lost

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> str | None:
        return self.rows.get(key)

    def put(self, items: list[tuple[str, str | None]]) -> None:
        with self.path.open("a") as f:
            for key, reply in items:
                if reply is None:
                    continue  # a failed call is retried by the next run, not cached
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")
                self.rows[key] = reply
            f.flush()


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def shard_of(product_id: str, n: int) -> int:
    return int(hashlib.sha256(product_id.encode()).hexdigest(), 16) % n


def fallback_text(p: dict[str, Any], budget: int) -> str:
    return " ".join((p.get("description") or p.get("title") or "").split()[:budget])


def _run_llm(llm: LLM, cache: ReplyCache, jobs: list[tuple[str, Any]], max_new_tokens: int, batch: int,
             desc: str) -> tuple[dict[str, str | None], float, int]:
    """Replies for (key, chat) jobs, from the cache where present; (replies, generation seconds, generated)."""
    todo = [(k, chat) for k, chat in jobs if k not in cache]
    t0, done = time.time(), 0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="item")
    for i in range(0, len(todo), batch):
        part = todo[i:i + batch]
        replies = llm.generate([c for _, c in part], max_new_tokens)
        if i == 0 and all(r is None for r in replies):
            raise InputError(f"the LLM ({llm.name}) answered none of the first {len(part)} requests; check --llm")
        cache.put([(k, r) for (k, _), r in zip(part, replies, strict=True)])
        done += len(part)
        bar.update(len(part))
    bar.close()
    return {k: cache.get(k) for k, _ in jobs}, time.time() - t0, done


def _perspective_samples(ds: Dataset, n: int, seed: int) -> list[dict[str, Any]]:
    rows = [r for r in ds.queries("train") if (ds.products[r["product_id"]].get("description") or "").strip()]
    if not rows:
        raise InputError("no train purchase has a product description to extract perspectives from")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i] for i in sorted(idx)]


def extract_perspectives(ds: Dataset, llm: LLM, cache: ReplyCache, demo: dict[str, Any], version: str,
                         cfg: SummarizeConfig) -> dict[str, Any]:
    samples = _perspective_samples(ds, cfg.perspective_samples, cfg.seed)
    jobs = []
    for r in samples:
        p = ds.products[r["product_id"]]
        desc = " ".join((p.get("description") or "").split()[: cfg.input_words])
        jobs.append((_key("perspective", version, llm.name, r["query"], r["product_id"]),
                     perspective_prompt(demo, r["query"], desc)))
    replies, seconds, generated = _run_llm(llm, cache, jobs, 40, cfg.batch, "perspectives")
    lists = [parse_perspectives(replies[k]) for k, _ in jobs]
    core = core_perspectives(lists, cfg.k_d)
    return {"core": [p for p, _ in core], "counts": dict(core), "samples": len(samples),
            "unparsed_samples": sum(1 for ps in lists if not ps), "distinct": len({p for ps in lists for p in ps}),
            "seconds": round(seconds, 1), "generated": generated}


def _words(text: str) -> int:
    return len(text.split())


def _history_words(ds: Dataset, texts: dict[str, str], k: int) -> list[int]:
    """Words in one user-history sample (the last ``k`` items before each test purchase), Table 5's WC_h."""
    out = []
    for r in ds.queries("test"):
        hist = ds.history(r)[-k:]
        if hist:
            out.append(sum(_words(texts[p]) for p in hist))
    return out


def _stats(values: list[int]) -> dict[str, float]:
    return {"avg": round(float(np.mean(values)), 1) if values else 0.0, "max": int(max(values)) if values else 0}


def run_summarize(data: Path, llm: LLM | None, out: Path, cfg: SummarizeConfig, *, cache_dir: Path,
                  shard: tuple[int, int] | None = None, perspectives_file: Path | None = None,
                  limit: int | None = None) -> dict[str, Any]:
    if cfg.mode not in MODES:
        raise InputError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.mode != "none" and llm is None:
        raise InputError(f"--mode {cfg.mode} needs --llm")
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise InputError(f"--shard {shard[0]}/{shard[1]}: expected I/N with 0 <= I < N")
    t0 = time.time()
    ds = load_dataset(data)
    demo_file = demo_path(ds.name)
    demo = load_demo(demo_file)
    version = prompt_version(cfg.mode, demo)
    model = llm.name if llm else "none"
    cache = ReplyCache(Path(cache_dir) / ds.fingerprint / "replies.jsonl")

    ids = sorted(ds.products)
    if shard is not None:
        ids = [p for p in ids if shard_of(p, shard[1]) == shard[0]]
    if limit:
        ids = ids[:limit]
    if not ids:
        raise InputError("no products to summarize (check --shard / --limit)")

    persp: dict[str, Any] | None = None
    if cfg.mode == "perspective":
        if perspectives_file is not None:
            persp = read_json(perspectives_file)
            if not persp.get("core"):
                raise InputError(f"{perspectives_file} holds no 'core' perspectives")
        else:
            assert llm is not None
            persp = extract_perspectives(ds, llm, cache, demo, version, cfg)
        if not persp["core"]:
            raise InputError("the LLM gave no parseable perspectives; see the cached replies or try another --llm")

    summaries: dict[str, str] = {}
    parsed: dict[str, str] = {}  # what the LLM said, before the faithfulness guard
    checks: dict[str, tuple[int, int, float]] = {}  # its (unsupported, checked, support), computed once
    reasons: dict[str, str] = {}
    gen_seconds, generated = 0.0, 0
    if cfg.mode == "none":
        summaries = {p: ds.products[p].get("description") or "" for p in ids}
        reasons = dict.fromkeys(ids, "ok")
    else:
        assert llm is not None
        core = persp["core"] if persp else None
        core_key = ",".join(core or [])
        jobs = []
        for pid in ids:
            p = ds.products[pid]
            desc = " ".join((p.get("description") or "").split()[: cfg.input_words])
            jobs.append((_key("summary", cfg.mode, version, model, core_key, str(cfg.budget_words), pid),
                         summary_prompt(cfg.mode, demo, p.get("title") or pid, desc, cfg.budget_words, core)))
        replies, gen_seconds, generated = _run_llm(llm, cache, jobs, int(cfg.budget_words * 2.5) + 30, cfg.batch,
                                                   f"summaries ({cfg.mode})")
        brands = known_brands(ds.products)
        for pid, (k, _) in zip(ids, jobs, strict=True):
            p = ds.products[pid]
            text, reason = parse_summary(replies[k], cfg.budget_words, reasoning=cfg.mode != "direct")
            if text is not None:
                parsed[pid] = text
                bad, checked = hallucinations(text, p, brands)
                checks[pid] = (bad, checked, support(text, p))
                if bad or checks[pid][2] < cfg.min_support:
                    text, reason = None, "unfaithful"
            if not (p.get("description") or "").strip():
                text, reason = None, "no description"
            summaries[pid] = text if text is not None else fallback_text(p, cfg.budget_words)
            reasons[pid] = reason

    report = _measure(ds, ids, summaries, reasons, cfg)
    if checks:
        bad, checked = sum(c[0] for c in checks.values()), sum(c[1] for c in checks.values())
        report["hallucination_before_guard"] = {
            "unsupported": bad, "checked": checked, "share": round(bad / checked, 4) if checked else 0.0,
            "mean_support": round(float(np.mean([c[2] for c in checks.values()])), 4)}
    complete = shard is None and not limit
    info = {
        "stage": "summarize", "mode": cfg.mode, "llm": model, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
        "prompt_version": version, "demo_file": demo_file.name, "config": asdict(cfg),
        "shard": list(shard) if shard else None, "limit": limit, "complete": complete,
        "products": len(ids), "generated": generated, "from_cache": len(ids) - generated if cfg.mode != "none" else 0,
        "items_per_second": round(generated / gen_seconds, 3) if generated and gen_seconds > 0 else None,
        "perspectives": persp, "seconds": round(time.time() - t0, 1), **report,
    }
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "summaries.jsonl", ({"product_id": p, "summary": summaries[p], "status": reasons[p]}
                                              | ({"rejected_llm_summary": parsed[p]} if reasons[p] != "ok" and p in parsed else {})
                                              for p in ids))
        if persp is not None:
            write_json(tmp / "perspectives.json", persp)
        write_json(tmp / "summarize.json", info)
        (tmp / "report.md").write_text(_report(info, ds, ids, summaries, parsed, reasons))
    return info


def _measure(ds: Dataset, ids: list[str], summaries: dict[str, str], reasons: dict[str, str],
             cfg: SummarizeConfig) -> dict[str, Any]:
    raw = {p: ds.products[p].get("description") or "" for p in ds.products}
    new = raw | summaries
    brands = known_brands(ds.products)
    bad = checked = 0
    noise_terms = noise_kept = attrs = attrs_kept = 0
    raw_noise = {"terms": 0, "kept": 0}
    for pid in ids:
        b, c = hallucinations(summaries[pid], ds.products[pid], brands)
        bad, checked = bad + b, checked + c
        q = noise_and_attributes(summaries[pid], ds.products[pid])
        if q is not None:
            noise_terms += q["noise_terms"]
            noise_kept += q["noise_kept"]
            attrs += q["attributes"]
            attrs_kept += q["attributes_kept"]
            r = noise_and_attributes(raw[pid], ds.products[pid])
            assert r is not None
            raw_noise["terms"] += r["noise_terms"]
            raw_noise["kept"] += r["noise_kept"]
    failures: dict[str, int] = {}
    for pid in ids:
        if reasons[pid] != "ok":
            failures[reasons[pid]] = failures.get(reasons[pid], 0) + 1
    out: dict[str, Any] = {
        "fallbacks": sum(failures.values()), "fallback_reasons": failures,
        "words": {"none": {"product": _stats([_words(raw[p]) for p in ids]),
                           "history": _stats(_history_words(ds, raw, cfg.history_items))},
                  cfg.mode: {"product": _stats([_words(summaries[p]) for p in ids]),
                             "history": _stats(_history_words(ds, new, cfg.history_items))}},
        "hallucination": {"unsupported": bad, "checked": checked,
                          "share": round(bad / checked, 4) if checked else 0.0},
    }
    if noise_terms:
        out["synthetic"] = {
            "noise_removed": round(1 - noise_kept / noise_terms, 4),
            "noise_removed_by_raw": round(1 - raw_noise["kept"] / raw_noise["terms"], 4) if raw_noise["terms"] else None,
            "attributes_kept": round(attrs_kept / attrs, 4) if attrs else None,
            "noise_terms": noise_terms, "attributes": attrs,
        }
    return out


def _samples(ds: Dataset, ids: list[str], reasons: dict[str, str], n: int = 3) -> list[str]:
    """Up to ``n`` products, spread over the catalogue: accepted summaries first, then fallbacks."""
    ok = [p for p in ids if reasons.get(p) == "ok"]
    ok = ok[:: max(1, len(ok) // n)]
    rest = [p for p in ids[:: max(1, len(ids) // n)] if p not in ok]
    return (ok + rest)[:n]


def _report(info: dict[str, Any], ds: Dataset, ids: list[str], summaries: dict[str, str],
            parsed: dict[str, str], reasons: dict[str, str]) -> str:
    w = info["words"]
    lines = [
        f"# Summaries of {ds.name}: {info['mode']}", "",
        f"LLM `{info['llm']}`, prompt version `{info['prompt_version']}` (demo `{info['demo_file']}`), "
        f"{info['products']} products" + (f", shard {info['shard'][0]}/{info['shard'][1]}" if info["shard"] else "")
        + f", {info['seconds']} s.", "",
        "## Table 5 layout", "",
        "WC_p: words per product description; WC_h: words in one user-history sample "
        f"(the last {info['config']['history_items']} items before each test purchase).", "",
        markdown_table(["descriptions", "WC_p avg", "WC_p max", "WC_h avg", "WC_h max"],
                       [[mode, s["product"]["avg"], s["product"]["max"], s["history"]["avg"], s["history"]["max"]]
                        for mode, s in w.items()]),
    ]
    h = info["hallucination"]
    lines += [""]
    if "hallucination_before_guard" in info:
        g = info["hallucination_before_guard"]
        lines.append(f"- hallucination in the LLM's parsed summaries: {g['unsupported']} of {g['checked']} numbers and "
                     f"brand names absent from the source ({g['share']:.1%}); on average {g['mean_support']:.0%} of a "
                     "summary's content words occur in its source")
    lines += [f"- hallucination in the written summaries (after the faithfulness guard): {h['unsupported']} of "
              f"{h['checked']} ({h['share']:.1%})",
              f"- fallbacks to the trimmed description: {info['fallbacks']} of {info['products']}"
              + (f" ({', '.join(f'{k}: {v}' for k, v in info['fallback_reasons'].items())})" if info["fallbacks"] else ""),
              f"- LLM calls this run: {info['generated']}, from cache: {info['from_cache']}"
              + (f", {info['items_per_second']} items/s" if info["items_per_second"] else "")]
    if "synthetic" in info:
        s = info["synthetic"]
        lines.append(f"- synthetic ground truth: {s['noise_removed']:.1%} of the injected noise terms removed, "
                     f"{s['attributes_kept']:.1%} of the decisive in-text attributes kept")
    if info["perspectives"]:
        p = info["perspectives"]
        lines += ["", f"## Core perspectives (top {len(p['core'])} of {p['distinct']} from {p['samples']} samples)", "",
                  markdown_table(["perspective", "count"], list(p["counts"].items()))]
    lines += ["", "## Before and after", ""]
    for pid in _samples(ds, ids, reasons):
        before = " ".join((ds.products[pid].get("description") or "").split()[:80])
        lines += [f"**{pid}** ({reasons[pid]})", "", f"- before: {before}"]
        if reasons[pid] != "ok" and pid in parsed:
            lines.append(f"- the LLM wrote (rejected): {parsed[pid]}")
        lines += [f"- after: {summaries[pid]}", ""]
    return "\n".join(lines) + "\n"
