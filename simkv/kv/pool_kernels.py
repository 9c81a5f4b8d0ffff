"""Compiled kernels of the prefix cache's block pool (simkv.kv.compiled_prefix_cache): the LRU free
queue, the reference counts and the name -> block map, as flat arrays a numba function walks.

Why compiled: a TGI admission takes ~190 blocks, and a multi-turn admission names, looks up and
evicts ~100; in numpy each is a dozen calls of ~1 µs fixed cost plus the Python between them (33 µs
a TGI take, measured in docs/performance.md), in a compiled loop a few hundred ns. The logic is
integers only, so the kernels give exactly the pure-Python pool's results (simkv.kv.prefix_cache,
the reference, compared operation by operation in tests/test_compiled_prefix_cache.py).

The state, shared by every kernel (changed in place), is two int64 arrays, so a call passes few
arguments (numba checks the type of each, ~0.1 µs an array) and returns only an int (returning an
array costs ~1 µs: results go to a scratch array `out` the caller owns):

- `st`, shape (4, blocks + 1): row REF, the references to each block (a block is free, and in the
  queue, exactly when it has none); rows NXT and PRV, the free queue as a circular doubly-linked
  list through the sentinel column s = blocks (least recently used at NXT[s]; a held block's links
  mean nothing); row NAME, the content name each block holds, -1 if none;
- `tab`: the inverse map, an open-addressing table with linear probing: slot i is (tab[2i] the
  name, -1 if empty; tab[2i+1] its block), a power-of-two number of slots, Fibonacci hashing,
  backward-shift deletion (no tombstones build up); the caller grows it (`rehash`) before it is
  half full.

Names are ints in [0, 2^63) (simkv.sched.chunked.block_name), so -1 is never a name.
"""

from __future__ import annotations

import numpy as np
from numba import njit

REF, NXT, PRV, NAME = range(4)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _home(h, mask):
    """The first slot to probe for name `h`: h times 2^64 / phi, its high half folded onto the low
    bits (block names differ mostly in high bits: the content id sits above bit 35)."""
    x = np.uint64(h) * _GOLDEN
    x ^= x >> np.uint64(29)
    return np.int64(x & np.uint64(mask))


@njit(cache=True)
def lookup(tab, h):
    """The block holding name `h`, -1 if none."""
    mask = len(tab) // 2 - 1
    i = _home(h, mask)
    while True:
        k = tab[2 * i]
        if k == h:
            return tab[2 * i + 1]
        if k == -1:
            return -1
        i = (i + 1) & mask


@njit(cache=True)
def insert(tab, h, block):
    """Name `h` (held by no block) is held by `block`; the table has an empty slot."""
    mask = len(tab) // 2 - 1
    i = _home(h, mask)
    while tab[2 * i] != -1:
        i = (i + 1) & mask
    tab[2 * i] = h
    tab[2 * i + 1] = block


@njit(cache=True)
def delete(tab, h):
    """Name `h` is held no more (no-op if it is not in the table): its slot is emptied and the
    entries after it in its probe run are shifted back, so every lookup still finds its name."""
    mask = len(tab) // 2 - 1
    i = _home(h, mask)
    while tab[2 * i] != h:
        if tab[2 * i] == -1:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        k = tab[2 * j]
        if k == -1:
            break
        home = _home(k, mask)
        # the entry at j may move to the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            tab[2 * i] = k
            tab[2 * i + 1] = tab[2 * j + 1]
            i = j
    tab[2 * i] = -1


@njit(cache=True)
def rehash(tab, new_tab):
    """Every entry of the table `tab` inserted into the empty table `new_tab`."""
    for i in range(len(tab) // 2):
        if tab[2 * i] != -1:
            insert(new_tab, tab[2 * i], tab[2 * i + 1])


@njit(cache=True)
def take(n, st, tab, out):
    """The first `n` blocks of the free queue (n <= free blocks) into out[:n], in queue order: each
    leaves the queue with one reference and loses its name (evicted from the map). Returns how many
    names were evicted."""
    s = st.shape[1] - 1
    b = st[NXT, s]
    evicted = 0
    for j in range(n):
        out[j] = b
        st[REF, b] = 1
        h = st[NAME, b]
        if h >= 0:
            st[NAME, b] = -1
            delete(tab, h)
            evicted += 1
        b = st[NXT, b]
    st[NXT, s] = b
    st[PRV, b] = s
    return evicted


@njit(cache=True)
def pin(blocks, st):
    """One more reference to each of `blocks` (distinct): free ones leave the queue. Returns how
    many were free."""
    freed = 0
    for j in range(len(blocks)):
        b = blocks[j]
        if st[REF, b] == 0:
            p, q = st[PRV, b], st[NXT, b]
            st[NXT, p] = q
            st[PRV, q] = p
            freed += 1
        st[REF, b] += 1
    return freed


@njit(cache=True)
def release(table, st):
    """One reference fewer to each block of a block `table`, tail blocks first: the ones left with
    none join the end of the queue in that order (so a request's last blocks are evicted first).
    Returns how many stay referenced (shared blocks)."""
    s = st.shape[1] - 1
    shared = 0
    for j in range(len(table) - 1, -1, -1):
        b = table[j]
        r = st[REF, b] - 1
        st[REF, b] = r
        if r == 0:
            last = st[PRV, s]
            st[NXT, last] = b
            st[PRV, b] = last
            st[NXT, b] = s
            st[PRV, s] = b
        else:
            shared += 1
    return shared


@njit(cache=True)
def leading(names, tab):
    """How many leading names of `names` are held."""
    for j in range(len(names)):
        if lookup(tab, names[j]) < 0:
            return j
    return len(names)


@njit(cache=True)
def blocks_of(names, tab, out):
    """The block holding each of `names` into out[:len(names)], -1 where none."""
    for j in range(len(names)):
        out[j] = lookup(tab, names[j])
    return len(names)


@njit(cache=True)
def free_among(names, st, tab):
    """Of `names` (all held), how many are held by a free block."""
    n = 0
    for j in range(len(names)):
        if st[REF, lookup(tab, names[j])] == 0:
            n += 1
    return n


@njit(cache=True)
def name_blocks(names, blocks, st, tab):
    """Block j takes name j, in order, where the block holds no name and no block holds the name
    (first come keeps a name). Returns how many names were given."""
    given = 0
    for j in range(len(names)):
        b, h = blocks[j], names[j]
        if st[NAME, b] < 0 and lookup(tab, h) < 0:
            insert(tab, h, b)
            st[NAME, b] = h
            given += 1
    return given


@njit(cache=True)
def queue_order(st, out):
    """The free blocks in queue order into out; returns how many."""
    s = st.shape[1] - 1
    n = 0
    b = st[NXT, s]
    while b != s and n < len(out):   # (a queue never holds more blocks than there are)
        out[n] = b
        n += 1
        b = st[NXT, b]
    return n
