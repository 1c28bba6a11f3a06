"""The shapes one replica has already run, for engines that pay extra the first time they see one (allocator
growth, kernel selection, compiles): a prefill at a (batch, prompt length) it has not run, and a decode step at a
(batch, KV length) it has not run. The profile's `cold_shapes` prices each (dcsim/profiles/cold_shapes.py fits
them from calibration's warm-up and first runs); a pool whose replicas start cold pays them as it meets shapes.
The same bookkeeping counts the new shapes of calibration runs for the fit, so fit and simulation agree on what
"new" means."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Iterable, NamedTuple

if TYPE_CHECKING:
    from dcsim.profiles.profile import ColdShapes


class Lengths:
    """A set of integers kept as sorted, disjoint, inclusive ranges [lo_i, hi_i] (the KV lengths one batch size
    has decoded at): adding a range returns how many of its integers were new, in O(ranges it touches)."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def add(self, a: int, b: int) -> int:
        """Add [a, b] (nothing where b < a); return how many of its integers were not in the set."""
        if b < a:
            return 0
        lo, hi = self.lo, self.hi
        i = bisect_left(hi, a - 1)  # the first range that ends at or after a - 1 (touches or overlaps [a, b])
        j = bisect_right(lo, b + 1)  # ranges i..j-1 touch or overlap it
        covered = 0
        for k in range(i, j):
            covered += max(0, min(hi[k], b) - max(lo[k], a) + 1)
        new = b - a + 1 - covered
        if i < j:
            a, b = min(a, lo[i]), max(b, hi[j - 1])
        lo[i:j] = [a]
        hi[i:j] = [b]
        return new

    def __len__(self) -> int:
        return sum(h - lo + 1 for lo, h in zip(self.lo, self.hi))


class NewShapes(NamedTuple):
    prompt: bool  # the prefill's (batch, prompt length) had not run
    kv_lengths: int  # KV lengths its decode steps reach that had not run at this batch size


class ShapeMemory:
    """One replica's shapes so far. `meet` records a prefill of `batch` sequences padded to `n_in` tokens and its
    decode steps at KV lengths kv_from..kv_from + steps - 1, returning what was new; `pay` also prices it at
    `costs` (a cold pool's; the fit counts without them)."""

    __slots__ = ("prompts", "kv", "costs", "new_prompts", "new_kv", "paid_s", "paid_j")

    def __init__(self, prompts: Iterable[tuple[int, int]] = (), kv: Iterable[tuple[int, int, int]] = (),
                 costs: "ColdCosts | None" = None) -> None:
        self.prompts: set[tuple[int, int]] = set(prompts)
        self.costs = costs
        self.kv: dict[int, Lengths] = {}
        for b, lo, hi in kv:
            self._lengths(b).add(lo, hi)
        self.new_prompts = 0  # what the replica met over the run, for the summary
        self.new_kv = 0
        self.paid_s = 0.0
        self.paid_j = 0.0

    def _lengths(self, batch: int) -> Lengths:
        k = self.kv.get(batch)
        if k is None:
            k = self.kv[batch] = Lengths()
        return k

    def meet(self, batch: int, n_in: int, kv_from: int, steps: int) -> NewShapes:
        key = (batch, n_in)
        new_prompt = key not in self.prompts
        if new_prompt:
            self.prompts.add(key)
        new_kv = self._lengths(batch).add(kv_from, kv_from + steps - 1) if steps > 0 else 0
        self.new_prompts += new_prompt
        self.new_kv += new_kv
        return NewShapes(new_prompt, new_kv)

    def pay(self, batch: int, n_in: int, kv_from: int, steps: int) -> tuple[float, float, float, float]:
        """`meet`, priced: (extra prefill s, its J, extra decode s, its J) for the shapes that were new."""
        c = self.costs
        new = self.meet(batch, n_in, kv_from, steps)
        ps, pj = (c.prompt_s, c.prompt_j) if new.prompt else (0.0, 0.0)
        ks, kj = c.kv_s * new.kv_lengths, c.kv_j * new.kv_lengths
        self.paid_s += ps + ks
        self.paid_j += pj + kj
        return ps, pj, ks, kj

    def stats(self) -> dict[str, float]:
        return {"cold_prompts": self.new_prompts, "cold_kv_lengths": self.new_kv, "cold_s": self.paid_s,
                "cold_j": self.paid_j}


class ColdCosts:
    """A pool's first-time prices (the profile's cold_shapes) and the shapes its replicas start with."""

    __slots__ = ("prompt_s", "prompt_j", "kv_s", "kv_j", "prompts", "kv")

    def __init__(self, costs: "ColdShapes", prompts: Iterable[tuple[int, int]] = (),
                 kv: Iterable[tuple[int, int, int]] = ()) -> None:
        self.prompt_s, self.prompt_j = costs.prompt_s, costs.prompt_j
        self.kv_s, self.kv_j = costs.kv_length_s, costs.kv_length_j
        self.prompts = [tuple(p) for p in prompts]
        self.kv = [tuple(k) for k in kv]

    def memory(self) -> ShapeMemory:
        """A replica's memory at the start, priced at these costs: the warmed shapes only."""
        return ShapeMemory(self.prompts, self.kv, self)
