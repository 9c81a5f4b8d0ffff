"""The request stream: arrival times and lengths of every request of a run, as arrays.

The stream depends only on the workload, the run length and the seed, so every variant of a
scenario sees the identical stream. Each quantity draws from its own child generator, so
changing the output distribution leaves arrival times unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simkv.scenario import CapMaxNew, MultipleMaxNew, Run, Workload
from simkv.workload.arrivals import arrival_times
from simkv.workload.lengths import sample_lengths


@dataclass(frozen=True)
class RequestStream:
    """Columns of the requests in arrival order (request id = row)."""

    arrival_s: np.ndarray        # float64, nondecreasing
    prompt_tokens: np.ndarray    # int64 >= 1
    output_tokens: np.ndarray    # int64 >= 1: the true output length (unknown to the engine)
    max_new_tokens: np.ndarray   # int64 >= output_tokens: what the client asked for
    prefix_id: np.ndarray | None = None      # int64: shared prefix of each request, -1 for none
    prefix_tokens: np.ndarray | None = None  # int64: tokens of that prefix at the prompt's start
    group: np.ndarray | None = None          # int64: the request each sequence belongs to (parallel sampling)

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)


def generate_stream(workload: Workload, run: Run) -> RequestStream:
    """Sample the whole stream of a run from `run.seed`."""
    seeds = np.random.SeedSequence(run.seed).spawn(5)
    rng_arrival, rng_prompt, rng_output, rng_prefix, rng_samples = (np.random.default_rng(s) for s in seeds)
    arrivals = arrival_times(workload.arrival, rng_arrival, num_requests=run.num_requests,
                             duration_s=run.duration_s)
    n = len(arrivals)
    prompts = sample_lengths(workload.prompt_tokens, n, rng_prompt)
    outputs = sample_lengths(workload.output_tokens, n, rng_output)
    prefix_id, prefix_tokens = _shared_prefixes(workload.shared_prefix, n, rng_prefix)
    prompts = prompts + prefix_tokens
    group = np.arange(n, dtype=np.int64)
    k = workload.sampling.sequences
    if k > 1:  # each request fans out into k sequences with the same prompt
        if workload.sampling.n > 1:  # parallel samples end on their own
            extra = sample_lengths(workload.output_tokens, n * (k - 1), rng_samples).reshape(n, k - 1)
            outputs = np.column_stack([outputs, extra]).ravel()
        else:  # beams all run for the request's length
            outputs = np.repeat(outputs, k)
        arrivals, prompts, group = (np.repeat(a, k) for a in (arrivals, prompts, group))
        prefix_id, prefix_tokens = np.repeat(prefix_id, k), np.repeat(prefix_tokens, k)
    outputs, max_new = _client_limits(workload.max_new_tokens, outputs)
    return RequestStream(arrivals, prompts, outputs, max_new, prefix_id, prefix_tokens, group)


def _shared_prefixes(spec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which requests start with which shared prefix (-1: none), and its length."""
    if spec is None:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    shared = rng.random(n) < spec.fraction
    ids = np.where(shared, rng.integers(0, spec.num_prefixes, n), -1).astype(np.int64)
    return ids, np.where(shared, spec.tokens, 0).astype(np.int64)


def _client_limits(policy, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(policy, CapMaxNew):
        return np.minimum(outputs, policy.tokens), np.full_like(outputs, policy.tokens)
    if isinstance(policy, MultipleMaxNew):
        return outputs, np.ceil(outputs * policy.factor).astype(np.int64)
    return outputs, outputs.copy()
