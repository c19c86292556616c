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


class NothingToPrice(UserError):
    """The model has channels to prune but no layer the target's cost model can price
    (integer operators, say). Not bad input: the job copies the model through unchanged
    with this reason, as it does a model with nothing prunable."""
