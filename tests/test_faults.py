"""Fault suite for the stages that call an LLM server (issue 13): the judge (`judge=openai`) and the emotion
predictor (`predictor=openai`) run as real processes against tests/llm_testserver.py, and

1. killed with SIGKILL mid-run: the rerun asks only for what was not answered, and every output is, at every
   moment, absent, the previous complete version or the new complete one (never a partial file);
2. the server dying mid-run: the stage fails within seconds with one line (exit 2, no traceback), writes
   nothing, and the rerun against the server back on its port asks only for what is missing;
3. HTTP 200 bodies cut short (cut JSON, cut inside a UTF-8 character, cut in transit, a cut gzip stream):
   errors with a clear detail, retried, never a crash, never cached;
4. a key echoed at any offset of a long error page, and credentials in base_url: neither the key nor the
   password, nor any 8 characters of them, reaches any file (outputs, reports, MLflow's store and artifacts,
   the caches with their WAL, Hydra's logs and .hydra/ folders, stdout/stderr).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from emplifai.core.errors import UserError
from emplifai.core.metrics_file import read_metrics
from emplifai.llm import ChatRequest, OpenAICompatClient
from emplifai.llm.cache import ResponseCache
from llm_testserver import CUT, HTML_PAGE, LLMTestServer, LLMTestServerProcess

PREPARED = ROOT / "artifacts" / "prepare"
pytestmark = pytest.mark.skipif(not (PREPARED / "test.parquet").exists()
                                or not (ROOT / "models/base/e5-small/config.json").exists(),
                                reason="run `dvc repro models prepare` first")

KEY = "sk-Zq8VtN3rXb7LmK2pQw9YhE4dFg6JsA1uC5oI0Tx"  # what a leak would show: the key, or 8 characters of it
PASSWORD = "pw-SECRET-7Hq2Zk9Lm4Xv"
JUDGED = 28  # judge.stratified_n=4 responses × 7 criteria
DIALOGUES = 12  # emotion.first_n
SCORE = '{"score": 4}'


# ---------------------------------------------------------------- running a stage as a process
def judge_args(url: str, *extra: str) -> list[str]:
    return ["judge=openai", f"judge.base_url={url}", "judge.model=test-model", "judge.api_key_env=null",
            "judge.stratified_n=4", "judge.show_progress=false", "judge.timeout_s=30", "judge.backoff_s=0.01",
            "judge.max_backoff_s=0.05", *extra]


def emotion_args(url: str, *extra: str) -> list[str]:
    return ["emotion.predictors=null", "predictor=openai", f"predictor.base_url={url}",
            "predictor.model=test-model", "predictor.api_key_env=null", "predictor.show_progress=false",
            "predictor.timeout_s=30", "predictor.backoff_s=0.01", "predictor.max_backoff_s=0.05",
            f"emotion.first_n={DIALOGUES}", "emotion.fasttext.epoch=2", "emotion.fasttext.dim=20",
            "emotion.bootstrap.n_resamples=50", *extra]


class Stage:
    """`python -m emplifai.<stage>` in tmp_path (its paths, caches, MLflow store and logs all inside it); stdout
    and stderr go to files in tmp_path, so the leak scans read them too."""

    def __init__(self, tmp_path: Path, stage: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.tmp_path, self.stage = tmp_path, stage
        runs = tmp_path / "proc"
        runs.mkdir(exist_ok=True)
        n = len(list(runs.glob("*.out")))
        self.out, self.err = runs / f"{stage}-{n}.out", runs / f"{stage}-{n}.err"
        base = {k: v for k, v in os.environ.items() if not k.startswith("EMPLIFAI_")}
        cmd = [sys.executable, "-m", f"emplifai.{stage}", f"paths.root={tmp_path}", f"paths.models={ROOT}/models",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=err, env={**base, **(env or {})})

    def wait(self, timeout: float = 240) -> Stage:
        self.proc.wait(timeout)
        return self

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # a crash: no handler, no cleanup, no atexit
        self.proc.wait(30)

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def ok(self) -> Stage:
        assert self.wait().rc == 0, self.stderr[-3000:]
        return self


def prepared(tmp_path: Path) -> Path:
    shutil.copytree(PREPARED, tmp_path / "artifacts" / "prepare")
    return tmp_path


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def cached(path: Path) -> int:
    """Rows in a stage's LLM cache (0 when it does not exist yet); read while the stage writes it."""
    if not path.exists():
        return 0
    with ResponseCache(path) as cache:
        return len(cache)


# ---------------------------------------------------------------- what "complete or absent" means
def outputs(tmp_path: Path, stage: str) -> list[Path]:
    if stage == "judge":
        return [tmp_path / "artifacts" / "judge", tmp_path / "reports" / "judge"]
    return [tmp_path / "artifacts" / "emotion", tmp_path / "reports" / "emotion"]


def visible(folders: list[Path]) -> list[Path]:
    return sorted(p for f in folders if f.exists() for p in f.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(f).parts))


def snapshot(folders: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in visible(folders)}


def incomplete(path: Path) -> str | None:
    """Why `path` is not a complete file of its kind (None: complete, or gone since it was listed)."""
    try:
        data = path.read_bytes()
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".csv":
            if not data.endswith(b"\n"):
                return "a CSV without its last newline"
            pd.read_csv(path)
        elif path.suffix == ".png" and not (data.startswith(b"\x89PNG") and data[-8:-4] == b"IEND"):
            return "a PNG without its IEND chunk"
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - any reader failing is the finding
        return f"{type(err).__name__}: {err}"
    return None


def strays(folders: list[Path]) -> list[Path]:
    """Hidden leftovers in the output folders (atomic_path's `.name.*.tmp`, atomic_dir's `.name.*`)."""
    return sorted(p for f in folders if f.exists() for p in f.rglob(".*"))


class Watch:
    """Polls the output folders while a stage runs: every visible file must be complete whenever it is seen."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders, self.problems, self.looks = folders, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in visible(self.folders):
                why = incomplete(path)
                if why:
                    self.problems.append(f"{path}: {why}")
            self.looks += 1
            time.sleep(0.01)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def judge_reply(body: dict) -> str:
    return SCORE


def emotion_reply(body: dict, i: int) -> tuple[str, str]:
    return "不安", "stop"


# ---------------------------------------------------------------- 1. SIGKILL mid-run
@pytest.mark.slow
def test_judge_killed_mid_run_resumes_and_outputs_are_never_partial(tmp_path):
    """v1 complete; a second judge model killed after 10 answers (v1 untouched), then killed again right after
    its first output was replaced (each file v1 or complete), then completed asking only for the 18 left."""
    prepared(tmp_path)
    folders, cache = outputs(tmp_path, "judge"), tmp_path / ".cache" / "judge.sqlite"
    with LLMTestServer(reply_fn=judge_reply, delay_s=0.1, models=("test-model", "other-model")) as srv, \
            Watch(folders) as watch:
        Stage(tmp_path, "judge", judge_args(srv.base_url)).ok()
        v1 = snapshot(folders)
        assert srv.ok_count == JUDGED and cached(cache) == JUDGED and v1

        srv.block_after = JUDGED + 10  # the next run gets 10 answers, then the server stalls
        other = judge_args(srv.base_url, "judge.model=other-model", "judge.concurrency=4")
        run = Stage(tmp_path, "judge", other)
        wait_for(lambda: srv.ok_count == JUDGED + 10 and cached(cache) == JUDGED + 10, "10 answers committed")
        run.kill()
        assert snapshot(folders) == v1  # mid-run: the previous complete version, byte for byte
        assert not strays(folders)

        srv.block_after = None
        sent = srv.request_count
        scores = tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet"
        old = scores.stat().st_ino
        run = Stage(tmp_path, "judge", other)  # killed the moment its first output replaces v1's
        wait_for(lambda: scores.stat().st_ino != old, "scores.parquet replaced")
        run.kill()
        assert srv.request_count - sent == JUDGED - 10  # only what the first kill left unanswered
        now = snapshot(folders)
        assert [p for p in now if incomplete(Path(p))] == [] and str(scores) in now  # v1's or new, complete
        leftovers = strays(folders)  # a kill inside a write leaves its hidden temp file, nothing else
        assert all(p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file() for p in leftovers)

        sent = srv.request_count
        Stage(tmp_path, "judge", other).ok()
        assert srv.request_count == sent  # everything answered is cached: zero requests
    assert watch.looks > 10 and watch.problems == []
    m = read_metrics(tmp_path / "reports" / "judge" / "openai" / "metrics.json")
    assert m.tags["judge_model"] == "other-model" and m.metrics["judge/cache_hits"] == JUDGED
    assert len(pd.read_parquet(scores)) == JUDGED


@pytest.mark.slow
def test_emotion_predictor_killed_mid_run_resumes_and_outputs_are_never_partial(tmp_path):
    prepared(tmp_path)
    folders, cache = outputs(tmp_path, "emotion"), tmp_path / ".cache" / "emotion.sqlite"
    with LLMTestServer(reply_fn=emotion_reply, delay_s=0.1, models=("test-model", "other-model")) as srv, \
            Watch(folders) as watch:
        Stage(tmp_path, "emotion", emotion_args(srv.base_url)).ok()
        v1 = snapshot(folders)
        assert srv.ok_count == DIALOGUES and cached(cache) == DIALOGUES

        srv.block_after = DIALOGUES + 5
        other = emotion_args(srv.base_url, "predictor.model=other-model", "predictor.concurrency=3")
        run = Stage(tmp_path, "emotion", other)
        wait_for(lambda: srv.ok_count == DIALOGUES + 5 and cached(cache) == DIALOGUES + 5, "5 answers committed")
        run.kill()
        now = snapshot(folders)  # the predictor's outputs untouched; the label check before it rewrote its own
        assert {k: v for k, v in now.items() if "label_separation" not in k} == \
            {k: v for k, v in v1.items() if "label_separation" not in k}
        assert [p for p in now if incomplete(Path(p))] == [] and not strays(folders)

        srv.block_after = None
        sent = srv.request_count
        Stage(tmp_path, "emotion", other).ok()
        assert srv.request_count - sent == DIALOGUES - 5
    assert watch.looks > 10 and watch.problems == []
    m = read_metrics(tmp_path / "artifacts" / "emotion" / "openai" / "metrics.json").metrics
    assert m["emotion/cache_hits"] == 5 and m["emotion/n"] == DIALOGUES


# ---------------------------------------------------------------- 2. the server dies mid-run
def assert_one_line_error(stage: Stage, *fragments: str) -> str:
    assert stage.rc == 2, stage.stderr[-3000:]
    err = stage.stderr
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["judge", "emotion"])
def test_server_dying_mid_run_fails_fast_then_the_rerun_asks_only_for_the_rest(tmp_path, stage):
    prepared(tmp_path)
    folders = outputs(tmp_path, stage)
    total, answered, reply = (JUDGED, 10, SCORE) if stage == "judge" else (DIALOGUES, 5, "不安")
    cache = tmp_path / ".cache" / f"{stage}.sqlite"
    make = judge_args if stage == "judge" else emotion_args
    who = "judge" if stage == "judge" else "predictor"
    args = lambda url: make(url, f"{who}.backoff_s=1.0", f"{who}.max_backoff_s=30", f"{who}.max_retries=5",  # noqa: E731
                            f"{who}.concurrency=4")  # the shipped retry policy: no shortcut for the test
    with LLMTestServerProcess("--delay", "0.1", "--block-after", str(answered), "--reply", reply) as srv:
        run = Stage(tmp_path, stage, args(srv.base_url))
        wait_for(lambda: srv.stats()["ok_count"] == answered and cached(cache) == answered, "answers committed")
        port = srv.port
        srv.kill()  # mid-run, 4 requests in flight
        died = time.monotonic()
        run.wait(120)
        took = time.monotonic() - died
    line = assert_one_line_error(run, f"{total - answered} of {total} requests", "circuit open",
                                 f"the {answered} answers received are cached")
    assert took < 15, f"{took:.1f} s to give up on a dead server: {line}"
    assert visible([f / "openai" for f in folders]) == []  # nothing written
    assert not strays(folders)
    assert cached(cache) == answered
    with LLMTestServerProcess("--reply", reply, port=port) as back:  # the same URL: the same cache namespace
        Stage(tmp_path, stage, args(back.base_url)).ok()
        assert back.stats()["request_count"] == total - answered
    done = outputs(tmp_path, stage)
    assert [p for p in visible(done) if incomplete(p)] == [] and not strays(done)


# ---------------------------------------------------------------- 3. bodies cut short
def req(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


EXPECTED_DETAIL = {"truncated": ("malformed reply: ", "not valid JSON"),
                   "truncated_utf8": ("malformed reply: ", "not valid UTF-8"),
                   "short_body": ("connection error: ", "without sending complete message body"),
                   "truncated_gzip": ("malformed reply: ", "not valid JSON")}


@pytest.mark.parametrize("cut", CUT)
def test_a_cut_body_is_an_error_with_a_clear_detail_retried_and_never_cached(tmp_path, cut):
    cache = tmp_path / "llm.sqlite"
    with LLMTestServer(default=cut, reply_fn=lambda body: "共感しています。" * 20) as srv:
        client = OpenAICompatClient(srv.base_url, "m", max_retries=2, backoff_s=0.001, cache_path=cache,
                                    show_progress=False)
        bad = client.chat_many([req("a"), req("b")])
    assert srv.request_count == 2 * 3 and all(r.attempts == 3 for r in bad)  # retried per the policy
    for r in bad:
        lead, detail = EXPECTED_DETAIL[cut]
        assert r.error.startswith(lead) and detail in r.error, r.error
        assert r.error.endswith("(gave up after 3 attempts)") and len(r.error) < 400
    assert cached(cache) == 0  # a cut body is never an answer
    with LLMTestServer(script=[cut], reply_fn=lambda body: "共感しています。") as srv:  # once, then whole
        client = OpenAICompatClient(srv.base_url, "m", max_retries=2, backoff_s=0.001, cache_path=cache,
                                    show_progress=False)
        good = client.chat(req("a"))
    assert good.ok and good.attempts == 2 and good.text == "共感しています。" and cached(cache) == 1


def test_judge_stage_counts_cut_bodies_as_api_errors_and_the_rerun_asks_only_for_them(tmp_path, make_cfg):
    from emplifai.judge import __main__ as judge

    prepared(tmp_path)

    def cut_two_criteria(body: dict) -> str | None:
        text = body["messages"][-1]["content"]
        return "truncated_utf8" if "評価基準: 流暢さ" in text else "short_body" if "評価基準: 無害性" in text else None

    cfg = lambda url: make_cfg(*judge_args(url, "judge.max_retries=1", "judge.max_failure_rate=null",  # noqa: E731
                                           f"judge.cache={tmp_path}/judge.sqlite", "mlflow.enabled=false"))
    with LLMTestServer(reply_fn=judge_reply, behaviour_fn=cut_two_criteria) as srv:
        m = judge.run(cfg(srv.base_url))
        assert srv.request_count == 20 + 8 * 2
        scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet").set_index("criterion")
        assert m["judge/api_errors"] == 8 and m["judge/parse_failure_rate"] == pytest.approx(8 / 28)
        assert scores.loc["fluency", "detail"].str.startswith("error: malformed reply: ").all()
        assert scores.loc["fluency", "detail"].str.contains("not valid UTF-8").all()
        assert scores.loc["harmlessness", "detail"].str.contains("without sending complete message body").all()
        assert scores.loc[["fluency", "harmlessness"], "score"].isna().all()
        assert (scores.drop(index=["fluency", "harmlessness"])["score"] == 4).all()
        assert cached(tmp_path / "judge.sqlite") == 20
        srv.behaviour_fn, sent = None, srv.request_count
        m = judge.run(cfg(srv.base_url))
        assert srv.request_count - sent == 8 and m["judge/api_errors"] == 0 and m["judge/cache_hits"] == 20


def test_emotion_predictor_counts_cut_bodies_as_invalid(tmp_path, make_cfg):
    from emplifai.emotion import __main__ as emotion

    prepared(tmp_path)
    seen: list[str] = []

    def first_two_cut(body: dict) -> str | None:
        text = body["messages"][-1]["content"]
        if text not in seen:
            seen.append(text)
        return "truncated" if seen.index(text) < 2 else None

    cfg = lambda url, *x: make_cfg(*emotion_args(url, "emotion.first_n=6", "predictor.max_retries=1",  # noqa: E731
                                                 f"predictor.cache={tmp_path}/llm.sqlite", "mlflow.enabled=false",
                                                 *x))
    with LLMTestServer(reply_fn=emotion_reply, behaviour_fn=first_two_cut) as srv:
        emotion.run(cfg(srv.base_url, "predictor.max_failure_rate=0.5"))
        frame = pd.read_parquet(tmp_path / "artifacts" / "emotion" / "openai" / "predictions.parquet")
        bad = frame[~frame["valid"]]
        assert len(bad) == 2 and bad["reason"].str.startswith("API error: malformed reply: ").all()
        assert bad["reason"].str.contains("not valid JSON").all() and bad["raw"].isna().all()
        assert srv.request_count == 4 + 2 * 2 and cached(tmp_path / "llm.sqlite") == 4
        srv.behaviour_fn, sent = None, srv.request_count
        emotion.run(cfg(srv.base_url))
        assert srv.request_count - sent == 2


# ---------------------------------------------------------------- 4. secrets: every file, every fragment
OFFSETS = [0, 1, 250, 270, 283, 290, 295, 299, 300, 301, 310, 1000, 20000]


def fragments(secret: str, size: int = 8) -> set[bytes]:
    return {secret[i: i + size].encode() for i in range(len(secret) - size + 1)}


def leaks(root: Path, secret: str) -> list[str]:
    """Every file under `root` (hidden ones, sqlite stores with their WAL, logs, .hydra/) holding the secret or
    any 8 characters of it."""
    found = []
    parts = fragments(secret)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) > 10, f"nothing to scan under {root}"
    for path in files:
        data = path.read_bytes()
        hits = sorted(f.decode() for f in parts if f in data)
        if hits:
            found.append(f"{path.relative_to(root)}: {hits[:3]}")
    return found


def scanned(root: Path) -> set[str]:
    """The kinds of file a leak scan covered (to prove it covered them)."""
    names = {p.name for p in root.rglob("*") if p.is_file()}
    kinds = {"mlflow.db", "overrides.yaml", "config.yaml", "hydra.yaml", "metrics.json", "scores.parquet",
             "predictions.parquet", "judge.sqlite", "emotion.sqlite", "judge.log", "emotion.log"}
    found = kinds & names
    found |= {"wal"} if any(n.endswith(("-wal", "-shm")) for n in names) else set()
    found |= {"artifact"} if any("mlruns" in str(p) for p in root.rglob("*")) else set()
    return found


def fail_some(marker: str) -> Callable[[dict], str | None]:
    """behaviour_fn: requests whose last message holds `marker` always get an error page (HTTP 500)."""
    return lambda body: "500" if marker in body["messages"][-1]["content"] else None


class FailFirst:
    """behaviour_fn: the first `n` distinct requests always get an error page (HTTP 500)."""

    def __init__(self, n: int) -> None:
        self.n, self.lock, self.seen = n, threading.Lock(), []

    def __call__(self, body: dict) -> str | None:
        text = body["messages"][-1]["content"]
        with self.lock:
            if text not in self.seen:
                self.seen.append(text)
            return "500" if self.seen.index(text) < self.n else None


def key_env(stage: str) -> dict[str, str]:
    return {"EMPLIFAI_JUDGE_API_KEY" if stage == "judge" else "EMPLIFAI_EMOTION_API_KEY": KEY}


def with_key(stage: str, args: list[str]) -> list[str]:
    who = "judge" if stage == "judge" else "predictor"
    var = "EMPLIFAI_JUDGE_API_KEY" if stage == "judge" else "EMPLIFAI_EMOTION_API_KEY"
    return [a for a in args if not a.startswith(f"{who}.api_key_env=")] + [f"{who}.api_key_env={var}"]


def test_judge_key_echoed_in_long_error_pages_reaches_no_file(tmp_path):
    """Each error page quotes `Bearer <key>` after another amount of padding (around the 300-character cut of
    the error kept, and far past it): the judge completes, and no file holds the key or 8 characters of it."""
    prepared(tmp_path)
    with LLMTestServer(reply_fn=judge_reply, behaviour_fn=fail_some("評価基準: 流暢さ"),
                       echo_auth_in_errors=OFFSETS) as srv:
        run = Stage(tmp_path, "judge", with_key("judge", judge_args(srv.base_url, "judge.max_retries=2",
                                                                    "judge.max_failure_rate=null")),
                    env=key_env("judge")).ok()
        assert {h["Authorization"] for h in srv.headers} == {f"Bearer {KEY}"}  # the key was really sent
    scores = pd.read_parquet(tmp_path / "artifacts" / "judge" / "openai" / "scores.parquet")
    errors = scores[scores["detail"].str.startswith("error: HTTP 500")]
    assert len(errors) == 4 and errors["detail"].str.contains("scripted 500 x").all()  # the pages were kept
    assert run.rc == 0 and leaks(tmp_path, KEY) == []
    assert {"mlflow.db", "overrides.yaml", "judge.sqlite", "judge.log", "artifact"} <= scanned(tmp_path)


# after "scripted 500 " + padding + " for ", a server clipping its message at 320 characters shows 8-22 of the
# key's 43 characters within the 300 the client keeps (no whole key to replace, no "Bearer " to spot); quoted
# whole, the key straddles the client's cut at 300. An HTML page puts its head before the message: as much less.
CLIPPED = [260, 262, 265, 268, 270, 272, 274]
HTML_HEAD = HTML_PAGE.format(status="500", msg="\0").index("\0")


@pytest.mark.slow
@pytest.mark.parametrize("stage, page", [("judge", "html"), ("emotion", "json"), ("emotion", "html")])
def test_key_echoed_in_errors_reaches_no_file_when_the_stage_completes_or_fails(tmp_path, stage, page):
    """A completed run whose failed requests' error pages (JSON or HTML) quote a clipped piece of the key
    without its scheme, and a failed one (every request fails: exit 2, the first error in the message, the
    MLflow run FAILED with its failure tag) whose pages quote `Bearer <key>` across the client's cut."""
    prepared(tmp_path)
    make = judge_args if stage == "judge" else emotion_args
    who = "judge" if stage == "judge" else "predictor"
    shift = HTML_HEAD if page == "html" else 0
    with LLMTestServer(reply_fn=judge_reply if stage == "judge" else emotion_reply,
                       behaviour_fn=fail_some("評価基準: 流暢さ") if stage == "judge" else FailFirst(2),
                       echo_auth_in_errors=[pad - shift for pad in CLIPPED], error_page=page,
                       error_chars=320 - shift, echo_scheme=False,
                       models=("test-model", "another")) as srv:
        Stage(tmp_path, stage, with_key(stage, make(srv.base_url, f"{who}.max_retries=2",
                                                    f"{who}.max_failure_rate=null")), env=key_env(stage)).ok()
        srv.behaviour_fn, srv.default, srv.error_chars, srv.echo_scheme = None, "500", None, True
        failed = Stage(tmp_path, stage, with_key(stage, make(srv.base_url, f"{who}.max_retries=1",
                                                             f"{who}.model=another")),
                       env=key_env(stage)).wait()
        assert srv.headers[-1]["Authorization"] == f"Bearer {KEY}"
    out = tmp_path / "artifacts" / stage / "openai"
    kept = (pd.read_parquet(out / "scores.parquet")["detail"] if stage == "judge"
            else pd.read_parquet(out / "predictions.parquet")["reason"])
    assert kept.str.contains("HTTP 500: .*for \\*\\*\\*").sum() == (4 if stage == "judge" else 2)  # quoted, masked
    assert_one_line_error(failed, "requests to", "failed", "HTTP 500")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("emplifai").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert any("HTTP 500" in r.data.tags.get("failure", "") for r in runs)
    assert leaks(tmp_path, KEY) == []
    assert {"mlflow.db", "overrides.yaml", f"{stage}.sqlite", f"{stage}.log", "artifact"} <= scanned(tmp_path)


def credentials_url(srv: LLMTestServer) -> str:
    return srv.base_url.replace("http://", f"http://alice:{PASSWORD}@")


def assert_no_password_in_mlflow(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for run in client.search_runs([client.get_experiment_by_name("emplifai").experiment_id]):
        seen = json.dumps([run.info.run_name, run.data.params, run.data.tags], ensure_ascii=False)
        assert PASSWORD not in seen and "alice:" not in seen, seen
        assert "127.0.0.1" in seen  # the URL is there, without its credentials


def test_judge_credentials_in_base_url_work_and_reach_no_file(tmp_path):
    """`http://alice:<password>@host/v1`: sent as HTTP Basic auth; the password is in no param, tag, run name,
    overrides tag, cache namespace, log or .hydra/ file."""
    prepared(tmp_path)
    with LLMTestServer(reply_fn=judge_reply, script=["500"], echo_auth_in_errors=True) as srv:
        url = credentials_url(srv)
        Stage(tmp_path, "judge", judge_args(url, "judge.max_failure_rate=null")).ok()
        basic = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        assert {h.get("Authorization") for h in srv.headers} == {basic}  # the client still works
        with pytest.raises(UserError, match=r"carries a user:password and api_key_env .*keep one") as err:
            OpenAICompatClient(url, "m", "EMPLIFAI_JUDGE_API_KEY")  # also without preflight: both is an error
        assert PASSWORD not in str(err.value) and repr(OpenAICompatClient(url, "m")).count(PASSWORD) == 0
    assert_no_password_in_mlflow(tmp_path)
    with sqlite3.connect(tmp_path / ".cache" / "judge.sqlite") as db:
        spaces = {row[0] for row in db.execute("SELECT DISTINCT namespace FROM responses")}
    assert spaces and all("127.0.0.1" in s and PASSWORD not in s for s in spaces)
    assert leaks(tmp_path, PASSWORD) == []
    assert {"mlflow.db", "overrides.yaml", "hydra.yaml", "judge.log"} <= scanned(tmp_path)


@pytest.mark.slow
def test_emotion_credentials_in_base_url_work_and_reach_no_file(tmp_path):
    """As the judge's; and with a key as well (api_key_env): exit 2 with one line saying to keep one."""
    prepared(tmp_path)
    with LLMTestServer(reply_fn=emotion_reply) as srv:
        Stage(tmp_path, "emotion", emotion_args(credentials_url(srv))).ok()
        assert all(h.get("Authorization", "").startswith("Basic ") for h in srv.headers)
        both = Stage(tmp_path, "emotion", with_key("emotion", emotion_args(credentials_url(srv))),
                     env=key_env("emotion")).wait()
    assert_one_line_error(both, "base_url", "api_key_env", "keep one")  # a key and a password: which one?
    assert_no_password_in_mlflow(tmp_path)
    assert leaks(tmp_path, PASSWORD) == []
    assert {"mlflow.db", "overrides.yaml", "emotion.sqlite", "emotion.log"} <= scanned(tmp_path)
