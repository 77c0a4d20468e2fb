"""Config-group options composed by Hydra at run time, from `conf_dir` (default `${paths.root}/conf`).

A stage sometimes needs an option of a config group besides the one the defaults list chose: the emotion
stage runs several predictors, the judge loads `judge.model`, `models` materializes `models.names`.
Under DVC a stage runs from params.yaml (`-cd . -cn params`: conf/ composed once, no defaults list left), so
those options are composed here, explicitly from conf/, by Hydra's compose API: an option's own `defaults:`
(e.g. `predictor/vllm` → `openai` → `/llm@_here_: default`) is honoured, and interpolations (`${seed}`,
`${paths.root}`) resolve against the running config, overrides included. The stages that call this list
`conf/<group>` (and the groups its options' defaults pull in, e.g. `conf/llm`) as DVC deps. This is the only
code that reads conf/ files: no stage builds a path into conf/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from emplifai.core.app import APP_CONF  # the conf/ every stage app composes (app.py never imports config.py)
from emplifai.core.errors import UserError
from emplifai.core.paths import resolve


def conf_dir(cfg: DictConfig) -> Path:
    """The conf/ tree options are composed from: `conf_dir` (the project's conf/ under DVC and by hand); when
    that folder does not exist (e.g. `paths.root` moved to a scratch folder), the conf/ the stage apps
    themselves are composed from."""
    path = resolve(str(cfg.get("conf_dir") or APP_CONF))
    if path.is_dir():
        return path
    if APP_CONF.is_dir():
        return APP_CONF
    raise UserError(f"conf_dir={path} is not a folder: run from the project root or set conf_dir=/path/to/conf")


@contextmanager
def _hydra(conf: Path) -> Iterator[None]:
    """Hydra's compose API on `conf`, also inside a running @hydra.main app (its GlobalHydra is put back)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobRuntime

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    try:
        job_name = str(JobRuntime().get("name"))  # initialize_config_dir sets it; keep the app's
    except KeyError:
        job_name = "app"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf), job_name=job_name, version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def group_options(cfg: DictConfig, group: str) -> list[str]:
    """Option names of `conf/<group>/` as Hydra sees them."""
    from hydra.core.global_hydra import GlobalHydra

    with _hydra(conf_dir(cfg)):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def compose_option(cfg: DictConfig, group: str, option: str) -> DictConfig:
    """A copy of `cfg` whose `group` node is conf/<group>/<option>.yaml composed by Hydra (defaults honoured).

    The whole config is returned, not the node, so the node's interpolations resolve against this run's
    values (`${seed}`, `${paths.models}`, ...); take `.<group>` from it.
    """
    from hydra import compose
    from hydra.errors import MissingConfigException

    conf = conf_dir(cfg)
    try:
        with _hydra(conf):
            node = compose(config_name=None, overrides=[f"+{group}={option}"])[group]
    except MissingConfigException as err:
        raise UserError(f"{group}={option}: no such option in {conf / group} "
                        f"(options: {', '.join(group_options(cfg, group)) or 'none'})") from err
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(out):
        out[group] = node
    return out


def option_values(cfg: DictConfig, group: str, option: str) -> dict:
    """conf/<group>/<option>.yaml composed and resolved against `cfg`: a plain dict."""
    return OmegaConf.to_container(compose_option(cfg, group, option)[group], resolve=True)
