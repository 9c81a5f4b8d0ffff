"""Closed-loop and offline clients, as benchmark tools run them.

`vllm bench serve --max-concurrency N`, genai-perf/AIPerf `--concurrency N` and MLPerf Server/Offline
drive an engine with a fixed number of clients: each client has at most one request in flight and
sends the next one (the next unsent request of the shared list, in order) a think time after the
previous one's last token, or at once when the previous one was refused. Offline
(`vllm bench throughput`, MLPerf Offline) is every request queued at time 0.

`ClientSpec` (built with the request stream) says which rows each group of clients draws from;
`ClientPool` is the runtime state of one simulation: which client is free, which row is next. It
knows nothing of simpy: the engine asks it what to send when. A router between clients and
replicas (fleets) would sit between `ClientPool.take` and a replica's admission.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class ClientGroup:
    """N clients drawing, in order, from `rows` (first turns when requests are sessions)."""

    rows: np.ndarray          # int64 row ids, in sending order
    concurrency: int          # clients (count)
    think_s: float = 0.0      # mean exponential think time after an answer (s)
    ramp_up_s: float = 0.0    # client i starts at i / concurrency * ramp_up_s (s)


@dataclass(frozen=True)
class ClientSpec:
    """The client groups of a run (one per request class, or one) and the seed of their think times."""

    groups: tuple[ClientGroup, ...]
    seed: int = 0
    warmup_requests: int = 0   # the first this many requests sent are left out of statistics


def is_client_process(spec) -> bool:
    return spec is not None and spec.process in ("closed", "offline")


def group_for(spec, rows: np.ndarray) -> ClientGroup:
    """The client group an arrival spec (closed or offline) makes for `rows`."""
    if spec.process == "offline":
        return ClientGroup(rows.astype(np.int64), max(len(rows), 1))
    return ClientGroup(rows.astype(np.int64), spec.concurrency, spec.think_s, spec.ramp_up_s)


class ClientPool:
    """Runtime state of the clients of one simulation.

    `start()` gives the first send of every client; `release(rid, now)` frees the client of a
    finished or refused request and says when it sends again (or None: nothing left to send);
    `take(group, now)` hands that client the group's next unsent row. Rows are taken in order, so
    row k of a group is its k-th request sent."""

    def __init__(self, spec: ClientSpec, num_rows: int, session: np.ndarray | None = None) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 19]))
        self.group_of = np.full(num_rows, -1, dtype=np.int64)
        for i, g in enumerate(spec.groups):
            self.group_of[g.rows] = i
        if session is not None and num_rows:  # every turn of a conversation belongs to its first turn's client
            by_session = np.full(int(session.max()) + 1, -1, dtype=np.int64)
            firsts = np.flatnonzero(self.group_of >= 0)
            by_session[session[firsts]] = self.group_of[firsts]
            self.group_of = by_session[session]
        self.next = [0] * len(spec.groups)       # index of each group's next unsent row
        self.sent = 0                            # requests sent so far, all groups
        self.total = sum(len(g.rows) for g in spec.groups)

    def start(self) -> list[tuple[float, int]]:
        """(start time, group) of every client that will send at least one request, by time."""
        out = []
        for i, g in enumerate(self.spec.groups):
            n = min(g.concurrency, len(g.rows))
            out += [(k / g.concurrency * g.ramp_up_s, i) for k in range(n)]
        return sorted(out)

    def release(self, rid: int, now: float) -> tuple[float, int] | None:
        """The request `rid` ended (answered or refused): (when its client sends next, group), or
        None when its group has nothing left to send (the client retires)."""
        g = int(self.group_of[rid])
        if g < 0:
            return None
        grp = self.spec.groups[g]
        if self.next[g] >= len(grp.rows):
            return None
        think = float(self.rng.exponential(grp.think_s)) if grp.think_s > 0 else 0.0
        return now + think, g

    def take(self, group: int) -> int | None:
        """The next unsent row of `group` (None if none is left)."""
        rows = self.spec.groups[group].rows
        k = self.next[group]
        if k >= len(rows):
            return None
        self.next[group] = k + 1
        self.sent += 1
        return int(rows[k])

    @property
    def exhausted(self) -> bool:
        return self.sent >= self.total


def with_clients(stream, groups: list[ClientGroup], run) -> object:
    """`stream` sent by the clients `groups`: no row has an arrival time until a client sends it."""
    from dataclasses import replace
    return replace(stream, arrival_s=np.full(stream.num_requests, np.nan),
                   clients=ClientSpec(tuple(groups), run.seed, run.warmup_requests))


def first_turns(stream) -> np.ndarray:
    """Rows a client sends itself: every row, or the first turn of each conversation."""
    if stream.next_turn is None or stream.session is None:
        return np.arange(stream.num_requests, dtype=np.int64)
    s = stream.session
    return np.flatnonzero(np.r_[True, s[1:] != s[:-1]]).astype(np.int64)
