"""KV offload tiers below the GPU prefix cache: host DRAM and local SSD.

Models (vLLM's native CPU offload / LMCache, SGLang's HiCache, TensorRT-LLM's host cache): below the
GPU's prefix cache (simkv.kv.prefix_cache) sit up to two tiers, host memory then SSD, each an LRU of
block content names with a capacity in blocks and a read and a write bandwidth. The write policy
says when a block goes down a level:
- write_through: every block named on the GPU (its tokens computed, or loaded from the SSD) is also
  written to the host tier, and every block written to the host tier also to the SSD tier;
- on_eviction: a block goes down only when the level above evicts it (the GPU prefix cache taking
  its block for new content, the host tier's LRU dropping it), and only if the level below does not
  hold it already.
A tier that is full drops its least recently used block (to the level below under on_eviction).
Tiers are inclusive: a block loaded back keeps its copy below, and a hit makes it the most recent.

A prefix lookup counts the leading blocks held on the GPU or in either tier; a block held only below
the GPU is loaded: a GPU block is taken for it (as for new content) and named, and the request does
not compute it. The loads are priced by the step-time model (StepPlan.kv_load_host_tokens and
kv_load_ssd_tokens): bytes / the tier's read bandwidth, host at the GPU's measured pinned
host-to-device rate, SSD at min(SSD read, host-to-device) since SSD data is staged through host
memory. simkv charges the load on the step that admits the request, not overlapped with its compute
(vLLM's offloading connector loads asynchronously before the request's prefill, SGLang overlaps
loads layer by layer): an upper bound on the load's cost. Writes are asynchronous copies (they
overlap compute and are not charged to a step); the bytes written per tier and the link busy time
they imply are reported, so a write rate beyond the link's is visible.
Simplifications: SGLang's write_through backs a node up once its hit count reaches a threshold of
1; simkv writes every named block. No prefetching ahead of the request (SGLang's storage prefetch).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

from simkv.kv.base import OutOfKVMemory
from simkv.kv.prefix_cache import PrefixCachingAllocator

WRITE_THROUGH = "write_through"
ON_EVICTION = "on_eviction"
POLICIES = (WRITE_THROUGH, ON_EVICTION)

# A stated figure, not measured: a PCIe Gen4 datacenter NVMe drive (Micron 7450 series: sequential
# read about 6.8 GB/s, sequential write up to 5.6 GB/s on the larger capacities; ServeTheHome,
# "Micron 7450 SSDs Launched with 176-Layer NAND", 2022).
SSD_READ_GBPS = 6.8
SSD_WRITE_GBPS = 5.6
SSD_SOURCE = ("stated, not measured: PCIe Gen4 datacenter NVMe (Micron 7450: ~6.8 GB/s sequential read, "
              "up to 5.6 GB/s write)")


@dataclass
class Tier:
    """One level below the GPU: an LRU of block names, `capacity_blocks` of them at most."""

    name: str
    capacity_blocks: int
    read_bps: float           # bytes/s from this tier to the GPU
    write_bps: float          # bytes/s into this tier
    blocks: OrderedDict = field(default_factory=OrderedDict)   # name -> None, least recent first
    blocks_read: int = 0
    blocks_written: int = 0
    blocks_dropped: int = 0

    def __contains__(self, h: Hashable) -> bool:
        return h in self.blocks

    def touch(self, h: Hashable) -> None:
        self.blocks.move_to_end(h)

    def insert(self, h: Hashable) -> Hashable | None:
        """Write `h` (counted); returns the name this evicted, if any."""
        self.blocks_written += 1
        self.blocks[h] = None
        if len(self.blocks) > self.capacity_blocks:
            old, _ = self.blocks.popitem(last=False)
            self.blocks_dropped += 1
            return old
        return None


class OffloadTiers:
    """The host and SSD tiers with their write policy; counts hits per request and tier."""

    def __init__(self, tiers: list[Tier], policy: str, block_bytes: int, num_requests: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown offload policy {policy!r}")
        if block_bytes <= 0:
            raise ValueError("block_bytes must be positive")
        self.tiers = [t for t in tiers if t.capacity_blocks > 0]
        self.policy = policy
        self.block_bytes = block_bytes
        self.hit_blocks = {t.name: np.zeros(num_requests, dtype=np.int64) for t in tiers}
        self.hit_blocks["gpu"] = np.zeros(num_requests, dtype=np.int64)
        self.all_tiers = list(tiers)

    def locate(self, h: Hashable) -> Tier | None:
        for t in self.tiers:
            if h in t:
                return t
        return None

    def write_down(self, h: Hashable, level: int = 0) -> None:
        """Write `h` into tier `level` (if not held there) and on down as the policy says."""
        while level < len(self.tiers):
            tier = self.tiers[level]
            if h in tier:   # held here already: nothing more to write
                tier.touch(h)
                return
            dropped = tier.insert(h)
            if self.policy == ON_EVICTION:
                if dropped is None:
                    return
                h = dropped   # the evicted block goes one level down
            level += 1

    # ------------------------------------------------------------ GPU events
    def on_named(self, h: Hashable) -> None:
        if self.policy == WRITE_THROUGH:
            self.write_down(h)

    def on_gpu_evict(self, h: Hashable) -> None:
        if self.policy == ON_EVICTION:
            self.write_down(h)

    # ------------------------------------------------------------ summary
    def summary(self, measured: np.ndarray, query_tokens: int, block_size: int, load_s: dict[str, float],
                run_s: float) -> dict:
        """Hit tokens and rates per tier over the `measured` requests; bytes over the whole run."""
        out = {"policy": self.policy, "block_bytes": self.block_bytes, "query_tokens": int(query_tokens), "tiers": {}}
        for name in ["gpu"] + [t.name for t in self.all_tiers]:
            hits = int(self.hit_blocks[name][measured].sum()) * block_size
            entry = {"hit_tokens": hits, "hit_rate": hits / query_tokens if query_tokens else None}
            tier = next((t for t in self.all_tiers if t.name == name), None)
            if tier is not None:
                written = tier.blocks_written * self.block_bytes
                entry.update(capacity_blocks=tier.capacity_blocks, bytes_read=tier.blocks_read * self.block_bytes,
                             bytes_written=written, blocks_dropped=tier.blocks_dropped,
                             load_s=float(load_s.get(name, 0.0)),
                             write_link_busy_fraction=(written / tier.write_bps / run_s) if run_s > 0 else None)
            out["tiers"][name] = entry
        out["note"] = ("hit tokens over measured requests (a request's prefix found on the GPU, else loaded from "
                       "the tier); bytes, loads and writes over the whole run; loads are charged to the admitting "
                       "step (not overlapped), writes are asynchronous; compare with a variant without "
                       "engine.kv_offload for the TTFT it saves")
        return out


class OffloadingPrefixCache(PrefixCachingAllocator):
    """The GPU prefix cache with host / SSD tiers below it (see the module docstring)."""

    offloads = True

    def __init__(self, num_blocks: int, block_size: int, tiers: OffloadTiers) -> None:
        super().__init__(num_blocks, block_size)
        self.offload = tiers
        self.pending_loads: dict[str, int] = {}   # tier -> blocks loaded since the last plan

    # ------------------------------------------------------------ lookups
    def _held(self, h: Hashable) -> bool:
        return self._blocks.block(h) >= 0 or self.offload.locate(h) is not None

    def match_prefix(self, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` held on the GPU or in a tier below (pure)."""
        n = 0
        for h in hashes:
            if not self._held(h):
                break
            n += 1
        return n

    def _need(self, hashes: Sequence[int], hits: int) -> int:
        """Free GPU blocks the first `hits` blocks take: cached free ones, and one per block loaded."""
        need = 0
        for h in hashes[:hits]:
            block = self._blocks.block(h)
            if block < 0 or self._ref_a[block] == 0:
                need += 1
        return need

    def can_allocate_cached(self, hashes: Sequence[int], hits: int, num_tokens: int, watermark_tokens: int = 0) -> bool:
        need = max(0, self.blocks_for(num_tokens) - hits) + self._need(hashes, hits)
        return need + self.blocks_for(watermark_tokens) <= self._nfree

    # ------------------------------------------------------------ allocation
    def _forget(self, blocks, names: list[int]) -> None:
        """Each name a taken block loses goes to the tiers (on_eviction), in the order taken."""
        runs = self._blocks
        if isinstance(names, np.ndarray):
            blocks, names = blocks.tolist(), names.tolist()
        for block, old in zip(blocks, names):
            if runs.block(old) == block:
                runs.drop(old)
                self.offload.on_gpu_evict(old)

    def allocate_cached(self, req_id: int, hashes: Sequence[int], hits: int, num_tokens: int, final_tokens: int,
                        reserve_tokens: int = 0) -> None:
        if req_id in self._tables:
            raise ValueError(f"request {req_id} already holds KV memory")
        held = max(num_tokens, reserve_tokens)
        if not self.can_allocate_cached(hashes, hits, held):
            raise OutOfKVMemory(f"request {req_id} does not fit ({self._nfree} free blocks)")
        table: list = [None] * hits
        loads = []
        for i, h in enumerate(hashes[:hits]):   # pin the GPU hits first: taking blocks must not evict them
            block = self._blocks.block(h)
            if block < 0:
                tier = self.offload.locate(h)
                tier.touch(h)
                tier.blocks_read += 1
                loads.append((i, h, tier))
                continue
            self._pin([block])
            table[i] = block
        hit_blocks = self.offload.hit_blocks
        if req_id < len(hit_blocks["gpu"]):
            hit_blocks["gpu"][req_id] += hits - len(loads)
        for i, h, tier in loads:
            block = self._take_blocks(1)[0]
            if self._blocks.block(h) < 0:
                self._give_name(block, h)
                self.offload.on_named(h)
            table[i] = block
            self.pending_loads[tier.name] = self.pending_loads.get(tier.name, 0) + 1
            if req_id < len(hit_blocks[tier.name]):
                hit_blocks[tier.name][req_id] += 1
        table.extend(self._take_blocks(self.blocks_for(held) - len(table)))
        self._tables[req_id] = table
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens)
        self._registered[req_id] = hits

    def register(self, req_id: int, hashes: Sequence[int], num_tokens: int) -> None:
        start = self._registered.get(req_id, 0)
        super().register(req_id, hashes, num_tokens)
        if self.offload.policy == WRITE_THROUGH:
            table = self._tables[req_id]
            for i in range(start, self._registered[req_id]):
                if self._blocks.block(hashes[i]) == table[i]:
                    self.offload.on_named(hashes[i])

    def take_pending_loads(self) -> dict[str, int]:
        """Blocks loaded per tier since the last call (the scheduler puts them on its next plan)."""
        out, self.pending_loads = self.pending_loads, {}
        return out


def tier_capacity_blocks(gib: float, block_bytes: int) -> int:
    """Whole blocks of `block_bytes` in `gib` GiB."""
    return int(gib * 2 ** 30 // block_bytes)
