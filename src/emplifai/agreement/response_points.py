"""Judge vs human per response, as plot data: reports/judge/agreement/<judge>/scatter.csv.

One point per rated response: the judge's and the raters' mean over every criterion — the pairs behind
`response_level` in the coefficient table (metrics/tables.py's Cube, so the scatter shows what that
coefficient measures; a criterion mean is never pooled across criteria). DVC's `scatter` template draws them,
so `dvc plots diff` overlays two versions' points. A response the judge (or every rater) did not score on
every criterion has no mean and no point, as it has no pair in the coefficients (and Vega would draw an empty
cell as 0).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from emplifai.metrics.tables import Cube


def response_points(merged: pd.DataFrame, criteria: list[str]) -> pd.DataFrame:
    """response_id, system, human_mean (mean over raters of their criterion means), judge (its mean), by id;
    only responses with both means."""
    cube = Cube.from_merged(merged, criteria)
    judge, raters = cube.response_means()
    with warnings.catch_warnings():  # a response no rater scored on every criterion: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        human = np.nanmean(raters, axis=0) if len(raters) else np.full(len(cube.responses), np.nan)
    points = pd.DataFrame({"response_id": cube.responses.astype(str), "system": cube.systems.astype(str),
                           "human_mean": human, "judge": judge})
    return points.dropna(subset=["human_mean", "judge"]).reset_index(drop=True)
