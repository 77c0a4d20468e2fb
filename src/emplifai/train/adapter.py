"""LoRA adapters: attach to a base model, save with our metadata, load back for generation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from emplifai.core.errors import UserError
from emplifai.core.paths import atomic_dir

META = "emplifai_adapter.json"


class AdapterError(UserError):
    pass


class BitsDropout(torch.nn.Dropout):
    """LoRA's input dropout with the keep mask drawn from 15 random bits per element (four per `random_()`
    int64), not torch's CPU Bernoulli sampler, which took ~10% of an SFT step on 2 cores (one mask per LoRA
    module, drawn again in each checkpoint recompute): ~2.4x faster per mask. The same inverted dropout in
    expectation (p rounded to 1/32768, kept values scaled by 1/keep rate); drawn from torch's generator, so
    a checkpoint recompute, which restores its state, draws the same mask. Other devices: `F.dropout`."""

    BITS = 1 << 15

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        drop = round(self.p * self.BITS)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
        keep = ((words & (self.BITS - 1)) >= drop).to(x.dtype).mul_(self.BITS / (self.BITS - drop))
        return x * keep


def attach_lora(model: Any, lora_cfg: Mapping[str, Any], gradient_checkpointing: bool = False) -> Any:
    """A peft model with only the LoRA weights trainable (its dropout: `BitsDropout`)."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=int(lora_cfg["r"]), lora_alpha=int(lora_cfg["alpha"]),
                        lora_dropout=float(lora_cfg["dropout"]),
                        target_modules=list(lora_cfg["target_modules"]), task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise AdapterError(f"LoRA target modules {list(lora_cfg['target_modules'])} do not match the model "
                           f"(train.lora.target_modules / model.lora_target_modules): {err}") from err
    for module in peft_model.modules():
        for name, drop in getattr(module, "lora_dropout", {}).items():
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                module.lora_dropout[name] = BitsDropout(drop.p)
    return peft_model


def save_adapter(peft_model: Any, out_dir: Path, meta: Mapping[str, Any]) -> Path:
    """Write adapter weights + adapter_config.json + our metadata to a temp folder, then swap it in."""
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(str(tmp))
        (tmp / META).write_text(json.dumps(dict(meta), ensure_ascii=False, indent=2), encoding="utf-8")
    return Path(out_dir)


def adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / META
    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise AdapterError(f"no adapter at {adapter_dir} (adapter_config.json missing): train one first with "
                           "`python -m emplifai.train` (or `dvc repro train`), or fix generate.adapters")
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def load_adapter(base_model: Any, adapter_dir: Path, model_name: str) -> Any:
    """PeftModel over `base_model`; refuses an adapter trained on another base model."""
    from peft import PeftModel

    meta = adapter_meta(adapter_dir)
    if meta.get("model") and meta["model"] != model_name:
        raise AdapterError(f"adapter {adapter_dir} was trained on model {meta['model']!r}, not {model_name!r}; "
                           f"run with model={meta['model']}")
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval()


def adapter_size(adapter_dir: Path) -> tuple[float, int]:
    """(MB on disk of the weights, number of adapter parameters)."""
    from safetensors import safe_open

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        n = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return weights.stat().st_size / 2**20, int(n)
