"""Stage `train`: LoRA fine-tuning of `cfg.model` on the prepare splits (Lightning + peft).

    python -m emplifai.train                                 # one run: adapter -> models/sft/default
    python -m emplifai.train -m train.epochs=1,2,3           # sweep: MLflow parent + 3 children, 3 adapters
    python -m emplifai.train model=smollm2-135m sft_prompt=no_emotion train.sample_n=null
    dvc repro                                                # the sweep train.sweep.epochs: stages train@<k>
                                                             #   = `train.epochs=<k>` -> models/sft/epochs=<k>

Rerunning the same command resumes from `${paths.artifacts}/train/<run name>/last.ckpt` when the config,
data and training code are unchanged (an interrupted run continues, mid-epoch from its last periodic
checkpoint, `train.checkpoint_every_n_steps`; a finished one only re-exports). Under DDP
(`train.strategy=ddp train.devices=N`) every process trains; only global rank 0 opens the MLflow run and writes
metrics, plots and the adapter.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from emplifai import preflight
from emplifai.core import tracking
from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import write_metrics
from emplifai.core.paths import resolve, save_figure
from emplifai.data.taxonomy import Taxonomy
from emplifai.lm import load_causal_lm, setup_torch
from emplifai.train.adapter import adapter_size, attach_lora, save_adapter
from emplifai.train.checkpoints import AtomicCheckpointIO, checkpoint_callbacks, checkpoint_dir, fingerprint
from emplifai.train.datamodule import SFTDataModule
from emplifai.train.examples import SFTPrompt
from emplifai.train.flops import compute_dtype, matmul_peak, typical_shapes
from emplifai.train.loss_curve import write_loss_tables
from emplifai.train.module import SFTModule, enable_checkpointing
from emplifai.train.runs import (  # the run name: also how generate finds the sweep's adapters
    run_slug,
    val_loss_per_epoch,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__package__)

# The config it reads = its MLflow params (dvc.yaml params but paths); the key metric picks a sweep's best run.
CONFIG = ("seed", "device", "threads", "taxonomy", "model", "sft_prompt", "train")
KEY_METRIC = ("train/best_val_loss", "min")
RANK_VARS = ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_rank_zero() -> bool:
    """Is this the process that logs, before any Trainer exists? Lightning's DDP launcher starts ranks 1..N-1
    as `python -m emplifai.train <the same overrides>` with LOCAL_RANK (and NODE_RANK) set; torchrun and SLURM
    set RANK / SLURM_PROCID. Rank 0 has none of them, or 0."""
    return all(os.environ.get(k, "0") == "0" for k in RANK_VARS)


def world_size(cfg: DictConfig, device: str) -> int:
    """Processes the Trainer trains in (train.devices, as Lightning counts them on this accelerator)."""
    devices = cfg.train.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        import torch

        return torch.cuda.device_count() if device.startswith("cuda") else 1
    return len(devices) if not isinstance(devices, int) else devices


def check_launch(cfg: DictConfig, device: str) -> None:
    """A Hydra multirun runs its jobs one after another in one process; after the first job's DDP fit that
    process keeps LOCAL_RANK in its environment, so Lightning takes the next job's processes to be started by
    someone else and waits for them forever. Say so instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if world_size(cfg, device) > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN \
            and "BasicLauncher" in str(HydraConfig.get().launcher.get("_target_", "")):
        raise UserError(f"train.devices={cfg.train.devices} (DDP) in a Hydra multirun (-m): Lightning starts "
                        "each job's processes once per process, so run the jobs one by one (`dvc repro` runs "
                        "train@<k> as separate commands) or with hydra/launcher=slurm_gpu")


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


def make_trainer(cfg: DictConfig, device: str, callbacks: list[pl.Callback], logger, n_batches: int,
                 has_val: bool) -> pl.Trainer:
    """The Trainer of cfg.train (strategy, devices, precision, epochs/steps, validation every N steps capped at
    the `n_batches` of an epoch); checkpoints are written atomically (`AtomicCheckpointIO`)."""
    t = cfg.train
    every = t.get("val_every_n_steps")
    plugins = [] if str(t.strategy).startswith("deepspeed") else [AtomicCheckpointIO()]  # DeepSpeed saves its own
    return pl.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=t.devices, strategy=t.strategy,
        precision=t.precision, max_epochs=int(t.epochs), max_steps=int(t.max_steps or -1),
        accumulate_grad_batches=int(t.accumulate_grad_batches), gradient_clip_val=t.grad_clip,
        val_check_interval=min(int(every), n_batches) if every else 1.0, limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0, log_every_n_steps=1, logger=logger, callbacks=callbacks, plugins=plugins,
        use_distributed_sampler=False, enable_model_summary=False,
        default_root_dir=next((c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint)), None))


def run(cfg: DictConfig) -> dict:
    preflight.check(cfg, "train")
    if not launched_as_rank_zero():  # a DDP worker: trains, logs nothing (rank 0 holds the MLflow run)
        return work(cfg, tracking.StageRun(None, None))
    with tracking.stage_run(cfg, "train", config=CONFIG, key_metric=KEY_METRIC) as run_:  # spans the work
        return work(cfg, run_)


def work(cfg: DictConfig, run_: tracking.StageRun) -> dict:
    device = setup_torch(cfg)
    check_launch(cfg, device)
    rank_zero = launched_as_rank_zero()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    slug = run_slug(cfg)
    prepare_dir = resolve(cfg.paths.artifacts) / "prepare"
    ckpt_dir = resolve(cfg.paths.artifacts) / "train" / slug
    out_dir = resolve(cfg.paths.models) / "sft" / slug
    reports = resolve(cfg.paths.reports) / "train" / slug
    for split in ("train", "val"):
        run_.log_split(split, prepare_dir / f"{split}.parquet")
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
    resume = checkpoint_dir(ckpt_dir, fp, bool(cfg.train.resume), manage=rank_zero)
    tags = {"model": cfg.model.name, "prompt": cfg.sft_prompt.name, "adapter": slug, "fingerprint": fp,
            "resumed_from": str(resume) if resume else "(fresh)"}
    run_.set_tags(tags)
    logger = False
    if run_.run_id:
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=cfg.mlflow.experiment, run_id=run_.run_id,
                              tracking_uri=tracking.tracking_uri(cfg))
    callbacks = checkpoint_callbacks(cfg, ckpt_dir, bool(dm.val))
    ckpt = callbacks[0]
    trainer = make_trainer(cfg, device, callbacks, logger, dm.n_train_batches(world_size(cfg, device)),
                           bool(dm.val))
    n_batches = dm.n_train_batches(trainer.world_size)  # per process and epoch
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        log.info("train: rank %d done (%d steps); rank 0 writes the adapter and metrics", trainer.global_rank,
                 trainer.global_step)
        return {}
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
    for data in write_loss_tables(module.history, n_batches, cfg.train.accumulate_grad_batches, reports):
        run_.log_artifact(data, "train")  # the same curves as plot data: {train,val}_loss.csv
    write_metrics(reports / "metrics.json", metrics, reasons, run_.file_tags())
    run_.log_artifact(out_dir, f"adapter/{slug}")
    run_.log_artifact(plot, "train")
    run_.log_artifact(reports / "metrics.json", "train")
    log.info(f"train: {trainer.global_step} steps, best val loss {meta['best_val_loss']}, adapter → {out_dir}")
    return metrics


if __name__ == "__main__":
    stage_main("train", run)
