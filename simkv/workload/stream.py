"""The request stream: arrival times and lengths of every request of a run, as arrays.

The stream depends only on the workload, the run length and the seed, so every variant of a
scenario sees the identical stream. Each quantity draws from its own child generator, so
changing the output distribution leaves arrival times unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from simkv.errors import SimkvError
from simkv.workload.arrivals import arrival_times as _open_arrival_times
from simkv.workload.clients import first_turns, group_for, is_client_process, with_clients
from simkv.workload.lengths import sample_lengths

if TYPE_CHECKING:  # the schema is an input: read by its discriminators, never imported at run time
    from simkv.scenario import Run, Workload


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
    class_id: np.ndarray | None = None       # int64: index into workload.classes, or None
    session: np.ndarray | None = None        # int64: conversation of each turn (-1: none)
    next_turn: np.ndarray | None = None      # int64: row of the session's next turn (-1: last)
    think_s: np.ndarray | None = None        # float64: think time before this turn (follow-ups; arrival NaN)
    block_tokens: int = 512                  # tokens per id in block_ids
    block_ids: list | None = None            # trace prefix block ids per request (Mooncake), or None
    clients: object | None = None            # closed-loop / offline clients (simkv.workload.clients.ClientSpec)

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)


def generate_stream(workload: Workload, run: Run, trace=None) -> RequestStream:
    """Sample the whole stream of a run from `run.seed`; `trace` (simkv.files.traces.TraceData) is
    the trace the workload names, read by the caller."""
    seeds = np.random.SeedSequence(run.seed).spawn(5)
    rng_arrival, rng_prompt, rng_output, rng_prefix, rng_samples = (np.random.default_rng(s) for s in seeds)
    block_ids = trace_session = None
    if workload.classes is not None:
        return _merge_classes(workload, run)
    if workload.trace is not None:
        if trace is None:
            raise ValueError("this workload replays a trace: pass the TraceData (simkv.files.traces.trace_for)")
        arrivals, prompts, outputs, block_ids, trace_session = _from_trace(workload, run, trace, rng_arrival, rng_prompt)
    else:
        arrivals = arrival_times(workload.arrival, rng_arrival, num_requests=run.num_requests,
                                 duration_s=run.duration_s)
        prompts = sample_lengths(workload.prompt_tokens, len(arrivals), rng_prompt)
        outputs = sample_lengths(workload.output_tokens, len(arrivals), rng_output)
    n = len(arrivals)
    prefix_id, prefix_tokens = _shared_prefixes(workload.shared_prefix, n, rng_prefix)
    prompts = prompts + prefix_tokens
    group = np.arange(n, dtype=np.int64)
    k = workload.sampling.sequences
    if k > 1:  # each request fans out into k sequences with the same prompt
        if workload.sampling.n > 1 and workload.trace is None:  # parallel samples end on their own
            extra = sample_lengths(workload.output_tokens, n * (k - 1), rng_samples).reshape(n, k - 1)
            outputs = np.column_stack([outputs, extra]).ravel()
        elif workload.sampling.n > 1:  # a trace records one answer per request: every sample is that long
            outputs = np.repeat(outputs, k)
        else:  # beams all run for the request's length
            outputs = np.repeat(outputs, k)
        arrivals, prompts, group = (np.repeat(a, k) for a in (arrivals, prompts, group))
        prefix_id, prefix_tokens = np.repeat(prefix_id, k), np.repeat(prefix_tokens, k)
        if block_ids is not None:
            block_ids = [ids for ids in block_ids for _ in range(k)]
    outputs, max_new = _client_limits(workload.max_new_tokens, outputs)
    stream = RequestStream(arrivals, prompts, outputs, max_new, prefix_id, prefix_tokens, group=group, block_ids=block_ids,
                           session=trace_session if k == 1 else None,
                           block_tokens=trace.block_tokens if trace is not None else 512)
    if workload.sessions is not None:
        stream = _sessions(stream, workload, rng_samples)
    if is_client_process(workload.arrival):
        if k > 1:
            raise SimkvError("closed-loop and offline clients send one sequence per request", field="workload.sampling",
                             fix="remove workload.sampling (n / beam_width), or use an open-loop arrival process")
        stream = with_clients(stream, [group_for(workload.arrival, first_turns(stream))], run)
    return stream


def arrival_times(spec, rng, *, num_requests=None, duration_s=None):
    """Open-loop arrival times; closed-loop and offline clients set them while the engine runs
    (placeholders here: one row per request to send)."""
    if is_client_process(spec):
        return np.zeros(num_requests or 0)
    return _open_arrival_times(spec, rng, num_requests=num_requests, duration_s=duration_s)


def _sessions(first: RequestStream, workload: Workload, rng: np.random.Generator) -> RequestStream:
    """Expand each request into a conversation: turn k+1's prompt is turn k's prompt and answer
    plus a new message; its arrival is set by the engine, a think time after turn k finishes."""
    spec = workload.sessions
    n = first.num_requests
    turns = sample_lengths(spec.turns, n, rng)
    total = int(turns.sum())
    starts = np.r_[0, np.cumsum(turns)[:-1]]
    session = np.repeat(np.arange(n, dtype=np.int64), turns)
    turn = np.arange(total) - np.repeat(starts, turns)
    user = sample_lengths(spec.user_tokens, total, rng)
    outputs = sample_lengths(workload.output_tokens, total, rng)
    outputs[starts] = first.output_tokens
    outputs, max_new = _client_limits(workload.max_new_tokens, outputs)
    prompts = np.empty(total, dtype=np.int64)
    for s, k0 in enumerate(starts.tolist()):  # history grows turn by turn
        p = int(first.prompt_tokens[s])
        for k in range(k0, k0 + int(turns[s])):
            prompts[k] = p if k == k0 else prompts[k - 1] + outputs[k - 1] + user[k]
    arrivals = np.full(total, np.nan)
    arrivals[starts] = first.arrival_s
    last = np.r_[starts[1:], total] - 1
    next_turn = np.arange(1, total + 1, dtype=np.int64)
    next_turn[last] = -1
    think = np.where(turn > 0, rng.exponential(spec.think_s, total), 0.0)
    zeros = np.zeros(total, dtype=np.int64)
    return RequestStream(arrivals, prompts, outputs, max_new, np.full(total, -1, dtype=np.int64), zeros,
                         group=np.arange(total, dtype=np.int64), session=session, next_turn=next_turn, think_s=think)


def _from_trace(workload: Workload, run: Run, trace, rng_arrival, rng_rows):
    """Replay a trace's arrivals and lengths exactly (windowed, sampled, sped up), or, for a
    lengths-only trace or when workload.arrival is given, resample its (prompt, output) rows."""
    spec = workload.trace
    paced = workload.arrival is not None and is_client_process(workload.arrival)  # lengths from the trace, pacing from clients
    if trace.arrival_s is None and paced and run.num_requests is None:
        raise SimkvError("the trace has no arrival times, so it has no number of requests to send", file=trace.origin,
                         field="run.num_requests", fix="give run.num_requests (rows are drawn from the trace)")
    if trace.arrival_s is None or (workload.arrival is not None and not paced):
        if workload.arrival is None:
            raise SimkvError("the trace has no arrival times (a lengths-only table)", file=trace.origin,
                             field="workload.arrival", fix="give workload.arrival (e.g. {process: poisson, rate: 5}) "
                             "or map workload.trace.columns.arrival")
        arrivals = arrival_times(workload.arrival, rng_arrival, num_requests=run.num_requests, duration_s=run.duration_s)
        rows = rng_rows.integers(0, trace.num_requests, len(arrivals))
    else:
        t = trace.arrival_s
        keep = np.ones(len(t), bool)
        if spec.window_s is not None:
            keep &= (t >= spec.window_s[0]) & (t < spec.window_s[1])
        if spec.sample < 1:
            keep &= rng_rows.random(len(t)) < spec.sample
        rows = np.flatnonzero(keep)
        start = spec.window_s[0] if spec.window_s is not None else 0.0
        with np.errstate(over="ignore"):
            arrivals = (t[rows] - start) / spec.speed
        if not np.isfinite(arrivals).all():
            raise SimkvError(f"arrival times divided by speed {spec.speed:g} overflow", file=trace.origin,
                             field="workload.trace.speed", fix="give a larger speed (1e-6 or more)")
        if len(rows) == 0:
            span = float(t[-1])
            raise SimkvError(f"no request of the trace (span {span:g} s) is kept by window_s {list(spec.window_s or [])} "
                             f"and sample {spec.sample:g}", file=trace.origin, field="workload.trace.window_s",
                             fix=f"give a window inside [0, {span:g}] s, or a larger sample")
        if run.duration_s is not None:
            rows, arrivals = rows[arrivals < run.duration_s], arrivals[arrivals < run.duration_s]
        if run.num_requests is not None:
            rows, arrivals = rows[:run.num_requests], arrivals[:run.num_requests]
    blocks = [trace.block_ids[i] for i in rows.tolist()] if trace.block_ids is not None else None
    session = trace.session[rows] if trace.session is not None else None
    return arrivals, trace.prompt_tokens[rows].copy(), trace.output_tokens[rows].copy(), blocks, session


def _shared_prefixes(spec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which requests start with which shared prefix (-1: none), and its length."""
    if spec is None:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    shared = rng.random(n) < spec.fraction
    ids = np.where(shared, rng.integers(0, spec.num_prefixes, n), -1).astype(np.int64)
    return ids, np.where(shared, spec.tokens, 0).astype(np.int64)


def _client_limits(policy, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if policy.policy == "cap":
        return np.minimum(outputs, policy.tokens), np.full_like(outputs, policy.tokens)
    if policy.policy == "multiple":
        return outputs, np.ceil(outputs * policy.factor).astype(np.int64)
    return outputs, outputs.copy()


def _merge_classes(workload: Workload, run: Run) -> RequestStream:
    """Each class's stream from its own seed (run.seed, class index), merged by arrival time."""
    parts = []
    if is_client_process(workload.classes[0].arrival):
        return _client_classes(workload, run)
    for i, cls in enumerate(workload.classes):
        sub = workload.model_copy(update={"classes": None, "arrival": cls.arrival, "prompt_tokens": cls.prompt_tokens,
                                          "output_tokens": cls.output_tokens, "max_new_tokens": cls.max_new_tokens})
        seed = int(np.random.SeedSequence([run.seed, i]).generate_state(1)[0])
        parts.append(generate_stream(sub, run.model_copy(update={"seed": seed})))
    arrival = np.concatenate([p.arrival_s for p in parts])
    order = np.argsort(arrival, kind="stable")
    if run.num_requests is not None:
        order = order[:run.num_requests]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])[order]
    class_id = np.concatenate([np.full(p.num_requests, i, dtype=np.int64) for i, p in enumerate(parts)])[order]
    # requests of a class keep their fan-out groups, renumbered to stay distinct
    offsets = np.cumsum([0] + [int(p.group.max()) + 1 for p in parts[:-1]])
    group = np.concatenate([p.group + off for p, off in zip(parts, offsets)])[order]
    _, group = np.unique(group, return_inverse=True)
    return RequestStream(arrival[order], cat("prompt_tokens"), cat("output_tokens"), cat("max_new_tokens"),
                         cat("prefix_id"), cat("prefix_tokens"), group=group.astype(np.int64), class_id=class_id)


def _client_classes(workload: Workload, run: Run) -> RequestStream:
    """Closed-loop classes: each class has its own clients drawing from its own requests; run.num_requests
    is split over the classes in proportion to their concurrency (offline: equally)."""
    from dataclasses import replace
    from simkv.workload.clients import ClientSpec
    weights = np.array([getattr(c.arrival, "concurrency", 1) for c in workload.classes], dtype=float)
    counts = np.floor(run.num_requests * weights / weights.sum()).astype(int)
    counts[: run.num_requests - int(counts.sum())] += 1
    parts, groups, offset = [], [], 0
    for i, (cls, n) in enumerate(zip(workload.classes, counts.tolist())):
        if n == 0:
            raise SimkvError(f"run.num_requests ({run.num_requests}) leaves class '{cls.name}' no request",
                             field="run.num_requests", fix=f"give at least {len(counts)} requests")
        sub = workload.model_copy(update={"classes": None, "arrival": cls.arrival, "prompt_tokens": cls.prompt_tokens,
                                          "output_tokens": cls.output_tokens, "max_new_tokens": cls.max_new_tokens})
        seed = int(np.random.SeedSequence([run.seed, i]).generate_state(1)[0])
        p = generate_stream(sub, run.model_copy(update={"seed": seed, "num_requests": n, "warmup_requests": 0}))
        g = p.clients.groups[0]
        groups.append(replace(g, rows=g.rows + offset))
        parts.append(p)
        offset += p.num_requests
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
    class_id = np.concatenate([np.full(p.num_requests, i, dtype=np.int64) for i, p in enumerate(parts)])
    sessions = parts[0].session is not None
    session = next_turn = think = None
    if sessions:  # conversations stay distinct across classes; next-turn pointers move with their rows
        session = np.concatenate([p.session + sum(int(q.session.max()) + 1 for q in parts[:i]) for i, p in enumerate(parts)])
        offs = np.cumsum([0] + [q.num_requests for q in parts[:-1]])
        next_turn = np.concatenate([np.where(p.next_turn >= 0, p.next_turn + o, -1) for p, o in zip(parts, offs)])
        think = cat("think_s")
    return RequestStream(cat("arrival_s"), cat("prompt_tokens"), cat("output_tokens"), cat("max_new_tokens"),
                         cat("prefix_id"), cat("prefix_tokens"), group=np.arange(offset, dtype=np.int64),
                         class_id=class_id, session=session, next_turn=next_turn, think_s=think,
                         clients=ClientSpec(tuple(groups), run.seed, run.warmup_requests))
