"""Bookkeeping of the unit groups found while tracing: creation, merging by residual adds, and assembly.

A *group* is a set of units created together: the network input, or the outputs of one weight layer. An
activation is a sequence of groups (several after a concatenation). A residual add makes the units of its
two operands the same nodes, so it merges their groups pairwise (union-find); at the end every class of
merged groups becomes one group of the graph, and each weight layer's block is split by the groups its
input is made of. With Filan et al.'s rule (``residual="filan"``, :mod:`modscope.graph.trace`) an add
makes a *sum* instead, and each layer reading a sum gets its own copy of the units, joined by a copy of
every summed layer's block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modscope.graph.layer import GraphError, Layer


@dataclass(frozen=True)
class Reads:
    """A weight layer of the traced graph: the groups it reads (in input-unit order), the group it writes."""

    layer: int  # index into the list of WeightLayers
    inputs: tuple[int, ...]
    output: int
    reader: str = ""  # for a copy of the block (residual="filan"): the layer reading the copied units


class Groups:
    """Groups of units with union-find merging (:mod:`modscope.graph.groups`)."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.parent: list[int] = []
        self.sums: dict[int, tuple[int, ...]] = {}  # a sum (residual="filan") -> the groups it adds
        self.read: set[int] = set()  # groups read by a layer (or returned) as they are, not through a sum
        self.copies: list[Reads] = []

    def new(self, name: str, size: int, kind: str) -> int:
        self.layers.append(Layer(name, size, kind))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def size(self, g: int) -> int:
        return self.layers[self.find(g)].size

    def total(self, groups: Sequence[int]) -> int:
        return sum(self.size(g) for g in groups)

    def set_size(self, g: int, size: int) -> None:
        root = self.find(g)
        layer = self.layers[root]
        self.layers[root] = Layer(layer.name, int(size), layer.kind)

    def merge(self, a: Sequence[int], b: Sequence[int], where: str) -> tuple[int, ...]:
        """Make the units of ``a`` and ``b`` (group sequences of equal sizes, in order) the same nodes."""
        ra, rb = [self.find(g) for g in a], [self.find(g) for g in b]
        sa, sb = [self.size(g) for g in ra], [self.size(g) for g in rb]
        if len(ra) == len(rb) == 1 and (sa[0] < 0 or sb[0] < 0):  # the input, size not yet known
            size = max(sa[0], sb[0])
            self.set_size(ra[0], size)
            self.set_size(rb[0], size)
        elif sa != sb:
            if sum(sa) == sum(sb):
                raise GraphError(
                    f"{where} adds two activations made of different groups of units ({sa} and {sb} units), "
                    "e.g. a concatenation to one layer's output; not supported"
                )
            raise GraphError(f"{where} adds activations of {sum(sa)} and {sum(sb)} units")
        for x, y in zip(ra, rb):
            x, y = self.find(x), self.find(y)
            if x != y:  # the older group stays the root: its name and kind describe the merged one
                lo, hi = min(x, y), max(x, y)
                self.parent[hi] = lo
                if self.layers[lo].kind != "input":
                    self.layers[lo] = Layer(self.layers[lo].name, self.layers[lo].size, "stream")
        return tuple(self.find(g) for g in ra)

    def sum_of(self, a: Sequence[int], b: Sequence[int], where: str) -> tuple[int]:
        """Filan et al.'s add: a new sum of the groups of ``a`` and ``b`` (earlier sums flattened)."""
        if len(a) != 1 or len(b) != 1 or self.size(a[0]) != self.size(b[0]) or self.size(a[0]) < 0:
            raise GraphError(
                f"{where} adds activations that residual='filan' cannot represent (a concatenation, the "
                "input before any layer, or different sizes); use residual='merge'"
            )
        terms = tuple(t for g in (a[0], b[0]) for t in self.sums.get(g, (g,)))
        s = self.new("sum", self.size(a[0]), "sum")
        self.sums[s] = terms
        return (s,)

    def reading(
        self, groups: Sequence[int], reader: str, reads: Sequence[Reads], where: str
    ) -> tuple[int, ...]:
        """The groups a layer (or the output) reads: a sum becomes the reader's own copy of the units,
        joined by a copy of the block of every layer written into the sum."""
        out = []
        for g in groups:
            if g not in self.sums:
                self.read.add(self.find(g))
                out.append(g)
                continue
            copy = self.new(f"{reader}:in", self.size(g), "copy")
            for term in self.sums[g]:
                writers = [r for r in reads if self.find(r.output) == self.find(term)]
                if not writers:
                    raise GraphError(
                        f"{where} reads a sum with the model's input as a term: residual='filan' joins "
                        "copies of weight layers only; use residual='merge'"
                    )
                self.copies += [Reads(r.layer, r.inputs, copy, reader) for r in writers]
            out.append(copy)
        return tuple(out)

    def kept(self, reads: Sequence[Reads], output: int) -> tuple[list[Reads], list[int]]:
        """The blocks the graph keeps (``reads`` that write units which exist, then the copies) and the root
        of each of the graph's groups, in the graph's order (:meth:`assemble`)."""
        out = self.find(output)
        summed = {self.find(t) for terms in self.sums.values() for t in terms}
        # A layer's own output units exist where they are read as they are; only through sums, not at all.
        reads = [r for r in reads if self.find(r.output) in self.read or self.find(r.output) not in summed]
        reads += self.copies
        used = {self.find(g) for r in reads for g in (*r.inputs, r.output)}
        roots = [g for g in range(len(self.parent)) if self.find(g) == g and g in used and g != out] + [out]
        return reads, roots

    def assemble(
        self, reads: Sequence[Reads], blocks: Sequence[np.ndarray], names: Sequence[str], output: int
    ) -> tuple[list[Layer], list[tuple[int, int, np.ndarray]], list[str]]:
        """The graph's groups (merged classes with edges, in creation order, the output's last), its edges
        ``(src, dst, block)`` (each weight layer's block split by the groups it reads) and their sources."""
        reads, roots = self.kept(reads, output)
        index = {g: i for i, g in enumerate(roots)}
        for g in roots:
            if self.layers[g].size < 0:
                raise GraphError("the size of the model's input could not be found; pass input_shape")
        edges, sources = [], []
        for r in reads:
            col = 0
            for g in r.inputs:
                n = self.size(g)
                block = blocks[r.layer][:, col : col + n]
                edges.append((index[self.find(g)], index[self.find(r.output)], block))
                sources.append(f"{names[r.layer]}->{r.reader}" if r.reader else names[r.layer])
                col += n
        return [self.layers[g] for g in roots], edges, sources
