"""Routing policies. A router knows what a real one can: what it sent to each replica, which answers
came back (with `state_interval_s`, only at its periodic refreshes), and for kv_aware the prompt
prefixes it sent to each replica (an approximate prefix index kept by the router itself, bounded by
each replica's KV capacity and evicted least-recently-used, as vLLM production-stack's and llm-d's
prefix-aware routers keep one). It never reads a replica's allocator or queue."""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from simkv.fleet.spec import RouterSpec


class Router:
    """Chooses a replica (a global index) among live candidates for each request."""

    def __init__(self, spec: RouterSpec, table, capacities: list[int], seed: int) -> None:
        self.spec = spec
        self.t = table
        n = len(capacities)
        self.outstanding = np.zeros(n)            # requests sent and not yet (seen) answered
        self.outstanding_tokens = np.zeros(n)     # their prompt + max_new_tokens
        self.decisions = np.zeros(n, dtype=np.int64)
        self.prefix_routed = 0                    # kv_aware: decisions where the router expected a hit
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, spec.seed, 14]))
        self._rr = 0
        self._unseen: deque = deque()             # (time, replica, tokens) answers not yet seen
        self._sessions: dict[int, int] = {}
        self._capacity = capacities
        self._index = [OrderedDict() for _ in range(n)]
        self._index_used = [0] * n
        self._tokens_sum = 0.0
        self._tokens_n = 0

    # ------------------------------------------------------------ bookkeeping
    def _tokens(self, rid: int) -> float:
        return float(self.t.prompt_tokens[rid] + self.t.max_new_tokens[rid])

    def sent(self, g: int, rid: int) -> None:
        tok = self._tokens(rid)
        self.outstanding[g] += 1
        self.outstanding_tokens[g] += tok
        self.decisions[g] += 1
        self._tokens_sum += tok
        self._tokens_n += 1
        if self.spec.policy == "kv_aware":
            self._insert(g, self._segments(rid))

    def answered(self, g: int, rid: int, now: float, refused: bool = False) -> None:
        """Replica g answered (finished, refused, or lost by a fault) request rid at `now`."""
        tok = self._tokens(rid)
        if self.spec.state_interval_s > 0 and not refused:
            self._unseen.append((now, g, tok))
        else:
            self.outstanding[g] -= 1
            self.outstanding_tokens[g] -= tok
        if self.spec.policy == "kv_aware" and not refused and self.t.session is not None:
            key = ("s", int(self.t.session[rid]))
            self._insert(g, [(key, int(self.t.prompt_tokens[rid] + self.t.output_tokens[rid]))])

    def forget(self, g: int) -> None:
        """Replica g is gone: nothing it held counts any more."""
        self.outstanding[g] = self.outstanding_tokens[g] = 0
        self._unseen = deque(x for x in self._unseen if x[1] != g)
        self._index[g].clear()
        self._index_used[g] = 0

    def _refresh(self, now: float) -> None:
        step = self.spec.state_interval_s
        if step <= 0:
            return
        seen_until = np.floor(now / step) * step
        while self._unseen and self._unseen[0][0] <= seen_until:
            _, g, tok = self._unseen.popleft()
            self.outstanding[g] -= 1
            self.outstanding_tokens[g] -= tok

    def _load(self, cands: np.ndarray) -> np.ndarray:
        if self.spec.load == "tokens":
            unit = self._tokens_sum / self._tokens_n if self._tokens_n else 1.0
            return self.outstanding_tokens[cands] / unit
        return self.outstanding[cands]

    # ------------------------------------------------------------ decisions
    def pick(self, rid: int, cands: np.ndarray, now: float) -> int:
        """The replica (global index) among `cands` (live, able to take rid) that gets request rid."""
        self._refresh(now)
        p = self.spec.policy
        if p == "round_robin":
            g = int(cands[self._rr % len(cands)])
            self._rr += 1
            return g
        if p == "random":
            return int(cands[self.rng.integers(len(cands))])
        if p == "session":
            key = int(self.t.session[rid]) if self.t.session is not None else int(self.t.group[rid])
            g = self._sessions.get(key)
            if g is None or g not in cands:
                g = self._least(cands, self._load(cands))
                self._sessions[key] = g
            return g
        if p == "kv_aware":
            segs = self._segments(rid)
            prompt = max(int(self.t.prompt_tokens[rid]), 1)
            hits = np.array([self._match(int(g), segs) for g in cands]) / prompt
            score = self._load(cands) - self.spec.hit_weight * hits
            g = self._least(cands, score)
            if hits.max() > 0 and hits[list(cands).index(g)] > 0:
                self.prefix_routed += 1
            return g
        return self._least(cands, self._load(cands))   # least_loaded, by_class (within the class's pools)

    def _least(self, cands: np.ndarray, score: np.ndarray) -> int:
        """The lowest score; ties taken in turn (so equal replicas share the work evenly)."""
        ties = cands[score <= score.min() + 1e-12]
        g = int(ties[self._rr % len(ties)])
        self._rr += 1
        return g

    # ------------------------------------------------------------ the router's prefix index
    def _segments(self, rid: int) -> list[tuple]:
        """The request's prompt as named, chained pieces: (name, tokens)."""
        t = self.t
        if t.session is not None:   # a conversation's history, growing turn after turn
            return [(("s", int(t.session[rid])), int(t.prompt_tokens[rid]))]
        if t.trace_blocks is not None:
            per = t.trace_block_tokens
            return [(("m", b), per) for b in t.trace_blocks[rid]]
        if t.prefix_id[rid] >= 0 and t.prefix_tokens[rid] > 0:
            return [(("p", int(t.prefix_id[rid])), int(t.prefix_tokens[rid]))]
        return []

    def _match(self, g: int, segs: list[tuple]) -> int:
        index, hit = self._index[g], 0
        for key, tokens in segs:
            have = index.get(key)
            if have is None:
                break
            hit += min(have, tokens)
            if have < tokens:
                break
        return hit

    def _insert(self, g: int, segs: list[tuple]) -> None:
        index = self._index[g]
        for key, tokens in segs:
            have = index.get(key, 0)
            if tokens > have:
                index[key] = tokens
                self._index_used[g] += tokens - have
            index.move_to_end(key)
        while self._index_used[g] > self._capacity[g] and len(index) > 1:
            _, tokens = index.popitem(last=False)
            self._index_used[g] -= tokens
