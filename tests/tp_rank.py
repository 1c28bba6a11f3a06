"""One rank of the tensor-parallel rehearsal in tests/test_tensor_parallel.py, started by torchrun: `dcsim calibrate`'s
own rank code with the CPU's RAPL meter where this machine can read it, else a stand-in meter that draws a constant
(20 + 10 x rank) W, so each rank's joules are known (a test double only where no CPU energy counter is readable).

    python -m torch.distributed.run --nproc-per-node 2 tests/tp_rank.py CALIBRATE-ARGS...
"""

from __future__ import annotations

import argparse
import sys
import time

from dcsim.calibrate.meters import Meter, Reading
from dcsim.calibrate.meters.registry import select_meter
from dcsim.calibrate.tp_launch import launched
from dcsim.commands.calibrate import configure
from dcsim.commands.calibrate_tp import check, rank_main
from dcsim.errors import UserError, guarded


def stand_in_watts(rank: int) -> float:
    return 20.0 + 10.0 * rank


class StandInMeter(Meter):
    """A constant draw of stand_in_watts(rank): every window's joules are that power times its length."""

    name = "standin"

    def __init__(self, rank: int) -> None:
        self.w = stand_in_watts(rank)
        self.t: dict[str, float] = {}

    def begin(self, key, sync=True):
        self.t[key] = time.time()

    def end(self, key, sync=True):
        return Reading(device_j={"cpu0": self.w * (time.time() - self.t.pop(key))})

    def power_w(self):
        return {"cpu0": self.w}

    def describe(self):
        return {"meter": self.name, "watts": self.w}


def open_meter(device: str, rank: int) -> Meter:
    """The device's own meter where it reads energy here, else the stand-in: a RAPL counter that is readable but
    does not advance (some virtual machines expose a frozen one) would give every window 0 J, which no fit takes."""
    try:
        meter = select_meter(device)
    except UserError:
        return StandInMeter(rank)
    meter.begin("probe")
    t_end = time.time() + 0.2
    while time.time() < t_end:  # a fifth of a second of work for the counter to see
        sum(i * i for i in range(1000))
    if sum(meter.end("probe").device_j.values()) > 0:
        return meter
    return StandInMeter(rank)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    configure(p)
    args = p.parse_args(argv)
    args.argv = argv
    return guarded(lambda a: rank_main(a, check(a), launched(), open_meter), args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
