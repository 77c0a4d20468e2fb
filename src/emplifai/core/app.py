"""The Hydra entry point every stage shares: `python -m emplifai.<stage> [overrides]` runs `run(cfg)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from emplifai.core.errors import reported

APP_CONF = Path(__file__).resolve().parents[3] / "conf"  # the repository's conf/: what every stage composes


def stage_main(stage: str, run: Callable[[DictConfig], Any]) -> None:
    """Compose conf/config.yaml + overrides, run the stage; a UserError prints one line and exits 2."""

    def main(cfg: DictConfig) -> Any:
        return run(cfg)

    main.__module__ = f"emplifai.{stage}"  # Hydra names the job (and its log file) after this module
    hydra.main(config_path=str(APP_CONF), config_name="config", version_base="1.3")(reported(main))()
