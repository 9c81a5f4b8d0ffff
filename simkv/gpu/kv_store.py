"""Real KV caches in device memory for the mini engine: paged (a block pool, one block table per
sequence, blocks taken on demand and returned on free) and contiguous (one region of `reserve`
slots per sequence, first fit in one buffer). Both hand attention the same padded view of a
sequence's keys and values, so the same schedule gives the same outputs on either."""

from __future__ import annotations

import torch

from simkv.gpu.kernels import gather_paged


class PagedKVStore:
    """Per layer a pool [num_blocks, block_size, kv_heads, head_dim] for keys and for values."""

    kind = "paged"

    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str) -> None:
        shape = (layers, num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.device = block_size, device
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[int, list[int]] = {}

    def ensure(self, rid: int, length: int) -> None:
        """Blocks for positions [0, length) of `rid`, taking new ones as it grows."""
        table = self.tables.setdefault(rid, [])
        need = -(-length // self.block_size) - len(table)
        if need > len(self.free_blocks):
            raise MemoryError(f"paged KV store: {need} more blocks needed, {len(self.free_blocks)} free")
        for _ in range(max(need, 0)):
            table.append(self.free_blocks.pop())

    def free(self, rid: int) -> None:
        self.free_blocks.extend(reversed(self.tables.pop(rid, [])))

    def free_all(self) -> None:
        for rid in list(self.tables):
            self.free(rid)

    def slots(self, rid: int, positions: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(self.tables[rid], dtype=torch.long, device=self.device)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer].view(-1, *k.shape[1:])[slots] = k
        self.v[layer].view(-1, *v.shape[1:])[slots] = v

    def gather(self, layer: int, rids: list[int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `rids` padded to `max_len` positions (the longest holds that many)."""
        tables = self.block_table(rids)[:, :-(-max_len // self.block_size)]
        return gather_paged(self.k[layer], tables, max_len), gather_paged(self.v[layer], tables, max_len)

    def decode_view(self, layer: int, rids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(key blocks, value blocks, block tables) for a paged decode kernel that reads in place."""
        return self.k[layer], self.v[layer], self.block_table(rids)

    def block_table(self, rids: list[int]) -> torch.Tensor:
        width = max(len(self.tables[r]) for r in rids)
        return torch.tensor([self.tables[r] + [0] * (width - len(self.tables[r])) for r in rids],
                            dtype=torch.long, device=self.device)

    def swap_out(self, rid: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy `rid`'s first `length` positions to host memory (a copy even when the store is on the CPU) and free its blocks."""
        slots = self.slots(rid, torch.arange(length, device=self.device))
        host = (self.k.view(self.k.shape[0], -1, *self.k.shape[3:])[:, slots].to("cpu", copy=True),
                self.v.view(self.v.shape[0], -1, *self.v.shape[3:])[:, slots].to("cpu", copy=True))
        self.free(rid)
        return host

    def swap_in(self, rid: int, host: tuple[torch.Tensor, torch.Tensor]) -> None:
        length = host[0].shape[1]
        self.ensure(rid, length)
        slots = self.slots(rid, torch.arange(length, device=self.device))
        self.k.view(self.k.shape[0], -1, *self.k.shape[3:])[:, slots] = host[0].to(self.device)
        self.v.view(self.v.shape[0], -1, *self.v.shape[3:])[:, slots] = host[1].to(self.device)


class ContiguousKVStore:
    """Per layer one buffer [slots, kv_heads, head_dim]; each sequence owns `reserve` consecutive
    slots from admission to release (first fit over the free extents)."""

    kind = "contiguous"

    def __init__(self, layers: int, num_slots: int, reserve: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str) -> None:
        self.k = torch.zeros((layers, num_slots, kv_heads, head_dim), dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.reserve, self.device = reserve, device
        self.holes: list[tuple[int, int]] = [(0, num_slots)]   # (start, length), sorted
        self.regions: dict[int, int] = {}

    def ensure(self, rid: int, length: int) -> None:
        if length > self.reserve:
            raise MemoryError(f"contiguous KV store: {length} positions exceed the {self.reserve}-slot reservation")
        if rid in self.regions:
            return
        for i, (start, size) in enumerate(self.holes):
            if size >= self.reserve:
                self.regions[rid] = start
                self.holes[i] = (start + self.reserve, size - self.reserve)
                if self.holes[i][1] == 0:
                    del self.holes[i]
                return
        raise MemoryError("contiguous KV store: no free extent of the reservation's size")

    def free(self, rid: int) -> None:
        start = self.regions.pop(rid, None)
        if start is None:
            return
        holes = sorted(self.holes + [(start, self.reserve)])
        merged = [holes[0]]
        for s, n in holes[1:]:
            ps, pn = merged[-1]
            merged[-1:] = [(ps, pn + n)] if ps + pn == s else [merged[-1], (s, n)]
        self.holes = merged

    def free_all(self) -> None:
        for rid in list(self.regions):
            self.free(rid)

    def slots(self, rid: int, positions: torch.Tensor) -> torch.Tensor:
        return self.regions[rid] + positions

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][slots] = k
        self.v[layer][slots] = v

    def gather(self, layer: int, rids: list[int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.tensor([self.regions[r] for r in rids], dtype=torch.long, device=self.device)
        index = (starts[:, None] + torch.arange(max_len, device=self.device)[None]).clamp_max(self.k.shape[1] - 1)
        return self.k[layer][index], self.v[layer][index]

    def decode_view(self, layer: int, rids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffer seen as blocks of `view_block` slots (regions start on multiples of the
        reservation), so the same paged decode kernel reads a contiguous region in place."""
        b = self.view_block
        k = self.k[layer].view(-1, b, *self.k.shape[2:])
        v = self.v[layer].view(-1, b, *self.v.shape[2:])
        per_seq = self.reserve // b
        tables = torch.tensor([[self.regions[r] // b + i for i in range(per_seq)] for r in rids],
                              dtype=torch.long, device=self.device)
        return k, v, tables

    @property
    def view_block(self) -> int:
        return next(b for b in (16, 8, 4, 2, 1) if self.reserve % b == 0 and self.k.shape[1] % b == 0)

    def swap_out(self, rid: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.regions[rid]
        host = (self.k[:, start:start + length].to("cpu", copy=True), self.v[:, start:start + length].to("cpu", copy=True))
        self.free(rid)
        return host

    def swap_in(self, rid: int, host: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.ensure(rid, host[0].shape[1])
        start, length = self.regions[rid], host[0].shape[1]
        self.k[:, start:start + length] = host[0].to(self.device)
        self.v[:, start:start + length] = host[1].to(self.device)
