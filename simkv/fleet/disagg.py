"""Prefill/decode disaggregation (`fleet.disaggregation`).

A request is routed to a replica of the prefill pool, which computes its prompt and samples the
first token (the prefill pool's request table caps every output at one token, so the request ends
there and its KV is freed on the prefill side: the model treats the KV as staged for sending at once,
which is optimistic about prefill-side memory — real connectors hold the blocks until the decode side
has pulled them). The router then picks a decode replica; that replica reserves memory for the
incoming KV (the prompt's tokens; a region of the engine's reservation for contiguous allocators)
and a sequence slot (max_num_seqs) before the transfer starts — a decode replica without room
makes the transfer wait, first come first served, until its own requests finish. The transfer
holds the prefill replica's send link and the decode replica's receive link (transfers on a busy
link queue) for latency + bytes / bandwidth, bytes = the model's kv_bytes_per_token(kv dtype, TP)
x the prompt's tokens (each of the TP GPUs sends its own shard over its own link, in parallel).
When the transfer ends the request joins the decode replica's running batch as a decoder with one
token generated, at its next step.

TTFT: the client's stream comes from the decode replica (as vLLM's disaggregated-prefill proxy and
Dynamo's decode-first flow return it), so the first token is counted when the transfer ends: TTFT
includes the prefill, the wait for decode memory, link queueing and the transfer. The time the
prefill replica sampled it is kept too (`fleet.disaggregation.prefill_ttft_*`).

Decode replicas take one step per engine iteration (no fast-forward of identical decode steps):
a KV transfer may end at any time, and the joining decoder must be in the next step.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

# NVLink: a least-squares fit  t = latency + bytes / bandwidth  of the NCCL send_recv medians between
# two GPUs of one 8-GPU NVSwitch node (devices_per_node 2, message sizes >= 1 MiB, 866 rows) in
# simkv/cost/data/vidur/network/h100_dgx/send_recv.csv (H100, H200: the same NVLink 4) and
# a100_dgx/send_recv.csv (A100); tests/test_fleet_pd_trust.py re-fits the files.
NVLINK_FIT = {"h100_dgx": (362.2e9, 8.18e-6), "a100_dgx": (229.7e9, 1.14e-6)}
# InfiniBand: one ConnectX-7 NDR port per GPU, 400 Gb/s = 50 GB/s (NVIDIA DGX H100 user guide:
# "8x single-port ConnectX-7 ... 400 Gb/s InfiniBand"); latency a stated 10 us (RDMA write of one
# message, switch hop included). The same profiles' cross-node rows (devices_per_node 1) measure
# 34 GB/s on the H100 DGX: the stated figure is the line rate, an optimistic bound.
INFINIBAND = (50e9, 10e-6)
PCIE_LATENCY_S = 10e-6   # a stated per-transfer latency for a copy through host memory


@dataclass(frozen=True)
class LinkModel:
    """How long moving `bytes` between two GPUs takes: latency + bytes / bandwidth."""

    kind: str
    bandwidth_Bps: float
    latency_s: float
    source: str

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + float(nbytes) / self.bandwidth_Bps


def link_model(kind: str, gpu_name: str, gpu) -> LinkModel:
    """The link model for `kind` between GPUs of type `gpu` (a GpuSpec; `gpu_name` its catalog name)."""
    if kind == "nvlink":
        topo = "a100_dgx" if "a100" in gpu_name.lower() else "h100_dgx"
        bw, lat = NVLINK_FIT[topo]
        return LinkModel(kind, bw, lat, f"NCCL send_recv between two GPUs of one NVSwitch node, "
                         f"simkv/cost/data/vidur/network/{topo}/send_recv.csv (Vidur, MIT): least-squares fit "
                         f"{bw / 1e9:.1f} GB/s + {lat * 1e6:.2f} us")
    if kind == "infiniband":
        bw, lat = INFINIBAND
        return LinkModel(kind, bw, lat, "stated: 400 Gb/s NDR InfiniBand per GPU (ConnectX-7, NVIDIA DGX H100 "
                         "user guide) = 50 GB/s, 10 us latency")
    bw = gpu.host_to_device_bps
    how = ("measured pinned host-to-device copy" if gpu.measured is not None else "datasheet host link")
    return LinkModel(kind, bw, PCIE_LATENCY_S, f"PCIe: the GPU's {how} {bw / 1e9:.1f} GB/s (catalog), "
                     f"stated {PCIE_LATENCY_S * 1e6:.0f} us latency")


class ReceivingScheduler:
    """A decode replica's scheduler: decoders whose KV has arrived join the batch before the next
    step is planned; one step per plan (a transfer may end at any time)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.arrived: list[tuple[int, float]] = []   # (request, when its KV arrived)
        self.before_plan = None   # reserves memory for waiting transfers (between steps only)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def has_work(self) -> bool:
        return bool(self.arrived) or self.inner.has_work()

    def schedule(self):
        if self.before_plan is not None:
            self.before_plan()
        if self.arrived:
            for rid, at in self.arrived:
                join_decoder(self.inner.batch, rid, at)
            self.arrived = []
        plan = self.inner.schedule()
        if plan is not None and plan.max_steps > 1:
            plan = dataclasses.replace(plan, max_steps=1)
        return plan

    def commit(self, plan, start_s, durations_s):
        return self.inner.commit(plan, start_s, durations_s)


def join_decoder(b, rid: int, at: float) -> None:
    """Request `rid` (its KV already allocated) joins running batch `b` as a decoder: its prompt's
    KV written, one token generated (at `at`, the time the client got it)."""
    b.join_decoder(rid, at)


class Disaggregation:
    """The hand-off of finished prefills to decode replicas: memory reservation, link queueing,
    transfer, and the counts for the summary."""

    def __init__(self, fleet, prefill: list[int], decode: list[int], link: LinkModel,
                 kv_bytes_per_token: int) -> None:
        self.fleet = fleet
        self.prefill = prefill                 # global replica indices
        self.decode = np.array(decode, dtype=np.int64)
        self.is_prefill = np.zeros(len(fleet.replicas), bool)
        self.is_prefill[prefill] = True
        self.link = link
        self.kv_bytes_per_token = kv_bytes_per_token
        env, n = fleet.env, fleet.t.num_requests
        self.send = [simpy.Resource(env, 1) for _ in fleet.replicas]
        self.recv = [simpy.Resource(env, 1) for _ in fleet.replicas]
        self.room: dict[int, deque] = {int(g): deque() for g in decode}   # transfers waiting for memory
        self.inbound = {int(g): 0 for g in decode}                       # reserved, not yet in the batch
        self.prefill_replica = np.full(n, -1, dtype=np.int64)
        self.prefill_done_s = np.full(n, np.nan)
        self.reserved_s = np.full(n, np.nan)
        self.link_start_s = np.full(n, np.nan)
        self.arrived_s = np.full(n, np.nan)
        self.bytes = np.zeros(n, dtype=np.int64)
        for g in decode:
            fleet.replicas[g].scheduler.before_plan = (lambda g=int(g): self.try_reserve(g))

    def handoff(self, p: int, rid: int, prefill_table, decode_table) -> None:
        """Prefill replica p sampled rid's first token: pick a decode replica and reserve room there."""
        f = self.fleet
        now = f.env.now
        self.prefill_replica[rid], self.prefill_done_s[rid] = p, now
        for col in ("first_scheduled_s", "num_preemptions", "prefix_hit_tokens", "prefix_query_tokens",
                    "prefix_hit_blocks", "prefix_query_blocks"):
            getattr(decode_table, col)[rid] = getattr(prefill_table, col)[rid]
        d = f.router.pick(rid, self.decode, now)
        f.pool_of[rid], f.replica_of[rid] = f.pool_index[d], d
        f.router.sent(d, rid)
        f._outstanding[d].add(rid)
        self.room[d].append(rid)
        rep = f.replicas[d]     # it reserves the memory between its own steps
        if not rep._wake.triggered:
            rep._wake.succeed()

    def _fits(self, d: int, rid: int) -> tuple[bool, int]:
        sched = self.fleet.replicas[d].scheduler.inner
        b, kv = sched.batch, sched.kv
        if len(b) + self.inbound[d] >= sched.max_num_seqs:
            return False, 0
        reserve = sched.reservation_for(rid) if (not b.paged or getattr(kv, "reserve_upfront", False)) else 0
        keep = (sched.watermark_blocks + b.decode_blocks_needed(1)) * b.block_size if b.paged else 0
        return kv.can_allocate(int(sched.t.prompt_tokens[rid]), reserve, keep), reserve

    def try_reserve(self, d: int) -> None:
        """Start the waiting transfers to decode replica d that now fit, in order (called by the
        replica before it plans a step, so a reservation never takes memory a planned step counts on)."""
        queue = self.room[d]
        while queue:
            rid = queue[0]
            ok, reserve = self._fits(d, rid)
            if not ok:
                if not len(self.fleet.replicas[d].scheduler.inner.batch) and not self.inbound[d]:
                    raise RuntimeError(f"request {rid}'s KV can never fit decode replica {d}, even empty")
                return
            queue.popleft()
            sched = self.fleet.replicas[d].scheduler.inner
            sched.kv.allocate(rid, int(sched.t.prompt_tokens[rid]), reserve, int(sched.t.final_kv_tokens[rid]))
            self.inbound[d] += 1
            self.reserved_s[rid] = self.fleet.env.now
            self.fleet.env.process(self._transfer(int(self.prefill_replica[rid]), d, rid))

    def _transfer(self, p: int, d: int, rid: int):
        env = self.fleet.env
        nbytes = self.kv_bytes_per_token * int(self.fleet.t.prompt_tokens[rid])
        self.bytes[rid] = nbytes
        with self.send[p].request() as out:
            yield out
            with self.recv[d].request() as inn:
                yield inn
                self.link_start_s[rid] = env.now
                yield env.timeout(self.link.seconds(nbytes))
        self.arrived_s[rid] = now = env.now
        rep = self.fleet.replicas[d]
        rep.t.first_token_s[rid] = now
        rep.scheduler.arrived.append((rid, now))
        self.inbound[d] -= 1
        if not rep._wake.triggered:
            rep._wake.succeed()

    def summary(self) -> dict:
        done = np.flatnonzero(np.isfinite(self.arrived_s))
        t = self.fleet.t

        def stats(x: np.ndarray) -> dict:
            if not len(x):
                return {"mean": None, "p50": None, "p99": None, "max": None}
            return {"mean": float(np.mean(x)), "p50": float(np.percentile(x, 50)),
                    "p99": float(np.percentile(x, 99)), "max": float(np.max(x))}
        transfer = self.arrived_s[done] - self.link_start_s[done]
        handed = np.flatnonzero(self.prefill_replica >= 0)
        prefill_ttft = self.prefill_done_s[handed] - t.arrival_s[handed]
        return {
            "link": {"kind": self.link.kind, "bandwidth_GBps": self.link.bandwidth_Bps / 1e9,
                     "latency_us": self.link.latency_s * 1e6, "source": self.link.source},
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "ttft": "counted when the KV has reached the decode replica (its stream returns the first token)",
            "transfers": int(len(done)),
            "bytes_total": int(self.bytes[done].sum()),
            "bytes_mean": float(self.bytes[done].mean()) if len(done) else None,
            "transfer_s": stats(transfer),
            "wait_for_decode_memory_s": stats(self.reserved_s[done] - self.prefill_done_s[done]),
            "link_queueing_s": stats(self.link_start_s[done] - self.reserved_s[done]),
            "handoff_to_first_token_s": stats(self.arrived_s[done] - self.prefill_done_s[done]),
            "prefill_ttft_s": stats(prefill_ttft),
            "prefills_per_replica": [int(np.count_nonzero(self.prefill_replica == g)) for g in self.prefill],
        }
