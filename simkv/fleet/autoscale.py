"""Autoscaling one pool of a fleet (the scenario's `fleet.autoscale`).

Every `interval_s` the policy reads the pool's load as a real autoscaler can see it (the engines'
exported gauges, not their internals): `queue` the mean waiting requests per serving replica (vLLM's
num_requests_waiting), `kv` the mean KV-cache usage (held slots / capacity, vLLM's kv_cache_usage_perc),
`slo` the share of the pool's requests whose first token came in the last `window_s` that met
slo.ttft_s. It adds a replica when the signal spread over the replicas serving and starting is above
`target` (slo: attainment below it); the new replica takes `cold_start_s` (or the model's weights per
GPU over `load_gbps`) before the router sends it anything. It drains one when one fewer replica
would still stay below the target (slo: attainment met and nothing waiting), no replica is starting
and nothing changed for `window_s` (a scale-down stabilisation window, as Kubernetes' HPA keeps):
the router stops sending it requests, its running and queued ones finish, then it stops. Serving
plus starting replicas stay within [min, max]. The pool's `max` engines are built up front; one that
is off gets nothing. A replica counts GPU time from the moment it is added to the moment it stops.
"""

from __future__ import annotations

import numpy as np

OFF, STARTING, SERVING, DRAINING = "off", "starting", "serving", "draining"


class Autoscaler:
    """The policy's state and its simpy process; `fleet` is simkv.fleet.run.Fleet."""

    def __init__(self, fleet) -> None:
        self.fleet = fleet
        self.spec = a = fleet.spec.autoscale
        self.pool = pool = next(p for p in fleet.pools if p.name == a.pool)
        first = sum(p.num_replicas for p in fleet.pools[:pool.index])
        self.members = list(range(first, first + pool.num_replicas))
        initial = next(p.replicas for p in fleet.spec.pools if p.name == a.pool)
        self.state = {g: (SERVING if i < initial else OFF) for i, g in enumerate(self.members)}
        for g in self.members[initial:]:
            fleet.routable[g] = False
            fleet.lifetimes[g] = []
        sc = pool.scenario
        self.gpus_per_replica = sc.hardware.tensor_parallel
        if a.cold_start_s is not None:
            self.cold_start_s = float(a.cold_start_s)
        else:
            weights = sc.model_spec().weight_bytes_per_gpu(pool.sim.engine.weight_dtype, self.gpus_per_replica)
            self.cold_start_s = float(weights) / (a.load_gbps * 1e9)
        self.ttft_s = sc.slo.ttft_s
        self.events: list[dict] = []
        self.samples: list[tuple[float, int, int, int]] = []
        self._last_change = 0.0
        self.next_tick = a.interval_s
        self._sample(0.0)
        fleet.env.process(self._loop())

    # ------------------------------------------------------------ counts
    def _in(self, *states: str) -> list[int]:
        return [g for g in self.members if self.state[g] in states]

    def _sample(self, now: float) -> None:
        row = (now, len(self._in(SERVING)), len(self._in(STARTING)), len(self._in(DRAINING)))
        if self.samples and self.samples[-1][0] == now:
            self.samples[-1] = row
        else:
            self.samples.append(row)

    # ------------------------------------------------------------ the signal
    def signal(self, now: float) -> float | None:
        serving, reps = self._in(SERVING), self.fleet.replicas
        m = self.spec.metric
        if m == "queue":
            return float(np.mean([reps[g].scheduler.num_waiting() for g in serving]))
        if m == "kv":
            use = [reps[g].scheduler.kv.usage() for g in serving]
            return float(np.mean([u.held_tokens / u.capacity_tokens for u in use]))
        t = self.pool.sim.table   # slo: TTFTs that came in during the window
        ft = t.first_token_s
        seen = (ft > now - self.spec.window_s) & (ft <= now) & (self.fleet.pool_of == self.pool.index)
        if not seen.any():
            return None
        return float(np.mean(ft[seen] - t.arrival_s[seen] <= self.ttft_s + 1e-12))

    def _decide(self, now: float) -> None:
        a = self.spec
        serving, starting = self._in(SERVING), self._in(STARTING)
        up = len(serving) + len(starting)
        sig = self.signal(now)
        calm = not starting and now - self._last_change >= a.window_s - 1e-9
        if a.metric == "slo":
            add = sig is not None and sig < a.target and not starting
            waiting = sum(self.fleet.replicas[g].scheduler.num_waiting() for g in serving)
            drain = calm and (sig is None or sig >= a.target) and waiting == 0
        else:
            total = sig * len(serving)
            add = total / up > a.target
            drain = calm and up > 1 and total / (up - 1) < a.target
        if add and up < a.max and self._in(OFF):   # a draining engine is not free yet
            self._add(now, sig)
        elif drain and not add and up > a.min:
            self._drain(now, sig)

    # ------------------------------------------------------------ actions
    def _event(self, now: float, action: str, g: int, sig: float | None) -> None:
        self._sample(now)
        self.events.append({"t_s": float(now), "action": action, "replica": g, "signal": sig,
                            "serving": len(self._in(SERVING)), "starting": len(self._in(STARTING)),
                            "draining": len(self._in(DRAINING))})

    def _add(self, now: float, sig: float | None) -> None:
        off = self._in(OFF)
        fresh = [g for g in off if not self.fleet.lifetimes[g]]
        g = (fresh or off)[0]
        self.state[g] = STARTING
        self.fleet.lifetimes[g].append([now, None])
        self._last_change = now
        self._event(now, "add", g, sig)
        self.fleet.env.process(self._ready(g, now + self.cold_start_s))

    def _ready(self, g: int, at: float):
        env = self.fleet.env
        yield env.timeout(at - env.now)
        if self.fleet._closed or self.state[g] != STARTING:
            return
        self.state[g] = SERVING
        self.fleet.routable[g] = True
        self._event(env.now, "ready", g, None)

    def _drain(self, now: float, sig: float | None) -> None:
        out = self.fleet._outstanding
        g = min(self._in(SERVING), key=lambda r: (len(out[r]), -r))
        self.state[g] = DRAINING
        self.fleet.routable[g] = False
        self._last_change = now
        self._event(now, "drain", g, sig)
        self.answered(g)

    def answered(self, g: int) -> None:
        """Replica g answered a request: a draining replica with nothing left stops."""
        if self.state.get(g) == DRAINING and not self.fleet._outstanding[g]:
            now = float(self.fleet.env.now)
            self.state[g] = OFF
            self.fleet.lifetimes[g][-1][1] = now
            self.fleet.router.forget(g)
            self._event(now, "stop", g, None)

    def _loop(self):
        env, step = self.fleet.env, self.spec.interval_s
        while True:
            yield env.timeout(self.next_tick - env.now)
            self.next_tick = env.now + step
            if self.fleet._closed:
                return
            self._decide(env.now)

    def closed(self, now: float) -> None:
        """The fleet has served everything: every replica still up stops now."""
        for g in self.members:
            if self.state[g] != OFF:
                self.state[g] = OFF
        self._sample(now)

    # ------------------------------------------------------------ results
    def summary(self, end: float) -> dict:
        lifetimes = self.fleet.lifetimes
        gpu_s = sum((stop if stop is not None else end) - start
                    for g in self.members for start, stop in lifetimes[g]) * self.gpus_per_replica
        times = np.array([s[0] for s in self.samples])
        up = np.array([s[1] + s[2] + s[3] for s in self.samples])
        serving = np.array([s[1] for s in self.samples])
        dt = np.diff(np.r_[times, max(end, times[-1])])
        span = max(end, 1e-12)
        peak = int(up.max())
        a = self.spec
        return {
            "pool": a.pool, "metric": a.metric, "target": a.target, "min": a.min, "max": a.max,
            "interval_s": a.interval_s, "window_s": a.window_s, "cold_start_s": self.cold_start_s,
            "events": self.events,
            "replicas_over_time": {"time_s": times.tolist(), "serving": serving.tolist(),
                                   "starting": [s[2] for s in self.samples],
                                   "draining": [s[3] for s in self.samples], "up": up.tolist(),
                                   "note": "step-wise: each value holds from its time to the next; up = serving + "
                                           "starting + draining (the replicas holding GPUs)"},
            "replicas_mean": float((up * dt).sum() / span), "replicas_peak": peak,
            "gpus_per_replica": self.gpus_per_replica,
            "gpu_hours": float(gpu_s) / 3600.0,
            "gpu_hours_fixed_at_peak": peak * self.gpus_per_replica * float(end) / 3600.0,
            "gpu_hours_over": "from each replica's add (its cold start counts) to its stop, or to the end of the "
                              f"run ({end:.6g} s, the last answer)",
        }
