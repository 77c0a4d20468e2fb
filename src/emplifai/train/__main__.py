"""Stage `train`: LoRA fine-tuning of `cfg.model` on the prepare splits (Lightning + peft).

    python -m emplifai.train                                 # one run: adapter -> models/sft/default
    python -m emplifai.train -m train.epochs=1,2,3           # sweep: MLflow parent + 3 children, 3 adapters
    python -m emplifai.train model=smollm2-135m sft_prompt=no_emotion train.sample_n=null
    dvc repro                                                # the sweep train.sweep.epochs: stages train@<k>
                                                             #   = `train.epochs=<k>` -> models/sft/epochs=<k>

Rerunning the same command resumes from `${paths.artifacts}/train/<run name>/last.ckpt` when the config,
data and training code are unchanged (an interrupted run continues; a finished one only re-exports).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.metrics_file import write_metrics
from emplifai.core.paths import resolve, save_figure, write_text
from emplifai.data.taxonomy import Taxonomy
from emplifai.lm import load_causal_lm, setup_torch
from emplifai.train.adapter import adapter_size, attach_lora, save_adapter
from emplifai.train.datamodule import SFTDataModule
from emplifai.train.examples import SFTPrompt
from emplifai.train.flops import compute_dtype, matmul_peak, typical_shapes
from emplifai.train.module import SFTModule, enable_checkpointing
from emplifai.train.runs import (  # the run name: also how generate finds the sweep's adapters
    run_slug,
    val_loss_per_epoch,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CODE = sorted(Path(__file__).parent.glob("*.py"))


def fingerprint(cfg: DictConfig, prepare_dir: Path) -> str:
    """What must match for a checkpoint to be resumed: training config, model, prompt, data and code."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("train", "model", "sft_prompt")}
    keys["train"] = {k: v for k, v in keys["train"].items()
                     if k not in ("resume", "run_name", "num_workers", "sweep")}  # sweep: which runs, not how
    h = hashlib.sha256(json.dumps([keys, cfg.seed], sort_keys=True, default=str).encode())
    for f in [prepare_dir / "train.parquet", prepare_dir / "val.parquet", *CODE]:
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()[:16]


def checkpoint_dir(ckpt_dir: Path, fp: str, resume: bool) -> Path | None:
    """last.ckpt to resume from, or None; a folder from another config/data/code is emptied."""
    stamp = ckpt_dir / "fingerprint.txt"
    same = stamp.exists() and stamp.read_text().strip() == fp
    if ckpt_dir.exists() and not same:
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_text(stamp, fp)
    last = ckpt_dir / "last.ckpt"
    return last if resume and same and last.exists() else None


def peak_memory_mb(device: str) -> tuple[float, str]:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def plot_losses(history: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("train/loss", "-"), ("val/loss", "o-")):
        if history.get(name):
            steps, values = zip(*history[name], strict=True)
            ax.plot(steps, values, style, label=name)
    ax.set(title="LoRA SFT loss (target tokens)", xlabel="optimizer step", ylabel="cross-entropy")
    ax.legend()
    return save_figure(fig, path)


def make_trainer(cfg: DictConfig, device: str, ckpt_dir: Path, logger, n_batches: int, has_val: bool):
    t = cfg.train
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", save_last=True, save_top_k=1,
                                        monitor="val/loss" if has_val else None, mode="min")
    every = t.get("val_every_n_steps")
    trainer = pl.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=t.devices, strategy=t.strategy,
        precision=t.precision, max_epochs=int(t.epochs), max_steps=int(t.max_steps or -1),
        accumulate_grad_batches=int(t.accumulate_grad_batches), gradient_clip_val=t.grad_clip,
        val_check_interval=min(int(every), n_batches) if every else 1.0, limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0, log_every_n_steps=1, logger=logger, callbacks=[ckpt],
        use_distributed_sampler=False, default_root_dir=str(ckpt_dir), enable_model_summary=False)
    return trainer, ckpt


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "train")
    device = setup_torch(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    slug = run_slug(cfg)
    prepare_dir = resolve(cfg.paths.artifacts) / "prepare"
    ckpt_dir = resolve(cfg.paths.artifacts) / "train" / slug
    out_dir = resolve(cfg.paths.models) / "sft" / slug
    reports = resolve(cfg.paths.reports) / "train" / slug
    model, tok = load_causal_lm(cfg.model, device)
    builder = SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok,
                                        Taxonomy.from_config(cfg.taxonomy))
    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    dm = SFTDataModule(prepare_dir, builder, cfg.train, int(cfg.seed))
    dm.setup()
    peft_model = attach_lora(model, train_cfg["lora"], bool(cfg.train.gradient_checkpointing))
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(peft_model, str(cfg.train.checkpoint_policy), int(train_cfg["lora"]["r"]))
    peft_model.train()
    module = SFTModule(peft_model, train_cfg)
    if module.flop_model is not None:  # MFU's denominator: this process, threads and dtype, the model's GEMMs
        tokens = int(cfg.train.batch_size) * sum(len(e.input_ids) for e in dm.train) // len(dm.train)
        module.peak_flops = matmul_peak(typical_shapes(module.flop_model.arch, tokens), compute_dtype(
            cfg.train.precision, next(model.parameters()).dtype), device)["peak"]
    fp = fingerprint(cfg, prepare_dir)
    resume = checkpoint_dir(ckpt_dir, fp, bool(cfg.train.resume))
    tags = {"model": cfg.model.name, "prompt": cfg.sft_prompt.name, "adapter": slug, "fingerprint": fp,
            "resumed_from": str(resume) if resume else "(fresh)"}
    with tracking.stage_run(cfg, "train", tags) as run_:
        logger = False
        if run_.run_id:
            from lightning.pytorch.loggers import MLFlowLogger

            logger = MLFlowLogger(experiment_name=cfg.mlflow.experiment, run_id=run_.run_id,
                                  tracking_uri=tracking.tracking_uri(cfg))
        n_batches = len(dm.train_dataloader())
        trainer, ckpt = make_trainer(cfg, device, ckpt_dir, logger, n_batches, bool(dm.val))
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
        seconds = time.perf_counter() - start
        best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
        if best and best.exists():
            import torch

            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"],
                                   strict=False)
        val = [v for _, v in module.history["val/loss"]]
        meta = {"model": cfg.model.name, "model_path": str(cfg.model.path), "prompt": cfg.sft_prompt.name,
                "prompt_config": OmegaConf.to_container(cfg.sft_prompt, resolve=True), "train": train_cfg,
                "seed": int(cfg.seed), "global_step": int(trainer.global_step), "fingerprint": fp,
                "best_val_loss": min(val) if val else None, "checkpoint": str(best) if best else None}
        save_adapter(peft_model, out_dir, meta)
        size_mb, n_params = adapter_size(out_dir)
        mem, mem_kind = peak_memory_mb(device)
        tps = module.train_tokens / module.train_seconds if module.train_seconds else None
        useful = module.train_flops / module.train_seconds if module.train_seconds and module.flop_model else None
        metrics = {"train/best_val_loss": min(val) if val else None,
                   "train/final_train_loss": module.history["train/loss"][-1][1] if module.history["train/loss"]
                   else None,
                   "train/mean_target_tokens_per_s": tps, "train/peak_mem_mb": mem, "train/adapter_mb": size_mb,
                   "train/adapter_params": n_params, "train/steps": trainer.global_step,
                   "train/examples": len(dm.train), "train/fit_seconds": seconds,
                   "train/epochs": int(cfg.train.epochs),  # + train/val_loss_epoch_<k>, for the report
                   "train/mfu": useful / module.peak_flops if useful and module.peak_flops else None,
                   "train/useful_gflop_per_s": useful / 1e9 if useful else None,
                   "train/matmul_peak_gflop_per_s": module.peak_flops / 1e9 if module.peak_flops else None,
                   "train/padding": 1 - module.real_tokens / module.batch_cells if module.batch_cells else None,
                   **val_loss_per_epoch(module.history["val/loss"], n_batches, cfg.train.accumulate_grad_batches)}
        reasons = {"train/best_val_loss": "no validation examples", "train/final_train_loss":
                   "no training step ran in this invocation (resumed a finished run)",
                   "train/mean_target_tokens_per_s": "no training step ran in this invocation"}
        for key in ("train/mfu", "train/useful_gflop_per_s", "train/matmul_peak_gflop_per_s", "train/padding"):
            reasons[key] = (key != "train/padding" and module.flops_reason) or "no training step ran in this invocation"
        run_.log_metrics(metrics, reasons=reasons)
        run_.set_tags({"peak_mem_kind": mem_kind, "adapter_dir": str(out_dir)})
        plot = plot_losses(module.history, reports / "loss.png")
        write_metrics(reports / "metrics.json", metrics, reasons)
        run_.log_artifact(out_dir, f"adapter/{slug}")
        run_.log_artifact(plot, "train")
        run_.log_artifact(reports / "metrics.json", "train")
    print(f"train: {trainer.global_step} steps, best val loss {meta['best_val_loss']}, adapter → {out_dir}")
    return metrics


if __name__ == "__main__":
    stage_main("train", run)
