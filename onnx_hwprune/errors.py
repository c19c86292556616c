"""Errors that mean "the user's input is wrong", as opposed to a bug in onnx-hwprune.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input: a missing or corrupt file, an invalid option, an unusable model.

    The message must fit on one line and say what to do about it where that is known.
    """
