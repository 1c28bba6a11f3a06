"""KV memory in fixed-size blocks, as paged serving engines keep it, with an optional prefix cache.

Blocks are counted, not stored: a replica's pool has `total` blocks; running requests hold private blocks, and
cached prefixes hold theirs. A prefix entry (one per prefix id) is the run of full blocks, from the start of a
sequence, that requests with that id share. An entry that no running request references stays cached but is
evictable: its blocks count as free to allocate, and are taken (tail first, least recently used entry first)
only when the free list is short, as vLLM's block pool evicts its cached free blocks.
"""

from __future__ import annotations

from collections import OrderedDict


class Entry:
    """A cached prefix: `blocks` full blocks from the start of the sequence, referenced by `refs` requests."""

    __slots__ = ("blocks", "refs")

    def __init__(self) -> None:
        self.blocks = 0
        self.refs = 0


class BlockPool:
    """Block accounting of one replica: private blocks of running requests, cached entries, free blocks."""

    __slots__ = ("total", "private", "cached", "evictable", "entries", "lru", "evicted")

    def __init__(self, total: int) -> None:
        self.total = total
        self.private = 0  # blocks held by running requests beyond the prefixes they share
        self.cached = 0  # blocks of all cached entries (referenced or not)
        self.evictable = 0  # blocks of entries no running request references
        self.entries: dict[int, Entry] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced entries, least recently used first
        self.evicted = 0  # blocks evicted from the cache in all

    def allocatable(self) -> int:
        """Blocks a request could be given now: the free list plus evictable cached blocks."""
        return self.total - self.private - self.cached + self.evictable

    def take(self, n: int) -> None:
        """Give `n` private blocks (the caller checked allocatable()), evicting cached blocks if need be."""
        short = n - (self.total - self.private - self.cached)
        while short > 0:
            key = next(iter(self.lru))
            e = self.entries[key]
            x = min(short, e.blocks)
            e.blocks -= x
            self.cached -= x
            self.evictable -= x
            self.evicted += x
            short -= x
            if e.blocks == 0:
                del self.lru[key]
                del self.entries[key]
        self.private += n
        if self.private + self.cached > self.total:
            raise RuntimeError(f"KV blocks over-allocated: {self.private} private + {self.cached} cached > "
                               f"{self.total}")

    def give_back(self, n: int) -> None:
        self.private -= n

    def lookup(self, key: int, limit: int) -> int:
        """Blocks of entry `key` a request may reuse (at most `limit`), referencing the entry if any."""
        e = self.entries.get(key)
        if e is None or limit <= 0 or e.blocks == 0:
            return 0
        if e.refs == 0:
            del self.lru[key]
            self.evictable -= e.blocks
        e.refs += 1
        return min(e.blocks, limit)

    def publish(self, key: int, full: int, shared: int, referenced: bool) -> int:
        """A request whose first `full` blocks are complete, the first `shared` of them entry blocks already,
        adds its own blocks to entry `key` where they continue the entry's run (the entry ends where its shared
        part ends); those stop being private, and the request references the entry from then on. Returns the
        request's new count of entry blocks."""
        e = self.entries.get(key)
        if e is None:
            if full <= shared:
                return shared
            e = self.entries[key] = Entry()
        if e.blocks != shared or full <= shared:
            return shared
        if not referenced:
            if e.refs == 0 and e.blocks:
                del self.lru[key]
                self.evictable -= e.blocks
            e.refs += 1
        x = full - shared
        e.blocks = full
        self.cached += x
        self.private -= x
        return full

    def release(self, key: int) -> None:
        """A request that referenced entry `key` stops running; an unreferenced entry becomes evictable."""
        e = self.entries.get(key)
        if e is None:
            return
        e.refs -= 1
        if e.refs == 0:
            if e.blocks == 0:
                del self.entries[key]
                return
            self.lru[key] = None
            self.evictable += e.blocks

    def held(self) -> int:
        """Blocks not on the free list (private plus every cached block)."""
        return self.private + self.cached
