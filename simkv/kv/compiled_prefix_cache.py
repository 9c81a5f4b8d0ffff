"""The prefix-caching block pool on compiled kernels (simkv.kv.pool_kernels): result for result the
pure-Python pool (simkv.kv.prefix_cache, kept as the reference), used for runs long enough to pay
for numba's start-up (`prefix_cache_allocator`, simkv.compiled).

What it models is the pure pool's (vLLM's block pool: reference counts, content names registered
once computed, an LRU free queue whose front is evicted when taken); only the representation
differs. The free queue is a linked list through every block instead of a FIFO of chunks with
stale entries, and the name -> block map a hash table in arrays instead of runs of arrays, so a
take, pin, free, lookup or registration is one kernel call over the blocks it concerns. Block
tables are `array.array('q')`, not lists: a kernel reads one through a numpy view of its memory
(~0.7 µs), where turning a TGI reservation's list of ~190 blocks into an array costs ~7 µs.
"""

from __future__ import annotations

from array import array
from typing import Sequence

import numpy as np

from simkv import compiled
from simkv.kv.base import OutOfKVMemory
from simkv.kv.name_runs import NameChain
from simkv.kv.prefix_cache import PrefixCacheBase, PrefixCachingAllocator

_I64 = np.int64
_MIN_TABLE = 1024   # slots of the name table at first (it doubles before it is half full)
_last_range: tuple[range | None, np.ndarray] = (None, np.zeros(0, _I64))


def compiled_kernels():
    """simkv.kv.pool_kernels, or None where numba is missing or `SIMKV_COMPILED=0`."""
    return compiled.kernels("simkv.kv.pool_kernels")


def prefix_cache_allocator(num_blocks: int, block_size: int, num_requests: int):
    """The prefix-caching block pool for a run of `num_requests`: the compiled one where
    simkv.compiled says it pays (and numba is installed), else the pure-Python one. The two give
    the same results (tests/test_compiled_prefix_cache.py)."""
    kernels = compiled_kernels() if compiled.wanted(num_requests) else None
    if kernels is None:
        return PrefixCachingAllocator(num_blocks, block_size)
    return CompiledPrefixCache(num_blocks, block_size, kernels)


def names_array(hashes: Sequence[int]) -> np.ndarray:
    """Block names as an int64 array (a NameChain keeps its array, since the scheduler passes the
    same chain to the lookup, the admission and every registration of a prompt)."""
    if type(hashes) is NameChain:
        return hashes.as_array()
    if type(hashes) is range:   # the last range's array is kept (ranges are immutable, and the cache holds it)
        global _last_range
        if _last_range[0] is not hashes:
            _last_range = (hashes, np.arange(hashes.start, hashes.stop, hashes.step, dtype=_I64))
        return _last_range[1]
    if isinstance(hashes, np.ndarray):
        return hashes.astype(_I64, copy=False)
    return np.fromiter(hashes, _I64, len(hashes))


class CompiledPrefixCache(PrefixCacheBase):
    """Block pool with reference counts, content names and an LRU free queue, on kernels."""

    def __init__(self, num_blocks: int, block_size: int, kernels=None) -> None:
        super().__init__(num_blocks, block_size)
        self._k = kernels if kernels is not None else compiled_kernels()
        if self._k is None:
            raise RuntimeError("the compiled prefix cache needs numba")
        self._tables: dict[int, array[int]] = {}   # type: ignore[assignment]   # block tables as arrays (module docstring)
        n = num_blocks
        k = self._k
        # counts, queue links and names of every block (pool_kernels): the queue 0, 1, ..., n-1
        # through the sentinel column n, no block named
        st = self._st = np.zeros((4, n + 1), _I64)
        st[k.NXT] = np.arange(1, n + 2)
        st[k.NXT, n] = 0
        st[k.PRV] = np.arange(-1, n)
        st[k.PRV, 0] = n
        st[k.NAME] = -1
        self._ref = st[k.REF, :n]                 # views, for the queries
        self._name = st[k.NAME, :n]
        self._tab = np.full(2 * _MIN_TABLE, -1, _I64)   # name -> block (slots of name, block)
        self._named = 0                           # names in the table
        self._out = np.empty(n, _I64)             # the kernels' results
        self._nfree = n
        self._registered: dict[int, int] = {}    # req_id -> leading blocks already named
        self.shared_excess = 0                    # sum over blocks of (references - 1)

    def __getstate__(self) -> dict:   # copies and pickles: the kernels module and the views are found again
        return {k: v for k, v in self.__dict__.items() if k not in ("_k", "_ref", "_name")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        k = self._k = compiled_kernels()
        n = self.num_blocks
        self._ref, self._name = self._st[k.REF, :n], self._st[k.NAME, :n]

    # ------------------------------------------------------------ queries
    def free_block_ids(self) -> list[int]:
        return self._out[:self._k.queue_order(self._st, self._out)].tolist()

    def cached_blocks(self) -> dict:
        keys, vals = self._tab[0::2], self._tab[1::2]
        used = (keys >= 0).nonzero()[0]
        return dict(zip(keys[used].tolist(), vals[used].tolist()))

    def name_of(self, block: int) -> int | None:
        """The content name `block` holds, None if it holds none."""
        h = int(self._name[block])
        return h if h >= 0 else None

    def block_of(self, h: int) -> int:
        """The block holding name `h`, -1 if none."""
        return int(self._k.lookup(self._tab, h))

    def match_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` are cached (pure)."""
        if not len(hashes):
            return 0
        return int(self._k.leading(names_array(hashes), self._tab))

    def _free_hits(self, hashes: Sequence[int], hits: int) -> int:
        if not hits:
            return 0
        return int(self._k.free_among(names_array(hashes)[:hits], self._st, self._tab))

    # ------------------------------------------------------------ allocation (PrefixCacheBase's parts)
    def _take(self, n: int) -> np.ndarray:
        """`n` (> 0) blocks for new content: the least recently used free ones, their old names
        evicted (a view of the scratch array: copy it before the next kernel call)."""
        if n > self._nfree:
            raise OutOfKVMemory(f"{n} blocks needed, {self._nfree} free")
        self._named -= self._k.take(n, self._st, self._tab, self._out)
        self._nfree -= n
        return self._out[:n]

    def _take_blocks(self, n: int) -> list[int]:
        return self._take(n).tolist() if n > 0 else []

    def _add_new(self, table: array, n: int) -> None:
        if n > 0:   # bytes into the table: no list of the blocks in between
            table.frombytes(self._take(n).tobytes())

    def _cached_table(self, hashes: Sequence[int], hits: int) -> array:
        table = array("q")
        if hits:
            cached = self._out[:self._k.blocks_of(names_array(hashes)[:hits], self._tab, self._out)]
            freed = int(self._k.pin(cached, self._st))
            self._nfree -= freed
            self.shared_excess += hits - freed
            table.frombytes(cached.tobytes())
        return table

    def _release_table(self, table) -> None:
        shared = int(self._k.release(np.frombuffer(table, _I64), self._st))
        self.shared_excess -= shared
        self._nfree += len(table) - shared

    def _name_blocks(self, table: array, hashes: Sequence[int], done: int, full: int) -> None:
        if 4 * (self._named + full - done) > len(self._tab):
            self._grow_table(self._named + full - done)
        names = names_array(hashes)[done:full]
        blocks = np.frombuffer(table, _I64)[done:full]
        self._named += int(self._k.name_blocks(names, blocks, self._st, self._tab))

    def _grow_table(self, names: int) -> None:
        """A name table with room for `names` names at under half load."""
        slots = len(self._tab) // 2
        while 2 * names > slots:
            slots *= 2
        tab = np.full(2 * slots, -1, _I64)
        self._k.rehash(self._tab, tab)
        self._tab = tab

    def _fork(self, child: int, parent: int, full: int, copy: int) -> bool:
        mine = self._tables[child]
        freed = int(np.count_nonzero(self._ref[np.frombuffer(mine, _I64)] == 1))
        if copy > self._nfree + freed:
            return False
        self._release_table(mine)
        table = self._tables[parent][:full]   # a copy
        self._ref[np.frombuffer(table, _I64)] += 1   # held by the parent: none of them is free
        self.shared_excess += len(table)
        self._add_new(table, copy)
        self._tables[child] = table
        return True
