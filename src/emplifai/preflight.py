"""Preflight: check in seconds that what a stage will use is there, before it does an hour of other work.

    python -m emplifai.preflight                              # every stage of the pipeline, as a table
    python -m emplifai.preflight experiment=emplifai_study    # the study's setup: weights, vLLM servers, GPU

Every stage's `run(cfg)` starts with `check(cfg, "<stage>")`. It looks only at what that stage uses: model
folders (a config.json where `emplifai.lm` will look), LoRA adapters, `device=cuda`, and each
configured OpenAI-compatible server (`GET {base_url}/models` must list the configured model id, within a
few seconds, with the key from `$api_key_env` when one is named — the key is never printed). Every problem
is reported at once, in one line with its fix (UserError: exit 2). `preflight=false` skips the check.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emplifai.core.app import stage_main
from emplifai.core.errors import UserError
from emplifai.core.paths import resolve

PIPELINE = ("prepare", "emotion", "train", "generate", "judge", "agreement", "report")
log = logging.getLogger(__name__)
TIMEOUT_S = 5.0  # a server that cannot list its models in 5 s will not grade thousands of responses either


class PreflightError(UserError):
    """Something a stage needs is missing; the message lists every such thing with its fix."""


@dataclass
class Item:
    """One checked thing; `problem` is "" when it is fine. `made_by`: the pipeline stage that creates it."""

    stage: str
    what: str
    where: str
    problem: str = ""
    fix: str = ""
    made_by: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def line(self) -> str:
        return f"{self.what} ({self.where}): {self.problem}" + (f" — fix: {self.fix}" if self.fix else "")


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def weights(stage: str, kind: str, mcfg: Mapping[str, Any], packaged_names: Iterable[str] = ()) -> Item:
    """A model/encoder folder with config.json, where lm.load looks (or an allowed hub download)."""
    name = mcfg.get("name")
    path = resolve(mcfg["path"]) if mcfg.get("path") else None
    item = Item(stage, f"{kind} {name}", str(path or "(no path)"))
    if path is not None and (path / "config.json").exists():
        return item
    if mcfg.get("allow_download") and mcfg.get("hub_id") and os.environ.get("HF_HUB_OFFLINE") != "1":
        item.where = f"hub {mcfg['hub_id']}"
        return item
    item.problem = "no config.json there"
    if mcfg.get("packaged"):
        item.fix = f"`dvc repro models` (or `python -m emplifai.models models.names=[{name}]`)"
        item.made_by = "models" if name in set(packaged_names) else ""
    else:
        item.fix = (f"`huggingface-cli download {mcfg.get('hub_id') or '<hub id>'} --local-dir {path}`, "
                    f"or {kind}.path=/weights/{name} if it is elsewhere")
    return item


def adapter(stage: str, folder: str, model_name: str) -> Item:
    """A LoRA adapter folder trained on the configured base model (what generate loads)."""
    import json

    path = resolve(folder)
    item = Item(stage, f"adapter {path.name}", str(path), made_by="train")
    meta = path / "emplifai_adapter.json"
    if not (path / "adapter_config.json").exists():
        item.problem = "no adapter_config.json there"
        item.fix = f"train it (`dvc repro`, or `python -m emplifai.train` named {path.name}), or fix generate.adapters"
    elif meta.exists() and json.loads(meta.read_text(encoding="utf-8")).get("model") not in (None, model_name):
        item.problem, item.made_by = f"trained on another base model, not {model_name}", ""
        item.fix = "run with that adapter's model=..., or retrain it"
    return item


def server(stage: str, who: str, node: Mapping[str, Any], timeout_s: float = TIMEOUT_S,
           weights_id: str = "<weights>") -> Item:
    """`GET {base_url}/models` lists `model` (OpenAI/vLLM: {"data": [{"id": ...}]})."""
    import httpx

    from emplifai.llm.protocol import split_credentials

    # a user:password@ in the URL goes as Basic auth, never into the table, the log or httpx's request log
    url, basic = split_credentials(str(node.get("base_url") or ""))
    model, key_env = node.get("model"), node.get("api_key_env")
    item = Item(stage, f"{who} server, model {model}", url or "(no base_url)")
    from urllib.parse import urlparse

    port = urlparse(url).port or "<port>"
    start = f"start it (`vllm serve {weights_id} --served-model-name {model} --port {port}`) or set {who}.base_url="
    if not url or not model:
        item.problem, item.fix = "base_url and model must both be set", f"set {who}.base_url= and {who}.model="
        return item
    if basic and key_env:  # both would be the Authorization header (the client refuses it too)
        item.problem = f"{who}.base_url carries a user:password and {who}.api_key_env names a key"
        item.fix = f"keep one: {who}.api_key_env=null, or base_url without user:password@"
        return item
    headers = {}
    if key_env:
        key = os.environ.get(str(key_env))
        if not key:
            item.problem = f"environment variable {key_env} (the API key) is not set"
            item.fix = f"export {key_env}=... (the key goes only in that variable)"
            return item
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = httpx.get(f"{url.rstrip('/')}/models", headers=headers, timeout=timeout_s,
                         auth=None if headers else basic)
    except httpx.TimeoutException:
        item.problem, item.fix = f"no answer within {timeout_s:.0f} s", start
        return item
    except httpx.HTTPError as err:  # refused, DNS, TLS (the message holds no request headers)
        item.problem, item.fix = f"unreachable ({err or type(err).__name__})", start
        return item
    if resp.status_code in (401, 403):
        item.problem = f"HTTP {resp.status_code}: the server refused the key from ${key_env or '(none)'}"
        item.fix = f"check {who}.api_key_env and that variable"
    elif resp.status_code != 200:
        item.problem, item.fix = f"GET /models answered HTTP {resp.status_code}", start
    else:
        try:
            ids = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
            ids = []
        if model not in ids:
            item.problem = f"does not serve {model!r}; it serves {ids}"
            item.fix = f"{who}.model=<one of those>, or serve it with --served-model-name {model}"
    return item


def device(stage: str, cfg: DictConfig) -> list[Item]:
    name = str(cfg.get("device") or "cpu")
    if not name.startswith("cuda"):
        return []
    import torch

    ok = torch.cuda.is_available()
    return [Item(stage, f"device {name}", "torch.cuda", "" if ok else "no CUDA device visible",
                 "" if ok else "device=cpu (or device=auto), or run on a GPU node")]


def _hub_id(cfg: DictConfig, name: Any) -> str:
    """The hub id of conf/model/<served model id>.yaml, for the `vllm serve` hint; "<weights>" if none."""
    from emplifai.core.config import option_values

    try:
        return str(option_values(cfg, "model", str(name)).get("hub_id") or "<weights>")
    except UserError:
        return "<weights>"


def _servers(stage: str, cfg: DictConfig) -> list[tuple[str, str, dict]]:
    """(stage, who, node) of every OpenAI-compatible server the stage calls."""
    if stage == "judge" and cfg.judge.get("backend") == "openai":
        return [(stage, "judge", _plain(cfg.judge))]
    if stage == "emotion":
        return [(stage, "predictor", _plain(p)) for p in _predictors(cfg)
                if str(p.get("type") or p.get("name")) == "openai"]
    return []


def _predictors(cfg: DictConfig) -> list[Any]:
    from emplifai.emotion.__main__ import (
        predictor_cfgs,  # how the emotion stage itself composes its predictors
    )

    return [one.predictor for one in predictor_cfgs(cfg)]


def local_items(cfg: DictConfig, stage: str) -> list[Item]:
    """Everything but servers: weights, adapters, device. Config errors become items too."""
    packaged = list(cfg.get("models", {}).get("names") or [])
    model = _plain(cfg.model)
    items: list[Item] = []
    if stage == "prepare" and not resolve(cfg.data.raw_dir).is_dir():
        items.append(Item(stage, "raw data", str(resolve(cfg.data.raw_dir)), "missing",
                          f"`python -m emplifai.sample {cfg.data.raw_dir}` (the shipped sample), or data.raw_dir="))
    if stage == "emotion":
        try:
            kinds = {str(p.get("type") or p.get("name")) for p in _predictors(cfg)}
        except UserError as err:
            return [Item(stage, "emotion.predictors", str(cfg.emotion.get("predictors")), str(err))]
        items.append(weights(stage, "encoder", _plain(cfg.encoder), packaged))
        if kinds & {"hf_rank", "hf_generate"}:
            items.append(weights(stage, "model", model, packaged))
        source, path = str(cfg.emotion.vectors.source), cfg.emotion.vectors.get("fasttext_bin")
        if source == "chive" and importlib.util.find_spec("ja_ginza") is None:
            items.append(Item(stage, "chiVe vectors", "package ja-ginza", "not installed",
                              "`make setup` (pip install --no-deps ja-ginza), or emotion.vectors.source=trained"))
        if source == "fasttext_bin" and not (path and resolve(path).is_file()):
            items.append(Item(stage, "fastText vectors", str(resolve(path)) if path else "not set", "missing",
                              "emotion.vectors.fasttext_bin=/path/cc.ja.300.bin, or emotion.vectors.source=chive"))
    if stage in ("train", "generate"):
        items.append(weights(stage, "model", model, packaged))
    if stage == "generate":
        items.append(weights(stage, "encoder", _plain(cfg.encoder), packaged))
        from emplifai.generate.__main__ import adapter_dirs

        try:  # `sweep` → the train sweep's folders, exactly as generate resolves them
            items += [adapter(stage, str(a), str(model.get("name"))) for a in adapter_dirs(cfg)]
        except UserError as err:
            items.append(Item(stage, "generate.adapters", str(cfg.generate.get("adapters")), str(err)))
    if stage == "judge" and cfg.judge.get("backend") == "hf_local":
        from emplifai.judge.__main__ import judge_model_cfg

        try:
            items.append(weights(stage, "judge model", judge_model_cfg(cfg), packaged))
        except UserError as err:
            items.append(Item(stage, "judge model", str(cfg.judge.get("model")), str(err)))
    if stage in ("emotion", "train", "generate") or (stage == "judge" and cfg.judge.get("backend") == "hf_local"):
        items += device(stage, cfg)
    return items


def collect(cfg: DictConfig, stages: Iterable[str], timeout_s: float = TIMEOUT_S) -> list[Item]:
    """Items of every stage; the servers are asked in parallel, so N dead servers cost one timeout."""
    items: list[Item] = []
    servers: list[tuple[str, str, dict]] = []
    for stage in stages:
        items += local_items(cfg, stage)
        try:
            servers += _servers(stage, cfg)
        except UserError:
            pass  # already reported as the emotion.predictors item
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        hints = [_hub_id(cfg, node.get("model")) for _, _, node in servers]  # Hydra compose: not in threads
        items += pool.map(lambda s, h: server(*s, timeout_s, h), servers, hints)
    order = {s: i for i, s in enumerate(PIPELINE)}
    return sorted(items, key=lambda it: order.get(it.stage, len(order)))  # stable: stage by stage


def check(cfg: DictConfig, stage: str, timeout_s: float = TIMEOUT_S) -> list[Item]:
    """The first line of every stage: log what was checked; raise PreflightError listing every problem."""
    if not cfg.get("preflight", True):
        return []
    items = collect(cfg, [stage], timeout_s)
    for it in items:
        log.info("preflight[%s]: %s  %s  %s", stage, "ok" if it.ok else "MISSING", it.what, it.where)
    bad = [it for it in items if not it.ok]
    if bad:
        raise PreflightError(f"preflight[{stage}]: {len(bad)} problem(s): " + "; ".join(it.line() for it in bad)
                             + " (preflight=false skips this check)")
    return items


def table(items: list[Item]) -> str:
    """stage | check | where | status | fix; `pending` = made by an earlier pipeline stage."""
    rows = [("stage", "check", "where", "status", "fix")]
    for it in items:
        status = "ok" if it.ok else ("pending" if it.made_by else "MISSING")
        fix = "" if it.ok else (f"made by stage {it.made_by}: {it.fix}" if it.made_by else it.fix)
        rows.append((it.stage, it.what, it.where, status if it.ok else f"{status}: {it.problem}", fix))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]).rstrip()
                     for r in rows)


def pipeline(cfg: DictConfig) -> list[Item]:
    """Every stage of the pipeline for this config; logs the table; raises when something is MISSING."""
    items = collect(cfg, PIPELINE)
    quiet = [Item(s, "(no model, adapter or server to check)", "-") for s in PIPELINE
             if not any(it.stage == s for it in items)]
    log.info(table(sorted(items + quiet, key=lambda it: PIPELINE.index(it.stage))))
    missing = [it for it in items if not it.ok and not it.made_by]
    if missing:
        raise PreflightError(f"preflight: {len(missing)} problem(s), listed in the table above")
    return items


if __name__ == "__main__":
    stage_main("preflight", pipeline)
