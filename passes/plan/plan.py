"""Plans: for each channel group, which of its channels to keep. Plans are data.

JSON form (schema version 1, documented in docs/plan-schema.md)::

    {"schema": "onnx-hwprune.plan", "version": 1,
     "method": "uniform", "criterion": "l1", "meta": {...},
     "groups": {"<group name>": {"size": 64, "keep": [0, 2, 3, ...]}, ...}}

Group names are the tensor names the analysis anchors each group on (the producing
layer's output), so a plan made on one export of a model applies to another export
with the same tensor names. Groups absent from a plan are left whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnx_hwprune.errors import UserError
from onnx_hwprune.passes.analysis.groups import ChannelGroups

__all__ = ["GroupPlan", "Plan", "PLAN_SCHEMA", "PLAN_VERSION"]

PLAN_SCHEMA = "onnx-hwprune.plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class GroupPlan:
    """``keep``: sorted group indices that stay; ``size``: the group's size when planned."""

    size: int
    keep: tuple[int, ...]

    @property
    def removed(self) -> tuple[int, ...]:
        kept = set(self.keep)
        return tuple(i for i in range(self.size) if i not in kept)


@dataclass(frozen=True)
class Plan:
    groups: Mapping[str, GroupPlan]
    method: str = ""
    criterion: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "version": PLAN_VERSION,
            "method": self.method,
            "criterion": self.criterion,
            "meta": dict(self.meta),
            "groups": {
                name: {"size": gp.size, "keep": list(gp.keep)}
                for name, gp in sorted(self.groups.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
            raise UserError(f'not an onnx-hwprune plan (expected "schema": "{PLAN_SCHEMA}")')
        if data.get("version") != PLAN_VERSION:
            raise UserError(
                f"plan version {data.get('version')!r} is not supported (expected {PLAN_VERSION})"
            )
        try:
            groups = {
                str(name): GroupPlan(int(g["size"]), tuple(sorted(int(i) for i in g["keep"])))
                for name, g in data["groups"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"malformed plan: {exc!r}") from None
        return cls(
            groups,
            str(data.get("method", "")),
            str(data.get("criterion", "")),
            dict(data.get("meta", {})),
        )

    def validate(self, groups: ChannelGroups) -> None:
        """Refuse a plan that does not fit the model, before anything is rewritten."""
        known = {g.name: g for g in groups}
        for name, gp in self.groups.items():
            group = known.get(name)
            if group is None:
                raise UserError(
                    f"plan names channel group {name!r}, which this model does not have"
                )
            if gp.size != group.size:
                raise UserError(
                    f"plan says group {name!r} has {gp.size} channels; the model has {group.size}"
                )
            if not gp.keep:
                raise UserError(f"plan would prune group {name!r} to zero channels")
            if len(set(gp.keep)) != len(gp.keep) or gp.keep[0] < 0 or gp.keep[-1] >= gp.size:
                raise UserError(f"plan keeps invalid indices in group {name!r}")
            if group.frozen and len(gp.keep) != gp.size:
                raise UserError(f"plan prunes frozen group {name!r}: {group.frozen_reasons[0]}")

    def pruned_groups(self) -> dict[str, GroupPlan]:
        return {n: gp for n, gp in self.groups.items() if len(gp.keep) < gp.size}
