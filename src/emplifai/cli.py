"""`emplifai <stage> [overrides]`: the console script; the same run as `python -m emplifai.<stage> [overrides]`.

    emplifai                                   # the stages and tools, one line each
    emplifai prepare data.strict=false         # = python -m emplifai.prepare data.strict=false
    emplifai train -m train.epochs=1,2,3       # Hydra multirun, -cd/-cn, --cfg job, --info: all as with -m
    emplifai judge --help                      # the stage's docstring, settings and config groups

The stage module runs as `__main__` (runpy, exactly like `python -m`), so Hydra sees the same app, job name,
config and log files. `--help` is answered here without importing the stage (the stages import torch).
"""

from __future__ import annotations

import difflib
import re
import runpy
import sys
from collections.abc import Sequence

from emplifai import __version__
from emplifai.core.app import HELP_FLAGS, docstring, entry_points, is_stage, pipeline, stage_help


def commands() -> tuple[list[str], list[str]]:
    """(stages in pipeline order, tools): every `python -m emplifai.<name>`; a stage is a dvc.yaml stage."""
    entries = entry_points()
    order = list(pipeline())
    if order:
        stages = [n for n in order if n in entries]
    else:  # no dvc.yaml (an installed copy): the packages whose entry point is stage_main
        stages = [n for n, e in entries.items() if is_stage(n, e)]
    return stages, [n for n in entries if n not in stages]


def summary(name: str) -> str:
    """The first docstring line, without a leading "Stage `name`:" (or "Tool `name` (...):") that repeats it."""
    first = (docstring(entry_points()[name]).splitlines() or [""])[0]
    return re.sub(rf"^((stage|tool)\s+)?`?{name}`?(\s*\([^)]*\))?\s*:\s*", "", first, flags=re.I)


def usage() -> str:
    stages, tools = commands()
    width = max(map(len, stages + tools))
    lines = ["usage: emplifai <stage> [key=value ...] [-m] [--help]   (= python -m emplifai.<stage> ...)", "",
             "Stages (the DVC pipeline, in order):"]
    lines += [f"  {n.ljust(width)}  {summary(n)}" for n in stages]
    if tools:
        lines += ["", "Tools:"] + [f"  {n.ljust(width)}  {summary(n)}" for n in tools]
    lines += ["", "emplifai <stage> --help: its settings and config groups. Hydra's own: --cfg job, --info,",
              "--hydra-help. Overrides are Hydra's (key=value, group=option, -m key=a,b)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_FLAGS:
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"emplifai {__version__}")
        return 0
    name, rest = args[0], args[1:]
    stages, tools = commands()
    if name not in stages + tools:
        near = difflib.get_close_matches(name, stages + tools, n=1)
        hint = f" (did you mean `{near[0]}`?)" if near else ""
        where = "put the stage first: " if name.startswith("-") else ""
        print(f"emplifai: unknown stage {name!r}{hint}; {where}emplifai <stage> [overrides]. "
              f"Stages: {', '.join(stages)}; tools: {', '.join(tools)}", file=sys.stderr)
        return 2
    if any(arg in HELP_FLAGS for arg in rest):
        entry = entry_points()[name]
        print(stage_help(name, rest) if "stage_main(" in entry.read_text(encoding="utf-8") else docstring(entry))
        return 0
    sys.argv = [sys.argv[0], *rest]  # runpy puts the module's file in argv[0], as `python -m` does
    runpy.run_module(f"emplifai.{name}", run_name="__main__", alter_sys=True)
    return 0
