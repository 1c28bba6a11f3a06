"""Request records in flight and the compact per-request log kept after they finish."""

from __future__ import annotations

from array import array

import numpy as np

# Status codes in the log.
PENDING, DONE, REJECTED, UNFINISHED = 0, 1, 2, 3
STATUS_NAMES = {PENDING: "pending", DONE: "done", REJECTED: "rejected", UNFINISHED: "unfinished"}
REJECT_REASONS = ("", "does not fit in KV memory", "longer than the model's context", "no replica accepts it",
                  "prompt longer than the step's token budget (chunked prefill off)")


class Request:
    """A request while it is in the system; its outcome is written to the RequestLog by id."""

    __slots__ = ("rid", "n_in", "n_out", "arrival", "est_out", "remaining", "energy", "host", "pred", "prefix_id",
                 "prefix_len", "st")

    def __init__(self, rid: int, n_in: int, n_out: int, arrival: float, est_out: int) -> None:
        self.rid = rid
        self.n_in = n_in
        self.n_out = n_out
        self.arrival = arrival
        self.est_out = est_out
        self.remaining = n_out
        self.energy = 0.0
        self.host = 0.0
        self.pred = 0.0  # predicted isolated service seconds on its replica (router bookkeeping)
        self.prefix_id = -1  # requests with one id share their first prefix_len tokens (-1: none)
        self.prefix_len = 0
        self.st = None  # a policy's own per-request state, where it keeps one


class RequestLog:
    """Column arrays, one slot per request of the trace (about 60 bytes a request)."""

    def __init__(self, n: int) -> None:
        z = bytes(8 * n)
        self.start = array("d", z)  # service (prefill) start
        self.first = array("d", z)  # first token
        self.done = array("d", z)
        self.energy = array("d", z)  # device joules attributed
        self.host = array("d", z)  # host joules attributed
        self.replica = array("i", bytes(4 * n))
        self.status = array("b", bytes(n))
        self.reason = array("b", bytes(n))
        self.preempted = array("i", bytes(4 * n))  # times a paged engine preempted the request
        self.cached = array("i", bytes(4 * n))  # prompt tokens served from the prefix cache

    def finish(self, r: Request, now: float) -> None:
        i = r.rid
        self.done[i] = now
        self.energy[i] = r.energy
        self.host[i] = r.host
        self.status[i] = DONE

    def reject(self, rid: int, replica: int, reason: int, now: float) -> None:
        self.status[rid] = REJECTED
        self.reason[rid] = reason
        self.replica[rid] = replica
        self.start[rid] = self.first[rid] = self.done[rid] = now

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "start_s": np.frombuffer(self.start, dtype=np.float64).copy(),
            "first_token_s": np.frombuffer(self.first, dtype=np.float64).copy(),
            "done_s": np.frombuffer(self.done, dtype=np.float64).copy(),
            "energy_j": np.frombuffer(self.energy, dtype=np.float64).copy(),
            "host_j": np.frombuffer(self.host, dtype=np.float64).copy(),
            "replica": np.frombuffer(self.replica, dtype=np.int32).copy(),
            "status": np.frombuffer(self.status, dtype=np.int8).copy(),
            "reason": np.frombuffer(self.reason, dtype=np.int8).copy(),
            "preemptions": np.frombuffer(self.preempted, dtype=np.int32).copy(),
            "cached_tokens": np.frombuffer(self.cached, dtype=np.int32).copy(),
        }
