"""The MLflow spine (core/tracking.py) against a real sqlite store in tmp_path, read back with MlflowClient: a run
spans its stage's work and ends FINISHED/FAILED/KILLED, logs only the config its stage reads, its splits as
dataset inputs, MLflow's source tags; the experiment opens on its runs; a sweep's jobs (two real processes)
share one parent, which carries the sweep's summary; the metrics file names its run and the report lists
exactly the runs its metrics files name."""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import ROOT
from emplifai.core import tracking
from emplifai.core.metrics_file import read_metrics, run_ids, update_metrics, write_metrics
from emplifai.core.provenance import sweep_summary

STAGES = ("prepare", "models", "emotion", "train", "generate", "judge", "agreement", "report")
# dvc.yaml params that are no MLflow params: where files live on this machine (paths, conf_dir: they differ
# between checkouts, so identical runs would compare as different) and where the run itself is logged (mlflow)
NOT_PARAMS = {"paths", "conf_dir", "mlflow"}


def client_of(cfg) -> MlflowClient:
    return MlflowClient(tracking.tracking_uri(cfg))


def only_run(cfg, stage: str):
    client = client_of(cfg)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")
    return run


# ---- one stage run, end to end --------------------------------------------------------------------------------

def test_prepare_run_spans_its_work_and_records_where_it_comes_from(make_cfg, tiny_raw, tmp_path):
    from emplifai.prepare import __main__ as prepare

    cfg = make_cfg(f"data.raw_dir={tiny_raw}")
    prepare.run(cfg)
    run = only_run(cfg, "prepare")
    client = client_of(cfg)
    info = run.info
    assert info.status == "FINISHED"
    written = (tmp_path / "artifacts" / "prepare" / "train.parquet").stat().st_mtime * 1000
    assert info.start_time - 1 <= written <= info.end_time + 1          # the outputs were written inside the run
    # only what prepare reads: data.* and taxonomy.*, no train/judge/paths keys
    assert {k.split(".")[0] for k in run.data.params} == {"data", "taxonomy"}
    assert run.data.params["data.split.seed"] == "42"
    # the raw data as its dataset input: digest = the data version
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "raw" and inp.dataset.digest == tracking.data_version(tiny_raw)
    assert json.loads(inp.dataset.source) == {"uri": str(tiny_raw)} and inp.dataset.source_type == "local"
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "raw"}
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.name"] == "emplifai.prepare" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.user"]
    assert tags["data_version"] == inp.dataset.digest and tags["taxonomy"]
    exp = client.get_experiment(info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the metrics file names its run
    file = read_metrics(tmp_path / "reports" / "data" / "metrics.json")
    assert run_ids(file) == [(info.run_id, info.experiment_id)]
    assert file.tags["taxonomy"] == tags["taxonomy"]


def test_no_mlflow_no_run_id_in_the_metrics_file(make_cfg, tiny_raw, tmp_path):
    from emplifai.prepare import __main__ as prepare

    prepare.run(make_cfg(f"data.raw_dir={tiny_raw}", "mlflow.enabled=false"))
    file = read_metrics(tmp_path / "reports" / "data" / "metrics.json")
    assert run_ids(file) == [] and set(file.tags) == {"taxonomy"}
    assert not (tmp_path / "mlflow.db").exists()


def test_duration_and_status_finished_failed_killed(make_cfg):
    cfg = make_cfg()
    with tracking.stage_run(cfg, "generate", config=("seed",)) as run_:
        time.sleep(0.3)
    ok = client_of(cfg).get_run(run_.run_id).info
    assert ok.status == "FINISHED" and ok.end_time - ok.start_time >= 300
    with pytest.raises(ValueError), tracking.stage_run(cfg, "generate") as run_:
        raise ValueError("adapter folder is empty\nmore detail")
    failed = client_of(cfg).get_run(run_.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["failure"] == "ValueError: adapter folder is empty"
    with pytest.raises(KeyboardInterrupt), tracking.stage_run(cfg, "generate") as run_:
        raise KeyboardInterrupt
    assert client_of(cfg).get_run(run_.run_id).info.status == "KILLED"


def test_failure_tag_never_carries_a_key(make_cfg, monkeypatch):
    key, other = "Zq8VtN3rXb7LmK2pQw9Y", "tok3n-from-elsewhere"
    monkeypatch.setenv("EMPLIFAI_JUDGE_API_KEY", key)
    cfg = make_cfg()
    with pytest.raises(RuntimeError), tracking.stage_run(cfg, "judge") as run_:
        raise RuntimeError(f"401 from server: key {key} rejected (Authorization: Bearer {other})")
    failure = client_of(cfg).get_run(run_.run_id).data.tags["failure"]
    assert failure == "RuntimeError: 401 from server: key *** rejected (Authorization: Bearer ***"  # redact: to ,;'"


def test_sigterm_ends_the_run_killed(make_cfg):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler here; stage_run leaves it alone")
    cfg = make_cfg()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), tracking.stage_run(cfg, "train") as run_:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # never kill pytest itself
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert client_of(cfg).get_run(run_.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL       # restored


def test_judge_run_logs_the_judge_config_and_no_other(make_cfg):
    from emplifai.judge.__main__ import CONFIG

    cfg = make_cfg("+judge.api_key=sk-not-for-mlflow")
    with tracking.stage_run(cfg, "judge", {"judge": "hf_local"}, config=CONFIG) as run_:
        run_.log_metrics({"judge/a": 1.0, "judge/b": None, **{f"judge/m{i}": float(i) for i in range(1500)}},
                         reasons={"judge/b": "every score failed to parse"})
    run = client_of(cfg).get_run(run_.run_id)
    params = run.data.params
    assert {k.split(".")[0] for k in params} == {"seed", "device", "threads", "taxonomy", "model", "judge", "data"}
    assert [k for k in params if k.startswith("data.")] == ["data.raw_dir"]  # the version its metrics file names
    assert params["judge.name"] == "hf_local" and params["judge.api_key"] == "***"
    assert not any(k.startswith(("train.", "paths.", "mlflow.", "emotion.")) for k in params)
    assert run.info.run_name.startswith("judge judge=hf_local")
    assert len(run.data.metrics) == 1502 and math.isnan(run.data.metrics["judge/b"])  # batches of 1000
    assert run.data.tags["missing.judge/b"] == "every score failed to parse"


# ---- what the store holds: never a credential; NaN with its reason; params cut to MLflow's limit ----------------

SECRET, ENV_SECRET = "S3cretPa55word", "Zq8VtN3rXb7LmK2pQw9Y"


@pytest.fixture
def hydra_job(tmp_path, monkeypatch):
    """compose(overrides) as inside `python -m emplifai.<stage> <overrides>`: Hydra's runtime config is set,
    so the run's `overrides` tag and name come from these overrides (restored afterwards)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from conftest import CONF

    def _job(*overrides: str):
        base = [f"paths.artifacts={tmp_path}/artifacts", f"paths.reports={tmp_path}/reports",
                f"paths.log_dir={tmp_path}/logs", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *overrides], return_hydra_config=True)
        monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
        HydraConfig.instance().set_config(cfg)
        return cfg

    return _job


def test_credentials_never_reach_params_tags_run_names_or_overrides(hydra_job, monkeypatch):
    """A key inside a base_url (user:pass@, ?api_key=), in an override, in the environment: read back from the
    store, no param, tag, run name, overrides tag, failure tag or missing-reason holds it."""
    from emplifai.judge.__main__ import CONFIG

    monkeypatch.setenv("EMPLIFAI_JUDGE_API_KEY", ENV_SECRET)
    url = f"https://alice:{SECRET}@llm.example/v1?api_key={SECRET}"
    cfg = hydra_job("judge=openai", f"judge.base_url='{url}'", f"+judge.api_key={SECRET}",
                    f"+judge.note=token@{ENV_SECRET}")
    with pytest.raises(RuntimeError), \
            tracking.stage_run(cfg, "judge", {"judge": "openai", "endpoint": url}, config=CONFIG) as run_:
        run_.set_tags({"server": url, "auth": f"Authorization: Bearer {SECRET}"})
        run_.log_metrics({"judge/x": None}, reasons={"judge/x": f"{url} answered 401"})
        raise RuntimeError(f"POST {url}/chat/completions: key {ENV_SECRET} rejected")
    run = client_of(cfg).get_run(run_.run_id)
    stored = json.dumps([run.info.run_name, run.data.params, run.data.tags], ensure_ascii=False)
    assert SECRET not in stored and ENV_SECRET not in stored
    params, tags = run.data.params, run.data.tags
    assert params["judge.base_url"] == "https://***@llm.example/v1?api_key=***"
    assert params["judge.api_key"] == "***" and params["judge.note"] == "token@***"
    assert "judge.base_url='https://***@llm.example/v1?api_key=***'" in tags["overrides"]
    assert "+judge.api_key=***" in tags["overrides"] and "judge=openai" in tags["overrides"]
    assert run.info.run_name.startswith("judge judge=openai judge=openai judge.base_url=")
    assert tags["server"] == "https://***@llm.example/v1?api_key=***" and tags["auth"] == "Authorization: Bearer ***"
    assert tags["missing.judge/x"] == "https://***@llm.example/v1?api_key=*** answered 401"
    assert tags["failure"] == "RuntimeError: POST https://***@llm.example/v1?api_key=*** key *** rejected"


def test_nan_metrics_secret_keys_and_long_params_as_the_store_holds_them(make_cfg):
    cfg = make_cfg("+judge.api_key=plain-value", "+judge.openai_api_key=another", "+judge.password=pw",
                   "+judge.max_tokens=7")
    OmegaConf.update(cfg, "judge.rubric_note", "評価" * 4000, force_add=True)  # 8,000 chars > MLflow's 6,000
    with tracking.stage_run(cfg, "judge", config=("judge",)) as run_:
        run_.log_metrics({"judge/ok": 1.0, "judge/nan": math.nan, "judge/none": None},
                         reasons={"judge/nan": "every score failed to parse"})
    run = client_of(cfg).get_run(run_.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["judge.api_key"] == params["judge.openai_api_key"] == params["judge.password"] == "***"
    assert params["judge.max_tokens"] == "7"                       # `tokens` is no secret key
    note = params["judge.rubric_note"]
    assert len(note) <= tracking.MAX_PARAM_CHARS == 6000 and note.endswith("...[truncated]")
    assert note.startswith("評価" * 100)
    assert math.isnan(run.data.metrics["judge/nan"]) and math.isnan(run.data.metrics["judge/none"])
    assert tags["missing.judge/nan"] == "every score failed to parse"
    assert tags["missing.judge/none"] == "not computable" and "missing.judge/ok" not in tags


# ---- metric names: 日本語 kept, never two names on one metric ------------------------------------------------------

def old_metric_name(text: str) -> str:
    """metric_name before unicode names were kept: every ASCII name must still map like this."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def test_metric_names_keep_japanese_and_never_collide():
    ascii_names = ["human", "gemma3-270m+base+default", "gemma3-270m+epochs=3+default", "hf_local", "a b", "x/y",
                   "empathetic", "solution-focused", "v1.2"]
    committed = ROOT / "reports" / "generate" / "metrics.json"
    if committed.exists():  # the systems of the last `dvc repro`: their metric names do not move
        ascii_names += read_metrics(committed).tags.get("systems", "").split(" | ")
    names = tracking.metric_names(ascii_names)
    assert all(names[n] == old_metric_name(n) for n in ascii_names)
    jp = tracking.metric_names(["共感型", "解決型"])  # both were "_" (so one overwrote the other's metrics)
    assert [old_metric_name(n) for n in jp] == ["_", "_"] and jp == {"共感型": "共感型", "解決型": "解決型"}
    clash = tracking.metric_names(["共感・型", "共感（型", "共感_型", "other"])  # three map to 共感_型
    assert clash["共感_型"] == "共感_型" and clash["other"] == "other"
    assert clash["共感・型"].startswith("共感_型_") and clash["共感（型"].startswith("共感_型_")
    assert len(set(clash.values())) == 4
    assert tracking.metric_names(["共感（型", "共感・型"]) == tracking.metric_names(["共感・型", "共感（型"])  # stable
    assert tracking.metric_name("..") == "_"


def test_japanese_systems_get_their_own_judge_generate_and_agreement_metrics(make_cfg):
    """judge means, the system-level gaps and an MLflow run: two Japanese systems, two sets of metrics."""
    import numpy as np
    import pandas as pd

    from emplifai.judge.__main__ import metrics_of
    from emplifai.judge.rubric import Rubric
    from emplifai.metrics import systems, tables

    cfg = make_cfg()
    rubric = Rubric.from_config(cfg.judge)
    crit = rubric.keys[0]
    rows = [{"response_id": f"{s}:{i}", "system": s, "criterion": crit, "score": score + (i % 3) * 0.5,
             "parse_ok": True, "detail": "ok", "digit_mass": 0.9}
            for s, score in (("共感型", 4.0), ("解決型", 2.0)) for i in range(6)]
    scores = pd.DataFrame(rows)
    metrics, _ = metrics_of(scores, rubric)
    assert metrics[f"judge/{crit}/mean_共感型"] == pytest.approx(4.5)
    assert metrics[f"judge/{crit}/mean_解決型"] == pytest.approx(2.5)
    rng = np.random.default_rng(0)
    ratings = pd.DataFrame([{"response_id": r["response_id"], "rater_id": k, "criterion": crit,
                             "score": float(np.clip(round(r["score"] + rng.normal()), 1, 5))}
                            for r in rows for k in ("a", "b")])
    cube = tables.Cube.from_merged(tables.merge(scores, ratings), [crit])
    _, sys_metrics, _ = systems.system_level(cube, {"n_resamples": 50, "seed": 0, "level": 0.95})
    assert {"共感型/gap", "解決型/gap"} <= set(sys_metrics)
    with tracking.stage_run(cfg, "judge") as run_:
        run_.log_metrics({k: v for k, v in metrics.items() if "mean_" in k})
    stored = client_of(cfg).get_run(run_.run_id).data.metrics
    assert stored[f"judge/{crit}/mean_共感型"] == pytest.approx(4.5)  # MLflow takes unicode word characters
    assert stored[f"judge/{crit}/mean_解決型"] == pytest.approx(2.5)


def test_split_inputs_carry_the_data_version(make_cfg, tmp_path):
    import pandas as pd

    cfg = make_cfg()
    split = tmp_path / "test.parquet"
    pd.DataFrame({"dialogue_id": ["d1", "d2", "d3"]}).to_parquet(split)
    with tracking.stage_run(cfg, "judge") as run_:
        run_.log_split("test", split)
        run_.log_split("human_ratings", tmp_path / "absent.parquet")   # not there: nothing logged
    (inp,) = client_of(cfg).get_run(run_.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == tracking.data_version(cfg.data.raw_dir) == run_.digest
    assert json.loads(inp.dataset.profile) == {"num_rows": 3}
    assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", "test")]


def test_existing_experiment_gets_its_kind_and_a_lost_creation_race_reads_the_winner(make_cfg, monkeypatch):
    cfg = make_cfg()
    client = client_of(cfg)
    exp_id = client.create_experiment("emplifai", tags={"mlflow.experimentKind": "genai_development_inferred"})
    real = MlflowClient.get_experiment_by_name
    calls = []

    def first_lookup_misses(self, name):  # fault: another process creates it between lookup and create
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", first_lookup_misses)
    with tracking.stage_run(cfg, "prepare") as run_:
        pass
    assert len(calls) == 2 and run_.experiment_id == exp_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


# ---- the config each stage logs = its DVC params ---------------------------------------------------------------

def stage_config(stage: str) -> tuple[set[str], list[ast.Call]]:
    """(CONFIG of python -m emplifai.<stage>, its stage_run calls)."""
    tree = ast.parse((ROOT / "src" / "emplifai" / stage / "__main__.py").read_text(encoding="utf-8"))
    config = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "CONFIG" for t in n.targets))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("stage_run")]
    return set(config), calls


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_logs_the_config_dvc_gives_it(stage):
    """CONFIG (the run's params) is the stage's `params:` in dvc.yaml but NOT_PARAMS, and every stage_run of
    the stage passes it."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    config, calls = stage_config(stage)
    assert config == set(dvc["params"]) - NOT_PARAMS, f"{stage}: CONFIG must be dvc.yaml's params but {NOT_PARAMS}"
    assert calls and all(any(k.arg == "config" and ast.unparse(k.value) == "CONFIG" for k in c.keywords)
                         for c in calls), f"{stage}: stage_run(..., config=CONFIG)"


# ---- sweeps -----------------------------------------------------------------------------------------------------

JOB = """
import sys, time
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from emplifai.core import tracking

sweep, db, num, loss, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
with initialize_config_dir(sys.argv[6], version_base="1.3"):
    cfg = compose("config", return_hydra_config=True, overrides=[
        "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}", f"hydra.job.num={num}", f"train.epochs={num + 1}",
        f"mlflow.tracking_uri=sqlite:///{db}"])
HydraConfig.instance().set_config(cfg)  # what Hydra's launcher does in each job of a multirun
tracking.source_tags("train")  # git asked once per process: now both jobs reach the parent lookup together
(barrier / str(num)).touch()
while len(list(barrier.iterdir())) < 2:  # both jobs are ready: open the run at the same moment
    time.sleep(0.01)
with tracking.stage_run(cfg, "train", config=("train",), key_metric=("train/best_val_loss", "min")) as run_:
    run_.log_metrics({"train/best_val_loss": loss})
"""


def test_two_jobs_of_a_sweep_race_to_one_parent_with_the_summary(tmp_path):
    sweep, barrier, db = tmp_path / "multirun", tmp_path / "barrier", tmp_path / "mlflow.db"
    barrier.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(sweep), str(db), str(num), str(loss), str(barrier),
                              str(ROOT / "conf")], env=env, stderr=subprocess.PIPE, text=True)
            for num, loss in ((0, 2.5), (1, 1.5))]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")), key=lambda r: r.info.run_name)
    assert len(runs) == 3 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert [c.info.run_name for c in children] == ["train train.epochs=1", "train train.epochs=2"]
    tags = parent.data.tags
    assert tags["best_run_id"] == children[1].info.run_id and tags["best_run"] == "train train.epochs=2"
    assert tags["best_metric"] == "train/best_val_loss (min)" and tags["sweep_children_finished"] == "2"
    assert parent.info.end_time == max(c.info.end_time for c in children)  # the parent spans the sweep
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep_summary.json", str(tmp_path)))
                         .read_text())
    assert {c["run_id"] for c in summary["children"]} == {c.info.run_id for c in children}
    assert summary["best"]["train/best_val_loss"] == 1.5


def test_sweep_summary_best_child_and_status():
    def child(name, status, loss, end):
        return {"run_name": name, "run_id": name, "status": status, "overrides": "", "end_time": end,
                "metrics": {"loss": loss}}

    children = [child("a", "FINISHED", 2.0, 10), child("b", "FINISHED", math.nan, 30),
                child("c", "FAILED", 0.1, 20), child("d", "FINISHED", 1.0, 15)]
    summary, tags, status, end = sweep_summary(children, ("loss", "min"))
    assert tags["best_run"] == "d" and status == "FAILED" and end == 30         # NaN and failed never win
    assert [c["run_name"] for c in summary["children"]] == ["a", "b", "d"]
    assert sweep_summary(children, ("loss", "max"))[1]["best_run"] == "a"
    summary, tags, status, _ = sweep_summary(children[:2], None)
    assert summary["best"] is None and "best_run" not in tags and status == "FINISHED"


# ---- metrics files name their runs; the report lists exactly those ----------------------------------------------

def test_shared_metrics_file_keeps_each_runs_id():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.json"
        update_metrics(path, "emotion/a/", {"emotion/a/n": 1.0}, tags={"mlflow_run_id": "r1",
                                                                      "mlflow_experiment_id": "1"})
        update_metrics(path, "emotion/b/", {"emotion/b/n": 1.0}, tags={"mlflow_run_id": "r2",
                                                                      "mlflow_experiment_id": "1"})
        update_metrics(path, "emotion/a/", {"emotion/a/n": 2.0}, tags={"mlflow_run_id": "r3",
                                                                      "mlflow_experiment_id": "1"})  # a rerun
        assert sorted(run_ids(read_metrics(path))) == [("r2", "1"), ("r3", "1")]


def test_report_lists_exactly_the_runs_its_metrics_files_name(make_cfg, tiny_raw, tmp_path):
    from emplifai.prepare import __main__ as prepare
    from emplifai.report.__main__ import runs_section, to_markdown

    cfg = make_cfg(f"data.raw_dir={tiny_raw}")
    prepare.run(cfg)
    prepare.run(cfg)  # a rerun of the same data version: only its run is behind the numbers now
    reports = tmp_path / "reports"
    (newest,) = run_ids(read_metrics(reports / "data" / "metrics.json"))
    gone = "0" * 32
    write_metrics(reports / "generate" / "metrics.json", {"generate/responses": 4},
                  tags={"mlflow_run_id": gone, "mlflow_experiment_id": newest[1]})
    (kind, table), = runs_section(cfg, reports)
    assert kind == "table" and list(table["run_id"]) == [newest[0], gone]
    ours, lost = table.to_dict("records")
    assert ours["stage"] == "prepare" and ours["status"] == "FINISHED" and ours["duration"].endswith(" s")
    assert ours["link"] == f"http://127.0.0.1:5000/#/experiments/{newest[1]}/runs/{newest[0]}"
    assert ours["metrics file"] == "data/metrics.json" and lost["status"] == "not in this tracking store"
    assert newest[0] in to_markdown([("table", table)], reports)
    server = make_cfg(f"data.raw_dir={tiny_raw}", "mlflow.enabled=false", "mlflow.tracking_uri=http://mlf:5000")
    (_, off), = runs_section(server, reports)
    assert off["link"].iloc[0].startswith("http://mlf:5000/#/experiments/")


def test_data_version_is_dvc_md5_only_while_the_data_still_has_it(tmp_path):
    """data.dvc names a version; data/ edited after `dvc add` is not that version any more."""
    import shutil

    from conftest import ROOT

    shutil.copytree(ROOT / "data", tmp_path / "data")
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    assert tracking.data_version(tmp_path / "data") == recorded  # our md5 of the folder is DVC's
    with open(tmp_path / "data" / "dialogues.csv", "a", encoding="utf-8") as f:
        f.write("\n")
    edited = tracking.data_version(tmp_path / "data")
    assert edited != recorded and edited.startswith("content-") and len(edited) <= 36
