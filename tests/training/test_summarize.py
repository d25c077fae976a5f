"""Perspective-guided summarization (issue 4): prompts, parsing, resume, shards, quality, the OpenAI backend."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.errors import InputError
from hmpps.cli import app
from training.dataset import load_dataset
from training.summarize.llm import OpenAILLM, parse_llm_spec
from training.summarize.parse import core_perspectives, parse_perspectives, parse_summary
from training.summarize.prompts import (
    DEMOS_DIR,
    load_demo,
    perspective_prompt,
    prompt_version,
    summary_prompt,
)
from training.summarize.run import SummarizeConfig, run_summarize, shard_of

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden" / "summarize"


# -- prompts ---------------------------------------------------------------------------------------

def _golden_prompts() -> dict[str, str]:
    demo = load_demo(DEMOS_DIR / "default.yaml")
    desc = "Free shipping! Acme ceramic mug, 350 g, blue. font-size:10pt. best mugs cheap mugs"
    chats = {
        "perspective_extraction": perspective_prompt(demo, "home kitchen coffee mugs", desc),
        "summary_perspective": summary_prompt("perspective", demo, "Acme Mug", desc, 40, ["brand", "colour", "material"]),
        "summary_reasoning": summary_prompt("reasoning", demo, "Acme Mug", desc, 40),
        "summary_direct": summary_prompt("direct", demo, "Acme Mug", desc, 40),
    }
    return {k: "\n---\n".join(f"[{m['role']}]\n{m['content']}" for m in chat) + "\n" for k, chat in chats.items()}


@pytest.mark.parametrize("name", ["perspective_extraction", "summary_perspective", "summary_reasoning", "summary_direct"])
def test_prompts_match_their_golden_files(name):
    assert _golden_prompts()[name] == (GOLDEN / f"{name}.txt").read_text(), \
        f"prompt {name} changed: if on purpose, regenerate tests/training/golden/summarize (see test module)"


def test_prompt_version_follows_the_demo_and_mode():
    demo = load_demo(DEMOS_DIR / "default.yaml")
    edited = json.loads(json.dumps(demo))
    edited["summary"]["summary"] += " Edited."
    assert prompt_version("perspective", demo) == prompt_version("perspective", demo)
    assert prompt_version("perspective", demo) != prompt_version("perspective", edited)
    assert prompt_version("perspective", demo) != prompt_version("direct", demo)


def test_each_dataset_finds_its_demo():
    from training.summarize.prompts import demo_path

    assert demo_path("Magazine_Subscriptions").name == "magazine.yaml"
    assert demo_path("synthetic-s7").name == "synthetic.yaml"
    assert demo_path("Office_Products").name == "default.yaml"


# -- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,expected", [
    ("Reasoning: brand matters.\nSummary: Acme mug in blue ceramic.", "Acme mug in blue ceramic."),
    ("summary:   Acme mug in blue ceramic.  ", "Acme mug in blue ceramic."),
    ("```\nSummary: Acme mug, blue, ceramic.\n```", "Acme mug, blue, ceramic."),
    ("Summary: Acme mug, blue.\n\nNow the real one\nTitle: Other\nDescription: x", "Acme mug, blue."),
    ("Summary: Acme mug, blue. Reasoning: because", "Acme mug, blue."),
])
def test_summary_parser_reads_what_small_models_write(reply, expected):
    assert parse_summary(reply, 40, reasoning=True) == (expected, "ok")


@pytest.mark.parametrize("reply,reason", [
    (None, "no reply"),
    ("Reasoning: Reason: Reason: the brand", "reasoning without a summary"),
    ("Summary: ok", "empty or too short"),
    ("Summary: " + "style steel style steel " * 10, "repetition loop"),
])
def test_summary_parser_rejects_malformed_replies(reply, reason):
    assert parse_summary(reply, 40, reasoning=True) == (None, reason)


def test_summary_parser_trims_to_the_budget_and_direct_needs_no_label():
    text, reason = parse_summary(" ".join(f"w{i}" for i in range(100)), 10, reasoning=False)
    assert reason == "ok" and text is not None and len(text.split()) == 10


@pytest.mark.parametrize("reply,expected", [
    ("Perspectives: Brand; the Colours; material", ["brand", "colour", "material"]),
    ('["brand", "nib type", "Brand"]', ["brand", "nib type"]),
    ("- brand\n- colour\n- material", ["brand", "colour", "material"]),
    ("1. topic\n2) audience\n3. publishers", ["topic", "audience", "publisher"]),
    ("Perspectives: brand, a very long phrase that is no perspective at all, colour", ["brand", "colour"]),
    # list glue seen in real SmolLM2 replies is peeled off, and a lone conjunction is no perspective
    ("Perspectives: quality, and price, including its brand, materials used, and", ["quality", "price", "brand", "material"]),
    ("", []),
    (None, []),
])
def test_perspective_parser(reply, expected):
    assert parse_perspectives(reply) == expected


def test_core_perspectives_count_aspects_not_values():
    lists = [["brand acme", "colour"], ["brand", "color blue"], ["brand halcyon", "material"], ["weight"]]
    core = dict(core_perspectives(lists, 3))
    assert core == {"brand": 3, "colour": 2, "material": 1}


# -- runs with a stand-in LLM (a unit test of the seam) ----------------------------------------------

class EchoLLM:
    """Answers with the product's useful sentences (the generator knows them), counting calls."""

    name = "echo-test"

    def __init__(self, ds, fail_after=None):
        self.ds, self.calls, self.fail_after = ds, 0, fail_after

    def generate(self, chats, max_new_tokens):
        out = []
        for chat in chats:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise KeyboardInterrupt  # an interrupted run
            text = chat[-1]["content"]
            if "Perspectives:" in text.splitlines()[-1]:
                out.append("Perspectives: brand; colour; style")
                continue
            title = text.split("Now the real one\n")[-1].split("Title: ")[1].split("\n")[0] if "Now the real one" in text \
                else text.split("Title: ")[1].split("\n")[0]
            p = next(p for p in self.ds.products.values() if p["title"] == title)
            clean = p["description"]
            for n in p["extra"]["noise"]:
                clean = clean.replace(n, " ")
            out.append(f"Reasoning: the attributes matter.\nSummary: {' '.join(clean.split())}")
        return out


def test_perspective_run_removes_noise_and_keeps_attributes(synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    llm = EchoLLM(ds)
    cfg = SummarizeConfig(perspective_samples=10)
    info = run_summarize(synthetic_dir, llm, tmp_path / "s", cfg, cache_dir=tmp_path / "cache")
    assert info["complete"] and info["products"] == len(ds.products) and info["fallbacks"] == 0
    assert info["synthetic"]["noise_removed"] >= 0.8 and info["synthetic"]["attributes_kept"] == 1.0
    assert info["synthetic"]["noise_removed_by_raw"] == 0.0
    assert info["perspectives"]["core"] == ["brand", "colour", "style"]
    assert info["words"]["perspective"]["product"]["avg"] < info["words"]["none"]["product"]["avg"]
    assert info["hallucination"]["unsupported"] == 0
    lines = [json.loads(x) for x in (tmp_path / "s" / "summaries.jsonl").read_text().splitlines()]
    assert len(lines) == len(ds.products) and all(x["status"] == "ok" for x in lines)
    report = (tmp_path / "s" / "report.md").read_text()
    assert "| none |" in report and "| perspective |" in report and "Before and after" in report
    # the teacher reads it: summaries replace descriptions
    from training.dataset import with_summaries

    fresh = load_dataset(synthetic_dir)
    summarized = with_summaries(fresh, tmp_path / "s")
    applied = summarized.summaries
    assert applied is not None and applied["products"] == len(ds.products) and applied["mode"] == "perspective"
    assert all("summary" in p for p in summarized.products.values())
    assert not any("summary" in p for p in fresh.products.values()), "the loaded dataset is not mutated"


def test_an_interrupted_run_resumes_and_a_rerun_calls_nothing(synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    cfg = SummarizeConfig(mode="direct", batch=4)
    with pytest.raises(KeyboardInterrupt):
        run_summarize(synthetic_dir, EchoLLM(ds, fail_after=10), tmp_path / "s", cfg, cache_dir=tmp_path / "c")
    assert not (tmp_path / "s").exists(), "no half-written output"
    with (tmp_path / "c" / ds.fingerprint / "replies.jsonl").open("a") as f:
        f.write('{"key": "torn')  # a crash mid-write
    second = EchoLLM(ds)
    info = run_summarize(synthetic_dir, second, tmp_path / "s", cfg, cache_dir=tmp_path / "c")
    assert second.calls == len(ds.products) - 8, "the 8 replies of the two finished batches are reused"
    third = EchoLLM(ds)
    again = run_summarize(synthetic_dir, third, tmp_path / "s2", cfg, cache_dir=tmp_path / "c")
    assert third.calls == 0 and again["from_cache"] == len(ds.products)
    assert (tmp_path / "s" / "summaries.jsonl").read_text() == (tmp_path / "s2" / "summaries.jsonl").read_text()
    assert info["generated"] == len(ds.products) - 8


def test_shards_partition_the_catalogue_and_assemble_from_the_cache(synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    cfg = SummarizeConfig(mode="direct")
    seen = []
    for i in range(3):
        info = run_summarize(synthetic_dir, EchoLLM(ds), tmp_path / f"s{i}", cfg, cache_dir=tmp_path / "c", shard=(i, 3))
        assert not info["complete"] and info["shard"] == [i, 3]
        seen += [json.loads(x)["product_id"] for x in (tmp_path / f"s{i}" / "summaries.jsonl").read_text().splitlines()]
    assert sorted(seen) == sorted(ds.products), "every product in exactly one shard"
    assert all(shard_of(p, 3) in (0, 1, 2) for p in ds.products)
    final = EchoLLM(ds)
    info = run_summarize(synthetic_dir, final, tmp_path / "all", cfg, cache_dir=tmp_path / "c")
    assert final.calls == 0 and info["complete"]


def test_unfaithful_summaries_fall_back_and_are_counted(synthetic_dir, tmp_path):
    class Inventor:
        name = "inventor"

        def generate(self, chats, max_new_tokens):
            return ["Summary: A Cobalt product, 9999 g, tested with Google's fact check tool."] * len(chats)

    info = run_summarize(synthetic_dir, Inventor(), tmp_path / "s", SummarizeConfig(mode="direct"),
                         cache_dir=tmp_path / "c", limit=5)
    assert info["fallback_reasons"] == {"unfaithful": 5} and not info["complete"]
    assert info["hallucination_before_guard"]["unsupported"] >= 5
    assert info["hallucination"]["share"] == 0.0, "what is written is the source's own text"


# -- the OpenAI-compatible backend against a real HTTP server ----------------------------------------

class _Server:
    def __init__(self, handler_fn):
        state = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "lock": threading.Lock()}

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state["lock"]:
                    state["requests"] += 1
                    state["in_flight"] += 1
                    state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
                    n = state["requests"]
                try:
                    time.sleep(0.02)
                    code, payload = handler_fn(self.path, body, n)
                finally:
                    with state["lock"]:
                        state["in_flight"] -= 1
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.state = state
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _completion(text):
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_openai_backend_retries_limits_concurrency_and_survives_malformed_replies():
    def handler(path, body, n):
        assert path == "/v1/chat/completions" and body["model"] == "m" and body["temperature"] == 0.0
        prompt = body["messages"][-1]["content"]
        if n <= 2:
            return 503, {"error": "warming up"}  # retried with backoff
        if "broken" in prompt:
            return 200, b"{not json"
        return 200, _completion("Summary: " + prompt.upper())

    srv = _Server(handler)
    try:
        llm = OpenAILLM(srv.url, "m", concurrency=3, timeout_s=5, retries=4, backoff_s=0.01)
        chats = [[{"role": "user", "content": f"item {i}"}] for i in range(12)] + [[{"role": "user", "content": "broken"}]]
        out = llm.generate(chats, 20)
        assert out[:12] == [f"Summary: ITEM {i}" for i in range(12)] and out[12] is None
        assert srv.state["max_in_flight"] <= 3
    finally:
        srv.close()


def test_openai_backend_names_a_refused_request():
    srv = _Server(lambda path, body, n: (400, {"error": "unknown model"}))
    try:
        with pytest.raises(InputError, match="HTTP 400"):
            OpenAILLM(srv.url, "nope", retries=0).generate([[{"role": "user", "content": "x"}]], 5)
    finally:
        srv.close()


def test_summarize_cli_over_a_chat_completions_server(synthetic_dir, tmp_path):
    ds = load_dataset(synthetic_dir)
    useful = {}
    for p in ds.products.values():
        clean = p["description"]
        for n in p["extra"]["noise"]:
            clean = clean.replace(n, " ")
        useful[p["title"]] = " ".join(clean.split())

    def handler(path, body, n):
        prompt = body["messages"][-1]["content"]
        if prompt.rstrip().endswith("Perspectives:"):
            return 200, _completion("Perspectives: brand; colour; material")
        title = prompt.rsplit("Title: ", 1)[1].split("\n")[0]
        return 200, _completion(f"Reasoning: attributes.\nSummary: {useful[title]}")

    srv = _Server(handler)
    try:
        res = runner.invoke(app, ["summarize", "--data", str(synthetic_dir), "--llm", f"openai:{srv.url}:test-model",
                                  "--out", str(tmp_path / "s"), "--cache", str(tmp_path / "c"), "--limit", "12",
                                  "--set", "perspective_samples=8", "--concurrency", "4"])
    finally:
        srv.close()
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "s" / "summarize.json").read_text())
    assert info["llm"] == f"test-model@{srv.url}" and info["generated"] == 12 and info["fallbacks"] == 0
    assert info["synthetic"]["noise_removed"] >= 0.8 and info["synthetic"]["attributes_kept"] == 1.0
    assert json.loads((tmp_path / "s" / "perspectives.json").read_text())["core"] == ["brand", "colour", "material"]


@pytest.mark.parametrize("args,needle", [
    (["--mode", "bogus", "--llm", "smollm2"], "bogus"),
    (["--mode", "direct"], "--llm"),
    (["--mode", "direct", "--llm", "gpt4"], "openai:URL:MODEL"),
    (["--mode", "direct", "--llm", "openai:http://127.0.0.1:8000/v1"], "openai:URL:MODEL"),
    (["--mode", "none", "--shard", "3/2"], "3/2"),
    (["--mode", "none", "--shard", "x"], "I/N"),
    (["--mode", "direct", "--llm", "openai:http://127.0.0.1:9/v1:m", "--retries", "0", "--timeout", "1"], "answered none"),
])
def test_bad_input_is_named_and_writes_nothing(synthetic_dir, tmp_path, args, needle):
    res = runner.invoke(app, ["summarize", "--data", str(synthetic_dir), "--out", str(tmp_path / "s"),
                              "--cache", str(tmp_path / "c"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not (tmp_path / "s").exists()


def test_llm_spec_keeps_colons_in_urls():
    llm = parse_llm_spec("openai:https://llm.internal:8443/v1:Qwen/Qwen2.5-14B-Instruct")
    assert isinstance(llm, OpenAILLM) and llm.url == "https://llm.internal:8443/v1" and llm.model == "Qwen/Qwen2.5-14B-Instruct"


def test_none_mode_keeps_descriptions(synthetic_dir, tmp_path):
    info = run_summarize(synthetic_dir, None, tmp_path / "s", SummarizeConfig(mode="none"), cache_dir=tmp_path / "c")
    assert list(info["words"]) == ["none"] and info["fallbacks"] == 0 and info["generated"] == 0
    ds = load_dataset(synthetic_dir)
    rows = [json.loads(x) for x in (tmp_path / "s" / "summaries.jsonl").read_text().splitlines()]
    assert all(r["summary"] == ds.products[r["product_id"]]["description"] for r in rows)


# -- the real offline LLM --------------------------------------------------------------------------

def test_smollm2_summarizes_products_for_real(synthetic_dir, tmp_path):
    res = runner.invoke(app, ["summarize", "--data", str(synthetic_dir), "--mode", "direct", "--llm", "smollm2",
                              "--out", str(tmp_path / "s"), "--cache", str(tmp_path / "c"), "--limit", "2",
                              "--set", "budget_words=20"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "s" / "summarize.json").read_text())
    assert info["generated"] == 2 and info["items_per_second"] > 0
    assert info["llm"].startswith("SmolLM2-135M-Instruct")
    replies = [json.loads(x)["reply"] for x in next((tmp_path / "c").rglob("replies.jsonl")).read_text().splitlines()]
    assert len(replies) == 2 and all(isinstance(r, str) and r.strip() for r in replies)
    rows = [json.loads(x) for x in (tmp_path / "s" / "summaries.jsonl").read_text().splitlines()]
    assert all(len(r["summary"].split()) <= 20 and r["status"] in {"ok", "unfaithful", "empty or too short",
                                                                   "repetition loop"} for r in rows)


def test_ablate_adds_a_table5_row_per_summarize_run(tmp_path):
    from training.synthetic import SyntheticConfig, generate

    data = tmp_path / "data"
    generate(SyntheticConfig(users=50, products=60, seed=11, min_core=3), data)
    ds = load_dataset(data)
    for mode in ("direct", "perspective"):
        run_summarize(data, EchoLLM(ds), tmp_path / mode, SummarizeConfig(mode=mode, perspective_samples=5),
                      cache_dir=tmp_path / "c")
    assert runner.invoke(app, ["retrieve", "--data", str(data), "--model", "bm25", "--out", str(tmp_path / "fs")]).exit_code == 0
    res = runner.invoke(app, ["ablate", "--data", str(data), "--candidates", str(tmp_path / "fs"), "--out", str(tmp_path / "ab"),
                              "--groups", "", "--summaries", str(tmp_path / "direct"), "--summaries", str(tmp_path / "perspective"),
                              "--set", "train_fraction=0.05", "--set", "test_fraction=0.3"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "ab" / "ablate.json").read_text())
    assert set(rows) == {"descriptions: none", "descriptions: direct", "descriptions: perspective"}
    assert rows["descriptions: perspective"]["WC_p_avg"] < rows["descriptions: none"]["WC_p_avg"]
    assert rows["descriptions: perspective"]["prompt_tokens"] < rows["descriptions: none"]["prompt_tokens"]
