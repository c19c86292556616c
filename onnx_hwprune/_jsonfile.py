"""Reading a user's JSON file (plans, profile exports) without surprises.

Every way a file can be wrong becomes one :class:`UserError` line: unreadable, not UTF-8,
too large, not JSON, nested past Python's recursion limit, or holding ``NaN`` /
``Infinity`` (which Python's json accepts and JSON itself does not). Numbers too large
for a float (``1e400``) are refused too rather than read as infinity.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from onnx_hwprune.errors import UserError

__all__ = ["MAX_JSON_BYTES", "read_json"]

MAX_JSON_BYTES = 256 * 2**20  # far above any plan or profile export seen; stops a runaway read


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed document at ``path``; ``what`` names it in the error ("plan")."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"cannot read {what} {path}: larger than {MAX_JSON_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read {what} {path}: not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise UserError(f"cannot read {what} {path}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and the hooks above
        raise UserError(f"cannot read {what} {path}: {str(exc).splitlines()[0]}") from None
