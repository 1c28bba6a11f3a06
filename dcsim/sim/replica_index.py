"""Indexes that give routers the replica they want without a pass over the fleet.

Replicas tell their watchers (Replica.watchers) after every change of their outstanding count and backlog, that is
at each submit and complete. An index pushes one heap entry per change and keeps the old ones: an entry whose
replica has moved on is stale and is dropped when it reaches the top of its heap, and the heaps are rebuilt when
stale entries pile up. A choice then costs O(log n) amortised instead of O(n) (least_work and energy_cost add one
prediction for each count of outstanding requests below a pool's parallelism that some replica has, and a look
at each replica whose score ties the least). Ties go to the first replica in candidate order (positions are
candidate positions), as the scans they replace did with `min` and `<`.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Callable

from dcsim.sim.replica import Replica


class OutstandingIndex:
    """The replica with the fewest outstanding requests, the first of equals in `reps` order: `min(reps,
    key=outstanding)`. One heap of entries outstanding * len(reps) + position (plain ints: they order as the pair
    would, and leave the garbage collector nothing to track)."""

    def __init__(self, reps: list[Replica]) -> None:
        self.reps = reps
        self.n = max(1, len(reps))
        self.pos = {rep.index: i for i, rep in enumerate(reps)}
        self.limit = 4 * len(reps) + 64  # entries kept before a rebuild
        self._rebuild()
        for rep in reps:
            rep.watchers.append(self.changed)

    def _rebuild(self) -> None:
        self.heap = [rep.outstanding * self.n + i for i, rep in enumerate(self.reps)]
        heapify(self.heap)

    def changed(self, rep: Replica) -> None:
        heap = self.heap
        heappush(heap, rep.outstanding * self.n + self.pos[rep.index])
        if len(heap) > self.limit:
            self._rebuild()

    def best(self) -> Replica:
        heap, reps, n = self.heap, self.reps, self.n
        while True:
            o, i = divmod(heap[0], n)
            rep = reps[i]
            if rep.outstanding == o:
                return rep
            heappop(heap)


class PoolIndex:
    """One pool's candidates in the classes a finish prediction tells apart: class o < parallel holds the replicas
    with o requests outstanding (they all predict alike: no queue wait, a batch of o + 1), class `parallel` the
    saturated ones, whose predicted wait grows with their backlog. Per class the first replica in candidate order
    (`first`); for the saturated class also the lowest backlog under a non-decreasing score (`lowest`) and, with
    `highest=True`, the highest backlog."""

    def __init__(self, cands: list[Replica], positions: list[int], highest: bool = False) -> None:
        self.cands = cands  # all of the router's candidates; `positions` are this pool's places among them
        self.positions = positions
        rep0 = cands[positions[0]]
        self.pool = rep0.pool
        self.parallel = rep0.parallel
        self.pos = {cands[p].index: p for p in positions}
        self.cls = {p: self._class(cands[p]) for p in positions}  # each replica's class now
        self.count: dict[int, int] = {self.parallel: 0}  # replicas in each class; count[parallel]: saturated
        for c in self.cls.values():
            self.count[c] = self.count.get(c, 0) + 1
        self.present = {c for c in self.count if c < self.parallel}  # the non-empty classes below `parallel`
        self.track_high = highest
        self.limit = 4 * len(positions) + 64  # pushes before a rebuild
        self._rebuild()
        for p in positions:
            cands[p].watchers.append(self.changed)

    def _class(self, rep: Replica) -> int:
        return min(rep.outstanding, self.parallel)

    def _rebuild(self) -> None:
        self.pushes = 0
        self.firsts: dict[int, list[int]] = {}
        low = []
        for p in self.positions:  # ascending, so every list is a heap already
            c = self.cls[p]
            self.firsts.setdefault(c, []).append(p)
            if c == self.parallel:
                low.append((self.cands[p].backlog_s, p))
        heapify(low)
        self.low = low
        self.high = [(-b, p) for b, p in low] if self.track_high else None
        if self.high is not None:
            heapify(self.high)

    def changed(self, rep: Replica) -> None:
        p = self.pos[rep.index]
        P = self.parallel
        o = rep.outstanding
        c = o if o < P else P
        old = self.cls[p]
        if c != old:
            self.cls[p] = c
            count = self.count
            count[old] -= 1
            if not count[old] and old < P:
                self.present.discard(old)
            n = count[c] = count.get(c, 0) + 1
            if n == 1 and c < P:
                self.present.add(c)
            heappush(self.firsts.setdefault(c, []), p)
        if c == P:
            b = rep.backlog_s
            heappush(self.low, (b, p))
            if self.high is not None:
                heappush(self.high, (-b, p))
        self.pushes += 1
        if self.pushes > self.limit:
            self._rebuild()

    def first(self, c: int) -> int:
        """The first candidate position in class c (which must be non-empty)."""
        heap, cls = self.firsts[c], self.cls
        while True:
            p = heap[0]
            if cls[p] == c:
                return p
            heappop(heap)

    def _top(self, heap: list[tuple[float, int]], sign: float) -> tuple[float, int]:
        """The top entry of a backlog heap that is current (dropping stale ones above it)."""
        cls, cands, P = self.cls, self.cands, self.parallel
        while True:
            key, p = heap[0]
            if cls[p] == P and cands[p].backlog_s == sign * key:
                return key, p
            heappop(heap)

    def highest(self) -> float:
        """The highest backlog of a saturated replica."""
        return -self._top(self.high, -1.0)[0]

    def lowest(self, score: Callable[[float], float]) -> tuple[float, int]:
        """(score, position) of the saturated replica of least score(backlog), the first of equals in candidate
        order; `score` must be non-decreasing. The entry of least backlog gives the least score; replicas of other
        backlogs may round to the same score, so every entry whose score equals it is looked at: by the heap order
        they form a subtree at the top, and a subtree whose root scores more holds none."""
        b0, best = self._top(self.low, 1.0)
        s0 = score(b0)
        low, cls, cands, P = self.low, self.cls, self.cands, self.parallel
        n = len(low)
        if (n < 2 or score(low[1][0]) != s0) and (n < 3 or score(low[2][0]) != s0):
            return s0, best  # the usual case: the top's children score more, so nothing below ties
        todo = [1, 2]
        while todo:
            i = todo.pop()
            if i < n:
                b, p = low[i]
                if score(b) == s0:
                    if p < best and cls[p] == P and cands[p].backlog_s == b:
                        best = p
                    todo += (2 * i + 1, 2 * i + 2)
        return s0, best


def pool_indexes(cands: list[Replica], highest: bool = False) -> list[PoolIndex]:
    """A PoolIndex for each pool among `cands`, in order of first appearance."""
    by: dict[tuple[int, int], list[int]] = {}
    for p, rep in enumerate(cands):
        by.setdefault((rep.pool, rep.parallel), []).append(p)
    return [PoolIndex(cands, ps, highest) for ps in by.values()]
