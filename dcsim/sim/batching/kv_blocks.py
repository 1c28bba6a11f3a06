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
    """A cached prefix: `blocks` full blocks from the start of the sequence, referenced by `refs` requests, each
    sharing a leading run of them; `pinned`, the longest such run, is in use, the blocks beyond it are not."""

    __slots__ = ("blocks", "refs", "runs", "pinned")

    def __init__(self) -> None:
        self.blocks = 0
        self.refs = 0
        self.runs: dict[int, int] = {}  # run length shared -> requests sharing it
        self.pinned = 0  # blocks some running request shares (the longest run); the rest are evictable


class BlockPool:
    """Block accounting of one replica: private blocks of running requests, cached entries, free blocks.

    As vLLM counts references per block, a request pins only the leading blocks of an entry it shares: an
    entry's blocks beyond the longest run a running request shares are evictable, as are all blocks of an entry
    no running request references."""

    __slots__ = ("total", "private", "cached", "evictable", "entries", "lru", "evicted")

    def __init__(self, total: int) -> None:
        self.total = total
        self.private = 0  # blocks held by running requests beyond the prefixes they share
        self.cached = 0  # blocks of all cached entries (referenced or not)
        self.evictable = 0  # cached blocks no running request shares
        self.entries: dict[int, Entry] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # entries with evictable blocks, least recently used first
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
            x = min(short, e.blocks - e.pinned)
            e.blocks -= x
            self.cached -= x
            self.evictable -= x
            self.evicted += x
            short -= x
            if e.blocks == e.pinned:
                del self.lru[key]
                if e.blocks == 0:
                    del self.entries[key]
        self.private += n
        if self.private + self.cached > self.total:
            raise RuntimeError(f"KV blocks over-allocated: {self.private} private + {self.cached} cached > "
                               f"{self.total}")

    def give_back(self, n: int) -> None:
        """Return `n` private blocks to the free list."""
        self.private -= n

    def _pin(self, key: int, e: Entry, run: int, old: int | None) -> None:
        """A request's shared run of entry `key` becomes `run` blocks (from `old`, None for a new reference)."""
        if old is not None:
            c = e.runs[old] - 1
            if c:
                e.runs[old] = c
            else:
                del e.runs[old]
        else:
            e.refs += 1
        e.runs[run] = e.runs.get(run, 0) + 1
        self._repin(key, e, False)

    def _repin(self, key: int, e: Entry, touched: bool) -> None:
        """Recount entry `key`'s pinned run and evictable blocks; `touched`: its freed blocks are the newest."""
        was = e.blocks - e.pinned if key in self.lru else 0
        e.pinned = max(e.runs) if e.runs else 0
        now = e.blocks - e.pinned
        self.evictable += now - was
        if now:
            if key not in self.lru:
                self.lru[key] = None
            elif touched:
                self.lru.move_to_end(key)
        elif key in self.lru:
            del self.lru[key]

    def lookup(self, key: int, limit: int) -> int:
        """Blocks of entry `key` a request may reuse (at most `limit`), referencing that run of them if any."""
        e = self.entries.get(key)
        if e is None or limit <= 0 or e.blocks == 0:
            return 0
        run = min(e.blocks, limit)
        self._pin(key, e, run, None)
        return run

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
        x = full - shared
        was = e.blocks - e.pinned if key in self.lru else 0
        e.blocks = full
        self.cached += x
        self.private -= x
        self.evictable -= was  # _pin recounts the entry's evictable blocks from here
        if key in self.lru:
            del self.lru[key]
        self._pin(key, e, full, shared if referenced else None)
        return full

    def release(self, key: int, run: int) -> None:
        """A request that shared the first `run` blocks of entry `key` stops running; blocks no running request
        shares become evictable (an entry no request references, all of it)."""
        e = self.entries.get(key)
        if e is None:
            return
        e.refs -= 1
        c = e.runs[run] - 1
        if c:
            e.runs[run] = c
        else:
            del e.runs[run]
        if e.refs == 0 and e.blocks == 0:
            if key in self.lru:
                del self.lru[key]
            del self.entries[key]
            return
        self._repin(key, e, True)

    def held(self) -> int:
        """Blocks not on the free list (private plus every cached block)."""
        return self.private + self.cached
