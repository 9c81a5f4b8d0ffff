"""The prefix cache's map from block content names to blocks, kept as runs of arrays.

A block name is an int `id * 2^35 + 8 i + kind` (simkv.sched.chunked.block_name): block i of the
content (kind, id). A request's names are one to three runs of consecutive i (a conversation's
history, a shared prefix, its own tokens), and it names, looks up and evicts hundreds of them per
admission. A dict with one entry per cached block did that one Python operation per name, each a
few cache misses in a dict of every block (~350 ns a name measured in a multi-turn run). Here the
names of one content are one int64 array indexed by i (the block, -1 where none), so a run of
names is looked up, named or evicted with a few numpy calls. Any int in [0, 2^63) is a valid name
(an int that is not a block_name is block i = (name >> 3) mod 2^32 of content name - 8 i); an
array is dropped when its last name goes, so memory follows the cached blocks, and a name with
i >= 2^22 (no block_name of a prompt within 4M blocks) is kept in a plain dict instead, so no
array grows past 32 MiB.
"""

from __future__ import annotations

from array import array
from itertools import chain
from typing import Sequence

import numpy as np

_I64 = np.int64
_IDX = (1 << 32) - 1                 # i: bits 3..34 of a name
_KEY = ~(_IDX << 3)                  # the content: every other bit
_SMALL = 8                           # at most this many names: one at a time (fewer numpy calls)
_DENSE = 1 << 22                     # i at or beyond this: the name is kept in the sparse dict
_max_reduce = np.maximum.reduce      # ndarray.max without its Python wrapper


class NameRuns:
    """name -> block (a block holds one name, a name is held by one block)."""

    def __init__(self) -> None:
        # content key -> [blocks by i as array.array (fast scalar access), a numpy view of it, names held]
        self._runs: dict[int, list] = {}
        self._sparse: dict[int, int] = {}   # names with i >= _DENSE
        self._n = 0

    def __len__(self) -> int:
        return self._n

    # ------------------------------------------------------------ one name
    def block(self, h: int) -> int:
        """The block holding name `h`, -1 if none."""
        r = self._runs.get(h & _KEY)
        if r is not None:
            i = (h >> 3) & _IDX
            a = r[0]
            if i < len(a):
                return a[i]
        return self._sparse.get(h, -1) if self._sparse else -1

    def set(self, h: int, block: int) -> None:
        """`block` holds `h` (which no block holds)."""
        i = (h >> 3) & _IDX
        self._n += 1
        if i >= _DENSE:
            self._sparse[h] = block
            return
        r = self._run(h & _KEY, i + 1)
        r[0][i] = block
        r[2] += 1

    def drop(self, h: int) -> None:
        """`h` (held) is held no more."""
        self._n -= 1
        i = (h >> 3) & _IDX
        if i >= _DENSE:
            del self._sparse[h]
            return
        key = h & _KEY
        r = self._runs[key]
        r[0][i] = -1
        r[2] -= 1
        if not r[2]:
            del self._runs[key]

    # ------------------------------------------------------------ many names
    def leading(self, names: Sequence[int]) -> int:
        """How many leading names of `names` are held."""
        parts = _run_parts(names)
        if parts is not None and not self._sparse:   # a slice of each content's run
            runs, n = self._runs, 0
            for key, i0, m in parts:
                r = runs.get(key)
                if r is None:
                    return n
                got = r[1][i0:i0 + m]
                miss = (got < 0).nonzero()[0]
                if len(miss):
                    return n + int(miss[0])
                if len(got) < m:
                    return n + len(got)
                n += m
            return n
        n = 0
        for h in names[:2 * _SMALL]:
            if self.block(h) < 0:
                return n
            n += 1
        if n < len(names):
            miss = (self.blocks(names[n:]) < 0).nonzero()[0]
            n += int(miss[0]) if len(miss) else len(names) - n
        return n

    def blocks(self, names: Sequence[int]) -> np.ndarray:
        """The block holding each name, -1 where none."""
        n = len(names)
        parts = _run_parts(names)
        if parts is not None and not self._sparse:   # consecutive blocks of a few contents: slices
            out = np.full(n, -1, _I64)
            pos = 0
            for key, i0, m in parts:
                r = self._runs.get(key)
                if r is not None:
                    got = r[1][i0:i0 + m]
                    out[pos:pos + len(got)] = got
                pos += m
            return out
        if self._sparse:
            return np.array([self.block(h) for h in names], dtype=_I64)
        arr = np.fromiter(names, _I64, n)
        out = np.full(n, -1, _I64)
        for key, idx, s, e in _segments(arr):
            r = self._runs.get(key)
            if r is None:
                continue
            v = r[1]
            if _max_reduce(idx) < len(v):
                out[s:e] = v[idx]
            else:
                inside = idx < len(v)
                out[s:e][inside] = v[idx[inside]]
        return out

    def drop_many(self, names) -> None:
        """Every name of `names` (held, distinct; a list or an int64 array) is held no more."""
        if len(names) <= _SMALL or self._sparse:
            for h in (names.tolist() if isinstance(names, np.ndarray) else names):
                self.drop(h)
            return
        arr = names if isinstance(names, np.ndarray) else np.fromiter(names, _I64, len(names))
        runs = self._runs
        for key, idx, _, _ in _segments(arr):
            r = runs[key]
            r[1][idx] = -1
            r[2] -= len(idx)
            if not r[2]:
                del runs[key]
        self._n -= len(arr)

    def try_set_many(self, names: Sequence[int], blocks: np.ndarray) -> bool:
        """If no name of `names` (a list, a range or an int64 array) is held and they are distinct,
        block j holds name j for every j and True; else nothing changes and False."""
        runs = self._runs
        parts = _run_parts(names)
        if (parts is not None and not self._sparse and len({key for key, _, _ in parts}) == len(parts)
                and all(i0 + m <= _DENSE for _, i0, m in parts)):   # consecutive blocks of distinct contents: slices
            for key, i0, m in parts:
                r = runs.get(key)
                if r is not None:
                    held = r[1][i0:i0 + m]
                    if len(held) and _max_reduce(held) >= 0:
                        return False
            pos = 0
            for key, i0, m in parts:
                r = self._run(key, i0 + m)
                r[1][i0:i0 + m] = blocks[pos:pos + m]
                r[2] += m
                pos += m
            self._n += pos
            return True
        if not isinstance(names, np.ndarray):
            names = np.fromiter(names, _I64, len(names))
        segs = _segments(names)
        if any(_max_reduce(idx) >= _DENSE for _, idx, _, _ in segs):   # one at a time, some go to the dict
            listed = names.tolist()
            if len(set(listed)) < len(listed) or any(self.block(h) >= 0 for h in listed):
                return False
            for h, b in zip(listed, blocks.tolist()):
                self.set(h, b)
            return True
        for key, idx, _, _ in segs:
            r = runs.get(key)
            if r is not None:
                v = r[1]
                inside = idx[idx < len(v)]
                if len(inside) and _max_reduce(v[inside]) >= 0:
                    return False
        made = []
        for key, idx, s, e in segs:
            if key not in runs:
                made.append(key)
            self._run(key, int(_max_reduce(idx)) + 1)[1][idx] = blocks[s:e]
        # a repeated name was written twice and holds its later block: undo (all were -1) and refuse
        if not all((runs[key][1][idx] == blocks[s:e]).all() for key, idx, s, e in segs):
            for key, idx, _, _ in segs:
                runs[key][1][idx] = -1
            for key in made:
                del runs[key]
            return False
        for key, idx, _, _ in segs:
            runs[key][2] += len(idx)
        self._n += len(names)
        return True

    def items(self) -> dict[int, int]:
        """Every held name and its block."""
        out = dict(self._sparse)
        for key, (_, v, _) in self._runs.items():
            for i in (v >= 0).nonzero()[0].tolist():
                out[key + 8 * i] = int(v[i])
        return out

    # ------------------------------------------------------------ storage
    def _run(self, key: int, size: int) -> list:
        """The run of `key`, made or grown to at least `size` entries."""
        r = self._runs.get(key)
        if r is None:
            a = array("q", [-1]) * max(size, _SMALL)
            r = self._runs[key] = [a, np.frombuffer(a, dtype=_I64), 0]
        elif size > len(r[0]):
            a = array("q", [-1]) * max(size, 2 * len(r[0]))
            v = np.frombuffer(a, dtype=_I64)
            v[:len(r[1])] = r[1]
            r[0], r[1] = a, v
        return r

    def __getstate__(self) -> dict:   # copies and pickles: the numpy views are remade on the copied arrays
        return {"runs": {k: (a, n) for k, (a, _, n) in self._runs.items()}, "sparse": self._sparse, "n": self._n}

    def __setstate__(self, state: dict) -> None:
        self._runs = {k: [a, np.frombuffer(a, dtype=_I64), n] for k, (a, n) in state["runs"].items()}
        self._sparse, self._n = state["sparse"], state["n"]


class NameChain(Sequence[int]):
    """Names of consecutive blocks of a few contents, one range each (a shared prefix, then the
    request's group, then its own blocks: simkv.sched.chunked.block_hashes): a sequence of ints, whose
    parts the prefix cache names and finds as slices of their runs."""

    __slots__ = ("parts", "_len", "_arr")

    def __init__(self, parts) -> None:
        self.parts: tuple[range, ...] = tuple(p for p in parts if len(p))
        self._len = sum(len(p) for p in self.parts)
        self._arr: np.ndarray | None = None

    def as_array(self) -> np.ndarray:
        """The names as an int64 array, made once (a chain is immutable)."""
        if self._arr is None:
            self._arr = np.concatenate([np.arange(p.start, p.stop, p.step, dtype=_I64) for p in self.parts]) \
                if self.parts else np.zeros(0, _I64)
        return self._arr

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        return chain.from_iterable(self.parts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            if step != 1:
                return list(self)[i]
            out, pos = [], 0
            for p in self.parts:
                lo, hi = max(start - pos, 0), min(stop - pos, len(p))
                if lo < hi:
                    out.append(p[lo:hi])
                pos += len(p)
            return NameChain(out)
        if i < 0:
            i += self._len
        for p in self.parts:
            if 0 <= i < len(p):
                return p[i]
            i -= len(p)
        raise IndexError("name index out of range")

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"NameChain({list(self.parts)!r})"


def _run_parts(names) -> list[tuple[int, int, int]] | None:
    """(content key, first i, count) of each part when `names` is a range or a NameChain of
    consecutive blocks, one content per part; None otherwise."""
    parts = names.parts if type(names) is NameChain else (names,) if type(names) is range else None
    if parts is None:
        return None
    out = []
    for p in parts:
        if not len(p):
            continue
        if p.step != 8:
            return None
        key = p.start & _KEY
        if p[-1] & _KEY != key:
            return None
        out.append((key, (p.start >> 3) & _IDX, len(p)))
    return out


def _segments(names: np.ndarray) -> list[tuple[int, np.ndarray, int, int]]:
    """`names` cut where the content changes: (content key, indices i, start, end) each."""
    keys = names & _KEY
    idx = (names >> 3) & _IDX
    n = len(names)
    cuts = (keys[1:] != keys[:-1]).nonzero()[0]
    if not len(cuts):
        return [(int(keys[0]), idx, 0, n)] if n else []
    bounds = [0, *(cuts + 1).tolist(), n]
    return [(int(keys[s]), idx[s:e], s, e) for s, e in zip(bounds[:-1], bounds[1:])]
