"""User errors: bad data, bad config, missing weights. Reported as one clear message, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Something the user can fix; the message says what and where."""


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
