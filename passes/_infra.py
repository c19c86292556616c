"""Pass infrastructure: passes, the state they transform, and the scoped context.

Modelled on TVM's ``Sequential``/``PassContext`` and onnx ir-py's pass classes:

- a :class:`Pass` is configured in ``__init__``, keeps no state between calls, and maps a
  :class:`Module` to a *new* ``Module`` (the input is never modified);
- :class:`Sequential` is a flat, named list of passes; an error names the passes that
  had already run;
- :class:`PassContext` (``with PassContext(...):``, read by ``PassContext.current()``)
  carries what is shared by all passes: target, seed, instruments and typed, registered,
  dotted config keys. An unknown key is an error that lists the candidates;
- instruments see every pass run; with ``verify.each_pass`` the :class:`VerifierInstrument`
  checks the model (ONNX checker + strict shape inference) after each pass (debug mode).
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import difflib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.analysis.groups import ChannelGroups
from onnx_hwprune.passes.plan.plan import Plan
from onnx_hwprune.target import Target

__all__ = [
    "Module",
    "Pass",
    "Sequential",
    "PassContext",
    "PassInstrument",
    "PassError",
    "ConfigKey",
    "CONFIG_KEYS",
    "TimingInstrument",
    "VerifierInstrument",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Module:
    """What passes transform: the graph plus the analysis results computed so far."""

    graph: gs.Graph
    groups: ChannelGroups | None = None
    scores: Mapping[str, np.ndarray] | None = None
    plan: Plan | None = None
    # Measured cost of removing channels (passes/analysis/sensitivity.py SensitivityTable);
    # the latency planners minimise it instead of importance sums when present.
    sensitivity: Any = None

    def replace(self, **changes: Any) -> Module:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ConfigKey:
    """A typed config key; ``target_field`` names the :class:`Target` attribute that
    gives its value when the config does not (the target's own constraint)."""

    type: type
    default: Any
    doc: str
    target_field: str | None = None


CONFIG_KEYS: Mapping[str, ConfigKey] = {
    "plan.min_channels": ConfigKey(int, 1, "no group keeps fewer channels than this"),
    "plan.max_group_ratio": ConfigKey(
        # 0.75: every group keeps at least a quarter of its channels (a 16-channel stem
        # keeps 4, not 2) unless the user asks for deeper cuts explicitly.
        float,
        0.75,
        "global and latency planning remove at most this share of a group",
    ),
    "verify.each_pass": ConfigKey(bool, False, "run the model verifier after every pass (debug)"),
    "plan.stair_tolerance": ConfigKey(float, 0.01, "latency levels closer than this share a stair"),
    "plan.channel_multiple": ConfigKey(
        int,
        1,
        "latency planning keeps counts that are multiples of this (set by the target)",
        target_field="channel_multiple",
    ),
    "plan.time_limit": ConfigKey(float, 5.0, "seconds the exact planner's solver may search"),
    "plan.max_levels": ConfigKey(int, 32, "the exact planner's candidate counts per group"),
    "plan.mip_gap": ConfigKey(float, 1e-3, "the exact planner stops within this relative gap"),
    "plan.sensitivity_rows": ConfigKey(
        int, 4096, "measured sensitivity: patch rows per layer (at least 4x its columns)"
    ),
    "plan.sensitivity_samples": ConfigKey(
        int, 256, "measured sensitivity: calibration samples streamed at most"
    ),
    "plan.sensitivity_noise": ConfigKey(
        float,
        0.1,
        "measured sensitivity: relative noise energy that weighs each layer "
        "by its effect on the outputs (0: equal weights)",
    ),
    "plan.sensitivity_noise_samples": ConfigKey(
        int, 32, "measured sensitivity: calibration samples the output weights use"
    ),
    "plan.sensitivity_order": ConfigKey(
        str,
        "greedy",
        "measured sensitivity: which channels leave first: 'criterion' (the --criterion "
        "scores) or 'greedy' (the channel the others can best refit, one at a time)",
    ),
}


class PassInstrument(Protocol):
    def run_before_pass(self, mod: Module, pass_: Pass) -> None: ...

    def run_after_pass(self, mod: Module, pass_: Pass) -> None: ...


@dataclass(frozen=True)
class PassContext:
    """Shared settings for a pass pipeline. Immutable; scoped with ``with``."""

    target: Target | None = None  # what the passes plan for (runtime/targets.py)
    seed: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    instruments: Sequence[PassInstrument] = ()
    cost_model: Any = None  # the target's cost model (cost_models.NetworkCostModel), if any
    # Activation provider: ``activations(graph, {reducer kind: tensor names})`` ->
    # ``{kind: {tensor: per-channel statistic}}`` over calibration data. The runtime
    # makes one (runtime.calib_stats.channel_stats_provider); passes never run models.
    activations: Any = None
    # Tensor provider: ``tensors([(graph, tensor names), ...])`` -> an iterator with, per
    # calibration batch, a tuple of ``{name: array}`` (each graph run on that batch), so
    # a pass can stream raw tensors (runtime.calib_stats.tensor_stream_provider). A graph
    # that will not change may be given as its export (frontends.onnx.export_model).
    tensors: Any = None

    _current: ClassVar[contextvars.ContextVar[PassContext | None]] = contextvars.ContextVar(
        "onnx_hwprune_pass_context", default=None
    )

    def __post_init__(self) -> None:
        if self.target is not None and not isinstance(self.target, Target):
            raise TypeError(f"PassContext.target takes a Target record, not {self.target!r}")
        for key, value in self.config.items():
            spec = CONFIG_KEYS.get(key)
            if spec is None:
                near = difflib.get_close_matches(key, CONFIG_KEYS, n=3) or sorted(CONFIG_KEYS)
                raise UserError(f"unknown config key {key!r}; candidates: {', '.join(near)}")
            if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
                raise UserError(f"config {key} must be {spec.type.__name__}, got {value!r}")

    def get(self, key: str) -> Any:
        if key not in CONFIG_KEYS:
            raise KeyError(key)
        if key in self.config:
            return self.config[key]
        spec = CONFIG_KEYS[key]
        if spec.target_field and self.target is not None:
            return getattr(self.target, spec.target_field)
        return spec.default

    def __enter__(self) -> PassContext:
        object.__setattr__(self, "_token", PassContext._current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        PassContext._current.reset(self._token)  # type: ignore[attr-defined]

    @staticmethod
    def current() -> PassContext:
        return PassContext._current.get() or PassContext()


class PassError(RuntimeError):
    """A pass failed; the message names it and the passes that had already run."""


class Pass(abc.ABC):
    """A transformation ``Module -> Module``. Subclasses implement :meth:`run`.

    ``requires`` checks preconditions before running (e.g. that groups were analysed).
    """

    name: ClassVar[str] = "Pass"

    def requires(self, mod: Module) -> None:
        return None

    @abc.abstractmethod
    def run(self, mod: Module, ctx: PassContext) -> Module: ...

    def __call__(self, mod: Module, ctx: PassContext | None = None) -> Module:
        ctx = ctx or PassContext.current()
        self.requires(mod)
        instruments = _instruments(ctx)
        for instrument in instruments:
            instrument.run_before_pass(mod, self)
        out = self.run(mod, ctx)
        if out is mod:
            raise PassError(f"pass {self.name} returned its input; passes must return a new Module")
        for instrument in instruments:
            instrument.run_after_pass(out, self)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sequential(Pass):
    """Run passes in order. A flat list: nesting is allowed but never needed."""

    name = "Sequential"

    def __init__(self, passes: Sequence[Pass], name: str = "Sequential") -> None:
        self.passes = tuple(passes)
        self.name = name  # type: ignore[misc]

    def run(self, mod: Module, ctx: PassContext) -> Module:
        done: list[str] = []
        for p in self.passes:
            try:
                mod = p(mod, ctx)
            except (UserError, PassError):
                raise
            except Exception as exc:
                raise PassError(f"pass {p.name} failed after [{', '.join(done)}]: {exc}") from exc
            done.append(p.name)
        return mod


class TimingInstrument:
    """Records the wall time of each pass: ``timings`` is a list of (name, seconds)."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._starts: list[float] = []  # a stack: a Sequential is itself a pass

    def run_before_pass(self, mod: Module, pass_: Pass) -> None:
        self._starts.append(time.perf_counter())

    def run_after_pass(self, mod: Module, pass_: Pass) -> None:
        self.timings.append((pass_.name, time.perf_counter() - self._starts.pop()))


class VerifierInstrument:
    """Checks the model after each pass: the ONNX checker, then strict shape inference on
    the exported graph (``frontends.onnx.verify_model``). Slow: a debug aid, switched on
    by the config key ``verify.each_pass`` or added to ``PassContext.instruments``.

    A ``Sequential`` is skipped: the passes inside it were each verified already.
    """

    def run_before_pass(self, mod: Module, pass_: Pass) -> None:
        return None

    def run_after_pass(self, mod: Module, pass_: Pass) -> None:
        if isinstance(pass_, Sequential):
            return
        from onnx_hwprune.frontends.onnx import export_model, verify_model

        try:
            verify_model(export_model(mod.graph))
        except Exception as exc:  # checker and exporter raise many types
            message = f"verifier: the model is invalid after pass {pass_.name}: {exc}"
            raise PassError(message) from exc


def _instruments(ctx: PassContext) -> Sequence[PassInstrument]:
    if ctx.get("verify.each_pass") and not any(
        isinstance(i, VerifierInstrument) for i in ctx.instruments
    ):
        return (*ctx.instruments, VerifierInstrument())
    return ctx.instruments
