"""GGUF file -> standard transformers folder (safetensors + tokenizer + generation config).

Why: transformers can read a GGUF file directly, but it dequantizes every tensor in numpy on each load
(Gemma-3-270M: ~80 s). Doing that once and saving plain safetensors makes every later load a few
seconds, and the folder is an ordinary `from_pretrained` target (peft, Lightning, vLLM all accept it).

The GGUF-loaded model carries a `quantization_config` that `save_pretrained` refuses to serialize, so
its (already dequantized) state dict is copied into a clean model built `from_config`.
Storage dtype defaults to bfloat16: both upstream checkpoints were trained and released in bf16, the
4-bit source holds far less information than bf16 keeps, and it halves disk (Gemma: 0.54 vs 1.07 GB).
Callers choose the *compute* dtype at load time (see `emplifai.lm.load`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _drop_load_kwargs(tok_config: Path) -> None:
    """`save_pretrained` records how the tokenizer was loaded (local_files_only...); that is not config."""
    cfg = json.loads(tok_config.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "gguf_file"):
        cfg.pop(key, None)
    tok_config.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, storage_dtype: str = "bfloat16",
               expected_sha256: str | None = None) -> dict[str, float]:
    """Convert one GGUF file into an HF folder at `out_dir` (which must not exist yet).

    Returns timings: `dequant_s` (GGUF read + dequantize), `save_s`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if expected_sha256 is not None:
        actual = sha256_file(gguf_path)
        if actual != expected_sha256:
            raise ValueError(f"{gguf_path}: sha256 {actual} != expected {expected_sha256}")
    t0 = time.perf_counter()
    # transformers wants the folder + file name; no hub access happens for a local folder.
    src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                               dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    dequant_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = storage_dtype
    clean = AutoModelForCausalLM.from_config(config, dtype=STORAGE_DTYPES[storage_dtype])
    missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
    # Tied output embeddings have no tensor of their own in GGUF; anything else missing is a bug.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.get_text_config().tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    clean.generation_config = src.generation_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out_dir.mkdir(parents=True)
    clean.save_pretrained(out_dir)
    tok.model_max_length = config.get_text_config().max_position_embeddings
    tok.save_pretrained(out_dir)
    _drop_load_kwargs(out_dir / "tokenizer_config.json")
    del src, clean
    return {"dequant_s": dequant_s, "save_s": time.perf_counter() - t0}

