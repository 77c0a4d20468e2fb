"""Scale-out is configuration the code already honours: each preset composes and builds the real objects the
stages run with (the Trainer of `train`, the OpenAI-compatible client of `emotion` and `judge`)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from conftest import CONF, compose_cfg
from emplifai.core.tracking import tracking_uri
from emplifai.train.__main__ import make_trainer, world_size
from emplifai.train.checkpoints import AtomicCheckpointIO, PeriodicCheckpoint, checkpoint_callbacks


def test_mlflow_server_preset_uses_env_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    cfg = compose_cfg(["mlflow=server"])
    assert tracking_uri(cfg) == "http://mlflow.internal:5000"
    assert tracking_uri(compose_cfg(["mlflow=server", "mlflow.tracking_uri=postgresql://u@db/mlflow"])) \
        == "postgresql://u@db/mlflow"


def test_default_tracking_uri_is_sqlite_and_env_overrides(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(compose_cfg()) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    assert tracking_uri(compose_cfg()) == "http://other:5000"


def build_trainer(overrides: list[str], device: str, tmp_path):
    cfg = compose_cfg(overrides)
    return cfg, make_trainer(cfg, device, checkpoint_callbacks(cfg, tmp_path, has_val=True), False, n_batches=4,
                             has_val=True)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_ddp_preset_builds_a_ddp_trainer_on_cpu(precision, tmp_path):
    """What `python -m emplifai.train train.strategy=ddp train.devices=2` fits with (tests/test_train_faults.py
    runs it: two processes, gloo)."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    cfg, trainer = build_trainer(["device=cpu", "train.strategy=ddp", "train.devices=2",
                                  f"train.precision={precision}"], "cpu", tmp_path)
    assert type(trainer.strategy) is DDPStrategy and isinstance(trainer.accelerator, CPUAccelerator)
    assert trainer.num_devices == trainer.world_size == world_size(cfg, "cpu") == 2
    assert trainer.precision == {"32": "32-true", "bf16-mixed": "bf16-mixed"}[precision]
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    periodic = [c for c in trainer.callbacks if isinstance(c, PeriodicCheckpoint)]
    assert [c.every for c in periodic] == [cfg.train.checkpoint_every_n_steps] == [20]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_presets_build_on_gpus_and_fail_at_once_on_cpu(strategy, tmp_path):
    """fsdp / deepspeed shard a 13B model over GPUs: Lightning builds them only with CUDA (and DeepSpeed
    installed); without, the Trainer refuses at construction, before any model is loaded."""
    study = ["model=llm-jp-3.1-13b-instruct4", "train.precision=bf16-mixed", f"train.strategy={strategy}",
             "train.gradient_checkpointing=true"]
    cfg = compose_cfg([*study, "device=cuda", "train.devices=8"])
    assert cfg.train.lora.target_modules == cfg.model.lora_target_modules
    installed = strategy != "deepspeed" or importlib.util.find_spec("deepspeed") is not None
    if not torch.cuda.is_available() or not installed:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        error = {"fsdp": "requires a GPU accelerator", "deepspeed": "must have DeepSpeed installed"}[strategy]
        with pytest.raises((ValueError, MisconfigurationException), match=error):
            build_trainer([*study, "device=cpu", "train.devices=2"], "cpu", tmp_path)
        pytest.skip(f"train.strategy={strategy} builds only on CUDA"
                    f"{' with deepspeed installed' * (not installed)}; here it fails at once, as checked ({error})")
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    n = torch.cuda.device_count()
    cfg, trainer = build_trainer([*study, "device=cuda", f"train.devices={n}"], "cuda", tmp_path)
    assert isinstance(trainer.strategy, {"fsdp": FSDPStrategy, "deepspeed": DeepSpeedStrategy}[strategy])
    assert trainer.world_size == world_size(cfg, "cuda") == n and trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("role", ["predictor", "judge"])
def test_vllm_presets_build_the_openai_client_with_their_settings(role, tmp_path):
    """judge=vllm through the judge stage's own backend factory, predictor=vllm as the openai predictor builds
    its client: the server, concurrency and timeout of the preset's file (over conf/llm/default.yaml)."""
    from emplifai.llm.openai_compat import OpenAICompatClient

    shared = yaml.safe_load((CONF / "llm" / "default.yaml").read_text(encoding="utf-8"))
    preset = {**shared, **yaml.safe_load((CONF / role / "vllm.yaml").read_text(encoding="utf-8"))}
    cfg = compose_cfg([f"{role}=vllm", f"{role}.cache={tmp_path}/cache.sqlite"])
    if role == "judge":
        from emplifai.judge.__main__ import make_backend
        from emplifai.judge.engine import OpenAIJudge
        from emplifai.judge.rubric import JudgePrompt, Rubric

        assert cfg.judge.backend == "openai" and cfg.judge.max_tokens >= 1024  # R1-style judges think first
        backend = make_backend(cfg, JudgePrompt(cfg.judge.grading_prompt, Rubric.from_config(cfg.judge)))
        assert isinstance(backend, OpenAIJudge)
        client = backend.client
        assert client.cache.path == tmp_path / "cache.sqlite"
    else:
        assert cfg.predictor.type == "openai"  # the `openai` predictor: OpenAICompatClient.from_config(pcfg)
        client = OpenAICompatClient.from_config(cfg.predictor)
    assert type(client) is OpenAICompatClient
    assert (client.base_url, client.model, client.api_key_env) == \
        (preset["base_url"].rstrip("/"), cfg[role].model, None)
    assert (client.concurrency, client.timeout_s, client.max_retries) == \
        (preset["concurrency"], preset["timeout_s"], shared["max_retries"])
    assert client.concurrency == 32 and client.timeout_s == {"judge": 300, "predictor": 60}[role]


@pytest.mark.parametrize("role", ["predictor", "judge"])
def test_llm_client_settings_are_written_once_and_reach_both_roles(role):
    """conf/llm/default.yaml is the client's settings for predictor=openai|vllm and judge=openai|vllm alike; each
    role keeps its own server, model and key variable, and an override of one role leaves the other alone."""
    from emplifai.llm.openai_compat import OpenAICompatClient

    shared = yaml.safe_load((CONF / "llm" / "default.yaml").read_text(encoding="utf-8"))
    for option in ("openai", "vllm"):
        own = yaml.safe_load((CONF / role / f"{option}.yaml").read_text(encoding="utf-8"))
        assert not {"max_retries", "backoff_s", "max_backoff_s", "max_failure_rate"} & set(own)  # not copied
        node = compose_cfg([f"{role}={option}"])[role]
        client = OpenAICompatClient.from_config(node)
        assert (client.max_retries, client.backoff_s, client.max_failure_rate) == \
            (shared["max_retries"], shared["backoff_s"], shared["max_failure_rate"])
    assert compose_cfg([f"{role}=openai"])[role].api_key_env == \
        {"predictor": "EMPLIFAI_EMOTION_API_KEY", "judge": "EMPLIFAI_JUDGE_API_KEY"}[role]
    other = "judge" if role == "predictor" else "predictor"
    cfg = compose_cfg(["predictor=openai", "judge=openai", f"{role}.base_url=http://gpu-node:9000/v1",
                       f"{role}.max_retries=1"])
    assert (cfg[role].base_url, cfg[role].max_retries) == ("http://gpu-node:9000/v1", 1)
    assert (cfg[other].base_url, cfg[other].max_retries) == (shared["base_url"], shared["max_retries"])


def test_slurm_launcher_preset_composes():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
