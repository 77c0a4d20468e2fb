"""The house rules of ../shared/ARCHITECTURE.md that code can check: the map names every package, no two
modules share a file name, one importer per outside library that must exist once, layers point down."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "emplifai"
STAGES = ("prepare", "models", "emotion", "train", "generate", "judge", "agreement", "report")
# packages that hold no stage's logic may not import a stage package (layers only point down)
SHARED = ("core", "data", "lm", "llm", "metrics")
STATISTICS = ("bootstrap.py", "coefficients.py", "tables.py", "systems.py", "alt_test.py")  # never load weights


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_map_names_every_package():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = sorted(str(p.parent.relative_to(SRC)) for p in SRC.rglob("__init__.py")
                      if p.parent != SRC and "__pycache__" not in p.parts)
    missing = [p for p in packages if f"`{p}/`" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing} (write them as `name/`)"


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in modules() if p.name not in ("__init__.py", "__main__.py"))
    assert not [n for n, k in names.items() if k > 1]


def test_every_stage_is_one_package_with_its_entry_point():
    for stage in STAGES:
        entry = SRC / stage / "__main__.py"
        assert entry.exists(), f"python -m emplifai.{stage} needs {entry}"
        assert f'stage_main("{stage}", ' in entry.read_text(encoding="utf-8")
        assert (ROOT / "conf" / stage).is_dir() or stage in ("prepare", "report"), f"no conf/{stage} group"


@pytest.mark.parametrize("library, owner", [("mlflow", "core/tracking.py"), ("bert_score", "metrics/bertscore.py")])
def test_one_module_imports(library, owner):
    users = sorted(str(p.relative_to(SRC)) for p in modules()
                   if any(m == library or m.startswith(library + ".") for m in imports(p)))
    assert users == [owner]


def test_layers_point_down():
    for path in modules():
        rel = path.relative_to(SRC)
        mods = {m for m in imports(path) if m.startswith("emplifai.")}
        if rel.parts[0] in SHARED:
            stage_imports = sorted(m for m in mods if m.split(".")[1] in STAGES)
            assert not stage_imports, f"{rel} (shared) imports stage code {stage_imports}"
        if rel.parts[0] in ("data", "llm") or rel.name in STATISTICS:
            assert not [m for m in mods if m.startswith("emplifai.lm")], f"{rel} reaches model weights"
        entry_imports = sorted(m for m in mods if m.endswith(".__main__"))
        if rel.name != "preflight.py":  # preflight asks each stage how it resolves what it will load
            assert not entry_imports, f"{rel} imports a stage entry point {entry_imports}"
