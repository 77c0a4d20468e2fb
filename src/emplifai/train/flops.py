"""Model-FLOPs utilisation of LoRA SFT: useful matmul FLOPs of a step, and the matmul peak they are measured by.

Useful FLOPs (what an ideal implementation must do; recomputation by gradient checkpointing not counted,
padding not counted, elementwise ops not counted) for a decoder-only transformer with frozen weights and
LoRA adapters, on the non-pad tokens of each sequence:
- forward of every linear layer, and attention scores/values (QK^T, AV) over the causal (sliding-window)
  key range of each query;
- backward of the frozen body: activation gradients only (one matmul per linear, two per attention product),
  skipped where nothing trainable lies below (layer 0's q/k/v inputs come from the frozen embedding);
- LoRA: forward A and B, their weight gradients and the activation gradient through them;
- the LM head on target positions only: logits plus the hidden-state gradient (the head weight is frozen).
The peak is a timed GEMM of the model's own shapes in the same process, thread setting and dtype, so
MFU = useful FLOPs / second / peak says how far the step is from this machine's matmul speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

ATTN_IN = ("q_proj", "k_proj", "v_proj")  # read the residual stream (after the input norm)
MLP_IN = ("gate_proj", "up_proj")


@dataclass(frozen=True)
class Arch:
    """The matmul shapes of a Llama/Gemma-style decoder (gated MLP, grouped-query attention)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    windows: tuple[int | None, ...]  # per layer: sliding window (keys per query) or None (full causal)

    @classmethod
    def from_config(cls, config: Any) -> Arch:
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        layers, heads = int(get("num_hidden_layers")), int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        types = get("layer_types") or ["full_attention"] * layers
        window = get("sliding_window")
        return cls(hidden=hidden, intermediate=int(get("intermediate_size")), layers=layers, heads=heads,
                   kv_heads=int(get("num_key_value_heads") or heads),
                   head_dim=int(get("head_dim") or hidden // heads), vocab=int(get("vocab_size")),
                   windows=tuple(int(window) if t == "sliding_attention" and window else None for t in types))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of one layer, in execution order."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        d, f = self.hidden, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def attention_pairs(length: int, window: int | None, causal: bool = True) -> int:
    """(query, key) pairs of one sequence: causal = each query sees itself and earlier keys (at most
    `window`); causal=False = the full square (what a masked dense kernel computes)."""
    if not causal:
        return length * length
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def step_flops(arch: Arch, lengths: Sequence[int], n_target: int, lora_r: int = 0,
               lora_modules: Iterable[str] = (), backward: bool = True, causal: bool = True) -> dict[str, float]:
    """Useful FLOPs of one step, by part, and `total`. `lengths`: non-pad tokens per sequence; `n_target`:
    positions that go through the LM head. `causal=False` counts full-square attention (to compare with a
    dense-kernel FLOP counter)."""
    lora = set(lora_modules)
    tokens = float(sum(lengths))
    shapes = arch.linears()
    if unknown := lora - set(shapes):
        raise ValueError(f"LoRA modules {sorted(unknown)} are not linears of this architecture ({list(shapes)})")
    per_pair = 4 * arch.heads * arch.head_dim  # QK^T and AV: 2*head_dim each, per head
    out = dict.fromkeys(("body_fwd", "attn_fwd", "body_bwd", "attn_bwd", "lora_fwd", "lora_bwd", "head_fwd",
                         "head_bwd"), 0.0)
    grad = False  # does the residual stream below this point carry a gradient?
    for window in arch.windows:
        out["attn_fwd"] += per_pair * sum(attention_pairs(n, window, causal) for n in lengths)
        for group in (ATTN_IN, ("o_proj",), MLP_IN, ("down_proj",)):
            if group == ("o_proj",) and grad:
                out["attn_bwd"] += 2 * per_pair * sum(attention_pairs(n, window, causal) for n in lengths)
            for name in group:
                k, n = shapes[name]
                out["body_fwd"] += 2 * tokens * k * n
                out["body_bwd"] += 2 * tokens * k * n if grad else 0.0
                if name in lora:
                    out["lora_fwd"] += 2 * tokens * lora_r * (k + n)
                    # dB, grad into the rank-r space, dA; + grad to the input when it is needed
                    out["lora_bwd"] += 2 * tokens * lora_r * (2 * n + k + (k if grad else 0))
            grad = grad or any(name in lora for name in group)
    out["head_fwd"] = 2.0 * n_target * arch.hidden * arch.vocab
    out["head_bwd"] = out["head_fwd"] if grad or lora else 0.0
    if not backward:
        out = {k: (0.0 if k.endswith("_bwd") else v) for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def typical_shapes(arch: Arch, tokens: int, head_rows: int = 128, head_cols: int = 32768) -> list[tuple[int, ...]]:
    """(m, k, n) of the step's biggest GEMMs: the MLP and attention projections over `tokens` rows, and an
    LM-head chunk (its vocabulary capped at `head_cols`: same kernel, without allocating a second head)."""
    shapes = arch.linears()
    return [(tokens, *shapes["gate_proj"]), (tokens, *shapes["down_proj"]), (tokens, *shapes["q_proj"]),
            (tokens, *shapes["o_proj"]), (head_rows, arch.hidden, min(arch.vocab, head_cols))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(shapes: Sequence[tuple[int, ...]], dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", seconds: float = 0.25) -> dict[str, Any]:
    """FLOP/s of `x @ weight.T` (the layout of nn.Linear) for each (m, k, n), best of repeated timings of
    about `seconds` per shape; `peak` = the fastest shape: what this process reaches on the model's matmuls
    in its current thread setting."""
    device = torch.device(device)
    rates: dict[str, float] = {}
    for m, k, n in shapes:
        x = torch.randn(m, k, dtype=dtype, device=device)
        w = torch.randn(n, k, dtype=dtype, device=device)
        out = x @ w.t()  # warm-up: allocations, kernel choice
        _sync(device)
        reps, best, spent = 1, float("inf"), 0.0
        while spent < seconds:
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(x, w.t(), out=out)
            _sync(device)
            dt = time.perf_counter() - t0
            best, spent = min(best, dt / reps), spent + dt
            reps = max(reps, min(1000, int(0.02 / max(best, 1e-9))))  # >= 20 ms per timing: GPU launches
        rates[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
        del x, w, out
    return {"peak": max(rates.values()), "by_shape": rates, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "device": str(device)}


def compute_dtype(precision: str, param_dtype: torch.dtype) -> torch.dtype:
    """The matmul dtype of a Lightning `precision` ("32", "bf16-mixed", "16-mixed", ...)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return param_dtype


class StepFlops:
    """Useful FLOPs of a LoRA training step on a padded batch, for one model and LoRA config."""

    def __init__(self, arch: Arch, lora_r: int, lora_modules: Iterable[str]) -> None:
        self.arch, self.lora_r, self.lora_modules = arch, int(lora_r), list(lora_modules)
        step_flops(arch, [1], 1, self.lora_r, self.lora_modules)  # unknown module names fail here

    @classmethod
    def of(cls, config: Any, lora_cfg: Mapping[str, Any]) -> tuple[StepFlops | None, str]:
        """(the FLOP model, "") or (None, why not): an architecture the model does not describe."""
        try:
            return cls(Arch.from_config(config), int(lora_cfg["r"]), list(lora_cfg["target_modules"])), ""
        except (TypeError, ValueError, KeyError) as err:
            return None, f"no FLOP model for this architecture / LoRA targets: {err}"

    def __call__(self, attention_mask: torch.Tensor, n_target: int) -> float:
        lengths = [int(x) for x in attention_mask.sum(dim=1).tolist()]
        return step_flops(self.arch, lengths, n_target, self.lora_r, self.lora_modules)["total"]
