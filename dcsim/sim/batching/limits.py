"""The limits the 2023-style policies (fcfs, static, continuous) share, kept as one parameter model so that
scenario files that set them for any of the three keep reading as before (a limit a policy does not use is
ignored, as it always was)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dcsim.sim.batching.base import BatchParams, Policy


class Limits(BatchParams):
    max_batch: int = Field(default=1, gt=0, description="static, continuous: requests in one batch at most")
    max_wait_s: float = Field(default=0.0, ge=0, description="static: wait at most this long to fill a batch")
    max_batched_tokens: int | None = Field(default=None, gt=0, description="continuous: prompt tokens per step")
    kv_reserve: Literal["full", "prompt"] = Field(
        default="full", description="continuous: KV for the prompt and the full output is reserved at admission"
    )

    @field_validator("kv_reserve")
    @classmethod
    def _reserve(cls, v: str) -> str:
        if v != "full":
            raise ValueError("continuous reserves each request's prompt and full output at admission; KV "
                             "allocated as tokens are generated (with preemption) is policy 'paged'")
        return v


class Batches(Policy):
    """A policy that serves up to `max_batch` requests at once (static, continuous)."""

    Params = Limits

    @property
    def parallel(self) -> int:
        return self.params.max_batch

    @property
    def max_batch(self) -> int:
        return self.params.max_batch
