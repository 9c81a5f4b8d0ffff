"""KV-cache allocators behind one protocol, and the memory breakdown they report."""

from simkv.kv.base import KVAllocator, KVUsage, OutOfKVMemory
from simkv.kv.contiguous import ContiguousAllocator
from simkv.kv.paged import PagedAllocator

__all__ = ["KVAllocator", "KVUsage", "OutOfKVMemory", "ContiguousAllocator", "PagedAllocator"]
