"""The channel-group analysis: run every node's handler, then read groups off the table.

Rules (the contract the rest of the tool relies on):
- every node is visited once, in topological order; a node whose op has no handler
  freezes the spaces it touches with the reason "no handler for <op>";
- spaces on graph inputs and outputs are frozen (the model's interface is kept);
- a space that a consumer declares but no producer defines (the output of an unknown op,
  of a Constant node...) is frozen;
- a group is frozen when any of its spaces is; frozen groups are reported with reasons.
The analysis reads the graph and never modifies it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnx_hwprune.passes._infra import Module, Pass, PassContext
from onnx_hwprune.passes.analysis import handlers as _handlers  # noqa: F401  (registration)
from onnx_hwprune.passes.analysis._context import CoupleContext
from onnx_hwprune.passes.analysis._coupling import CouplingTable
from onnx_hwprune.passes.analysis._registry import DEFAULT_REGISTRY, HandlerRegistry
from onnx_hwprune.passes.analysis.groups import ChannelGroup, ChannelGroups, Member

__all__ = ["ChannelGroupAnalysis", "analyze_channel_groups", "graph_opset"]

log = logging.getLogger(__name__)


def graph_opset(graph: gs.Graph) -> int:
    opset = graph.opset
    return int(opset) if opset else 13


def analyze_channel_groups(
    graph: gs.Graph, registry: HandlerRegistry = DEFAULT_REGISTRY
) -> ChannelGroups:
    """Find the channel groups of ``graph`` (see the module docstring for the rules)."""
    table = CouplingTable()
    ctx = CoupleContext(table, graph_opset(graph))
    claimed = _claimed_nodes(graph, registry, ctx.opset)
    for node in graph.nodes:
        if id(node) in claimed:
            continue
        handler = registry.lookup(node.op, node.domain or "", ctx.opset)
        if handler is None:
            ctx.freeze_node(
                node,
                f"no handler for op {node.op!r}"
                + (f" (domain {node.domain})" if node.domain else ""),
            )
            continue
        handler.couple(node, ctx)
    _freeze_interface(graph, table, ctx)
    return _read_groups(table)


def _claimed_nodes(graph: gs.Graph, registry: HandlerRegistry, opset: int) -> set[int]:
    """Nodes that another node's handler couples as part of its pattern (a handler's
    optional ``claims(node)``: ConvInteger's run-time bias chain). Their own handlers are
    not run: they would see a rank-1 side chain and freeze it."""
    claimed: set[int] = set()
    for node in graph.nodes:
        claims = getattr(registry.lookup(node.op, node.domain or "", opset), "claims", None)
        if claims is not None:
            claimed.update(id(n) for n in claims(node))
    return claimed


def _freeze_interface(graph: gs.Graph, table: CouplingTable, ctx: CoupleContext) -> None:
    """Apply the freezing rules that depend on the whole graph."""
    for t in graph.inputs:
        ctx.freeze_tensor(t, f"graph input {t.name}")
    for t in graph.outputs:
        ctx.freeze_tensor(t, f"graph output {t.name}")
    for sid, space in enumerate(table.spaces):
        for reason in ctx.frozen_tensors.get(space.tensor, []):
            table.freeze(sid, reason)
        if not space.is_param and sid not in table.produced and sid not in table.frozen:
            table.freeze(sid, f"{space.tensor} is not produced by an op that defines its channels")


def _read_groups(table: CouplingTable) -> ChannelGroups:
    atom_of = table.atoms()
    space_of = table.element_space()
    signatures = _atom_signatures(atom_of, space_of)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for atom, signature in enumerate(signatures):
        by_signature[signature].append(atom)
    ordered = sorted(by_signature.items(), key=lambda item: item[0])
    names: set[str] = set()
    groups = tuple(_make_group(table, sig, atoms, atom_of, names) for sig, atoms in ordered)
    sizes = {(s.tensor, s.axis): s.size for s in table.spaces}
    log.info("%d channel groups, %d prunable", len(groups), sum(not g.frozen for g in groups))
    return ChannelGroups(groups, sizes)


def _atom_signatures(atom_of: np.ndarray, space_of: np.ndarray) -> list[tuple[int, ...]]:
    """For each atom, the sorted ids of the spaces it has elements in."""
    n_spaces = int(space_of.max()) + 1 if space_of.size else 1
    pairs = np.unique(atom_of * n_spaces + space_of)
    atoms, spaces = np.divmod(pairs, n_spaces)
    bounds = np.searchsorted(atoms, np.arange(int(atom_of.max()) + 2 if atom_of.size else 1))
    return [tuple(spaces[bounds[a] : bounds[a + 1]].tolist()) for a in range(len(bounds) - 1)]


def _make_group(
    table: CouplingTable,
    signature: tuple[int, ...],
    atoms: list[int],
    atom_of: np.ndarray,
    names: set[str],
) -> ChannelGroup:
    anchor = _anchor(table, signature)
    positions = _positions_by_atom(table, signature, atoms, atom_of)
    # Group index i is the atom's order in the anchor space: filter i of the producer.
    order = sorted(atoms, key=lambda a: positions[anchor][a][0])
    members = tuple(
        Member(
            d.node,
            d.role,
            table.spaces[d.space].tensor,
            table.spaces[d.space].axis,
            table.spaces[d.space].is_param,
            tuple(positions[d.space][a] for a in order),
        )
        for d in table.declarations
        if d.space in positions
    )
    reasons = sorted({r for sid in signature for r in table.frozen.get(sid, [])})
    return ChannelGroup(
        _unique_name(table.spaces[anchor].tensor, names), len(atoms), members, tuple(reasons)
    )


def _anchor(table: CouplingTable, signature: tuple[int, ...]) -> int:
    """The first produced activation space of the group (a conv's output), else the first."""
    for sid in signature:
        if sid in table.produced:
            return sid
    return signature[0]


def _positions_by_atom(
    table: CouplingTable, signature: tuple[int, ...], atoms: list[int], atom_of: np.ndarray
) -> dict[int, dict[int, tuple[int, ...]]]:
    wanted = np.zeros(int(atom_of.max()) + 1, dtype=bool)
    wanted[atoms] = True
    out: dict[int, dict[int, tuple[int, ...]]] = {}
    for sid in signature:
        space = table.spaces[sid]
        local = atom_of[space.offset : space.offset + space.size]
        idx = np.nonzero(wanted[local])[0]
        per_atom: dict[int, list[int]] = defaultdict(list)
        for pos, atom in zip(idx.tolist(), local[idx].tolist(), strict=True):
            per_atom[atom].append(pos)
        out[sid] = {a: tuple(p) for a, p in per_atom.items()}
    return out


def _unique_name(base: str, names: set[str]) -> str:
    name, k = base, 1
    while name in names:
        k += 1
        name = f"{base}#{k}"
    names.add(name)
    return name


class ChannelGroupAnalysis(Pass):
    """Analysis pass: fills ``Module.groups``; the graph is not touched."""

    name = "ChannelGroupAnalysis"

    def __init__(self, registry: HandlerRegistry = DEFAULT_REGISTRY) -> None:
        self.registry = registry

    def run(self, mod: Module, ctx: PassContext) -> Module:
        return mod.replace(groups=analyze_channel_groups(mod.graph, self.registry))
