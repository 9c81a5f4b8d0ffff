"""The prefix cache's name -> block map as runs of arrays (simkv.kv.name_runs) against a dict,
driven by hypothesis through the same operations: names from a few contents and arbitrary ints
below 2^63, repeated names, lookups past the end of a run, runs emptied and made again."""

from __future__ import annotations

import copy
import pickle

import hypothesis.strategies as st
import numpy as np
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from simkv.kv.name_runs import NameChain, NameRuns
from simkv.sched.chunked import OWN, PREFIX, SESSION, block_name, block_names

_name = st.one_of(
    st.builds(block_name, st.sampled_from([SESSION, PREFIX, OWN]), st.integers(0, 3), st.integers(0, 40)),
    st.builds(block_name, st.just(OWN), st.just(2 ** 28 - 1), st.integers(2 ** 32 - 3, 2 ** 32 - 1)),
    st.integers(0, 2 ** 63 - 1))
_run = st.builds(lambda kind, ident, start, n: block_names(kind, ident, start, start + n),
                 st.sampled_from([SESSION, PREFIX, OWN]), st.integers(0, 3), st.integers(0, 40), st.integers(0, 30))
_chain = st.builds(lambda parts: NameChain(parts), st.lists(_run, max_size=3))
# a range: consecutive blocks of one content; a NameChain: a few such ranges
_names = st.one_of(st.lists(_name, max_size=24), _run, _chain)


class NameRunsAgainstDict(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.runs, self.ref = NameRuns(), {}
        self.next_block = 0

    def _new_blocks(self, n: int) -> list[int]:
        out = list(range(self.next_block, self.next_block + n))
        self.next_block += n
        return out

    @rule(h=_name)
    def set_one(self, h):
        if h not in self.ref:
            b = self._new_blocks(1)[0]
            self.runs.set(h, b)
            self.ref[h] = b

    @rule(names=_names)
    def set_many(self, names):
        blocks = self._new_blocks(len(names))
        given = names if type(names) in (range, NameChain) else np.array(names, dtype=np.int64)
        ok = self.runs.try_set_many(given, np.array(blocks, dtype=np.int64))
        expect = len(set(names)) == len(names) and not any(h in self.ref for h in names)
        assert ok == expect
        if ok:
            self.ref.update(zip(names, blocks))

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def drop_some(self, data):
        held = sorted(self.ref)
        chosen = data.draw(st.lists(st.sampled_from(held), unique=True, max_size=20))
        as_array = data.draw(st.booleans())
        self.runs.drop_many(np.array(chosen, dtype=np.int64) if as_array and chosen else chosen)
        for h in chosen:
            del self.ref[h]

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def drop_one(self, data):
        h = data.draw(st.sampled_from(sorted(self.ref)))
        self.runs.drop(h)
        del self.ref[h]

    @rule(names=_names, held_first=st.integers(0, 12))
    def lookups(self, names, held_first):
        if held_first or type(names) not in (range, NameChain):
            names = sorted(self.ref)[:held_first] + list(names)
        assert [self.runs.block(h) for h in names] == [self.ref.get(h, -1) for h in names]
        if names:
            assert self.runs.blocks(names).tolist() == [self.ref.get(h, -1) for h in names]
        lead = 0
        while lead < len(names) and names[lead] in self.ref:
            lead += 1
        assert self.runs.leading(names) == lead

    @rule()
    def copies(self):
        for other in (copy.deepcopy(self.runs), pickle.loads(pickle.dumps(self.runs))):
            assert other.items() == self.ref
            other.set(2 ** 62, 10 ** 9) if 2 ** 62 not in self.ref else None
        assert self.runs.items() == self.ref    # the copies are independent

    @invariant()
    def same(self):
        if hasattr(self, "runs"):
            assert len(self.runs) == len(self.ref)
            dense = {h & ~(((1 << 32) - 1) << 3) for h in self.ref if (h >> 3) & ((1 << 32) - 1) < 1 << 22}
            assert len(self.runs._runs) == len(dense)   # no empty run kept, no run for a name kept sparse


NameRunsAgainstDict.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
TestNameRunsEqualsDict = NameRunsAgainstDict.TestCase


def test_a_name_chain_is_the_sequence_of_its_ranges():
    parts = (range(0, 40, 8), range(5, 5, 8), range(3, 83, 8), range(1 << 35, (1 << 35) + 24, 8))
    chain, flat = NameChain(parts), [h for p in parts for h in p]
    assert len(chain) == len(flat) and list(chain) == flat and chain == flat
    for i in range(-len(flat), len(flat)):
        assert chain[i] == flat[i]
    for a in range(-3, len(flat) + 2):
        for b in range(-3, len(flat) + 2):
            assert list(chain[a:b]) == flat[a:b]
    assert list(chain[::2]) == flat[::2]
