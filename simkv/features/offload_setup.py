"""Building KV offload tiers from `engine.kv_offload` (simkv.kv.offload) and summarising them.

Per-engine defaults (each engine leaves offload off unless configured):
- vLLM V1 native CPU offload (OffloadingConnector, vllm/v1/kv_offload: CPU blocks in LRU order) and
  LMCache store every newly computed full block (write_through); the CPU size must be given.
- SGLang HiCache (server_args.py: enable_hierarchical_cache False, hicache_ratio 2.0, hicache_size 0,
  hicache_write_policy "write_through"): host pool = 2 x the device KV pool unless host_gib is given.
- TensorRT-LLM host cache (llm_args.py KvCacheConfig.host_cache_size, default off): blocks evicted
  from the GPU pool are offloaded to the host pool (on_eviction); the host size must be given.
"""

from __future__ import annotations

from simkv.errors import SimkvError
from simkv.kv.offload import (ON_EVICTION, SSD_SOURCE, WRITE_THROUGH, OffloadingPrefixCache, OffloadTiers, Tier,
                              tier_capacity_blocks)
from simkv.request import DONE
from simkv.specs import GIB

OFFLOAD_SCHEDULERS = ("chunked", "sglang", "trtllm")
DEFAULT_POLICY = {"chunked": WRITE_THROUGH, "sglang": WRITE_THROUGH, "trtllm": ON_EVICTION}
SGLANG_HICACHE_RATIO = 2.0
POLICY_SOURCES = {
    "chunked": "vLLM V1 OffloadingConnector / LMCache store every computed full block (write_through)",
    "sglang": "SGLang server_args.py hicache_write_policy = 'write_through'",
    "trtllm": "TensorRT-LLM KvCacheConfig.host_cache_size: blocks evicted from the GPU pool go to the host pool",
}


def check_offload(e) -> None:
    """`engine.kv_offload` is modelled for the prefix-caching chunked (vLLM V1), sglang and trtllm
    schedulers."""
    o = e.kv_offload
    if o is None:
        return
    if e.scheduler not in OFFLOAD_SCHEDULERS:
        raise SimkvError(f"KV offload is not modelled for the {e.scheduler} scheduler", field="engine.kv_offload",
                         fix="use engine.preset: vllm-v1, sglang or trtllm, or remove kv_offload")
    if not e.prefix_caching:
        raise SimkvError("KV offload keeps prefix-cache blocks below the GPU, so it needs prefix caching",
                         field="engine.kv_offload", fix="set engine.prefix_caching: true, or remove kv_offload")
    if o.host_gib is None and e.scheduler != "sglang":
        raise SimkvError("no host tier size given (only sglang has a default: hicache_ratio 2 x the KV pool)",
                         field="engine.kv_offload.host_gib", fix="give host_gib (GiB per GPU; 0 for no host tier)")
    if o.host_gib == 0 and o.ssd_gib == 0:
        raise SimkvError("both offload tiers are empty", field="engine.kv_offload",
                         fix="give host_gib and/or ssd_gib above 0, or remove kv_offload")


def resolve_offload(e, kv_pool_bytes: float):
    """`e` with kv_offload's defaults filled in (policy, sglang's host size)."""
    o = e.kv_offload
    if o is None:
        return e
    update = {}
    if o.policy is None:
        update["policy"] = DEFAULT_POLICY[e.scheduler]
    if o.host_gib is None:
        update["host_gib"] = SGLANG_HICACHE_RATIO * kv_pool_bytes / GIB
    if not update:
        return e
    return e.model_copy(update={"kv_offload": o.model_copy(update=update)})


def offload_allocator(e, mem, gpu, kv_bytes_per_token: int, num_requests: int) -> OffloadingPrefixCache:
    """The prefix cache with the resolved engine's tiers below it."""
    o = e.kv_offload
    block_bytes = e.block_size * kv_bytes_per_token
    tiers = []
    for name, gib, read, write in (("host", o.host_gib, gpu.host_to_device_bps, gpu.device_to_host_bps),
                                   ("ssd", o.ssd_gib, ssd_read_bps(o, gpu), o.ssd_write_gbps * 1e9)):
        blocks = tier_capacity_blocks(gib, block_bytes)
        if gib > 0 and blocks < 1:
            raise SimkvError(f"the {name} tier ({gib:g} GiB) holds no whole KV block of {block_bytes} bytes",
                             field=f"engine.kv_offload.{name}_gib", fix=f"give at least {block_bytes / GIB:.3g} GiB, or 0")
        tiers.append(Tier(name, blocks, read, write))
    return OffloadingPrefixCache(mem.num_blocks, e.block_size, OffloadTiers(tiers, o.policy, block_bytes, num_requests))


def ssd_read_bps(o, gpu) -> float:
    """SSD blocks reach the GPU through host memory: the slower of the SSD and the host link."""
    return min(o.ssd_gbps * 1e9, gpu.host_to_device_bps)


def configure_cost(cost, e, gpu) -> None:
    """Tell the step-time model the SSD rate and the sources of the tier transfers."""
    o = e.kv_offload
    if o is None:
        return
    if gpu.measured is not None:
        link = f"measured: {gpu.description} pinned host-to-device copy {gpu.measured.h2d_gbps:.1f} GB/s (device.json)"
    else:
        link = f"roofline: datasheet host link {gpu.host_link_gbps:g} GB/s (not measured)"
    cost.kv_load_ssd_bps = ssd_read_bps(o, gpu) if o.ssd_gib > 0 else None
    cost.kv_offload_sources = {
        "kv_offload_host_load": (f"{link}; bytes / rate, charged to the admitting step (not overlapped)"
                                 if o.host_gib > 0 else "n/a (no host tier)"),
        "kv_offload_ssd_load": (f"{SSD_SOURCE}: min(SSD read {o.ssd_gbps:g} GB/s, host-to-device), charged to the "
                                "admitting step" if o.ssd_gib > 0 else "n/a (no SSD tier)"),
        "kv_offload_writes": (f"assumed asynchronous (not charged to steps); policy {o.policy} "
                              f"({POLICY_SOURCES[e.scheduler]})"),
    }


def offload_summary(sim, measure_start_s: float, end_s: float) -> dict | None:
    """`kv_cache.offload` of the summary: hits per tier over measured requests, bytes per tier."""
    kv = sim.allocator
    if not isinstance(kv, OffloadingPrefixCache):
        return None
    t = sim.table
    measured = (t.arrival_s >= measure_start_s) & (t.status == DONE)
    query = int(t.prefix_query_tokens[measured].sum())
    off = kv.offload
    load_s = {tier.name: tier.blocks_read * off.block_bytes / tier.read_bps for tier in off.all_tiers}
    out = off.summary(measured, query, kv.block_size, load_s, float(end_s))
    out["host_gib"], out["ssd_gib"] = sim.engine.kv_offload.host_gib, sim.engine.kv_offload.ssd_gib
    return out

