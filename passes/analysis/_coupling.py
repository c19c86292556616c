"""Channel spaces and the union-find that couples their channels.

A *channel space* is one axis of one tensor: the output channels of a Conv (axis 1 of its
output), the filters of its weight (axis 0 of the weight initializer), the input features
of a Gemm... Every channel of every space is an *element*. Op handlers declare spaces and
say which elements must be removed together (``union``); connected components of elements
are *atoms*: one atom is the smallest unit that can be pruned.

Worked example, ``Conv(3->4) -> BN(4) -> Relu -> Conv(4->8)``::

    conv1.W axis 0 (4) == conv1.Y axis 1 (4) == bn.scale axis 0 (4) == ... == relu.Y (4)
                                              == conv2.W axis 1 (4)

    Four atoms, atom i = {channel i of each of those spaces}: removing atom i removes
    filter i of conv1, BN entry i, and input channel i of conv2.

Couplings that are not one-to-one fall out of the same mechanism: a Concat unites input
channel i of its second input with output channel ``offset + i``; a Flatten unites input
channel c with the H*W output features ``c*H*W ... c*H*W + H*W - 1``; a depthwise conv with
multiplier m unites input channel c with output channels ``c*m ... c*m + m - 1``.

Freezing is per space: a space on a graph input/output, or touched by an op no handler
understands, is frozen with a reason, and every atom with an element in it is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Space", "CouplingTable", "connected_components"]


@dataclass(frozen=True)
class Space:
    """One axis of one tensor.

    Attributes:
        tensor: tensor name.
        axis: the axis (1 for activations, any axis for constants).
        size: number of channels (elements) on that axis.
        is_param: the tensor is a constant (initializer) that pruning slices.
        offset: index of this space's first element in the table's element array.
    """

    tensor: str
    axis: int
    size: int
    is_param: bool
    offset: int


@dataclass(frozen=True)
class Declaration:
    """Who declared a space and in which role (``"weight_out"``, ``"act_in"``, ...)."""

    space: int
    node: str
    role: str


@dataclass
class CouplingTable:
    """Spaces, element unions and freeze reasons, filled by the op handlers.

    Mutable only while :class:`~.channel_groups.ChannelGroupAnalysis` builds it; the
    result it produces is immutable.
    """

    spaces: list[Space] = field(default_factory=list)
    declarations: list[Declaration] = field(default_factory=list)
    frozen: dict[int, list[str]] = field(default_factory=dict)
    produced: set[int] = field(default_factory=set)
    _index: dict[tuple[str, int], int] = field(default_factory=dict)
    _edges_a: list[np.ndarray] = field(default_factory=list)
    _edges_b: list[np.ndarray] = field(default_factory=list)
    _n: int = 0

    def space(self, tensor: str, axis: int, size: int, is_param: bool) -> int:
        """The id of space ``(tensor, axis)``, registering it on first use."""
        key = (tensor, axis)
        sid = self._index.get(key)
        if sid is None:
            sid = len(self.spaces)
            self.spaces.append(Space(tensor, axis, size, is_param, self._n))
            self._index[key] = sid
            self._n += size
        elif self.spaces[sid].size != size:
            self.freeze(
                sid, f"size mismatch on {tensor} axis {axis}: {self.spaces[sid].size} vs {size}"
            )
        return sid

    def find(self, tensor: str, axis: int = 1) -> int | None:
        return self._index.get((tensor, axis))

    def declare(self, sid: int, node: str, role: str, produced: bool = False) -> None:
        self.declarations.append(Declaration(sid, node, role))
        if produced:
            self.produced.add(sid)

    def union(
        self, a: int, b: int, a_idx: np.ndarray | None = None, b_idx: np.ndarray | None = None
    ) -> None:
        """Couple element ``a_idx[k]`` of space ``a`` with element ``b_idx[k]`` of ``b``.

        Without indices the two spaces are coupled one-to-one (they must be the same size).
        """
        sa, sb = self.spaces[a], self.spaces[b]
        if a_idx is None and b_idx is None:
            if sa.size != sb.size:
                self.freeze(
                    a, f"cannot couple {sa.tensor} ({sa.size}) with {sb.tensor} ({sb.size})"
                )
                self.freeze(
                    b, f"cannot couple {sa.tensor} ({sa.size}) with {sb.tensor} ({sb.size})"
                )
                return
            a_idx = b_idx = np.arange(sa.size)
        self._edges_a.append(sa.offset + np.asarray(a_idx, dtype=np.int64))
        self._edges_b.append(sb.offset + np.asarray(b_idx, dtype=np.int64))

    def freeze(self, sid: int, reason: str) -> None:
        reasons = self.frozen.setdefault(sid, [])
        if reason not in reasons:
            reasons.append(reason)

    def element_space(self) -> np.ndarray:
        """For each element, the id of the space it belongs to."""
        sizes = np.array([s.size for s in self.spaces], dtype=np.int64)
        return np.repeat(np.arange(len(self.spaces)), sizes)

    def atoms(self) -> np.ndarray:
        """For each element, the id of its atom (connected component), ids 0..K-1."""
        if self._edges_a:
            a, b = np.concatenate(self._edges_a), np.concatenate(self._edges_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        return connected_components(self._n, a, b)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component labels of an undirected graph given as edge arrays, renumbered 0..K-1.

    Vectorised min-label propagation with pointer jumping: each round every edge pulls
    both ends to the smaller label, then labels jump to their label's label. Rounds are
    bounded by the longest chain of couplings, a few dozen in real CNNs, and each round
    is a handful of numpy passes, so ResNet-50's ~10^5 elements take milliseconds.
    """
    labels = np.arange(n, dtype=np.int64)
    while True:
        la, lb = labels[a], labels[b]
        low = np.minimum(la, lb)
        before = labels.copy()
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            break
    return np.unique(labels, return_inverse=True)[1].reshape(-1)
