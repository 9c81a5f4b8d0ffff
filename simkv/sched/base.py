"""The scheduler contract and the plan it hands the engine each iteration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)
_NO_FLAGS = np.zeros(0, dtype=bool)
_add_reduce = np.add.reduce   # ndarray.sum without its Python wrapper


def step_ends(start_s: float, durations_s: np.ndarray) -> np.ndarray:
    """The end time of each of consecutive steps that start at `start_s`: the start plus the
    durations added one at a time, left to right. So a step's end is the same float whichever steps
    it is committed with (a run in one piece, in pieces, or step by step), and results do not
    depend on how the engine groups steps (tests/test_step_grouping.py)."""
    if len(durations_s) == 1:
        return start_s + durations_s
    d = durations_s.copy()
    d[0] += start_s
    return d.cumsum()   # a sequential sum (numpy's accumulate), unlike a pairwise add.reduce


# Plans and outcomes are made once per engine step and never changed after (a changed copy is made
# with dataclasses.replace); they are not frozen=True because a frozen dataclass sets each field through
# object.__setattr__, which was a few percent of a step's time. The shared empty defaults are not to be
# written into.
@dataclass(slots=True)
class StepPlan:
    """What one engine step computes. A decode-only plan may be repeated `max_steps` times
    unchanged (fast-forward), unless an arrival could change it (`arrival_sensitive`)."""

    # sequences decoding one token each; context = KV slots attended, including the new token
    decode_ids: np.ndarray = field(default_factory=lambda: _EMPTY)
    decode_ctx: np.ndarray = field(default_factory=lambda: _EMPTY)
    # sequences prefilling: tokens computed this step, and context after the step (cached + new)
    prefill_ids: np.ndarray = field(default_factory=lambda: _EMPTY)
    prefill_new: np.ndarray = field(default_factory=lambda: _EMPTY)
    prefill_ctx: np.ndarray = field(default_factory=lambda: _EMPTY)
    # whether each prefill completes its prompt and samples a token (empty: all do)
    prefill_done: np.ndarray = field(default_factory=lambda: _NO_FLAGS)
    # requests preempted (KV freed and requeued, or swapped to host) before this step
    preempted_ids: tuple[int, ...] = ()
    swap_out_tokens: int = 0   # KV tokens copied device -> host in this step
    swap_in_tokens: int = 0    # KV tokens copied host -> device in this step
    kv_load_host_tokens: int = 0   # prefix-cache blocks' tokens loaded from the host offload tier (simkv.kv.offload)
    kv_load_ssd_tokens: int = 0    # ... and from the SSD offload tier
    max_steps: int = 1
    arrival_sensitive: bool = True
    # tokens each decoding sequence computes (speculative verification: k proposals + 1; else 1)
    decode_tokens: int = 1

    @property
    def num_seqs(self) -> int:
        return len(self.decode_ids) + len(self.prefill_ids)

    @property
    def num_batched_tokens(self) -> int:
        """Tokens computed in one step: decode_tokens per decode plus every prefill token."""
        decode = len(self.decode_ids) * self.decode_tokens
        return decode + int(_add_reduce(self.prefill_new)) if len(self.prefill_new) else decode

    @property
    def num_sampled(self) -> int:
        """Rows that sample a token this step (lm_head rows; every verified position of a decode)."""
        decode = len(self.decode_ids) * self.decode_tokens
        if len(self.prefill_done):
            return decode + int(np.count_nonzero(self.prefill_done))
        return decode + len(self.prefill_ids)


@dataclass(slots=True)
class StepOutcome:
    """What `commit` did, for the recorder, over the k committed steps."""

    step_end_s: np.ndarray          # end time of each step
    kv: np.ndarray                  # (5, k) slots during each step: token states, reserved,
                                    # internal frag, external frag, free (see simkv.kv.base)
    num_running: int                # sequences in each step
    num_waiting: int                # queue depth during the steps
    tokens_per_step: int            # tokens generated in each step
    measured_decoders: int          # measured decoders whose token gaps are the step durations
    finished_ids: tuple[int, ...] = ()
    extra_gaps_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # other token gaps
    gap_steps_from: int = 0         # the durations before this index are covered by extra_gaps_s
    extra_gap_value: float = 0.0    # and `extra_gap_count` more token gaps of this one value
    extra_gap_count: int = 0
    # the queue depth at each step's end, where requests arrived during the steps (set by the
    # engine, simkv.engine.Replica._queue_by_step); None: `num_waiting` during every step
    waiting_by_step: np.ndarray | None = None


class Scheduler(Protocol):
    """What the engine needs from a policy."""

    def add_request(self, req_id: int) -> bool:
        """A request arrived (called by the arrival process); False if the engine refuses it."""

    def has_work(self) -> bool:
        """Is anything running or waiting?"""

    def schedule(self) -> StepPlan | None:
        """Plan the next step (allocating prefills, preempting); None when nothing can run."""

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        """Apply `len(durations_s)` repetitions of `plan` that started at `start_s`."""
