"""A router of one's own: each request goes to the replica with the fewest outstanding tokens.

`least_outstanding` counts requests, so one 8,000-token prompt weighs as much as a 50-token question; this router
counts the work: the prompt and (known) output tokens of every request assigned to a replica and not yet finished,
output tokens weighted by `output_weight` (each is a decode step of its own, while a prompt's tokens share one
prefill). Ties go to the first replica. A scenario names it by file:

    router: {name: "./least_tokens.py:LeastOutstandingTokens", output_weight: 4}
"""

from __future__ import annotations

from collections import deque

import numpy as np
from pydantic import Field

from dcsim.sim.replica import Replica
from dcsim.sim.requests import PENDING, Request
from dcsim.sim.routers import Fleet, Params, Router


class LeastTokensParams(Params):
    output_weight: float = Field(default=1.0, ge=0, description="an output token counts this many prompt tokens")


class LeastOutstandingTokens(Router):
    """Fewest outstanding tokens (prompt + output_weight x known output) among the candidates."""

    Params = LeastTokensParams

    def __init__(self, params: LeastTokensParams, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.assigned: dict[int, deque[tuple[int, float]]] = {rep.index: deque() for rep in self.candidates}
        self.tokens = {rep.index: 0.0 for rep in self.candidates}

    def outstanding_tokens(self, rep: Replica) -> float:
        """The replica's outstanding tokens; requests that finished (or were refused) since the last look are
        dropped, which the replica's request count tells without scanning."""
        q = self.assigned[rep.index]
        if len(q) > rep.outstanding:
            status = rep.log.status
            kept = deque(item for item in q if status[item[0]] == PENDING)
            self.assigned[rep.index] = kept
            self.tokens[rep.index] = sum(w for _, w in kept)
        return self.tokens[rep.index]

    def choose(self, r: Request) -> Replica:
        best = min(self.candidates, key=self.outstanding_tokens)  # min keeps the first of equals
        w = r.n_in + self.params.output_weight * r.est_out
        self.assigned[best.index].append((r.rid, w))
        self.tokens[best.index] += w
        return best
