"""Write params.yaml: conf/ composed exactly as `dvc exp run` composes it (DVC's own function).

conf/ is the single source; params.yaml is what `dvc repro` reads and tracks. `make params` (or any
`dvc exp run`) regenerates it; a test fails when the committed file is stale.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from dvc.utils.hydra import compose_and_dump

log = logging.getLogger(__name__)


def write_params(root: Path, overrides: list[str], output: Path | None = None) -> Path:
    output = output or root / "params.yaml"
    compose_and_dump(output, str((root / "conf").resolve()), None, "config", str(root), overrides)
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s", write_params(Path.cwd(), sys.argv[1:]))
