"""Channel groups: the result of the analysis, immutable and serialisable.

Atoms (see :mod:`._coupling`) that appear in exactly the same set of spaces form one
*group*: the planner's unit. Worked example, ``Conv a(->16), Conv b(->8), Concat(a,b) ->
Conv c``: the 16 atoms of ``a`` appear in {a.W axis 0, a.Y, concat.Y, c.W axis 1}, the 8
of ``b`` in {b.W axis 0, b.Y, concat.Y, c.W axis 1}: two groups, with index maps

    group "a.Y" (16): a.Y[i] = i,  concat.Y[i] = i,       c.W axis 1 [i] = i
    group "b.Y" (8):  b.Y[i] = i,  concat.Y[i] = 16 + i,  c.W axis 1 [i] = 16 + i

A group's index i maps to a tuple of positions in each member (one position, or several:
the H*W features of a flattened channel, the channels of a conv group).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["Member", "ChannelGroup", "ChannelGroups"]


@dataclass(frozen=True)
class Member:
    """One channel space of a group, as seen by the node that declared it.

    Attributes:
        node: the node that declared the space (producer or consumer).
        role: ``act_out``, ``act_in``, ``weight_out``, ``weight_in``, ``bias``,
            ``bn_scale``, ``norm_param``, ``const``...
        tensor: tensor name; ``axis``: its axis.
        is_param: the tensor is a constant sliced by pruning.
        index_map: ``index_map[i]`` = positions of group channel i in this space.
    """

    node: str
    role: str
    tensor: str
    axis: int
    is_param: bool
    index_map: tuple[tuple[int, ...], ...]

    def positions(self, indices: list[int] | tuple[int, ...]) -> list[int]:
        return [p for i in indices for p in self.index_map[i]]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together, with where each lives in every member."""

    name: str
    size: int
    members: tuple[Member, ...]
    frozen_reasons: tuple[str, ...] = ()

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    def members_with_role(self, *roles: str) -> Iterator[Member]:
        return (m for m in self.members if m.role in roles)

    def spaces(self) -> dict[tuple[str, int], Member]:
        """One member per distinct (tensor, axis): a space declared by both its producer
        and its consumers appears once."""
        out: dict[tuple[str, int], Member] = {}
        for m in self.members:
            out.setdefault((m.tensor, m.axis), m)
        return out


@dataclass(frozen=True)
class ChannelGroups:
    """All groups of a graph, in topological order of their first space.

    Attributes:
        groups: every group, frozen ones included.
        space_sizes: size of every space the analysis saw, by (tensor, axis).
    """

    groups: tuple[ChannelGroup, ...]
    space_sizes: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.frozen)

    def to_json(self) -> list[dict]:
        return [_group_json(g) for g in self.groups]


def _group_json(group: ChannelGroup) -> dict:
    return {
        "name": group.name,
        "size": group.size,
        "frozen": group.frozen,
        "frozen_reasons": list(group.frozen_reasons),
        "members": [
            {
                "node": m.node,
                "role": m.role,
                "tensor": m.tensor,
                "axis": m.axis,
                "is_param": m.is_param,
                "index_map": _compact_map(m.index_map),
            }
            for m in group.members
        ],
    }


def _compact_map(index_map: tuple[tuple[int, ...], ...]) -> dict:
    """Ranges are written as ranges; anything else as the explicit list."""
    if index_map and all(len(p) == 1 for p in index_map):
        first = index_map[0][0]
        if all(p[0] == first + i for i, p in enumerate(index_map)):
            return {"kind": "range", "start": first, "length": len(index_map)}
    if index_map and all(len(p) == len(index_map[0]) for p in index_map):
        width = len(index_map[0])
        first = index_map[0][0]
        if all(
            p == tuple(range(first + i * width, first + (i + 1) * width))
            for i, p in enumerate(index_map)
        ):
            return {"kind": "blocks", "start": first, "block": width, "length": len(index_map)}
    return {"kind": "explicit", "positions": [list(p) for p in index_map]}
