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
        groups = data.get("groups")
        if not isinstance(groups, dict):
            raise UserError('malformed plan: "groups" must be an object of group name -> entry')
        for key in ("method", "criterion"):
            if not isinstance(data.get(key, ""), str):
                raise UserError(f'malformed plan: "{key}" must be a string')
        if not isinstance(data.get("meta", {}), dict):
            raise UserError('malformed plan: "meta" must be an object')
        return cls(
            {str(name): _group_plan(name, g) for name, g in groups.items()},
            data.get("method", ""),
            data.get("criterion", ""),
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


def _is_int(value: Any) -> bool:
    # JSON's true/false arrive as bool, a subclass of int; 0.5 must not become 0.
    return isinstance(value, int) and not isinstance(value, bool)


def _group_plan(name: str, entry: Any) -> GroupPlan:
    """One group's entry, refused unless ``size`` and every ``keep`` index are integers."""
    if not isinstance(entry, dict) or "size" not in entry or "keep" not in entry:
        raise UserError(f'malformed plan: group {name!r} needs "size" and "keep"')
    size, keep = entry["size"], entry["keep"]
    if not _is_int(size) or size <= 0:
        raise UserError(f"malformed plan: group {name!r} size must be a positive integer")
    if not isinstance(keep, list) or not all(_is_int(i) for i in keep):
        raise UserError(f"malformed plan: group {name!r} keep must be a list of integers")
    return GroupPlan(size, tuple(sorted(keep)))
