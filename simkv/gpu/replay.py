"""Execute a recorded schedule on the mini engine: exactly the sequences, positions, samples and
preemptions of each simulated step, on a real KV store, timing every step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from simkv.gpu.mini_model import MiniModel, Segment
from simkv.gpu.schedule import ScheduleTrace


@dataclass
class Replay:
    """What a replay measured and produced."""

    seconds: np.ndarray                          # measured wall time of each step
    outputs: dict[int, list[int]]                # generated tokens of each request
    swaps: int = 0
    recomputes: int = 0
    resampled: int = 0                           # samples at a position whose token was already known
    notes: list[str] = field(default_factory=list)


def prompt_ids(rid: int, length: int, vocab: int, seed: int) -> list[int]:
    """The random prompt of request `rid` (the same on every engine)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rid)
    return torch.randint(0, vocab, (length,), generator=g).tolist()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def replay(trace: ScheduleTrace, model: MiniModel, store, seed: int = 0, max_steps: int | None = None,
           progress=None) -> Replay:
    """Run `trace`'s steps (all, or the first `max_steps`) on `model` over `store`; `progress(done,
    total)` is called after each step, outside its timing."""
    dev = model.device
    tokens: dict[int, list[int]] = {}
    kv_len: dict[int, int] = {}
    host: dict[int, tuple] = {}
    out = Replay(np.zeros(0), {})
    seconds = []
    steps = trace.steps if max_steps is None else trace.steps[:max_steps]
    for done_steps, step in enumerate(steps, 1):
        _sync(dev)
        t0 = time.perf_counter()
        for rid in step.preempted_ids:
            if kv_len.get(rid, 0) and trace.preemption == "swap":
                host[rid] = store.swap_out(rid, kv_len[rid])
                out.swaps += 1
            else:
                store.free(rid)
                kv_len[rid] = 0
                out.recomputes += 1
        segments = []
        for rid, ctx in zip(step.decode_ids.tolist(), step.decode_ctx.tolist()):
            if rid in host:
                store.swap_in(rid, host.pop(rid))
            store.ensure(rid, ctx)
            segments.append(Segment(rid, [tokens[rid][ctx - 1]], ctx - 1, True))
            kv_len[rid] = ctx
        for rid, start, end, done in zip(step.prefill_ids.tolist(), step.prefill_start.tolist(),
                                         step.prefill_end.tolist(), step.prefill_done.tolist()):
            if rid not in tokens:
                tokens[rid] = prompt_ids(rid, int(trace.prompt_tokens[rid]), model.shape.vocab, seed)
            if rid in host:                      # swapped out, then recomputed: the host copy is stale
                host.pop(rid)
            start = min(start, kv_len.get(rid, 0))   # positions the store lacks are computed too
            store.ensure(rid, end)
            segments.append(Segment(rid, tokens[rid][start:end], start, bool(done)))
            kv_len[rid] = end
        emitted = model.step(segments, store)
        _sync(dev)
        seconds.append(time.perf_counter() - t0)
        for seg in segments:
            if seg.rid not in emitted:
                continue
            end = seg.start + len(seg.tokens)
            if end == len(tokens[seg.rid]):
                tokens[seg.rid].append(emitted[seg.rid])
            else:
                out.resampled += 1
        for rid in step.decode_ids.tolist():
            if len(tokens[rid]) - trace.prompt_tokens[rid] >= trace.output_tokens[rid]:
                store.free(rid)                  # finished: its memory goes back
                kv_len.pop(rid, None)
        for rid, done in zip(step.prefill_ids.tolist(), step.prefill_done.tolist()):
            if done and len(tokens[rid]) - trace.prompt_tokens[rid] >= trace.output_tokens[rid]:
                store.free(rid)
                kv_len.pop(rid, None)
        if progress is not None:
            progress(done_steps, len(steps))
    out.seconds = np.array(seconds)
    out.outputs = {rid: toks[int(trace.prompt_tokens[rid]):] for rid, toks in tokens.items()}
    return out
