"""Training under faults: a kill during a checkpoint save, an unreadable checkpoint, a SIGKILL mid-epoch, DDP.

Real models (SmolLM2-135M) and the sample's splits; a test double only injects a fault (a save cut short).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_cfg
from emplifai.train.checkpoints import AtomicCheckpointIO, checkpoint_dir, position
from emplifai.train.datamodule import LengthBucketSampler, ResumableLoader

PREPARED = ROOT / "artifacts" / "prepare"
needs_smol = pytest.mark.skipif(not (ROOT / "models/base/smollm2-135m/config.json").exists()
                                or not (PREPARED / "train.parquet").exists(),
                                reason="run `dvc repro models prepare` first")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
       "PYTHONUNBUFFERED": "1"}


def checkpoint(step: int, size: int = 1000) -> dict:
    """What Lightning's checkpoint holds, in the shape `position` checks (a real one is made by the slow tests)."""
    return {"state_dict": {"w": torch.arange(size, dtype=torch.float32) + step}, "loops": {},
            "optimizer_states": [], "global_step": step, "epoch": 0}


def test_a_save_cut_short_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from emplifai.train import checkpoints

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1), path)
    real_save = torch.save

    def save_half_then_die(obj, f):  # the fault: the process dies half-way through writing
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(checkpoints.torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(checkpoint(2), path)
    assert position(path) == "step 1, epoch 0"  # the previous checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


SAVER = """
import sys, torch
from emplifai.train.checkpoints import AtomicCheckpointIO
io, step, w = AtomicCheckpointIO(), 0, torch.ones(25_000_000)
while True:  # nothing but saves: a kill almost always lands inside one
    step += 1
    io.save_checkpoint({"state_dict": {"w": w}, "loops": {}, "optimizer_states": [], "global_step": step,
                        "epoch": 0}, sys.argv[1])
"""


def test_sigkill_during_a_save_never_leaves_a_broken_checkpoint(tmp_path):
    """A real SIGKILL of a process that saves 100 MB checkpoints back to back: last.ckpt is always a whole
    checkpoint, and the next run's checkpoint_dir removes the killed save's temp file."""
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "fingerprint.txt").write_text("fp")
    last = ckpt_dir / "last.ckpt"
    for attempt in range(3):  # until a kill lands mid-save (a temp file is left): almost always the first
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(last)], env=ENV)
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.15 + 0.1 * attempt)  # into the next save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert re.fullmatch(r"step \d+, epoch 0", position(last))
        if list(ckpt_dir.glob(".*.tmp")):
            break
    else:
        pytest.fail("no kill landed inside a save in 3 tries")
    assert checkpoint_dir(ckpt_dir, "fp", resume=True) == last
    assert not list(ckpt_dir.glob(".*.tmp"))


def test_an_unreadable_checkpoint_is_not_resumed(tmp_path, caplog):
    ckpt_dir = tmp_path / "ckpt"
    assert checkpoint_dir(ckpt_dir, "fp1", resume=True) is None  # fresh folder, stamped
    last = ckpt_dir / "last.ckpt"
    torch.save(checkpoint(3), last)
    with caplog.at_level(logging.INFO, logger="emplifai.train"):
        assert checkpoint_dir(ckpt_dir, "fp1", resume=True) == last
        assert checkpoint_dir(ckpt_dir, "fp1", resume=False) is None  # train.resume=false
    assert f"resuming {last} (step 3, epoch 0)" in caplog.text
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a checkpoint cut short (older writers)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="emplifai.train"):
        assert checkpoint_dir(ckpt_dir, "fp1", resume=True, manage=False) is None  # a DDP rank > 0 only looks
        assert last.exists()
        assert checkpoint_dir(ckpt_dir, "fp1", resume=True) is None
    assert not last.exists() and "is unreadable" in caplog.text and "starting over" in caplog.text
    torch.save({"state_dict": {}}, last)  # a file that is no training checkpoint
    with pytest.raises(ValueError, match="no global_step, loops, optimizer_states"):
        position(last)
    assert checkpoint_dir(ckpt_dir, "fp2", resume=True) is None and not last.exists()  # other config: emptied
    assert (ckpt_dir / "fingerprint.txt").read_text().strip() == "fp2"


def test_the_train_loader_resumes_after_the_batches_done():
    lengths = [int(x) for x in torch.randint(20, 200, (37,), generator=torch.Generator().manual_seed(2))]
    sampler = LengthBucketSampler(lengths, 4, seed=5, pool_batches=2)
    full = list(sampler)
    done = {"n": 3}
    loader = ResumableLoader(list(range(37)), batch_sampler=sampler, progress=lambda: done["n"])
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_done": 3}
    loader.load_state_dict(state)
    assert len(sampler) == len(full)  # Lightning counts the epoch's batches from the restored ones on
    assert list(sampler) == full[3:]  # the resumed epoch: the rest of it, in the same order
    assert list(sampler) == full  # the next one: all of it
    sampler.resume_at(1, 3)  # a state of another epoch: nothing to skip in this one
    assert list(sampler) == full


def tiny(tmp_path: Path, *more: str) -> list[str]:
    """A run that takes seconds: 8 examples of 40 tokens, batches of 2, SmolLM2; everything under tmp_path."""
    (tmp_path / "artifacts").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").mkdir(exist_ok=True)
    if not (tmp_path / "artifacts" / "prepare").exists():
        (tmp_path / "artifacts" / "prepare").symlink_to(PREPARED)
        (tmp_path / "models" / "base").symlink_to(ROOT / "models" / "base")
    return [f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports",
            f"paths.models={tmp_path}/models", f"paths.log_dir={tmp_path}/logs",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "model=smollm2-135m", "sft_prompt=patient_only",
            "train.sample_n=8", "train.val_sample_n=2", "train.batch_size=2", "train.max_length=40", "train.lr=1e-3", "train.run_name=tiny", *more]


def train_cmd(tmp_path: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "emplifai.train", *tiny(tmp_path, *more), f"hydra.run.dir={tmp_path}/hydra"]


def mlflow_runs(tmp_path: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("emplifai").experiment_id],
                                      order_by=["attributes.start_time ASC"])


@pytest.mark.slow
@needs_smol
def test_sigkill_mid_epoch_resumes_where_it_stopped(tmp_path):
    """4 batches an epoch, 2 epochs, a periodic checkpoint every step. SIGKILL right after the first one
    appears; the rerun resumes there (mid-epoch) and ends with the uninterrupted run's steps and val losses,
    bit for bit: the loader skips the batches done and the random state (LoRA dropout) is put back."""
    args = ["threads=2", "train.epochs=2", "train.checkpoint_every_n_steps=1"]
    ref = subprocess.run(train_cmd(tmp_path / "ref", *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    killed = tmp_path / "killed"
    last = killed / "artifacts" / "train" / "tiny" / "last.ckpt"
    proc = subprocess.Popen(train_cmd(killed, *args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    where = position(last)
    step = int(re.match(r"step (\d+), epoch 0", where).group(1))
    assert 1 <= step < 4  # inside the first epoch

    again = subprocess.run(train_cmd(killed, *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"train: resuming {last} ({where})" in again.stdout
    metrics = [json.loads((d / "reports/train/tiny/metrics.json").read_text())["metrics"]
               for d in (tmp_path / "ref", killed)]
    assert metrics[1]["train/steps"] == metrics[0]["train/steps"] == 8
    for key in ("train/val_loss_epoch_1", "train/val_loss_epoch_2", "train/best_val_loss"):
        assert metrics[1][key] == metrics[0][key], key
    client, runs = mlflow_runs(killed)
    assert [r.info.status for r in runs] == ["RUNNING", "FINISHED"]  # SIGKILL: the first run never ended
    assert runs[1].data.tags["resumed_from"] == str(last)
    logged = sorted(m.step for m in client.get_metric_history(runs[1].info.run_id, "train/loss"))
    assert logged == list(range(step, 8))  # the rerun trained the steps left, each once


@pytest.mark.slow
@needs_smol
def test_ddp_on_cpu_trains_in_every_rank_and_logs_from_rank_zero(tmp_path):
    """`train.strategy=ddp train.devices=2` on CPU (gloo): Lightning re-runs `python -m emplifai.train` with
    LOCAL_RANK=1 for the second process. Both train; only rank 0 has an MLflow run, metrics and the adapter.
    lr=0 keeps the base model, so the val loss, each rank validating half of the examples, must be the base
    model's loss over all of them."""
    from emplifai.data.taxonomy import Taxonomy
    from emplifai.lm import load_causal_lm
    from emplifai.train.datamodule import SFTDataModule, collate
    from emplifai.train.examples import SFTPrompt
    from emplifai.train.module import target_loss

    args = ["threads=1", "train.strategy=ddp", "train.devices=2", "train.lr=0", "train.val_sample_n=3",
            "train.checkpoint_every_n_steps=1"]  # a periodic save after step 1: every rank calls it, rank 0 writes
    res = subprocess.run(train_cmd(tmp_path, *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert "train: rank 1 done (2 steps)" in out  # 8 examples, batches of 2, 2 processes: 2 steps each
    assert out.count("train: 2 steps, best val loss") == 1  # rank 0's summary, once
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [p.name for p in (tmp_path / "models" / "sft").iterdir()] == ["tiny"]
    assert [p.name for p in (tmp_path / "reports" / "train").iterdir()] == ["tiny"]
    metrics = json.loads((tmp_path / "reports/train/tiny/metrics.json").read_text())
    assert metrics["tags"]["mlflow_run_id"] == runs[0].info.run_id and metrics["metrics"]["train/steps"] == 2
    assert runs[0].data.metrics["train/steps"] == 2
    assert position(tmp_path / "artifacts/train/tiny/last.ckpt") == "step 2, epoch 0"

    cfg = compose_cfg(tiny(tmp_path, *args))
    model, tok = load_causal_lm(cfg.model)
    builder = SFTPrompt.from_config(cfg.sft_prompt, str(cfg.model.chat_format), tok,
                                    Taxonomy.from_config(cfg.taxonomy))
    dm = SFTDataModule(PREPARED, builder, cfg.train, int(cfg.seed))
    dm.setup()
    total = n = 0
    with torch.no_grad():
        for example in dm.val:
            loss, k = target_loss(model.eval(), collate([example], tok.pad_token_id))
            total, n = total + float(loss) * k, n + k
    assert metrics["metrics"]["train/best_val_loss"] == pytest.approx(total / n, abs=1e-4)


def test_ddp_in_a_multirun_is_refused_not_hung(tmp_path):
    """Hydra's basic launcher runs a multirun's jobs in one process; after a DDP job LOCAL_RANK stays set there
    and Lightning would wait forever for the next job's processes. The stage says so before loading a model."""
    res = subprocess.run([sys.executable, "-m", "emplifai.train", "-m", "train.epochs=1,2", *tiny(tmp_path),
                          "train.strategy=ddp", "train.devices=2", "mlflow.enabled=false",
                          f"hydra.sweep.dir={tmp_path}/sweep"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "in a Hydra multirun (-m)" in res.stdout + res.stderr and "Loading weights" not in res.stderr
