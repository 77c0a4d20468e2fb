"""`experiment=` presets compose, and their values reach the code that reads them."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import CONF, ROOT, compose_cfg
from emplifai.data.taxonomy import Taxonomy
from emplifai.emotion.__main__ import predictor_cfgs
from emplifai.emotion.predictors import openai, resolve_predictor
from emplifai.emotion.prompt import EmotionPrompt
from emplifai.llm.openai_compat import OpenAICompatClient
from emplifai.preflight import collect
from emplifai.report.epochs import system_epoch

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
STUDY_LLMS = ("llm-jp-3.1-13b-instruct4", "llama-3-swallow-8b-instruct-v0.1", "medllama3-jp")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_global_documented_and_composes(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("# @package _global_\n")
    header = text.split("defaults:")[0]
    assert "python -m emplifai." in header and f"experiment={name}" in header    # the exact command
    assert compose_cfg([f"experiment={name}"]).preflight is True


def test_no_preset_by_default():
    cfg = compose_cfg()
    assert "experiment" not in cfg and cfg.device == "cpu" and cfg.model.name == "gemma3-270m"


@pytest.mark.parametrize("model", STUDY_LLMS)
def test_study_preset_values_reach_the_stages(model):
    from emplifai.generate.__main__ import adapter_dirs
    from emplifai.train.__main__ import run_slug

    cfg = compose_cfg(["experiment=emplifai_study", f"model={model}"])
    assert cfg.device == "cuda" and cfg.model.compute_dtype == "bfloat16" and cfg.train.precision == "bf16-mixed"
    # emotion: one predictor, the served study model, through the OpenAI-compatible client
    (one,) = predictor_cfgs(cfg)
    assert one.predictor.name == f"vllm-{model}" and resolve_predictor(one.predictor) is openai
    assert OpenAICompatClient.from_config(one.predictor).model == model
    prompt = EmotionPrompt.from_config(one, Taxonomy.from_config(cfg.taxonomy), pd.DataFrame(), int(cfg.seed))
    assert prompt.example == cfg.emotion.prompt.example and prompt.system == cfg.predictor.system  # emotion.prompt
    # train: the 1-3 epoch sweep, adapters models/sft/epochs=<k> (as DVC's train@<k> names them); generate
    # loads exactly those, and the report puts them on its epoch axis
    assert list(cfg.train.sweep.epochs) == [1, 2, 3] and cfg.train.run_name is None
    assert [run_slug(cfg, [f"train.epochs={k}"]) for k in (1, 2, 3)] == ["epochs=1", "epochs=2", "epochs=3"]
    dirs = adapter_dirs(cfg)
    assert dirs == [ROOT / "models" / "sft" / f"epochs={k}" for k in (1, 2, 3)]
    systems = [f"{model}+{d.name}+{cfg.sft_prompt.name}" for d in dirs]
    assert [system_epoch(s, {})[2] for s in systems] == [1.0, 2.0, 3.0]
    # judge: R1 through vLLM
    client = OpenAICompatClient.from_config(cfg.judge)
    assert (cfg.judge.backend, client.model, cfg.judge.max_tokens) == ("openai", "deepseek-r1-distill-qwen-32b", 2048)
    assert client.base_url != OpenAICompatClient.from_config(one.predictor).base_url  # two servers side by side


def test_study_preset_preflight_plan(tmp_path):
    """What the preflight will ask for: the model's weights, three adapters, both servers (not the hf judge)."""
    cfg = compose_cfg(["experiment=emplifai_study", "device=cpu", f"paths.models={tmp_path}",
                       "predictor.base_url=http://127.0.0.1:9/v1", "judge.base_url=http://127.0.0.1:9/v1"])
    items = collect(cfg, ["emotion", "train", "generate", "judge"], timeout_s=1)
    whats = {(it.stage, it.what) for it in items}
    assert ("train", "model llm-jp-3.1-13b-instruct4") in whats
    assert {w for s, w in whats if w.startswith("adapter")} == {f"adapter epochs={k}" for k in (1, 2, 3)}
    assert ("emotion", "predictor server, model llm-jp-3.1-13b-instruct4") in whats
    assert ("judge", "judge server, model deepseek-r1-distill-qwen-32b") in whats
    assert not any("judge model" in w for _, w in whats)


def test_dvc_composes_the_preset(tmp_path):
    """`dvc exp run -S experiment=emplifai_study` composes params.yaml the same way."""
    from emplifai.core.params import write_params

    params = yaml.safe_load(write_params(ROOT, ["experiment=emplifai_study"], tmp_path / "p.yaml").read_text())
    assert params["device"] == "cuda" and params["model"]["name"] == "llm-jp-3.1-13b-instruct4"
    assert params["judge"]["name"] == "vllm" and params["predictor"]["type"] == "openai"
    assert params["train"]["run_name"] is None  # resolved params.yaml: train@<k> name their folders epochs=<k>
    other = yaml.safe_load(write_params(ROOT, ["experiment=emplifai_study", "model=medllama3-jp"],
                                        tmp_path / "q.yaml").read_text())
    assert other["predictor"]["model"] == "medllama3-jp" and other["predictor"]["name"] == "vllm-medllama3-jp"


def test_study_preset_cli_sweep_names_adapters_by_epoch():
    """The header's `python -m emplifai.train -m experiment=emplifai_study train.epochs=1,2,3`: the preset is no
    part of the run name, so the folders are epochs=<k>, what generate's `sweep` looks for."""
    from emplifai.train.__main__ import run_slug

    for k in (1, 3):
        cfg = compose_cfg(["experiment=emplifai_study", f"train.epochs={k}"])
        assert run_slug(cfg, ["experiment=emplifai_study", f"train.epochs={k}"]) == f"epochs={k}"
    # the form with an explicit, interpolated run name still gives the same folders
    cfg = compose_cfg(["experiment=emplifai_study", "train.epochs=2", 'train.run_name="epochs=${train.epochs}"'])
    assert run_slug(cfg, ["experiment=emplifai_study", "train.epochs=2"]) == "epochs=2"
