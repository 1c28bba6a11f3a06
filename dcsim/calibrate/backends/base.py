"""What every backend provides to the sweep driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timing:
    """One timed request batch. ttft_s: prefill plus the first token of every sequence;
    gen_tokens: output tokens per sequence actually produced (must equal n_out)."""

    runtime_s: float
    ttft_s: float
    gen_tokens: int
    extra: dict = field(default_factory=dict)


class Backend:
    name = "base"
    # whether the meter may synchronise this process's torch device around windows
    local_device = True

    def load(self) -> dict:
        """Load the model; returns facts for the manifest (model config, versions)."""
        raise NotImplementedError

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        """Told every (n_in, n_out, batch) the session may run, before the first one."""

    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        """Run one batch of `batch` prompts of n_in tokens, forcing n_out output tokens each. Calls
        on_start right before the timed region and on_first_token when every sequence has its first
        output token."""
        raise NotImplementedError

    def needs_warmup(self, n_in: int, n_out: int, batch: int) -> bool:
        """True when the next run of this shape would include one-off costs (compilation)."""
        return False

    def max_context(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def scalar_fields(config: dict) -> dict:
    """The scalar entries of a model config (nested ones dropped), as a run's manifest records them."""
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}
