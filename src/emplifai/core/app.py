"""The Hydra entry point every stage shares: `python -m emplifai.<stage> [overrides]` runs `run(cfg)`.

`--help` prints the stage's own help (module docstring, its config group's settings, the config groups it can
switch) instead of Hydra's dump of the whole composed config; Hydra's `--cfg job`, `--info` and
`--hydra-help` are untouched. Messages go through `logging`: Hydra (conf/hydra/job_logging) sends them to
the console and to the run's log file `<hydra.run.dir>/<stage>.log`.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

from emplifai.core.errors import reported

APP_CONF = Path(__file__).resolve().parents[3] / "conf"  # the repository's conf/: what every stage composes
PACKAGE = Path(__file__).resolve().parents[1]  # src/emplifai: each `python -m emplifai.<name>` lives here
HELP_FLAGS = ("-h", "--help")
MAX_BLOCK = 6  # a setting spanning more lines (a list of 28 emotions) is shown by its first line only

log = logging.getLogger(__name__)


def stage_main(stage: str, run: Callable[[DictConfig], Any]) -> None:
    """Compose conf/config.yaml + overrides, run the stage; a UserError prints one line and exits 2."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(stage_help(stage, sys.argv[1:]))
        sys.exit(0)

    def main(cfg: DictConfig) -> Any:
        logging.captureWarnings(True)  # warnings.warn lands in the run's log file too
        for noisy in ("httpx", "httpcore"):  # one INFO line per request: thousands per judge run
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _mask_saved_config()
        start = time.perf_counter()
        result = run(cfg)
        log.info("%s: done in %.1f s%s", stage, time.perf_counter() - start, _log_file_note())
        return result

    main.__module__ = f"emplifai.{stage}"  # Hydra names the job (and its log file) after this module
    hydra.main(config_path=str(APP_CONF), config_name="config", version_base="1.3")(reported(main))()


def _mask_saved_config() -> None:
    """Hydra saved the overrides and the composed config (.hydra/*.yaml, a sweep's multirun.yaml) before the
    stage starts: a credential given on the command line (`judge.base_url=https://user:pass@host/v1`) is
    masked there as in MLflow (`provenance.mask`), so no file keeps it."""
    from hydra.core.hydra_config import HydraConfig

    from emplifai.core.paths import write_text
    from emplifai.core.provenance import mask

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    saved = list((Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml")) if hc.output_subdir else []
    saved.append(Path(hc.sweep.dir) / "multirun.yaml")
    for path in saved:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        masked = mask(text)
        if masked != text:
            write_text(path, masked)


def _log_file_note() -> str:
    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return f" (log: {os.path.relpath(files[0])})" if files else ""


# --- what can be run: `python -m emplifai.<name>` ------------------------------------------------------------

def entry_points() -> dict[str, Path]:
    """Every `python -m emplifai.<name>`: a package with a `__main__.py`, or a module with a `__main__` block."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.iterdir()):
        if path.is_dir() and (path / "__main__.py").is_file():
            found[path.name] = path / "__main__.py"
        elif path.suffix == ".py" and not path.name.startswith("_") \
                and re.search(r"^if __name__ == .__main__.:", path.read_text(encoding="utf-8"), re.M):
            found[path.stem] = path
    return found


def is_stage(name: str, entry: Path) -> bool:
    """A stage is a package whose entry point is `stage_main("<name>", run)` (tests/test_architecture.py)."""
    return entry.name == "__main__.py" and f'stage_main("{name}", ' in entry.read_text(encoding="utf-8")


def docstring(entry: Path) -> str:
    """The module docstring of an entry point, read without importing it (stages import torch: seconds)."""
    return (ast.get_docstring(ast.parse(entry.read_text(encoding="utf-8")), clean=False) or "").strip()


def pipeline() -> dict[str, list[str]]:
    """dvc.yaml's stages in pipeline order, each with its `params` (the config it reads); {} without dvc.yaml."""
    path = APP_CONF.parent / "dvc.yaml"
    if not path.is_file():
        return {}
    stages = yaml.safe_load(path.read_text(encoding="utf-8")).get("stages") or {}
    return {name: [str(p) for p in (spec.get("params") or [])] for name, spec in stages.items()}


# --- `--help` ------------------------------------------------------------------------------------------------

def stage_help(name: str, argv: Sequence[str] = ()) -> str:
    """The docstring of `name`, its config group's settings (the option `argv` chooses) and its groups."""
    entry = entry_points().get(name)
    parts = [docstring(entry) if entry else f"emplifai.{name}", "",
             f"usage: emplifai {name} [key=value ...] [-m] [--help]   (the same as python -m emplifai.{name} ...)"]
    groups = config_groups()
    choices = default_choices(argv, groups)
    reads = pipeline().get(name)
    own = [name] if name in groups else [p for p in reads or [] if p in groups]
    for group in own:
        option = choices.get(group)
        file = APP_CONF / group / f"{option}.yaml"
        if option and file.is_file():
            parts += ["", f"Settings of `{group}` (conf/{group}/{option}.yaml; change one with {group}.<key>=value):",
                      *("  " + line for line in settings(file))]
    tops = {p.split(".")[0] for p in reads or []} | set(own) | {"experiment"}
    shown = [g for g in groups if reads is None or g.split("/")[0] in tops]
    if shown:
        width = max(len(g) for g in shown)
        parts += ["", "Config groups (group=option; * marks the one this run would use):"]
        parts += [textwrap.fill(" | ".join(o + "*" * (o == choices.get(g)) for o in groups[g]), 110,
                                initial_indent=f"  {g.ljust(width)}  ", subsequent_indent=" " * (width + 4),
                                break_on_hyphens=False) for g in shown]
    if reads:
        parts += ["", "Reads (its DVC params): " + ", ".join(reads)]
    parts += ["", "Hydra: -m key=a,b (multirun), --cfg job (the composed config), --info, --hydra-help,",
              "       -cd DIR -cn NAME (another config, e.g. DVC's -cd . -cn params)."]
    return "\n".join(parts)


def config_groups(conf: Path = APP_CONF) -> dict[str, list[str]]:
    """{group: options} for conf/<group>/ and nested conf/<group>/<sub>/ (hydra's own groups left out)."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        rel = folder.relative_to(conf).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and not rel.startswith("hydra"):
            groups[rel] = options
    return groups


def default_choices(argv: Sequence[str], groups: dict[str, list[str]]) -> dict[str, str]:
    """Each group's option: conf/config.yaml's defaults list, nested groups from their parent's, then argv."""
    choices = _defaults(APP_CONF / "config.yaml")
    for arg in argv:
        key, eq, value = arg.lstrip("+").partition("=")
        if eq and key in groups:
            choices[key] = value
    for group in list(choices):
        file = APP_CONF / group / f"{choices[group]}.yaml"
        if file.is_file():
            for sub, option in _defaults(file).items():
                choices.setdefault(f"{group}/{sub}", option)
    return choices


def _defaults(file: Path) -> dict[str, str]:
    entries = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("defaults") or []
    found: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = str(key).split()[-1]  # "optional experiment", "override hydra/launcher"
                if value is not None and not group.startswith("/"):
                    found[group] = str(value)
    return found


def settings(file: Path) -> list[str]:
    """The option file's keys as written (value and comment), minus its header comment and defaults list."""
    lines = file.read_text(encoding="utf-8").splitlines()
    while lines and (not lines[0].strip() or lines[0].startswith("#")):
        lines.pop(0)
    blocks: list[list[str]] = []
    for line in lines:
        if re.match(r"\S", line) or not blocks:  # a top-level key (or comment) starts a block
            blocks.append([line])
        else:
            blocks[-1].append(line)
    shown: list[str] = []
    for block in blocks:
        if block[0].startswith("defaults:"):
            continue
        body = [ln for ln in block[1:] if ln.strip()]
        shown += block[:1] + (body if len(body) <= MAX_BLOCK else [f"  … ({len(body)} more lines)"])
    return shown
